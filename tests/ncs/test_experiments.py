"""The experiment drivers of docs/RESULTS.md (scripts/experiments): grids, one tiny end-to-end
run, the aggregator's arithmetic (the paper's gains), and the 'rewind to random init' ablation's
premise (warmup.epochs 0 makes the rewind target the model as initialised)."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
EXP = REPO / "scripts" / "experiments"
SAMPLE = REPO.parent / "shared" / "data" / "lt4rec" / "part-r-00002.gz"


def _load(name):
    sys.path.insert(0, str(EXP))
    try:
        spec = importlib.util.spec_from_file_location(f"exp_{name}", EXP / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses look their module up there
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(EXP))


G = _load("grids")
R = _load("make_report")
D = _load("run_experiments")
P = _load("protocol_report")
T = _load("tune_study")
B = _load("bootstrap_test")


def test_every_grid_resolves_to_a_valid_config():
    for name in G.GRIDS:
        specs = G.grid(name)
        assert specs and len({s.run_id for s in specs}) == len(specs), name
        for s in specs:
            cfg = D.resolved_config(s, None)  # raises ConfigError on a bad override
            assert cfg.threads == (None if name.startswith("minimal_real") else 1), name  # minimal: the default
    sizes = {s.run_id: D.resolved_config(s, None).data.rows for s in G.grid("synth1m")}
    assert set(sizes.values()) == {1_000_000}
    abl = {s.tags["variant"]: D.resolved_config(s, None) for s in G.grid("ablation")}
    assert abl["leaky"].optim.mode == "leaky" and abl["scope_layer"].stages.masks.scope == "layer"
    assert abl["random_init"].stages.warmup.epochs == 0
    assert abl["leaky"].models == ("connection",)
    assert abl["weights_0.5"].models == ("single", "layer", "connection")
    with pytest.raises(ValueError, match="grid"):
        G.grid("nope")


def test_gains_are_computed_as_in_the_paper():
    """Table 2 of the paper: Single 0.13688 / 0.78572, Layer 0.13563 / 0.78808 -> +0.91% / +0.30%,
    Connection 0.13226 / 0.78874 -> +3.38% / +0.38%."""
    rec = {"seed": 0, "models": {"single": {"cvr_mse": 0.13688, "ctr_auc": 0.78572},
                                 "layer": {"cvr_mse": 0.13563, "ctr_auc": 0.78808},
                                 "connection": {"cvr_mse": 0.13226, "ctr_auc": 0.78874}}}
    t = R.table2([rec])
    rows = {r["model"]: r for r in t["rows"]}
    assert round(rows["Layer_Share"]["vs_single"]["cvr_gain"], 2) == 0.91
    assert round(rows["Layer_Share"]["vs_single"]["ctr_gain"], 2) == 0.30
    assert round(rows["Connection_Share"]["vs_single"]["cvr_gain"], 2) == 3.38
    assert round(rows["Connection_Share"]["vs_single"]["ctr_gain"], 2) == 0.38
    md = R.table2_md(t)
    assert "+3.38%" in md and "+0.38%" in md and "Connection_Share vs Layer_Share" in md


def test_paired_gains_and_win_counts():
    recs = [{"seed": s, "models": {"single": {"cvr_mse": 0.2, "ctr_auc": 0.7},
                                   "connection": {"cvr_mse": m, "ctr_auc": a}}}
            for s, (m, a) in enumerate([(0.18, 0.71), (0.22, 0.69)])]
    g = R.compare(recs, "connection", "single")
    assert g["n"] == 2 and g["cvr_wins"] == 1 and g["ctr_wins"] == 1
    assert g["cvr_gain_paired_mean"] == pytest.approx(0.0) and g["cvr_gain_paired_std"] == pytest.approx(
        (2 * 10.0 ** 2) ** 0.5)  # +10% and -10%: sample std sqrt(200)
    assert g["cvr_gain"] == pytest.approx(0.0)


def test_report_fills_marked_blocks(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("a\n<!-- table:x -->\nold\n<!-- /table:x -->\nb\n<!-- table:y -->\n<!-- /table:y -->\n")
    assert R.replace_blocks(doc, {"x": "new 1\n", "z": "unused"}) == ["x"]
    assert doc.read_text() == "a\n<!-- table:x -->\nnew 1\n<!-- /table:x -->\nb\n<!-- table:y -->\n<!-- /table:y -->\n"


@pytest.mark.skipif(not SAMPLE.is_file(), reason=f"real sample {SAMPLE} not present")
def test_tiny_real_run_end_to_end(tmp_path):
    """One tiny run through the driver (a subprocess `ncs train`) and the aggregator."""
    runs = tmp_path / "runs"
    rc = subprocess.run([sys.executable, str(EXP / "run_experiments.py"), "real", "--runs", str(runs), "--tiny",
                         "--only", "seed0"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert rc.returncode == 0, rc.stdout + rc.stderr
    assert (runs / "real" / "seed0" / "metrics.json").is_file()
    assert (runs / "real" / "seed0.yaml").is_file()
    # a finished run is skipped
    again = subprocess.run([sys.executable, str(EXP / "run_experiments.py"), "real", "--runs", str(runs), "--tiny",
                            "--only", "seed0"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert "done already" in again.stdout
    tables = R.build(runs, tmp_path / "results", tmp_path / "figures", None)
    assert "table2_real" in tables and "masks_real" in tables
    t = json.loads((tmp_path / "results" / "table2_real.json").read_text())
    assert [r["model"] for r in t["rows"]] == ["Single_Task", "Layer_Share", "Connection_Share"]
    assert (tmp_path / "figures" / "masks.png").stat().st_size < 200_000


def test_no_warmup_rewinds_to_the_model_as_initialised(tmp_path):
    """The random_init ablation: with warmup.epochs 0 the rewind snapshot (connection_init) holds
    exactly the initial weights of the connection model (its init is a function of the seed)."""
    from ncs.config import resolve_config
    from ncs.models import build_model
    from ncs.train import run
    from ncs.train.checkpoint import load_tensors
    from ncs.train.stages import derived_seed

    cfg = resolve_config({
        "seed": 3, "device": "cpu", "backend": "torch", "threads": 1, "models": ["connection"],
        "data": {"kind": "synthetic", "rows": 1500, "conflict": 0.5},
        "model": {"embed_dim": 4, "hidden": [8, 4]},
        "train": {"batch_size": 256, "eval_batch_size": 2048},
        "stages": {"warmup": {"epochs": 0}, "masks": {"rounds": 1}, "joint": {"epochs": 1}},
    })
    out = tmp_path / "run"
    run(cfg, str(out))
    snap, _ = load_tensors(str(out / "checkpoints" / "connection_init.safetensors"))
    fields = json.loads((out / "fields.json").read_text())
    from ncs.data.types import FieldSpec
    torch.manual_seed(derived_seed(3, "init/connection"))
    fresh = build_model("connection", [FieldSpec(f["name"], f["vocab_size"], f["max_len"]) for f in fields],
                        ["ctr", "cvr"], cfg.model, backend="torch")
    params = dict(fresh.named_parameters())
    assert params
    for name, p in params.items():
        assert torch.equal(snap[f"model/{name}"], p.detach()), name
    # and no optimizer moments in the snapshot: a fresh Adam, as after variable initialisation
    assert not any(k.endswith(("exp_avg", "exp_avg_sq")) for k in snap)


def test_minimal_grids_hold_only_data_and_model_size():
    """Issue 10's minimal config: no base YAML; the keys given are data, model size and seed (plus,
    at 1M rows, threads / eval batch / log interval, which do not change what is learned). The
    plain grids pin the protocol they ran under (PROTOCOL_2026_12_02); the _fixed grids are the
    minimal configs under today's defaults."""
    real = G.grid("minimal_real")
    assert [s.run_id for s in real] == [f"{p}seed{s}" for s in range(5) for p in ("", "comp_")]
    for s in real:
        assert s.base == "" and set(s.overrides) - {"models"} == {"seed", "data", "model", "loss", "stages"}
        assert s.overrides["loss"] == {"balance": "pcgrad"} and s.overrides["stages"] == {"joint": {"select_warmup": False}}
        cfg = D.resolved_config(s, None)
        want = ("single", "layer", "connection") if s.run_id.startswith("seed") else tuple(G.COMPETITORS)
        assert cfg.models == want and os.path.isfile(cfg.data.path) and cfg.seed == s.tags["seed"]
        assert cfg.train.batch_size == "auto" and cfg.optim.lr == "auto"
    synth = G.grid("minimal_synth1m")
    assert len(synth) == 10 and {s.tags["seed"] for s in synth} == set(range(5))
    for s in synth:
        assert s.base == "" and set(s.overrides) - {"models"} == {"seed", "threads", "data", "model", "train", "loss", "stages"}
        cfg = D.resolved_config(s, None)
        assert cfg.data.rows == 1_000_000 and cfg.data.conflict == 0.5
        assert cfg.data.seed == cfg.data.split.seed == cfg.seed == s.tags["seed"]
    kinds = {k for s in synth if s.tags["seed"] == 0 for k in D.resolved_config(s, None).models}
    assert kinds == {"single", "layer", "connection", "shared_bottom", "mmoe", "ple", "esmm"}
    # the _fixed grids: the same runs with one key more
    for name in ("minimal_real", "minimal_synth1m"):
        plain, fixed = G.grid(name), G.grid(name + "_fixed")
        assert [s.run_id for s in fixed] == [s.run_id for s in plain]
        for a, b in zip(plain, fixed):
            assert b.grid == name + "_fixed" and b.tags["variant"] == "balance_fixed" and a.tags["variant"] == "minimal"
            # today's defaults: the plain grid without its pins, plus loss.balance fixed (the default)
            unpinned = {k: v for k, v in a.overrides.items() if k not in ("loss", "stages")}
            assert b.overrides == G.merge(unpinned, {"loss": {"balance": "fixed"}})
            cb, ca = D.resolved_config(b, None), D.resolved_config(a, None)
            assert cb.loss.balance == "fixed" != ca.loss.balance
            assert cb.stages.joint.select_warmup and not ca.stages.joint.select_warmup
            # ... which is what a config of only data and model size resolves to
            assert cb == D.resolved_config(G.RunSpec(b.grid, b.run_id, "", unpinned), None)
    # balance_sizes: per size and seed a pcgrad and a fixed run that differ in loss.balance alone
    bal = {(s.tags["rows"], s.tags["seed"], s.tags["balance"]): s for s in G.grid("balance_sizes")}
    assert {k[0] for k in bal} == set(G.BALANCE_SIZES) and {k[1] for k in bal} == set(range(5))
    for (rows, seed, b), s in bal.items():
        cfg = D.resolved_config(s, None)
        assert cfg.data.rows == rows and cfg.seed == cfg.data.seed == seed and cfg.loss.balance == b
        assert cfg.models == ("single", "connection") and s.tags["variant"] == f"{b}_{rows // 1000}k"
        if b == "fixed":
            assert s.overrides == G.merge(bal[(rows, seed, "pcgrad")].overrides, {"loss": {"balance": "fixed"}})


