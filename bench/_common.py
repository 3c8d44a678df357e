"""What every benchmark shares: the problems (one per op and variant), timing, memory, environment.

The pytest-benchmark suites and bench_ops.py build their cases from here, so both measure exactly
the same code. A *problem* is one op at one shape, dtype and variant, with its tensors allocated
once; `Problem.eager_step()` runs one forward+backward (or one optimizer step) without syncing.

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
import datetime as _dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]

try:  # an installed (or editable) ncs_kernels wins; else run from the checkout
    import ncs_kernels as nk  # noqa: F401
except ImportError:  # pragma: no cover - depends on how the repo was set up
    for _p in (REPO / "python", REPO):
        if str(_p) not in sys.path:
            sys.path.insert(0, str(_p))
    import ncs_kernels as nk  # noqa: F401

import torch
import torch.nn.functional as F

from ncs_kernels import _backends

if os.environ.get("NCS_BENCH_THREADS"):
    # CPU timings on a shared or small machine swing wildly with OpenMP oversubscription
    torch.set_num_threads(int(os.environ["NCS_BENCH_THREADS"]))

# ---------------------------------------------------------------- shapes and the case matrix

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
LINEAR_BASELINES = ("dense", "floatmask", "prune")
CROSS_BASELINES = ("dense_unfused", "unfused")
ADAM_BASELINES = ("adam", "adam_fused")
# per op: (floor, what the ncs op replaces): ratios in tables are against these two
REFERENCE_VARIANTS = {
    "masked_linear": ("dense", "floatmask"),
    "cross_masked_linear": ("dense_unfused", "unfused"),
    "masked_adam": ("adam", "nk:torch"),
}


def write_json(path: Optional[Path], doc: Dict) -> None:
    """Write a results document atomically (tmp + os.replace): a reader, or a kill, never sees
    half a file, so a benchmark cut short still leaves its last complete JSON. None: no-op."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() not in ("", "0", "false", "no")


def tiny() -> bool:
    return env_flag("NCS_BENCH_TINY")


def bench_device() -> str:
    """NCS_BENCH_DEVICE (cpu|cuda), else cuda when there is one."""
    want = os.environ.get("NCS_BENCH_DEVICE", "auto").strip().lower() or "auto"
    if want == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if want not in ("cpu", "cuda"):
        raise ValueError(f"NCS_BENCH_DEVICE: expected auto, cpu or cuda, got {want!r}")
    return want


def default_batch(device: str) -> int:
    """NCS_BENCH_BATCH, else the paper's 4096 on CUDA and 1024 on CPU (2-core CI machines:
    B=4096 fp32 on CPU takes seconds per case; set NCS_BENCH_BATCH=4096 for paper figures)."""
    if tiny():
        return TINY_BATCH
    env = os.environ.get("NCS_BENCH_BATCH")
    if env:
        b = int(env)
        if b < 1:
            raise ValueError(f"NCS_BENCH_BATCH: expected a positive batch size, got {env!r}")
        return b
    return 4096 if device == "cuda" else 1024


def dtype_names(device: str) -> Tuple[str, ...]:
    env = os.environ.get("NCS_BENCH_DTYPES")
    if env:
        names = tuple(s.strip() for s in env.split(",") if s.strip())
        bad = [n for n in names if n not in DTYPES]
        if bad:
            raise ValueError(f"NCS_BENCH_DTYPES: expected names from {tuple(DTYPES)}, got {bad}")
        return names
    return ("fp32", "tf32", "bf16") if device == "cuda" else ("fp32",)


def modes(device: str) -> Tuple[str, ...]:
    env = os.environ.get("NCS_BENCH_MODES")
    if env:
        names = tuple(s.strip() for s in env.split(",") if s.strip())
        bad = [n for n in names if n not in ("eager", "graph")]
        if bad:
            raise ValueError(f"NCS_BENCH_MODES: expected eager and/or graph, got {bad}")
        return names
    return ("eager", "graph") if device == "cuda" else ("eager",)


