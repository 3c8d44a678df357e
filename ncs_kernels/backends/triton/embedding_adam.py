"""Fused embedding-bag backward + row-wise sparse Adam as a Triton kernel (fbgemm TBE's design).

The ids are segmented by row in PyTorch (torch.sort / unique_consecutive, as the reference);
then one program per unique row walks its segment (the sorted (row, bag) entries, in bag order),
sums grad[bag] / count(bag) into fp32 registers of width BLOCK_D >= d, and applies SparseAdam's
update to that row of the table and its moments in place. Nothing of width [entries, d] is ever
written. Arithmetic as ncs_kernels.embedding_adam.reference_rowwise_adam_ (IEEE division and
square root: tl.div_rn, tl.sqrt_rn).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._common import interpreting


@triton.jit
def _rowwise_adam_kernel(
    w_ptr, m_ptr, v_ptr, g_ptr, uniq_ptr, offs_ptr, bag_ptr, div_ptr,
    D, omb1, omb2, eps, neg_step,
    MEAN: tl.constexpr, BLOCK_D: tl.constexpr,
):
    u = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    ok = cols < D
    start = tl.load(offs_ptr + u)
    end = tl.load(offs_ptr + u + 1)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for i in range(start, end):
        b = tl.load(bag_ptr + i).to(tl.int64)
        g = tl.load(g_ptr + b * D + cols, mask=ok, other=0.0).to(tl.float32)
        if MEAN:
            c = tl.load(div_ptr + b).to(tl.float32)
            g = tl.div_rn(g, c)
        acc = acc + g
    row = tl.load(uniq_ptr + u).to(tl.int64)
    offs = row * D + cols
    p = tl.load(w_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    m = tl.load(m_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    m = m + (acc - m) * omb1
    v = v + (acc * acc - v) * omb2
    den = tl.sqrt_rn(v) + eps
    p = p + neg_step * tl.div_rn(m, den)
    tl.store(m_ptr + offs, m.to(m_ptr.dtype.element_ty), mask=ok)
    tl.store(v_ptr + offs, v.to(v_ptr.dtype.element_ty), mask=ok)
    tl.store(w_ptr + offs, p.to(w_ptr.dtype.element_ty), mask=ok)


@torch.no_grad()
def rowwise_adam_triton_(weight, exp_avg, exp_avg_sq, rows, grad, step, lr, beta1, beta2, eps, mode, padding_idx):
    from ...embedding_adam import segment_rows

    uniq, offsets, bag_sorted, div = segment_rows(rows, mode, padding_idx)
    U = int(uniq.numel())
    if U == 0:
        return
    d = int(weight.shape[1])
    step_size = lr * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
    block = max(16, triton.next_power_of_2(d))
    _rowwise_adam_kernel[(U,)](
        weight, exp_avg, exp_avg_sq, grad.contiguous(), uniq, offsets, bag_sorted,
        div.to(torch.float32), d, 1.0 - beta1, 1.0 - beta2, eps, -step_size,
        MEAN=(mode == "mean"), BLOCK_D=block, num_warps=1 if interpreting() or block <= 64 else 4,
    )
