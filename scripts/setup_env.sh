#!/usr/bin/env bash
# Create .venv and install ncs into it, from scratch, on a machine with Python 3.11 and no GPU.
#   torch==2.13.0   the CPU build (an unpinned torch would pull a multi-GB CUDA build)
#   triton==3.9.0   its interpreter runs the Triton kernels on CPU (TRITON_INTERPRET=1)
#   onnx==1.23.2, onnxruntime==1.32.0   ncs export --formats onnx (the `export` extra)
#   ncs             built with --no-build-isolation, so the extension compiles against this torch
# Idempotent: a second run reuses .venv and rebuilds only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0" "triton==3.9.0" "numpy<2.5" ninja setuptools wheel
# ncs export --formats onnx and its tests (the `export` extra, also in `test`); pinned like setup.py
python -m pip install -q "onnx==1.23.2" "onnxruntime==1.32.0"
# rebuild only when the build inputs changed since the last successful install
stamp="$VENV/.ncs-build-stamp"
sum=$(cat setup.py pyproject.toml csrc/*.h csrc/*.cpp csrc/cpu/* csrc/cuda/* 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$sum" ] || ! python -c "import ncs_kernels._C" 2>/dev/null; then
  python -m pip install -q --no-build-isolation -e ".[test]"
  echo "$sum" >"$stamp"
fi
python -c "import ncs_kernels as nk; print('ncs_kernels backends:', nk.backends())"
