"""The parts every model is built of: field embeddings, masked towers, plain stacks, heads, gates."""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

import ncs_kernels as nk


def _vocab_sizes(fields) -> List[int]:
    out = []
    for i, f in enumerate(fields):
        v = getattr(f, "vocab_size", f)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"fields[{i}]: expected a vocab_size >= 1 (row 0 = missing), got {v!r}")
        out.append(int(v))
    if not out:
        raise ValueError("fields: expected at least one field")
    return out


class FieldEmbeddings(nn.Module):
    """One concatenated table for all fields (row offsets per field) behind nn.EmbeddingBag.

    ids int64 [B, F, L]: per field the row ids of its values, 0 = missing (a learned row),
    -1 = padding. Returns [B, F, d], each field pooled over its L slots.

    pad_included=False: padding slots are excluded from the pooling (mean over real values), via
    an extra all-zero row used as EmbeddingBag's padding_idx that never gets a gradient.
    pad_included=True: padding slots count as the field's row 0, as the authors' code does.

    sparse=True: the table's gradient holds only the rows of the batch, so torch.optim.SparseAdam
    (the trainer's embedding optimizer) works on those rows alone, never on the whole table.
    """

    def __init__(self, fields, embed_dim: int, pooling: str = "mean", pad_included: bool = False,
                 init_std: float = 0.05, sparse: bool = True):
        super().__init__()
        if pooling not in ("mean", "sum"):
            raise ValueError(f"pooling: expected 'mean' or 'sum', got {pooling!r}")
        vocab = _vocab_sizes(fields)
        self.vocab_sizes = vocab
        self.num_fields = len(vocab)
        self.embed_dim = int(embed_dim)
        self.pad_included = bool(pad_included)
        self.init_std = float(init_std)
        total = sum(vocab)
        self.pad_row = total
        self.bag = nn.EmbeddingBag(total + 1, self.embed_dim, mode=pooling, sparse=sparse, padding_idx=total)
        offsets = torch.tensor([0] + vocab[:-1], dtype=torch.int64).cumsum(0)
        self.register_buffer("offsets", offsets.view(1, -1, 1), persistent=False)
        self.reset_parameters()
        # optim.embedding_step fused: the trainer sets a GradSink here; the backward then keeps
        # the pooled gradient for the fused row-wise Adam (ncs_kernels.embedding_adam)
        self.fused_sink = None

    def reset_parameters(self) -> None:
        nn.init.normal_(self.bag.weight, 0.0, self.init_std)
        with torch.no_grad():
            self.bag.weight[self.pad_row].zero_()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 3 or ids.shape[1] != self.num_fields:
            raise ValueError(f"ids: expected int64 [B, {self.num_fields}, L], got {tuple(ids.shape)}")
        b, f, l = ids.shape
        if self.pad_included:
            rows = ids.clamp_min(0) + self.offsets
        else:
            # padding (-1) -> the zero row; one fresh tensor, filled in place (3 small ops, not 4)
            rows = (ids + self.offsets).masked_fill_(ids < 0, self.pad_row)
        if self.fused_sink is not None:
            from ncs_kernels.embedding_adam import embedding_bag
            return embedding_bag(self.bag.weight, rows.reshape(b * f, l), self.bag.mode, self.pad_row,
                                 self.fused_sink, padding_row_is_zero=True).view(b, f, self.embed_dim)
        return self.bag(rows.reshape(b * f, l)).view(b, f, self.embed_dim)


def check_ids(ids: torch.Tensor, vocab_sizes: Sequence[int], what: str = "ids") -> None:
    """Raise ValueError naming the field if any id is outside [-1, vocab_size)."""
    if ids.dim() != 3 or ids.shape[1] != len(vocab_sizes):
        raise ValueError(f"{what}: expected [rows, {len(vocab_sizes)}, L], got {tuple(ids.shape)}")
    if ids.numel() == 0:
        return
    hi = ids.amax(dim=(0, 2)).tolist()
    lo = ids.amin(dim=(0, 2)).tolist()
    for i, (a, b, v) in enumerate(zip(lo, hi, vocab_sizes)):
        if a < -1 or b >= v:
            raise ValueError(f"{what}: field {i} has ids in [{a}, {b}], expected [-1, {v - 1}] (vocab_size {v})")


class Tower(nn.Module):
    """CrossMaskedLinear(F, d, h0) -> ReLU -> MaskedLinear(h0, h1) -> ReLU -> ... (all masked per task)."""

    def __init__(self, num_fields: int, embed_dim: int, hidden: Sequence[int], tasks: Sequence[str],
                 backend: str = "auto"):
        super().__init__()
        hidden = list(hidden)
        if not hidden:
            raise ValueError("hidden: expected at least one layer width")
        layers: List[nn.Module] = [nk.CrossMaskedLinear(num_fields, embed_dim, hidden[0], tasks, backend=backend)]
        for a, b in zip(hidden[:-1], hidden[1:]):
            layers.append(nk.MaskedLinear(a, b, tasks, backend=backend))
        self.layers = nn.ModuleList(layers)
        self.out_features = hidden[-1]
        for m in self.layers:
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, emb: torch.Tensor, task: Optional[str] = None) -> torch.Tensor:
        h = emb
        for layer in self.layers:
            # in place: no layer saves its output for backward, so ReLU may overwrite it
            # (one [B, width] buffer less per layer; ReLU's backward reads its own result)
            h = F.relu_(layer(h, task))
        return h


def _head(width: int) -> nn.Linear:
    head = nn.Linear(width, 1)
    nn.init.xavier_uniform_(head.weight)
    nn.init.zeros_(head.bias)
    return head


class Stack(nn.Module):
    """Linear -> ReLU layers over a flat input (the towers above a bottom / experts); xavier init.
    widths may be empty (identity)."""

    def __init__(self, in_features: int, widths: Sequence[int]):
        super().__init__()
        layers = []
        for w in widths:
            lin = nn.Linear(in_features, w)
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
            layers.append(lin)
            in_features = w
        self.layers = nn.ModuleList(layers)
        self.out_features = in_features

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            h = F.relu_(layer(h))  # in place, as in Tower
        return h


def _gate(in_features: int, n: int) -> nn.Linear:
    """A softmax gate's logits layer; zero init, so every gate starts uniform over its experts."""
    g = nn.Linear(in_features, n)
    nn.init.zeros_(g.weight)
    nn.init.zeros_(g.bias)
    return g
