"""Benchmarks for ncs_kernels and the ncs trainer.

pytest-benchmark suites:  pytest bench/ --benchmark-only
side-by-side script:      python bench/bench_ops.py --json bench/results/auto
trainer stages:           python bench/stages.py --json bench/results/auto
GPU check (one script):   bash bench/gpu_check.sh OUTDIR
See bench/results/README.md.

The shared helpers, one concern each:
  _env.py          environment knobs (NCS_BENCH_*), the backend registry as bench reads it, the
                   machine/version record of a run, result paths, write_json
  _cases.py        the case matrix: shapes, dtypes, modes, variants, why a case is skipped
  _problems.py     Problem: one case's tensors allocated once, and its step
  _timing.py       warm-up, CUDA-graph capture, the timed callable, time_once
  _memory.py       activation bytes (saved_tensors_hooks) and the CUDA peak of one step
  _pytest_glue.py  the pytest-benchmark glue of test_bench_*.py
  _cli.py          what the scripts share: op names, argument types, device, threads, SIGTERM
"""
import sys as _sys
from pathlib import Path as _Path

try:  # an installed (or editable) ncs_kernels wins; else run from the checkout
    import ncs_kernels as _nk  # noqa: F401
except ImportError:  # pragma: no cover - depends on how the repo was set up
    _repo = _Path(__file__).resolve().parents[1]
    for _p in (_repo / "python", _repo):
        if str(_p) not in _sys.path:
            _sys.path.insert(0, str(_p))
