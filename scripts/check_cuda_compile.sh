#!/usr/bin/env bash
# Compile-only check of the CUDA backend (no GPU needed; needs nvcc):
#   1. every csrc/cuda/*.cu compiles alone to an object file, for sm_80 and for sm_90a, both
#      plainly and with the half/bfloat16 macros that torch's CUDAExtension adds to nvcc
#      (-D__CUDA_NO_HALF_CONVERSIONS__ ...), which the real build uses;
#   2. csrc/cuda/ncs_cuda.cuh (the host API) parses with the host C++ compiler alone;
#   3. csrc/cuda_backend.cpp passes `g++ -fsyntax-only -DNCS_WITH_CUDA` against torch's headers
#      (skipped, and said so, when no Python with torch is found, e.g. before scripts/setup_env.sh).
# Exits non-zero on the first failure; prints every command's subject and time.
# Environment: NVCC (default: nvcc on PATH, else /usr/local/cuda/bin/nvcc), CXX (default g++),
# PYTHON (a python with torch), NCS_NVCC_OPT (default -O3).
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
CXX=${CXX:-g++}
OPT=${NCS_NVCC_OPT:--O3}
if [ ! -x "$NVCC" ]; then
  echo "check_cuda_compile: nvcc not found (set NVCC or put it on PATH)" >&2
  exit 2
fi
# the toolkit's include dir, for the host-compiler checks (nvcc may be a wrapper script)
CUDA_INC=""
for root in "${CUDA_HOME:-}" "$(dirname "$(dirname "$(readlink -f "$NVCC")")")" \
  "$("$NVCC" --dryrun -c -x cu /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)/.." /usr/local/cuda; do
  if [ -n "$root" ] && [ -f "$root/include/cuda_runtime_api.h" ]; then
    CUDA_INC=$(readlink -f "$root/include")
    break
  fi
done
if [ -z "$CUDA_INC" ]; then
  echo "check_cuda_compile: cannot find the CUDA include directory (set CUDA_HOME)" >&2
  exit 2
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

TORCH_NVCC_DEFINES=(-D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
  -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__)
ARCHS=("-arch=sm_80" "-gencode=arch=compute_90a,code=sm_90a")

echo "check_cuda_compile: $("$NVCC" --version | tail -n 1)"
shopt -s nullglob
sources=(csrc/cuda/*.cu)
if [ ${#sources[@]} -eq 0 ]; then
  echo "check_cuda_compile: no csrc/cuda/*.cu found" >&2
  exit 1
fi

n=0
for src in "${sources[@]}"; do
  for arch in "${ARCHS[@]}"; do
    for variant in plain torch; do
      extra=()
      [ "$variant" = torch ] && extra=("${TORCH_NVCC_DEFINES[@]}")
      start=$(date +%s%N)
      "$NVCC" -std=c++17 "$OPT" -c "$arch" -DNCS_WITH_CUDA -I csrc "${extra[@]}" "$src" -o "$TMP/out.o"
      printf 'ok  %-26s %-40s %-6s %6d ms\n' "$src" "$arch" "$variant" $((($(date +%s%N) - start) / 1000000))
      n=$((n + 1))
    done
  done
done

echo '#include "cuda/ncs_cuda.cuh"' >"$TMP/host_api.cpp"
"$CXX" -std=c++17 -fsyntax-only -Wall -Wextra -I csrc -isystem "$CUDA_INC" "$TMP/host_api.cpp"
echo "ok  csrc/cuda/ncs_cuda.cuh (host C++ parse)"

PY=""
for cand in "${PYTHON:-}" .venv/bin/python python3; do
  if [ -n "$cand" ] && command -v "$cand" >/dev/null 2>&1 && "$cand" -c "import torch" >/dev/null 2>&1; then
    PY=$cand
    break
  fi
done
if [ -z "$PY" ]; then
  echo "SKIP csrc/cuda_backend.cpp: no Python with torch found (set PYTHON); its syntax was not checked"
else
  TORCH=$("$PY" -c "import os, torch; print(os.path.dirname(torch.__file__))")
  PYINC=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
  defs=(-DNCS_WITH_CUDA)
  # A CPU-only torch wheel ships c10/cuda headers but not the generated cuda_cmake_macros.h;
  # on Linux it only defines export macros, which c10 also handles without it.
  [ -f "$TORCH/include/c10/cuda/impl/cuda_cmake_macros.h" ] || defs+=(-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE)
  start=$(date +%s%N)
  "$CXX" -std=c++17 -fsyntax-only -Wall -Wextra "${defs[@]}" -I csrc -isystem "$TORCH/include" \
    -isystem "$TORCH/include/torch/csrc/api/include" -isystem "$CUDA_INC" -isystem "$PYINC" \
    csrc/cuda_backend.cpp
  printf 'ok  %-26s g++ -fsyntax-only (torch %s) %6d ms\n' csrc/cuda_backend.cpp \
    "$("$PY" -c 'import torch; print(torch.__version__)')" $((($(date +%s%N) - start) / 1000000))
  # the bindings as the CUDA build sees them (torch/extension.h wants C++20 with torch >= 2.13)
  start=$(date +%s%N)
  "$CXX" -std=c++20 -fsyntax-only "${defs[@]}" -DTORCH_EXTENSION_NAME=_C -I csrc -isystem "$TORCH/include" \
    -isystem "$TORCH/include/torch/csrc/api/include" -isystem "$CUDA_INC" -isystem "$PYINC" \
    csrc/ops.cpp
  printf 'ok  %-26s g++ -fsyntax-only -DNCS_WITH_CUDA %6d ms\n' csrc/ops.cpp $((($(date +%s%N) - start) / 1000000))
fi
echo "check_cuda_compile: all $n nvcc compiles passed"
