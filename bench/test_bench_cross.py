"""pytest-benchmark: cross_masked_linear forward+backward (feature cross fused into the first layer).

    pytest bench/test_bench_cross.py --benchmark-only

B=4096 (CPU default 1024; NCS_BENCH_BATCH), F=20, d=64, N=512, density 0.5. Every ncs backend's
fused op against: the unfused path (bmm + cat, then F.linear(x, W*M) with a float mask), dense
unfused (bmm + cat, F.linear without a mask: the floor), and bmm + cat followed by ncs
masked_linear (mask fused, cross not). Same dtype/mode matrix and knobs as
test_bench_masked_linear.py; activation and peak memory go into extra_info.
"""
import pytest

from bench import _env
from bench._pytest_glue import pytest_cases, run_pytest_benchmark

DEVICE = _env.bench_device()


@pytest.mark.parametrize("op,variant,shape,dtype_name,mode", pytest_cases("cross_masked_linear", DEVICE))
def test_cross_masked_linear_fwd_bwd(benchmark, op, variant, shape, dtype_name, mode):
    run_pytest_benchmark(benchmark, op, variant, shape, dtype_name, mode, DEVICE)
