"""Data-at-scale benchmarks (docs/DATA.md): reader throughput and the trainer's peak RSS.

    python bench/data.py readers [--rows 2000000] [--tf-copies 48]     -> bench/results/data_readers.json
    python bench/data.py train-rss [--sizes 1000000,5000000,20000000] [--steps 40] -> bench/results/data_train_rss.json
    python bench/data.py synth --rows 100000000                         -> bench/results/data_synth.json

Every figure records wall and CPU seconds and the load average before and after: the machine
this was measured on is shared (2 cores, several users), so wall-clock rows/s understate what the
code does on an idle machine; CPU seconds (this process + its children) do not.
Inputs are generated in a temporary folder and deleted afterwards (the big ones can be GBs).
The TFRecord input is the real sample repeated (so its vocabularies stop growing after the first
copy: a best case for the vocabulary lookups, the parser's work is the same).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "python"), str(REPO)]
RESULTS = Path(os.environ.get("NCS_BENCH_RESULTS", REPO / "bench" / "results"))
SAMPLE = Path(os.environ.get("NCS_SAMPLE", REPO.parent / "shared" / "data" / "lt4rec" / "part-r-00002.gz"))
if not SAMPLE.exists():
    SAMPLE = Path("/work/shared/data/lt4rec/part-r-00002.gz")


def _cpu() -> float:
    a = resource.getrusage(resource.RUSAGE_SELF)
    b = resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _measure(fn):
    load0 = os.getloadavg()[0]
    c0, t0 = _cpu(), time.perf_counter()
    out = fn()
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    return out, {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "load_before": round(load0, 2),
                 "load_after": round(os.getloadavg()[0], 2)}


def _env():
    import platform

    return {"python": sys.version.split()[0], "machine": platform.machine(), "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _save(name: str, doc: dict) -> None:
    from ncs_kernels.atomic import atomic_write_json

    p = RESULTS / name
    atomic_write_json(p, doc, indent=2)
    print(json.dumps(doc, indent=2))
    print(f"wrote {p}", file=sys.stderr)


def readers(args) -> None:
    import zlib

    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    import ncs.data as D
    from ncs.data.convert import _native, convert

    tmp = Path(tempfile.mkdtemp(prefix="ncs-bench-data-", dir=args.tmp))
    res = {"env": _env(), "native_tfrecord_parser": _native() is not None, "results": []}
    try:
        # TFRecord: the sample repeated into 2 gzip files
        raw = zlib.decompress(SAMPLE.read_bytes(), 31)
        import gzip

        per = args.tf_copies // 2
        for i in range(2):
            with gzip.open(tmp / f"tf{i}.gz", "wb", compresslevel=6) as f:
                for _ in range(per):
                    f.write(raw)
        tf_rows = 4322 * per * 2
        # CSV / Parquet: four fields (two ids, a category, a 3-tag list) + click, conversion
        n = args.rows
        rng = np.random.default_rng(0)
        click = rng.integers(0, 2, n).astype(np.int8)
        tab = pa.table({"uid": rng.integers(0, 200_000, n), "vid": rng.integers(0, 500_000, n),
                        "cat": rng.integers(0, 50, n), "pos": rng.integers(1, 13, n),
                        "click": click, "conv": (click * rng.random(n)).astype(np.float32)})
        pcsv.write_csv(tab, tmp / "t.csv")
        pq.write_table(tab, tmp / "t.parquet", row_group_size=1 << 18)
        schema = {"fields": [{"name": c} for c in ("uid", "vid", "cat", "pos")], "click": "click",
                  "conversion": "conv"}
        # the existing in-memory readers, for comparison
        _, m = _measure(lambda: D.encode_lt4rec(str(SAMPLE)))
        res["results"].append({"reader": "in-memory tfrecord (encode_lt4rec, the sample)", "rows": 4322, **m,
                               "rows_per_s_wall": round(4322 / m["wall_s"])})
        _, m = _measure(lambda: D.encode_table(str(tmp / "t.csv"), schema))
        res["results"].append({"reader": "in-memory csv (encode_table)", "rows": n, **m,
                               "rows_per_s_wall": round(n / m["wall_s"])})
        _, m = _measure(lambda: pa.csv.read_csv(tmp / "t.csv"))
        res["results"].append({"reader": "pyarrow.csv.read_csv alone (floor)", "rows": n, **m,
                               "rows_per_s_wall": round(n / m["wall_s"])})
        for fmt, inputs, rows, workers in (("tfrecord", [str(tmp / "tf*.gz")], tf_rows, (1, 2)),
                                           ("csv", [str(tmp / "t.csv")], n, (1, 2)),
                                           ("parquet", [str(tmp / "t.parquet")], n, (1, 2))):
            for w in workers:
                out = tmp / f"o-{fmt}-{w}"
                s, m = _measure(lambda: convert(inputs, str(out), schema=None if fmt == "tfrecord" else schema,
                                                workers=w))
                res["results"].append({"reader": f"ncs data convert {fmt}", "workers": w, "rows": rows, **m,
                                       "rows_per_s_wall": round(rows / m["wall_s"]),
                                       "rows_per_s_per_cpu_s": round(rows / m["cpu_s"]),
                                       "pass1_wall_s": s["parse_seconds"],  # parse + encode (parallel part)
                                       "encoded_bytes": s["bytes"]})
                shutil.rmtree(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _save("data_readers.json", res)


def _train_cfg(path: str, kind: str, rows: int, steps: int) -> dict:
    data = {"kind": "encoded", "path": path, "stream": {"window_rows": 1 << 18}} if kind == "encoded" \
        else {"kind": "synthetic", "rows": rows}
    return {"seed": 0, "threads": 1, "device": "cpu", "models": ["single"], "data": data,
            "model": {"embed_dim": 4, "hidden": [16, 8]},
            "train": {"batch_size": 8192, "eval_batch_size": 65536, "checkpoint_every": steps},
            "stages": {"warmup": {"epochs": 1}, "joint": {"epochs": 0}}, "baselines": {"epochs": 1}}


_CAPPED = """
import sys, yaml
from ncs.config import resolve_config
from ncs.train.runner import run
from ncs.train.stages import StopTraining
cfg = resolve_config(yaml.safe_load(open(sys.argv[1])))
try:  # as `ncs train` killed right after its first mid-epoch checkpoint (train.checkpoint_every steps)
    run(cfg, sys.argv[2], stop_after_checkpoints=1)