def _metrics(models, valid=None):
    return {"models": models, "valid": valid or models}


def test_versus_pairs_every_model_with_connection_by_seed(tmp_path):
    """Two runs per seed (the paper's models, the competitors) are merged; Connection_Share's gain
    over a model is (model - connection) / model, paired by seed."""
    g = tmp_path / "minimal_synth1m"
    g.mkdir()
    vals = {0: (0.20, 0.70, 0.18, 0.71, 0.25, 0.69), 1: (0.20, 0.70, 0.22, 0.69, 0.20, 0.70)}
    for s, (ms, auc_s, mc, auc_c, mm, auc_m) in vals.items():
        for rid, models in ((f"seed{s}", {"single": {"cvr_mse": ms, "ctr_auc": auc_s},
                                          "connection": {"cvr_mse": mc, "ctr_auc": auc_c}}),
                            (f"comp_seed{s}", {"mmoe": {"cvr_mse": mm, "ctr_auc": auc_m}})):
            (g / rid).mkdir()
            (g / rid / "metrics.json").write_text(json.dumps(_metrics(models)))
            (g / f"{rid}.tags.json").write_text(json.dumps({"run_id": rid, "seed": s, "variant": "minimal"}))
    data = P.collect(tmp_path, "minimal_synth1m")
    assert set(data["minimal"][0]["models"]) == {"single", "connection", "mmoe"}
    vs = P.versus(data["minimal"])
    single = vs["single"]["vs_ref"]
    assert single["cvr_gain_pct"]["values"] == pytest.approx([10.0, -10.0])
    assert single["ref_cvr_better"] == 1 and single["pairs"] == 2
    assert single["ctr_auc_diff"]["mean"] == pytest.approx(0.0)
    assert vs["mmoe"]["vs_ref"]["cvr_gain_pct"]["values"] == pytest.approx([28.0, -10.0])
    assert vs["connection"]["test_cvr_mse"]["mean"] == pytest.approx(0.20) and "vs_ref" not in vs["connection"]
    md = P.versus_md(vs)
    lines = md.splitlines()
    assert lines[-1].startswith("| **Connection_Share** |") and "| MMoE |" in md
    assert "+0.00 % ± 14.14 | 1/2 |" in md  # single: +10 % and -10 %


