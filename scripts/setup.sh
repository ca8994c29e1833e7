#!/usr/bin/env bash
# Create .venv (once) and install mtlrec into it, CPU-only. Sourced by demo.sh and test.sh.
# Usage: source scripts/setup.sh [EXTRAS]   e.g. `dev,onnx`
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
extras="${1:-}"
python="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
  if ! "$python" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    # Debian ships venv separately; install it when we may, else say how.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
      "$python" -m venv .venv
    else
      echo "error: '$python -m venv' failed; install it with: sudo apt-get install python3-venv" >&2
      exit 1
    fi
  fi
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
# torch first, pinned: this version's CPU wheel installs offline-fast here, while an unpinned `torch` would pull
# a CUDA build of several GB. For a GPU machine, install the torch build you need before running this script.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${pip[@]}" install "torch==2.13.0"
fi
if [ -n "$extras" ]; then
  "${pip[@]}" install -e ".[${extras}]"
else
  "${pip[@]}" install -e .
fi
export PATH="$PWD/.venv/bin:$PATH"
