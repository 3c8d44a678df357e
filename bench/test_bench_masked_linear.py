"""pytest-benchmark: masked_linear forward+backward and the masked optimizer step.

    pytest bench/test_bench_masked_linear.py --benchmark-only
    NCS_BENCH_BATCH=4096 pytest bench/ --benchmark-only --benchmark-json out.json   # paper batch on CPU

Cases (bench/_cases.py): the paper's layers (B x 1680->512, 512->256, 256->128), mask density 0.5,
every ncs backend (unavailable ones skip with the reason) against dense nn.Linear math (the floor),
the float-mask path F.linear(x, W*M) and torch.nn.utils.prune.custom_from_mask; and the strict
masked Adam step of every backend against the reference (nk:torch) and torch.optim.Adam.
fp32 on CPU; fp32, tf32 and bf16, eager and CUDA-graph, on CUDA. Environment knobs:
NCS_BENCH_DEVICE, NCS_BENCH_BATCH, NCS_BENCH_DTYPES, NCS_BENCH_MODES, NCS_BENCH_ROUNDS,
NCS_BENCH_WARMUP, NCS_BENCH_TINY. bench/bench_ops.py times the same cases interleaved in one run
and is what the README figures come from.
"""
import pytest

from bench import _env
from bench._pytest_glue import pytest_cases, run_pytest_benchmark

DEVICE = _env.bench_device()


@pytest.mark.parametrize("op,variant,shape,dtype_name,mode", pytest_cases("masked_linear", DEVICE))
def test_masked_linear_fwd_bwd(benchmark, op, variant, shape, dtype_name, mode):
    run_pytest_benchmark(benchmark, op, variant, shape, dtype_name, mode, DEVICE)


@pytest.mark.parametrize("op,variant,shape,dtype_name,mode", pytest_cases("masked_adam", DEVICE))
def test_masked_adam_step(benchmark, op, variant, shape, dtype_name, mode):
    run_pytest_benchmark(benchmark, op, variant, shape, dtype_name, mode, DEVICE)
