#!/usr/bin/env bash
# One bounded check of the package on a lent GPU machine (no network there): build, a smoke
# correctness pass, op benchmarks, trainer stage throughput, then the CUDA/Triton test suite with
# the time that is left. Every step runs under `timeout`, a failing or hanging step never stops
# the next one, each step writes its file into OUTDIR as soon as it ends (a run killed from outside
# still returns what finished), and the whole script ends inside NCS_CHECK_SECONDS (default 470 s,
# under the 8-minute slot). What comes back is at most these 8 files in OUTDIR:
#   env.json      GPU (nvidia-smi), driver; versions of nvcc, gcc, ninja, cmake, python, torch
#                 (+ its CUDA), triton, numpy, pytest plugins; whether Python.h was found
#   summary.json  one record per step: status ok|failed|timeout|skipped|no-tests, rc, seconds,
#                 log, note; plus the smoke verdict and the test counts (rewritten after each step)
#   build.log     pip install --no-build-isolation --no-deps -e . (TORCH_CUDA_ARCH_LIST=9.0a,
#                 MAX_JOBS=16, NCS_BUILD_CUDA=1) and the import check
#   smoke.json    bench/smoke.py: every ncs backend variant (cpu, triton, triton~materialize,
#                 cuda, cuda~fused), one shape per op, each dtype, against the reference
#   ops.json      bench/bench_ops.py --json --smoke smoke.json (CUDA: bf16/tf32/fp32, CUDA graphs
#                 and eager; every row carries its variant's smoke verdict)
#   stages.json   bench/stages.py --json
#   bench.log     env probe, smoke, bench_ops.py and stages.py output
#   tests.log     pytest of the CUDA/Triton tests, one line per test as it ends (-v)
#
# usage: bench/gpu_check.sh [--cpu] OUTDIR
#   --cpu   dry run of the same logic on a machine without a GPU: the build is skipped when
#           ncs_kernels._C already imports, the smoke pass and benchmarks run tiny shapes on
#           CPU (cpu backend, Triton interpreter), and the test step runs a few interpreter tests.
# Knobs (environment): PYTHON (default .venv/bin/python if present, else python3);
#   NCS_CHECK_SECONDS (whole run);
#   NCS_CHECK_BUILD_S, _SMOKE_S, _BENCH_S, _STAGES_S, _TESTS_S (per-step caps; tests default to
#   what is left); NCS_CHECK_STEPS (comma list of steps to run, default all:
#   env,build,import,smoke,bench_ops,stages,tests; the others are recorded as skipped);
#   NCS_CHECK_TESTS_PATH (word-split paths) and NCS_CHECK_TESTS_K (what pytest runs; GPU default:
#   the CUDA/Triton kernel test files, -k "cuda or triton", compile-only modules left out);
#   NCS_CHECK_XDIST (pytest-xdist workers; GPU default 8, CPU 0 = none); NCS_CHECK_MAXFAIL
#   (default 25); NCS_CHECK_TEST_TIMEOUT (per-test seconds, default 90, capped at half the step);
#   NCS_CHECK_BENCH_ARGS, NCS_CHECK_SMOKE_ARGS (extra bench_ops.py / smoke.py arguments,
#   word-split, e.g. "--ops adam"); NCS_CHECK_REBUILD=1 (build
#   even if _C with CUDA already imports); NCS_CHECK_SKIP_BUILD=1.
# Needs only bash, coreutils `timeout`, and the packages the project itself needs; pytest-xdist
# and pytest-timeout are used when installed, and the log says so when they are not.
set -u

CPU=0
OUTDIR=""
for arg in "$@"; do
  case "$arg" in
    --cpu) CPU=1 ;;
    -h|--help) sed -n '2,39p' "$0"; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $arg (expected --cpu)" >&2; exit 2 ;;
    *) if [ -n "$OUTDIR" ]; then echo "gpu_check.sh: expected one OUTDIR, got '$OUTDIR' and '$arg'" >&2; exit 2; fi
       OUTDIR="$arg" ;;
  esac
