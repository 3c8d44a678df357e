"""One pass over a list of batches: the inner loop of every stage (Algorithm 1, steps 7a, 15-19)."""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch

from ..losses import mixed_loss, task_loss
from . import batches as B
from .guards import NonFiniteGuard
from .pcgrad import fused_tables


def train_epoch(tr, batches: Sequence[Tuple[Optional[str], torch.Tensor]], weighted: bool, desc: str) -> float:
    """One pass of trainer `tr` over `batches`: (None, rows) = mixed batch, Eq. 2; (task, rows) =
    a batch of the task's space, Eq. 1 (times omega_k when weighted), each forward under the
    task's mask and each update by MaskedAdam on the task's mask. Returns the mean batch loss."""
    model = tr.model
    model.train()
    pos = tr.pos
    log_every = tr.cfg.train.log_every
    # mid-epoch position (train.checkpoint_every): resume at the exact batch of the epoch
    every = tr.cfg.train.checkpoint_every
    start = int(pos.batch)
    n_all = len(batches)
    batches = B.from_batch(batches, start)
    total = torch.full((), float(pos.batch_loss), dtype=torch.float32, device=tr.device)
    bar = None
    if tr.progress:
        from tqdm import tqdm
        bar = tqdm(total=len(batches), desc=desc, leave=False, dynamic_ncols=True)
    guard = NonFiniteGuard(tr, desc)  # train.on_nonfinite (guards.py)
    dist = tr.dist  # a torchrun run: this rank's slice of each global batch (ncs.distributed)
    ranks = 1 if dist is None else dist.world_size
    split = tr.epoch_split if tr.epoch_split is not None else tr.train
    bal = tr.balancer
    params, tables = None, {}
    if bal.pcgrad and weighted:
        params = [p for p in model.parameters() if p.requires_grad]
        tables = fused_tables(model, params)  # optim.embedding_step fused: the sinks PCGrad reads and fills
    sinks = [m.fused_sink for m in model.modules() if getattr(m, "fused_sink", None) is not None]
    for i, (task, idx) in enumerate(batches):
        if dist is not None:
            idx = dist.shard(split, task, idx)
        ids, tg, sp = split.batch(idx)
        tr.opt.zero_grad()
        bal.zero_grad()
        reduced = False  # under torchrun: the gradients already summed over the ranks (PCGrad)
        if task is None:
            # loss: Eq. 2 (ESMM: its loss) with the fixed weights (the logged number, whatever
            # loss.balance); parts: each task's L_k, which loss.balance combines
            loss, parts = mixed_loss(tr.kind, model(ids), tg, sp, tr.tasks, tr.gamma, tr.alpha)
            if dist is not None:  # the rank's shares: summed over the ranks, the global batch's
                loss = dist.mixed_loss(tr.kind, parts, tr.tasks)
                parts = dist.scale_parts(tr.kind, parts)
            masks: Dict[torch.Tensor, torch.Tensor] = {}
            if params is not None:  # each task's gradient reduced over the ranks, then projected
                bal.pcgrad_mixed_backward(parts, params, tables, dist)
                reduced = True
            else:
                (loss if bal.method == "fixed" else bal.combine(parts, ranks)).backward()
        else:
            t = tr.task_cfg[task]
            lk = task_loss(t.loss, model(ids, task), tg[task], None, tr.gamma, tr.alpha)
            if dist is not None:
                lk = dist.task_loss(lk)
            loss = lk * t.weight if weighted else lk
            masks = tr.task_masks(task)
            (bal.term(task, lk, ranks) if weighted and bal.method == "uncertainty" else loss).backward()
            if params is not None:  # the global gradient is projected and remembered
                if dist is not None:
                    dist.reduce_gradients(model)
                reduced = True
                bal.pcgrad_task_step(task, params, tables)
        if dist is not None and not reduced:
            dist.reduce_gradients(model, bal.parameters())
        if tr.freeze_embeddings:
            for p in model.embedding_parameters():
                p.grad = None
            for sink in sinks:  # fused tables: their gradient waits in the sink
                sink.clear()
        if guard.ok(i, loss):
            tr.opt.step(masks, task)
            if weighted:
                bal.step()
            total += loss.detach()
        pos.step += 1
        if every and (start + i + 1) % every == 0 and start + i + 1 < n_all:
            guard.finish()  # never checkpoint past a non-finite step
            pos.batch, pos.batch_loss = start + i + 1, float(total.item())
            tr.checkpoint()
        if bar is not None:
            # the only host syncs of the loop: one every log_every steps, for the bar
            if (i + 1) % log_every == 0:
                bar.set_postfix(loss=f"{(total / (i + 1)).item():.4f}")
            bar.update()
    if bar is not None:
        bar.close()
    guard.finish()
    if dist is not None:  # the global batches' losses
        total = dist.sum(total)
    pos.batch, pos.batch_loss = 0, 0.0
    return float((total / max(1, n_all - guard.skipped)).item())
