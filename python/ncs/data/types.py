"""The in-memory form every reader produces and every model consumes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

import torch


@dataclass(frozen=True)
class FieldSpec:
    """One categorical field. Row 0 of its embedding table is 'missing/unknown'."""

    name: str
    vocab_size: int  # rows of the embedding table, row 0 included
    max_len: int = 1  # values per sample; > 1 for multi-valued fields (mean-pooled)


@dataclass
class EncodedData:
    """Encoded samples.

    ids     int64 [rows, F, L], L = max(max_len): per field the row ids of its values; 0 means
            missing/unknown (a learned row), -1 means padding (no value in that slot).
    labels  float32 [rows] per label column, e.g. "click" (0/1) and "conversion" (play rate in
            [0, 1], > 0 only where click = 1).
    groups  int64 [rows] per grouping key used for splits, e.g. "request", "user".
    """

    fields: List[FieldSpec]
    ids: torch.Tensor
    labels: Dict[str, torch.Tensor]
    groups: Dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def num_fields(self) -> int:
        return len(self.fields)

    def subset(self, index: torch.Tensor) -> "EncodedData":
        return EncodedData(
            self.fields,
            self.ids[index],
            {k: v[index] for k, v in self.labels.items()},
            {k: v[index] for k, v in self.groups.items()},
        )