done
if [ -z "$OUTDIR" ]; then echo "usage: bench/gpu_check.sh [--cpu] OUTDIR" >&2; exit 2; fi
if ! command -v timeout >/dev/null 2>&1; then echo "gpu_check.sh: needs coreutils 'timeout'" >&2; exit 2; fi

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$OUTDIR" || exit 2
OUTDIR="$(cd "$OUTDIR" && pwd)"
cd "$REPO" || exit 2

# a fresh run: this script's own files from an earlier run in OUTDIR would mix with this one's
for f in env.json summary.json build.log smoke.json ops.json stages.json bench.log tests.log; do
  rm -f "$OUTDIR/$f" "$OUTDIR/$f.tmp"
done
rm -f "$OUTDIR"/.tmp-*  # what a killed atomic write (ncs_kernels.atomic) left behind

# PYTHON, else the project's .venv (scripts/setup_env.sh) when there is one, else python3 (the GPU
# machine's python with torch)
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"
else PY=python3; fi
TOTAL="${NCS_CHECK_SECONDS:-470}"
START=$(date +%s)
STEPS_WANTED=",${NCS_CHECK_STEPS:-env,build,import,smoke,bench_ops,stages,tests},"
export PYTHONUNBUFFERED=1
# the checkout's sources win even before (or without) an install; an editable install is the same files
export PYTHONPATH="$REPO:$REPO/python${PYTHONPATH:+:$PYTHONPATH}"
if [ "$CPU" = 1 ]; then
  DEVICE=cpu
  export NCS_BENCH_TINY=1
  # the Triton kernels run through the interpreter on CPU (as in the test suite)
  export TRITON_INTERPRET="${TRITON_INTERPRET:-1}"
else
  DEVICE=cuda
fi

STEPS=()       # JSON records, one per step
ALL_OK=1
EXTRA=""       # extra top-level summary fields, each ',\n "key": value'

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
    printf '{\n "schema": "ncs-gpu-check/2",\n "mode": %s,\n "device": %s,\n' "$(json_str "$([ "$CPU" = 1 ] && echo cpu-dry-run || echo gpu)")" "$(json_str "$DEVICE")"
    printf ' "repo_commit": %s,\n' "$(json_str "$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)")"
    printf ' "started_utc": %s,\n "elapsed_s": %d,\n "budget_s": %d,\n "all_ok": %s%s,\n' \
      "$(json_str "$(date -u -d "@$START" +%FT%TZ 2>/dev/null || echo unknown)")" "$elapsed" "$TOTAL" \
      "$([ "$ALL_OK" = 1 ] && echo true || echo false)" "$EXTRA"
    printf ' "steps": [\n  %s\n ]\n}\n' "$body"
  } > "$OUTDIR/summary.json.tmp" && mv -f "$OUTDIR/summary.json.tmp" "$OUTDIR/summary.json"
}

record() {  # record NAME STATUS RC SECONDS LOG NOTE
  STEPS+=("{\"step\": $(json_str "$1"), \"status\": $(json_str "$2"), \"rc\": $3, \"seconds\": $4, \"log\": $(json_str "$5"), \"note\": $(json_str "$6")}")
  case "$2" in ok|skipped|no-tests) ;; *) ALL_OK=0 ;; esac
  write_summary
  echo "[gpu_check] $1: $2 (rc $3, ${4}s)${6:+ - $6}" >&2
}

wanted() { [[ "$STEPS_WANTED" == *",$1,"* ]]; }

left_s() { echo $((TOTAL - ($(date +%s) - START) - 15)); }  # 15 s kept for timeout's KILL grace and the summary

