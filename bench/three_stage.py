"""A three-stage run at scale on the streamed path (issue 11): wall time per stage and peak RSS.

    python bench/three_stage.py --data DIR --out RUN [--resume]   -> bench/results/data_three_stage.json
    python bench/three_stage.py --synth-rows 100000000 --data DIR --out RUN   (writes DIR first)

The run is `ncs train` on `data: {kind: encoded, path: DIR}` (memory-mapped shards, streamed
batches) with the demo model (embed 8, hidden 256-128-64, the connection model: warmup, mask
generation, joint training) at the paper's batch 4096, in the one-epoch regime of issue 10:
warmup on 2 % and each mask round on 1 % of the training rows, then one joint pass over all of
them, with a checkpoint every 2,000 steps. It is a benchmark, not a test: at 100M rows the joint
pass alone is ~200M task-batch rows, hours of CPU on a 2-core machine.

A killed benchmark resumes (`--resume`: `ncs train --resume` continues at the exact batch).
Every line the trainer prints is kept with its wall-clock offset in RUN/bench.log, so the stage
boundaries of a run that has not finished are known too; the JSON records, per attempt, its
wall and CPU seconds, the load average and the child's peak RSS (ru_maxrss), and once the run
has finished, metrics.json's per-stage seconds (summed over attempts by the trainer).
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

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(os.environ.get("NCS_BENCH_RESULTS", REPO / "bench" / "results"))


def config_text(data: str, checkpoint_every: int = 2000) -> str:
    return (
        "# bench/three_stage.py: the demo model, the connection model's three stages, one-epoch regime\n"
        "seed: 0\nthreads: 1\n"
        f"data: {{kind: encoded, path: {json.dumps(os.path.abspath(data))}, "
        "split: {by: request, fractions: [0.98, 0.01, 0.01], seed: 0}}\n"
        "model: {embed_dim: 8, hidden: [256, 128, 64]}\n"
        "models: [connection]\n"
        f"train: {{batch_size: 4096, eval_batch_size: 65536, log_every: 200, checkpoint_every: {checkpoint_every}}}\n"
        "stages:\n"
        "  warmup: {epochs: 1, data_fraction: 0.02}\n"
        "  masks: {rounds: 4, final_density: 0.2, data_fraction: 0.01}\n"
        "  joint: {epochs: 1}\n")


def _run(cmd, log: Path) -> dict:
    load0 = os.getloadavg()[0]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {' '.join(cmd)}\n")
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=dict(os.environ, OMP_NUM_THREADS="1"))
        for line in p.stdout:
            f.write(f"{time.perf_counter() - t0:10.1f}s {line}")
            f.flush()
        rc = p.wait()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"cmd": cmd, "rc": rc, "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, 1),
            "peak_rss_mb": round(r1.ru_maxrss / 1024, 1), "load_before": round(load0, 2),
            "load_after": round(os.getloadavg()[0], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="encoded directory (written first with --synth-rows)")
    ap.add_argument("--out", required=True, help="run directory")
    ap.add_argument("--synth-rows", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--json", default=str(RESULTS / "data_three_stage.json"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "bench.log"
    doc = json.loads(Path(args.json).read_text()) if args.resume and Path(args.json).exists() else {}
    doc.setdefault("what", "bench/three_stage.py: " + __doc__.strip().splitlines()[0])
    doc.setdefault("attempts", [])
    py = sys.executable
    if args.synth_rows and not args.resume:
        doc["synth"] = _run([py, "-m", "ncs", "data", "synth", "--rows", str(args.synth_rows), "--seed", "0",
                             "--out", args.data, "--overwrite"], log)
    cfg = out.parent / (out.name + ".yaml")
    cfg.write_text(config_text(args.data))
    doc["config"] = cfg.read_text()
    cmd = [py, "-m", "ncs", "train", "--config", str(cfg), "--out", str(out), "--device", "cpu"]
    doc["attempts"].append(_run(cmd + (["--resume"] if args.resume else []), log))
    metrics = out / "metrics.json"
    if metrics.exists() and doc["attempts"][-1]["rc"] == 0:
        m = json.loads(metrics.read_text())
        doc["stages_s"] = m["stages"]["connection"]["seconds"]
        doc["steps"] = m["stages"]["connection"]["steps"]
        doc["test"] = m["models"]["connection"]
        doc["rows"] = m.get("data", {})
    doc["complete"] = "stages_s" in doc
    from ncs_kernels.atomic import atomic_write_json  # noqa: E402

    atomic_write_json(args.json, doc)
    print(json.dumps({k: doc[k] for k in ("attempts", "complete")}, indent=1))


if __name__ == "__main__":
    sys.path[:0] = [str(REPO / "python"), str(REPO)]
    main()
