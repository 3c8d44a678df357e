"""The case matrix every benchmark shares: shapes, dtypes, modes and variants of each op, and
why a case cannot run here. bench_ops.py, smoke.py and the pytest-benchmark suites all build
their cases from here (and their tensors with bench/_problems.py), so they measure the same code.

Variants
  masked_linear        dense (nn.Linear math, no mask: the floor), floatmask (F.linear(x, W*M)
                       with M a float tensor), prune (torch.nn.utils.prune.custom_from_mask),
                       nk:<backend> (ncs_kernels.masked_linear)
  nk:triton~materialize  Triton with NCS_TRITON_WEIGHT_MASK=materialize (W*M first, then GEMM)
  nk:cuda~fused        the cuda backend with set_cuda_gemm_strategy("fused") around every step
                       (own tiled GEMMs, mask fused, split-K dW); nk:cuda runs the process
                       default (NCS_CUDA_GEMM, else "cublas"), recorded in env.cuda_gemm_strategy
  cross_masked_linear  dense_unfused (bmm+cat, then a dense linear), unfused (bmm+cat, then the
                       float-mask linear), cross+nk:<backend> (bmm+cat, then ncs masked_linear:
                       the mask fused, the cross not), nk:<backend> (ncs cross_masked_linear)
  masked_adam          adam (torch.optim.Adam, foreach), adam_fused (fused=True, CUDA only),
                       nk:<backend> (ncs_kernels.masked_adam_step_, strict mask); nk:torch is
                       the reference implementation
Dtypes: fp32 (TF32 off), tf32 (fp32 tensors, TF32 matmuls allowed), bf16 (all tensors bf16).
Modes: eager, graph (fwd+bwd captured once with torch.cuda.graphs, then replayed; CUDA only).
"""
from __future__ import annotations

import contextlib
import os
from typing import Dict, List, Optional, Tuple

import torch

from bench import _env

OPS = ("masked_linear", "cross_masked_linear", "masked_adam")
DENSITY = 0.5
# the paper's shared MLP: 1680 -> 512 -> 256 -> 128, as (in_features K, out_features N)
LINEAR_SHAPES: Tuple[Tuple[int, int], ...] = ((1680, 512), (512, 256), (256, 128))
CROSS_SHAPE = {"F": 20, "d": 64, "N": 512}
# NCS_BENCH_TINY=1: shapes that run in milliseconds (the smoke test and script dry runs);
# K=70 is not a multiple of 32, so the last mask word is partial
TINY_LINEAR_SHAPES: Tuple[Tuple[int, int], ...] = ((70, 24), (24, 16))
TINY_CROSS_SHAPE = {"F": 3, "d": 4, "N": 16}
TINY_BATCH = 16

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}
MODES = ("eager", "graph")
LINEAR_BASELINES = ("dense", "floatmask", "prune")
CROSS_BASELINES = ("dense_unfused", "unfused")
ADAM_BASELINES = ("adam", "adam_fused")
# per op: (floor, what the ncs op replaces): ratios in tables are against these two
REFERENCE_VARIANTS = {
    "masked_linear": ("dense", "floatmask"),
    "cross_masked_linear": ("dense_unfused", "unfused"),
    "masked_adam": ("adam", "nk:torch"),
}
CUDA_GEMM_STRATEGIES = ("cublas", "fused")


def _check_op(op: str) -> None:
    if op not in OPS:
        raise ValueError(f"op: expected masked_linear, cross_masked_linear or masked_adam, got {op!r}")


# ---------------------------------------------------------------- batch, dtypes, modes, shapes


def default_batch(device: str) -> int:
    """NCS_BENCH_BATCH, else the paper's 4096 on CUDA and 1024 on CPU (2-core CI machines:
    B=4096 fp32 on CPU takes seconds per case; set NCS_BENCH_BATCH=4096 for paper figures)."""
    if _env.tiny():
        return TINY_BATCH
    env = os.environ.get("NCS_BENCH_BATCH")
    if env:
        b = int(env)
        if b < 1:
            raise ValueError(f"NCS_BENCH_BATCH: expected a positive batch size, got {env!r}")
        return b
    return 4096 if device == "cuda" else 1024


def dtype_names(device: str) -> Tuple[str, ...]:
    names = _env.env_list("NCS_BENCH_DTYPES", DTYPES, f"names from {tuple(DTYPES)}")
    if names is not None:
        return names
    return ("fp32", "tf32", "bf16") if device == "cuda" else ("fp32",)


def modes(device: str) -> Tuple[str, ...]:
    names = _env.env_list("NCS_BENCH_MODES", MODES, "eager and/or graph")
    if names is not None:
        return names
    return MODES if device == "cuda" else ("eager",)


