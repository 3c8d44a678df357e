"""`ncs tune`: the same search space and budget per model, validation-only objective, per-trial
JSON, resume of a killed study, best configs written and trained over seeds."""
import json
import os

import optuna  # the test extra installs it (setup.py: optuna==5.0.0)
import pytest
import yaml

from ncs import cli
from ncs.config import ConfigError, load_config, resolve_config
from ncs.models import MODEL_KINDS
from ncs.tune import overrides, space, trial_config, tune

BASE = {
    "seed": 0, "device": "cpu", "backend": "torch", "threads": 1,
    "models": ["single", "connection"],
    "data": {"kind": "synthetic", "rows": 300, "seed": 0, "split": {"fractions": [0.6, 0.2, 0.2]}},
    "model": {"embed_dim": 4, "hidden": [8, 4]},
    "optim": {"lr": 0.01},
    "train": {"batch_size": 64, "eval_batch_size": 512},
    "stages": {"warmup": {"epochs": 1}, "masks": {"rounds": 2},
               "joint": {"epochs": 1, "early_stopping": True, "patience": 1}},
}


def _write_cfg(tmp_path, **over):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({**BASE, **over}))
    return str(p)


def test_space_is_common_and_overrides_resolve():
    base = resolve_config(BASE)
    common = {"lr", "w0", "embed_dim"}
    for kind in MODEL_KINDS:
        sp = space(kind, base)
        assert common <= set(sp), kind
        assert sp["lr"] == {"type": "float", "low": 0.001, "high": 0.1, "log": True}
        assert sp["embed_dim"]["choices"] == [2, 4, 8]
    assert set(space("connection", base)) - common == {"warmup_epochs", "joint_epochs", "final_density",
                                                      "task_embed_dim"}
    assert set(space("single", base)) - common == {"epochs"}
    # the largest number of passes is the same for the baselines and the connection model
    assert space("single", base)["epochs"]["high"] == (space("connection", base)["warmup_epochs"]["high"]
                                                      + space("connection", base)["joint_epochs"]["high"])
    params = {"lr": 0.003, "w0": 0.4, "embed_dim": 8, "warmup_epochs": 2, "joint_epochs": 1,
              "final_density": 0.3, "task_embed_dim": 2}
    cfg = trial_config("connection", base, params)
    assert cfg.models == ("connection",) and cfg.optim.lr == 0.003 and cfg.model.embed_dim == 8
    assert [t.weight for t in cfg.tasks] == pytest.approx([0.4, 0.6])
    assert cfg.stages.masks.final_density == 0.3 and cfg.model.task_embed_dim == 2
    o = overrides("mmoe", base, {"lr": 0.01, "w0": 0.5, "embed_dim": 4, "epochs": 3, "experts": 3})
    assert o["baselines"] == {"epochs": 3} and o["model"]["experts"] == 3


def test_tune_two_trials_writes_trials_best_and_test_summary(tmp_path, capsys):
    out = tmp_path / "t"
    rc = cli.main(["tune", "--config", _write_cfg(tmp_path), "--trials", "2", "--out", str(out),
                   "--seeds", "2", "--models", "single,connection", "-q"])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    assert "Single_Task" in stdout and "Connection_Share" in stdout and "±" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "cvr_mse" and summary["direction"] == "minimize"
    for kind in ("single", "connection"):
        r = summary["models"][kind]
        assert r["trials_done"] == 2
        recs = [json.loads((out / "trials" / kind / f"trial_{i:04d}.json").read_text()) for i in range(2)]
        # the objective is the validation metric; the trials never see the test split
        assert all(set(rec["valid"]) >= {"cvr_mse", "ctr_auc"} and rec["value"] == rec["valid"]["cvr_mse"]
                   for rec in recs)
        assert r["best_valid"] == min(rec["value"] for rec in recs)
        best = load_config(str(out / "best" / f"{kind}.yaml"))
        assert best.models == (kind,) and best.optim.lr == pytest.approx(r["params"]["lr"])
        t = r["test"]["cvr_mse"]
        assert len(t["values"]) == 2 and t["std"] >= 0
        for s in (0, 1):
            m = json.loads((out / "final" / kind / f"seed{s}" / "metrics.json").read_text())
            assert kind in m["models"]
        assert not (out / "trials" / kind / "t0").exists()  # trial checkpoints are cleaned up
    # no pickle: the study is a JSON-lines journal
    with open(out / "study.journal", "r", encoding="utf-8") as f:
        assert all(json.loads(line) for line in f if line.strip())


