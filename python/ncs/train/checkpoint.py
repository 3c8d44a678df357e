"""Checkpoints without pickle: one safetensors file per checkpoint.

The file holds every tensor (model state under "model/", optimizer state flattened under
"optim/<name>/<param index>/<key>", extra tensors under any other prefix) and, in its metadata,
one JSON document "ncs_checkpoint": step counters, optimizer hyper-parameters (param_groups),
RNG states as lists of ints, and the trainer's position (stage / task / round / epoch). One file
means one os.replace, so a checkpoint is either the old one or the new one, never a mix.
Every tensor and the JSON carry a CRC-32 (the document's "crc32" entry), verified on load: a damaged
or truncated file is a CheckpointError, never a silently different state. The trainer keeps
the previous checkpoint too (<name>.prev.safetensors) and falls back to it (load_latest).
A human-readable copy of the JSON is written beside it (<name>.json); the loader never reads it.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch

from ncs_kernels.atomic import atomic_path, atomic_write_text
from ncs_kernels.integrity import checksums, first_mismatch, text_crc32

FORMAT = "ncs-checkpoint"
VERSION = 2  # 2: CRC-32 of every tensor and of the document (its "crc32" entry); 1 loads unverified
_SUMS = "crc32"


class CheckpointError(RuntimeError):
    pass


def _atomic_write_text(path: str, text: str) -> None:
    """Every JSON file of a run is written through here (ncs_kernels.atomic; one seam that the
    fault-injection tests patch)."""
    atomic_write_text(path, text)


def atomic_write_json(path: str, obj: Any) -> None:
    _atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def previous_path(path: str) -> str:
    """Where save_tensors(keep_previous=True) keeps the file it replaces: <name>.prev.safetensors."""
    root, ext = os.path.splitext(path)
    return f"{root}.prev{ext}"


def save_tensors(path: str, tensors: Mapping[str, torch.Tensor], meta: Optional[Dict[str, Any]] = None,
                 sidecar: bool = True, keep_previous: bool = False) -> None:
    """Write tensors + JSON meta to `path` (safetensors) atomically (tmp file, fsync, os.replace).

    The document carries a CRC-32 of every tensor and of itself (entry "crc32"), checked by
    load_tensors (which removes the entry from the document it returns). keep_previous: the file being replaced is kept (hard link, so no
    moment lacks a complete `path`) as previous_path(path), the fallback of load_latest.
    A failed write (ENOSPC, EIO...) is a CheckpointError and leaves both files as they were."""
    from safetensors.torch import save_file

    doc = {"format": FORMAT, "version": VERSION, **(meta or {})}
    doc.pop(_SUMS, None)
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    # one metadata entry (safetensors orders several at random: the bytes would differ per run);
    # the checksum of the document is over its JSON without the checksums entry
    sums = {"tensors": checksums(flat), "meta": text_crc32(json.dumps(doc))}
    text = json.dumps({**doc, _SUMS: sums})
    try:
        with atomic_path(path) as tmp:   # tmp file beside path, fsync, os.replace
            save_file(flat, tmp, metadata={"ncs_checkpoint": text})
            if keep_previous and os.path.isfile(path):
                prev = previous_path(path)
                link = prev + ".tmp"
                if os.path.lexists(link):
                    os.unlink(link)
                try:
                    os.link(path, link)
                except OSError:  # no hard links here: a copy
                    import shutil
                    shutil.copyfile(path, link)
                os.replace(link, prev)
    except Exception as e:  # OSError (ENOSPC, EIO...) or safetensors' SafetensorError around one
        if not isinstance(e, OSError) and "Io" not in type(e).__name__ + str(e):
            raise
        raise CheckpointError(f"{path}: cannot write the checkpoint ({e}); the previous one is left "
                              f"as it was") from None
    if sidecar:
        try:
            _atomic_write_text(os.path.splitext(path)[0] + ".json", json.dumps(doc, indent=1) + "\n")
        except OSError as e:
            raise CheckpointError(f"{path}: cannot write its JSON copy ({e})") from None


def load_tensors(path: str, device: Optional[torch.device] = None) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read a file of save_tensors, verifying every checksum; CheckpointError names what is wrong
    (missing, truncated, damaged tensor or metadata). Files of format version 1 (written before
    checksums) load unverified."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint, damaged or truncated ({e})") from None
    try:
        text = meta["ncs_checkpoint"]
        doc = json.loads(text)
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: no ncs_checkpoint metadata (damaged, or not a checkpoint)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") not in (1, VERSION):
        got = doc.get("format") if isinstance(doc, dict) else None
        ver = doc.get("version") if isinstance(doc, dict) else None
        raise CheckpointError(f"{path}: format {got!r} v{ver}, expected {FORMAT} v{VERSION}")
    if doc["version"] >= 2:
        try:
            sums = doc.pop(_SUMS)
            meta_sum, tensor_sums = int(sums["meta"]), dict(sums["tensors"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise CheckpointError(f"{path}: its checksums are missing or damaged") from None
        if text_crc32(json.dumps(doc)) != meta_sum:
            raise CheckpointError(f"{path}: the metadata fails its CRC-32 check (file damaged)")
        bad = first_mismatch(tensors, tensor_sums)
        if bad is not None:
            raise CheckpointError(f"{path}: tensor {bad!r} fails its CRC-32 check (file damaged)")
    if device is not None:
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors, doc


def has_checkpoint(path: str) -> bool:
    return os.path.isfile(path) or os.path.isfile(previous_path(path))


def load_latest(path: str, log: Optional[Callable[[str], None]] = None,
                device: Optional[torch.device] = None) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """load_tensors(path), or, when it is missing or damaged, the previous checkpoint kept by
    save_tensors(keep_previous=True) (logged); CheckpointError naming both when neither loads.
    Resuming from the previous checkpoint redoes one epoch/round: the result is the same."""
    prev = previous_path(path)
    try:
        return load_tensors(path, device)
    except CheckpointError as e:
        if not os.path.isfile(prev):
            raise
        first = str(e)
    try:
        out = load_tensors(prev, device)
    except CheckpointError as e:
        raise CheckpointError(f"{first}; the previous checkpoint cannot be used either: {e}") from None
    if log is not None:
        log(f"warning: {first}; resuming from the previous checkpoint {prev}")
    return out


# ---------------------------------------------------------------------------------------------
# Optimizer state <-> (tensors, JSON)

def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return {"__tuple__": [_jsonable(x) for x in v]}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise CheckpointError(f"optimizer state: cannot store a {type(v).__name__} value in JSON")


def _unjson(v: Any) -> Any:
    if isinstance(v, dict):
        if set(v) == {"__tuple__"}:
            return tuple(_unjson(x) for x in v["__tuple__"])
        return {k: _unjson(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_unjson(x) for x in v]
    return v


def flatten_optimizer(name: str, sd: Dict[str, Any]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """torch optimizer state_dict -> ({"optim/<name>/<idx>/<key>": tensor}, JSON-able rest)."""
    tensors: Dict[str, torch.Tensor] = {}
    scalars: Dict[str, Dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim/{name}/{idx}/{k}"] = v
            else:
                scalars.setdefault(str(idx), {})[k] = _jsonable(v)
    return tensors, {"param_groups": _jsonable(sd["param_groups"]), "scalars": scalars}


def unflatten_optimizer(name: str, tensors: Mapping[str, torch.Tensor], doc: Dict[str, Any]) -> Dict[str, Any]:
    state: Dict[int, Dict[str, Any]] = {}
    prefix = f"optim/{name}/"
    for key, v in tensors.items():
        if key.startswith(prefix):
            idx, k = key[len(prefix):].split("/", 1)
            state.setdefault(int(idx), {})[k] = v.clone()
    for idx, st in doc["scalars"].items():
        state.setdefault(int(idx), {}).update(_unjson(st))
    return {"state": state, "param_groups": _unjson(doc["param_groups"])}


# ---------------------------------------------------------------------------------------------
# RNG states as lists

def rng_state() -> Dict[str, Any]:
    out = {"torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(st: Dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(st["torch"], dtype=torch.uint8))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in st["cuda"]])
