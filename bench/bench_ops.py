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
unfused cross / reference Adam): < 1 means faster. Memory (see _common.MEMORY_METHOD):
act = activation bytes kept for backward + output, any device; peak = CUDA peak above baseline
during one eager step. The JSON (--json) is rewritten after every group, so a run stopped by
a timeout still leaves every finished group on disk, marked "complete": false.
With --smoke SMOKE.json (bench/smoke.py's output) every row records its variant's correctness
verdict ("smoke": pass | fail | error | skipped | not-checked | baseline | reference) and the
table marks failed ones "!SMOKE": a timing of a variant that failed the smoke pass means nothing.
The variants are described in bench/_common.py; this script is what README figures come from.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

if __package__ in (None, ""):  # run as a script: make `bench` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _common as C  # noqa: E402
from bench import smoke as S  # noqa: E402

import torch  # noqa: E402

OPS = {"linear": "masked_linear", "cross": "cross_masked_linear", "adam": "masked_adam"}
SCHEMA = "ncs-bench-ops/1"


class _Stopped(Exception):
    """SIGTERM (e.g. from `timeout`): stop, keep what was measured."""


def _on_sigterm(signum, frame):
    raise _Stopped(f"signal {signum}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--batch", type=int, default=None, help="batch B (default: NCS_BENCH_BATCH, else 4096 CUDA / 1024 CPU)")
    p.add_argument("--ops", default="linear,cross,adam", help="comma list of linear, cross, adam")
    p.add_argument("--dtypes", default=None, help="comma list of fp32, tf32, bf16 (default: fp32 on CPU, all on CUDA)")
    p.add_argument("--modes", default=None, help="comma list of eager, graph (default: eager on CPU, both on CUDA)")
    p.add_argument("--backends", default=None, help="comma list of ncs backends to include (default: all that run here)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per variant, median reported (CUDA 30, CPU 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per variant before timing (CUDA 10, CPU 2)")
    p.add_argument("--inner", type=int, default=None, help="steps per timed round (CUDA 20, CPU 1)")
    p.add_argument("--max-seconds", type=float, default=None, help="start no new group after this many seconds")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for CPU runs")
    p.add_argument("--tiny", action="store_true", help="tiny shapes and 2 rounds: checks the script, not the speed")
    p.add_argument("--json", default=None, help="write results here; 'auto' = bench/results/<date>_<hardware>_ops.json")
    p.add_argument("--quiet", action="store_true", help="no tables on stdout")
    p.add_argument("--smoke", default=None,
                   help="smoke.json of bench/smoke.py: each row records its variant's correctness verdict")
    args = p.parse_args(argv)
    for name in ("batch", "repeats", "inner"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name}: expected a positive integer, got {v}")
    if args.warmup is not None and args.warmup < 0:
        p.error(f"--warmup: expected a non-negative integer, got {args.warmup}")
    bad = [o for o in args.ops.split(",") if o.strip() and o.strip() not in OPS]
    if bad:
        p.error(f"--ops: expected names from {tuple(OPS)}, got {bad}")
    return args


def _split(s: Optional[str]) -> Optional[List[str]]:
    return None if s is None else [x.strip() for x in s.split(",") if x.strip()]


def build_groups(args, device: str) -> List[Dict]:
    batch = args.batch or C.default_batch(device)
    dtypes = _split(args.dtypes) or list(C.dtype_names(device))
    bad = [d for d in dtypes if d not in C.DTYPES]
    if bad:
        raise SystemExit(f"--dtypes: expected names from {tuple(C.DTYPES)}, got {bad}")
    modes = _split(args.modes) or list(C.modes(device))
    bad = [m for m in modes if m not in ("eager", "graph")]
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
            for key in _split(args.ops):
                op = OPS[key]
                if op == "masked_adam" and dt != "fp32":
                    continue  # optimizer state is fp32 master weights; tf32/bf16 say nothing new
                if op == "masked_linear":
                    shapes = C.linear_shapes(batch)
                elif op == "cross_masked_linear":
                    shapes = [C.cross_shape(batch)]
                else:
                    shapes = C.adam_shapes()
                for shape in shapes:
                    groups.append({"op": op, "shape": shape, "dtype": dt, "mode": mode})
    return groups


def run_group(group: Dict, device: str, args) -> Dict:
    op, shape, dt, mode = group["op"], group["shape"], group["dtype"], group["mode"]
    floor, ref = C.REFERENCE_VARIANTS[op]
    only = set(_split(args.backends) or [])
    rows: Dict[str, Dict] = {}
    fns = {}
    keep = []
    t0 = time.perf_counter()
    with C.precision(dt):
        for v in C.variants(op, device):
            be = C.variant_backend(v)
            if only and be is not None and be not in only and v != ref:
                continue
            row = {"variant": v, "backend": be or "pytorch"}
            table = getattr(args, "smoke_table", None)
            if table is not None:
                row["smoke"] = S.verdict_for(table, op, v, dt)
            rows[v] = row
            why = C.why_skip(op, v, device, dt, mode)
            if why:
                row["skipped"] = why
                continue
            try:
                prob = C.make_problem(op, v, shape, dt, device, mode)
                C.warm_up(prob, device, args.warmup)
                row.update(C.memory_info(prob, device))
                fns[v] = C.runner(prob, device, mode, 1)
                row["gflop"] = prob.flop / 1e9
                row["samples_s"] = []
                keep.append(prob)
            except _Stopped:
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
                    rows[v]["samples_s"].append(C.time_once(fns[v], device, args.inner))
                except _Stopped:
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
            row["median_s"] = C.median(s)
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
    shape = C.shape_id(g["shape"])
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
    args = parse_args(argv)
    if args.tiny:
        os.environ["NCS_BENCH_TINY"] = "1"
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads_before)  # main() is also called in-process (tests)


