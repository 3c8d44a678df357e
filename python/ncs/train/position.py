"""Where a model's training is: the resumable position, stored in every checkpoint.

    pos = Position.start("connection")          # stage warmup, epoch 0, ...
    doc = pos.to_json()                         # a JSON-able dict, the checkpoint's "pos" entry
    pos = Position.from_json(doc)               # also reads checkpoints written before this class

The JSON keys are the field names (the same keys the untyped dict of earlier versions had;
keys it wrote only once set, e.g. batch or skipped_batches, default when absent). Keys this
version does not know are kept in `extra` and written back unchanged.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

STAGES = ("warmup", "masks", "joint", "baseline", "done")


@dataclass
class Position:
    stage: str                      # warmup | masks | joint (connection), baseline (others), done
    epoch: int = 0                  # next epoch of the stage (of the round, in masks)
    task_index: int = 0             # masks: next task (index into cfg.tasks)
    round: int = 0                  # masks: next round k of that task
    step: int = 0                   # optimizer steps taken so far, all stages
    rounds: Dict[str, List[Dict[str, Any]]] = field(default_factory=dict)  # masks: rows per task
    selected: Dict[str, int] = field(default_factory=dict)   # masks: the kept round per task
    curves: List[Dict[str, Any]] = field(default_factory=list)  # one record per epoch / round
    early: Optional[Dict[str, Any]] = None   # EarlyStopper's state (JSON), None before the first epoch
    seconds: Dict[str, float] = field(default_factory=dict)  # wall time per stage
    batch: int = 0                  # train.checkpoint_every: next batch inside the epoch
    batch_loss: float = 0.0         # ... and the summed loss of the batches before it
    round_losses: List[float] = field(default_factory=list)  # masks: each epoch's loss of the round
    skipped_batches: int = 0        # train.on_nonfinite skip_batch: batches skipped so far
    extra: Dict[str, Any] = field(default_factory=dict)      # unknown keys of a newer checkpoint

    @classmethod
    def start(cls, kind: str) -> "Position":
        return cls(stage="warmup" if kind == "connection" else "baseline")

    def to_json(self) -> Dict[str, Any]:
        doc = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        doc.update(self.extra)
        return doc

    @classmethod
    def from_json(cls, doc: Dict[str, Any]) -> "Position":
        if not isinstance(doc, dict) or "stage" not in doc:
            raise ValueError(f"checkpoint position: expected a mapping with a 'stage', got {doc!r}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in doc.items() if k in names}
        return cls(**known, extra={k: v for k, v in doc.items() if k not in names})

    def next_round(self, k: int) -> None:
        """Round k of the masks stage is done: the next one starts at its epoch 0."""
        self.round, self.epoch, self.round_losses = k + 1, 0, []

    def next_task(self, ti: int) -> None:
        self.task_index, self.round, self.epoch = ti + 1, 0, 0

    def add_seconds(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
