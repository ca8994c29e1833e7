#!/usr/bin/env bash
# Quick start 1/2: set everything up, then run the main job on the embedded default, on the CPU:
# generate synthetic impression logs -> fit the preprocessor -> train MMoE -> evaluate on the test split
# -> export a verified version into model_repository/ -> validate the repository against Triton's rules.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh onnx,triton,serve,load
out="${MTLREC_DEMO_DIR:-runs/demo}"
repo="${MTLREC_REPO:-model_repository}"

mtlrec data prepare synthetic --out "$out/data" --rows 200000 --seed 0
mtlrec train --data "$out/data" --config configs/synthetic/mmoe.yaml --out "$out/mmoe"
mtlrec evaluate "$out/mmoe" --split test
mtlrec export "$out/mmoe" --repo "$repo" --format both
mtlrec repo validate "$repo"
