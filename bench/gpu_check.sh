#!/usr/bin/env bash
# One bounded check of the package on a lent GPU machine (no network there): build, CUDA/Triton
# tests, op benchmarks, trainer stage throughput. Every step runs under `timeout`, a failing or
# hanging step never stops the next one, and the whole script ends inside NCS_CHECK_SECONDS
# (default 470 s, under the 8-minute slot). What comes back is at most these 7 files in OUTDIR:
#   env.json      GPU (nvidia-smi), driver, nvcc, python/torch/triton/numpy versions
#   summary.json  one record per step: status ok|failed|timeout|skipped|no-tests, rc, seconds, log
#   build.log     pip install -e . (TORCH_CUDA_ARCH_LIST=9.0a, MAX_JOBS=16, NCS_BUILD_CUDA=1)
#   tests.log     pytest tests/kernels -k "cuda or triton"
#   bench.log     env probe, bench_ops.py and stages.py output
#   ops.json      bench/bench_ops.py --json (CUDA: fp32/tf32/bf16, eager + CUDA graphs)
#   stages.json   bench/stages.py --json (only if bench/stages.py exists)
#
# usage: bench/gpu_check.sh [--cpu] OUTDIR
#   --cpu   dry run of the same logic on a machine without a GPU: the build is skipped when
#           ncs_kernels._C already imports, benchmarks run tiny shapes on CPU.
# Knobs: PYTHON (default python3), NCS_CHECK_SECONDS (whole run), NCS_CHECK_BUILD_S, _TESTS_S,
#        _BENCH_S, _STAGES_S (per-step budgets), NCS_CHECK_TESTS_PATH and NCS_CHECK_TESTS_K (what
#        pytest runs, default tests/kernels -k "cuda or triton"), NCS_CHECK_BENCH_ARGS (extra
#        bench_ops.py arguments, word-split),
#        NCS_CHECK_REBUILD=1 (build even if _C with CUDA already imports), NCS_CHECK_SKIP_BUILD=1.
set -u

CPU=0
OUTDIR=""
for arg in "$@"; do
  case "$arg" in
    --cpu) CPU=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $arg (expected --cpu)" >&2; exit 2 ;;
    *) if [ -n "$OUTDIR" ]; then echo "gpu_check.sh: expected one OUTDIR, got '$OUTDIR' and '$arg'" >&2; exit 2; fi
       OUTDIR="$arg" ;;
  esac
done
if [ -z "$OUTDIR" ]; then echo "usage: bench/gpu_check.sh [--cpu] OUTDIR" >&2; exit 2; fi

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$OUTDIR" || exit 2
OUTDIR="$(cd "$OUTDIR" && pwd)"
cd "$REPO" || exit 2

PY="${PYTHON:-python3}"
TOTAL="${NCS_CHECK_SECONDS:-470}"
START=$(date +%s)
export PYTHONUNBUFFERED=1
# the checkout's sources win even before (or without) an install; an editable install is the same files
export PYTHONPATH="$REPO:$REPO/python${PYTHONPATH:+:$PYTHONPATH}"
if [ "$CPU" = 1 ]; then
  DEVICE=cpu
  export NCS_BENCH_TINY=1
else
  DEVICE=cuda
fi

STEPS=()       # JSON records, one per step
ALL_OK=1

json_str() {  # a JSON string literal of $1 (escape backslash, quote, control characters)
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\t'/\\t}
  s=${s//$'\r'/}
  printf '"%s"' "$s"
}

write_summary() {
  local now elapsed body="" sep="" rec
  now=$(date +%s)
  elapsed=$((now - START))
  for rec in "${STEPS[@]}"; do body+="$sep$rec"; sep=$',\n  '; done
  {
    printf '{\n "schema": "ncs-gpu-check/1",\n "mode": %s,\n "device": %s,\n' "$(json_str "$([ "$CPU" = 1 ] && echo cpu-dry-run || echo gpu)")" "$(json_str "$DEVICE")"
    printf ' "repo_commit": %s,\n' "$(json_str "$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)")"
    printf ' "started_utc": %s,\n "elapsed_s": %d,\n "budget_s": %d,\n "all_ok": %s,\n' \
      "$(json_str "$(date -u -d "@$START" +%FT%TZ 2>/dev/null || echo unknown)")" "$elapsed" "$TOTAL" \
      "$([ "$ALL_OK" = 1 ] && echo true || echo false)"
    printf ' "steps": [\n  %s\n ]\n}\n' "$body"
  } > "$OUTDIR/summary.json.tmp" && mv -f "$OUTDIR/summary.json.tmp" "$OUTDIR/summary.json"
}

