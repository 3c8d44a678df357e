"""Memory of one Problem (bench/_problems.py): the activation bytes one forward keeps for
backward (any device) and the CUDA peak of one eager step. MEMORY_METHOD says how, in words, in
every result file."""
from __future__ import annotations

from typing import Dict, Optional

import torch

from bench._problems import Problem


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
