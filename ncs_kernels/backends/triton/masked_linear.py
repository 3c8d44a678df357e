"""Triton kernels for y = x (W ⊙ M)^T + b and its backward, with M bit-packed (int32 words).

Two GEMM kernels serve both masked_linear and cross_masked_linear:

  _masked_mm_kernel   C[m, p] = sum_r A[m, r] * Wop[r, p], Wop = (W ⊙ M) read in either
                      orientation. Forward: A = x, Wop[r=k, p=n] = W[n, k]; dx: A = dy,
                      Wop[r=n, p=k] = W[n, k]. The mask bit of every W element of the tile is
                      unpacked from packed[n, k // 32] in the main loop. Optional: A rebuilt from
                      two sources (the feature cross: Gram columns, then flat emb), C written to
                      two destinations (dG, dE), bias in the epilogue.
  _dw_kernel          dW[n, k] = sum_b dy[b, n] * X[b, k], the mask applied in the epilogue
                      (exact 0 where the bit is 0), split over the batch when there are few
                      output tiles; X may be rebuilt from the two cross sources as well.
  _sum_splits_kernel  sums the fp32 split partials in a fixed order and casts (deterministic,
                      unlike atomics).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    assert_contiguous, device_guard, dot_precision, dw_config, interpreting, mm_config, sm_count, weight_mask_mode,
)


@triton.jit
def _load_a_tile(a_ptr, a2_ptr, rm, rr, M, R, FF, A_CROSS: tl.constexpr):
    """A[rm, rr] as a [BLOCK_M, BLOCK_R] tile; with A_CROSS, columns < FF come from G [M, FF]
    and the rest from E [M, R - FF] (the crossed input is never materialised)."""
    row_ok = (rm < M)[:, None]
    rows = rm.to(tl.int64)[:, None]
    if A_CROSS:
        in_g = rr < FF
        in_e = (rr >= FF) & (rr < R)
        g = tl.load(a_ptr + rows * FF + rr[None, :], mask=row_ok & in_g[None, :], other=0.0)
        e_col = tl.maximum(rr - FF, 0)
        e = tl.load(a2_ptr + rows * (R - FF) + e_col[None, :], mask=row_ok & in_e[None, :], other=0.0)
        return tl.where(in_g[None, :], g, e)
    else:
        return tl.load(a_ptr + rows * R + rr[None, :], mask=row_ok & (rr < R)[None, :], other=0.0)


@triton.jit
def _grouped_tile(pid, num_rows, num_cols, GROUP: tl.constexpr):
    """(row tile, column tile) of program `pid` in grouped launch order: GROUP row tiles share each
    column tile (of W, or of x for dW) while it is in L2."""
    per_group = GROUP * num_cols
    first = (pid // per_group) * GROUP
    group_size = tl.minimum(num_rows - first, GROUP)
    return first + (pid % per_group) % group_size, (pid % per_group) // group_size


@triton.jit
def _masked_mm_kernel(
    a_ptr, a2_ptr, w_ptr, p_ptr, bias_ptr, c_ptr, c2_ptr,
    M, P, R, K, WORDS, FF,
    W_T: tl.constexpr,       # True: Wop[r, p] = W[p, r] (forward); False: Wop[r, p] = W[r, p] (dx)
    A_CROSS: tl.constexpr,
    C_CROSS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    MASK_W: tl.constexpr,    # False: W was already multiplied by the mask (materialised mode)
    BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr, GROUP_M: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    pid_m, pid_p = _grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(P, BLOCK_P), GROUP_M)

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rp = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = rp < P
    acc = tl.zeros((BLOCK_M, BLOCK_P), dtype=tl.float32)
    for r0 in range(0, R, BLOCK_R):
        rr = r0 + tl.arange(0, BLOCK_R)
        a = _load_a_tile(a_ptr, a2_ptr, rm, rr, M, R, FF, A_CROSS)
        ok = (rr < R)[:, None] & p_ok[None, :]
        if W_T:
            n = rp[None, :]
            k = rr[:, None]
        else:
            n = rr[:, None]
            k = rp[None, :]
        n64 = n.to(tl.int64)
        w = tl.load(w_ptr + n64 * K + k, mask=ok, other=0.0)
        if MASK_W:
            # load each packed word once ([BLOCK_R/32, BLOCK_P] or [BLOCK_R, BLOCK_P/32]) and
            # broadcast it over its 32 columns in registers, instead of gathering it per element
            if W_T:
                wr = r0 // 32 + tl.arange(0, BLOCK_R // 32)
                words = tl.load(p_ptr + rp.to(tl.int64)[None, :] * WORDS + wr[:, None],
                                mask=(wr < WORDS)[:, None] & p_ok[None, :], other=0)
                words = tl.reshape(tl.broadcast_to(words[:, None, :], (BLOCK_R // 32, 32, BLOCK_P)),
                                   (BLOCK_R, BLOCK_P))
            else:
                wp = pid_p * (BLOCK_P // 32) + tl.arange(0, BLOCK_P // 32)
                words = tl.load(p_ptr + rr.to(tl.int64)[:, None] * WORDS + wp[None, :],
                                mask=(rr < R)[:, None] & (wp < WORDS)[None, :], other=0)
                words = tl.reshape(tl.broadcast_to(words[:, :, None], (BLOCK_R, BLOCK_P // 32, 32)),
                                   (BLOCK_R, BLOCK_P))
            keep = ((words >> (k % 32)) & 1) != 0
            w = tl.where(keep, w, tl.zeros_like(w))
        acc = tl.dot(a, w, acc, input_precision=DOT_PREC)

    if HAS_BIAS:
        bias = tl.load(bias_ptr + rp, mask=p_ok, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    out = acc.to(c_ptr.dtype.element_ty)
    m_ok = (rm < M)[:, None]
    rows = rm.to(tl.int64)[:, None]
    if C_CROSS:
        # dX of the crossed input: Gram columns go to dG [M, FF], the rest are d(emb) itself
        in_g = rp < FF
        in_e = (rp >= FF) & p_ok
        tl.store(c_ptr + rows * FF + rp[None, :], out, mask=m_ok & in_g[None, :])
        e_col = tl.maximum(rp - FF, 0)
        tl.store(c2_ptr + rows * (P - FF) + e_col[None, :], out, mask=m_ok & in_e[None, :])
    else:
        tl.store(c_ptr + rows * P + rp[None, :], out, mask=m_ok & p_ok[None, :])


@triton.jit
def _dw_kernel(
    dy_ptr, x_ptr, x2_ptr, p_ptr, out_ptr,
    B, N, K, WORDS, FF, ROWS_PER_SPLIT,
    X_CROSS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr, GROUP_N: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    split = tl.program_id(1)
    pid_n, pid_k = _grouped_tile(tl.program_id(0), tl.cdiv(N, BLOCK_N), tl.cdiv(K, BLOCK_K), GROUP_N)

    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    n_ok = rn < N
    k_ok = rk < K
    b_start = split * ROWS_PER_SPLIT
    b_end = tl.minimum(b_start + ROWS_PER_SPLIT, B)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for b0 in range(b_start, b_end, BLOCK_B):
        rb = b0 + tl.arange(0, BLOCK_B)
        b_ok = rb < b_end
        rb64 = rb.to(tl.int64)[:, None]
        dy = tl.load(dy_ptr + rb64 * N + rn[None, :], mask=b_ok[:, None] & n_ok[None, :], other=0.0)
        x = _load_a_tile(x_ptr, x2_ptr, rb, rk, b_end, K, FF, X_CROSS)
        acc = tl.dot(tl.trans(dy), x, acc, input_precision=DOT_PREC)

    # masked gradient: exact 0 where the bit is 0, decided per element in the epilogue only
    ok = n_ok[:, None] & k_ok[None, :]
    n64 = rn.to(tl.int64)[:, None]
    word = tl.load(p_ptr + n64 * WORDS + (rk // 32)[None, :], mask=ok, other=0)
    keep = ((word >> (rk % 32)[None, :]) & 1) != 0
    acc = tl.where(keep, acc, 0.0)
    out_base = out_ptr + split.to(tl.int64) * N * K
    tl.store(out_base + n64 * K + rk[None, :], acc.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _apply_mask_kernel(w_ptr, p_ptr, out_ptr, N, K, WORDS, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    ok = (rn < N)[:, None] & (rk < K)[None, :]
    n64 = rn.to(tl.int64)[:, None]
    w = tl.load(w_ptr + n64 * K + rk[None, :], mask=ok, other=0.0)
    word = tl.load(p_ptr + n64 * WORDS + (rk // 32)[None, :], mask=ok, other=0)
    keep = ((word >> (rk % 32)[None, :]) & 1) != 0
    tl.store(out_ptr + n64 * K + rk[None, :], tl.where(keep, w, tl.zeros_like(w)), mask=ok)


@triton.jit
def _split_offset(s, numel):
    """Offset of split s in a [SPLITS, numel] buffer, in int64: s * numel in int32 overflows
    once SPLITS * N * K exceeds 2**31 - 1 (e.g. 16 splits of a 512 x 262144 dW)."""
    return tl.cast(s, tl.int64) * numel


@triton.jit
def _sum_splits_kernel(part_ptr, out_ptr, NUMEL, SPLITS, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < NUMEL
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(0, SPLITS):  # fixed order: bitwise reproducible
        acc += tl.load(part_ptr + _split_offset(s, NUMEL) + offs, mask=ok, other=0.0)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=ok)


# ------------------------------------------------------------------------------------------
# launchers (inputs are validated by the op layer; only contiguity is asserted here). Every
# launch runs under device_guard(tensor): Triton launches on the current CUDA device.

def apply_mask(weight, packed):
    """W ⊙ M in W's dtype (one elementwise pass; the materialised alternative to unpacking bits
    in every M tile of the GEMM main loop)."""
    n, k = weight.shape
    out = torch.empty_like(weight)
    bn, bk = (16, 64) if interpreting() else (16, 256)
    with device_guard(weight):
        _apply_mask_kernel[(triton.cdiv(n, bn), triton.cdiv(k, bk))](
            weight, packed, out, n, k, packed.shape[1], BLOCK_N=bn, BLOCK_K=bk, num_warps=4
        )
    return out


def launch_masked_mm(a, weight, packed, out, *, w_t, bias=None, a2=None, out2=None, ff=0, r=None, p=None):
    """out[M, P] = A[M, R] @ Wop[R, P] (see _masked_mm_kernel). a2/out2/ff select the cross
    loader/writer; r and p are the logical widths when A or C are split in two."""
    n, k = weight.shape
    fused = weight_mask_mode() == "fused"
    if not fused:
        weight = apply_mask(weight, packed)
    m = a.shape[0]
    r = int(r if r is not None else a.shape[1])
    p = int(p if p is not None else out.shape[1])
    cfg = mm_config(m, p, weight.dtype, sm_count(weight))
    # the word broadcast in the main loop needs whole words per tile along K
    assert cfg.block_r % 32 == 0 and cfg.block_p % 32 == 0, cfg
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(p, cfg.block_p),)
    with device_guard(out):
        _masked_mm_kernel[grid](
            a, a2 if a2 is not None else a, weight, packed, bias if bias is not None else weight,
            out, out2 if out2 is not None else out,
            m, p, r, k, packed.shape[1], ff,
            W_T=w_t, A_CROSS=a2 is not None, C_CROSS=out2 is not None, HAS_BIAS=bias is not None, MASK_W=fused,
            BLOCK_M=cfg.block_m, BLOCK_P=cfg.block_p, BLOCK_R=cfg.block_r, GROUP_M=cfg.group_m,
            DOT_PREC=dot_precision(weight.dtype), num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    return out


def launch_masked_dw(dy, x, packed, n, k, *, x2=None, ff=0, splits=None):
    """dW [n, k] = (dy^T X) ⊙ M in dy's dtype; X = x, or the cross rebuilt from (G=x, E=x2)."""
    b = dy.shape[0]
    cfg = dw_config(b, n, k, dy.dtype, sm_count(dy), splits)
    out = torch.empty(n, k, dtype=dy.dtype, device=dy.device)
    if b == 0:
        return out.zero_()
    direct = cfg.splits == 1
    target = out if direct else torch.empty(cfg.splits, n, k, dtype=torch.float32, device=dy.device)
    grid = (triton.cdiv(n, cfg.block_n) * triton.cdiv(k, cfg.block_k), cfg.splits)
    with device_guard(dy):
        _dw_kernel[grid](
            dy, x, x2 if x2 is not None else x, packed, target,
            b, n, k, packed.shape[1], ff, cfg.rows_per_split,
            X_CROSS=x2 is not None,
            BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, BLOCK_B=cfg.block_b, GROUP_N=cfg.group_n,
            DOT_PREC=dot_precision(dy.dtype), num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        if not direct:
            numel = n * k
            block = 1024
            _sum_splits_kernel[(triton.cdiv(numel, block),)](target, out, numel, cfg.splits, BLOCK=block, num_warps=4)
    return out


def masked_linear_forward(x, weight, packed, bias=None):
    assert_contiguous(x=x, weight=weight, packed=packed, bias=bias)
    b, k = x.shape
    n = weight.shape[0]
    if b == 0 or n == 0 or k == 0:
        y = torch.zeros(b, n, dtype=x.dtype, device=x.device)
        return y + bias if bias is not None else y
    y = torch.empty(b, n, dtype=x.dtype, device=x.device)
    return launch_masked_mm(x, weight, packed, y, w_t=True, bias=bias)


def masked_linear_backward(dy, x, weight, packed, need_x=True, need_w=True, need_b=True, *, splits=None):
    assert_contiguous(dy=dy, x=x, weight=weight, packed=packed)
    b, k = x.shape
    n = weight.shape[0]
    dx = dw = db = None
    if need_x:
        dx = torch.empty(b, k, dtype=x.dtype, device=x.device)
        if b == 0 or k == 0 or n == 0:
            dx.zero_()
        else:
            launch_masked_mm(dy, weight, packed, dx, w_t=False)
    if need_w:
        if n == 0 or k == 0:
            dw = torch.zeros(n, k, dtype=weight.dtype, device=weight.device)
        else:
            dw = launch_masked_dw(dy, x, packed, n, k, splits=splits)
    if need_b:
        db = dy.sum(0)
    return dx, dw, db