record() {  # record NAME STATUS RC SECONDS LOG NOTE
  STEPS+=("{\"step\": $(json_str "$1"), \"status\": $(json_str "$2"), \"rc\": $3, \"seconds\": $4, \"log\": $(json_str "$5"), \"note\": $(json_str "$6")}")
  case "$2" in ok|skipped|no-tests) ;; *) ALL_OK=0 ;; esac
  write_summary
  echo "[gpu_check] $1: $2 (rc $3, ${4}s)${6:+ - $6}" >&2
}

# step NAME BUDGET_S LOG CMD...: run CMD under timeout, its output appended to OUTDIR/LOG.
# The timeout is the step's budget or what is left of the whole run, whichever is smaller.
step() {
  local name=$1 budget=$2 log=$3
  shift 3
  local now left t0 rc status note=""
  now=$(date +%s)
  left=$((TOTAL - (now - START) - 15))   # 15 s kept back for timeout's KILL grace and the summary
  if [ "$left" -lt 10 ]; then
    record "$name" skipped 0 0 "$log" "no time left in the ${TOTAL}s budget"
    return 0
  fi
  [ "$budget" -gt "$left" ] && budget=$left
  {
    echo
    echo "===== [$name] $(date -u +%FT%TZ) timeout ${budget}s: $*"
  } >> "$OUTDIR/$log"
  t0=$(date +%s)
  timeout -k 5 "$budget" "$@" >> "$OUTDIR/$log" 2>&1 < /dev/null
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status=timeout; note="killed after ${budget}s" ;;
    *) status=failed ;;
  esac
  if [ "$name" = tests ] && [ $rc = 5 ]; then status=no-tests; note="pytest collected no tests"; fi
  echo "===== [$name] rc=$rc status=$status" >> "$OUTDIR/$log"
  record "$name" "$status" "$rc" "$(( $(date +%s) - t0 ))" "$log" "$note"
  return 0
}

