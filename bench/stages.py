#!/usr/bin/env python3
"""Per-stage training throughput of the NCS trainer (samples/s), ncs backend "auto" vs "torch".

    python bench/stages.py                              # batch 4096, CUDA if present
    python bench/stages.py --device cpu --batch 1024 --steps 5 --json out.json
    python bench/stages.py --tiny                       # seconds: checks the script, not the speed

Data: --data random (default): F=20 single-valued fields (the paper's 20 x 64 -> 1680 cross),
10k-row vocabularies, click rate 0.3, conversion = play rate on clicks; generated in
milliseconds, and throughput does not depend on the values. --data synthetic: ncs's own
generator through the trainer's load_data (16 fields; seconds to calibrate). The connection model
(NCSModel: fused cross layer + masked MLP), and the trainer's own training loop
(ModelTrainer.train_epoch: batch gather, forward, loss, backward, MaskedAdam + SparseAdam):
  warmup   mixed batches, Eq. 2 loss, every weight (task=None)
  masks    per task, its own rows, its mask at density ~0.5 (one prune_round of q=0.5 from the
           dense mask; the prune itself is timed apart as prune_s), strict masked optimizer
  joint    alternating task batches, each under its task's mask
  evaluate ModelTrainer.evaluate on the rows used (forward only, plus metrics)
Each stage runs --warmup-steps untimed steps, then --steps timed ones (train_epoch ends with a
.item(), so the timing includes the device work). A stage's samples/s is the rows it trained on
divided by its wall time. Batch lists cycle over epochs when the data has fewer rows than needed.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _common as C  # noqa: E402

import torch  # noqa: E402

SCHEMA = "ncs-bench-stages/1"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--backends", default="auto,torch", help="comma list of ncs backends for the model and optimizer")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 4096; --tiny: 64)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per stage (default 20 CUDA, 5 CPU)")
    p.add_argument("--warmup-steps", type=int, default=None, help="untimed steps per stage first (default 3)")
    p.add_argument("--rows", type=int, default=None, help="synthetic rows (default 8 batches' worth)")
    p.add_argument("--data", choices=("random", "synthetic"), default="random")
    p.add_argument("--fields", type=int, default=20, help="--data random: number of fields F")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--tiny", action="store_true", help="tiny model and batches")
    p.add_argument("--embedding-step", default="sparse_adam",
                   help="comma list of optim.embedding_step values to compare (sparse_adam, fused)")
    p.add_argument("--repeats", type=int, default=1, help="measure every (backend, embedding step) this many times, "
                   "interleaved; the table shows the median")
    p.add_argument("--json", default=None, help="write results here; 'auto' = bench/results/<date>_<hardware>_stages.json")
    args = p.parse_args(argv)
    for name in ("batch", "steps", "rows"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name}: expected a positive integer, got {v}")
    if args.warmup_steps is not None and args.warmup_steps < 0:
        p.error(f"--warmup-steps: expected a non-negative integer, got {args.warmup_steps}")
    return args


def _config(args, device: str, backend: str) -> dict:
    from ncs.config import resolve_config

    given = {
        "device": device, "backend": backend, "models": ["connection"],
        "data": {"kind": "synthetic", "rows": args.rows, "seed": 0},
        "train": {"batch_size": args.batch, "log_every": 10 ** 6},
    }
    if args.tiny:
        given["model"] = {"embed_dim": 8, "hidden": [16, 8]}
    step = getattr(args, "embedding_step_one", None) or args.embedding_step.split(",")[0]
    if step != "sparse_adam":
        given["optim"] = {"embedding_step": step}
    return resolve_config(given)


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def dense_mlp_bound(args, dev: torch.device, cfg: dict, reps: int = None) -> Dict[str, float]:
    """The bound: a bare nn.Linear MLP of the model's shapes (cross width F*F + F*d -> hidden ->
    one logit per task), forward + backward of a batch of the same size, no embeddings, no cross,
    no masks, no optimizer. samples/s of the median of `reps` timed steps (after 2 untimed)."""
    F_ = 4 if args.tiny else args.fields
    d = cfg["model"]["embed_dim"]
    widths = [F_ * F_ + F_ * d] + list(cfg["model"]["hidden"])
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    layers.append(torch.nn.Linear(widths[-1], len(cfg["tasks"])))
    mlp = torch.nn.Sequential(*layers).to(dev)
    x = torch.randn(args.batch, widths[0], device=dev)
    y = torch.rand(args.batch, len(cfg["tasks"]), device=dev)
    reps = reps or max(3, args.steps)
    times = []
    for i in range(2 + reps):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        mlp.zero_grad(set_to_none=True)
        torch.nn.functional.binary_cross_entropy_with_logits(mlp(x), y).backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    return {"widths": widths, "seconds_per_step": med, "samples_per_s": args.batch / med}


def random_data(rows: int, num_fields: int, vocab: int = 10_000, seed: int = 0):
    """EncodedData of uniform ids and Bernoulli clicks: the shapes of the paper, none of its signal."""
    from ncs.data.types import EncodedData, FieldSpec

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, num_fields, 1), generator=g, dtype=torch.int64)
    click = (torch.rand(rows, generator=g) < 0.3).to(torch.float32)
    conversion = torch.rand(rows, generator=g) * click
    fields = [FieldSpec(f"f{i}", vocab, 1) for i in range(num_fields)]
    groups = {"request": torch.arange(rows, dtype=torch.int64), "user": torch.arange(rows, dtype=torch.int64)}
    return EncodedData(fields, ids, {"click": click, "conversion": conversion}, groups)


def _cycled(make, need: int) -> List:
    """Batches from make(epoch) for epochs 0, 1, ... until `need` are collected."""
    out: List = []
    epoch = 0
    while len(out) < need:
        got = make(epoch)
        if not got:
            raise RuntimeError("a stage has no batches: its task space is empty in the synthetic data")
        out.extend(got)
        epoch += 1
    return out[:need]


def _rows(batches) -> int:
    return int(sum(int(idx.numel()) for _, idx in batches))


def _timed_epochs(trainer, batches, weighted: bool, warm: int, desc: str) -> Dict[str, float]:
    if warm:
        trainer.train_epoch(batches[:warm], weighted, desc + " warm-up")
    timed = batches[warm:]
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    trainer.train_epoch(timed, weighted, desc)  # ends with .item(): device work included
    dt = time.perf_counter() - t0
    n = _rows(timed)
    return {"steps": len(timed), "samples": n, "seconds": dt, "samples_per_s": n / dt if dt > 0 else None}


def run_backend(backend: str, args, device: str, data, out: Dict, save=lambda: None) -> Dict:
    """Fill `out` stage by stage (save() after each, so a killed run keeps what it measured)."""
    import ncs_kernels as nk
    from ncs.train import batches as B
    from ncs.train.pruning import prune_round
    from ncs.train.stages import ModelTrainer

    cfg = _config(args, device, backend)
    dev = torch.device(device)
    tasks = cfg["tasks"]
    split = B.prepare_split(data, tasks, cfg["data"]["click_label"], dev)
    names = [t["name"] for t in tasks]
    bs, seed, warm, steps = args.batch, cfg["seed"], args.warmup_steps, args.steps
    need = warm + steps
    with tempfile.TemporaryDirectory() as ckpt:
        trainer = ModelTrainer("connection", cfg, data.fields, split, split, dev, ckpt)
        some_weight = next(iter(trainer.layers.values())).weight
        out["resolved_backend"] = nk._backends.resolve(backend, some_weight)
        out["layers"] = {n: [m.out_features, m.in_features] for n, m in trainer.layers.items()}
        out["parameters"] = int(sum(p.numel() for p in trainer.model.parameters()))

        batches = _cycled(lambda e: B.mixed_batches(split, bs, seed, "mixed", e), need)
        out["warmup"] = _timed_epochs(trainer, batches, True, warm, "warmup")
        save()

        ones = {n: nk.ones_mask(m.out_features, m.in_features, device=dev) for n, m in trainer.layers.items()}
        per_task = {}
        selected = {}
        for task in names:
            weights = {n: m.weight for n, m in trainer.layers.items()}
            t0 = time.perf_counter()
            masks, _ = prune_round(weights, ones, 0.5, "global", "round")
            if dev.type == "cuda":
                torch.cuda.synchronize()
            prune_s = time.perf_counter() - t0
            selected[task] = masks
            trainer.model.set_task_masks(task, masks)
            tb = _cycled(lambda e, t=task: B.task_batches(split, t, bs, seed, "masks/0", e), need)
            per_task[task] = {**_timed_epochs(trainer, tb, False, warm, f"masks {task}"), "prune_s": prune_s}
        n = sum(v["samples"] for v in per_task.values())
        s = sum(v["seconds"] for v in per_task.values())
        out["masks"] = {"samples": n, "seconds": s, "samples_per_s": n / s if s > 0 else None,
                        "steps": sum(v["steps"] for v in per_task.values()), "per_task": per_task}
        save()

        for task in names:
            trainer.model.set_task_masks(task, selected[task])
        jb = _cycled(lambda e: B.alternating_batches(split, names, bs, seed, "joint", e), need)
        out["joint"] = _timed_epochs(trainer, jb, True, warm, "joint")
        save()

        trainer.evaluate(split)  # warm
        t0 = time.perf_counter()
        trainer.evaluate(split)
        dt = time.perf_counter() - t0
        out["evaluate"] = {"samples": len(split), "seconds": dt, "samples_per_s": len(split) / dt if dt > 0 else None}
    return out


STAGES = ("warmup", "masks", "joint", "evaluate")


def format_table(results: List[Dict]) -> str:
    """samples/s per stage; in brackets the ratio to the torch backend's row (> 1 = faster)."""
    def rate(r, s):
        return (r.get(s) or {}).get("samples_per_s")

    lines = [f"{'backend':<16}" + "".join(f"{s + ' samples/s':>22}" for s in STAGES)]
    base = next((r for r in results if r["backend"] == "torch" and "error" not in r), None)
    for r in results:
        name = r["backend"] + ("->" + r["resolved_backend"] if "resolved_backend" in r else "")
        cells = []
        for s in STAGES:
            v = rate(r, s)
            if v is None:
                cells.append("-".rjust(22))
                continue
            b = rate(base, s) if base is not None and base is not r else None
            cells.append((f"{v:,.0f}" + (f" ({v / b:.2f}x)" if b else "")).rjust(22))
        lines.append(f"{name:<16}" + "".join(cells))
        if "error" in r:
            lines.append(f"  ERROR {r['error'][:150]}")
    return "\n".join(lines)