# step NAME BUDGET_S LOG CMD...: run CMD under timeout, its output appended to OUTDIR/LOG.
# The timeout is the step's budget or what is left of the whole run, whichever is smaller.
# Sets STEP_RC. A step not in NCS_CHECK_STEPS is recorded as skipped.
STEP_RC=0
STEP_NOTE=""   # set by the caller before `step` to add a note; reset after
step() {
  local name=$1 budget=$2 log=$3
  shift 3
  local left t0 rc status note="$STEP_NOTE"
  STEP_NOTE=""
  STEP_RC=0
  if ! wanted "$name"; then
    record "$name" skipped 0 0 "$log" "not in NCS_CHECK_STEPS"
    STEP_RC=-1
    return 0
  fi
  left=$(left_s)
  if [ "$left" -lt 10 ]; then
    record "$name" skipped 0 0 "$log" "no time left in the ${TOTAL}s budget"
    STEP_RC=-1
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
  STEP_RC=$rc
  case $rc in
    0) status=ok ;;
    124|137) status=timeout; note="${note:+$note; }killed after ${budget}s" ;;
    *) status=failed ;;
  esac
  if [ "$name" = tests ] && [ $rc = 5 ]; then status=no-tests; note="${note:+$note; }pytest collected no tests"; fi
  echo "===== [$name] rc=$rc status=$status" >> "$OUTDIR/$log"
  record "$name" "$status" "$rc" "$(( $(date +%s) - t0 ))" "$log" "$note"
  return 0
}

# ---------------------------------------------------------------- 1. environment -> env.json
ENV_PY='
import json, os, platform, shutil, subprocess, sys, sysconfig
def run(*cmd, tail=400):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (p.stdout + p.stderr).strip()[-tail:]
    except Exception as e:
        return f"unavailable: {type(e).__name__}: {e}"
def first_line(s):
    return s.splitlines()[0] if s else s
def last_line(s):
    return s.splitlines()[-1] if s else s
nvcc = shutil.which("nvcc") or next((p for p in (os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc"),
                                                 "/usr/local/cuda/bin/nvcc") if os.path.exists(p)), None)
inc = sysconfig.get_paths().get("include") or ""
env = {"python": sys.version.split()[0], "python_executable": sys.executable, "platform": platform.platform(),
       "nproc": os.cpu_count(), "hostname_hidden": True,
       "nvidia_smi": run("nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit,compute_cap", "--format=csv"),
       "nvidia_smi_L": run("nvidia-smi", "-L"),
       "tools": {"nvcc_path": nvcc,
                 "nvcc": last_line(run(nvcc, "--version")) if nvcc else "missing: nvcc not on PATH nor in CUDA_HOME/bin",
                 "gcc": first_line(run("gcc", "--version")) if shutil.which("gcc") else "missing",
                 "g++": first_line(run("g++", "--version")) if shutil.which("g++") else "missing",
                 "ninja": run("ninja", "--version") if shutil.which("ninja") else "missing",
                 "cmake": first_line(run("cmake", "--version")) if shutil.which("cmake") else "missing"},
       "python_h": {"include_dir": inc, "found": os.path.exists(os.path.join(inc, "Python.h"))},
       "env": {k: os.environ.get(k) for k in ("TORCH_CUDA_ARCH_LIST", "MAX_JOBS", "CUDA_HOME", "TRITON_INTERPRET",
                                              "NCS_BACKEND", "NCS_CUDA_GEMM", "NCS_TRITON_WEIGHT_MASK")}}
vers = env["versions"] = {}
for mod, dist in (("torch", None), ("triton", None), ("numpy", None), ("pytest", None), ("xdist", "pytest-xdist"),
                  ("pytest_timeout", "pytest-timeout"), ("safetensors", None), ("pyarrow", None), ("setuptools", None),
                  ("ninja", None)):
    try:
        m = __import__(mod)
        v = getattr(m, "__version__", None)
        if v is None:
            from importlib.metadata import version
            v = version(dist or mod)
        vers[dist or mod] = v
    except Exception as e:
        vers[dist or mod] = f"missing: {type(e).__name__}"
