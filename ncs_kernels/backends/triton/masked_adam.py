"""Strict masked Adam/AdamW step as one fused elementwise Triton kernel.

One pass reads p, g, m, v and the packed bits and writes p, m, v only where the task's bit is 1
(masked-out elements are not even stored, so they stay bit-for-bit unchanged). Arithmetic follows
ncs_kernels/backends/pytorch.masked_adam_step_ operation by operation, in fp32 registers.

Two kernels, both on a 1-D grid (axis 0 allows 2^31 - 1 programs, axes 1 and 2 only 65535):
  _masked_adam_kernel  a masked weight [N, K]: tiles of BLOCK_N x BLOCK_K, program id split into
                       (row tile, column tile) inside the kernel.
  _adam_flat_kernel    an unmasked step (packed None: biases, heads, a non-2-D parameter viewed
                       as [1, numel]): the tensor as one flat range of numel elements, BLOCK per
                       program, so no row of a tile sits idle.
Per-task moments (ncs_kernels.ops.masked_adam_task_step_) run the same kernels on the task's
slice of the [T, N, K] moment stacks (a contiguous view). Launches happen under the tensors'
CUDA device (torch.cuda.device guard), so a parameter on cuda:1 runs on cuda:1 whatever the
current device is.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import triton
import triton.language as tl

from ._common import assert_contiguous, device_guard, interpreting

MAX_GRID0 = 2 ** 31 - 1  # CUDA's limit on gridDim.x (gridDim.y and .z: 65535)


@triton.jit
def _adam_at(p_ptr, g_ptr, m_ptr, v_ptr, offs, ok, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, bc1, bc2, eps,
             weight_decay, decay_factor, L2_DECAY: tl.constexpr, DECOUPLED: tl.constexpr):
    """The step on the elements at offs where ok: load p, g, m, v, update in fp32 registers, store
    p, m, v back in their own dtypes (nothing is stored where ok is False)."""
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


@triton.jit
def _masked_adam_kernel(
    p_ptr, g_ptr, m_ptr, v_ptr, packed_ptr,
    N, K, WORDS, K_TILES,
    lr, beta1, one_minus_beta1, beta2, one_minus_beta2, bc1, bc2, eps, weight_decay, decay_factor,
    HAS_MASK: tl.constexpr, L2_DECAY: tl.constexpr, DECOUPLED: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    rn = (pid // K_TILES) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = (pid % K_TILES) * BLOCK_K + tl.arange(0, BLOCK_K)
    ok = (rn < N)[:, None] & (rk < K)[None, :]
    n64 = rn.to(tl.int64)[:, None]
    if HAS_MASK:
        word = tl.load(packed_ptr + n64 * WORDS + (rk // 32)[None, :], mask=ok, other=0)
        ok = ok & (((word >> (rk % 32)[None, :]) & 1) != 0)
    _adam_at(p_ptr, g_ptr, m_ptr, v_ptr, n64 * K + rk[None, :], ok, lr, beta1, one_minus_beta1, beta2,
             one_minus_beta2, bc1, bc2, eps, weight_decay, decay_factor, L2_DECAY, DECOUPLED)


@triton.jit
def _adam_flat_kernel(
    p_ptr, g_ptr, m_ptr, v_ptr, NUMEL,
    lr, beta1, one_minus_beta1, beta2, one_minus_beta2, bc1, bc2, eps, weight_decay, decay_factor,
    L2_DECAY: tl.constexpr, DECOUPLED: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    _adam_at(p_ptr, g_ptr, m_ptr, v_ptr, offs, offs < NUMEL, lr, beta1, one_minus_beta1, beta2, one_minus_beta2,
             bc1, bc2, eps, weight_decay, decay_factor, L2_DECAY, DECOUPLED)


def launch_config(n: int, k: int, masked: bool, interpret: bool = None) -> Dict[str, object]:
    """Kernel, 1-D grid and block sizes for a step on a [n, k] weight (masked: under a packed
    mask). Pure arithmetic, so the choice for any size can be checked without launching.

    Returns {"kernel": "masked" | "flat", "grid": (programs,), and BLOCK_N/BLOCK_K or BLOCK}.
    """
    if interpret is None:
        interpret = interpreting()
    if not masked:
        block = 1024 if interpret else 4096  # 4096 elements per program: memory-bound, bytes in flight
        programs = triton.cdiv(n * k, block)
        cfg = {"kernel": "flat", "grid": (programs,), "BLOCK": block}
    else:
        if interpret:
            bn, bk = 16, 64
        else:
            bk = min(triton.next_power_of_2(k), 256)
            bn = max(min(4096 // bk, triton.next_power_of_2(n)), 1)
        k_tiles = triton.cdiv(k, bk)
        programs = triton.cdiv(n, bn) * k_tiles
        cfg = {"kernel": "masked", "grid": (programs,), "BLOCK_N": bn, "BLOCK_K": bk, "K_TILES": k_tiles}
    if programs > MAX_GRID0:
        raise ValueError(f"param: {n * k} elements need {programs} programs, more than CUDA's grid limit {MAX_GRID0}")
    return cfg


def masked_adam_step_(
    param, grad, exp_avg, exp_avg_sq, packed, step, lr, beta1, beta2, eps, weight_decay=0.0, decoupled=False
) -> None:
    assert_contiguous(param=param, grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq, packed=packed)
    n, k = param.shape
    if n == 0 or k == 0:
        return
    cfg = launch_config(n, k, packed is not None)
    wd = float(weight_decay)
    scalars = (float(lr), float(beta1), 1.0 - float(beta1), float(beta2), 1.0 - float(beta2),
               1.0 - float(beta1) ** int(step), 1.0 - float(beta2) ** int(step), float(eps), wd, 1.0 - float(lr) * wd)
    flags = dict(L2_DECAY=bool(wd) and not decoupled, DECOUPLED=bool(wd) and bool(decoupled))
    with device_guard(param):
        if cfg["kernel"] == "flat":
            _adam_flat_kernel[cfg["grid"]](param, grad, exp_avg, exp_avg_sq, n * k, *scalars, **flags,
                                           BLOCK=cfg["BLOCK"], num_warps=4)
        else:
            _masked_adam_kernel[cfg["grid"]](
                param, grad, exp_avg, exp_avg_sq, packed, n, k, packed.shape[1], cfg["K_TILES"], *scalars,
                HAS_MASK=True, **flags, BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], num_warps=4,
            )
