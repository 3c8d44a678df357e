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
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _cli, _env  # noqa: E402
from bench._cli import Stopped  # noqa: E402

import torch  # noqa: E402

SCHEMA = "ncs-bench-stages/1"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--backends", default="auto,torch", help="comma list of ncs backends for the model and optimizer")
    p.add_argument("--batch", type=_cli.positive_int, default=None, help="batch size (default 4096; --tiny: 64)")
    p.add_argument("--steps", type=_cli.positive_int, default=None, help="timed steps per stage (default 20 CUDA, 5 CPU)")
    p.add_argument("--warmup-steps", type=_cli.non_negative_int, default=None, help="untimed steps per stage first (default 3)")
    p.add_argument("--rows", type=_cli.positive_int, default=None, help="synthetic rows (default 8 batches' worth)")
    p.add_argument("--data", choices=("random", "synthetic"), default="random")
    p.add_argument("--fields", type=int, default=20, help="--data random: number of fields F")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--tiny", action="store_true", help="tiny model and batches")
    p.add_argument("--balance", choices=("fixed", "pcgrad", "uncertainty"), default="fixed",
                   help="loss.balance of the timed steps (default fixed, the trainer's default too: Eq. 2, "
                        "one backward per mixed batch; pcgrad takes one backward per task there)")
    p.add_argument("--embedding-step", default="fused",
                   help="comma list of optim.embedding_step values to compare (sparse_adam, fused)")
    p.add_argument("--compile", choices=("none", "default", "reduce-overhead", "max-autotune"), default="none",
                   help="torch.compile the model's forward (reduce-overhead = CUDA graphs on a GPU); "
                        "the optimizers and the fused embedding step stay eager")
    p.add_argument("--repeats", type=int, default=1, help="measure every (backend, embedding step) this many times, "
                   "interleaved; the table shows the median")
    p.add_argument("--json", default=None, help="write results here; 'auto' = bench/results/<date>_<hardware>_stages.json")
    return p.parse_args(argv)