def linear_shapes(batch: int) -> List[Dict[str, int]]:
    shapes = TINY_LINEAR_SHAPES if tiny() else LINEAR_SHAPES
    return [{"B": batch, "K": k, "N": n} for k, n in shapes]


def cross_shape(batch: int) -> Dict[str, int]:
    return {"B": batch, **(TINY_CROSS_SHAPE if tiny() else CROSS_SHAPE)}


def adam_shapes() -> List[Dict[str, int]]:
    return [{"K": k, "N": n} for k, n in (TINY_LINEAR_SHAPES if tiny() else LINEAR_SHAPES)]


def shape_id(shape: Dict[str, int]) -> str:
    return "-".join(f"{k}{v}" for k, v in shape.items())


def variants(op: str, device: str) -> List[str]:
    """Every variant of `op`, available here or not (unavailable ones are skipped with a reason)."""
    if op == "masked_linear":
        base = list(LINEAR_BASELINES)
    elif op == "cross_masked_linear":
        base = list(CROSS_BASELINES) + [f"cross+nk:{b}" for b in _backends.BACKENDS]
    elif op == "masked_adam":
        base = list(ADAM_BASELINES)
    else:
        raise ValueError(f"op: expected masked_linear, cross_masked_linear or masked_adam, got {op!r}")
    out = base + [f"nk:{b}" for b in _backends.BACKENDS]
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


CUDA_GEMM_STRATEGIES = ("cublas", "fused")


def variant_cuda_gemm(variant: str) -> Optional[str]:
    """The cuda GEMM strategy a variant pins ("nk:cuda~fused" -> "fused"), None for the default."""
    if variant_backend(variant) == "cuda" and "~" in variant:
        s = variant.split("~", 1)[1]
        if s in CUDA_GEMM_STRATEGIES:
            return s
    return None


def cuda_gemm_strategy() -> Optional[str]:
    """The cuda backend's current GEMM strategy, None when _C has no CUDA or no switch."""
    ext = _backends.native()
    if ext is None or not getattr(ext, "has_cuda", lambda: False)():
        return None
    get = getattr(ext, "cuda_gemm_strategy", None)
    return get() if get is not None else None


@contextlib.contextmanager
def scoped_cuda_gemm(strategy: Optional[str]):
    """set_cuda_gemm_strategy(strategy) for the block, the previous strategy restored after."""
    if strategy is None:
        yield
        return
    ext = _backends.native()
    prev = ext.cuda_gemm_strategy()
    ext.set_cuda_gemm_strategy(strategy)
    try:
        yield
    finally:
        ext.set_cuda_gemm_strategy(prev)


@contextlib.contextmanager
def scoped_env(env: Dict[str, str]):
    if not env:
        yield
        return
    prev = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in prev.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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
    why = _backends.why_unavailable(be, device)
    if why is None:
        dtype_ok = getattr(_backends, "_dtype_ok", None)
        if dtype_ok is not None:
            why = dtype_ok(be, device, DTYPES[dtype_name])
    if why is None and variant_cuda_gemm(variant) is not None:
        ext = _backends.native()
        if not hasattr(ext, "set_cuda_gemm_strategy"):
            why = "ncs_kernels._C does not bind set_cuda_gemm_strategy"
    if why is None and variant.endswith("~materialize"):
        try:
            from ncs_kernels.backends.triton import _common as tc

            tc.weight_mask_mode  # noqa: B018 - only its existence matters
        except (ImportError, AttributeError) as e:
            why = f"this Triton backend has no NCS_TRITON_WEIGHT_MASK switch ({type(e).__name__})"
    if why is None and be == "triton" and device == "cpu" and not (tiny() or env_flag("NCS_BENCH_INTERPRET")):
        why = "the Triton interpreter (TRITON_INTERPRET=1) is a correctness tool, not a speed target; set NCS_BENCH_INTERPRET=1 to time it anyway"
    return why


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


# ---------------------------------------------------------------- problems


