"""The Triton Adam launcher (issue 8, items 5 and 6), checked on CPU without launching on a GPU:
the grid it picks (1-D, within CUDA's limits, every element covered once), and that it launches
under the tensors' device."""
import contextlib

import pytest
import torch
import triton

from _cases import assert_close, make_mask, randn, ref, triton_module, why_unavailable

MA = triton_module("masked_adam")

GRID_Y_LIMIT = 65535  # CUDA's limit on gridDim.y / .z; gridDim.x allows 2^31 - 1


@pytest.mark.parametrize("interpret", [False, True])
def test_grid_for_a_20m_element_1d_parameter(interpret):
    """A 1-D parameter of 20M elements is stepped as [1, numel] without a mask: one flat 1-D grid
    (the old 2-D grid had cdiv(20M, 256) = 78125 > 65535 programs on axis 1, 15 of 16 rows idle)."""
    numel = 20_000_000
    cfg = MA.launch_config(1, numel, masked=False, interpret=interpret)
    assert cfg["kernel"] == "flat"
    assert len(cfg["grid"]) == 1
    (programs,) = cfg["grid"]
    assert programs == triton.cdiv(numel, cfg["BLOCK"]) and programs <= MA.MAX_GRID0
    assert (programs - 1) * cfg["BLOCK"] < numel <= programs * cfg["BLOCK"]  # no idle program, all covered
    if not interpret:
        assert cfg["BLOCK"] == 4096 and programs == 4883


@pytest.mark.parametrize("n,k", [(1, 20_000_000), (512, 1680), (5, 33), (70_000, 300), (1, 1), (300, 20_000_000)])
def test_masked_grid_is_1d_and_covers_every_tile(n, k):
    cfg = MA.launch_config(n, k, masked=True, interpret=False)
    assert cfg["kernel"] == "masked" and len(cfg["grid"]) == 1
    bn, bk = cfg["BLOCK_N"], cfg["BLOCK_K"]
    assert bn * bk <= 4096 and bk <= 256
    assert cfg["K_TILES"] == triton.cdiv(k, bk)
    assert cfg["grid"][0] == triton.cdiv(n, bn) * cfg["K_TILES"] <= MA.MAX_GRID0
    assert bn <= triton.next_power_of_2(n)  # a one-row weight gets one-row tiles


def test_grid_too_large_is_a_clear_error():
    with pytest.raises(ValueError, match="param: .* grid limit"):
        MA.launch_config(1, 2 ** 31 * 4096, masked=False, interpret=False)


class _FakeKernel:
    """Stands in for a @triton.jit kernel: records the grid and whether the launch happened
    inside the device guard."""

    def __init__(self, log, inside):
        self.log, self.inside = log, inside

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.log.append({"grid": grid, "inside": self.inside[0], "kwargs": kwargs})
        return launch


def _patch_launch(monkeypatch):
    log, inside, guarded = [], [False], []

    @contextlib.contextmanager
    def guard(t):
        guarded.append(t.device)
        inside[0] = True
        try:
            yield
        finally:
            inside[0] = False

    monkeypatch.setattr(MA, "device_guard", guard)
    monkeypatch.setattr(MA, "_adam_flat_kernel", _FakeKernel(log, inside))
    monkeypatch.setattr(MA, "_masked_adam_kernel", _FakeKernel(log, inside))
    return log, guarded


def test_launcher_uses_the_1d_grid_and_the_device_guard(monkeypatch):
    """The launcher itself (not only launch_config), on meta tensors: nothing is allocated or run."""
    log, guarded = _patch_launch(monkeypatch)
    numel = 20_000_000
    t = [torch.empty(1, numel, device="meta") for _ in range(4)]
    MA.masked_adam_step_(*t, None, 1, 1e-3, 0.9, 0.999, 1e-8)
    want = MA.launch_config(1, numel, masked=False)
    assert log[-1]["grid"] == want["grid"] and log[-1]["inside"] and log[-1]["kwargs"]["BLOCK"] == want["BLOCK"]
    w = [torch.empty(512, 1680, device="meta") for _ in range(4)]
    packed = torch.empty(512, 53, dtype=torch.int32, device="meta")
    MA.masked_adam_step_(*w, packed, 1, 1e-3, 0.9, 0.999, 1e-8)
    assert log[-1]["grid"] == MA.launch_config(512, 1680, masked=True)["grid"] and log[-1]["inside"]
    assert guarded == [torch.device("meta")] * 2


def test_device_guard_selects_the_tensors_cuda_device():
    """Without a GPU: the guard for a cuda:1 tensor is torch.cuda.device(1) (entered only at
    launch); CPU tensors (the interpreter) get a no-op context."""

    class FakeCudaTensor:
        device = torch.device("cuda", 1)

    g = MA.device_guard(FakeCudaTensor())
    assert isinstance(g, torch.cuda.device) and g.idx == 1
    with MA.device_guard(torch.zeros(1)):
        pass


@pytest.mark.skipif(why_unavailable("triton", "cpu") is not None,
                    reason="CPU tensors need the Triton interpreter (TRITON_INTERPRET=1); the GPU runs are in test_optim*.py")
def test_flat_kernel_matches_reference_under_the_interpreter():
    """The flat kernel really runs (interpreter): several programs, a ragged last block."""
    n, k = 1, 2 * 1024 + 37
    p0, g = randn(n, k, seed=1), randn(n, k, seed=2)
    m0, v0 = randn(n, k, seed=3), randn(n, k, seed=4).abs()
    mine = [p0.clone(), m0.clone(), v0.clone()]
    theirs = [p0.clone(), m0.clone(), v0.clone()]
    for step in (1, 2):
        MA.masked_adam_step_(mine[0], g, mine[1], mine[2], None, step, 1e-2, 0.9, 0.999, 1e-8, 0.01, True)
        ref.masked_adam_step_(theirs[0], g, theirs[1], theirs[2], None, step, 1e-2, 0.9, 0.999, 1e-8, 0.01, True)
    for a, b, name in zip(mine, theirs, ("param", "exp_avg", "exp_avg_sq")):
        assert_close(a, b, name, rtol=1e-5, atol_scale=1e-6)
    # and a masked weight with several row and column tiles (1-D grid split in the kernel)
    m_bool, packed = make_mask(37, 150, 0.5)
    p0, g = randn(37, 150, seed=5), randn(37, 150, seed=6)
    a, b = [p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)], [p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)]
    MA.masked_adam_step_(a[0], g, a[1], a[2], packed, 1, 1e-2, 0.9, 0.999, 1e-8)
    ref.masked_adam_step_(b[0], g, b[1], b[2], packed, 1, 1e-2, 0.9, 0.999, 1e-8)
    for x, y, name in zip(a, b, ("param", "exp_avg", "exp_avg_sq")):
        assert_close(x, y, name, rtol=1e-5, atol_scale=1e-6)
    assert torch.equal(a[0][~m_bool], p0[~m_bool])