def _config(args, device: str, backend: str) -> dict:
    from ncs.config import resolve_config

    given = {
        "device": device, "backend": backend, "models": ["connection"],
        "data": {"kind": "synthetic", "rows": args.rows, "seed": 0},
        "train": {"batch_size": args.batch, "log_every": 10 ** 6},
        # default: the Eq. 2 step with fixed weights (--balance)
        "loss": {"balance": getattr(args, "balance", "fixed")},
    }
    if args.tiny:
        given["model"] = {"embed_dim": 8, "hidden": [16, 8]}
    step = getattr(args, "embedding_step_one", None) or args.embedding_step.split(",")[0]
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
    d = cfg.model.embed_dim
    widths = [F_ * F_ + F_ * d] + list(cfg.model.hidden)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    layers.append(torch.nn.Linear(widths[-1], len(cfg.tasks)))
    mlp = torch.nn.Sequential(*layers).to(dev)
    y = torch.rand(args.batch, len(cfg.tasks), device=dev)
    reps = reps or max(3, args.steps)
    out = {"widths": widths}
    # input_grad: also dL/dx of the first layer, which the real step needs for the embeddings
    # (one more GEMM of the widest layer); the bound of the ratio is the plain fwd+bwd. The two
    # alternate step by step, so that a change of the machine's load hits both alike.
    xs = {"": torch.randn(args.batch, widths[0], device=dev),
          "input_grad_": torch.randn(args.batch, widths[0], device=dev, requires_grad=True)}
    times: Dict[str, List[float]] = {k: [] for k in xs}
    for i in range(2 + reps):
        for key, x in xs.items():
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            mlp.zero_grad(set_to_none=True)
            x.grad = None
            torch.nn.functional.binary_cross_entropy_with_logits(mlp(x), y).backward()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                times[key].append(time.perf_counter() - t0)
    for key, ts in times.items():
        med = sorted(ts)[len(ts) // 2]
        out[key + "seconds_per_step"] = med
        out[key + "samples_per_s"] = args.batch / med
    return out


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
    """Fill `out` stage by stage (save() after each, so a killed run keeps what it measured).
    Right before each training stage the bound is measured again (out["dense_mlp_by_stage"]),
    so that each stage's ratio compares two figures taken under the same load."""
    import ncs_kernels as nk
    from ncs.train import batches as B
    from ncs.train.pruning import prune_round
    from ncs.train.stages import ModelTrainer

    cfg = _config(args, device, backend)
    dev = torch.device(device)
    tasks = cfg.tasks
    split = B.prepare_split(data, tasks, cfg.data.click_label, dev)
    names = [t["name"] for t in tasks]
    bs, seed, warm, steps = args.batch, cfg.seed, args.warmup_steps, args.steps
    need = warm + steps
    with tempfile.TemporaryDirectory() as ckpt:
        trainer = ModelTrainer("connection", cfg, data.fields, split, split, dev, ckpt)
        if getattr(args, "compile", "none") != "none":
            t0 = time.perf_counter()
            trainer.model.forward = torch.compile(trainer.model.forward, mode=args.compile, dynamic=False)
            out["compile"] = {"mode": args.compile, "wrapped_s": time.perf_counter() - t0}
        some_weight = next(iter(trainer.layers.values())).weight
        out["resolved_backend"] = _env.resolve_backend(backend, some_weight)
        out["layers"] = {n: [m.out_features, m.in_features] for n, m in trainer.layers.items()}
        out["parameters"] = int(sum(p.numel() for p in trainer.model.parameters()))

        by_stage = out.setdefault("dense_mlp_by_stage", {})

        def bound_now(stage: str) -> None:
            by_stage[stage] = dense_mlp_bound(args, dev, cfg)

        batches = _cycled(lambda e: B.mixed_batches(split, bs, seed, "mixed", e), need)
        bound_now("warmup")
        out["warmup"] = _timed_epochs(trainer, batches, True, warm, "warmup")
        save()

        ones = {n: nk.ones_mask(m.out_features, m.in_features, device=dev) for n, m in trainer.layers.items()}
        per_task = {}
        bound_now("masks")
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
        bound_now("joint")
        out["joint"] = _timed_epochs(trainer, jb, True, warm, "joint")
        save()

        trainer.evaluate(split)  # warm
        t0 = time.perf_counter()
        trainer.evaluate(split)
        dt = time.perf_counter() - t0
        out["evaluate"] = {"samples": len(split), "seconds": dt, "samples_per_s": len(split) / dt if dt > 0 else None}
    return out


STAGES = ("warmup", "masks", "joint", "evaluate")


TRAIN_STAGES = ("warmup", "masks", "joint")


def _median(xs):
    xs = sorted(x for x in xs if x is not None)
    return xs[len(xs) // 2] if xs else None


def _bound(r: Dict, stage: str) -> Dict:
    """The bound measured right before `stage` (else the one before the configuration)."""
    return (r.get("dense_mlp_by_stage") or {}).get(stage) or r.get("dense_mlp") or {}


def summarize(results: List[Dict]) -> List[Dict]:
    """Median over repeats per (backend, embedding step): samples/s per stage, the bare dense
    MLP bound measured next to it, and each training stage's ratio to that bound."""
    groups: Dict = {}
    for r in results:
        groups.setdefault((r["backend"], r.get("embedding_step", "sparse_adam")), []).append(r)
    out = []
    for (be, step), rs in groups.items():
        ok = [r for r in rs if "error" not in r]
        row = {"backend": be, "embedding_step": step, "repeats": len(ok),
               "resolved_backend": next((r["resolved_backend"] for r in ok if "resolved_backend" in r), None)}
        for s in STAGES:
            row[s] = _median([(r.get(s) or {}).get("samples_per_s") for r in ok])
        row["dense_mlp"] = _median([(r.get("dense_mlp") or {}).get("samples_per_s") for r in ok])
        row["dense_mlp_input_grad"] = _median([(r.get("dense_mlp") or {}).get("input_grad_samples_per_s") for r in ok])
        for s in TRAIN_STAGES:
            # per repeat: stage rate / the bound measured right before it; then the median.
            # _ratio: the bound (bare fwd+bwd); _ceiling_ratio: the bound that also
            # computes dL/dx of the first layer, as every real step must (the fp32 ceiling)
            for suffix, key in (("ratio", "samples_per_s"), ("ceiling_ratio", "input_grad_samples_per_s")):
                row[f"{s}_{suffix}"] = _median([
                    (r.get(s) or {}).get("samples_per_s") / _bound(r, s)[key]
                    for r in ok if (r.get(s) or {}).get("samples_per_s") and _bound(r, s).get(key)])
        # the ceiling itself as a fraction of the bound: what any implementation doing the same
        # GEMMs in fp32 can reach at most against the definition
        row["ceiling_of_bound"] = _median([
            r["dense_mlp"]["input_grad_samples_per_s"] / r["dense_mlp"]["samples_per_s"]
            for r in ok if (r.get("dense_mlp") or {}).get("input_grad_samples_per_s")])
        row["errors"] = [r["error"] for r in rs if "error" in r]
        out.append(row)
    return out


def format_table(results: List[Dict]) -> str:
    """samples/s per stage (median over repeats); in brackets the ratio to the bare dense MLP
    bound (fwd+bwd of nn.Linear layers of the same shapes: the issue's definition) and to the
    same bound with the first layer's input gradient (the fp32 ceiling), both measured in the
    same run just before the stage."""
    lines = [f"{'backend / embedding step':<28}" + "".join(f"{s + ' samples/s':>30}" for s in STAGES)
             + f"{'dense MLP bound':>18}{'(+ input grad)':>22}"]
    for r in summarize(results):
        name = r["backend"] + ("->" + r["resolved_backend"] if r.get("resolved_backend") else "") \
            + " / " + r["embedding_step"]
        cells = []
        for s in STAGES:
            v = r.get(s)
            ratio, ceil = r.get(f"{s}_ratio"), r.get(f"{s}_ceiling_ratio")
            tag = f" ({ratio:.2f}x | {ceil:.2f}x)" if ratio and ceil else (f" ({ratio:.2f}x)" if ratio else "")
            cells.append(("-" if v is None else f"{v:,.0f}" + tag).rjust(30))
        bound = r.get("dense_mlp")
        b2 = r.get("dense_mlp_input_grad")
        cb = r.get("ceiling_of_bound")
        lines.append(f"{name:<28}" + "".join(cells) + ("-" if bound is None else f"{bound:,.0f}").rjust(18)
                     + ("-" if b2 is None else f"{b2:,.0f}" + (f" ({cb:.2f}x)" if cb else "")).rjust(22))
        for e in r["errors"]:
            lines.append(f"  ERROR {e[:150]}")
    lines.append("(a | b) = stage samples/s / the bare dense MLP bound (a: the issue's definition, target >= 0.85x) "
                 "and / the bound with the first layer's input gradient (b: the fp32 ceiling of a step that "
                 "must reach the embeddings), each measured just before the stage; median over repeats. "
                 "(+ input grad) (c) = that ceiling / the bare bound.")
    return "\n".join(lines)


def main(argv=None) -> int:
    return _cli.run_main(argv, parse_args, _run, "stages")


def _run(args, device: str) -> int:
    cuda = device == "cuda"
    args.batch = args.batch or (64 if args.tiny else 4096)
    args.steps = args.steps or (2 if args.tiny else (20 if cuda else 5))
    args.warmup_steps = (1 if args.tiny else 3) if args.warmup_steps is None else args.warmup_steps
    args.rows = args.rows or args.batch * 8
    path = None
    if args.json:
        path = _env.default_result_path(device, "stages") if args.json == "auto" else Path(args.json)
    doc: Dict = {"schema": SCHEMA, "env": _env.environment(device), "complete": False, "results": []}
    try:
        with _cli.Interruptible(doc) as interrupted:
            from ncs.train import runner

            t0 = time.perf_counter()
            if args.data == "random":
                data = random_data(args.rows, 4 if args.tiny else args.fields)
            else:
                data = runner.load_data(_config(args, device, "torch"))
            doc["config"] = {"batch": args.batch, "steps": args.steps, "warmup_steps": args.warmup_steps,
                             "rows": args.rows, "tiny": args.tiny, "data": args.data, "fields": len(data.fields),
                             "data_seconds": time.perf_counter() - t0, "device": device, "balance": args.balance}
            print(f"# {doc['env']['device_name']} | batch {args.batch} | {args.steps} timed steps per stage "
                  f"(+{args.warmup_steps} warm-up) | {len(data.fields)} fields, {args.rows} {args.data} rows | loss.balance {args.balance}", flush=True)
            save = (lambda: _env.write_json(path, doc)) if path else (lambda: None)
            doc["load_average_start"] = load_average()
            steps = [s.strip() for s in args.embedding_step.split(",") if s.strip()]
            for rep in range(args.repeats):
                for be in [b.strip() for b in args.backends.split(",") if b.strip()]:
                    for step in steps:
                        out: Dict = {"backend": be, "embedding_step": step, "repeat": rep}
                        doc["results"].append(out)
                        try:
                            args.embedding_step_one = step
                            cfg = _config(args, device, be)
                            out["dense_mlp"] = dense_mlp_bound(args, torch.device(device), cfg)
                            run_backend(be, args, device, data, out, save)
                        except Stopped:
                            raise
                        except Exception as e:  # one backend failing must not hide the other's numbers
                            out["error"] = f"{type(e).__name__}: {e}"[:500]
                        out["load_average"] = load_average()
                        save()
            doc["summary"] = summarize(doc["results"])
            doc["load_average_end"] = load_average()
            doc["complete"] = True
    finally:
        if path:
            _env.write_json(path, doc)
            print(f"# wrote {path}", file=sys.stderr)
    status = interrupted.status
    print(format_table(doc["results"]))
    print(f"# load average (1, 5, 15 min) at the start {doc.get('load_average_start')}, "
          f"at the end {doc.get('load_average_end')}")
    if any("error" in r for r in doc["results"]):
        status = status or 1
    return status


if __name__ == "__main__":
    sys.exit(main())
