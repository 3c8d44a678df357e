"""Launch limits of the Triton backend, checked without a GPU: the int64 split offset of the dW
sum, every masked_linear launch made under the tensors' device (mocked), and the conftest rule
that skips the triton-on-CPU cases where CUDA is present and the interpreter is off.
"""
import contextlib

import pytest
import torch
import triton
import triton.language as tl

from conftest import backend_device_params, triton_cpu_skip_reason
from ncs_kernels import pack_mask

from _cases import triton_module

TC = triton_module("_common")
ML = triton_module("masked_linear")

INTERPRET = TC.interpreting()
DEVICE = "cpu" if INTERPRET or not torch.cuda.is_available() else "cuda"


# ---- item 7: the split offset of the [SPLITS, N*K] partials is formed in int64 ----------------

@triton.jit
def _offsets_kernel(out_ptr, NUMEL, SPLITS):
    for s in range(0, SPLITS):
        tl.store(out_ptr + s, ML._split_offset(s, NUMEL))


def test_split_offset_does_not_overflow_int32():
    # 3 * 2**30 = 3221225472 > 2**31 - 1: an int32 product would wrap to -1073741824 (the
    # interpreter wraps int32 arithmetic exactly as the GPU does)
    numel = 2 ** 30
    out = torch.full((4,), -7, dtype=torch.int64, device=DEVICE)
    _offsets_kernel[(1,)](out, numel, 4)
    assert out.tolist() == [0, numel, 2 * numel, 3 * numel]


def test_sum_splits_kernel_uses_the_int64_offset():
    # the kernel's own result on a small buffer, in a fixed split order
    numel, splits = 1000, 3
    part = torch.randn(splits, numel, device=DEVICE)
    out = torch.empty(numel, device=DEVICE)
    ML._sum_splits_kernel[(triton.cdiv(numel, 256),)](part, out, numel, splits, BLOCK=256, num_warps=4)
    exp = part[0] + part[1] + part[2]  # the same left-to-right order: bitwise equal
    assert torch.equal(out, exp)


# ---- item 6: every launch under device_guard(tensor) ---------------------------------------------

def test_device_guard_is_a_no_op_for_cpu_tensors():
    guard = TC.device_guard(torch.zeros(1))
    assert isinstance(guard, contextlib.nullcontext)


def test_device_guard_selects_the_tensors_cuda_device(monkeypatch):
    seen = []

    @contextlib.contextmanager
    def fake_device(dev):
        seen.append(torch.device(dev))
        yield

    class FakeCudaTensor:  # a CUDA tensor's .device without a GPU
        device = torch.device("cuda", 1)

    monkeypatch.setattr(torch.cuda, "device", fake_device)
    with TC.device_guard(FakeCudaTensor()):
        pass
    assert seen == [torch.device("cuda", 1)]


class _Recorder:
    """Stands in for device_guard and the kernels: records each launch and whether it was made
    inside a guard, and on which tensor's device the guard was taken."""

    def __init__(self):
        self.depth = 0
        self.guard_devices = []
        self.launches = []

    def guard(self, t):
        rec = self

        @contextlib.contextmanager
        def cm():
            rec.guard_devices.append(t.device)
            rec.depth += 1
            try:
                yield
            finally:
                rec.depth -= 1

        return cm()

    def kernel(self, name, real):
        rec = self

        class Fake:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    rec.launches.append((name, rec.depth > 0))
                    return real[grid](*args, **kwargs)  # still compute (interpreter / GPU)

                return launch

        return Fake()


@pytest.fixture
def recorder(monkeypatch):
    rec = _Recorder()
    monkeypatch.setattr(ML, "device_guard", rec.guard)
    for name in ("_masked_mm_kernel", "_dw_kernel", "_sum_splits_kernel", "_apply_mask_kernel"):
        monkeypatch.setattr(ML, name, rec.kernel(name, getattr(ML, name)))
    return rec


@pytest.mark.parametrize("mode", ["fused", "materialize"])
def test_every_masked_linear_launch_is_under_the_device_guard(recorder, monkeypatch, mode):
    monkeypatch.setenv("NCS_TRITON_WEIGHT_MASK", mode)
    g = torch.Generator().manual_seed(0)
    b, k, n = 70, 45, 20
    x = torch.randn(b, k, generator=g).to(DEVICE)
    w = torch.randn(n, k, generator=g).to(DEVICE)
    dy = torch.randn(b, n, generator=g).to(DEVICE)
    m = torch.rand(n, k, generator=g) < 0.5
    packed = pack_mask(m).to(DEVICE)
    y = ML.masked_linear_forward(x, w, packed)
    _, dw, _ = ML.masked_linear_backward(dy, x, w, packed, need_x=True, need_w=True, need_b=False, splits=2)
    names = [n_ for n_, _ in recorder.launches]
    assert "_masked_mm_kernel" in names and "_dw_kernel" in names and "_sum_splits_kernel" in names
    assert ("_apply_mask_kernel" in names) == (mode == "materialize")
    assert all(inside for _, inside in recorder.launches), recorder.launches
    assert all(d == torch.device(DEVICE) or d.type == DEVICE for d in recorder.guard_devices)
    # and the launches still computed the right thing
    wm = w * m.to(DEVICE)
    torch.testing.assert_close(y, x @ wm.t(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dw, (dy.t() @ x) * m.to(DEVICE), rtol=1e-4, atol=1e-4)


# ---- item 1: the conftest rule for the triton-on-CPU cases ---------------------------------------

def _marks(params):
    return {p.id: [m.kwargs.get("reason") for m in p.marks if m.name == "skip"] for p in params}


def test_triton_cpu_skip_reason_only_with_cuda_and_no_interpreter():
    why = triton_cpu_skip_reason(cuda_available=True, interpreting=False)
    assert why and "TRITON_INTERPRET" in why
    assert triton_cpu_skip_reason(cuda_available=True, interpreting=True) is None
    assert triton_cpu_skip_reason(cuda_available=False, interpreting=True) is None
    assert triton_cpu_skip_reason(cuda_available=False, interpreting=False) is None


def test_backend_device_params_on_a_gpu_machine_without_interpreter():
    marks = _marks(backend_device_params(cuda_available=True, interpreting=False))
    assert set(marks) == {"cpu-cpu", "triton-cpu", "triton-cuda", "cuda-cuda"}
    assert marks["cpu-cpu"] == [] and marks["triton-cuda"] == [] and marks["cuda-cuda"] == []
    assert len(marks["triton-cpu"]) == 1 and "TRITON_INTERPRET" in marks["triton-cpu"][0]


def test_backend_device_params_without_cuda_run_the_interpreter_cases():
    marks = _marks(backend_device_params(cuda_available=False, interpreting=True))
    assert marks["cpu-cpu"] == [] and marks["triton-cpu"] == []
    assert marks["triton-cuda"] == ["no CUDA device"] and marks["cuda-cuda"] == ["no CUDA device"]


def test_backend_device_params_gpu_with_interpreter_on_skips_triton_cuda():
    marks = _marks(backend_device_params(cuda_available=True, interpreting=True))
    assert marks["triton-cpu"] == [] and marks["cuda-cuda"] == []
    assert len(marks["triton-cuda"]) == 1 and "interpreter" in marks["triton-cuda"][0]
