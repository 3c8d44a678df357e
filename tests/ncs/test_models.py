"""Models (shapes, embeddings, masks in the forward), losses and metrics."""
import math

import pytest
import torch

import ncs_kernels as nk
from _tiny import one_thread  # noqa: F401 (a fixture)
from ncs.config import defaults
from ncs.losses import elementwise_loss, multitask_loss, task_loss
from ncs.metrics import auc, json_safe, task_metrics
from ncs.models import FieldEmbeddings, LayerShareModel, NCSModel, SingleTaskModel, build_model, check_ids


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield

VOCAB = [5, 7, 3, 9]
TASKS = ("ctr", "cvr")


def _cfg(hidden=(16, 8, 4), d=4):
    return defaults().override({"model": {"embed_dim": d, "hidden": list(hidden)}}).model


def _ids(b=6, l=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, v, (b, l), generator=g) for v in VOCAB], dim=1)
    ids[:, :, 1:][torch.rand(b, len(VOCAB), l - 1, generator=g) < 0.5] = -1  # padding
    return ids


@pytest.mark.parametrize("kind", ["single", "layer", "connection"])
def test_shapes_all_models(kind):
    torch.manual_seed(0)
    model = build_model(kind, VOCAB, TASKS, _cfg())
    ids = _ids()
    out = model(ids)
    assert set(out) == set(TASKS) and all(v.shape == (6,) for v in out.values())
    for t in TASKS:
        assert model(ids, t).shape == (6,)
    pred = model.predict(ids)
    assert set(pred) == set(TASKS)
    with pytest.raises(KeyError, match="unknown task"):
        model(ids, "like")
    # every parameter is an embedding table (SparseAdam) or a dense parameter (MaskedAdam), once
    emb = {id(p) for p in model.embedding_parameters()}
    dense = {id(p) for p in model.dense_parameters()}
    assert not emb & dense and emb | dense == {id(p) for p in model.parameters()}


def test_model_structure_uses_kernel_layers_and_xavier():
    torch.manual_seed(0)
    m = NCSModel(VOCAB, ("ctr", "cvr", "like"), 4, [16, 8, 4])
    layers = list(m.tower.layers)
    assert isinstance(layers[0], nk.CrossMaskedLinear) and layers[0].in_features == 16 + 16
    assert all(isinstance(x, nk.MaskedLinear) for x in layers[1:])
    assert [x.out_features for x in layers] == [16, 8, 4]
    assert all(float(x.bias.detach().abs().sum()) == 0 for x in layers)
    bound = math.sqrt(6 / (32 + 16))
    assert float(layers[0].weight.detach().abs().max()) <= bound
    assert set(m.heads) == {"ctr", "cvr", "like"}
    lay = LayerShareModel(VOCAB, TASKS, 4, [16, 8, 4])
    assert lay.towers["ctr"].layers[0].weight is not lay.towers["cvr"].layers[0].weight
    single = SingleTaskModel(VOCAB, TASKS, 4, [16, 8, 4])
    assert len(single.embedding_parameters()) == 2 and len(lay.embedding_parameters()) == 1
    # the connection model has half the tower weights of layer-share
    n_conn = sum(p.numel() for p in m.tower.parameters())
    n_lay = sum(p.numel() for p in lay.towers.parameters())
    assert n_lay == 2 * n_conn


def test_connection_forward_applies_the_task_mask():
    torch.manual_seed(0)
    m = NCSModel(VOCAB, TASKS, 4, [16, 8, 4])
    ids = _ids()
    dense = m(ids)
    # all-ones masks: the masked forward equals the dense one
    torch.testing.assert_close(m(ids, "cvr"), dense["cvr"])
    first = m.tower.layers[0]
    m.set_task_masks("cvr", {"tower.layers.0": torch.zeros(first.out_features, first.in_features, dtype=torch.bool)})
    # cvr's first layer has no input weights: its output no longer depends on the ids
    y = m(ids, "cvr")
    assert torch.allclose(y, y[0].expand_as(y))
    torch.testing.assert_close(m(ids, "ctr"), dense["ctr"])  # ctr's mask untouched
    assert m.get_task_masks("cvr")["tower.layers.0"].abs().sum() == 0


