"""The whole trainer: outputs of a run, batch orders, checkpoints, and kill + --resume == uninterrupted."""
import csv
import json
import os

import pytest
import torch

import ncs_kernels as nk
from _tiny import tiny_run_config, tiny_run_data
from ncs.train import RunError, StopTraining, run
from ncs.train import batches as B
from ncs.train.checkpoint import flatten_optimizer, load_tensors, save_tensors, unflatten_optimizer


# autouse, module scope: the uninterrupted run and the resumed ones must use the same thread count
# (float reductions are ordered by it), so one thread is set before the module-scoped full_run
from _tiny import one_thread_module  # noqa: E402,F401

_tiny_data = tiny_run_data
STAGES = {"warmup": {"epochs": 1}, "masks": {"rounds": 2, "epochs_per_round": 2},
          "joint": {"epochs": 2, "early_stopping": True, "patience": 3}}


def _cfg(**over):
    return tiny_run_config(STAGES, **over)


def _all_tensors(out):
    """Every tensor a run leaves behind (checkpoints, final models, masks), by file and key."""
    res = {}
    for sub in ("checkpoints", "models", "."):
        d = os.path.join(out, sub)
        for f in sorted(os.listdir(d)):
            if f.endswith(".safetensors") and not f.startswith(".tmp"):
                if f == "masks.safetensors":
                    masks, _ = nk.load_masks(os.path.join(d, f))
                    t = {f"{layer}/{task}": v for layer, per in masks.items() for task, v in per.items()}
                else:
                    t, _ = load_tensors(os.path.join(d, f))
                res[f"{sub}/{f}"] = t
    return res


def _assert_same_tensors(a, b):
    assert set(a) == set(b)
    for f in a:
        assert set(a[f]) == set(b[f]), f
        for k in a[f]:
            assert torch.equal(a[f][k], b[f][k]), f"{f}: {k} differs"


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("full"))
    logs = []
    results = run(_cfg(), out, data=_tiny_data(), log=logs.append)
    return out, results, logs


def test_run_writes_every_output(full_run):
    out, results, logs = full_run
    for f in ("config.yaml", "split.json", "fields.json", "metrics.json", "curves.json", "masks.safetensors",
              "masks.json", "rounds.json", "rounds.csv", "figures/masks.png", "figures/curves.png",
              "models/single.safetensors", "models/layer.safetensors", "models/connection.safetensors",
              "checkpoints/connection_init.safetensors"):
        assert os.path.isfile(os.path.join(out, f)), f
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert set(metrics["models"]) == {"single", "layer", "connection"}
    for m in metrics["models"].values():
        assert {"ctr_auc", "ctr_logloss", "cvr_mse"} <= set(m)
    st = metrics["stages"]["connection"]
    assert set(st["masks"]) == {"ctr", "cvr"} and st["masks"]["cvr"]["selected_round"] in (1, 2)
    rows = list(csv.DictReader(open(os.path.join(out, "rounds.csv"))))
    assert [(r["task"], r["round"]) for r in rows] == [("ctr", "0"), ("ctr", "1"), ("ctr", "2"),
                                                        ("cvr", "0"), ("cvr", "1"), ("cvr", "2")]
    stats = json.load(open(os.path.join(out, "masks.json")))
    lay = stats["layers"]["tower.layers.0"]
    assert set(lay["density"]) == {"ctr", "cvr"}
    assert 0.0 <= lay["pairs"]["ctr&cvr"]["jaccard"] <= 1.0
    assert lay["shared_fraction"] + sum(lay["only_fraction"].values()) + lay["unused_fraction"] == pytest.approx(1.0)
    masks, meta = nk.load_masks(os.path.join(out, "masks.safetensors"))
    assert meta["tasks"] == ["ctr", "cvr"]
    assert any("masks ctr round 2/2" in line for line in logs)
    split = json.load(open(os.path.join(out, "split.json")))
    assert split["disjoint"]["request"] is True