try:
    import torch
    env["torch_cuda"] = torch.version.cuda
    env["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count,
                      "total_memory": p.total_memory}
        env["cuda_driver_version"] = torch.cuda.driver_version() if hasattr(torch.cuda, "driver_version") else None
    from torch.utils import cpp_extension
    env["torch_cuda_home"] = cpp_extension.CUDA_HOME
except Exception as e:
    env["torch_error"] = f"{type(e).__name__}: {e}"
tmp = sys.argv[1] + ".tmp"
with open(tmp, "w") as f:
    json.dump(env, f, indent=1)
os.replace(tmp, sys.argv[1])
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
if ! wanted build; then
  record build skipped 0 0 build.log "not in NCS_CHECK_STEPS"
elif [ "${NCS_CHECK_SKIP_BUILD:-0}" = 1 ]; then
  record build skipped 0 0 build.log "NCS_CHECK_SKIP_BUILD=1"
elif native_ok && [ "${NCS_CHECK_REBUILD:-0}" != 1 ]; then
  record build skipped 0 0 build.log "ncs_kernels._C already built and importable"
else
  if [ "$CPU" = 1 ]; then BUILD_CUDA=0; else BUILD_CUDA=1; fi
  step build "${NCS_CHECK_BUILD_S:-240}" build.log \
    env TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}" MAX_JOBS="${MAX_JOBS:-16}" NCS_BUILD_CUDA="$BUILD_CUDA" \
    "$PY" -m pip install --no-build-isolation --no-deps --no-index -v -e .
fi
# GPU mode: the import step FAILS when _C is missing or was built without CUDA (a benchmark
# without the cuda backend must not look like a complete run); the CPU dry run needs only _C.
IMPORT_PY='
import sys
import ncs_kernels as nk
from bench import _env as B  # the backend registry as the benchmarks read it
gpu = sys.argv[1] == "gpu"
print("backends:", nk.backends(), "| native error:", nk.native_error())
for b in B.backend_names():
    print(f"  {b:7s} cuda:", B.why_unavailable(b, "cuda") or "ok", "| cpu:", B.why_unavailable(b, "cpu") or "ok")
ext = B.native()
problems = []
if ext is None:
    problems.append(f"ncs_kernels._C does not import: {nk.native_error()}")
elif gpu and not ext.has_cuda():
    problems.append("ncs_kernels._C was built WITHOUT CUDA kernels (see build.log: nvcc, CUDA_HOME, NCS_BUILD_CUDA)")
if gpu:
    import torch
    if not torch.cuda.is_available():
        problems.append(f"torch {torch.__version__} sees no CUDA device")
    for b in ("cuda", "triton"):
        why = B.why_unavailable(b, "cuda")
        if why:
            problems.append(f"backend {b} cannot run on CUDA: {why}")
    if ext is not None and ext.has_cuda():
        print("cuda GEMM strategy:", getattr(ext, "cuda_gemm_strategy", lambda: "n/a")())
for p in problems:
    print("!!! IMPORT CHECK FAILED:", p)
    print("!!! IMPORT CHECK FAILED:", p, file=sys.stderr)
sys.exit(1 if problems else 0)
'
step import 60 build.log "$PY" -c "$IMPORT_PY" "$([ "$CPU" = 1 ] && echo cpu || echo gpu)"
if [ "$CPU" = 0 ] && [ "$STEP_RC" != 0 ] && [ "$STEP_RC" != -1 ]; then
  echo "[gpu_check] !!! the import check FAILED: the cuda backend is not usable; see build.log. The remaining steps still run (Triton, PyTorch baselines)." >&2
  EXTRA+=$',\n "native_cuda": false'
fi

