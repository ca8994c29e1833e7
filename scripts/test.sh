#!/usr/bin/env bash
# Quick start 2/2 (and exactly what CI runs): set everything up, then lint, type-check and test.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh dev

ruff check src tests benchmarks
ruff format --check src tests benchmarks
mypy
pytest "$@"
