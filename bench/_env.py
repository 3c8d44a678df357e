"""The environment of a benchmark run: the NCS_BENCH_* knobs, the kernel library's backend
registry as bench reads it (the one place bench touches it), the record of the machine and
versions every result file carries, result paths, and the atomic JSON writer."""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Dict, Optional

import torch

import ncs_kernels as nk
from ncs_kernels import _backends
from ncs_kernels.atomic import atomic_write_json

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("NCS_BENCH_THREADS"):
    # CPU timings on a shared or small machine swing wildly with OpenMP oversubscription
    torch.set_num_threads(int(os.environ["NCS_BENCH_THREADS"]))


# ---------------------------------------------------------------- knobs (environment variables)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() not in ("", "0", "false", "no")


def env_int(name: str, default: int) -> int:
    """A non-negative integer from the environment, `default` when unset or empty."""
    raw = os.environ.get(name)
    if not raw:
        return default
    val = int(raw)
    if val < 0:
        raise ValueError(f"{name}: expected a non-negative integer, got {raw!r}")
    return val


def env_list(name: str, allowed, what: str) -> Optional[tuple]:
    """A comma list from the environment, each name one of `allowed`; None when unset or empty."""
    env = os.environ.get(name)
    if not env:
        return None
    names = tuple(s.strip() for s in env.split(",") if s.strip())
    bad = [n for n in names if n not in allowed]
    if bad:
        raise ValueError(f"{name}: expected {what}, got {bad}")
    return names


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


@contextlib.contextmanager
def scoped_env(env: Dict[str, str]):
    """os.environ updated with `env` for the block, the previous values restored after."""
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


# ---------------------------------------------------------------- the backend registry


def backend_names() -> tuple:
    """Every ncs backend, available here or not."""
    return tuple(_backends.BACKENDS)


def native():
    """ncs_kernels._C, None when it is not built."""
    return _backends.native()


def why_unavailable(backend: str, device: str, dtype: Optional[torch.dtype] = None) -> Optional[str]:
    """None when `backend` runs on `device` (and `dtype`, if given) here, else why not."""
    why = _backends.why_unavailable(backend, device)
    if why is None and dtype is not None:
        why = _backends.dtype_error(backend, device, dtype)
    return why


def resolve_backend(backend: str, tensor: torch.Tensor) -> str:
    """The concrete backend "auto" (or a name) runs for `tensor`."""
    return _backends.resolve(backend, tensor)


def cuda_gemm_strategy() -> Optional[str]:
    """The cuda backend's current GEMM strategy, None when _C has no CUDA."""
    ext = native()
    if ext is None or not ext.has_cuda():
        return None
    return ext.cuda_gemm_strategy()


@contextlib.contextmanager
def scoped_cuda_gemm(strategy: Optional[str]):
    """set_cuda_gemm_strategy(strategy) for the block, the previous strategy restored after."""
    if strategy is None:
        yield
        return
    ext = native()
    prev = ext.cuda_gemm_strategy()
    ext.set_cuda_gemm_strategy(strategy)
    try:
        yield
    finally:
        ext.set_cuda_gemm_strategy(prev)


# ---------------------------------------------------------------- the machine and versions


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
    """The "env" record of every result file: where, with what, at which commit."""
    from bench._memory import MEMORY_METHOD

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


# ---------------------------------------------------------------- result files


def default_result_path(device: str, kind: str) -> Path:
    """bench/results/<YYYY-MM-DD>_<hardware>_<kind>.json (see bench/results/README.md)."""
    day = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    return REPO / "bench" / "results" / f"{day}_{hardware_slug(device)}_{kind}.json"


def write_json(path: Optional[Path], doc: Dict) -> None:
    """Write a results document atomically (ncs_kernels.atomic): a reader, or a kill, never sees
    half a file, so a benchmark cut short still leaves its last complete JSON. None: no-op."""
    if path is not None:
        atomic_write_json(path, doc, indent=1)