# ---------------------------------------------------------------- 3. smoke correctness -> smoke.json
SMOKE_ARGS=(--device "$DEVICE" --json "$OUTDIR/smoke.json")
[ "$CPU" = 1 ] && SMOKE_ARGS+=(--tiny)
step smoke "${NCS_CHECK_SMOKE_S:-90}" bench.log "$PY" bench/smoke.py "${SMOKE_ARGS[@]}" ${NCS_CHECK_SMOKE_ARGS:-}
if [ -f "$OUTDIR/smoke.json" ]; then
  SMOKE_SUM=$("$PY" -c '
import json, sys
d = json.load(open(sys.argv[1]))
bad = ["%s %s %s" % (c["op"], c["variant"], c["dtype"]) for c in d.get("cases", []) if c["status"] in ("fail", "error")]
print(json.dumps({"all_pass": d.get("all_pass"), "complete": d.get("complete"), "summary": d.get("summary"), "failed": bad}))
' "$OUTDIR/smoke.json" 2>/dev/null) && EXTRA+=$',\n "smoke": '"$SMOKE_SUM" && write_summary
fi

# ---------------------------------------------------------------- 4. op benchmarks -> ops.json
BENCH_S="${NCS_CHECK_BENCH_S:-150}"
LEFT=$(left_s)
[ "$BENCH_S" -gt "$LEFT" ] && BENCH_S=$LEFT
[ "$BENCH_S" -lt 1 ] && BENCH_S=1
# bench_ops starts no new group after 3/4 of its slot, so it normally ends on its own (and on
# SIGTERM it still leaves every finished group in ops.json)
step bench_ops "$BENCH_S" bench.log \
  "$PY" bench/bench_ops.py --device "$DEVICE" --json "$OUTDIR/ops.json" --smoke "$OUTDIR/smoke.json" \
  --max-seconds $((BENCH_S * 3 / 4)) ${NCS_CHECK_BENCH_ARGS:-}

# ---------------------------------------------------------------- 5. trainer stages -> stages.json
if [ -f bench/stages.py ]; then
  STAGES_ARGS=(--device "$DEVICE" --json "$OUTDIR/stages.json")
  [ "$CPU" = 1 ] && STAGES_ARGS+=(--tiny)
  step stages "${NCS_CHECK_STAGES_S:-60}" bench.log "$PY" bench/stages.py "${STAGES_ARGS[@]}"
else
  record stages skipped 0 0 bench.log "bench/stages.py does not exist"
fi

# ---------------------------------------------------------------- 6. CUDA / Triton tests, the time left
# GPU: every CUDA/Triton kernel test file (compiled kernels first), -k "cuda or triton" (the
# param ids triton-cuda / cuda-cuda, and the triton-cpu ones, which conftest skips with the
# reason where CUDA is present and the interpreter is off). The compile-only modules
# (test_cuda_compile.py, test_triton_compile.py) are left out: CI runs them, a GPU adds nothing.
if [ "$CPU" = 1 ]; then
  DEF_PATHS="tests/kernels/test_cuda_backend.py tests/kernels/test_triton_backend.py"
  DEF_K="deterministic"
  DEF_XDIST=0
else
  DEF_PATHS="tests/kernels/test_cuda_backend.py tests/kernels/test_triton_backend.py tests/kernels/test_ops_masked_linear.py tests/kernels/test_ops_cross.py tests/kernels/test_optim.py tests/kernels"
  DEF_K="cuda or triton"
  DEF_XDIST=8
fi
# probe the plugins first (a few seconds), then size the step on what is left after the probe
HAVE_XDIST=0; HAVE_TIMEOUT=0; HAVE_SESSION_TIMEOUT=0
if wanted tests; then
  "$PY" -c "import xdist" >/dev/null 2>&1 && HAVE_XDIST=1
  if "$PY" -c "import pytest_timeout" >/dev/null 2>&1; then
    HAVE_TIMEOUT=1
    # pytest-timeout >= 2.3 has --session-timeout
    "$PY" -m pytest -p no:cacheprovider --help 2>/dev/null | grep -q -- "--session-timeout" && HAVE_SESSION_TIMEOUT=1
  fi
fi
TESTS_LEFT=$(left_s)
TESTS_S="${NCS_CHECK_TESTS_S:-$TESTS_LEFT}"
[ "$TESTS_S" -gt "$TESTS_LEFT" ] && TESTS_S=$TESTS_LEFT
TEST_ARGS=(-v -rfEs -p no:cacheprovider --maxfail="${NCS_CHECK_MAXFAIL:-25}"
           --ignore=tests/kernels/test_cuda_compile.py --ignore=tests/kernels/test_triton_compile.py)
PLUGINS=""
XDIST="${NCS_CHECK_XDIST:-$DEF_XDIST}"
if [ "$XDIST" != 0 ]; then
  if [ "$HAVE_XDIST" = 1 ]; then
    TEST_ARGS+=(-n "$XDIST")
    PLUGINS+="xdist -n $XDIST; "
  else
    PLUGINS+="pytest-xdist missing: one process; "
  fi
fi
if [ "$HAVE_TIMEOUT" = 1 ]; then
  PER_TEST="${NCS_CHECK_TEST_TIMEOUT:-90}"
  [ "$PER_TEST" -gt $((TESTS_S / 2)) ] && PER_TEST=$((TESTS_S / 2))
  [ "$PER_TEST" -lt 5 ] && PER_TEST=5
  TEST_ARGS+=(--timeout="$PER_TEST")
  PLUGINS+="pytest-timeout --timeout=$PER_TEST"
  # pytest-timeout >= 2.3: stop starting tests before the step's own timeout (the step then
  # ends by itself, with pytest's summary)
  if [ "$HAVE_SESSION_TIMEOUT" = 1 ]; then
    TEST_ARGS+=(--session-timeout=$((TESTS_S > 40 ? TESTS_S - 20 : TESTS_S * 2 / 3)))
    PLUGINS+=" --session-timeout"
  fi
else
  PLUGINS+="pytest-timeout missing: no per-test timeout (the step's timeout still holds)"
fi
if wanted tests; then
  echo "[gpu_check] tests: $PLUGINS" >&2
  { echo; echo "===== [tests] plugins: $PLUGINS"; } >> "$OUTDIR/tests.log"
fi
# shellcheck disable=SC2086  # the path list is word-split on purpose
STEP_NOTE="$PLUGINS"
step tests "$TESTS_S" tests.log \
  "$PY" -m pytest "${TEST_ARGS[@]}" ${NCS_CHECK_TESTS_PATH:-$DEF_PATHS} -k "${NCS_CHECK_TESTS_K:-$DEF_K}"
if [ -f "$OUTDIR/tests.log" ] && wanted tests; then
  # per-test outcomes counted from the -v lines (also right for a step killed by its timeout)
  COUNTS=$("$PY" -c '
import json, re, sys
text = open(sys.argv[1], errors="replace").read()
c = {k: len(re.findall(r"(?:::\S+|\]) " + k + r"\b", text)) for k in ("PASSED", "FAILED", "SKIPPED", "ERROR", "XFAIL", "XPASS")}
failed = sorted(set(re.findall(r"FAILED (\S+::\S+)", text)) | set(re.findall(r"(\S+::\S+) FAILED", text)))
c["failed_tests"] = failed[:50]
print(json.dumps({k.lower() if k.isupper() else k: v for k, v in c.items()}))
' "$OUTDIR/tests.log" 2>/dev/null) && EXTRA+=$',\n "tests": '"$COUNTS" && write_summary
fi

rm -f "$OUTDIR"/.tmp-*  # a step killed mid-write leaves its temporary file; the finished files stay
write_summary
echo "[gpu_check] done in $(( $(date +%s) - START ))s; all_ok=$ALL_OK; files in $OUTDIR:" >&2
ls -1 "$OUTDIR" >&2
[ "$ALL_OK" = 1 ]