def test_embeddings_pad_excluded_or_included():
    torch.manual_seed(0)
    e = FieldEmbeddings(VOCAB, 3, pad_included=False)
    ids = torch.tensor([[[1, 2, -1], [0, -1, -1], [2, 2, 1], [8, -1, -1]]])
    out = e(ids)
    w = e.bag.weight
    off = [0, 5, 12, 15]
    torch.testing.assert_close(out[0, 0], (w[off[0] + 1] + w[off[0] + 2]) / 2)
    torch.testing.assert_close(out[0, 1], w[off[1] + 0])
    torch.testing.assert_close(out[0, 2], (2 * w[off[2] + 2] + w[off[2] + 1]) / 3)
    torch.testing.assert_close(out[0, 3], w[off[3] + 8])
    inc = FieldEmbeddings(VOCAB, 3, pad_included=True)
    with torch.no_grad():
        inc.bag.weight.copy_(w)
    torch.testing.assert_close(inc(ids)[0, 0], (w[1] + w[2] + w[0]) / 3)  # padding counted as row 0
    # sparse gradients touch only the rows of the batch (never the padding row)
    out.sum().backward()
    g = e.bag.weight.grad
    assert g.is_sparse
    rows = set(g.coalesce().indices()[0].tolist())
    assert rows == {1, 2, 5, 14, 13, 23} and e.pad_row not in rows


def test_check_ids():
    check_ids(_ids(), VOCAB)
    bad = _ids()
    bad[0, 2, 0] = 3
    with pytest.raises(ValueError, match="field 2"):
        check_ids(bad, VOCAB)


def test_cvr_loss_with_no_clicks_is_zero_not_nan():
    logits = torch.randn(8, requires_grad=True)
    target = torch.zeros(8)
    none = torch.zeros(8, dtype=torch.bool)
    loss = task_loss("mse", logits, target, none)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros(8))
    # Eq. 1 divides by the count of the space only
    some = torch.tensor([1, 0, 0, 1, 0, 0, 0, 0], dtype=torch.bool)
    t = torch.rand(8)
    expect = ((torch.sigmoid(logits.detach()) - t)[some] ** 2).mean()
    torch.testing.assert_close(task_loss("mse", logits.detach(), t, some), expect)


def test_eq2_weighted_sum():
    torch.manual_seed(0)
    tasks = defaults().tasks
    logits = {"ctr": torch.randn(10), "cvr": torch.randn(10)}
    click = (torch.rand(10) > 0.5).float()
    targets = {"ctr": click, "cvr": torch.rand(10) * click}
    total, parts = multitask_loss(logits, targets, {"ctr": None, "cvr": click > 0}, tasks)
    torch.testing.assert_close(total, 0.7 * parts["ctr"] + 0.3 * parts["cvr"])
    total0, parts0 = multitask_loss(logits, targets, {"ctr": None, "cvr": torch.zeros(10, dtype=torch.bool)}, tasks)
    assert parts0["cvr"].item() == 0.0 and torch.isfinite(total0)


def test_focal_loss_reduces_to_bce():
    x, y = torch.randn(20), (torch.rand(20) > 0.5).float()
    torch.testing.assert_close(elementwise_loss("focal", x, y, gamma=0.0, alpha=None), elementwise_loss("bce", x, y))
    f = elementwise_loss("focal", x, y, gamma=2.0, alpha=0.25)
    assert bool((f <= elementwise_loss("bce", x, y)).all())
    with pytest.raises(ValueError, match="kind"):
        elementwise_loss("hinge", x, y)


def test_auc_matches_pair_count_with_ties():
    g = torch.Generator().manual_seed(1)
    s = torch.randint(0, 5, (60,), generator=g).float()
    y = (torch.rand(60, generator=g) > 0.6).float()
    pos, neg = s[y > 0.5], s[y < 0.5]
    pairs = (pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()
    assert auc(s, y) == pytest.approx(float(pairs.mean()))
    assert math.isnan(auc(s, torch.zeros(60)))
    m = task_metrics({"name": "cvr", "loss": "mse"}, torch.zeros(3), torch.tensor([0.5, 0.0, 1.0]),
                     torch.tensor([True, False, True]))
    assert m == {"cvr_mse": pytest.approx(0.125), "cvr_rows": 2}
    assert json_safe({"a": [float("nan"), 1.0]}) == {"a": [None, 1.0]}
