"""Numerical guard of the training loop: a NaN or inf loss or gradient (train.on_nonfinite).

    guard = NonFiniteGuard(trainer, desc)
    for i, batch in enumerate(batches):
        ...; loss.backward()
        if guard.ok(i, loss):      # False: skip this batch's optimizer step (skip_batch)
            opt.step(); total += loss.detach()
    guard.finish()                 # error mode: raises NonFiniteError for a bad step not yet seen

error (default): per step one fused on-device reduction (loss + the sum of every gradient,
then isfinite) is OR-ed into a flag together with the first bad step's index; the flag is read
back (the only host sync) every train.log_every steps and at the end of the epoch. A bad step
stops training with NonFiniteError naming the model, stage, epoch and step; no checkpoint is
written after it, so the last one on disk is the last good state. The weights in memory may
have taken up to log_every - 1 more steps, but they are never saved.
skip_batch: the same reduction, read back every step (one host sync per step: free on the CPU,
a pipeline stall on a GPU); a bad batch takes no optimizer step and is counted in
pos.skipped_batches (in the checkpoint, so a resumed run counts alike) and logged.
"""
from __future__ import annotations

from typing import Any, Optional

import torch


class NonFiniteError(RuntimeError):
    """Training met a NaN or inf loss or gradient (train.on_nonfinite: error)."""


def _finite_probe(loss: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """A 0-d tensor that is non-finite iff the loss or any gradient element is (NaN or inf)."""
    parts = [loss.detach().float().reshape(())]
    for p in model.parameters():
        g = p.grad
        if g is None:
            continue
        if g.is_sparse:
            g = g._values()
        parts.append(g.sum(dtype=torch.float32).reshape(()) * 0.0)  # x * 0 is NaN iff x is not finite
    return torch.stack(parts).sum()


class NonFiniteGuard:
    def __init__(self, trainer: Any, desc: str):
        self.t = trainer
        self.desc = desc
        self.mode = trainer.cfg.train.on_nonfinite
        self.every = int(trainer.cfg.train.log_every)
        self.step0 = int(trainer.pos.step)  # global step of batch 0 of this epoch
        self.skipped = 0
        self.first: Optional[torch.Tensor] = None  # device int64: first bad batch index, -1 none

    def ok(self, i: int, loss: torch.Tensor) -> bool:
        bad = ~torch.isfinite(_finite_probe(loss, self.t.model))
        if self.mode == "skip_batch":
            if bool(bad):
                self.skipped += 1
                self.t.pos.skipped_batches += 1
                self.t.log(f"warning: {self._where(i)}: non-finite loss or gradient, batch skipped "
                           f"(train.on_nonfinite: skip_batch)")
                return False
            return True
        idx = torch.where(bad, torch.tensor(i, device=bad.device), torch.tensor(-1, device=bad.device))
        if self.first is None:
            self.first = idx
        else:
            self.first = torch.where(self.first >= 0, self.first, idx)
        if (i + 1) % self.every == 0:
            self._check()
        return True

    def finish(self) -> None:
        if self.first is not None:
            self._check()

    def _check(self) -> None:
        i = int(self.first)
        if i >= 0:
            raise NonFiniteError(
                f"{self._where(i)}: non-finite (NaN or inf) loss or gradient; training stopped, the last "
                f"checkpoint ({self.t.ckpt_path}) holds the last good state (train.on_nonfinite: skip_batch "
                f"would skip such batches)")

    def _where(self, i: int) -> str:
        pos = self.t.pos
        return (f"{self.t.kind} stage {pos.stage} ({self.desc}), epoch {pos.epoch + 1}, "
                f"batch {i + 1}, step {self.step0 + i + 1}")
