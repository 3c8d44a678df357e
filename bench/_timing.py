"""Running a Problem (bench/_problems.py) for timing: warm-up, CUDA-graph capture, the callable
that is timed, and one timed measurement (CUDA events on CUDA, perf_counter on CPU)."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Optional, Sequence

import torch

from bench._problems import Problem


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
