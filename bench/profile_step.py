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
    ]
    lines.append("# summary (ms over the profiled steps; total self CPU %.0f ms):" % (total / 1e3))
    for name, us in groups:
        lines.append(f"#   {name}: {us / 1e3:.0f} ms ({100 * us / total:.1f} %)")
    lines.append(ka.table(sort_by="self_cpu_time_total", row_limit=a.limit))
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