def _run(args) -> int:
    device = C.bench_device() if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("bench_ops: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    cuda = device == "cuda"
    if args.repeats is None:
        args.repeats = 2 if args.tiny else (30 if cuda else 5)
    if args.warmup is None:
        args.warmup = 1 if args.tiny else (10 if cuda else 2)
    if args.inner is None:
        args.inner = 1 if args.tiny else (20 if cuda else 1)
    path = None
    if args.json:
        path = C.default_result_path(device, "ops") if args.json == "auto" else Path(args.json)
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
        "env": C.environment(device),
        "config": {k: v for k, v in vars(args).items() if k not in ("quiet", "smoke_table")}
        | {"device": device, "density": C.DENSITY},
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
    prev = signal.signal(signal.SIGTERM, _on_sigterm)
    start = time.perf_counter()
    status = 0
    try:
        for i, g in enumerate(groups):
            if args.max_seconds is not None and time.perf_counter() - start > args.max_seconds:
                doc["stopped"] = f"time budget --max-seconds {args.max_seconds} spent; {len(groups) - i} groups not run"
                break
            res = run_group(g, device, args)
            doc["groups"].append(res)
            if not args.quiet:
                print(format_group(res), flush=True)
            if path:
                C.write_json(path, doc)
        else:
            doc["complete"] = True
    except (_Stopped, KeyboardInterrupt) as e:
        doc["stopped"] = f"interrupted ({e or 'KeyboardInterrupt'})"
        status = 124
    finally:
        signal.signal(signal.SIGTERM, prev)
        doc["seconds"] = time.perf_counter() - start
        errors = [f"{g['op']} {C.shape_id(g['shape'])} {g['dtype']} {g['mode']} {r['variant']}: {r['error']}"
                  for g in doc["groups"] for r in g["rows"] if "error" in r]
        doc["errors"] = errors
        if path:
            C.write_json(path, doc)
            print(f"# wrote {path}", file=sys.stderr)
    if errors:
        print(f"# {len(errors)} variant(s) failed:", *errors, sep="\n#   ", file=sys.stderr)
        status = status or 1
    return status


if __name__ == "__main__":
    sys.exit(main())
