"""Issue 10's protocol mechanisms, each by its defining property: uncertainty weights receive
gradients, PCGrad projects conflicting gradients, per-task selection serves each task's own best
epoch (and resume stays bit-exact), schedules see the stated data fraction, diagnostics land in
curves.json without changing training."""
import json
import math
import os

import pytest
import torch

from _tiny import tiny_run_config, tiny_run_data
from ncs.config import ConfigError
from ncs.train import StopTraining, run
from ncs.train import batches as B
from ncs.train.protocol import Balancer, grad_diagnostics, project_conflicting, subset_split
from ncs.train.runner import load_model


from _tiny import one_thread_module  # noqa: E402,F401  (autouse: one intra-op thread per module)


_data = tiny_run_data
STAGES = {"warmup": {"epochs": 1}, "masks": {"rounds": 1, "epochs_per_round": 1},
          "joint": {"epochs": 3, "early_stopping": False}}


def _cfg(**over):
    return tiny_run_config(STAGES, **over)


# ---------------------------------------------------------------- uncertainty weighting

def test_uncertainty_weights_receive_gradients_of_kendalls_form():
    cfg = _cfg(loss={"balance": "uncertainty"})
    bal = Balancer(cfg, torch.device("cpu"))
    with torch.no_grad():
        bal.log_var[0].fill_(0.3)
        bal.log_var[1].fill_(-0.2)
    l_ctr, l_cvr = torch.tensor(0.6), torch.tensor(0.09)
    total = bal.combine({"ctr": l_ctr, "cvr": l_cvr})
    total.backward()
    w_ctr, w_cvr = cfg.tasks[0].weight, cfg.tasks[1].weight
    # ctr (bce, classification): w (exp(-s) L + s/2); cvr (mse, regression): w (exp(-s) L / 2 + s/2)
    assert float(total.detach()) == pytest.approx(w_ctr * (math.exp(-0.3) * 0.6 + 0.15) + w_cvr * (0.5 * math.exp(0.2) * 0.09 - 0.1))
    assert float(bal.log_var[0].grad) == pytest.approx(w_ctr * (-math.exp(-0.3) * 0.6 + 0.5))
    assert float(bal.log_var[1].grad) == pytest.approx(w_cvr * (-0.5 * math.exp(0.2) * 0.09 + 0.5))
    # a task-homogeneous step (the joint stage) gives the other task's log-variance no gradient
    bal.zero_grad()
    bal.term("cvr", l_cvr).backward()
    assert bal.log_var[0].grad is None and bal.log_var[1].grad is not None


def test_uncertainty_log_variances_are_trained_and_checkpointed(tmp_path):
    out = str(tmp_path / "u")
    run(_cfg(models=["layer"], loss={"balance": "uncertainty", "balance_lr": 0.05}), out, data=_data())
    curves = json.load(open(os.path.join(out, "curves.json")))["layer"]
    w0 = curves[0]["loss_weights"]
    w1 = curves[-1]["loss_weights"]
    assert w0 != w1   # the log-variances moved
    from ncs.train.checkpoint import load_tensors
    tensors, doc = load_tensors(os.path.join(out, "checkpoints", "layer.safetensors"))
    assert doc["balance"]["method"] == "uncertainty"
    assert {"balance/log_var/0", "balance/log_var/1"} <= set(tensors)
    s0 = float(tensors["balance/log_var/0"])
    assert w1["ctr"] == pytest.approx(0.7 * math.exp(-s0))


# ---------------------------------------------------------------- PCGrad

def test_pcgrad_projects_conflicting_gradients_only():
    g1 = {0: torch.tensor([1.0, 0.0])}
    g2 = {0: torch.tensor([-1.0, 1.0])}
    p1, p2 = project_conflicting([g1, g2], [0])
    # g1 . g2 = -1 < 0: g1 - (-1 / 2) g2 = [0.5, 0.5]; g2 - (-1 / 1) g1 = [0, 1]
    assert torch.allclose(p1[0], torch.tensor([0.5, 0.5]))
    assert torch.allclose(p2[0], torch.tensor([0.0, 1.0]))
    assert float((p1[0] * g2[0]).sum()) >= -1e-7 and float((p2[0] * g1[0]).sum()) >= -1e-7
    # agreeing gradients are left alone; unshared entries are never touched
    a = {0: torch.tensor([1.0, 1.0]), 1: torch.tensor([3.0])}
    b = {0: torch.tensor([1.0, -0.5]), 1: torch.tensor([-7.0])}
    pa, pb = project_conflicting([a, b], [0])
    assert torch.equal(pa[0], a[0]) and torch.equal(pb[0], b[0]) and torch.equal(pa[1], a[1])