class _Stopped(Exception):
    pass


def _on_sigterm(signum, frame):
    raise _Stopped(f"signal {signum}")


def _write(path: Path, doc: Dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.tiny:
        os.environ["NCS_BENCH_TINY"] = "1"
    device = C.bench_device() if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("stages: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    cuda = device == "cuda"
    args.batch = args.batch or (64 if args.tiny else 4096)
    args.steps = args.steps or (2 if args.tiny else (20 if cuda else 5))
    args.warmup_steps = (1 if args.tiny else 3) if args.warmup_steps is None else args.warmup_steps
    args.rows = args.rows or args.batch * 8
    path = None
    if args.json:
        path = C.default_result_path(device, "stages") if args.json == "auto" else Path(args.json)
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    prev = signal.signal(signal.SIGTERM, _on_sigterm)
    doc: Dict = {"schema": SCHEMA, "env": C.environment(device), "complete": False, "results": []}
    status = 0
    try:
        from ncs.train import runner

        t0 = time.perf_counter()
        if args.data == "random":
            data = random_data(args.rows, 4 if args.tiny else args.fields)
        else:
            data = runner.load_data(_config(args, device, "torch"))
        doc["config"] = {"batch": args.batch, "steps": args.steps, "warmup_steps": args.warmup_steps,
                         "rows": args.rows, "tiny": args.tiny, "data": args.data, "fields": len(data.fields),
                         "data_seconds": time.perf_counter() - t0, "device": device}
        print(f"# {doc['env']['device_name']} | batch {args.batch} | {args.steps} timed steps per stage "
              f"(+{args.warmup_steps} warm-up) | {len(data.fields)} fields, {args.rows} {args.data} rows", flush=True)
        save = (lambda: _write(path, doc)) if path else (lambda: None)
        for be in [b.strip() for b in args.backends.split(",") if b.strip()]:
            out: Dict = {"backend": be}
            doc["results"].append(out)
            try:
                run_backend(be, args, device, data, out, save)
            except _Stopped:
                raise
            except Exception as e:  # one backend failing must not hide the other's numbers
                out["error"] = f"{type(e).__name__}: {e}"[:500]
            save()
        doc["complete"] = True
    except (_Stopped, KeyboardInterrupt) as e:
        doc["stopped"] = f"interrupted ({e or 'KeyboardInterrupt'})"
        status = 124
    finally:
        signal.signal(signal.SIGTERM, prev)
        torch.set_num_threads(threads_before)
        if path:
            _write(path, doc)
            print(f"# wrote {path}", file=sys.stderr)
    print(format_table(doc["results"]))
    if any("error" in r for r in doc["results"]):
        status = status or 1
    return status


if __name__ == "__main__":
    sys.exit(main())
