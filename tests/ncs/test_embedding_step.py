"""optim.embedding_step: fused (pooled gradient + fused row-wise Adam) trains like sparse_adam."""
import pytest

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