def test_pcgrad_sparse_rows_match_dense():
    torch.manual_seed(0)
    V, d = 9, 3
    dense = [torch.zeros(V, d), torch.zeros(V, d)]
    dense[0][[1, 4, 5]] = torch.randn(3, d)
    dense[1][[4, 5, 7]] = torch.randn(3, d)
    dense[1][[4, 5]] = -dense[0][[4, 5]] * 2 + 0.1   # a conflict on the common rows
    sparse = [x.to_sparse(sparse_dim=1).coalesce() for x in dense]
    pd = project_conflicting([{0: dense[0]}, {0: dense[1]}], [0])
    ps = project_conflicting([{0: sparse[0]}, {0: sparse[1]}], [0])
    for a, b in zip(pd, ps):
        assert torch.allclose(a[0], b[0].to_dense(), atol=1e-6)
    assert float((pd[0][0] * dense[1]).sum()) == pytest.approx(0.0, abs=1e-5)


def test_pcgrad_mixed_step_sets_the_sum_of_projected_gradients():
    torch.manual_seed(0)
    cfg = _cfg(loss={"balance": "pcgrad"})
    bal = Balancer(cfg, torch.device("cpu"))
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    head = torch.nn.Parameter(torch.tensor([0.5]))
    parts = {"ctr": (w * torch.tensor([1.0, 0.0])).sum() * head.sum(), "cvr": (w * torch.tensor([-1.0, 1.0])).sum()}
    bal.pcgrad_mixed_backward(parts, [w, head])
    g1 = 0.7 * torch.tensor([0.5, 0.0])      # d(0.7 * ctr)/dw
    g2 = 0.3 * torch.tensor([-1.0, 1.0])
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
    p2 = g2 - (g2 @ g1) / (g1 @ g1) * g1
    assert torch.allclose(w.grad, p1 + p2)
    assert torch.allclose(head.grad, torch.tensor([0.7 * (1.0 * 1.0)]))   # head: ctr only, unprojected


def test_pcgrad_alternating_step_projects_against_the_other_tasks_last_gradient():
    cfg = _cfg(loss={"balance": "pcgrad"})
    bal = Balancer(cfg, torch.device("cpu"))
    w = torch.nn.Parameter(torch.zeros(2))
    w.grad = torch.tensor([1.0, 0.0])
    bal.pcgrad_task_step("ctr", [w])          # nothing to project against yet
    assert torch.equal(w.grad, torch.tensor([1.0, 0.0]))
    w.grad = torch.tensor([-1.0, 1.0])
    bal.pcgrad_task_step("cvr", [w])
    assert torch.allclose(w.grad, torch.tensor([0.0, 1.0]))
    assert torch.equal(bal.last["cvr"][0], torch.tensor([-1.0, 1.0]))   # kept unprojected


# ---------------------------------------------------------------- per-task selection

@pytest.fixture(scope="module")
def per_task_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pt"))
    cfg = _cfg(models=["layer", "connection"], stages={"joint": {"epochs": 4, "early_stopping": False}},
               baselines={"epochs": 4})
    return out, cfg, run(cfg, out, data=_data(160))


