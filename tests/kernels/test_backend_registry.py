"""The backend registry (ncs_kernels/backends/registry.py): every registered backend provides the
entry points of backends/protocol.Backend with the same signatures, the registry's facts are
consistent, and no backend module imports the dispatch layer (the import cycle stays gone)."""
import ast
import inspect
import pathlib

import pytest
import torch

import ncs_kernels as nk
from ncs_kernels import _backends
from ncs_kernels.backends import AUTO_ORDER, BACKENDS, ENTRY_POINTS, SPECS, Backend, load
from ncs_kernels.backends.registry import dtype_error, why_unavailable

from _cases import assert_close, make_mask, randn

BACKENDS_DIR = pathlib.Path(nk.__file__).parent / "backends"


def test_public_names_and_order():
    assert BACKENDS == ("torch", "cpu", "triton", "cuda")
    assert nk.BACKENDS == BACKENDS and callable(nk.backends) and "torch" in nk.backends()
    assert [s.name for s in SPECS] == list(BACKENDS)
    for device_type, order in AUTO_ORDER.items():
        assert order[-1] == "torch" and set(order) <= set(BACKENDS), (device_type, order)


def test_protocol_lists_the_entry_points():
    members = {n for n, v in vars(Backend).items() if inspect.isfunction(v) and not n.startswith("_")}
    assert members == set(ENTRY_POINTS)


def _positional(sig):
    return [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            and p.name != "self"]


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_satisfies_protocol(name):
    obj = load(name)  # loads without the hardware: a missing build or device is found only when called
    assert isinstance(obj, Backend), f"{name}: {obj!r} lacks some of {ENTRY_POINTS}"
    assert _backends.impl(name) is obj
    for entry in ENTRY_POINTS:
        want = _positional(inspect.signature(getattr(Backend, entry)))
        sig = inspect.signature(getattr(obj, entry))
        got = _positional(sig)
        assert [p.name for p in got] == [p.name for p in want], f"{name}.{entry}: parameters {sig}"
        assert [p.default for p in got] == [p.default for p in want], f"{name}.{entry}: defaults {sig}"
        extra = [p for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY]
        assert all(p.default is not p.empty for p in extra), f"{name}.{entry}: keyword-only without default {sig}"
        assert not any(p.kind in (p.VAR_POSITIONAL,) for p in sig.parameters.values()), f"{name}.{entry}: {sig}"


def test_native_backends_are_one_factory():
    cpu, cuda = load("cpu"), load("cuda")
    assert type(cpu) is type(cuda) and (cpu.name, cuda.name) == ("cpu", "cuda")
    from ncs_kernels.backends import cpu as cpu_attr, cuda as cuda_attr
    assert cpu_attr is cpu and cuda_attr is cuda


def test_no_backend_module_imports_the_dispatch_layer():
    """backends/* import nothing of ncs_kernels outside ncs_kernels/backends but masks and the top
    level helpers; in particular never _backends (which imports them)."""
    for path in sorted(BACKENDS_DIR.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            assert not any("_backends" in n for n in names), f"{path}: imports the dispatch layer ({names})"


def test_unknown_backend_is_an_error_naming_the_argument():
    for call in (lambda: why_unavailable("gpu"), lambda: _backends.resolve("gpu", torch.zeros(1)),
                 lambda: nk.use_backend("gpu").__enter__()):
        with pytest.raises(ValueError, match=r"backend: expected one of \('auto', 'torch', 'cpu', 'triton', 'cuda'\)"):
            call()


def test_device_and_dtype_facts_come_from_the_specs():
    assert why_unavailable("cpu", "cuda") == "backend 'cpu' runs on CPU tensors only, got a cuda tensor"
    assert why_unavailable("cuda", "cpu") == "backend 'cuda' runs on CUDA tensors only, got a cpu tensor"
    assert why_unavailable("torch", "meta") is None
    assert dtype_error("torch", "cpu", torch.float16) is None
    assert dtype_error("cpu", "cpu", torch.float64) is None
    assert "supports dtypes (float32, float64) on cpu, got float16" in dtype_error("cpu", "cpu", torch.float16)
    assert dtype_error("triton", "cuda", torch.bfloat16) is None
    assert "got bfloat16" in dtype_error("triton", "cpu", torch.bfloat16)
    if "cpu" in nk.backends():
        with pytest.raises(RuntimeError, match="backend 'cpu' cannot run this call: .*got float16"):
            _backends.resolve("cpu", torch.zeros(1, dtype=torch.float16))
    with nk.use_backend("torch"):
        assert _backends.resolve("auto", torch.zeros(1)) == "torch"


CPU_RUNNABLE = [b for b in BACKENDS if why_unavailable(b, "cpu") is None]


@pytest.mark.parametrize("name", CPU_RUNNABLE)
def test_every_entry_point_runs_through_the_registry(name):
    """A small call of each entry point of each backend that runs here, against the reference."""
    be, ref = load(name), nk.reference
    _, packed = make_mask(5, 37, 0.5, seed=1)
    x, w, b, dy = randn(3, 37, seed=2), randn(5, 37, seed=3), randn(5, seed=4), randn(3, 5, seed=5)
    assert_close(be.masked_linear_forward(x, w, packed, b), ref.masked_linear_forward(x, w, packed, b), "y")
    for got, want, what in zip(be.masked_linear_backward(dy, x, w, packed), ref.masked_linear_backward(dy, x, w, packed),
                               ("dx", "dw", "db")):
        assert_close(got, want, what)
    emb = randn(3, 3, 4, seed=6)  # width 9 + 12 = 21
    wc = randn(5, 21, seed=7)
    _, pc = make_mask(5, 21, 0.5, seed=8)
    assert_close(be.cross_masked_linear_forward(emb, wc, pc, b), ref.cross_masked_linear_forward(emb, wc, pc, b), "yc")
    for got, want, what in zip(be.cross_masked_linear_backward(dy, emb, wc, pc),
                               ref.cross_masked_linear_backward(dy, emb, wc, pc), ("demb", "dwc", "dbc")):
        assert_close(got, want, what)
    state = [randn(5, 37, seed=9), randn(5, 37, seed=10, scale=0.1), randn(5, 37, seed=11).abs()]
    mine = [t.clone() for t in state]
    g = randn(5, 37, seed=12)
    ref.masked_adam_step_(state[0], g, state[1], state[2], packed, 3, 1e-2, 0.9, 0.999, 1e-8, 0.1, True)
    be.masked_adam_step_(mine[0], g, mine[1], mine[2], packed, 3, 1e-2, 0.9, 0.999, 1e-8, 0.1, True)
    for got, want, what in zip(mine, state, ("param", "exp_avg", "exp_avg_sq")):
        assert_close(got, want, what)
