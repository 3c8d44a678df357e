#!/usr/bin/env bash
# The Triton checks under triton 3.6.0 with numpy < 2.4: the versions of the lent GPU machine
# (torch 2.11 + CUDA 13, triton 3.6), while CI installs triton 3.9. Runs, on a machine without a
# GPU:
#   1. scripts/triton_compile_check.py --arch 90: every Triton kernel variant compiled for sm_90
#      by triton 3.6's own compiler and ptxas, shared memory checked;
#   2. the Triton interpreter tests (TRITON_INTERPRET=1): tests/kernels/test_triton_backend.py,
#      test_triton_launch.py, and the triton cases of test_ops_masked_linear.py, test_ops_cross.py
#      and test_optim.py.
# It makes a separate virtualenv (default .venv-triton36, git-ignored; NCS_TRITON36_VENV=DIR
# elsewhere, e.g. /tmp/ncs-triton36) from the interpreter of PYTHON (default .venv/bin/python,
# what scripts/setup_env.sh makes) holding only triton==3.6.0 and numpy<2.4; everything else
# (torch 2.13.0, pytest, hypothesis, ...) is read from PYTHON's environment through a .pth file
# placed after the venv's own site-packages, and the package itself (with its built
# ncs_kernels._C) from this checkout through PYTHONPATH. If PYTHON's torch is not 2.13.0, torch
# 2.13.0 (CPU build) is installed into the venv too. Idempotent: a second run reuses the venv.
# Needs the package index once (pip); about 1-2 minutes to set up, then the checks (see README).
# Opt-in in CI: NCS_CI_TRITON36=1 bash .ci/run.
# Exit status: 0 when both passed.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
BASE=${PYTHON:-.venv/bin/python}
VENV=${NCS_TRITON36_VENV:-.venv-triton36}
TRITON_PIN=${NCS_TRITON36_TRITON:-3.6.0}
TORCH_PIN=2.13.0
if ! "$BASE" -c "import torch, pytest" >/dev/null 2>&1; then
  echo "check_triton36: $BASE has no torch/pytest (run scripts/setup_env.sh first, or set PYTHON)" >&2
  exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$BASE" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
VSITE=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
BASE_SITES=$("$BASE" -c "import sysconfig; p = sysconfig.get_paths(); print('\n'.join(sorted({p['purelib'], p['platlib']})))")
# appended after the venv's own site-packages: the venv's triton/numpy win, the rest comes from BASE
printf '%s\n' "$BASE_SITES" > "$VSITE/zz_ncs_base_env.pth"
"$VPY" -m pip install -q --disable-pip-version-check --no-deps "triton==$TRITON_PIN" "numpy<2.4"
if ! "$VPY" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_PIN' else 1)" 2>/dev/null; then
  "$VPY" -m pip install -q --disable-pip-version-check --no-deps "torch==$TORCH_PIN" \
    --index-url https://download.pytorch.org/whl/cpu
fi
export PYTHONPATH="$REPO/python:$REPO${PYTHONPATH:+:$PYTHONPATH}"
"$VPY" - "$TRITON_PIN" <<'EOF'
import sys
import numpy, torch, triton
print(f"check_triton36: triton {triton.__version__} ({triton.__file__})")
print(f"check_triton36: numpy {numpy.__version__}, torch {torch.__version__}")
assert triton.__version__ == sys.argv[1], f"expected triton {sys.argv[1]}, got {triton.__version__}"
assert tuple(int(x) for x in numpy.__version__.split(".")[:2]) < (2, 4), f"expected numpy < 2.4, got {numpy.__version__}"
import ncs_kernels as nk
print("check_triton36: ncs_kernels from", nk.__file__, "| backends", nk.backends())
EOF

start=$(date +%s)
echo "check_triton36: [1/2] scripts/triton_compile_check.py --arch 90 (a cold Triton cache)"
TMPCACHE=$(mktemp -d)
trap 'rm -rf "$TMPCACHE"' EXIT
env -u TRITON_INTERPRET TRITON_CACHE_DIR="$TMPCACHE" "$VPY" scripts/triton_compile_check.py --arch 90
echo "check_triton36: [1/2] ok in $(( $(date +%s) - start ))s"

start=$(date +%s)
echo "check_triton36: [2/2] Triton interpreter tests"
XDIST=()
if "$VPY" -c "import xdist" >/dev/null 2>&1; then XDIST=(-n "${NCS_TRITON36_WORKERS:-2}"); fi
TRITON_INTERPRET=1 OMP_NUM_THREADS=1 "$VPY" -m pytest -q -p no:cacheprovider "${XDIST[@]}" \
  tests/kernels/test_triton_backend.py tests/kernels/test_triton_launch.py \
  tests/kernels/test_ops_masked_linear.py tests/kernels/test_ops_cross.py tests/kernels/test_optim.py -k triton
echo "check_triton36: [2/2] ok in $(( $(date +%s) - start ))s"
echo "check_triton36: ALL PASSED under triton $TRITON_PIN"
