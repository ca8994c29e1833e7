#!/usr/bin/env bash
# Quick start 1/2: set everything up, then run the main job on the embedded default, on the CPU:
# synthetic impression logs -> fit the preprocessor -> train MMoE -> evaluate on the test split -> export a
# verified version into model_repository/ and validate it -> serve it -> predict a few raw records -> a short
# load test -> stop the server.
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

# Serve the repository on a free loopback port; the trap stops the server however this script ends.
port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
mtlrec serve --repo "$repo" --model mmoe --port "$port" --log-level warning &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
python - "$url" <<'PY'
import sys, time, urllib.request
deadline = time.monotonic() + 60
while True:
    try:
        urllib.request.urlopen(sys.argv[1] + "/v2/health/ready", timeout=2)
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("the server did not become ready within 60 s")
        time.sleep(0.2)
PY
mtlrec predict --url "$url" --model mmoe --file examples/synthetic_records.jsonl
mtlrec loadtest --url "$url" --model mmoe --protocol records --users 4 --duration 10s --out "$out/loadtest"