def linear_shapes(batch: int) -> List[Dict[str, int]]:
    shapes = TINY_LINEAR_SHAPES if _env.tiny() else LINEAR_SHAPES
    return [{"B": batch, "K": k, "N": n} for k, n in shapes]


def cross_shape(batch: int) -> Dict[str, int]:
    return {"B": batch, **(TINY_CROSS_SHAPE if _env.tiny() else CROSS_SHAPE)}


def adam_shapes() -> List[Dict[str, int]]:
    return [{"K": k, "N": n} for k, n in (TINY_LINEAR_SHAPES if _env.tiny() else LINEAR_SHAPES)]


def op_shapes(op: str, batch: int) -> List[Dict[str, int]]:
    """Every benchmark shape of `op` (the first is the one smoke.py checks)."""
    _check_op(op)
    if op == "masked_linear":
        return linear_shapes(batch)
    if op == "cross_masked_linear":
        return [cross_shape(batch)]
    return adam_shapes()


def shape_id(shape: Dict[str, int]) -> str:
    return "-".join(f"{k}{v}" for k, v in shape.items())


# ---------------------------------------------------------------- variants


def variants(op: str, device: str) -> List[str]:
    """Every variant of `op`, available here or not (unavailable ones are skipped with a reason)."""
    _check_op(op)
    names = _env.backend_names()
    if op == "masked_linear":
        base = list(LINEAR_BASELINES)
    elif op == "cross_masked_linear":
        base = list(CROSS_BASELINES) + [f"cross+nk:{b}" for b in names]
    else:
        base = list(ADAM_BASELINES)
    out = base + [f"nk:{b}" for b in names]
    if op != "masked_adam":
        # the Triton backend's other way of applying the mask (W*M written once per call, then an
        # unmasked GEMM), selected per call by NCS_TRITON_WEIGHT_MASK: DESIGN asks to time both
        out.append("nk:triton~materialize")
        # the cuda backend's own fused GEMMs against its cuBLAS default (set_cuda_gemm_strategy)
        out.append("nk:cuda~fused")
    return out


def variant_backend(variant: str) -> Optional[str]:
    """The ncs backend a variant runs ("nk:cpu" -> "cpu", "nk:triton~materialize" -> "triton"),
    None for the plain-PyTorch baselines."""
    return variant.split(":", 1)[1].split("~", 1)[0] if ":" in variant else None


def variant_env(variant: str) -> Dict[str, str]:
    """Environment a variant runs under (read per call by the backend)."""
    if variant.endswith("~materialize"):
        return {"NCS_TRITON_WEIGHT_MASK": "materialize"}
    return {}


def variant_cuda_gemm(variant: str) -> Optional[str]:
    """The cuda GEMM strategy a variant pins ("nk:cuda~fused" -> "fused"), None for the default."""
    if variant_backend(variant) == "cuda" and "~" in variant:
        s = variant.split("~", 1)[1]
        if s in CUDA_GEMM_STRATEGIES:
            return s
    return None


def why_skip(op: str, variant: str, device: str, dtype_name: str, mode: str) -> Optional[str]:
    """None if this case can run here, else a reason (used as the pytest skip message)."""
    if device == "cuda" and not torch.cuda.is_available():
        return "no CUDA device is available"
    if mode == "graph" and device != "cuda":
        return "CUDA graphs need a CUDA device"
    if dtype_name == "tf32" and device != "cuda":
        return "TF32 is a CUDA matmul mode"
    if op == "masked_adam" and dtype_name != "fp32":
        return "the optimizer step is benchmarked on fp32 (master) weights only"
    if variant == "adam_fused" and device != "cuda":
        return "fused Adam is benchmarked on CUDA only"
    be = variant_backend(variant)
    if be is None:
        return None
    why = _env.why_unavailable(be, device, DTYPES[dtype_name])
    if why is None and be == "triton" and device == "cpu" and not (_env.tiny() or _env.env_flag("NCS_BENCH_INTERPRET")):
        why = "the Triton interpreter (TRITON_INTERPRET=1) is a correctness tool, not a speed target; set NCS_BENCH_INTERPRET=1 to time it anyway"
    return why


def cases(op: str, device: str) -> List[Tuple[Dict[str, int], str, str, str]]:
    """(shape, dtype_name, mode, variant) of every case of `op` on `device`, unavailable
    backends included (they skip with the reason why_skip gives)."""
    return [(shape, dt, mode, v) for shape in op_shapes(op, default_batch(device))
            for dt in dtype_names(device) for mode in modes(device) for v in variants(op, device)]


@contextlib.contextmanager
def precision(dtype_name: str):
    """TF32 matmuls on for "tf32", off otherwise; restored afterwards."""
    prev = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    on = dtype_name == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev
