"""The MTL competitors (shared_bottom, mmoe, ple, esmm) and task-specific embeddings: each one's
defining property, shapes for 2 and 3 tasks, and training through the whole trainer."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

import ncs_kernels as nk
from _tiny import one_thread, tiny_run_config, tiny_run_data  # noqa: F401 (a fixture)
from ncs.config import ConfigError, defaults, resolve_config
from ncs.losses import esmm_loss, mixed_loss, multitask_loss
from ncs.models import (MODEL_KINDS, PAPER_NAMES, PRIVATE_EMBED_KINDS, RUN_ORDER, FieldEmbeddings, MMoEModel,
                        PLEModel, build_model, parameter_count)
from ncs.train import run
from ncs.train.runner import load_model, results_table

VOCAB = [5, 7, 3, 9]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _mcfg(**over):
    return defaults().override({"model": {"embed_dim": 4, "hidden": [16, 8, 4], **over}}).model


def _ids(b=6, l=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, v, (b, l), generator=g) for v in VOCAB], dim=1)
    ids[:, :, 1:][torch.rand(b, len(VOCAB), l - 1, generator=g) < 0.5] = -1
    return ids


def _variants():
    for kind in MODEL_KINDS:
        yield kind, {}
        if kind in PRIVATE_EMBED_KINDS:
            yield kind, {"task_embed_dim": 3}
    yield "ple", {"ple_levels": 2, "shared_experts": 2, "task_experts": 1}
    yield "mmoe", {"experts": 5}


@pytest.mark.parametrize("tasks", [("ctr", "cvr"), ("ctr", "cvr", "like")])
@pytest.mark.parametrize("kind, over", list(_variants()))
def test_shapes_and_interface(kind, over, tasks):
    torch.manual_seed(0)
    model = build_model(kind, VOCAB, tasks, _mcfg(**over))
    ids = _ids()
    out = model(ids)
    assert set(out) == set(tasks) and all(v.shape == (6,) for v in out.values())
    pred = model.predict(ids)
    for t in tasks:
        y = model(ids, t)
        assert y.shape == (6,) and torch.isfinite(y).all()
        if kind != "connection":  # no masks: the single-task forward is the served prediction
            torch.testing.assert_close(y, pred[t])
    with pytest.raises(KeyError, match="unknown task"):
        model(ids, "nope")
    emb = {id(p) for p in model.embedding_parameters()}
    dense = {id(p) for p in model.dense_parameters()}
    assert not emb & dense and emb | dense == {id(p) for p in model.parameters()}
    # every embedding table is sparse (SparseAdam) and the first layer seeing embeddings is the cross layer
    assert all(m.bag.sparse for m in model.modules() if isinstance(m, FieldEmbeddings))
    crosses = [m for m in model.modules() if isinstance(m, nk.CrossMaskedLinear)]
    d = 4 + over.get("task_embed_dim", 0)
    assert crosses and all(c.in_features == 4 * 4 + 4 * d for c in crosses)
    assert parameter_count(model)["total"] == sum(p.numel() for p in model.parameters())


def test_kinds_have_one_owner_and_names():
    import ncs.config as C
    assert C.MODEL_KINDS is MODEL_KINDS
    assert set(RUN_ORDER) == set(MODEL_KINDS) == set(PAPER_NAMES) and RUN_ORDER[-1] == "connection"
    cfg = resolve_config({"models": "all"})
    assert cfg.models == tuple(RUN_ORDER)
    assert resolve_config({"models": ["esmm", "single", "mmoe"]}).models == ("single", "mmoe", "esmm")
    assert defaults().models == ("single", "layer", "connection")
    with pytest.raises(ConfigError, match="models: expected model kinds from .*ple, esmm"):
        resolve_config({"models": ["moe"]})


def test_mmoe_gates_are_distributions_and_mix_the_experts():
    torch.manual_seed(0)
    m = MMoEModel(VOCAB, ("ctr", "cvr", "like"), 4, [16, 8, 4])
    assert m.num_experts == 4 and len(m.experts) == 4  # default: tasks + 1
    with torch.no_grad():  # away from the uniform init, so that the gates depend on the input
        for g in m.gates.values():
            g.weight.normal_(0, 1.0)
    ids = _ids(b=9)
    with torch.no_grad():
        gates = m.gate_weights(ids)
    for t, g in gates.items():
        assert g.shape == (9, 4) and (g >= 0).all()
        torch.testing.assert_close(g.sum(-1), torch.ones(9))
        assert float((g - g[0]).abs().max().detach()) > 1e-3  # per-sample gates
    assert float((gates["ctr"] - gates["cvr"]).abs().max()) > 1e-3  # per-task gates
    # the task feature is the gate-weighted sum of the expert outputs
    emb = m.embeddings(ids)
    ex = torch.stack([e(emb) for e in m.experts], 1)
    feat = (gates["cvr"].unsqueeze(-1) * ex).sum(1)
    torch.testing.assert_close(m(ids, "cvr"), m.heads["cvr"](m.towers["cvr"](feat)).squeeze(-1))


def _grad_nonzero(params):
    return any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in params)


@pytest.mark.parametrize("levels", [1, 2])
def test_ple_task_experts_get_gradient_only_from_their_task(levels):
    torch.manual_seed(0)
    tasks = ("ctr", "cvr", "like")
    m = PLEModel(VOCAB, tasks, 4, [16, 12, 8, 4], shared_experts=1, task_experts=2, levels=levels)
    assert m.num_levels == levels
    ids = _ids(b=16)
    for t in tasks:
        m.zero_grad(set_to_none=True)
        m(ids, t).sum().backward()
        last = m.levels[-1]
        assert _grad_nonzero(last.task[t].parameters())
        assert _grad_nonzero(last.shared.parameters())
        for o in tasks:
            if o != t:
                assert not _grad_nonzero(last.task[o].parameters()), (t, o)
                assert not _grad_nonzero(m.towers[o].parameters()) and not _grad_nonzero(m.heads[o].parameters())
        if levels == 2:
            # between levels the shared gate mixes every expert (as in the paper): the first
            # level's experts of the other tasks do reach task t, through the shared branch
            assert all(_grad_nonzero(m.levels[0].task[o].parameters()) for o in tasks)


def _esmm_tasks(post_loss="mse", n_post=1):
    ts = [{"name": "ctr", "label": "click", "space": "all", "loss": "bce", "weight": 0.6}]
    for i in range(n_post):
        ts.append({"name": f"p{i}", "label": f"l{i}", "space": "clicked", "loss": post_loss, "weight": 0.4 - 0.1 * i})
    return ts


@pytest.mark.parametrize("post_loss", ["mse", "bce", "focal"])
def test_esmm_loss_covers_all_impressions(post_loss):
    g = torch.Generator().manual_seed(0)
    n = 40
    tasks = _esmm_tasks(post_loss, n_post=2)
    click = (torch.rand(n, generator=g) < 0.3).float()
    clicked = click > 0.5
    logits = {t["name"]: torch.randn(n, generator=g, requires_grad=True) for t in tasks}
    y = {"ctr": click}
    for t in tasks[1:]:
        y[t["name"]] = torch.where(clicked, torch.rand(n, generator=g), torch.full((n,), 0.9))  # junk off-space
    spaces = {"ctr": None, **{t["name"]: clicked for t in tasks[1:]}}
    total, parts = esmm_loss(logits, y, spaces, tasks, gamma=2.0, alpha=0.25)
    pctr = torch.sigmoid(logits["ctr"])
    expect = {"ctr": F.binary_cross_entropy(pctr, click)}
    for t in tasks[1:]:
        p = pctr * torch.sigmoid(logits[t["name"]])
        tgt = click * torch.where(clicked, y[t["name"]], torch.zeros(n))  # click * y: 0 on non-clicked rows
        if post_loss == "mse":
            per = (p - tgt) ** 2
        else:
            per = F.binary_cross_entropy(p, tgt, reduction="none")
            if post_loss == "focal":
                p_t = p * tgt + (1 - p) * (1 - tgt)
                per = per * (1 - p_t) ** 2 * (0.25 * tgt + 0.75 * (1 - tgt))
        expect[t["name"]] = per.mean()  # the mean over ALL n rows, not over the clicked ones
    for k in expect:
        torch.testing.assert_close(parts[k], expect[k], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(total, sum(t["weight"] * expect[t["name"]] for t in tasks), rtol=1e-5, atol=1e-6)
    total.backward()
    # the post-click towers learn on the non-clicked impressions too (pCTCVR -> 0 there)
    for t in tasks[1:]:
        gr = logits[t["name"]].grad
        assert float(gr[~clicked].abs().min()) > 0
    # the off-space targets are ignored: only click * y counts
    y2 = {k: (torch.where(clicked, v, torch.zeros(n)) if k != "ctr" else v) for k, v in y.items()}
    torch.testing.assert_close(esmm_loss(logits, y2, spaces, tasks)[0], esmm_loss(logits, y, spaces, tasks)[0])
    # mixed_loss dispatches on the model kind
    torch.testing.assert_close(mixed_loss("esmm", logits, y, spaces, tasks)[0], esmm_loss(logits, y, spaces, tasks)[0])
    torch.testing.assert_close(mixed_loss("mmoe", logits, y, spaces, tasks)[0],
                               multitask_loss(logits, y, spaces, tasks)[0])


def test_esmm_loss_and_config_refuse_a_non_click_chain():
    tasks = _esmm_tasks()
    lg = {"ctr": torch.zeros(4), "p0": torch.zeros(4)}
    y = {"ctr": torch.ones(4), "p0": torch.ones(4)}
    with pytest.raises(ValueError, match="post-click"):
        esmm_loss(lg, y, {"ctr": None, "p0": None}, tasks)
    with pytest.raises(ValueError, match="click task"):
        esmm_loss(lg, y, {"ctr": torch.ones(4, dtype=torch.bool), "p0": torch.ones(4, dtype=torch.bool)}, tasks)
    with pytest.raises(ConfigError, match=r"tasks\[1\].space: models esmm"):
        resolve_config({"models": ["esmm"], "tasks": [{"name": "a", "label": "click"}, {"name": "b", "label": "x"}]})
    with pytest.raises(ConfigError, match=r"tasks\[0\]: models esmm"):
        resolve_config({"models": ["esmm"], "tasks": [
            {"name": "cvr", "label": "conversion", "space": "clicked", "loss": "mse"},
            {"name": "ctr", "label": "click"}]})
    with pytest.raises(ConfigError, match="model.ple_levels: expected at most 2"):
        resolve_config({"models": ["ple"], "model": {"ple_levels": 3}})


@pytest.mark.parametrize("kind", PRIVATE_EMBED_KINDS)
def test_private_embeddings_get_gradient_only_from_their_task(kind):
    torch.manual_seed(0)
    tasks = ("ctr", "cvr", "like")
    m = build_model(kind, VOCAB, tasks, _mcfg(task_embed_dim=3))
    assert set(m.private) == set(tasks) and all(p.embed_dim == 3 for p in m.private.values())
    # 1 shared + 3 private tables, all handed to SparseAdam
    assert len(m.embedding_parameters()) == 4
    ids = _ids(b=10)
    for t in tasks:
        for out in (m(ids, t), m(ids)[t], m.predict(ids)[t]):  # task forward, warmup forward, served
            m.zero_grad(set_to_none=True)
            out.sum().backward()
            assert m.private[t].bag.weight.grad is not None and m.private[t].bag.weight.grad.is_sparse
            assert float(m.private[t].bag.weight.grad.coalesce().values().abs().sum()) > 0
            assert m.embeddings.bag.weight.grad is not None
            for o in tasks:
                if o != t:
                    assert m.private[o].bag.weight.grad is None, (t, o)
    # the task's input is shared | private, per field
    emb = m.embeddings(ids)
    x = m._task_input(emb, ids, "cvr")
    assert x.shape == (10, 4, 7)
    torch.testing.assert_close(x[..., :4], emb)
    torch.testing.assert_close(x[..., 4:], m.private["cvr"](ids))


RUN_STAGES = {"warmup": {"epochs": 1}, "masks": {"rounds": 2, "epochs_per_round": 1},
              "joint": {"epochs": 1, "early_stopping": True, "patience": 2}}


def _run_cfg(**over):
    return tiny_run_config(RUN_STAGES, **over)


def test_connection_with_private_embeddings_trains_through_every_stage(tmp_path):
    data = tiny_run_data()
    cfg = _run_cfg(models=["layer", "connection"], model={"embed_dim": 4, "hidden": [16, 8, 4], "task_embed_dim": 2})
    out = str(tmp_path / "r")
    res = run(cfg, out, data=data)
    for kind in ("layer", "connection"):
        m = res["models"][kind]
        assert 0 <= m["ctr_auc"] <= 1 and m["cvr_mse"] == m["cvr_mse"]
    stats = json.load(open(os.path.join(out, "masks.json")))
    first = stats["layers"]["tower.layers.0"]
    assert first["shape"] == [16, 4 * 4 + 4 * (4 + 2)]  # the widened cross
    st = res["stages"]["connection"]["masks"]
    assert all(0 < st[t]["density"] < 1 for t in ("ctr", "cvr"))  # pruned, as without private tables
    # the saved model reloads (ncs eval) with its private tables and masks
    model, _ = load_model(out, "connection", cfg, torch.device("cpu"))
    model = model.models["cvr"] if hasattr(model, "models") else model  # per-task selection: CVR's snapshot
    assert set(model.private) == {"ctr", "cvr"}
    if res["stages"]["connection"]["joint"]["early_stopping"]["best_epoch"]["cvr"] >= 0:  # a joint epoch: masked
        assert model.tower.layers[0].mask_density("cvr") < 1


def test_competitors_train_and_print(tmp_path):
    data = tiny_run_data()
    g = torch.Generator().manual_seed(3)
    data.labels["like"] = data.labels["click"] * (torch.rand(len(data), generator=g) < 0.5).float()
    cfg = _run_cfg(models=["shared_bottom", "mmoe", "ple", "esmm", "single"],
                   tasks=[{"name": "ctr", "label": "click", "weight": 0.6},
                          {"name": "cvr", "label": "conversion", "space": "clicked", "loss": "mse", "weight": 0.3},
                          {"name": "like", "label": "like", "space": "clicked", "loss": "bce", "weight": 0.1}])
    res = run(cfg, str(tmp_path / "r"), data=data)
    assert list(res["models"]) == ["single", "shared_bottom", "mmoe", "ple", "esmm"]
    for kind, m in res["models"].items():
        assert {"ctr_auc", "cvr_mse", "like_auc"} <= set(m), kind
        assert m["cvr_mse"] == m["cvr_mse"]
        assert res["stages"][kind]["train"]["epochs_run"] >= 1
    table = results_table(res, cfg.tasks)
    for name in ("Single_Task", "Shared_Bottom", "MMoE", "PLE", "ESMM"):
        assert name in table
