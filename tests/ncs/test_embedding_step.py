"""optim.embedding_step: fused (pooled gradient + fused row-wise Adam) trains like sparse_adam."""
import pytest
import torch

from ncs.config import resolve_config
from ncs.train import runner

from _tiny import one_thread, tiny_data  # noqa: F401


def _cfg(step, models):
    return resolve_config({
        "models": models, "device": "cpu", "seed": 5,
        "model": {"embed_dim": 4, "hidden": [8, 4], "pooling": "mean"},
        "train": {"batch_size": 48},
        "optim": {"embedding_step": step, "lr": 0.01},
        "loss": {"balance": "fixed"},
        "stages": {"warmup": {"epochs": 1}, "masks": {"rounds": 1, "epochs_per_round": 1}, "joint": {"epochs": 2}},
    })


@pytest.mark.parametrize("models", [["connection"], ["single", "layer"]])
def test_fused_matches_sparse_adam(tmp_path, one_thread, models):  # noqa: F811
    data = tiny_data(400, [13, 7, 29])
    a = runner.run(_cfg("sparse_adam", models), str(tmp_path / "a"), data=data)
    b = runner.run(_cfg("fused", models), str(tmp_path / "b"), data=data)
    for kind in models:
        for k, v in a["models"][kind].items():
            assert b["models"][kind][k] == pytest.approx(v, rel=1e-4, abs=1e-5), (kind, k)


def test_fused_resume(tmp_path, one_thread):  # noqa: F811
    """A fused run killed after its 2nd checkpoint and resumed ends like the uninterrupted one."""
    from ncs.train.stages import StopTraining

    data = tiny_data(300, [11, 5])
    cfg = _cfg("fused", ["connection"])
    full = runner.run(cfg, str(tmp_path / "full"), data=data)
    with pytest.raises(StopTraining):
        runner.run(cfg, str(tmp_path / "cut"), data=data, stop_after_checkpoints=2)
    resumed = runner.run(cfg, str(tmp_path / "cut"), resume=True, data=data)
    assert resumed["models"] == full["models"]


@pytest.mark.parametrize("balance", ["pcgrad", "uncertainty"])
@pytest.mark.parametrize("kind", ["connection", "single", "esmm", "mmoe"])
def test_fused_equals_sparse_adam_step_by_step(one_thread, monkeypatch, kind, balance):  # noqa: F811
    """The same steps of every stage (mixed batches, a mask round, alternating joint steps) with
    each embedding step: PCGrad on a fused table (its sink's pooled gradients) and on the sparse
    gradient give the same weights; so does uncertainty weighting."""
    from _steps import max_difference, run_steps, steps_data
    from ncs.train import pcgrad as PC

    projected = []   # (mixed batch?, did the surgery change a gradient?) per PCGrad step
    coefficients = PC.coefficients

    def spy(grads, mixed):
        out = coefficients(grads, mixed)
        projected.append((mixed, any(any(v != 1.0 for v in c.values()) for c in out[0].values())))
        return out

    monkeypatch.setattr(PC, "coefficients", spy)
    data = steps_data()
    a, la = run_steps(kind, "sparse_adam", balance, data)
    b, lb = run_steps(kind, "fused", balance, data)
    assert lb == pytest.approx(la, rel=1e-5)
    assert max_difference(a, b) < 1e-6
    if balance == "pcgrad" and kind in ("connection", "mmoe"):  # conflicts: the surgery did work
        assert (True, True) in projected
    if balance == "pcgrad" and kind == "connection":  # ... also in the joint stage's alternating steps
        assert (False, True) in projected
        assert {k: v.is_sparse for k, v in a.balancer.last["cvr"].items()} == \
            {k: v.is_sparse for k, v in b.balancer.last["cvr"].items()}


@pytest.mark.parametrize("step", ["sparse_adam", "fused"])
def test_frozen_embeddings_stay_put_with_either_step(one_thread, step):  # noqa: F811
    """stages.joint.embeddings freeze: the joint steps leave the tables untouched (the fused
    step's gradient waits in a sink, which the loop empties, as it drops a sparse gradient)."""
    from _steps import CPU, steps_config, steps_data
    from ncs.train import batches as B
    from ncs.train.stages import ModelTrainer

    data = steps_data()
    cfg = steps_config("connection", step, "pcgrad")
    split = B.prepare_split(data, cfg.tasks, "click", CPU)
    tr = ModelTrainer("connection", cfg, data.fields, split, split, CPU, "/nonexistent")
    before = [p.detach().clone() for p in tr.model.embedding_parameters()]
    dense = [p.detach().clone() for p in tr.model.dense_parameters()]
    tr.freeze_embeddings = True
    tr.train_epoch(B.alternating_batches(split, tr.names, 64, 0, "joint", 0)[:4], True, "joint")
    assert all(torch.equal(a, p) for a, p in zip(before, tr.model.embedding_parameters()))
    assert not all(torch.equal(a, p) for a, p in zip(dense, tr.model.dense_parameters()))
