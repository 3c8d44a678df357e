"""The plain-torch per-task network an export holds (no ncs or ncs_kernels op in it), the
scorer that wraps it, and compaction. See ncs.serve.export for the artifact and its files.

CrossMLP     ids [B, F, L] -> logits [B]: pooled embeddings, feature cross, ReLU MLP, head
TaskScorer   checks ids, runs a task's network, returns sigmoid(logits) float32 [B]
compact      the same function with dead neurons and unread inputs removed
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .runs import ExportError


class CrossMLP(nn.Module):
    """ids [B, F, L] -> logits [B]: pooled field embeddings, feature cross, ReLU MLP, head.

    table     [rows + 1, d]: every field's rows (field i starts at offsets[i]); the last row is
              all zero and is where padding slots (-1) point.
    layers    [(W, b)] of the hidden layers (W already W ⊙ M); the first reads the cross
              features cat(gram [F*F], flat embeddings [F*d]) at columns `inputs`.
    head      (W [1, h], b [1]).
    """

    def __init__(self, table: torch.Tensor, vocab_sizes: Sequence[int], pooling: str, pad_included: bool,
                 layers: Sequence[Tuple[torch.Tensor, torch.Tensor]], head: Tuple[torch.Tensor, torch.Tensor],
                 inputs: Optional[torch.Tensor] = None):
        super().__init__()
        if pooling not in ("mean", "sum"):
            raise ExportError(f"pooling: expected 'mean' or 'sum', got {pooling!r}")
        vocab = [int(v) for v in vocab_sizes]
        if table.shape[0] != sum(vocab) + 1:
            raise ExportError(f"table: expected {sum(vocab) + 1} rows (the fields' rows + a padding row), "
                              f"got {table.shape[0]}")
        self.num_fields = len(vocab)
        self.embed_dim = int(table.shape[1])
        self.pad_row = sum(vocab)
        self.mean = pooling == "mean"
        self.pad_included = bool(pad_included)
        self.embedding = nn.Embedding(table.shape[0], self.embed_dim)
        with torch.no_grad():
            self.embedding.weight.copy_(table.detach().float())
        self.embedding.weight.requires_grad_(False)
        offsets = torch.tensor([0] + vocab[:-1], dtype=torch.int64).cumsum(0)
        self.register_buffer("offsets", offsets.view(1, -1, 1))
        width = self.num_fields * self.num_fields + self.num_fields * self.embed_dim
        if inputs is None:
            inputs = torch.arange(width, dtype=torch.int64)
        self.register_buffer("inputs", inputs.to(torch.int64).clone())
        self.all_inputs = bool(inputs.numel() == width and torch.equal(inputs.cpu(), torch.arange(width)))
        self.layers = nn.ModuleList([_linear(w, b) for w, b in layers])
        self.head = _linear(*head)

    def pooled(self, ids: torch.Tensor) -> torch.Tensor:
        if self.pad_included:
            rows = ids.clamp_min(0) + self.offsets
            e = self.embedding(rows)                                   # [B, F, L, d]
            if self.mean:
                return e.mean(dim=2)
            return e.sum(dim=2)
        valid = ids >= 0
        rows = torch.where(valid, ids + self.offsets, torch.full_like(ids, self.pad_row))
        e = self.embedding(rows)                                       # the padding row is 0
        s = e.sum(dim=2)
        if self.mean:
            n = valid.to(e.dtype).sum(dim=2, keepdim=True).clamp_min(1.0)
            return s / n
        return s

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        emb = self.pooled(ids)                                         # [B, F, d]
        b = emb.shape[0]
        gram = torch.bmm(emb, emb.transpose(1, 2)).reshape(b, self.num_fields * self.num_fields)
        x = torch.cat([gram, emb.reshape(b, self.num_fields * self.embed_dim)], dim=1)
        if not self.all_inputs:
            x = x.index_select(1, self.inputs)
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(x).squeeze(-1)


def _linear(w: torch.Tensor, b: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(w.detach().float())
        lin.bias.copy_(b.detach().float())
    lin.requires_grad_(False)
    return lin


class TaskScorer(nn.Module):
    """The exported artifact: checks ids, runs a task's network, returns sigmoid(logits) float32 [B]."""

    def __init__(self, net: nn.Module, vocab_sizes: Sequence[int]):
        super().__init__()
        self.net = net
        self.num_fields = len(vocab_sizes)
        self.register_buffer("vocab_sizes", torch.tensor([int(v) for v in vocab_sizes], dtype=torch.int64).view(1, -1, 1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing():  # TorchScript / eager: clear errors; ONNX: the graph's own checks
            if ids.dim() != 3 or ids.shape[1] != self.num_fields:
                raise ValueError("ids: expected int64 [B, F, L] with F = the run's number of fields "
                                 "(see signature.json)")
            if ids.dtype != torch.int64:
                raise ValueError("ids: expected dtype int64")
            if bool((ids < -1).any()) or bool((ids >= self.vocab_sizes).any()):
                raise ValueError("ids: out of range; each field's ids must lie in [-1, vocab_size - 1] "
                                 "(see fields.json)")
        return torch.sigmoid(self.net(ids)).to(torch.float32)


# ---------------------------------------------------------------------------------------------
# Compaction

def _params(net: CrossMLP) -> Dict[str, Any]:
    dense = [tuple(layer.weight.shape) for layer in net.layers] + [tuple(net.head.weight.shape)]
    weights = sum(a * b for a, b in dense)
    nonzero = sum(int(layer.weight.count_nonzero()) for layer in net.layers) + int(net.head.weight.count_nonzero())
    biases = sum(layer.bias.numel() for layer in net.layers) + net.head.bias.numel()
    return {"inputs": int(net.inputs.numel()), "widths": [int(layer.out_features) for layer in net.layers],
            "dense_weights": int(weights), "nonzero_weights": int(nonzero), "biases": int(biases),
            "embedding_rows": int(net.embedding.weight.shape[0]),
            "parameters": int(weights + biases + net.embedding.weight.numel())}


def compact(net: CrossMLP) -> Tuple[CrossMLP, Dict[str, Any]]:
    """A CrossMLP computing the same function with dead neurons and unread inputs removed, and
    {"before": sizes, "after": sizes}. Never empties a layer (one neuron is kept)."""
    if not isinstance(net, CrossMLP):
        raise ExportError(f"--compact: the network is a {type(net).__name__}, not a CrossMLP; "
                          f"this kind's exporter does not support compaction")
    before = _params(net)
    ws = [layer.weight.detach().clone().double() for layer in net.layers] + [net.head.weight.detach().clone().double()]
    bs = [layer.bias.detach().clone().double() for layer in net.layers] + [net.head.bias.detach().clone().double()]
    inputs = net.inputs.clone()
    n_hidden = len(net.layers)
    changed = True
    while changed:
        changed = False
        keep_in = ws[0].ne(0).any(dim=0)
        if not bool(keep_in.all()) and bool(keep_in.any()):
            ws[0], inputs = ws[0][:, keep_in], inputs[keep_in]
            changed = True
        for i in range(n_hidden):
            w, b, w_next = ws[i], bs[i], ws[i + 1]
            dead_out = w_next.eq(0).all(dim=0)
            dead_in = w.eq(0).all(dim=1) & ~dead_out
            drop = dead_out | dead_in
            if not bool(drop.any()):
                continue
            if bool(drop.all()):  # keep one neuron: prefer one that carries weight
                keep_one = int((~dead_out).nonzero()[0]) if bool((~dead_out).any()) else 0
                drop[keep_one] = False
                dead_in[keep_one] = False
                if not bool(drop.any()):
                    continue
            if bool(dead_in.any()):  # constant outputs relu(b_j) folded into the next bias
                const = torch.relu(b[dead_in])
                bs[i + 1] = bs[i + 1] + w_next[:, dead_in] @ const
            keep = ~drop
            ws[i], bs[i], ws[i + 1] = w[keep], b[keep], w_next[:, keep]
            changed = True
    layers = [(ws[i].float(), bs[i].float()) for i in range(n_hidden)]
    out = CrossMLP(net.embedding.weight.detach(), _vocab_of(net), "mean" if net.mean else "sum", net.pad_included,
                   layers, (ws[-1].float(), bs[-1].float()), inputs)
    return out.eval(), {"before": before, "after": _params(out)}


def _vocab_of(net: CrossMLP) -> List[int]:
    offs = net.offsets.view(-1).tolist() + [net.pad_row]
    return [b - a for a, b in zip(offs[:-1], offs[1:])]
