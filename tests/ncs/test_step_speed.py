"""The step-speed rewrites of the models (docs/STEP_SPEED.md): ReLU in place in the towers, the
padding rows of FieldEmbeddings filled in place. Each is checked against the plain formulation
it replaced, outputs and gradients."""
import pytest
import torch
import torch.nn.functional as F

import ncs_kernels as nk
from _tiny import one_thread  # noqa: F401 (a fixture)
from ncs.models import FieldEmbeddings, NCSModel, Stack

VOCAB = [5, 7, 3, 9]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _ids(b=9, l=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, v, (b, l), generator=g) for v in VOCAB], dim=1)
    ids[:, :, 1:][torch.rand(b, len(VOCAB), l - 1, generator=g) < 0.5] = -1  # padding
    ids[0, 2, :] = -1  # a field with no value at all
    return ids


def _grads(model):
    # the embedding table's gradient is sparse (sparse=True): compared dense
    return {n: (p.grad.to_dense() if p.grad.is_sparse else p.grad.clone())
            for n, p in model.named_parameters() if p.grad is not None}


def _plain_forward(model, ids, task=None):
    """The NCS model as it was written before: out-of-place ReLU, one nn.Linear call per head."""
    h = model.embeddings(ids)
    for layer in model.tower.layers:
        h = F.relu(layer(h, task))
    if task is None:
        return {t: model.heads[t](h).squeeze(-1) for t in model.tasks}
    return model.heads[task](h).squeeze(-1)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_warmup_network_is_exact_and_heads_stay_per_task(backend):
    """The warmup network (task None): in-place ReLU gives the same outputs and gradients, bit
    for bit, and a task's loss reaches no other task's head (no gradient at all, not a zero one:
    the gradient diagnostics and PCGrad read None as "not shared")."""
    if backend not in nk.backends():
        pytest.skip(f"backend {backend} is not available here")
    torch.manual_seed(0)
    tasks = ("ctr", "cvr", "third")
    model = NCSModel(VOCAB, tasks, 4, [16, 8, 5], backend=backend)
    ids = _ids()
    got = model(ids)
    want = _plain_forward(model, ids)
    for t in tasks:
        assert torch.equal(got[t], want[t])
    heads = {t: list(model.heads[t].parameters()) for t in tasks}
    for t in tasks:
        others = [p for u in tasks if u != t for p in heads[u]]
        gs = torch.autograd.grad(got[t].sum(), heads[t] + others, retain_graph=True, allow_unused=True)
        assert all(g is not None for g in gs[:len(heads[t])])
        assert all(g is None for g in gs[len(heads[t]):]), t


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_inplace_relu_tower_is_exact_under_a_mask(backend):
    """A task's forward (masked layers, one head): the same ops as before, so bit-identical."""
    if backend not in nk.backends():
        pytest.skip(f"backend {backend} is not available here")
    torch.manual_seed(1)
    model = NCSModel(VOCAB, ("ctr", "cvr"), 4, [16, 8], backend=backend)
    g = torch.Generator().manual_seed(3)
    for name, m in model.masked_layers().items():
        m.set_mask("cvr", torch.rand(m.out_features, m.in_features, generator=g) < 0.5)
    ids = _ids(seed=2)
    y = model(ids, "cvr")
    (y * torch.arange(y.numel(), dtype=y.dtype)).sum().backward()
    g_got = _grads(model)
    model.zero_grad(set_to_none=True)
    y0 = _plain_forward(model, ids, "cvr")
    (y0 * torch.arange(y0.numel(), dtype=y0.dtype)).sum().backward()
    assert torch.equal(y, y0)
    for n, gw in _grads(model).items():
        assert torch.equal(g_got[n], gw), n


def test_inplace_relu_stack_matches_out_of_place():
    torch.manual_seed(2)
    stack = Stack(6, [5, 4])
    x = torch.randn(7, 6, requires_grad=True)
    stack(x).sum().backward()
    gx, gw = x.grad.clone(), stack.layers[0].weight.grad.clone()
    x.grad = None
    stack.zero_grad(set_to_none=True)
    h = x
    for layer in stack.layers:
        h = F.relu(layer(h))
    h.sum().backward()
    assert torch.equal(gx, x.grad) and torch.equal(gw, stack.layers[0].weight.grad)
    assert torch.equal(Stack(6, [])(x), x)  # no layers: the identity, input untouched


@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_padding_rows_filled_in_place_equal_the_where_form(pooling):
    emb = FieldEmbeddings(VOCAB, 3, pooling=pooling)
    ids = _ids()
    rows_want = torch.where(ids >= 0, ids + emb.offsets, torch.full_like(ids, emb.pad_row))
    b, f, l = ids.shape
    want = emb.bag(rows_want.reshape(b * f, l)).view(b, f, 3)
    got = emb(ids)
    assert torch.equal(got, want)
    assert torch.equal(got[0, 2], torch.zeros(3))  # the field with only padding pools to 0
