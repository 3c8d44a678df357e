"""Shared launcher helpers for the Triton kernels: interpreter detection, dot precision,
block-size choice by shape, and the SM count used to size split-K.

Block sizes are chosen by shape rather than autotuned: the heuristic is deterministic, cheap on
the first call, and the interpreter (which would run every autotune config) takes the same code
path as a GPU, only with one small fixed tile.
"""
from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch
import triton


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def dot_precision(dtype: torch.dtype) -> str:
    """input_precision for tl.dot.

    fp32: "ieee" (exact fp32) unless the user opted into TF32 for matmuls, exactly as torch does;
    the interpreter only does exact fp32. fp16/bf16: the value is ignored by the lowering, so pass
    the default ("tf32") to stay on the plain tensor-core path.
    """
    if dtype == torch.float32:
        if not interpreting() and torch.backends.cuda.matmul.allow_tf32:
            return "tf32"
        return "ieee"
    return "tf32"


WEIGHT_MASK_MODES = ("fused", "materialize")


def weight_mask_mode() -> str:
    """How forward and dx apply the mask to W: "fused" unpacks the bits of each W tile inside the
    GEMM main loop (no extra memory, work repeated per M tile); "materialize" writes W ⊙ M once
    per call and runs an unmasked GEMM. Read per call from NCS_TRITON_WEIGHT_MASK so benchmarks
    can compare both; which is faster depends on the GPU and dtype."""
    mode = os.environ.get("NCS_TRITON_WEIGHT_MASK", "fused") or "fused"
    if mode not in WEIGHT_MASK_MODES:
        raise ValueError(f"NCS_TRITON_WEIGHT_MASK: expected one of {WEIGHT_MASK_MODES}, got {mode!r}")
    return mode


def device_guard(t: torch.Tensor):
    """Context manager that makes t's device current for a launch: Triton launches on (and
    queries) the *current* CUDA device, so a kernel on tensors of cuda:1 while cuda:0 is current
    would otherwise run on the wrong device. A no-op for CPU tensors (the interpreter)."""
    if t.device.type != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.device(t.device)


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def sm_count(t: torch.Tensor) -> int:
    """Number of SMs of t's device; a small stand-in under the interpreter so that split-K and
    tile-count heuristics are still exercised by CPU tests."""
    if t.device.type != "cuda":
        return 4
    return _sm_count(t.device.index if t.device.index is not None else torch.cuda.current_device())


@dataclass(frozen=True)
class MMConfig:
    block_m: int
    block_p: int
    block_r: int
    num_warps: int
    num_stages: int
    group_m: int = 8


def mm_config(m: int, p: int, dtype: torch.dtype, sms: int) -> MMConfig:
    """Tile for an output [m, p]: the largest tile that still gives about one wave of programs."""
    if interpreting():
        # numpy runs each program; one small tile keeps edge cases (several tiles per dim) covered
        return MMConfig(16, 32, 32, 4, 1)
    br = 32 if dtype == torch.float32 else 64
    cands = ((128, 128, 8), (128, 64, 4), (64, 64, 4))
    for bm, bp, warps in cands:
        if triton.cdiv(m, bm) * triton.cdiv(p, bp) >= 0.75 * sms:
            return MMConfig(bm, bp, br, warps, 3)
    bm, bp, warps = cands[-1]
    return MMConfig(bm, bp, br, warps, 3)


@dataclass(frozen=True)
class DWConfig:
    block_n: int
    block_k: int
    block_b: int
    num_warps: int
    num_stages: int
    splits: int
    rows_per_split: int
    group_n: int = 8


def dw_config(b: int, n: int, k: int, dtype: torch.dtype, sms: int, splits=None) -> DWConfig:
    """Tile and batch split for dW [n, k] = dy^T x (reduction over the batch b).

    dW has few output tiles at the paper's shapes (512 x 1680 is 56 tiles of 128 x 128 on a
    132-SM H200), so the batch is split until there is about one wave of programs; each split
    writes an fp32 partial and a second pass sums them in a fixed order (deterministic).
    """
    if interpreting():
        bn, bk, bb, warps, stages, min_rows = 32, 32, 32, 4, 1, 32
    else:
        bb = 32 if dtype == torch.float32 else 64
        bn = 128 if n > 64 else 64
        bk = 128 if k > 64 else 64
        warps = 8 if bn * bk >= 128 * 128 else 4
        stages, min_rows = 3, 256
    tiles = triton.cdiv(n, bn) * triton.cdiv(k, bk)
    if splits is None:
        splits = max(1, min(sms // max(tiles, 1), triton.cdiv(b, min_rows), 16))
    splits = max(1, min(int(splits), max(b, 1)))
    rows = triton.cdiv(triton.cdiv(max(b, 1), splits), bb) * bb
    splits = triton.cdiv(max(b, 1), rows)  # no empty splits after rounding rows up to the block
    return DWConfig(bn, bk, bb, warps, stages, splits, rows)


def assert_contiguous(**tensors) -> None:
    for name, t in tensors.items():
        if t is not None:
            assert t.is_contiguous(), f"{name}: the Triton backend expects a contiguous tensor"
