#!/usr/bin/env python3
"""torch.profiler table of the trainer's step (ModelTrainer.train_epoch) at the paper's shapes.

    python bench/profile_step.py --threads 2 --out docs/results/profile_step_cpu.txt
    python bench/profile_step.py --stage masks --embedding-step fused
    python bench/profile_step.py --tiny                    # seconds: checks the script

The connection model (F=20 fields x d=64 -> the 1680-wide cross, 512-256-128), batch 4096,
--data random as in bench/stages.py. --stage warmup (mixed batches, every weight) or masks
(the cvr task's rows under a density-0.5 mask, strict MaskedAdam). The table is the
profiler's key_averages sorted by self CPU time, plus the bare dense MLP's fwd+bwd of the same
shapes measured in the same run (the bound of bench/stages.py).

--parts: no profiler; instead each part of a warmup step timed on its own, interleaved round
by round (--rounds), min and median of wall and process CPU time: the bare bound, the bound
with dL/dx, the model's forward, its forward+backward, + MaskedAdam, + the embedding step (the
whole step), and the cross layer's fwd+bwd with the forward's Gu/Wf kept (the eager cpu path)
against rebuilding them (the custom op's backward). On a shared machine the CPU-time minimum is
the least disturbed figure: it counts the work, not the waits.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import stages as S  # noqa: E402

import torch  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--stage", choices=("warmup", "masks"), default="warmup")
    p.add_argument("--embedding-step", choices=("sparse_adam", "fused"), default="sparse_adam")
    p.add_argument("--rows", type=int, default=None)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--limit", type=int, default=30, help="table rows")
    p.add_argument("--out", default=None, help="also write the table here")
    p.add_argument("--parts", action="store_true", help="time the parts of a step (no profiler)")
    p.add_argument("--rounds", type=int, default=10, help="--parts: interleaved rounds")
    p.add_argument("--bf16", action="store_true",
                   help="--parts: also the bound and a plain-torch model of the same shapes (feature_cross + "
                        "nn.Linear layers, dL/d emb) in fp32 and under torch.autocast('cpu', bfloat16)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    a.batch = a.batch or (64 if a.tiny else 4096)
    a.rows = a.rows or a.batch * 4
    args = S.parse_args(["--device", "cpu", "--batch", str(a.batch), "--rows", str(a.rows)]
                        + (["--tiny"] if a.tiny else []) + ["--embedding-step", a.embedding_step])
    args.steps, args.warmup_steps = a.steps, 1
    import ncs_kernels as nk
    from ncs.train import batches as B
    from ncs.train.pruning import prune_round
    from ncs.train.stages import ModelTrainer

    cfg = S._config(args, "cpu", "auto")
    data = S.random_data(a.rows, 4 if a.tiny else 20)
    dev = torch.device("cpu")
    split = B.prepare_split(data, cfg.tasks, cfg.data.click_label, dev)
    lines = []
    with tempfile.TemporaryDirectory() as ckpt:
        tr = ModelTrainer("connection", cfg, data.fields, split, split, dev, ckpt)
        if a.stage == "warmup":
            batches = S._cycled(lambda e: B.mixed_batches(split, a.batch, 0, "mixed", e), a.steps + 1)
            weighted = True
        else:
            ones = {n: nk.ones_mask(m.out_features, m.in_features) for n, m in tr.layers.items()}
            masks, _ = prune_round({n: m.weight for n, m in tr.layers.items()}, ones, 0.5, "global", "round")
            tr.model.set_task_masks("cvr", masks)
            batches = S._cycled(lambda e: B.task_batches(split, "cvr", a.batch, 0, "masks/0", e), a.steps + 1)
            weighted = False
        tr.train_epoch(batches[:1], weighted, "warm")
        if a.parts:
            return _parts(a, args, tr, batches, cfg)
        from torch.profiler import ProfilerActivity, profile
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
            tr.train_epoch(batches[1:], weighted, "profiled")
        dt = time.perf_counter() - t0
        rows = S._rows(batches[1:])
    mlp = S.dense_mlp_bound(args, dev, cfg)
    lines.append(f"# connection model, stage {a.stage}, embedding_step {a.embedding_step}, batch {a.batch}, "
                 f"{a.steps} steps, {a.threads} threads, load {S.load_average()}")
    lines.append(f"# step: {rows / dt:,.0f} samples/s under the profiler; bare dense MLP fwd+bwd "
                 f"{mlp['samples_per_s']:,.0f} samples/s (same run)")
    ka = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ka)
    by = {e.key: e for e in ka}

    def tot(*keys, self_time=False):
        return sum((by[k].self_cpu_time_total if self_time else by[k].cpu_time_total) for k in keys if k in by)

    groups = [
        ("GEMMs (mm, addmm, addmm_, bmm, baddbmm_; self)",
         tot("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm_", self_time=True)),
        ("embedding step (SparseAdam or RowwiseSparseAdam .step; total)",
         tot("Optimizer.step#SparseAdam.step", "Optimizer.step#RowwiseSparseAdam.step")),
        ("MaskedAdam .step (total)", tot("Optimizer.step#MaskedAdam.step")),
        ("embedding lookup forward (aten::embedding_bag or the fused index_select path; total)",
         tot("aten::embedding_bag", "_EmbeddingBagSink")),
        ("ReLU fwd/bwd (clamp_min, threshold_backward; self)", tot("aten::clamp_min", "aten::threshold_backward",
                                                                   self_time=True)),
        ("the cross op's own loops (fold W*M, Gram triangle, scatter, unfold; self of its fwd/bwd)",
         tot("_CrossSavedCPU", "_CrossSavedCPUBackward", "cross_masked_linear_eager", self_time=True)),
        ("sums (bias gradients, the loss, the non-finite guard; aten::sum self)", tot("aten::sum", self_time=True)),
    ]
    lines.append("# summary (ms over the profiled steps; total self CPU %.0f ms):" % (total / 1e3))
    for name, us in groups:
        lines.append(f"#   {name}: {us / 1e3:.0f} ms ({100 * us / total:.1f} %)")
    lines.append(ka.table(sort_by="self_cpu_time_total", row_limit=a.limit))
    return _emit(lines, a.out)


def _emit(lines, out) -> int:
    """Print the lines, and write them to `out` too when given."""
    text = "\n".join(lines)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    return 0


def _parts(a, args, tr, batches, cfg) -> int:
    """--parts: every part of one warmup step timed alone, interleaved (see the module doc)."""
    from ncs.losses import mixed_loss
    import importlib

    cml = importlib.import_module("ncs_kernels.ops.cross_masked_linear")  # the module (the package exports the function)

    ids, tg, sp = tr.train.batch(batches[0][1])
    F_, d = (4 if a.tiny else 20), cfg.model.embed_dim
    widths = [F_ * F_ + F_ * d] + list(cfg.model.hidden)
    layers = []
    for i, o in zip(widths[:-1], widths[1:]):
        layers += [torch.nn.Linear(i, o), torch.nn.ReLU()]
    mlp = torch.nn.Sequential(*layers, torch.nn.Linear(widths[-1], len(cfg.tasks)))
    y = torch.rand(a.batch, len(cfg.tasks))
    x0 = torch.randn(a.batch, widths[0])
    x1 = x0.clone().requires_grad_(True)
    cross = next(iter(tr.layers.values()))
    emb = torch.randn(a.batch, F_, d, requires_grad=True)
    ones = cross._all_ones

    def bound(x):
        mlp.zero_grad(set_to_none=True)
        x.grad = None
        torch.nn.functional.binary_cross_entropy_with_logits(mlp(x), y).backward()

    def fwdbwd():
        tr.opt.zero_grad()
        mixed_loss(tr.kind, tr.model(ids), tg, sp, tr.tasks, tr.gamma, tr.alpha)[0].backward()

    def fwd():
        with torch.no_grad():
            tr.model(ids)

    def dense():
        fwdbwd()
        tr.opt.dense.set_masks({}, task=None)
        tr.opt.dense.step()

    def step():
        fwdbwd()
        tr.opt.step({}, None)

    def cross_op(fn):
        def run():
            emb.grad = None
            cross.zero_grad(set_to_none=True)
            fn(emb, cross.weight, ones, cross.bias).sum().backward()
        return run

    parts = {"bound (bare fwd+bwd)": lambda: bound(x0), "bound + dL/dx": lambda: bound(x1),
             "model forward (no grad)": fwd, "model fwd+bwd": fwdbwd, "+ MaskedAdam": dense,
             "+ embedding step (= step)": step,
             "cross fwd+bwd, Gu/Wf kept": cross_op(lambda e, w, m, b: cml.cross_masked_linear(e, w, m, b, "cpu")),
             "cross fwd+bwd, rebuilt": cross_op(lambda e, w, m, b: cml._apply(e, w, m, b, "cpu"))}
    parts.update(_relu_parts(a.batch))
    if a.bf16:
        parts.update(_bf16_parts(mlp, y, x0, x1, emb, widths))
    for fn in parts.values():
        fn()
    wall = {k: [] for k in parts}
    cpu = {k: [] for k in parts}
    for _ in range(a.rounds):
        for k, fn in parts.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    lines = [f"# parts of a warmup step (connection model, embedding_step {a.embedding_step}, batch {a.batch}, "
             f"{a.threads} threads), {a.rounds} interleaved rounds; load at the end {S.load_average()}",
             f"{'part':<30}{'wall min':>10}{'wall med':>10}{'cpu min':>10}{'cpu med':>10}   (ms)"]
    for k in parts:
        w, c = sorted(wall[k]), sorted(cpu[k])
        lines.append(f"{k:<30}{1e3 * w[0]:>10.1f}{1e3 * w[len(w) // 2]:>10.1f}{1e3 * c[0]:>10.1f}"
                     f"{1e3 * c[len(c) // 2]:>10.1f}")
    return _emit(lines, a.out)


def _relu_parts(batch: int):
    """ReLU in place against out of place after a 256 -> 512 layer, fwd + bwd."""
    f = torch.nn.functional
    x = torch.randn(batch, 256)
    lin = torch.nn.Linear(256, 512)

    def relu(fn):
        def run():
            lin.zero_grad(set_to_none=True)
            fn(lin(x)).sum().backward()
        return run

    return {"256->512 + ReLU in place": relu(f.relu_), "256->512 + ReLU": relu(f.relu)}


def _bf16_parts(mlp, y, x0, x1, emb, widths):
    """What bf16 autocast would give: the ncs ops do not run under autocast (their CPU kernels are
    fp32/fp64 and their inner ATen calls would be autocast to bf16), so the model is stood in for
    by plain torch ops of the same shapes: feature_cross (materialised) + nn.Linear layers +
    heads, forward and backward down to d emb, fp32 and bf16."""
    import ncs_kernels as nk

    layers = []
    for i, o in zip(widths[:-1], widths[1:]):
        layers += [torch.nn.Linear(i, o), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers, torch.nn.Linear(widths[-1], y.shape[1]))

    def run(model, x, bf16, cross=False):
        def f():
            model.zero_grad(set_to_none=True)
            x.grad = None
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                z = model(nk.feature_cross(x) if cross else x)
            torch.nn.functional.binary_cross_entropy_with_logits(z.float(), y).backward()
        return f

    return {"bound, bf16 autocast": run(mlp, x0, True), "bound + dL/dx, bf16 autocast": run(mlp, x1, True),
            "torch-ops model fp32": run(net, emb, False, True), "torch-ops model bf16": run(net, emb, True, True)}


if __name__ == "__main__":
    sys.exit(main())
