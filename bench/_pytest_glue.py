"""The pytest-benchmark glue of bench/test_bench_*.py: one pytest.param per case of the matrix
(bench/_cases.py), and one timed case with what was run, where, and its memory recorded in
benchmark.extra_info.

Environment knobs: NCS_BENCH_DEVICE, NCS_BENCH_BATCH, NCS_BENCH_DTYPES, NCS_BENCH_MODES,
NCS_BENCH_ROUNDS, NCS_BENCH_WARMUP, NCS_BENCH_THREADS, NCS_BENCH_TINY (see bench/_env.py).
"""
from __future__ import annotations

from typing import Dict

import pytest

from bench import _cases as K
from bench import _env, _memory, _problems, _timing


def pytest_cases(op: str, device: str) -> list:
    """pytest.param(op, variant, shape, dtype_name, mode) for every case of `op` on `device`,
    unavailable backends included (they skip with the reason why_skip gives)."""
    return [pytest.param(op, v, shape, dt, mode, id=f"{K.shape_id(shape)}-{dt}-{mode}-{v}")
            for shape, dt, mode, v in K.cases(op, device)]


def extra_info(op: str, variant: str, shape: Dict[str, int], dtype_name: str, mode: str, device: str) -> Dict[str, object]:
    """What pytest-benchmark records beside each timing (benchmark.extra_info)."""
    v = _env.versions()
    return {
        "op": op, "variant": variant, "backend": K.variant_backend(variant) or "pytorch", "dtype": dtype_name,
        "mode": mode, "shape": dict(shape), "density": K.DENSITY, "device": device,
        "device_name": _env.device_name(device),
        "torch": v["torch"], "triton": v["triton"], "torch_cuda": v["torch_cuda"],
    }


def run_pytest_benchmark(benchmark, op: str, variant: str, shape: Dict[str, int], dtype_name: str,
                         mode: str, device: str) -> None:
    """Time one case with pytest-benchmark (synchronising inside the timed function on CUDA)
    and record what was run, where, and its memory in benchmark.extra_info."""
    why = K.why_skip(op, variant, device, dtype_name, mode)
    if why:
        pytest.skip(why)
    cuda = device == "cuda"
    rounds = _env.env_int("NCS_BENCH_ROUNDS", 50 if cuda else 5)
    warmup = _env.env_int("NCS_BENCH_WARMUP", 10 if cuda else 1)
    with K.precision(dtype_name):
        problem = _problems.make_problem(op, variant, shape, dtype_name, device, mode)
        _timing.warm_up(problem, device, warmup)
        mem = _memory.memory_info(problem, device)
        fn = _timing.runner(problem, device, mode, 1)

        def timed():
            fn()
            _timing.sync(device)

        benchmark.group = f"{op} {K.shape_id(shape)} {dtype_name} {mode}"
        benchmark.extra_info.update(extra_info(op, variant, shape, dtype_name, mode, device))
        benchmark.extra_info.update(mem)
        benchmark.extra_info["memory_method"] = "see ncs bench/_memory.py MEMORY_METHOD; peak measured on an eager step"
        benchmark.extra_info["gflop"] = problem.flop / 1e9
        benchmark.pedantic(timed, rounds=max(1, rounds), iterations=1, warmup_rounds=warmup)
