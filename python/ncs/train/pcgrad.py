"""PCGrad's gradient surgery (Yu et al. 2020) on every gradient form of the trainer.

A task's gradient on parameter i (params[i]) is one of
  a dense tensor;
  a sparse COO row gradient [V, d]: a table under optim.embedding_step sparse_adam;
  a pair (rows [bags, L], dL/dpooled [bags, d]): a table under optim.embedding_step fused, what
      its GradSink holds. Its dense-equivalent is the per-row segment sum (mean pooling divides
      by the bag's count: ncs_kernels.embedding_adam.segment_sum), a coalesced COO gradient.

project_conflicting(grads, shared, against)  the definition (the tests' reference), on dense and
    sparse gradients: for each task i in order, for each other gradient j in order, if
    g_i . g_j < 0 over the shared parameters both touch, g_i -= (g_i . g_j) / |g_j|^2 g_j.
coefficients(grads, mixed)  the same surgery on scalars. Group the parameters by touch set S
    (the gradients that reach them). Every projection adds c g_j to g_i on the parameters both
    touch, so on group S each projected gradient is sum_k A_S[i, k] g_k, and
    g_i' . g_j = sum_S sum_k A_S[i, k] G_S[k, j] with G_S the raw gradients' Gram matrix over
    the group: the sequential surgery runs on the Gram matrices (one host read per step), with
    the decisions and coefficients of project_conflicting. The result on parameter p is a linear
    combination sum_k b_k g_k[p] with scalar b_k (mixed=True: the sum of the projected
    gradients, b = sum_i A_S[i]; mixed=False: the projected first gradient against the others).
apply(raw, params, tables, mixed)  sets p.grad = sum_k b_k g_k (dense; sparse on the union of
    the rows); a fused table's sink gets (rows_k, b_k * pooled_k) for every k, so the fused
    row-wise Adam step applies exactly sum_k b_k g_k and stays fused. A sparse gradient meeting a
    fused table (an earlier step's kept gradient) enters its sink as one-row bags.
"""
from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn


# ------------------------------------------------------------------------------ the definition
def _coalesced(g: torch.Tensor) -> torch.Tensor:
    return g.coalesce() if g.is_sparse else g


def _union_rows(a: torch.Tensor, b: torch.Tensor):
    """Two coalesced sparse row gradients [V, d] -> (rows, A [U, d], B [U, d]) on their union of rows."""
    ia, ib = a.indices()[0], b.indices()[0]
    rows, inv = torch.unique(torch.cat([ia, ib]), return_inverse=True)
    shape = (int(rows.numel()),) + tuple(a.shape[1:])
    A = torch.zeros(shape, dtype=a.dtype, device=a.device).index_copy_(0, inv[:ia.numel()], a.values())
    Bm = torch.zeros(shape, dtype=b.dtype, device=b.device).index_copy_(0, inv[ia.numel():], b.values())
    return rows, A, Bm


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.is_sparse:
        _, A, Bm = _union_rows(a, b)
        return (A * Bm).sum()
    return (a * b).sum()


def _sqnorm(a: torch.Tensor) -> torch.Tensor:
    return (a.values() if a.is_sparse else a).pow(2).sum()