# ---------------------------------------------------------------- 1. environment -> env.json
ENV_PY='
import json, os, platform, shutil, subprocess, sys
def run(*cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (p.stdout + p.stderr).strip()
    except Exception as e:
        return f"unavailable: {type(e).__name__}: {e}"
env = {"python": sys.version.split()[0], "python_executable": sys.executable, "platform": platform.platform(),
       "nproc": os.cpu_count(), "hostname_hidden": True,
       "nvidia_smi": run("nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit,compute_cap", "--format=csv"),
       "nvidia_smi_L": run("nvidia-smi", "-L"),
       "nvcc": run(shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc", "--version")[-400:],
       "env": {k: os.environ.get(k) for k in ("TORCH_CUDA_ARCH_LIST", "MAX_JOBS", "CUDA_HOME", "TRITON_INTERPRET", "NCS_BACKEND")}}
for mod in ("torch", "triton", "numpy", "pytest", "safetensors", "pyarrow"):
    try:
        env.setdefault("versions", {})[mod] = __import__(mod).__version__
    except Exception as e:
        env.setdefault("versions", {})[mod] = f"missing: {type(e).__name__}"
try:
    import torch
    env["torch_cuda"] = torch.version.cuda
    env["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count,
                      "total_memory": p.total_memory}
except Exception as e:
    env["torch_error"] = f"{type(e).__name__}: {e}"
json.dump(env, open(sys.argv[1], "w"), indent=1)
print(json.dumps(env, indent=1))
'
step env 60 bench.log "$PY" -c "$ENV_PY" "$OUTDIR/env.json"

# ---------------------------------------------------------------- 2. build
native_ok() {  # 0 when ncs_kernels._C imports (and, for the GPU run, has CUDA kernels)
  if [ "$CPU" = 1 ]; then
    "$PY" -c "import ncs_kernels._C" >/dev/null 2>&1
  else
    "$PY" -c "import ncs_kernels._C as c, sys; sys.exit(0 if c.has_cuda() else 1)" >/dev/null 2>&1
  fi
}
if [ "${NCS_CHECK_SKIP_BUILD:-0}" = 1 ]; then
  record build skipped 0 0 build.log "NCS_CHECK_SKIP_BUILD=1"
elif native_ok && [ "${NCS_CHECK_REBUILD:-0}" != 1 ]; then
  record build skipped 0 0 build.log "ncs_kernels._C already built and importable"
else
  if [ "$CPU" = 1 ]; then BUILD_CUDA=0; else BUILD_CUDA=1; fi
  step build "${NCS_CHECK_BUILD_S:-240}" build.log \
    env TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}" MAX_JOBS="${MAX_JOBS:-16}" NCS_BUILD_CUDA="$BUILD_CUDA" \
    "$PY" -m pip install --no-build-isolation --no-deps --no-index -v -e .
fi
step import 60 build.log "$PY" -c "
import ncs_kernels as nk, ncs_kernels._backends as B
print('backends:', nk.backends(), '| native error:', nk.native_error())
for b in B.BACKENDS:
    print(f'  {b:7s} cuda:', B.why_unavailable(b, 'cuda') or 'ok', '| cpu:', B.why_unavailable(b, 'cpu') or 'ok')
"

# ---------------------------------------------------------------- 3. CUDA / Triton tests
TEST_ARGS=(-q -x -rfEs -p no:cacheprovider)
if "$PY" -c "import pytest_timeout" >/dev/null 2>&1; then TEST_ARGS+=(--timeout=120); fi
step tests "${NCS_CHECK_TESTS_S:-120}" tests.log \
  "$PY" -m pytest "${TEST_ARGS[@]}" "${NCS_CHECK_TESTS_PATH:-tests/kernels}" -k "${NCS_CHECK_TESTS_K:-cuda or triton}"

# ---------------------------------------------------------------- 4. op benchmarks -> ops.json
BENCH_S="${NCS_CHECK_BENCH_S:-150}"
LEFT=$((TOTAL - ($(date +%s) - START) - 15))
[ "$BENCH_S" -gt "$LEFT" ] && BENCH_S=$LEFT
[ "$BENCH_S" -lt 1 ] && BENCH_S=1
# bench_ops starts no new group after 3/4 of its slot, so it normally ends on its own (and on
# SIGTERM it still leaves every finished group in ops.json)
step bench_ops "$BENCH_S" bench.log \
  "$PY" bench/bench_ops.py --device "$DEVICE" --json "$OUTDIR/ops.json" --max-seconds $((BENCH_S * 3 / 4)) \
  ${NCS_CHECK_BENCH_ARGS:-}

# ---------------------------------------------------------------- 5. trainer stages -> stages.json
if [ -f bench/stages.py ]; then
  STAGES_ARGS=(--device "$DEVICE" --json "$OUTDIR/stages.json")
  [ "$CPU" = 1 ] && STAGES_ARGS+=(--tiny)
  step stages "${NCS_CHECK_STAGES_S:-60}" bench.log "$PY" bench/stages.py "${STAGES_ARGS[@]}"
else
  record stages skipped 0 0 bench.log "bench/stages.py does not exist"
fi

write_summary
echo "[gpu_check] done in $(( $(date +%s) - START ))s; all_ok=$ALL_OK; files in $OUTDIR:" >&2
ls -1 "$OUTDIR" >&2
[ "$ALL_OK" = 1 ]