@pytest.mark.parametrize("stop_after", [2, 9, 11, 17, 24, 26])
def test_killed_and_resumed_run_ends_identical(full_run, tmp_path, stop_after):
    """Checkpoints of this config, 28 in all: single 1-4 (3 epochs + done), layer 5-8, connection:
    9 warmup epoch (init not yet taken), 10 enter masks, per task 3 rounds of (mid-round epoch,
    round end) + selection (ctr 11-17, cvr 18-24), 25 enter joint, 26-27 joint epochs, 28 done.
    The stops land mid-baseline, before the init snapshot, mid-round, between tasks, before the
    joint stage and mid-joint."""
    out_full, results_full, _ = full_run
    out = str(tmp_path / "run")
    with pytest.raises(StopTraining):
        run(_cfg(), out, data=_tiny_data(), stop_after_checkpoints=stop_after)
    with pytest.raises(RunError, match="--resume"):
        run(_cfg(), out, data=_tiny_data())
    results = run(_cfg(), out, resume=True, data=_tiny_data())
    _assert_same_tensors(_all_tensors(out_full), _all_tensors(out))
    assert results["models"] == results_full["models"]
    assert json.load(open(os.path.join(out, "rounds.json"))) == json.load(open(os.path.join(out_full, "rounds.json")))


def test_resume_refuses_another_config(tmp_path):
    out = str(tmp_path / "run")
    cfg = _cfg(models=["single"])
    with pytest.raises(StopTraining):
        run(cfg, out, data=_tiny_data(), stop_after_checkpoints=1)
    other = _cfg(models=["single"], optim={"lr": 0.02})
    with pytest.raises(RunError, match="optim.lr"):
        run(other, out, resume=True, data=_tiny_data())


def test_batch_orders_are_functions_of_seed_tag_epoch():
    data = _tiny_data()
    cfg = _cfg()
    sp = B.prepare_split(data, cfg.tasks, "click", torch.device("cpu"))
    a = B.mixed_batches(sp, 32, 1, "mixed", 0)
    assert all(torch.equal(x[1], y[1]) for x, y in zip(a, B.mixed_batches(sp, 32, 1, "mixed", 0)))
    assert not torch.equal(a[0][1], B.mixed_batches(sp, 32, 1, "mixed", 1)[0][1])
    assert sorted(torch.cat([i for _, i in a]).tolist()) == list(range(len(data)))
    alt = B.alternating_batches(sp, ["ctr", "cvr"], 16, 1, "joint", 0)
    assert [t for t, _ in alt[:4]] == ["ctr", "cvr", "ctr", "cvr"]
    clicked = set(torch.nonzero(data.labels["click"] > 0).squeeze(1).tolist())
    cvr_rows = torch.cat([i for t, i in alt if t == "cvr"]).tolist()
    assert sorted(cvr_rows) == sorted(clicked)  # CVR batches: the clicked space, each row once
    ctr_rows = torch.cat([i for t, i in alt if t == "ctr"]).tolist()
    assert sorted(ctr_rows) == list(range(len(data)))


