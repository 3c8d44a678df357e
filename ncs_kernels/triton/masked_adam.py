"""Strict masked Adam/AdamW step as one fused elementwise Triton kernel.

One pass reads p, g, m, v and the packed bits and writes p, m, v only where the task's bit is 1
(masked-out elements are not even stored, so they stay bit-for-bit unchanged). Arithmetic follows
ncs_kernels/reference.masked_adam_step_ operation by operation, in fp32 registers.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import assert_contiguous, interpreting


@triton.jit
def _masked_adam_kernel(
    p_ptr, g_ptr, m_ptr, v_ptr, packed_ptr,
    N, K, WORDS,
    lr, beta1, one_minus_beta1, beta2, one_minus_beta2, bc1, bc2, eps, weight_decay, decay_factor,
    HAS_MASK: tl.constexpr, L2_DECAY: tl.constexpr, DECOUPLED: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    ok = (rn < N)[:, None] & (rk < K)[None, :]
    n64 = rn.to(tl.int64)[:, None]
    if HAS_MASK:
        word = tl.load(packed_ptr + n64 * WORDS + (rk // 32)[None, :], mask=ok, other=0)
        ok = ok & (((word >> (rk % 32)[None, :]) & 1) != 0)
    offs = n64 * K + rk[None, :]
    p_raw = tl.load(p_ptr + offs, mask=ok, other=0.0)
    p = p_raw.to(tl.float32)
    g = tl.load(g_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    m = tl.load(m_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    if L2_DECAY:
        g = g + weight_decay * p
    m = beta1 * m + one_minus_beta1 * g
    v = beta2 * v + one_minus_beta2 * g * g
    denom = tl.sqrt_rn(tl.div_rn(v, bc2)) + eps
    if DECOUPLED:
        p = p * decay_factor
    p = p - tl.div_rn(lr * tl.div_rn(m, bc1), denom)
    tl.store(m_ptr + offs, m.to(m_ptr.dtype.element_ty), mask=ok)
    tl.store(v_ptr + offs, v.to(v_ptr.dtype.element_ty), mask=ok)
    tl.store(p_ptr + offs, p.to(p_raw.dtype), mask=ok)


def masked_adam_step_(
    param, grad, exp_avg, exp_avg_sq, packed, step, lr, beta1, beta2, eps, weight_decay=0.0, decoupled=False
) -> None:
    assert_contiguous(param=param, grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq, packed=packed)
    n, k = param.shape
    if n == 0 or k == 0:
        return
    if interpreting():
        bn, bk = 16, 64
    else:
        # 4096 elements per program: memory-bound, enough bytes in flight per SM
        bk = min(triton.next_power_of_2(k), 256)
        bn = max(4096 // bk, 1)
    wd = float(weight_decay)
    grid = (triton.cdiv(n, bn), triton.cdiv(k, bk))
    _masked_adam_kernel[grid](
        param, grad, exp_avg, exp_avg_sq, packed if packed is not None else param,
        n, k, packed.shape[1] if packed is not None else 0,
        float(lr), float(beta1), 1.0 - float(beta1), float(beta2), 1.0 - float(beta2),
        1.0 - float(beta1) ** int(step), 1.0 - float(beta2) ** int(step), float(eps), wd, 1.0 - float(lr) * wd,
        HAS_MASK=packed is not None, L2_DECAY=bool(wd) and not decoupled, DECOUPLED=bool(wd) and bool(decoupled),
        BLOCK_N=bn, BLOCK_K=bk, num_warps=4,
    )
