#!/usr/bin/env python3
"""Train the runs of one experiment grid (see grids.py), skipping the finished ones.

    python scripts/experiments/run_experiments.py real --runs runs/exp --jobs 2
    python scripts/experiments/run_experiments.py sweep --runs runs/exp --jobs 2 --only 'c0.5_'
    python scripts/experiments/run_experiments.py ablation --runs runs/exp --list
    python scripts/experiments/run_experiments.py real --runs /tmp/x --tiny      # seconds
    python scripts/experiments/run_experiments.py minimal_real --adopt seed0=/elsewhere/r0   # a run made by hand

Each run: RUNS/GRID/ID.yaml (the resolved config: every key), RUNS/GRID/ID/ (the `ncs train` run
directory: metrics.json, masks.json, rounds.json, ...), RUNS/GRID/ID.log (its log) and
RUNS/GRID/ID.time.json (wall seconds of the process). A run whose metrics.json exists is
skipped; one with checkpoints but no metrics.json (killed) is continued with --resume. Runs are
independent processes, --jobs at a time; each sets its own torch thread count (threads: 1), so
--jobs 2 uses two cores. Synthetic data is cached under RUNS/cache (generated once per size).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import grids as G  # noqa: E402


def resolved_config(spec: G.RunSpec, cache_dir: Optional[str]) -> dict:
    """The base YAML with the run's overrides, validated, data.path made absolute."""
    from ncs.config import ConfigError, load_config, resolve_config
    over = spec.overrides
    synthetic = spec.base == "demo.yaml" or over.get("data", {}).get("kind") == "synthetic"
    if cache_dir is not None and synthetic:
        over = G.merge(over, {"data": {"cache_dir": os.path.abspath(cache_dir)}})
    if spec.base:
        return load_config(str(G.CONFIGS / spec.base), over)
    try:  # no base YAML: the defaults + the overrides, paths relative to configs/
        return resolve_config(over, base_dir=str(G.CONFIGS))
    except ConfigError as e:
        raise ConfigError(f"grid {spec.grid}, run {spec.run_id}: {e}") from None


def write_config(spec: G.RunSpec, runs: Path) -> Path:
    from ncs.config import dump_config
    gdir = runs / spec.grid
    gdir.mkdir(parents=True, exist_ok=True)
    cfg = resolved_config(spec, str(runs / "cache"))
    path = gdir / f"{spec.run_id}.yaml"
    dump_config(cfg, str(path))
    tags = gdir / f"{spec.run_id}.tags.json"
    tags.write_text(json.dumps({"grid": spec.grid, "run_id": spec.run_id, "base": spec.base, **spec.tags}))
    return path


def run_one(spec: G.RunSpec, runs: Path, dry: bool = False) -> str:
    gdir = runs / spec.grid
    out = gdir / spec.run_id
    if (out / "metrics.json").is_file():
        return f"{spec.grid}/{spec.run_id}: done already"
    cfg_path = write_config(spec, runs)
    resume = (out / "checkpoints").is_dir() and any(p.suffix == ".safetensors" for p in (out / "checkpoints").iterdir())
    cmd = [sys.executable, "-m", "ncs.cli", "train", "--config", str(cfg_path), "--out", str(out)]
    if resume:
        cmd.append("--resume")
    if dry:
        return " ".join(cmd)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # threads: 1 in every config; no idle OpenMP pool
    t0 = time.perf_counter()
    with open(gdir / f"{spec.run_id}.log", "a", encoding="utf-8") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - t0
    if rc != 0:
        return f"{spec.grid}/{spec.run_id}: FAILED rc={rc} after {wall:.0f} s (see {gdir / (spec.run_id + '.log')})"
    (gdir / f"{spec.run_id}.time.json").write_text(json.dumps({"wall_s": wall, "resumed": resume}))
    return f"{spec.grid}/{spec.run_id}: {wall:.0f} s"


def adopt(spec: G.RunSpec, runs: Path, src: Path) -> str:
    """Take a run trained elsewhere (by hand, before its grid existed) into the grid: only if its
    config.yaml is the grid's resolved config, key for key (data.cache_dir aside: where the
    generated synthetic data is cached changes nothing that is learned). Copies its metrics.json
    and config.yaml (not the checkpoints) to RUNS/GRID/ID/ and notes where it came from."""
    import shutil
    import tempfile

    from ncs.config import dump_config
    with tempfile.TemporaryDirectory() as tmp:
        dump_config(resolved_config(spec, None), os.path.join(tmp, "c.yaml"))
        want = Path(tmp, "c.yaml").read_text().splitlines()
    have = (src / "config.yaml").read_text().splitlines() if (src / "config.yaml").is_file() else []
    cache = "  cache_dir:"  # the key under data: (dump_config writes one key per line, in schema order)
    want = [line for line in want if not line.startswith(cache)]
    have = [line for line in have if not line.startswith(cache)]
    if not (src / "metrics.json").is_file():
        return f"{spec.grid}/{spec.run_id}: FAILED to adopt {src}: no metrics.json"
    diff = [f"{a!r} != {b!r}" for a, b in zip(have, want) if a != b] + (["lengths differ"] if len(have) != len(want) else [])
    if diff:
        return f"{spec.grid}/{spec.run_id}: FAILED to adopt {src}: its config differs from the grid's: {diff[:3]}"
    write_config(spec, runs)
    out = runs / spec.grid / spec.run_id
    out.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.json", "config.yaml"):
        shutil.copyfile(src / name, out / name)
    (runs / spec.grid / f"{spec.run_id}.adopted.json").write_text(json.dumps({"from": str(src.resolve())}))
    return f"{spec.grid}/{spec.run_id}: adopted from {src}"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("grid", choices=G.GRIDS)
    p.add_argument("--runs", default="runs/exp", help="root of the run directories (default runs/exp, gitignored)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (each one CPU thread)")
    p.add_argument("--only", help="regex on the run id: train only the matching runs")
    p.add_argument("--tiny", action="store_true", help="every run shrunk to seconds (smoke test)")
    p.add_argument("--list", action="store_true", help="print the commands, train nothing")
    p.add_argument("--adopt", action="append", default=[], metavar="ID=DIR",
                   help="take the finished run DIR (trained by hand) as run ID if its config.yaml is the grid's")
    args = p.parse_args(argv)
    if args.adopt:
        by_id = {s.run_id: s for s in G.grid(args.grid, tiny=args.tiny)}
        msgs = []
        for item in args.adopt:
            rid, sep, src = item.partition("=")
            if not sep or rid not in by_id:
                p.error(f"--adopt: expected ID=DIR with ID one of {', '.join(by_id)}, got {item!r}")
            msgs.append(adopt(by_id[rid], Path(args.runs), Path(src)))
        print("\n".join(msgs))
        return 1 if any("FAILED" in m for m in msgs) else 0
    if args.jobs < 1:
        p.error("--jobs: expected an integer >= 1")
    runs = Path(args.runs)
    specs = G.grid(args.grid, tiny=args.tiny)
    if args.only:
        specs = [s for s in specs if re.search(args.only, s.run_id)]
    if args.list:
        for s in specs:
            print(run_one(s, runs, dry=True))
        return 0
    (runs / "cache").mkdir(parents=True, exist_ok=True)
    failed = 0
    # the first synthetic run of a size builds the data cache; the others must not race it
    first, rest = specs[:1], specs[1:]
    for s in first:
        msg = run_one(s, runs)
        print(msg, flush=True)
        failed += "FAILED" in msg
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for msg in pool.map(lambda s: run_one(s, runs), rest):
            print(msg, flush=True)
            failed += "FAILED" in msg
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