def test_tune_resumes_a_killed_study(tmp_path):
    base = resolve_config(dict(BASE, models=["single"]))
    out = str(tmp_path / "t")
    tune(base, out, 1, final=False)
    # a trial cut short by a kill: RUNNING in the journal, with its params drawn
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(os.path.join(out, "study.journal")))
    study = optuna.load_study(study_name="single", storage=storage)
    tr = study.ask()
    cut = {"lr": tr.suggest_float("lr", 0.001, 0.1, log=True), "w0": tr.suggest_float("w0", 0.1, 0.9),
           "embed_dim": tr.suggest_categorical("embed_dim", [2, 4, 8]), "epochs": tr.suggest_int("epochs", 1, 4)}
    logs = []
    s = tune(base, out, 2, final=False, log=logs.append)
    assert s["models"]["single"]["trials_done"] == 2  # the cut trial does not count; one new one ran
    assert any("cut short" in m for m in logs)
    study = optuna.load_study(study_name="single", storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2 and done[-1].params == pytest.approx(cut)  # rerun with the same params
    # a third run with the same budget does nothing more
    s = tune(base, out, 2, final=False)
    assert s["models"]["single"]["trials_done"] == 2
    # another config in the same directory is refused
    with pytest.raises(ConfigError, match="another config"):
        tune(resolve_config(dict(BASE, models=["single"], optim={"lr": 0.02})), out, 2, final=False)


def test_tune_user_errors_are_one_line(tmp_path, capsys):
    cfg = _write_cfg(tmp_path)
    for argv, needle in ((["--trials", "0"], "--trials: expected an integer >= 1"),
                         (["--trials", "1", "--metric", "cvr_auc"], "--metric: expected one of"),
                     (["--trials", "1", "--ctr-auc-margin", "-0.5"], "ctr_auc_margin: expected a number >= 0")):
        rc = cli.main(["tune", "--config", cfg, "--out", str(tmp_path / "x"), *argv])
        _, err = capsys.readouterr()
        lines = [x for x in err.splitlines() if x.strip()]
        assert rc == 2 and len(lines) == 1 and needle in lines[0], err


def test_auto_sizes_are_resolved_before_the_space_is_built():
    """A base config that leaves batch and lr at auto is sized on its training split first, so
    the lr range is centred on the lr a plain `ncs train` would use."""
    from ncs.config.sizing import resolve_auto
    from ncs.tune import _sized

    base = resolve_config({**BASE, "optim": {"lr": "auto"}, "train": {"batch_size": "auto", "eval_batch_size": 512}})
    logs = []
    sized, loaded = _sized(base, logs.append)
    assert len(loaded[1]) == 181  # the training split (by request: 181 of 300 rows), handed to the study
    want, _ = resolve_auto(base, 181)  # what `ncs train` chooses for 181 training rows
    assert sized.train.batch_size == 32 and sized.optim.lr == pytest.approx(want.optim.lr)
    assert space("connection", sized)["lr"]["low"] == pytest.approx(want.optim.lr / 10)
    assert logs and logs[0].startswith("auto sizes for ")
    assert _sized(resolve_config(BASE), logs.append) == (resolve_config(BASE), None)


def test_ctr_auc_margin_is_relative_to_the_tuned_single_task(tmp_path):
    """Issue 10's CTR condition as a constraint: Single_Task is tuned first, unconstrained; every
    other kind's trials are feasible only with a validation CTR AUC >= Single_Task's best - M."""
    base = resolve_config(BASE)
    out = tmp_path / "t"
    logs = []
    s = tune(base, str(out), 2, models=["connection", "single"], final=False, ctr_auc_margin=0.0, log=logs.append)
    ref = s["models"]["single"]["best_valid_metrics"]["ctr_auc"]
    assert s["ctr_auc_floor"] == pytest.approx(ref) and s["ctr_auc_margin"] == 0.0
    assert any(m.startswith("tune: CTR AUC floor") for m in logs)
    recs = [json.loads((out / "trials" / "connection" / f"trial_{i:04d}.json").read_text()) for i in range(2)]
    for rec in recs:
        assert rec["feasible"] == (rec["valid"]["ctr_auc"] >= ref)
    single = [json.loads((out / "trials" / "single" / f"trial_{i:04d}.json").read_text()) for i in range(2)]
    assert all(r["feasible"] for r in single)  # no floor while Single_Task itself is tuned
    feas = [r for r in recs if r["feasible"]]
    best = s["models"]["connection"]
    assert best["feasible"] == bool(feas)
    if feas:
        assert best["best_valid"] == min(r["value"] for r in feas)
    assert json.loads((out / "tune.json").read_text())["settings"]["ctr_auc_margin"] == 0.0
    for kw, needle in (({"ctr_auc_margin": -0.1}, "expected a number >= 0"),
                       ({"ctr_auc_margin": 0.002, "ctr_auc_floor": 0.5}, "not both"),
                       ({"ctr_auc_margin": 0.002, "models": ["connection"]}, "tune 'single' too")):
        with pytest.raises(ConfigError, match=needle):
            tune(base, str(tmp_path / "x"), 1, final=False, **kw)


def test_trial_seeds_score_the_mean_of_independent_seeds(tmp_path):
    """--trial-seeds R: a trial's value is the mean of R validation values, each the one a
    one-seed trial of the same params with that seed gets; the floor reads the mean CTR AUC."""
    base = resolve_config(BASE)
    out = tmp_path / "t"
    s = tune(base, str(out), 1, models=["single"], final=False, trial_seeds=2)
    rec = json.loads((out / "trials" / "single" / "trial_0000.json").read_text())
    assert rec["trial_seeds"] == 2 and len(rec["valid_per_seed"]) == 2
    per = [m["cvr_mse"] for m in rec["valid_per_seed"]]
    assert per[0] != per[1]  # the seeds differ: a mean, not one seed counted twice
    assert rec["value"] == pytest.approx(sum(per) / 2) and s["models"]["single"]["best_valid"] == rec["value"]
    assert rec["valid"]["ctr_auc"] == pytest.approx(sum(m["ctr_auc"] for m in rec["valid_per_seed"]) / 2)
    assert not [p for p in (out / "trials" / "single").iterdir() if p.is_dir()]  # checkpoints removed
    # each seed's value is what a plain one-seed trial of the same params with that seed gives
    for i, want in enumerate(per):
        cfg_i = base.override({"seed": base.seed + i})
        one = tune(cfg_i, str(tmp_path / f"one{i}"), 1, models=["single"], final=False)
        rec1 = json.loads((tmp_path / f"one{i}" / "trials" / "single" / "trial_0000.json").read_text())
        assert rec1["params"] == rec["params"]  # the same sampler seed draws the same first point
        assert one["models"]["single"]["best_valid"] == pytest.approx(want, rel=1e-6)
    assert json.loads((out / "tune.json").read_text())["settings"]["trial_seeds"] == 2
    with pytest.raises(ConfigError, match="another config or objective"):  # R is part of the objective
        tune(base, str(out), 1, models=["single"], final=False)
    with pytest.raises(ConfigError, match="--trial-seeds: expected an integer >= 1"):
        tune(base, str(tmp_path / "x"), 1, final=False, trial_seeds=0)


def test_mean_metrics_propagates_a_diverged_seed():
    from ncs.tune import mean_metrics
    m = mean_metrics([{"cvr_mse": 0.1, "ctr_auc": 0.6}, {"cvr_mse": float("nan"), "ctr_auc": 0.7}])
    assert m["cvr_mse"] != m["cvr_mse"] and m["ctr_auc"] == pytest.approx(0.65)


def test_start_at_base_first_trial_is_the_untuned_config(tmp_path):
    """--start-at-base: every model's trial 0 is the base config's own point, and its validation
    value is the one the base config itself trains to."""
    from ncs.tune import _Study, base_params
    base = resolve_config(BASE)
    for kind in MODEL_KINDS:
        p = base_params(kind, base)
        sp = space(kind, base)
        assert set(p) == set(sp), kind
        cfg = trial_config(kind, base, p)
        assert cfg.optim.lr == base.optim.lr and cfg.model.embed_dim == base.model.embed_dim
        assert [t.weight for t in cfg.tasks] == pytest.approx([t.weight for t in base.tasks])
        if kind == "connection":
            assert (cfg.stages.warmup.epochs, cfg.stages.joint.epochs) == (1, 1)
            assert cfg.stages.masks.final_density == pytest.approx(base.stages.masks.final_density)
        else:
            assert cfg.baselines.epochs == 2  # warmup + joint of the base
    # clipped into the space: a prune fraction's density, a weight outside [0.1, 0.9]
    odd = resolve_config(dict(BASE, stages=dict(BASE["stages"], masks={"rounds": 2, "prune_fraction": 0.5}),
                              tasks=[{"name": "ctr", "label": "click", "space": "all", "loss": "bce", "weight": 0.95},
                                     {"name": "cvr", "label": "conversion", "space": "clicked", "loss": "mse",
                                      "weight": 0.05}]))
    p = base_params("connection", odd)
    assert p["final_density"] == pytest.approx(0.25) and p["w0"] == 0.9
    out = tmp_path / "t"
    s = tune(base, str(out), 2, models=["single", "connection"], final=False, start_at_base=True)
    st = _Study(base, str(tmp_path / "x"), "cvr_mse", "minimize", None, lambda m: None)
    for kind in ("single", "connection"):
        rec = json.loads((out / "trials" / kind / "trial_0000.json").read_text())
        assert rec["params"] == pytest.approx(base_params(kind, base))
        direct = st.evaluate(kind, base_params(kind, base), str(tmp_path / f"ck_{kind}"))
        assert rec["value"] == pytest.approx(direct["cvr_mse"], rel=1e-6)
        rec1 = json.loads((out / "trials" / kind / "trial_0001.json").read_text())
        assert rec1["params"] != rec["params"]  # the rest are sampled
        assert s["models"][kind]["best_valid"] <= rec["value"]
    assert json.loads((out / "tune.json").read_text())["settings"]["start_at_base"] is True


def test_common_draws_give_every_model_the_same_common_axes(tmp_path):
    """--common-draws: trial j's lr, w0 and embed_dim are the same for every model (point j of the
    shifted Halton sequence), each model's own axes are still sampled, trial 0 stays the base
    point, and a study whose --trials grows keeps its points (resume-safe, extensible)."""
    import math

    from ncs.tune_space import COMMON, common_draw
    base = resolve_config(BASE)
    sp = space("single", base)
    pts = [common_draw(j, base, 0) for j in range(1, 8)]
    assert pts == [common_draw(j, base, 0) for j in range(1, 8)]  # deterministic
    assert pts != [common_draw(j, base, 1) for j in range(1, 8)]  # seeded
    for p in pts:
        assert set(p) == set(COMMON) and sp["lr"]["low"] <= p["lr"] <= sp["lr"]["high"]
        assert sp["w0"]["low"] <= p["w0"] <= sp["w0"]["high"] and p["embed_dim"] in sp["embed_dim"]["choices"]
    # low discrepancy on the lr axis: 7 base-2 points are k/8 shifted, circular gaps 1/8 (one 1/4)
    u = sorted(math.log(p["lr"] / sp["lr"]["low"]) / math.log(sp["lr"]["high"] / sp["lr"]["low"]) for p in pts)
    gaps = [b - a for a, b in zip(u, u[1:])] + [1 + u[0] - u[-1]]
    assert max(gaps) == pytest.approx(0.25) and sorted(gaps)[:-1] == pytest.approx([0.125] * 6)

    out = tmp_path / "t"
    tune(base, str(out), 2, models=["single", "connection"], final=False, start_at_base=True, common_draws=True)
    tune(base, str(out), 3, models=["single", "connection"], final=False, start_at_base=True, common_draws=True)
    recs = {k: [json.loads((out / "trials" / k / f"trial_{n:04d}.json").read_text()) for n in range(3)]
            for k in ("single", "connection")}
    assert len(list((out / "trials" / "single").glob("trial_*.json"))) == 3  # nothing enqueued twice
    for k, rs in recs.items():
        assert rs[0]["params"] == pytest.approx(base_params_of(k, base))
        for j in (1, 2):
            assert {c: rs[j]["params"][c] for c in COMMON} == pytest.approx(common_draw(j, base, 0)), (k, j)
    assert recs["connection"][1]["params"]["final_density"] != recs["connection"][2]["params"]["final_density"]
    assert json.loads((out / "tune.json").read_text())["settings"]["common_draws"] is True
    # without the option the models' lr draws are their own samplers'
    free = tmp_path / "f"
    tune(base, str(free), 2, models=["single", "connection"], final=False, start_at_base=True)
    lr1 = [json.loads((free / "trials" / k / "trial_0001.json").read_text())["params"]["lr"]
           for k in ("single", "connection")]
    assert lr1[0] != lr1[1]


def base_params_of(kind, base):
    from ncs.tune import base_params
    return base_params(kind, base)