@dataclass
class Problem:
    """One op at one shape/dtype/variant, tensors allocated once.

    forward()  builds the autograd graph and returns the output (None for optimizer steps)
    dy         the upstream gradient fed to backward
    update()   the whole step, for optimizer problems
    leaves     tensors whose .grad is cleared before each eager step (so grads are written, not
               accumulated, exactly as a training step with zero_grad(set_to_none=True))
    owned      tensors that exist before the step (inputs, parameters, masks): not counted as
               activation memory when they are saved for backward
    """

    forward: Optional[Callable[[], torch.Tensor]] = None
    dy: Optional[torch.Tensor] = None
    update: Optional[Callable[[], None]] = None
    leaves: List[torch.Tensor] = field(default_factory=list)
    owned: List[torch.Tensor] = field(default_factory=list)
    flop: float = 0.0  # GEMM flops of one step, for TFLOP/s columns
    keepalive: list = field(default_factory=list)
    env: Dict[str, str] = field(default_factory=dict)  # set around every step (see variant_env)
    cuda_gemm: Optional[str] = None  # set_cuda_gemm_strategy around every step (see variant_cuda_gemm)

    def step(self) -> None:
        with scoped_env(self.env), scoped_cuda_gemm(self.cuda_gemm):
            if self.update is not None:
                self.update()
                return
            self.forward().backward(self.dy)

    def clear_grads(self) -> None:
        for t in self.leaves:
            t.grad = None

    def eager_step(self) -> None:
        self.clear_grads()
        self.step()


def _randn(shape, gen, device, dtype, scale=1.0):
    return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)


def _mask(n: int, k: int, gen, device) -> torch.Tensor:
    return (torch.rand(n, k, generator=gen) < DENSITY).to(device)


def make_problem(op: str, variant: str, shape: Dict[str, int], dtype_name: str, device: str,
                 mode: str = "eager", seed: int = 0) -> Problem:
    """Allocate the tensors of one case. Raises if the variant cannot run (call why_skip first)."""
    dtype = DTYPES[dtype_name]
    gen = torch.Generator().manual_seed(seed)
    be = variant_backend(variant)
    base = variant.split("~", 1)[0]  # the tensors and call are those of the plain variant
    if op == "masked_linear":
        prob = _linear_problem(base, be, shape, dtype, device, gen)
    elif op == "cross_masked_linear":
        prob = _cross_problem(base, be, shape, dtype, device, gen)
    elif op == "masked_adam":
        prob = _adam_problem(base, be, shape, dtype, device, gen, capturable=(mode == "graph"))
    else:
        raise ValueError(f"op: expected masked_linear, cross_masked_linear or masked_adam, got {op!r}")
    prob.env = variant_env(variant)
    prob.cuda_gemm = variant_cuda_gemm(variant)
    return prob