def test_versus_others_takes_the_models_a_grid_did_not_train_from_a_committed_json(tmp_path):
    """--versus --others: a grid of Connection_Share alone (minimal_synth1m_rewind_mlp) against the
    other models of a committed --versus JSON, paired by seed; the grid's own kinds win."""
    full = {0: {"models": {"single": {"cvr_mse": 0.20, "ctr_auc": 0.70}, "connection": {"cvr_mse": 0.19, "ctr_auc": 0.71},
                           "ple": {"cvr_mse": 0.16, "ctr_auc": 0.72}},
                "valid": {"single": {"cvr_mse": 0.21}, "connection": {"cvr_mse": 0.2}, "ple": {"cvr_mse": 0.17}}},
            1: {"models": {"single": {"cvr_mse": 0.30, "ctr_auc": 0.60}, "connection": {"cvr_mse": 0.29, "ctr_auc": 0.61},
                           "ple": {"cvr_mse": 0.25, "ctr_auc": 0.62}},
                "valid": {"single": {"cvr_mse": 0.31}, "connection": {"cvr_mse": 0.3}, "ple": {"cvr_mse": 0.26}}}}
    path = tmp_path / "fixed.json"
    path.write_text(json.dumps({"grid": "minimal_synth1m_fixed", "variants": {"balance_fixed": P.versus(full)}}))
    others = P.seeds_of_versus_json(path)
    assert others == full   # the JSON's per-seed values are what collect() would have given
    g = tmp_path / "runs" / "minimal_synth1m_rewind_mlp"
    g.mkdir(parents=True)
    for s, mse in ((0, 0.15), (1, 0.24)):
        (g / f"seed{s}").mkdir()
        (g / f"seed{s}" / "metrics.json").write_text(json.dumps(_metrics({"connection": {"cvr_mse": mse, "ctr_auc": 0.7}})))
        (g / f"seed{s}.tags.json").write_text(json.dumps({"run_id": f"seed{s}", "seed": s, "variant": "rewind_mlp"}))
    data = P.collect(tmp_path / "runs", "minimal_synth1m_rewind_mlp")
    merged = P.with_others(data["rewind_mlp"], others)
    assert set(merged[0]["models"]) == {"single", "connection", "ple"}
    assert merged[0]["models"]["connection"]["cvr_mse"] == 0.15 and merged[1]["models"]["ple"]["cvr_mse"] == 0.25
    vs = P.versus(merged)
    assert vs["ple"]["vs_ref"]["cvr_gain_pct"]["values"] == pytest.approx([6.25, 4.0])
    assert vs["single"]["vs_ref"]["ref_cvr_better"] == 2
    # the CLI: the same table, and the JSON names where the others came from
    out = tmp_path / "rep.json"
    assert P.main(["--runs", str(tmp_path / "runs"), "--grid", "minimal_synth1m_rewind_mlp", "--versus",
                   "--others", str(path), "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["others"] == str(path) and rep["variants"]["rewind_mlp"]["ple"]["test_cvr_mse"]["values"] == [0.16, 0.25]
    bad = tmp_path / "two.json"
    bad.write_text(json.dumps({"variants": {"a": {}, "b": {}}}))
    with pytest.raises(ValueError, match="one variant"):
        P.seeds_of_versus_json(bad)


def test_versus_others_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    runs = tmp_path / "runs"
    g = runs / "g"
    (g / "seed0").mkdir(parents=True)
    (g / "seed0" / "metrics.json").write_text(json.dumps(_metrics({"connection": {"cvr_mse": 0.1, "ctr_auc": 0.7}})))
    (g / "seed0.tags.json").write_text(json.dumps({"run_id": "seed0", "seed": 0, "variant": "v"}))
    two = tmp_path / "two.json"
    two.write_text(json.dumps({"variants": {"a": {}, "b": {}}}))
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"variants": {"a": {"single": {"seeds": [0]}}}}))
    notjson = tmp_path / "x.json"
    notjson.write_text("{")
    for path, needle in ((two, "one variant"), (broken, "valid_cvr_mse"), (notjson, "not JSON"),
                         (tmp_path / "none.json", "none.json")):
        assert P.main(["--runs", str(runs), "--grid", "g", "--versus", "--others", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"--others: {path}") and needle in err and "\n" not in err, err
    assert P.main(["--runs", str(runs), "--grid", "g", "--others", str(two)]) == 2
    assert "only with --versus" in capsys.readouterr().err


def test_rewind_grids_change_only_the_connection_models_rewind_and_selection():
    for base in ("minimal_real", "minimal_synth1m"):
        fixed = {s.run_id: s for s in G.grid(base + "_fixed") if s.run_id.startswith("seed")}
        for v, want in (("mlp", False), ("rounds", True)):
            runs = G.grid(f"{base}_rewind_{v}")
            assert [s.run_id for s in runs] == list(fixed)
            for s in runs:
                cfg, ref = D.resolved_config(s, None), D.resolved_config(fixed[s.run_id], None)
                assert cfg.models == ("connection",) and cfg.stages.rewind == "mlp" != ref.stages.rewind
                assert cfg.stages.joint.select_rounds is want and cfg.stages.joint.select_warmup
                assert cfg.override({"models": list(ref.models), "stages": {"rewind": "all", "joint": {"select_rounds": False}}}) == ref
    with pytest.raises(ValueError, match="grid"):
        G.grid("minimal_real_rewind_nope")
    sizes = {(s.tags["rows"], s.tags["seed"], s.tags["variant"].split("_")[0]): D.resolved_config(s, None)
             for s in G.grid("rewind_sizes")}
    for (rows, seed, v), cfg in sizes.items():
        assert cfg.data.rows == rows and cfg.models == ("single", "connection") and cfg.loss.balance == "fixed"
        other = sizes[(rows, seed, "rewind" if v == "today" else "today")]
        assert (cfg.stages.rewind == "mlp") is (v == "rewind") and cfg.stages.joint.select_rounds is (v == "rewind")
        assert cfg.override({"stages": {"rewind": other.stages.rewind, "joint": {"select_rounds": other.stages.joint.select_rounds}}}) == other


def test_adopt_takes_only_a_run_of_the_grids_config(tmp_path):
    from ncs.config import dump_config
    spec = G.grid("minimal_real")[0]
    src = tmp_path / "byhand"
    src.mkdir()
    dump_config(D.resolved_config(spec, None), str(src / "config.yaml"))
    (src / "metrics.json").write_text(json.dumps(_metrics({"single": {"cvr_mse": 0.1, "ctr_auc": 0.6}})))
    runs = tmp_path / "runs"
    assert "adopted" in D.adopt(spec, runs, src)
    assert (runs / "minimal_real" / "seed0" / "metrics.json").is_file()
    assert json.loads((runs / "minimal_real" / "seed0.tags.json").read_text())["variant"] == "minimal"
    other = G.grid("minimal_real")[2]  # seed 1: another config
    msg = D.adopt(other, runs, src)
    assert "FAILED" in msg and "differs" in msg and not (runs / "minimal_real" / "seed1").exists()
    # where synthetic data was cached is not part of what is compared; everything else is
    probe = G.grid("synth1m_probe")[1]
    cached = tmp_path / "cached"
    cached.mkdir()
    cfg = D.resolved_config(probe, str(tmp_path / "somewhere"))
    assert cfg.data.cache_dir
    dump_config(cfg, str(cached / "config.yaml"))
    (cached / "metrics.json").write_text(json.dumps(_metrics({"connection": {"cvr_mse": 0.1, "ctr_auc": 0.6}})))
    assert "adopted" in D.adopt(probe, runs, cached)
    assert "differs" in D.adopt(G.grid("synth1m_probe")[2], runs, cached)


@pytest.mark.skipif(not SAMPLE.is_file(), reason=f"real sample {SAMPLE} not present")
def test_tiny_tune_study_end_to_end(tmp_path):
    """tune_study.py --tiny (1 trial, 2 seeds, single and connection) and its report."""
    runs = tmp_path / "runs"
    cmd = T.command("tune_real", runs, tiny=True)
    assert cmd[cmd.index("--trials") + 1] == "1" and cmd[cmd.index("--models") + 1] == "single,connection"
    full = T.command("tune_real", runs)
    assert full[full.index("--trials") + 1] == str(G.TUNE_STUDIES["tune_real"]["trials"])
    assert full[full.index("--models") + 1] == "all" and full[full.index("--seeds") + 1] == "5"
    rc = subprocess.run([sys.executable, str(EXP / "tune_study.py"), "tune_real", "--runs", str(runs), "--tiny"],
                        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert rc.returncode == 0, rc.stdout + rc.stderr + (runs / "tune_real.log").read_text()
    rep = P.tune_report(runs / "tune_real")
    assert set(rep["best"]) == {"single", "connection"} and rep["trials_per_model"] == 1
    assert all(b["trials_done"] == 1 for b in rep["best"].values())
    vs = rep["versus_connection"]
    assert vs["single"]["vs_ref"]["pairs"] == 2 and len(vs["connection"]["test_cvr_mse"]["values"]) == 2
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- table:tune_real -->\n<!-- /table:tune_real -->\n")
    assert P.main(["--tune", str(runs / "tune_real"), "--doc", str(doc), "--json", str(tmp_path / "t.json")]) == 0
    text = doc.read_text()
    assert "| trials |" in text and "| Single_Task | 1 |" in text and "**Connection_Share**" in text
    # a study split over two processes (one kind each) reports as the whole study
    import shutil
    for part, kind in (("pa", "single"), ("pb", "connection")):
        d = runs / part
        shutil.copytree(runs / "tune_real", d)
        summ = json.loads((d / "summary.json").read_text())
        summ["models"] = {kind: summ["models"][kind]}
        (d / "summary.json").write_text(json.dumps(summ))
        other = "connection" if kind == "single" else "single"
        shutil.rmtree(d / "final" / other)
        shutil.rmtree(d / "trials" / other)
    merged = P.tune_report([runs / "pa", runs / "pb"])
    assert merged["versus_connection"] == rep["versus_connection"] and merged["study"] == "pa+pb"
    assert set(merged["best"]) == {"single", "connection"}
    # a kind in two parts (tune_synth1m2_c re-tunes connection): the last part's results and trials
    redo = runs / "pc"
    shutil.copytree(runs / "pb", redo)
    summ = json.loads((redo / "summary.json").read_text())
    summ["models"]["connection"]["best_valid"] = -1.0
    (redo / "summary.json").write_text(json.dumps(summ))
    for f in (redo / "trials" / "connection").glob("trial_*.json"):
        t = json.loads(f.read_text())
        f.write_text(json.dumps(dict(t, seconds=t["seconds"] + 1000.0)))
    three = P.tune_report([runs / "tune_real", runs / "pc"])
    assert three["best"]["connection"]["best_valid"] == -1.0 and three["best"]["single"] == rep["best"]["single"]
    assert three["search_seconds"]["connection"] == pytest.approx(rep["search_seconds"]["connection"] + 1000.0)
    assert three["search_seconds"]["single"] == pytest.approx(rep["search_seconds"]["single"])
    # the test split's resampling of the final runs (it recomputes and checks metrics.json's values)
    js = tmp_path / "bs.json"
    assert B.main(["--study", str(runs / "tune_real"), "--resamples", "50", "--json", str(js)]) == 0
    bs = json.loads(js.read_text())
    assert bs["observed"]["connection"]["seeds"] == 2
    assert bs["observed"]["connection"]["cvr_mse"] == pytest.approx(vs["connection"]["test_cvr_mse"]["mean"], rel=1e-4)
    doc2 = tmp_path / "doc2.md"
    doc2.write_text("x\n<!-- table:bs -->\nold\n<!-- /table:bs -->\ny\n")
    assert B.main(["--from-json", str(js), "--doc", str(doc2), "--marker", "bs"]) == 0
    assert "old" not in doc2.read_text() and "| Single_Task |" in doc2.read_text()
    lo, hi = bs["versus"]["single"]["cvr_gain_ci95"]
    assert lo < hi and 0 <= bs["versus"]["single"]["p_ref_lower_cvr_mse"] <= 1


def test_weighted_auc_is_the_weighted_pair_count():
    import numpy as np
    rng = np.random.default_rng(0)
    n = 57
    score = rng.integers(0, 9, n).astype(float)  # many ties
    label = (rng.random(n) < 0.4).astype(float)
    w = rng.integers(0, 4, n).astype(float)  # bootstrap counts, zeros included
    num = den = 0.0
    for i in range(n):
        for j in range(n):
            if label[i] > 0.5 and label[j] < 0.5:
                den += w[i] * w[j]
                num += w[i] * w[j] * (1.0 if score[i] > score[j] else 0.5 if score[i] == score[j] else 0.0)
    assert B.weighted_auc(score, label, w) == pytest.approx(num / den, rel=1e-12)
    assert B.weighted_auc(score, label, np.ones(n)) == pytest.approx(
        B.weighted_auc(score, label, np.full(n, 3.0)), rel=1e-12)


def test_bootstrap_of_a_model_against_itself_is_exactly_zero_and_a_better_one_wins():
    import numpy as np
    rng = np.random.default_rng(1)
    n = 300
    click = (rng.random(n) < 0.4).astype(float)
    play = rng.random(n)
    groups = np.repeat(np.arange(100), 3)
    base = {"click": click, "play": play, "groups": groups}

    def model(noise, seed):
        r = np.random.default_rng(seed)
        pred = np.clip(play + noise * r.standard_normal(n), 0, 1)
        return {"se": (pred - play) ** 2, "pctr": click + noise * r.standard_normal(n)}

    per = {"connection": [model(0.1, 0), model(0.1, 1)], "single": [model(0.1, 0), model(0.1, 1)],
           "layer": [model(0.3, 2), model(0.3, 3)]}
    rep = B.bootstrap(base, per, "connection", resamples=200)
    same = rep["versus"]["single"]
    assert same["cvr_gain_pct"] == 0 and same["cvr_gain_ci95"] == [0.0, 0.0] and same["ctr_auc_diff"] == 0
    better = rep["versus"]["layer"]
    assert better["cvr_gain_pct"] > 50 and better["p_ref_lower_cvr_mse"] == 1.0 and better["ctr_auc_diff"] > 0
    assert rep["test_groups"] == 100 and rep["test_clicked"] == int(click.sum())


def test_every_tune_study_resolves_and_a_split_study_takes_its_floor_from_part_a(tmp_path, monkeypatch):
    from ncs.config import dump_config, load_config, resolve_config
    for name in G.TUNE_STUDIES:
        st = T.study_args(name, tmp_path)
        cfg = load_config(st["config"])  # a YAML of configs/ or a written grid-style config
        assert cfg.tasks and " ".join(T.command(name, tmp_path)).count("--out") == 1
    assert "--start-at-base" in T.command("tune_synth1m_a", tmp_path)
    assert "--common-draws" in T.command("tune_synth1m3_b", tmp_path)
    assert "--common-draws" not in T.command("tune_synth1m2_a", tmp_path)
    # the study run under the old auto lr pins it (so it reproduces); its successor keeps auto
    assert load_config(T.study_args("tune_synth1m_a", tmp_path)["config"]).optim.lr == 1e-4
    assert load_config(T.study_args("tune_synth1m2_b", tmp_path)["config"]).optim.lr == "auto"
    # part b's floor: part a's best Single_Task trial (lowest value) CTR AUC minus the margin
    a = tmp_path / "a"
    tdir = a / "trials" / "single"
    tdir.mkdir(parents=True)
    dump_config(resolve_config({}), str(a / "config.yaml"))
    (a / "tune.json").write_text(json.dumps({"settings": {"direction": "minimize"}}))
    for i, (v, auc) in enumerate([(0.03, 0.70), (0.02, 0.66), (0.04, 0.72)]):
        (tdir / f"trial_{i:04d}.json").write_text(json.dumps(
            {"number": i, "value": v, "valid": {"cvr_mse": v, "ctr_auc": auc, "other_auc": 0.5}}))
    assert T.floor_from(a, 3, 0.002, poll_s=0) == pytest.approx(0.658)
    logs = []

    def boom(_):
        raise RuntimeError("waited")
    monkeypatch.setattr(T.time, "sleep", boom)
    with pytest.raises(RuntimeError, match="waited"):  # fewer trials than the budget: it waits
        T.floor_from(a, 4, 0.002, log=logs.append)
    assert logs and "3 of 4" in logs[0]


def test_seed_spread_trains_each_seed_on_validation(tmp_path):
    S = _load("seed_spread")
    assert S.parse_seeds("0-2") == [0, 1, 2] and S.parse_seeds("3,5") == [3, 5]
    cfg = tmp_path / "c.yaml"
    import yaml
    cfg.write_text(yaml.safe_dump({
        "seed": 0, "device": "cpu", "backend": "torch", "threads": 1,
        "data": {"kind": "synthetic", "rows": 300, "seed": 0, "split": {"fractions": [0.6, 0.2, 0.2]}},
        "model": {"embed_dim": 4, "hidden": [8, 4]}, "optim": {"lr": 0.01},
        "train": {"batch_size": 64, "eval_batch_size": 512},
        "stages": {"warmup": {"epochs": 1}, "masks": {"rounds": 2}, "joint": {"epochs": 1}}}))
    res = S.spread(str(cfg), ["single"], [0, 1], str(tmp_path / "w"))
    assert set(res["single"]) == {0, 1} and res["single"][0]["ctr_auc"] != res["single"][1]["ctr_auc"]
    doc = tmp_path / "d.md"
    doc.write_text("<!-- table:s -->\n<!-- /table:s -->\n")
    assert S.main(["--config", str(cfg), "--models", "single", "--seeds", "0-1", "--work", str(tmp_path / "w2"),
                   "--doc", str(doc), "--marker", "s"]) == 0
    text = doc.read_text()
    assert "| Single_Task |" in text and f"{res['single'][0]['ctr_auc']:.4f}" in text  # deterministic per seed


def test_probe_report_compares_each_variant_with_the_defaults_on_validation():
    def rec(v_mse, v_auc, t_mse=0.2, t_auc=0.6):
        return {"models": {"connection": {"cvr_mse": t_mse, "ctr_auc": t_auc}},
                "valid": {"connection": {"cvr_mse": v_mse, "ctr_auc": v_auc}}}
    data = {"defaults": {0: rec(0.10, 0.70)}, "better": {0: rec(0.09, 0.71)}, "worse": {0: rec(0.12, 0.69)},
            "two_seeds": {0: rec(0.10, 0.70), 1: rec(0.08, 0.72)}}
    rep = P.probes(data, "connection")
    v = rep["variants"]
    assert v["better"]["valid_cvr_gain_pct"] == pytest.approx(10.0)
    assert v["worse"]["valid_cvr_gain_pct"] == pytest.approx(-20.0)
    assert v["better"]["valid_ctr_auc_diff"] == pytest.approx(0.01)
    assert v["two_seeds"]["valid_cvr_mse"] == pytest.approx(0.09) and v["two_seeds"]["seeds"] == [0, 1]
    md = P.probes_md(rep).splitlines()
    assert md[2].startswith("| **defaults** |") and md[3].startswith("| better |") and md[-1].startswith("| worse |")
    assert "+10.00 %" in md[3] and "-20.00 %" in md[-1]