def test_checkpoint_roundtrip_and_optimizer_flattening(tmp_path):
    p = torch.nn.Parameter(torch.randn(3, 4))
    opt = torch.optim.Adam([p], lr=0.1, betas=(0.8, 0.9))
    p.grad = torch.randn(3, 4)
    opt.step()
    tensors, doc = flatten_optimizer("x", opt.state_dict())
    path = str(tmp_path / "c.safetensors")
    save_tensors(path, {"a/b": torch.arange(5), **tensors}, {"doc": doc, "pos": {"epoch": 3}})
    t2, d2 = load_tensors(path)
    assert torch.equal(t2["a/b"], torch.arange(5)) and d2["pos"] == {"epoch": 3}
    sd = unflatten_optimizer("x", t2, d2["doc"])
    opt2 = torch.optim.Adam([torch.nn.Parameter(p.detach().clone())], lr=1.0)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["betas"] == (0.8, 0.9) and opt2.param_groups[0]["lr"] == 0.1
    assert all(torch.equal(opt2.state_dict()["state"][0][k], opt.state_dict()["state"][0][k]) for k in ("exp_avg", "step"))
    assert os.path.isfile(str(tmp_path / "c.json"))
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_three_tasks_and_options(tmp_path):
    """Any number of tasks: a third (focal) task on its own label, leaky optimizer, per-layer
    pruning, floor counts, select=last, pad_included; every output still written."""
    data = _tiny_data()
    g = torch.Generator().manual_seed(9)
    data.labels["like"] = (torch.rand(len(data), generator=g) < 0.3).float()
    cfg = _cfg(
        models=["layer", "connection"],
        tasks=[{"name": "ctr", "label": "click"},
               {"name": "cvr", "label": "conversion", "space": "clicked", "loss": "mse", "weight": 0.3},
               {"name": "like", "label": "like", "loss": "focal", "weight": 0.2}],
        optim={"lr": 0.01, "mode": "leaky"},
        model={"embed_dim": 4, "hidden": [16, 8], "pad_included": True, "pooling": "sum"},
        stages={"warmup": {"epochs": 1},
                "masks": {"rounds": 2, "scope": "layer", "count_rounding": "floor", "select": "last"},
                "joint": {"epochs": 1}},
    )
    res = run(cfg, str(tmp_path / "r"), data=data)
    for kind in ("layer", "connection"):
        assert {"ctr_auc", "cvr_mse", "like_auc", "like_logloss"} <= set(res["models"][kind])
    st = res["stages"]["connection"]["masks"]
    assert all(st[t]["selected_round"] == 2 for t in ("ctr", "cvr", "like"))
    stats = json.load(open(tmp_path / "r" / "masks.json"))
    lay = stats["layers"]["tower.layers.1"]
    assert set(lay["pairs"]) == {"ctr&cvr", "ctr&like", "cvr&like"}
    # per-layer scope: every layer ends at the same density (up to rounding)
    for t in ("ctr", "cvr", "like"):
        d = [stats["layers"][n]["density"][t] for n in stats["layers"]]
        assert max(d) - min(d) < 0.05
    assert (tmp_path / "r" / "figures" / "masks.png").stat().st_size > 0


def test_missing_label_is_a_config_error(tmp_path):
    from ncs.config import ConfigError
    cfg = _cfg(tasks=[{"name": "ctr", "label": "click"}, {"name": "like", "label": "like"}], models=["single"])
    with pytest.raises(ConfigError, match="like"):
        run(cfg, str(tmp_path / "r"), data=_tiny_data())


def test_auto_sizes_are_resolved_logged_and_recorded(tmp_path):
    """batch and lr left at auto: the run sizes them on its training split, logs them, writes them
    to metrics.json and keeps "auto" in config.yaml (a resume re-derives the same values)."""
    from ncs.config.sizing import auto_lr, planned_steps

    cfg = _cfg(models=["single"], train={"batch_size": "auto"}, optim={"lr": "auto"})
    logs = []
    res = run(cfg, str(tmp_path / "r"), data=_tiny_data(), log=logs.append)
    auto = res["config"]["auto"]
    sized = [m for m in logs if m.startswith("auto sizes for ")]
    n_train = int(sized[0].split()[3])
    # the lr counts the run's own steps: its 1 warmup + 2 joint epochs at the chosen batch
    assert auto == {"train.batch_size": 32, "optim.lr": pytest.approx(auto_lr(32, planned_steps(n_train, 32, 1, 2)))}
    assert "train.batch_size 32" in sized[0]
    with open(tmp_path / "r" / "config.yaml", encoding="utf-8") as f:
        text = f.read()
    assert "batch_size: auto" in text and "lr: auto" in text
