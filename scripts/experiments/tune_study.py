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
RUNS/NAME.time.json the wall and CPU seconds of the process. --tiny: the base config shrunk to
grids.TINY, 2 trials, 2 seeds, single and connection only (the plumbing, not the science).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import grids as G  # noqa: E402


def command(name: str, runs: Path, tiny: bool = False) -> List[str]:
    """The `ncs tune` command line of study `name` (writing its tiny config when tiny)."""
    if name not in G.TUNE_STUDIES:
        raise SystemExit(f"study: expected one of {', '.join(G.TUNE_STUDIES)}, got {name!r}")
    st = dict(G.TUNE_STUDIES[name])
    config = str(G.CONFIGS / st["config"])
    if tiny:
        from ncs.config import dump_config, load_config
        runs.mkdir(parents=True, exist_ok=True)
        config = str(runs / f"{name}.yaml")
        dump_config(load_config(str(G.CONFIGS / st["config"]), G.TINY), config)
        st.update(trials=2, seeds=2, models="single,connection")
    return [sys.executable, "-m", "ncs.cli", "tune", "--config", config, "--trials", str(st["trials"]),
            "--seeds", str(st["seeds"]), "--models", st["models"], "--sampler-seed", str(st["sampler_seed"]),
            "--out", str(runs / name)]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("study", choices=sorted(G.TUNE_STUDIES))
    p.add_argument("--runs", default="runs/exp", help="root of the study directories (default runs/exp, gitignored)")
    p.add_argument("--tiny", action="store_true", help="a tiny config, 2 trials, 2 seeds (smoke test)")
    p.add_argument("--list", action="store_true", help="print the command, run nothing")
    a = p.parse_args(argv)
    runs = Path(a.runs)
    cmd = command(a.study, runs, a.tiny)
    if a.list:
        print(" ".join(cmd))
        return 0
    runs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.perf_counter()
    with open(runs / f"{a.study}.log", "a", encoding="utf-8") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter() - t0
    if rc != 0:
        print(f"{a.study}: FAILED rc={rc} after {wall:.0f} s (see {runs / (a.study + '.log')})")
        return 1
    (runs / f"{a.study}.time.json").write_text(json.dumps(
        {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "command": " ".join(cmd)}))
    print(f"{a.study}: {wall:.0f} s wall, {ru.ru_utime + ru.ru_stime:.0f} s CPU; study directory {runs / a.study}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