def _linear_problem(variant, be, shape, dtype, device, gen) -> Problem:
    b, k, n = shape["B"], shape["K"], shape["N"]
    x = _randn((b, k), gen, device, dtype).requires_grad_()
    w = _randn((n, k), gen, device, dtype, scale=k ** -0.5).requires_grad_()
    bias = _randn((n,), gen, device, dtype, scale=0.1).requires_grad_()
    mask = _mask(n, k, gen, device)
    dy = _randn((b, n), gen, device, dtype)
    flop = 6.0 * b * k * n  # y, dx and dW GEMMs
    if variant == "dense":
        return Problem(lambda: F.linear(x, w, bias), dy, leaves=[x, w, bias], owned=[x, w, bias], flop=flop)
    if variant == "floatmask":
        mf = mask.to(dtype)
        return Problem(lambda: F.linear(x, w * mf, bias), dy, leaves=[x, w, bias], owned=[x, w, bias, mf], flop=flop)
    if variant == "prune":
        import torch.nn.utils.prune as prune

        lin = torch.nn.Linear(k, n, device=device, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(bias)
        prune.custom_from_mask(lin, "weight", mask)
        return Problem(lambda: lin(x), dy, leaves=[x, lin.weight_orig, lin.bias],
                       owned=[x, lin.weight_orig, lin.bias, lin.weight_mask], flop=flop, keepalive=[lin])
    if be is not None and variant == f"nk:{be}":
        packed = nk.pack_mask(mask)
        return Problem(lambda: nk.masked_linear(x, w, packed, bias, backend=be), dy,
                       leaves=[x, w, bias], owned=[x, w, bias, packed], flop=flop)
    raise ValueError(f"variant: unknown masked_linear variant {variant!r}")


def _cross_problem(variant, be, shape, dtype, device, gen) -> Problem:
    b, f, d, n = shape["B"], shape["F"], shape["d"], shape["N"]
    k = f * f + f * d
    emb = _randn((b, f, d), gen, device, dtype, scale=0.3).requires_grad_()
    w = _randn((n, k), gen, device, dtype, scale=k ** -0.5).requires_grad_()
    bias = _randn((n,), gen, device, dtype, scale=0.1).requires_grad_()
    mask = _mask(n, k, gen, device)
    dy = _randn((b, n), gen, device, dtype)
    # the linear GEMMs plus the Gram bmm (forward) and its two backward bmm's
    flop = 6.0 * b * k * n + 6.0 * b * f * f * d
    common = dict(leaves=[emb, w, bias], flop=flop)
    if variant == "dense_unfused":
        return Problem(lambda: F.linear(nk.feature_cross(emb), w, bias), dy, owned=[emb, w, bias], **common)
    if variant == "unfused":
        mf = mask.to(dtype)
        return Problem(lambda: F.linear(nk.feature_cross(emb), w * mf, bias), dy, owned=[emb, w, bias, mf], **common)
    packed = nk.pack_mask(mask)
    if be is not None and variant == f"cross+nk:{be}":
        return Problem(lambda: nk.masked_linear(nk.feature_cross(emb), w, packed, bias, backend=be), dy,
                       owned=[emb, w, bias, packed], **common)
    if be is not None and variant == f"nk:{be}":
        return Problem(lambda: nk.cross_masked_linear(emb, w, packed, bias, backend=be), dy,
                       owned=[emb, w, bias, packed], **common)
    raise ValueError(f"variant: unknown cross_masked_linear variant {variant!r}")


def _adam_problem(variant, be, shape, dtype, device, gen, capturable: bool) -> Problem:
    k, n = shape["K"], shape["N"]
    p = _randn((n, k), gen, device, dtype, scale=k ** -0.5)
    g = _randn((n, k), gen, device, dtype, scale=1e-2)
    mask = _mask(n, k, gen, device)
    hp = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    if variant in ("adam", "adam_fused"):
        param = p.requires_grad_()
        param.grad = g
        kw = {"fused": True} if variant == "adam_fused" else {"foreach": True}
        opt = torch.optim.Adam([param], capturable=capturable, **kw, **hp)
        return Problem(update=opt.step, owned=[param, g], keepalive=[opt])
    if be is not None and variant == f"nk:{be}":
        packed = nk.pack_mask(mask)
        m = torch.zeros_like(p)
        v = torch.zeros_like(p)

        def update():
            # a fixed step count: bias correction costs the same at every step
            nk.masked_adam_step_(p, g, m, v, packed, 10, 1e-3, 0.9, 0.999, 1e-8, 0.0, False, backend=be)

        return Problem(update=update, owned=[p, g, m, v, packed])
    raise ValueError(f"variant: unknown masked_adam variant {variant!r}")


# ---------------------------------------------------------------- running, graphs, memory


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def warm_up(problem: Problem, device: str, steps: int) -> None:
    for _ in range(max(1, steps)):
        problem.eager_step()
    sync(device)


def capture_graph(problem: Problem, warmup: int = 3) -> Callable[[], None]:
    """Capture one forward+backward (or optimizer step) in a CUDA graph; returns graph.replay.

    Warm-up runs on a side stream first (as torch.cuda.graphs asks: lazy init, autotuning and
    cuBLAS workspaces happen outside the capture). Grads are cleared before capture so backward
    allocates them from the graph's pool; each replay rewrites them rather than accumulating.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(max(1, warmup)):
            problem.eager_step()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    problem.clear_grads()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        problem.step()
    torch.cuda.synchronize()
    problem.keepalive.append(graph)
    return graph.replay


def runner(problem: Problem, device: str, mode: str, warmup: int) -> Callable[[], None]:
    """The callable that is timed (no sync inside: callers add it where they need it)."""
    warm_up(problem, device, warmup)
    if mode == "graph":
        return capture_graph(problem, warmup)
    return problem.eager_step


def _storage_key(t: torch.Tensor):
    st = t.untyped_storage()
    return (t.device.type, t.device.index, st.data_ptr()), st.nbytes()


def activation_bytes(problem: Problem) -> Optional[int]:
    """Bytes one forward keeps alive for backward, beyond what existed before it.

    Counted with torch.autograd.graph.saved_tensors_hooks: every distinct storage saved for
    backward that is not an input, parameter or mask, plus the output's storage. This is the
    activation memory of the op (e.g. the [B, 1680] crossed input the unfused path keeps, or the
    W*M copy of the float-mask path); it does not count transient buffers freed inside forward
    or backward (on CUDA, peak_bytes covers those). None for optimizer steps.
    """
    if problem.forward is None:
        return None
    owned = {_storage_key(t)[0] for t in problem.owned}
    seen: Dict[tuple, int] = {}

    def pack(t):
        if isinstance(t, torch.Tensor):
            try:
                key, nbytes = _storage_key(t)
            except Exception:  # tensors without storage (e.g. sparse): not expected here
                return t
            if key not in owned:
                seen[key] = nbytes
        return t

    problem.clear_grads()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = problem.forward()
    key, nbytes = _storage_key(y)
    seen[key] = nbytes
    del y
    return int(sum(seen.values()))


def cuda_peak_bytes(problem: Problem) -> Optional[int]:
    """Peak CUDA memory allocated during one eager step above what was allocated before it
    (torch.cuda.max_memory_allocated after reset_peak_memory_stats; includes the gradients
    the step writes and every transient buffer). Call after a warm-up step."""
    if not torch.cuda.is_available():
        return None
    problem.clear_grads()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    problem.step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    problem.clear_grads()
    return int(peak)


def memory_info(problem: Problem, device: str) -> Dict[str, Optional[int]]:
    info = {"act_bytes": activation_bytes(problem), "peak_bytes": None}
    if device == "cuda":
        info["peak_bytes"] = cuda_peak_bytes(problem)
    return info


MEMORY_METHOD = {
    "act_bytes": "saved_tensors_hooks: distinct storages saved for backward that are not inputs/params/masks, plus the output (analytical activation memory, any device)",
    "peak_bytes": "CUDA only: torch.cuda.max_memory_allocated() during one eager step minus memory_allocated() before it (grads and transients included)",
}


def time_once(fn: Callable[[], None], device: str, inner: int = 1) -> float:
    """Seconds per call of fn, averaged over `inner` back-to-back calls (CUDA events on CUDA)."""
    inner = max(1, inner)
    if device == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / inner
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


def median(xs: Sequence[float]) -> Optional[float]:
    return statistics.median(xs) if xs else None


# ---------------------------------------------------------------- environment and names


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return _cpu_name()


def hardware_slug(device: str) -> str:
    """File-name form of the hardware: the GPU model without its vendor ("NVIDIA H200" -> "h200"),
    or "cpu-" + the CPU model ("cpu-intel-xeon-platinum-8481c"), lower-case, [a-z0-9-] only."""
    name = device_name(device).lower()
    name = re.sub(r"\((r|tm)\)|\bcpu\b|@.*$|\bprocessor\b", " ", name)
    if device == "cuda":
        name = re.sub(r"^\s*nvidia\s+", "", name)
    slug = re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "unknown"
    return slug if device == "cuda" else f"cpu-{slug}"


def default_result_path(device: str, kind: str) -> Path:
    """bench/results/<YYYY-MM-DD>_<hardware>_<kind>.json (see bench/results/README.md)."""
    day = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    return REPO / "bench" / "results" / f"{day}_{hardware_slug(device)}_{kind}.json"


def _git(*args) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None
    except Exception:
        return None


def versions() -> Dict[str, Optional[str]]:
    out = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "ncs_kernels": getattr(nk, "__version__", None)}
    for mod in ("triton", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            out[mod] = None
    return out


def environment(device: str) -> Dict[str, object]:
    env: Dict[str, object] = {
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "device_name": device_name(device),
        "hardware": hardware_slug(device),
        "cpu_name": _cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "versions": versions(),
        "backends": nk.backends(),
        "native_error": nk.native_error(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "memory_method": MEMORY_METHOD,
        "triton_interpret": env_flag("TRITON_INTERPRET"),
        "cuda_gemm_strategy": cuda_gemm_strategy(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }
    if device == "cuda" and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env["cuda_device"] = {"name": p.name, "capability": f"{p.major}.{p.minor}",
                              "multiprocessors": p.multi_processor_count, "total_memory": p.total_memory}
    return env


def extra_info(op: str, variant: str, shape: Dict[str, int], dtype_name: str, mode: str, device: str) -> Dict[str, object]:
    """What pytest-benchmark records beside each timing (benchmark.extra_info)."""
    v = versions()
    return {
        "op": op, "variant": variant, "backend": variant_backend(variant) or "pytorch", "dtype": dtype_name,
        "mode": mode, "shape": dict(shape), "density": DENSITY, "device": device, "device_name": device_name(device),
        "torch": v["torch"], "triton": v["triton"], "torch_cuda": v["torch_cuda"],
    }


# ---------------------------------------------------------------- pytest-benchmark glue


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    val = int(raw)
    if val < 0:
        raise ValueError(f"{name}: expected a non-negative integer, got {raw!r}")
    return val


def pytest_cases(op: str, device: str) -> list:
    """pytest.param(op, variant, shape, dtype_name, mode) for every case of `op` on `device`,
    unavailable backends included (they skip with the reason why_skip gives)."""
    import pytest

    batch = default_batch(device)
    if op == "masked_linear":
        shapes = linear_shapes(batch)
    elif op == "cross_masked_linear":
        shapes = [cross_shape(batch)]
    else:
        shapes = adam_shapes()
    out = []
    for shape in shapes:
        for dt in dtype_names(device):
            for mode in modes(device):
                for v in variants(op, device):
                    out.append(pytest.param(op, v, shape, dt, mode, id=f"{shape_id(shape)}-{dt}-{mode}-{v}"))
    return out


def run_pytest_benchmark(benchmark, op: str, variant: str, shape: Dict[str, int], dtype_name: str,
                         mode: str, device: str) -> None:
    """Time one case with pytest-benchmark (synchronising inside the timed function on CUDA)
    and record what was run, where, and its memory in benchmark.extra_info."""
    import pytest

    why = why_skip(op, variant, device, dtype_name, mode)
    if why:
        pytest.skip(why)
    cuda = device == "cuda"
    rounds = _env_int("NCS_BENCH_ROUNDS", 50 if cuda else 5)
    warmup = _env_int("NCS_BENCH_WARMUP", 10 if cuda else 1)
    with precision(dtype_name):
        problem = make_problem(op, variant, shape, dtype_name, device, mode)
        warm_up(problem, device, warmup)
        mem = memory_info(problem, device)
        fn = runner(problem, device, mode, 1)

        def timed():
            fn()
            sync(device)

        benchmark.group = f"{op} {shape_id(shape)} {dtype_name} {mode}"
        benchmark.extra_info.update(extra_info(op, variant, shape, dtype_name, mode, device))
        benchmark.extra_info.update(mem)
        benchmark.extra_info["memory_method"] = "see ncs bench/_common.py MEMORY_METHOD; peak measured on an eager step"
        benchmark.extra_info["gflop"] = problem.flop / 1e9
        benchmark.pedantic(timed, rounds=max(1, rounds), iterations=1, warmup_rounds=warmup)
