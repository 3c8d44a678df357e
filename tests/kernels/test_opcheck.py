"""torch.library.opcheck for every custom op ncs_kernels registers (the ncs:: namespace), on every
backend: the schema (no undeclared mutation or aliasing), the autograd registration, the fake
(meta) impl against the real one, and AOT dispatch with dynamic shapes (what torch.compile does).

As torchao's test/test_ops.py does it, over small shapes (odd sizes, K off the 32-bit word, no
bias, each gradient subset of the backward ops). The backends on CPU tensors run here (torch,
cpu, triton in the Triton interpreter); the CUDA ones skip with the reason without a GPU. Two
self-tests register deliberately broken ops and check opcheck refuses them: the check can fail.
"""
import pytest
import torch

import ncs_kernels as nk

from _cases import cross_inputs, linear_inputs, one_per_backend

TARGETS = [pytest.param(None, id="torch-cpu")] + one_per_backend()


def _where(target):
    return ("torch", "cpu") if target is None else (target.backend, target.device)


# per op: the sample argument tuples, given (backend, device); small shapes (the interpreter is slow)
LINEAR_SHAPES = [(3, 37, 5, 0.5), (1, 1, 1, 1.0)]
CROSS_SHAPES = [(2, 3, 4, 5, 0.5), (1, 1, 1, 1, 0.0)]


def _forward_samples(make, shapes):
    def samples(backend, device):
        out = []
        for i, shape in enumerate(shapes):
            inp, w, packed, bias, _ = make(*shape, device)
            inp.requires_grad_(True)
            w.requires_grad_(True)
            bias = bias.requires_grad_(True) if i == 0 else None  # with and without bias
            out.append((inp, w, packed, bias, backend))
        return out
    return samples


def _backward_samples(make, shapes):
    def samples(backend, device):
        out = []
        for shape, needs in zip(shapes, [(True, True, True), (False, True, False)]):
            inp, w, packed, _, dy = make(*shape, device)
            out.append((dy, inp, w, packed, backend, *needs))
        return out
    return samples


def _lin(b, k, n, density, device):
    x, w, bias, dy, _, packed = linear_inputs(b, k, n, density, device=device)
    return x, w, packed, bias, dy


def _cro(b, f, d, n, density, device):
    emb, w, bias, dy, _, packed = cross_inputs(b, f, d, n, density, device=device)
    return emb, w, packed, bias, dy


CASES = {
    "ncs::masked_linear": _forward_samples(_lin, LINEAR_SHAPES),
    "ncs::masked_linear_backward": _backward_samples(_lin, LINEAR_SHAPES),
    "ncs::cross_masked_linear": _forward_samples(_cro, CROSS_SHAPES),
    "ncs::cross_masked_linear_backward": _backward_samples(_cro, CROSS_SHAPES),
}


def _op(qualname):
    ns, name = qualname.split("::")
    return getattr(getattr(torch.ops, ns), name).default


def test_every_registered_custom_op_has_opcheck_cases():
    registered = {n for n in torch._C._dispatch_get_all_op_names() if n.startswith("ncs::")}
    assert registered == set(CASES), f"custom ops without opcheck cases: {sorted(registered - set(CASES))}"


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("qualname", sorted(CASES))
def test_opcheck(qualname, target):
    backend, device = _where(target)
    for args in CASES[qualname](backend, device):
        torch.library.opcheck(_op(qualname), args)


# ---- the check can fail -----------------------------------------------------------------------

@torch.library.custom_op("ncs_selftest::wrong_fake_shape", mutates_args=())
def _wrong_fake_shape(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@_wrong_fake_shape.register_fake
def _(x):
    return x.new_empty(x.shape[0] + 1)


@torch.library.custom_op("ncs_selftest::undeclared_mutation", mutates_args=())
def _undeclared_mutation(x: torch.Tensor) -> torch.Tensor:
    x.add_(1)  # mutates its input, but the schema says it does not
    return x.clone()


def test_opcheck_catches_a_wrong_fake_impl():
    with pytest.raises(Exception, match="(?i)shape|size"):
        torch.library.opcheck(torch.ops.ncs_selftest.wrong_fake_shape.default, (torch.randn(3),),
                              test_utils="test_faketensor")


def test_opcheck_catches_an_undeclared_mutation():
    with pytest.raises(Exception, match="(?i)mutat"):
        torch.library.opcheck(torch.ops.ncs_selftest.undeclared_mutation.default, (torch.randn(3),),
                              test_utils="test_schema")


def test_public_ops_reach_the_custom_ops_under_compile():
    """The custom ops above are what torch.compile traces for nk.masked_linear / cross_masked_linear."""
    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    x, w, bias, _, _, packed = linear_inputs(3, 37, 5, 0.5)
    emb, wc, biasc, _, _, packedc = cross_inputs(2, 3, 4, 5, 0.5)
    torch.compile(lambda: nk.masked_linear(x, w, packed, bias, backend="torch"), backend=backend, fullgraph=True)()
    torch.compile(lambda: nk.cross_masked_linear(emb, wc, packedc, biasc, backend="torch"), backend=backend,
                  fullgraph=True)()
    assert "ncs.masked_linear.default" in seen and "ncs.cross_masked_linear.default" in seen, seen
