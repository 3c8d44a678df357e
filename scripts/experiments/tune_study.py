#!/usr/bin/env python3
"""Run one fair tuning study of grids.TUNE_STUDIES: `ncs tune` with the study's arguments, so
every model kind gets the same Optuna trial budget over the same search space, scored on the
VALIDATION split, then each best config trained with seeds 0..K-1 and evaluated on test.

    python scripts/experiments/tune_study.py tune_real --runs runs/exp            # ~40 CPU-min
    python scripts/experiments/tune_study.py tune_real --runs runs/exp --list     # the command
    python scripts/experiments/tune_study.py tune_real --runs /tmp/x --tiny       # seconds
    python scripts/experiments/protocol_report.py --tune runs/exp/tune_real \\
        --json docs/results/tune_real.json --doc docs/RESULTS.md --marker tune_real

The study directory is RUNS/NAME (docs/TUNE.md: study.journal, trials/, best/, final/,
summary.json); rerunning the same command resumes a killed study. RUNS/NAME.log is its log,
RUNS/NAME.time.json the wall and CPU seconds of the process. A study with "ctr_auc_margin" M
constrains every model but Single_Task to a validation CTR AUC >= the tuned Single_Task's - M
(issue 10's CTR condition on validation; `ncs tune --ctr-auc-margin M`); one with "trial_seeds" R
scores each trial on the mean of R seeds (`--trial-seeds R`); one with "common_draws" gives
every model the same lr / loss weight / embed_dim per trial (`--common-draws`). --tiny: the
base config shrunk to grids.TINY, 1 trial, 2 seeds, single and connection only (the plumbing,
not the science).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import grids as G  # noqa: E402


def study_args(name: str, runs: Path, tiny: bool = False) -> dict:
    """The arguments of study `name` (writing its tiny config when tiny)."""
    if name not in G.TUNE_STUDIES:
        raise SystemExit(f"study: expected one of {', '.join(G.TUNE_STUDIES)}, got {name!r}")
    st = dict(G.TUNE_STUDIES[name])
    if isinstance(st["config"], dict):  # a grid-style config (overrides of the defaults): written out
        from ncs.config import dump_config, resolve_config
        runs.mkdir(parents=True, exist_ok=True)
        path = runs / f"{name}.config.yaml"
        dump_config(resolve_config(st["config"]), str(path))
        st["config"] = str(path)
    else:
        st["config"] = str(G.CONFIGS / st["config"])
    if tiny:
        from ncs.config import dump_config, load_config
        runs.mkdir(parents=True, exist_ok=True)
        tiny_cfg = str(runs / f"{name}.yaml")
        dump_config(load_config(st["config"], G.TINY), tiny_cfg)
        st.update(config=tiny_cfg, trials=1, seeds=2, models="single,connection")
    st["out"] = str(runs / name)
    return st


def command(name: str, runs: Path, tiny: bool = False) -> List[str]:
    """The equivalent `ncs tune` command line."""
    st = study_args(name, runs, tiny)
    cmd = [sys.executable, "-m", "ncs.cli", "tune", "--config", st["config"], "--trials", str(st["trials"]),
           "--seeds", str(st["seeds"]), "--models", st["models"], "--sampler-seed", str(st["sampler_seed"]),
           "--trial-seeds", str(st.get("trial_seeds", 1)), "--out", st["out"]]
    cmd += ["--start-at-base"] if st.get("start_at_base") else []
    cmd += ["--common-draws"] if st.get("common_draws") else []
    if st.get("floor_from"):
        return cmd + ["--ctr-auc-floor", f"<{st['floor_from']}'s tuned Single_Task's valid CTR AUC - {st['ctr_auc_margin']}>"]
    return cmd + (["--ctr-auc-margin", str(st["ctr_auc_margin"])] if st.get("ctr_auc_margin") is not None else [])


def floor_from(study_dir: Path, trials: int, margin: float, poll_s: float = 30.0, log=print) -> float:
    """The CTR AUC floor of a study split over processes: what ncs.tune.tune takes with
    ctr_auc_margin (the validation AUC of the first bce/focal task in Single_Task's best trial,
    by the study's direction), read from the other part's directory, minus the margin; waits
    until that part's Single_Task trials are all done."""
    from ncs.config import load_config
    from ncs.tune import _ctr_name, _select_best
    tdir = study_dir / "trials" / "single"
    said = False
    while True:
        recs = [json.loads(p.read_text()) for p in sorted(tdir.glob("trial_*.json"))] if tdir.is_dir() else []
        if len(recs) >= trials:
            direction = json.loads((study_dir / "tune.json").read_text())["settings"]["direction"]
            best = _select_best(recs, direction)
            if best is None:
                raise SystemExit(f"{study_dir}: Single_Task has no successful trial to take the floor from")
            ctr = _ctr_name(load_config(str(study_dir / "config.yaml")))
            return best["valid"][f"{ctr}_auc"] - margin
        if not said:
            log(f"waiting for {tdir}: {len(recs)} of {trials} Single_Task trials done")
            said = True
        time.sleep(poll_s)


def run_study(name: str, runs: Path, tiny: bool = False) -> dict:
    """ncs.tune.tune() with the study's arguments, logging to RUNS/NAME.log; summary.json's dict."""
    from ncs.config import load_config
    from ncs.models import RUN_ORDER
    from ncs.tune import tune
    st = study_args(name, runs, tiny)
    models = list(RUN_ORDER) if st["models"] == "all" else st["models"].split(",")
    with open(runs / f"{name}.log", "a", encoding="utf-8") as log:
        def say(msg):
            log.write(msg + "\n")
            log.flush()
        margin, floor = st.get("ctr_auc_margin"), None
        if st.get("floor_from"):
            floor = floor_from(runs / st["floor_from"], st["trials"], margin, log=say)
            say(f"tune: CTR AUC floor {floor:.5f} = {st['floor_from']}'s tuned Single_Task's validation - {margin:g}")
            margin = None
        return tune(load_config(st["config"]), st["out"], st["trials"], models=models, seeds=st["seeds"],
                    sampler_seed=st["sampler_seed"], ctr_auc_margin=margin, ctr_auc_floor=floor,
                    trial_seeds=st.get("trial_seeds", 1), start_at_base=bool(st.get("start_at_base")),
                    common_draws=bool(st.get("common_draws")), log=say)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("study", choices=sorted(G.TUNE_STUDIES))
    p.add_argument("--runs", default="runs/exp", help="root of the study directories (default runs/exp, gitignored)")
    p.add_argument("--tiny", action="store_true", help="a tiny config, 1 trial, 2 seeds (smoke test)")
    p.add_argument("--list", action="store_true", help="print the equivalent ncs tune command, run nothing")
    a = p.parse_args(argv)
    runs = Path(a.runs)
    if a.list:
        print(" ".join(command(a.study, runs, a.tiny)))
        return 0
    runs.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported
    t0, c0 = time.perf_counter(), time.process_time()
    run_study(a.study, runs, a.tiny)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    (runs / f"{a.study}.time.json").write_text(json.dumps(
        {"wall_s": wall, "cpu_s": cpu, "command": " ".join(command(a.study, runs, a.tiny))}))
    print(f"{a.study}: {wall:.0f} s wall, {cpu:.0f} s CPU; study directory {runs / a.study}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
