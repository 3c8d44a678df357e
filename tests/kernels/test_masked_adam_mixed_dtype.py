"""Mixed-dtype Adam state (grad or moments in another dtype than the param): backend="auto" runs
it on the `torch` reference; an explicitly requested other backend is an error naming `backend`
(it used to be replaced by torch silently)."""
import pytest
import torch

import ncs_kernels as nk
from ncs_kernels.backends.registry import BACKENDS, why_unavailable

from _cases import make_mask, randn

# param dtypes each backend runs on CPU tensors here
_PARAM_DTYPE = {"cpu": torch.float64, "triton": torch.float32}
EXPLICIT = [b for b in BACKENDS if b != "torch" and why_unavailable(b, "cpu") is None]


def _state(param_dtype, moment_dtype):
    _, packed = make_mask(6, 45, 0.5, seed=1)
    p = randn(6, 45, seed=2, dtype=param_dtype)
    g = randn(6, 45, seed=3, dtype=param_dtype)
    m = randn(6, 45, seed=4, scale=0.1, dtype=moment_dtype)
    v = randn(6, 45, seed=5, dtype=moment_dtype).abs()
    return p, g, m, v, packed


def _other(dtype):
    return torch.float32 if dtype == torch.float64 else torch.float64


def test_explicit_backends_exist_here():
    assert EXPLICIT, "no native or Triton backend runs on CPU here: this file would test nothing"


@pytest.mark.parametrize("backend", EXPLICIT)
def test_explicit_backend_with_mixed_state_is_an_error(backend):
    dt = _PARAM_DTYPE[backend]
    p, g, m, v, packed = _state(dt, _other(dt))
    before = [t.clone() for t in (p, m, v)]
    with pytest.raises(ValueError, match=rf"^backend: '{backend}' needs grad and moments in the dtype of param"):
        nk.masked_adam_step_(p, g, m, v, packed, 1, 1e-2, backend=backend)
    for t, b in zip((p, m, v), before):
        assert torch.equal(t, b)  # nothing was written
    with pytest.raises(ValueError, match=rf"^backend: '{backend}' needs grad and moments"):
        nk.masked_adam_step_(p, g.to(_other(dt)), p.clone(), p.clone(), packed, 1, 1e-2, backend=backend)
    with pytest.raises(ValueError, match=rf"^backend: '{backend}'"):
        nk.masked_adam_task_step_(p, g, torch.stack([m, m]), torch.stack([v, v]), packed, 1, 1, 1e-2, backend=backend)


@pytest.mark.parametrize("override", [None] + EXPLICIT)
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_auto_and_torch_run_mixed_state_on_the_reference(backend, override):
    dt = _PARAM_DTYPE.get(override, torch.float32)
    p, g, m, v, packed = _state(dt, _other(dt))
    want = [t.clone() for t in (p, m, v)]
    nk.reference.masked_adam_step_(want[0], g, want[1], want[2], packed, 2, 1e-2, 0.9, 0.999, 1e-8, 0.01, False)
    if override is None:
        nk.masked_adam_step_(p, g, m, v, packed, 2, 1e-2, weight_decay=0.01, backend=backend)
    else:  # use_backend sets what "auto" means; mixed state still goes to the reference
        with nk.use_backend(override):
            nk.masked_adam_step_(p, g, m, v, packed, 2, 1e-2, weight_decay=0.01, backend=backend)
    for got, exp in zip((p, m, v), want):
        assert torch.equal(got, exp)


def test_optimizer_with_same_dtype_state_never_meets_the_error():
    """MaskedAdam keeps its moments in the param's dtype (zeros_like), so an explicit backend in
    the trainer never sees mixed state."""
    backend = EXPLICIT[0]
    w = torch.nn.Parameter(randn(6, 45, seed=6, dtype=_PARAM_DTYPE[backend]))
    opt = nk.MaskedAdam([w], lr=1e-2, backend=backend)
    w.grad = randn(6, 45, seed=7, dtype=w.dtype)
    opt.step()
    assert opt.state[w]["exp_avg"].dtype == w.dtype