except StopTraining:
    pass
"""


def _ncs_train(cfg: dict, tmp: Path) -> dict:
    import yaml

    cp = tmp / "cfg.yaml"
    cp.write_text(yaml.safe_dump(cfg))
    out = tmp / "run"
    shutil.rmtree(out, ignore_errors=True)
    cmd = ["/usr/bin/time", "-v", sys.executable, "-c", _CAPPED, str(cp), str(out)]
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'python'}:{REPO}", OMP_NUM_THREADS="1")
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-2000:])
    rss = next(int(line.split(":")[1]) for line in p.stderr.splitlines() if "Maximum resident set size" in line)
    doc = json.loads((out / "checkpoints" / "single.json").read_text())
    return {"peak_rss_mb": round(rss / 1024, 1), "wall_s": round(wall, 1), "load_before": round(load0, 2),
            "load_after": round(os.getloadavg()[0], 2), "steps": doc["pos"]["step"]}


def train_rss(args) -> None:
    from ncs.data.convert import synth

    sizes = [int(x) for x in args.sizes.split(",")]
    res = {"env": _env(),
           "what": (f"peak RSS of the trainer (ncs.train.run, as `ncs train`): model single, embed 4, hidden 16-8, "
                    f"batch 8192, split by request, data loaded and split in full, then {args.steps} training steps "
                    f"(stopped at the first mid-epoch checkpoint: a full epoch of 20M rows takes hours of CPU on "
                    f"this shared 2-core machine); streamed = kind encoded, window 262144 rows"),
           "results": []}
    tmp = Path(tempfile.mkdtemp(prefix="ncs-bench-rss-", dir=args.tmp))
    try:
        for n in sizes:
            d = tmp / f"d{n}"
            s, m = _measure(lambda: synth(n, str(d), seed=0, conflict=1.0))
            row = {"rows": n, "synth": {**m, "disk_mb": round(s["bytes"] / 2**20, 1)}}
            row["streamed"] = _ncs_train(_train_cfg(str(d), "encoded", n, args.steps), tmp)
            if n <= args.in_memory_max:
                row["in_memory"] = _ncs_train(_train_cfg("", "synthetic", n, args.steps), tmp)
            res["results"].append(row)
            shutil.rmtree(d)
            print(json.dumps(row), file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _save("data_train_rss.json", res)


def synth_big(args) -> None:
    from ncs.data.convert import synth

    tmp = Path(tempfile.mkdtemp(prefix="ncs-bench-synth-", dir=args.tmp))
    try:
        t0 = time.perf_counter()
        s, m = _measure(lambda: synth(args.rows, str(tmp / "d"), seed=0, conflict=1.0))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        doc = {"env": _env(), "rows": args.rows, **m, "rows_per_s_wall": round(args.rows / (time.perf_counter() - t0)),
               "disk_gb": round(s["bytes"] / 2**30, 2), "bytes_per_row": round(s["bytes"] / max(1, args.rows), 1),
               "peak_rss_mb": round(rss / 1024, 1), "shards": s["shards"]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _save("data_synth.json", doc)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["readers", "train-rss", "synth"])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--tf-copies", type=int, default=48, help="copies of the 4,322-row sample (TFRecord)")
    p.add_argument("--sizes", default="1000000,5000000,20000000")
    p.add_argument("--steps", type=int, default=40, help="train-rss: training steps per run")
    p.add_argument("--in-memory-max", type=int, default=1_000_000, help="also run the in-memory path up to this size")
    p.add_argument("--tmp", default=None, help="folder for the generated inputs (default: the system's)")
    a = p.parse_args()
    {"readers": readers, "train-rss": train_rss, "synth": synth_big}[a.what](a)


if __name__ == "__main__":
    main()
