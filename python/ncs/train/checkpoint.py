"""Checkpoints without pickle: one safetensors file per checkpoint.

The file holds every tensor (model state under "model/", optimizer state flattened under
"optim/<name>/<param index>/<key>", extra tensors under any other prefix) and, in its metadata,
one JSON document "ncs_checkpoint": step counters, optimizer hyper-parameters (param_groups),
RNG states as lists of ints, and the trainer's position (stage / task / round / epoch). One file
means one os.replace, so a checkpoint is either the old one or the new one, never a mix.
A human-readable copy of the JSON is written beside it (<name>.json); the loader never reads it.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

FORMAT = "ncs-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    pass


def _atomic_write_text(path: str, text: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str, obj: Any) -> None:
    _atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_tensors(path: str, tensors: Mapping[str, torch.Tensor], meta: Optional[Dict[str, Any]] = None,
                 sidecar: bool = True) -> None:
    """Write tensors + JSON meta to `path` (safetensors) atomically (tmp file + os.replace)."""
    from safetensors.torch import save_file

    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    doc = {"format": FORMAT, "version": VERSION, **(meta or {})}
    text = json.dumps(doc)
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".safetensors")
    os.close(fd)
    try:
        save_file(flat, tmp, metadata={"ncs_checkpoint": text})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if sidecar:
        _atomic_write_text(os.path.splitext(path)[0] + ".json", json.dumps(doc, indent=1) + "\n")


def load_tensors(path: str, device: Optional[torch.device] = None) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({e})") from None
    try:
        doc = json.loads(meta["ncs_checkpoint"])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: no ncs_checkpoint metadata") from None
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise CheckpointError(f"{path}: format {doc.get('format')!r} v{doc.get('version')}, expected {FORMAT} v{VERSION}")
    if device is not None:
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors, doc


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