def _axpy(a: torch.Tensor, c: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + c * b (sparse: on the union of the rows)."""
    if a.is_sparse:
        rows, A, Bm = _union_rows(a, b)
        return torch.sparse_coo_tensor(rows.unsqueeze(0), A + c * Bm, a.shape, check_invariants=False).coalesce()
    return a + c * b


def _add(a: Optional[torch.Tensor], b: torch.Tensor) -> torch.Tensor:
    if a is None:
        return b
    return (a + b).coalesce() if a.is_sparse else a + b


def project_conflicting(grads: Sequence[Dict[int, torch.Tensor]], shared: Sequence[int],
                        against: Optional[Sequence[Dict[int, torch.Tensor]]] = None) -> List[Dict[int, torch.Tensor]]:
    """PCGrad's surgery on the `shared` parameters: for each task i (in order), for each other
    gradient j (in order; `against` defaults to the tasks' own unprojected gradients), if
    g_i . g_j < 0 then g_i -= (g_i . g_j) / |g_j|^2 g_j. Dot products and norms run over the
    shared parameters both gradients touch. Returns the projected gradients (non-shared entries
    unchanged). The definition; the trainer computes the same with coefficients()."""
    against = grads if against is None else against
    out = []
    for i, gi in enumerate(grads):
        g = dict(gi)
        for j, gj in enumerate(against):
            if against is grads and j == i:
                continue
            common = [p for p in shared if p in g and p in gj]
            if not common:
                continue
            dot = sum(_dot(g[p], gj[p]) for p in common)
            if float(dot) < 0.0:
                nj = sum(_sqnorm(gj[p]) for p in common)
                if float(nj) > 0.0:
                    c = -dot / nj
                    for p in common:
                        g[p] = _axpy(g[p], c, gj[p])
        out.append(g)
    return out


# ------------------------------------------------------------------------------ fused tables
class Table(NamedTuple):
    """A table under optim.embedding_step fused: its sink, pooling mode, padding row and shape."""
    sink: Any
    mode: str
    padding_idx: Optional[int]
    shape: Tuple[int, ...]


def fused_tables(model: nn.Module, params: Sequence[torch.Tensor]) -> Dict[int, Table]:
    """{index into params: Table} of the tables whose backward feeds a GradSink."""
    where = {id(p): i for i, p in enumerate(params)}
    out: Dict[int, Table] = {}
    for m in model.modules():
        sink, bag = getattr(m, "fused_sink", None), getattr(m, "bag", None)
        if sink is not None and isinstance(bag, nn.EmbeddingBag) and id(bag.weight) in where:
            out[where[id(bag.weight)]] = Table(sink, bag.mode, bag.padding_idx, tuple(bag.weight.shape))
    return out


def take_sinks(tables: Dict[int, Table]) -> Dict[int, Tuple[torch.Tensor, torch.Tensor]]:
    """Empty the tables' sinks: {index: (rows, pooled gradient)} of those that held one."""
    out = {}
    for i, t in tables.items():
        got = t.sink.take()
        if got is not None:
            out[i] = got
    return out


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and (a.data_ptr() == b.data_ptr() or torch.equal(a, b))


def equivalents(grads: Sequence[Dict[int, Any]], tables: Dict[int, Table]) -> List[Dict[int, torch.Tensor]]:
    """Each gradient as dense / coalesced sparse tensors: a fused table's (rows, pooled) becomes
    its per-row segment sum. Gradients with the same bags (a mixed batch: one forward, one
    backward per task) share one segmentation (their pooled gradients side by side)."""
    from ncs_kernels.embedding_adam import segment_sum
    out = [{i: (v if isinstance(v, tuple) else _coalesced(v)) for i, v in g.items()} for g in grads]
    for i, tab in tables.items():
        todo = [k for k, g in enumerate(grads) if isinstance(g.get(i), tuple)]
        while todo:
            rows = grads[todo[0]][i][0]
            same = [k for k in todo if _same(grads[k][i][0], rows)]
            todo = [k for k in todo if k not in same]
            d = tab.shape[1]
            uniq, g = segment_sum(rows, torch.cat([grads[k][i][1] for k in same], 1), tab.mode, tab.padding_idx)
            for n, k in enumerate(same):
                out[k][i] = torch.sparse_coo_tensor(uniq.unsqueeze(0), g[:, n * d:(n + 1) * d].contiguous(),
                                                    tab.shape, is_coalesced=True, check_invariants=False)
    return out


# ------------------------------------------------------------------------------ the surgery on scalars
def _stack(ts: Sequence[torch.Tensor]) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
    """(rows or None, M [n, -1]): the gradients of one parameter as the rows of a matrix (sparse
    ones on the union of their rows)."""
    if not any(t.is_sparse for t in ts):
        return None, torch.stack([t.reshape(-1) for t in ts])
    ts = [t if t.is_sparse else t.to_sparse(sparse_dim=1) for t in ts]
    idx = [t.indices()[0] for t in ts]
    rows, inv = torch.unique(torch.cat(idx), return_inverse=True)
    M = torch.zeros((len(ts), int(rows.numel())) + tuple(ts[0].shape[1:]), dtype=ts[0].dtype, device=ts[0].device)
    off = 0
    for k, t in enumerate(ts):
        M[k].index_copy_(0, inv[off:off + idx[k].numel()], t.values())
        off += idx[k].numel()
    return rows, M.reshape(len(ts), -1)


def coefficients(grads: Sequence[Dict[int, torch.Tensor]], mixed: bool):
    """({param index: {gradient k: b_k}}, stacks): the result on each parameter is sum_k b_k g_k.

    grads: dense / coalesced sparse tensors. mixed=True: the sum of every gradient projected
    against the others (pcgrad on one mixed batch); False: grads[0] projected against grads[1:]
    (the joint stage's step against the other tasks' last gradients). See the module doc."""
    n = len(grads)
    touch: Dict[int, Tuple[int, ...]] = {}
    for k, g in enumerate(grads):
        for i in g:
            touch[i] = touch.get(i, ()) + (k,)
    groups: Dict[Tuple[int, ...], List[int]] = {}
    for i in sorted(touch):
        S = touch[i]
        if len(S) >= 2 and (mixed or S[0] == 0):
            groups.setdefault(S, []).append(i)
    stacks = {i: _stack([grads[k][i] for k in S]) for S, idxs in groups.items() for i in idxs}
    G: Dict[Tuple[int, ...], Dict[Tuple[int, int], float]] = {}
    if groups:
        blocks = []
        for S, idxs in groups.items():
            b = None
            for i in idxs:
                M = stacks[i][1]
                b = M @ M.T if b is None else b + M @ M.T
            blocks.append(b.reshape(-1))
        flat = torch.cat(blocks).double().cpu().tolist()  # the one host read
        off = 0
        for S in groups:
            G[S] = {(a, b): flat[off + x * len(S) + y] for x, a in enumerate(S) for y, b in enumerate(S)}
            off += len(S) * len(S)
    A: Dict[int, Dict[Tuple[int, ...], Dict[int, float]]] = {}
    for i in (range(n) if mixed else [0]):
        mine = {S: {i: 1.0} for S in groups if i in S}
        for j in ([j for j in range(n) if j != i] if mixed else range(1, n)):
            Sij = [S for S in mine if j in S]
            if not Sij:
                continue
            dot = sum(a * G[S][(k, j)] for S in Sij for k, a in mine[S].items())
            if dot < 0.0:
                nj = sum(G[S][(j, j)] for S in Sij)
                if nj > 0.0:
                    c = -dot / nj
                    for S in Sij:
                        mine[S][j] = mine[S].get(j, 0.0) + c
        A[i] = mine
    out: Dict[int, Dict[int, float]] = {}
    for i, S in touch.items():
        if S in groups:
            if mixed:
                b: Dict[int, float] = {}
                for t in S:
                    for k, a in A[t][S].items():
                        b[k] = b.get(k, 0.0) + a
            else:
                b = dict(A[0][S])
            out[i] = {k: b[k] for k in S if k in b}
        elif mixed or S == (0,):
            out[i] = {S[0]: 1.0}
    return out, stacks


def _lincomb(i: int, coef: Dict[int, float], eq: Sequence[Dict[int, torch.Tensor]], stacks) -> torch.Tensor:
    if len(coef) == 1:
        (k0, c0), = coef.items()
        if c0 == 1.0:
            return eq[k0][i]
    S = [k for k, g in enumerate(eq) if i in g]
    if i in stacks:
        rows, M = stacks[i]
    else:
        rows, M = _stack([eq[k][i] for k in S])
    b = torch.tensor([coef.get(k, 0.0) for k in S], dtype=M.dtype, device=M.device)
    v = b @ M
    like = eq[S[0]][i]
    if rows is None:
        return v.view(like.shape)
    return torch.sparse_coo_tensor(rows.unsqueeze(0), v.view((int(rows.numel()),) + tuple(like.shape[1:])),
                                   like.shape, is_coalesced=True, check_invariants=False)


def _one_row_bags(g: torch.Tensor, L: int, tab: Table) -> Tuple[torch.Tensor, torch.Tensor]:
    """A coalesced sparse row gradient as bags of one row each (the other L - 1 slots padding)."""
    idx = g.indices()[0]
    if L > 1 and tab.padding_idx is None:
        raise ValueError("a fused table without padding_idx takes only one-slot bags here")
    rows = torch.full((idx.numel(), L), -1 if tab.padding_idx is None else tab.padding_idx, dtype=torch.int64,
                      device=idx.device)
    rows[:, 0] = idx
    return rows, g.values()


def apply(raw: Sequence[Dict[int, Any]], params: Sequence[torch.Tensor], tables: Dict[int, Table], mixed: bool,
          eq: Optional[Sequence[Dict[int, torch.Tensor]]] = None) -> None:
    """Set the step's gradient (p.grad; fused tables: their sinks) to PCGrad's combination of
    the gradients `raw` (coefficients(); `eq`: their dense / sparse forms when already known)."""
    eq = equivalents(raw, tables) if eq is None else eq
    coefs, stacks = coefficients(eq, mixed)
    for i, p in enumerate(params):
        c = coefs.get(i)
        if i in tables:
            p.grad = None
            tab = tables[i]
            pooled = [raw[k][i] for k in c or () if isinstance(raw[k].get(i), tuple)]
            L = pooled[0][0].shape[1] if pooled else 1
            for k, a in (c or {}).items():
                v = raw[k][i]
                rows, g = v if isinstance(v, tuple) else _one_row_bags(eq[k][i], L, tab)
                tab.sink.add(rows, g if a == 1.0 else g * a)
        elif c is not None:
            p.grad = _lincomb(i, c, eq, stacks)
        elif mixed:
            p.grad = None