def test_per_task_selection_serves_each_tasks_own_best_epoch(per_task_run):
    out, cfg, results = per_task_run
    curves = json.load(open(os.path.join(out, "curves.json")))
    for kind, stage in (("layer", "train"), ("connection", "joint")):
        recs = [r for r in curves[kind] if r["stage"] == stage]
        if kind == "connection":  # select_warmup (the default): warmup epoch e is candidate e - W
            w = [dict(r, epoch=r["epoch"] - cfg.stages.warmup.epochs) for r in curves[kind] if r["stage"] == "warmup"]
            recs = w + recs
        best_ctr = max(range(len(recs)), key=lambda i: (recs[i]["ctr_auc"], -i))
        best_cvr = min(range(len(recs)), key=lambda i: (recs[i]["cvr_mse"], i))
        es = results["stages"][kind][stage if stage == "joint" else "train"]["early_stopping"]
        assert es["best_epoch"] == {"ctr": recs[best_ctr]["epoch"], "cvr": recs[best_cvr]["epoch"]}
        # the served model's validation metrics are those of each task's own best epoch
        assert results["valid"][kind]["ctr_auc"] == pytest.approx(recs[best_ctr]["ctr_auc"], abs=1e-12)
        assert results["valid"][kind]["cvr_mse"] == pytest.approx(recs[best_cvr]["cvr_mse"], abs=1e-12)


def test_per_task_model_file_reproduces_the_served_metrics(per_task_run):
    out, cfg, results = per_task_run
    from ncs.train.evaluate import evaluate  # the one evaluation of the trainer and `ncs eval`
    from ncs.train.runner import split_data
    data = _data(160)
    _, _, test = split_data(cfg, data)
    te = B.prepare_split(test, cfg.tasks, "click", torch.device("cpu"))
    for kind in ("layer", "connection"):
        model, _ = load_model(out, kind, cfg, torch.device("cpu"))
        m = evaluate(model, te, cfg.tasks, cfg.train.eval_batch_size, te.device)
        for k in ("ctr_auc", "cvr_mse"):
            assert m[k] == pytest.approx(results["models"][kind][k], abs=1e-9), (kind, k)


def test_select_metric_picks_one_epoch_for_all_and_early_stopping_waits_for_every_task(tmp_path):
    out = str(tmp_path / "m")
    res = run(_cfg(models=["layer"], stages={"joint": {"epochs": 3, "select": "metric", "metric": "cvr_mse",
                                                       "early_stopping": False}}),
              out, data=_data())
    be = res["stages"]["layer"]["train"]["early_stopping"]["best_epoch"]
    assert be["ctr"] == be["cvr"]
    with pytest.raises(ConfigError, match="select"):
        _cfg(stages={"joint": {"select": "last", "early_stopping": True}})


@pytest.mark.parametrize("stop_after", [3, 12])
def test_protocol_options_resume_bit_exact(tmp_path, stop_after):
    from test_train import _all_tensors, _assert_same_tensors
    cfg = _cfg(models=["layer", "connection"], loss={"balance": "pcgrad"},
               stages={"warmup": {"epochs": 1, "data_fraction": 0.5}, "masks": {"rounds": 1, "data_fraction": 0.7},
                       "joint": {"epochs": 3, "early_stopping": True, "patience": 1}})
    ref = str(tmp_path / "ref")
    r_full = run(cfg, ref, data=_data())
    out = str(tmp_path / "run")
    with pytest.raises(StopTraining):
        run(cfg, out, data=_data(), stop_after_checkpoints=stop_after)
    r = run(cfg, out, resume=True, data=_data())
    _assert_same_tensors(_all_tensors(ref), _all_tensors(out))
    assert r["models"] == r_full["models"] and r["valid"] == r_full["valid"]
    assert json.load(open(os.path.join(out, "curves.json"))) == json.load(open(os.path.join(ref, "curves.json")))


def test_uncertainty_resume_bit_exact(tmp_path):
    from test_train import _all_tensors, _assert_same_tensors
    cfg = _cfg(models=["connection"], loss={"balance": "uncertainty", "balance_lr": 0.05})
    ref = str(tmp_path / "ref")
    r_full = run(cfg, ref, data=_data())
    out = str(tmp_path / "run")
    with pytest.raises(StopTraining):
        run(cfg, out, data=_data(), stop_after_checkpoints=9)
    r = run(cfg, out, resume=True, data=_data())
    _assert_same_tensors(_all_tensors(ref), _all_tensors(out))
    assert r["models"] == r_full["models"]


# ---------------------------------------------------------------- schedules

