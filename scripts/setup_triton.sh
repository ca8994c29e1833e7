#!/usr/bin/env bash
# Create .venv-triton (once): the environment of the real-Triton test tier (tests/integration/).
#
# It holds `nvidia-pytriton`, whose wheel bundles a real tritonserver (2.51) with its python backend, plus what the
# python-backend stub imports when it runs our models inside Triton: numpy<2 (numpy 2 silently breaks the 2.51
# python backend, serving.md §1.4), onnxruntime and torch (the test-only `onnxruntime`/`pytorch` shim backends) and
# mtlrec itself (the ensemble's preprocess model imports it). A separate venv, because the main one has numpy 2.
#
# Idempotent: a second run only checks a stamp and the server binary. Exits non-zero, saying why, when the
# nvidia-pytriton wheel cannot be installed (it is manylinux_2_35 x86_64/aarch64 only).
# Usage: bash scripts/setup_triton.sh        (PYTHON=python3.11 to choose the interpreter)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python="${PYTHON:-python3}"
venv=.venv-triton
# The stamp (this list) makes re-runs fast; a changed list reinstalls.
# pyarrow<22: later wheels require numpy 2 at import (the preprocessor looks categories up with pyarrow).
reqs=("numpy<2" "nvidia-pytriton" "onnxruntime" "pandas" "pyarrow<22" "pydantic" "pyyaml" "safetensors" "typer" "rich"
  "scikit-learn")
stamp="$venv/.mtlrec-setup-stamp"
want="v1 ${reqs[*]}"

server_ok() {
  "$venv/bin/python" - <<'PY' 2>/dev/null
import os, pathlib, sys
import numpy, onnxruntime, pyarrow, torch, pytriton, mtlrec.data.preprocess  # noqa: F401
assert int(numpy.__version__.split(".")[0]) < 2, numpy.__version__
exe = pathlib.Path(pytriton.__file__).parent / "tritonserver" / "bin" / "tritonserver"
sys.exit(0 if os.access(exe, os.X_OK) else 1)
PY
}

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && server_ok; then
  echo "setup_triton: $venv is up to date"
  exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
  if ! "$python" -m venv "$venv"; then
    rm -rf "$venv"
    echo "setup_triton: error: '$python -m venv $venv' failed (Debian: apt-get install python3-venv)" >&2
    exit 1
  fi
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
# torch first and pinned: the CPU wheel of this version installs from local disk here; an unpinned torch pulls a
# multi-GB CUDA build. Needed by the pytorch shim and by mtlrec.
if ! "$venv/bin/python" -c "import torch" 2>/dev/null && ! "${pip[@]}" install "torch==2.13.0"; then
  echo "setup_triton: error: could not install torch==2.13.0 into $venv (see pip's message above);" >&2
  echo "  the tests in tests/integration/ skip without this environment." >&2
  exit 1
fi
if ! "${pip[@]}" install "${reqs[@]}"; then
  echo "setup_triton: error: could not install nvidia-pytriton and the Triton tier's packages into $venv" >&2
  echo "  (see pip's message above). The nvidia-pytriton wheel (55 MB; it bundles tritonserver 2.51) needs PyPI" >&2
  echo "  access and Linux x86_64/aarch64 with glibc >= 2.35; the tests in tests/integration/ skip without it." >&2
  exit 1
fi
# mtlrec itself, without touching the packages above (its own pins would pull numpy 2).
"${pip[@]}" install --no-deps -e .
if ! server_ok; then
  echo "setup_triton: error: $venv is incomplete (no executable pytriton/tritonserver/bin/tritonserver, numpy>=2," >&2
  echo "  or an import failed); run '$venv/bin/python -c \"import pytriton, onnxruntime, torch, mtlrec\"' to see why." >&2
  exit 1
fi
echo "$want" >"$stamp"
echo "setup_triton: $venv ready ($("$venv/bin/python" -c 'import numpy; print("numpy", numpy.__version__)'))"
