#!/usr/bin/env python3
"""Side-by-side timing and memory of the ncs ops against their PyTorch baselines, in ONE run.

    python bench/bench_ops.py                          # this machine's defaults (CUDA if present)
    python bench/bench_ops.py --json auto              # -> bench/results/<date>_<hardware>_ops.json
    NCS_BENCH_THREADS=2 python bench/bench_ops.py --device cpu --batch 4096 --json out.json
    python bench/bench_ops.py --tiny                   # seconds: checks the script, not the speed

For each group (op, shape, dtype, mode) every variant is built once, warmed up, then timed in
interleaved rounds (variant order rotated each round, so drift and thermal state hit all
variants alike); a row's time is the median of its rounds. On CUDA each round times `--inner`
back-to-back steps between CUDA events; on CPU one step with perf_counter. Tables give each
row's time divided by the floor (dense, no mask) and by the path ncs replaces (float mask /
unfused cross / reference Adam): < 1 means faster. Memory (see _memory.MEMORY_METHOD):
act = activation bytes kept for backward + output, any device; peak = CUDA peak above baseline
during one eager step. The JSON (--json) is rewritten after every group, so a run stopped by
a timeout still leaves every finished group on disk, marked "complete": false.
With --smoke SMOKE.json (bench/smoke.py's output) every row records its variant's correctness
verdict ("smoke": pass | fail | error | skipped | not-checked | baseline | reference) and the
table marks failed ones "!SMOKE": a timing of a variant that failed the smoke pass means nothing.
The variants are described in bench/_cases.py; this script is what README figures come from.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

if __package__ in (None, ""):  # run as a script: make `bench` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _cases as K  # noqa: E402
from bench import _cli, _env, _memory, _problems, _timing  # noqa: E402
from bench import smoke as S  # noqa: E402
from bench._cli import OPS, Stopped, split  # noqa: E402

import torch  # noqa: E402

SCHEMA = "ncs-bench-ops/1"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--batch", type=_cli.positive_int, default=None, help="batch B (default: NCS_BENCH_BATCH, else 4096 CUDA / 1024 CPU)")
    p.add_argument("--ops", type=_cli.ops_arg, default="linear,cross,adam", help="comma list of linear, cross, adam")
    p.add_argument("--dtypes", default=None, help="comma list of fp32, tf32, bf16 (default: fp32 on CPU, all on CUDA)")
    p.add_argument("--modes", default=None, help="comma list of eager, graph (default: eager on CPU, both on CUDA)")
    p.add_argument("--backends", default=None, help="comma list of ncs backends to include (default: all that run here)")
    p.add_argument("--repeats", type=_cli.positive_int, default=None, help="timed rounds per variant, median reported (CUDA 30, CPU 5)")
    p.add_argument("--warmup", type=_cli.non_negative_int, default=None, help="untimed steps per variant before timing (CUDA 10, CPU 2)")
    p.add_argument("--inner", type=_cli.positive_int, default=None, help="steps per timed round (CUDA 20, CPU 1)")
    p.add_argument("--max-seconds", type=float, default=None, help="start no new group after this many seconds")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for CPU runs")
    p.add_argument("--tiny", action="store_true", help="tiny shapes and 2 rounds: checks the script, not the speed")
    p.add_argument("--json", default=None, help="write results here; 'auto' = bench/results/<date>_<hardware>_ops.json")
    p.add_argument("--quiet", action="store_true", help="no tables on stdout")
    p.add_argument("--smoke", default=None,
                   help="smoke.json of bench/smoke.py: each row records its variant's correctness verdict")
    return p.parse_args(argv)


def build_groups(args, device: str) -> List[Dict]:
    batch = args.batch or K.default_batch(device)
    dtypes = split(args.dtypes) or list(K.dtype_names(device))
    bad = [d for d in dtypes if d not in K.DTYPES]
    if bad:
        raise SystemExit(f"--dtypes: expected names from {tuple(K.DTYPES)}, got {bad}")
    modes = split(args.modes) or list(K.modes(device))
    bad = [m for m in modes if m not in K.MODES]
    if bad:
        raise SystemExit(f"--modes: expected eager and/or graph, got {bad}")
    if args.dtypes is None:
        # most telling first, so a run cut short by --max-seconds or a timeout still has them
        dtypes = sorted(dtypes, key=("bf16", "tf32", "fp32").index)
    if args.modes is None:
        modes = sorted(modes, key=("graph", "eager").index)
    groups = []
    for dt in dtypes:
        for mode in modes:
            for key in split(args.ops):
                op = OPS[key]
                if op == "masked_adam" and dt != "fp32":
                    continue  # optimizer state is fp32 master weights; tf32/bf16 say nothing new
                for shape in K.op_shapes(op, batch):
                    groups.append({"op": op, "shape": shape, "dtype": dt, "mode": mode})
    return groups


def run_group(group: Dict, device: str, args) -> Dict:
    op, shape, dt, mode = group["op"], group["shape"], group["dtype"], group["mode"]
    floor, ref = K.REFERENCE_VARIANTS[op]
    only = set(split(args.backends) or [])
    rows: Dict[str, Dict] = {}
    fns = {}
    keep = []
    t0 = time.perf_counter()
    with K.precision(dt):
        for v in K.variants(op, device):
            be = K.variant_backend(v)
            if only and be is not None and be not in only and v != ref:
                continue
            row = {"variant": v, "backend": be or "pytorch"}
            table = getattr(args, "smoke_table", None)
            if table is not None:
                row["smoke"] = S.verdict_for(table, op, v, dt)
            rows[v] = row
            why = K.why_skip(op, v, device, dt, mode)
            if why:
                row["skipped"] = why
                continue
            try:
                prob = _problems.make_problem(op, v, shape, dt, device, mode)
                _timing.warm_up(prob, device, args.warmup)
                row.update(_memory.memory_info(prob, device))
                fns[v] = _timing.runner(prob, device, mode, 1)
                row["gflop"] = prob.flop / 1e9
                row["samples_s"] = []
                keep.append(prob)
            except Stopped:
                raise
            except Exception as e:  # one broken variant must not hide the others
                row["error"] = f"{type(e).__name__}: {e}"[:500]
        names = list(fns)
        for r in range(args.repeats):
            if not names:
                break
            k = r % len(names)
            for v in names[k:] + names[:k]:
                if v not in fns:
                    continue
                try:
                    rows[v]["samples_s"].append(_timing.time_once(fns[v], device, args.inner))
                except Stopped:
                    raise
                except Exception as e:
                    rows[v]["error"] = f"{type(e).__name__}: {e}"[:500]
                    del fns[v]
            names = [v for v in names if v in fns]
    del keep, fns
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    for row in rows.values():
        s = row.get("samples_s")
        if s:
            row["median_s"] = _timing.median(s)
            row["min_s"] = min(s)
            if len(s) >= 4:  # relative interquartile range: how far to trust this row's median
                q = statistics.quantiles(s, n=4)
                row["iqr_rel"] = (q[2] - q[0]) / row["median_s"]
            if row.get("gflop"):
                row["tflops"] = row["gflop"] / 1e3 / row["median_s"]
    for row in rows.values():
        for tag, base in (("floor", floor), ("ref", ref)):
            b = rows.get(base, {})
            for key, out in (("median_s", "time"), ("act_bytes", "act"), ("peak_bytes", "peak")):
                if row.get(key) and b.get(key):
                    row[f"{out}_x_{tag}"] = row[key] / b[key]
    return {**group, "floor": floor, "ref": ref, "seconds": time.perf_counter() - t0, "rows": list(rows.values())}


def _fmt(v, spec):
    if v is None:  # keep the column: right-align a dash in the spec's width
        return "-".rjust(int(spec.split(".")[0] or 0))
    return format(v, spec)


def format_group(g: Dict) -> str:
    shape = K.shape_id(g["shape"])
    head = f"\n{g['op']} {shape} {g['dtype']} {g['mode']}   (x{g['floor']} / x{g['ref']}: row / that row; <1 = faster)"
    cols = f"{'variant':<22}{'ms':>9}{'x' + g['floor']:>15}{'x' + g['ref']:>12}{'TFLOP/s':>9}" \
           f"{'act MiB':>9}{'act x' + g['floor'][:5]:>12}{'act x' + g['ref'][:5]:>12}{'peak MiB':>9}{'peak x' + g['ref'][:5]:>13}{'iqr %':>7}"
    lines = [head, cols]
    for r in g["rows"]:
        if "skipped" in r:
            continue
        if "error" in r and "median_s" not in r:
            lines.append(f"{r['variant']:<22}  ERROR {r['error'][:110]}")
            continue
        mib = 1 / 2 ** 20
        name = r["variant"] if r.get("smoke") not in ("fail", "error") else r["variant"][:13] + " !SMOKE"
        lines.append(
            f"{name:<22}{_fmt(r['median_s'] * 1e3, '9.3f')}{_fmt(r.get('time_x_floor'), '15.3f')}"
            f"{_fmt(r.get('time_x_ref'), '12.3f')}{_fmt(r.get('tflops'), '9.2f')}"
            f"{_fmt(r['act_bytes'] * mib if r.get('act_bytes') else None, '9.2f')}{_fmt(r.get('act_x_floor'), '12.3f')}"
            f"{_fmt(r.get('act_x_ref'), '12.3f')}{_fmt(r['peak_bytes'] * mib if r.get('peak_bytes') else None, '9.2f')}"
            f"{_fmt(r.get('peak_x_ref'), '13.3f')}{_fmt(r['iqr_rel'] * 100 if 'iqr_rel' in r else None, '7.1f')}"
        )
    skipped = [f"{r['variant']} ({r['skipped'][:60]})" for r in g["rows"] if "skipped" in r]
    if skipped:
        lines.append("  skipped: " + "; ".join(skipped))
    return "\n".join(lines)


def main(argv=None) -> int:
    return _cli.run_main(argv, parse_args, _run, "bench_ops")


def _run(args, device: str) -> int:
    cuda = device == "cuda"
    if args.repeats is None:
        args.repeats = 2 if args.tiny else (30 if cuda else 5)
    if args.warmup is None:
        args.warmup = 1 if args.tiny else (10 if cuda else 2)
    if args.inner is None:
        args.inner = 1 if args.tiny else (20 if cuda else 1)
    path = None
    if args.json:
        path = _env.default_result_path(device, "ops") if args.json == "auto" else Path(args.json)
    groups = build_groups(args, device)
    args.smoke_table = None
    smoke_doc = None
    if args.smoke:
        try:
            smoke_doc = json.loads(Path(args.smoke).read_text())
            args.smoke_table = S.verdicts(smoke_doc)
        except (OSError, ValueError) as e:  # no smoke file (the smoke step died): say so per row
            print(f"bench_ops: --smoke {args.smoke}: cannot read it ({type(e).__name__}: {e}); rows say not-checked",
                  file=sys.stderr)
            args.smoke_table = {}
    doc = {
        "schema": SCHEMA,
        "env": _env.environment(device),
        "config": {k: v for k, v in vars(args).items() if k not in ("quiet", "smoke_table")}
        | {"device": device, "density": K.DENSITY},
        "smoke": None if args.smoke is None else {
            "file": args.smoke, "all_pass": (smoke_doc or {}).get("all_pass"),
            "summary": (smoke_doc or {}).get("summary"),
            "failed": sorted(k for k, v in args.smoke_table.items() if v in ("fail", "error"))},
        "complete": False,
        "groups": [],
    }
    if not args.quiet:
        e = doc["env"]
        print(f"# {e['device_name']} | torch {e['versions']['torch']} | triton {e['versions']['triton']} | "
              f"backends {e['backends']} | threads {e['torch_threads']} | repeats {args.repeats} x inner {args.inner}")
    start = time.perf_counter()
    try:
        with _cli.Interruptible(doc) as interrupted:
            for i, g in enumerate(groups):
                if args.max_seconds is not None and time.perf_counter() - start > args.max_seconds:
                    doc["stopped"] = f"time budget --max-seconds {args.max_seconds} spent; {len(groups) - i} groups not run"
                    break
                res = run_group(g, device, args)
                doc["groups"].append(res)
                if not args.quiet:
                    print(format_group(res), flush=True)
                if path:
                    _env.write_json(path, doc)
            else:
                doc["complete"] = True
    finally:
        doc["seconds"] = time.perf_counter() - start
        errors = [f"{g['op']} {K.shape_id(g['shape'])} {g['dtype']} {g['mode']} {r['variant']}: {r['error']}"
                  for g in doc["groups"] for r in g["rows"] if "error" in r]
        doc["errors"] = errors
        if path:
            _env.write_json(path, doc)
            print(f"# wrote {path}", file=sys.stderr)
    status = interrupted.status
    if errors:
        print(f"# {len(errors)} variant(s) failed:", *errors, sep="\n#   ", file=sys.stderr)
        status = status or 1
    return status


if __name__ == "__main__":
    sys.exit(main())