def test_subset_split_keeps_the_stated_fraction():
    d = _data(100)
    sp = B.prepare_split(d, _cfg().tasks, "click", torch.device("cpu"))
    first = subset_split(sp, 0.3, "first", 0)
    assert len(first) == 30 and torch.equal(first.ids, sp.ids[:30])
    assert torch.equal(first.space_index["cvr"], sp.spaces["cvr"][:30].nonzero().squeeze(1))
    rnd = subset_split(sp, 0.3, "random", 0)
    assert len(rnd) == 30 and not torch.equal(rnd.ids, first.ids)
    assert torch.equal(subset_split(sp, 0.3, "random", 0).ids, rnd.ids)   # seeded
    assert subset_split(sp, 1.0, "first", 0) is sp


def test_schedule_steps_follow_the_data_fraction(tmp_path):
    """Connection model, warmup on the first half of the rows, masks on 0.7 of them: the step
    count is exactly what those subsets give."""
    import ncs.train.runner as R
    cfg = _cfg(models=["connection"], train={"batch_size": 8, "eval_batch_size": 50, "diagnostics_batches": 0},
               stages={"warmup": {"epochs": 2, "data_fraction": 0.5}, "masks": {"rounds": 2, "data_fraction": 0.7},
                       "joint": {"epochs": 1}})
    res = run(cfg, str(tmp_path / "s"), data=_data())
    train, _, _ = R.split_data(cfg, _data())
    sp = B.prepare_split(train, cfg.tasks, "click", torch.device("cpu"))
    n = len(sp)
    half, seventy = round(0.5 * n), round(0.7 * n)
    clicked70 = int(sp.spaces["cvr"][:seventy].sum())
    ceil = lambda a: -(-a // 8)  # noqa: E731
    from ncs.train.protocol import cycled_alternating_batches   # joint.alternate: cycle (the default)
    joint = len(cycled_alternating_batches(sp, ["ctr", "cvr"], 8, 1, "joint", 0))
    expected = 2 * ceil(half) + 3 * (ceil(seventy) + ceil(clicked70)) + joint
    assert res["stages"]["connection"]["steps"] == expected


def test_frozen_joint_embeddings_stay_at_the_warmup_snapshot(tmp_path):
    out = str(tmp_path / "f")
    run(_cfg(models=["connection"], stages={"joint": {"epochs": 2, "embeddings": "freeze", "select": "last",
                                                                   "early_stopping": False}}),
        out, data=_data())
    from ncs.train.checkpoint import load_tensors
    init, _ = load_tensors(os.path.join(out, "checkpoints", "connection_init.safetensors"))
    final, _ = load_tensors(os.path.join(out, "models", "connection.safetensors"))
    key = "model/embeddings.bag.weight"
    assert torch.equal(init[key], final[key])
    assert not torch.equal(init["model/tower.layers.0.weight"], final["model/tower.layers.0.weight"])


# ---------------------------------------------------------------- diagnostics

def test_diagnostics_in_curves_and_training_unchanged(tmp_path):
    on, off = str(tmp_path / "on"), str(tmp_path / "off")
    r_on = run(_cfg(models=["layer", "connection"]), on, data=_data())
    r_off = run(_cfg(models=["layer", "connection"], train={"batch_size": 24, "eval_batch_size": 50,
                                                           "diagnostics_batches": 0}), off, data=_data())
    assert r_on["models"] == r_off["models"]          # no RNG, optimizer or weight is disturbed
    curves = json.load(open(os.path.join(on, "curves.json")))
    for kind, groups in (("layer", {"embeddings"}), ("connection", {"embeddings", "tower.layers.0", "tower.layers.1"})):
        recs = [r for r in curves[kind] if r["stage"] in ("train", "warmup", "joint")]
        assert recs and all("grad" in r for r in recs)
        for r in recs:
            g = r["grad"]["groups"]
            assert groups <= set(g) and "all_shared" in g
            for st in g.values():
                assert all(v > 0 for v in st["norm"].values())
                assert -1.0 - 1e-9 <= st["cos"]["ctr&cvr"] <= 1.0 + 1e-9
    assert "grad" not in json.dumps(json.load(open(os.path.join(off, "curves.json"))))


def test_grad_diagnostics_match_a_manual_backward():
    from ncs.models import build_model
    cfg = _cfg()
    d = _data(60)
    torch.manual_seed(0)
    model = build_model("layer", d.fields, ["ctr", "cvr"], cfg.model, backend="torch")
    sp = B.prepare_split(d, cfg.tasks, "click", torch.device("cpu"))
    rows = torch.arange(40)
    diag = grad_diagnostics(model, sp, cfg.tasks, rows, 16, {"ctr": 0.7, "cvr": 0.3}, False, 2.0, 0.25)
    from ncs.losses import task_loss
    grads = {}
    for t, w in (("ctr", 0.7), ("cvr", 0.3)):
        model.zero_grad()
        for s in range(0, 40, 16):
            ids, tg, spc = sp.batch(rows[s:s + 16])
            kind = "bce" if t == "ctr" else "mse"
            (w * task_loss(kind, model(ids)[t], tg[t], spc[t])).backward()
        grads[t] = model.embeddings.bag.weight.grad.to_dense().clone()
    e = diag["groups"]["embeddings"]
    assert e["norm"]["ctr"] == pytest.approx(float(grads["ctr"].norm()), rel=1e-5)
    assert e["norm"]["cvr"] == pytest.approx(float(grads["cvr"].norm()), rel=1e-5)
    cos = float((grads["ctr"] * grads["cvr"]).sum() / grads["ctr"].norm() / grads["cvr"].norm())
    assert e["cos"]["ctr&cvr"] == pytest.approx(cos, rel=1e-4, abs=1e-6)
    assert set(diag["groups"]) == {"embeddings", "all_shared"}   # towers are per task: not shared


def test_cycled_alternation_gives_every_task_as_many_steps_as_the_largest():
    from ncs.train.protocol import cycled_alternating_batches
    sp = B.prepare_split(_data(100), _cfg().tasks, "click", torch.device("cpu"))
    cover = B.alternating_batches(sp, ["ctr", "cvr"], 8, 0, "joint", 0)
    cyc = cycled_alternating_batches(sp, ["ctr", "cvr"], 8, 0, "joint", 0)
    n_ctr = sum(t == "ctr" for t, _ in cover)
    assert sum(t == "cvr" for t, _ in cover) < n_ctr
    assert [t for t, _ in cyc] == ["ctr", "cvr"] * n_ctr
    assert [t for t, _ in cyc if t == "ctr"] == [t for t, _ in cover if t == "ctr"]
    clicked = set(sp.space_index["cvr"].tolist())
    cvr_rows = torch.cat([r for t, r in cyc if t == "cvr"]).tolist()
    assert set(cvr_rows) == clicked                      # only the task's space, all of it
    first = torch.cat([r for t, r in cover if t == "cvr"])
    assert cvr_rows[:first.numel()] == first.tolist()    # the first pass is the plain order


# ---------------------------------------------------------------- PCGrad on scalars (pcgrad.py)

def _random_grads(n_tasks, seed, V=11, d=3):
    """n_tasks gradients over 5 parameters: two dense reached by every task, one dense reached by
    tasks 0 and 2 only, a sparse table (different rows per task) and a task-0-only head; the
    tasks pulled against each other so that several pairs conflict."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(4, generator=g)
    out = []
    for k in range(n_tasks):
        sign = -1.0 if k % 2 else 1.0
        gk = {0: sign * base + 0.7 * torch.randn(4, generator=g), 1: torch.randn(2, 3, generator=g)}
        if k in (0, 2):
            gk[2] = torch.randn(5, generator=g)
        rows = torch.randperm(V, generator=g)[:6].sort().values
        dense = torch.zeros(V, d)
        dense[rows] = torch.randn(6, d, generator=g) * sign
        gk[3] = dense.to_sparse(sparse_dim=1).coalesce()
        if k == 0:
            gk[4] = torch.randn(1, generator=g)
        out.append(gk)
    return out


def _dense(t):
    return t.to_dense() if t.is_sparse else t


@pytest.mark.parametrize("n_tasks", [2, 3, 4])
@pytest.mark.parametrize("seed", range(4))
def test_pcgrad_coefficients_equal_the_sequential_definition(n_tasks, seed):
    """Mixed: the sum of project_conflicting's projected gradients; task step: the first gradient
    projected against the others. Dense and sparse, >2 tasks, parameters reached by subsets."""
    from ncs.train import pcgrad as PC

    grads = _random_grads(n_tasks, seed)
    params = [torch.nn.Parameter(torch.zeros(_dense(grads[0][i]).shape)) for i in range(5)]
    count = {}
    for gk in grads:
        for i in gk:
            count[i] = count.get(i, 0) + 1
    shared = [i for i, c in count.items() if c >= 2]
    want = {}
    for gk in project_conflicting(grads, shared):
        for i, v in gk.items():
            want[i] = _dense(v) if i not in want else want[i] + _dense(v)
    PC.apply(grads, params, {}, mixed=True)
    conflicts = 0
    for i, p in enumerate(params):
        assert torch.allclose(_dense(p.grad), want[i], rtol=1e-5, atol=1e-6), (i, p.grad, want[i])
    # the task step: grads[0] against the others (only the shared parameters of grads[0])
    mine, others = grads[0], grads[1:]
    sh = sorted(set(mine) & set().union(*[set(o) for o in others]))
    ref = project_conflicting([mine], sh, against=others)[0]
    for p in params:
        p.grad = None
    PC.apply([mine] + others, params, {}, mixed=False)
    for i, p in enumerate(params):
        assert torch.allclose(_dense(p.grad), _dense(ref[i]), rtol=1e-5, atol=1e-6), i
        conflicts += not torch.equal(_dense(ref[i]), _dense(mine[i]))
    assert seed or conflicts  # the data make the surgery do something (seed 0 at least)


@pytest.mark.parametrize("mode", ["mean", "sum"])
def test_pcgrad_on_fused_tables_equals_the_sparse_definition(mode):
    """A fused table's gradients as (rows, pooled) pairs: the sink receives (rows_k, b_k pooled_k)
    and one earlier step's sparse gradient as one-row bags; its per-row sums equal
    project_conflicting on the dense-equivalent (sparse) gradients."""
    from ncs.train import pcgrad as PC
    from ncs_kernels.embedding_adam import GradSink, segment_sum

    g = torch.Generator().manual_seed(3)
    V, d, bags, L, pad = 9, 4, 7, 3, 8
    rows = torch.randint(0, V - 1, (bags, L), generator=g)
    rows[torch.rand(bags, L, generator=g) < 0.3] = pad
    table = PC.Table(GradSink(), mode, pad, (V, d))

    def sparse_of(r, pooled):
        u, s = segment_sum(r, pooled, mode, pad)
        return torch.sparse_coo_tensor(u.unsqueeze(0), s, (V, d)).coalesce()

    pooled = [torch.randn(bags, d, generator=g) * (1 if k % 2 == 0 else -1) for k in range(3)]
    dense = [torch.randn(5, generator=g) * (1 if k % 2 == 0 else -1) for k in range(3)]
    fused = [{0: dense[k], 1: (rows, pooled[k])} for k in range(3)]
    sparse = [{0: dense[k], 1: sparse_of(rows, pooled[k])} for k in range(3)]
    w = [torch.nn.Parameter(torch.zeros(5)), torch.nn.Parameter(torch.zeros(V, d))]
    PC.apply(fused, w, {1: table}, mixed=True)
    want = [sum(_dense(x[i]) for x in project_conflicting(sparse, [0, 1])) for i in (0, 1)]
    r, p = table.sink.take()
    assert w[1].grad is None and torch.allclose(w[0].grad, want[0], atol=1e-6)
    assert torch.allclose(_dense(sparse_of(r, p)), want[1], atol=1e-6)
    # the task step: this step's (rows, pooled) against two kept sparse gradients (other bags)
    rows2 = torch.randint(0, V - 1, (bags, L), generator=g)
    mine = {0: dense[1], 1: (rows2, pooled[1])}
    PC.apply([mine, sparse[0], sparse[2]], w, {1: table}, mixed=False)
    ref = project_conflicting([{0: dense[1], 1: sparse_of(rows2, pooled[1])}], [0, 1], against=[sparse[0], sparse[2]])[0]
    r, p = table.sink.take()
    assert r.shape[1] == L and torch.allclose(w[0].grad, ref[0], atol=1e-6)
    assert torch.allclose(_dense(sparse_of(r, p)), _dense(ref[1]), atol=1e-6)
    assert not torch.allclose(_dense(ref[1]), _dense(sparse_of(rows2, pooled[1])))  # it was projected


# ---------------------------------------------------------------- selection over the warmup epochs

SELECT_WARMUP = {"warmup": {"epochs": 3}, "masks": {"rounds": 1, "epochs_per_round": 1},
                 "joint": {"epochs": 3, "early_stopping": False, "select_warmup": True}}


@pytest.fixture(scope="module")
def select_warmup_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sw"))
    # seed 1, lr 0.05: CTR's best validation epoch is a warmup one, CVR's a joint one (checked below)
    cfg = tiny_run_config(SELECT_WARMUP, models=["connection"], optim={"lr": 0.05})
    return out, cfg, run(cfg, out, data=_data(160))


def _served_model_reproduces_test(out, cfg, res):
    """The connection model file of run `out` (data _data(160)) gives the served test metrics."""
    from ncs.train.evaluate import evaluate
    from ncs.train.runner import split_data
    _, _, test = split_data(cfg, _data(160))
    te = B.prepare_split(test, cfg.tasks, "click", torch.device("cpu"))
    model, _ = load_model(out, "connection", cfg, torch.device("cpu"))
    m = evaluate(model, te, cfg.tasks, cfg.train.eval_batch_size, te.device)
    for k in ("ctr_auc", "cvr_mse"):
        assert m[k] == pytest.approx(res["models"]["connection"][k], abs=1e-9), k
    return model


def test_select_warmup_chooses_among_every_epoch_and_serves_the_dense_warmup_model(select_warmup_run):
    import ncs_kernels as nk
    out, cfg, res = select_warmup_run
    curves = json.load(open(os.path.join(out, "curves.json")))["connection"]
    cands = [dict(r, epoch=r["epoch"] - 3) for r in curves if r["stage"] == "warmup"]
    cands += [r for r in curves if r["stage"] == "joint"]
    assert [r["epoch"] for r in cands] == [-3, -2, -1, 0, 1, 2]
    best_ctr = max(cands, key=lambda r: r["ctr_auc"])
    best_cvr = min(cands, key=lambda r: r["cvr_mse"])
    be = res["stages"]["connection"]["joint"]["early_stopping"]["best_epoch"]
    assert be == {"ctr": best_ctr["epoch"], "cvr": best_cvr["epoch"]}
    assert be["ctr"] < 0 <= be["cvr"]   # the case this test is about: one task from warmup, one from joint
    assert res["valid"]["connection"]["ctr_auc"] == pytest.approx(best_ctr["ctr_auc"], abs=1e-12)
    assert res["valid"]["connection"]["cvr_mse"] == pytest.approx(best_cvr["cvr_mse"], abs=1e-12)
    # the model file reproduces the served test metrics; CTR's weights are dense, CVR's masked
    model = _served_model_reproduces_test(out, cfg, res)
    dens = {t: [lay.mask_density(t) for lay in nk.masked_modules(model.models[t]).values()] for t in ("ctr", "cvr")}
    assert all(d == 1.0 for d in dens["ctr"]) and all(d < 1.0 for d in dens["cvr"])
    # masks.json reports the kept masks (Algorithm 1's), not the served snapshot's
    kept = json.load(open(os.path.join(out, "masks.json")))
    assert res["stages"]["connection"]["masks"]["ctr"]["density"] < 1.0
    assert kept["selected_round"] == {"ctr": 1, "cvr": 1}


def test_select_warmup_off_serves_joint_epochs_only_and_resume_is_bit_exact(tmp_path):
    from test_train import _all_tensors, _assert_same_tensors
    off = tiny_run_config(dict(SELECT_WARMUP, joint=dict(SELECT_WARMUP["joint"], select_warmup=False)),
                          models=["connection"], optim={"lr": 0.05})
    r_off = run(off, str(tmp_path / "off"), data=_data(160))
    assert min(r_off["stages"]["connection"]["joint"]["early_stopping"]["best_epoch"].values()) >= 0
    cfg = tiny_run_config(SELECT_WARMUP, models=["connection"], optim={"lr": 0.05},
                          stages=dict(SELECT_WARMUP, joint=dict(SELECT_WARMUP["joint"], early_stopping=True,
                                                                patience=1)))
    ref = str(tmp_path / "ref")
    r_full = run(cfg, ref, data=_data(160))
    out = str(tmp_path / "run")
    with pytest.raises(StopTraining):   # killed after warmup epoch 2, a selection snapshot written
        run(cfg, out, data=_data(160), stop_after_checkpoints=2)
    r = run(cfg, out, resume=True, data=_data(160))
    _assert_same_tensors(_all_tensors(ref), _all_tensors(out))
    assert r["models"] == r_full["models"] and r["valid"] == r_full["valid"]


# ---------------------------------------------------------------- selection over the mask rounds

def _select_rounds_cfg(**joint):
    st = {"warmup": {"epochs": 1}, "masks": {"rounds": 2, "epochs_per_round": 1}, "rewind": "mlp",
          "joint": dict({"epochs": 2, "early_stopping": False, "select_warmup": True, "select_rounds": True}, **joint)}
    return tiny_run_config(st, models=["connection"], optim={"lr": 0.05})


def _candidates(curves):
    """(id, record) of every selection candidate in the order they were trained: the warmup epoch
    (-1), each task's mask rounds ("<task>.r<k>", that task only) and the joint epochs."""
    out = []
    for r in curves:
        if r["stage"] == "warmup":
            out.append((r["epoch"] - 1, r))
        elif r["stage"] == "masks":
            out.append((f"{r['task']}.r{r['round']}", r))
        elif r["stage"] == "joint":
            out.append((r["epoch"], r))
    return out


def test_select_rounds_serves_each_task_its_best_model_of_every_stage_and_resumes_bit_exact(tmp_path):
    """stages.joint.select_rounds: round k of task t is a candidate for t alone (evaluated on t
    only, it neither improves nor counts against the other task); each task is served its best
    validation model among the warmup epoch, its own rounds and the joint epochs, and the model
    file reproduces the served metrics; a run killed mid-rounds resumes bit for bit."""
    from test_train import _all_tensors, _assert_same_tensors
    cfg = _select_rounds_cfg()
    out = str(tmp_path / "ref")
    res = run(cfg, out, data=_data(160))
    curves = json.load(open(os.path.join(out, "curves.json")))["connection"]
    cands = _candidates(curves)
    want = {}
    for task, metric, hib in (("ctr", "ctr_auc", True), ("cvr", "cvr_mse", False)):
        mine = [(i, r[metric]) for i, r in cands if metric in r
                and (not isinstance(i, str) or i.startswith(task + "."))]
        assert not any(isinstance(i, str) and not i.startswith(task + ".") for i, _ in mine)
        best = (max if hib else min)(mine, key=lambda x: x[1])  # first best on ties, as the tracker
        want[task] = best
        assert res["valid"]["connection"][metric] == pytest.approx(best[1], abs=1e-12), task
    be = res["stages"]["connection"]["joint"]["early_stopping"]["best_epoch"]
    assert be == {t: w[0] for t, w in want.items()}
    assert any(isinstance(e, str) for e in be.values()), be  # the case this test is about: a round served
    _served_model_reproduces_test(out, cfg, res)
    # no snapshot is left that no task is served from
    snaps = sorted(f for f in os.listdir(os.path.join(out, "checkpoints")) if "_best_e" in f)
    assert snaps == sorted({f"connection_best_e{e}.safetensors" for e in be.values()})
    # killed after the first mask round's checkpoint (the warmup wrote 2), resumed
    part = str(tmp_path / "run")
    with pytest.raises(StopTraining):
        run(cfg, part, data=_data(160), stop_after_checkpoints=4)
    r = run(cfg, part, resume=True, data=_data(160))
    _assert_same_tensors(_all_tensors(out), _all_tensors(part))
    assert r["models"] == res["models"] and r["valid"] == res["valid"]
    # off: no round is a candidate (and the rounds count against no task)
    off = run(_select_rounds_cfg(select_rounds=False), str(tmp_path / "off"), data=_data(160))
    assert not any(isinstance(e, str) for e in off["stages"]["connection"]["joint"]["early_stopping"]["best_epoch"].values())
