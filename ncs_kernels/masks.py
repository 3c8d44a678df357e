"""Bit-packed task masks: packing, statistics, overlap and safetensors files.

Format (see README "Mask format"): the bit of weight[n, k] is bit (k % 32) of the int32 word
packed[n, k // 32]; bits past K in the last word are zero. One packed tensor per task per layer.
"""
from __future__ import annotations

import json
from typing import Dict, Mapping, Optional, Tuple

import torch

from ._validate import words_for
from .atomic import atomic_path
from .integrity import checksums, tensor_crc32, text_crc32

MASK_FORMAT_VERSION = 1

_SHIFTS_CACHE: Dict[torch.device, torch.Tensor] = {}


def _shifts(device: torch.device) -> torch.Tensor:
    s = _SHIFTS_CACHE.get(device)
    if s is None:
        s = torch.arange(32, dtype=torch.int32, device=device)
        _SHIFTS_CACHE[device] = s
    return s


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """bool (or 0/1) mask [N, K] -> int32 [N, ceil(K/32)], bit k%32 of word k//32."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask: expected a torch.Tensor, got {type(mask).__name__}")
    if mask.dim() != 2:
        raise ValueError(f"mask: expected a 2-D [out_features, in_features] mask, got shape {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or mask.is_complex():
            bad = ~((mask == 0) | (mask == 1))
            if bool(bad.any()):
                raise ValueError("mask: expected only 0 and 1 values in a non-bool mask")
        mask = mask != 0
    n, k = mask.shape
    w = words_for(k)
    padded = torch.zeros(n, w * 32, dtype=torch.int64, device=mask.device)
    padded[:, :k] = mask.to(torch.int64)
    bits = padded.view(n, w, 32) << _shifts(mask.device).to(torch.int64)
    words = bits.sum(dim=2)  # < 2**32, exact in int64
    # reinterpret the low 32 bits as a signed int32 (bit 31 set -> negative word)
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32).contiguous()


def unpack_mask(packed: torch.Tensor, k: int) -> torch.Tensor:
    """int32 [N, ceil(K/32)] -> bool [N, K]."""
    if not isinstance(packed, torch.Tensor):
        raise TypeError(f"packed: expected a torch.Tensor, got {type(packed).__name__}")
    if packed.dtype != torch.int32:
        raise TypeError(f"packed: expected an int32 packed mask, got {str(packed.dtype).replace('torch.', '')}")
    if packed.dim() != 2:
        raise ValueError(f"packed: expected a 2-D [N, ceil(K/32)] tensor, got shape {tuple(packed.shape)}")
    k = int(k)
    if k < 0 or packed.shape[1] != words_for(k):
        raise ValueError(f"packed: expected {words_for(k)} words per row for K={k}, got shape {tuple(packed.shape)}")
    n = packed.shape[0]
    # (word >> s) & 1 is right for arithmetic and logical shifts alike
    bits = (packed.unsqueeze(-1) >> _shifts(packed.device)) & 1
    return bits.reshape(n, packed.shape[1] * 32)[:, :k].bool()


def ones_mask(n: int, k: int, device=None) -> torch.Tensor:
    """Packed all-ones mask for a weight [n, k] (bits past k zero)."""
    return pack_mask(torch.ones(n, k, dtype=torch.bool, device=device))


def zeros_mask(n: int, k: int, device=None) -> torch.Tensor:
    return torch.zeros(n, words_for(k), dtype=torch.int32, device=device)


def _popcount_words(packed: torch.Tensor) -> torch.Tensor:
    """Per-word popcount of int32 words (SWAR on int64 so that no sign bits leak)."""
    v = packed.to(torch.int64) & 0xFFFFFFFF
    v = v - ((v >> 1) & 0x55555555)
    v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F
    return ((v * 0x01010101) & 0xFFFFFFFF) >> 24


def popcount(packed: torch.Tensor) -> int:
    """Number of set bits (kept weights) in a packed mask."""
    return int(_popcount_words(packed).sum())


def density(packed: torch.Tensor, k: int) -> float:
    """Fraction of weights kept by the mask of a weight [N, k]."""
    total = packed.shape[0] * int(k)
    return popcount(packed) / total if total else 0.0


def overlap(a: torch.Tensor, b: torch.Tensor, k: Optional[int] = None) -> Dict[str, float]:
    """Intersection, union and Jaccard of two tasks' packed masks, computed on the words.

    Returns counts ("intersection", "union", "only_a", "only_b") and "jaccard"; with k given,
    also the densities of both masks and of their intersection.
    """
    if a.shape != b.shape or a.dtype != torch.int32 or b.dtype != torch.int32:
        raise ValueError(
            f"b: expected an int32 packed mask of the same shape as a {tuple(a.shape)}, got {tuple(b.shape)} {b.dtype}"
        )
    inter = popcount(a & b)
    union = popcount(a | b)
    out = {
        "intersection": inter,
        "union": union,
        "only_a": popcount(a & ~b),
        "only_b": popcount(b & ~a),
        "jaccard": inter / union if union else 1.0,
    }
    if k is not None:
        total = a.shape[0] * int(k)
        out["density_a"] = popcount(a) / total if total else 0.0
        out["density_b"] = popcount(b) / total if total else 0.0
        out["shared_density"] = inter / total if total else 0.0
    return out


# ---------------------------------------------------------------------------------------------
# Files: safetensors, one tensor per (layer, task), metadata in JSON strings.

def _key(layer: str, task: str) -> str:
    return f"{layer}/{task}"


def save_masks(path: str, masks: Mapping[str, Mapping[str, torch.Tensor]], in_features: Mapping[str, int]) -> None:
    """Write masks[layer][task] (packed int32) to a safetensors file, atomically.

    in_features[layer] is K of that layer (the packed width alone does not fix it).
    """
    from safetensors.torch import save_file

    tensors = {}
    layers_meta = {}
    tasks = []
    for layer, per_task in masks.items():
        if layer not in in_features:
            raise KeyError(f"in_features: missing K for layer {layer!r}")
        k = int(in_features[layer])
        dens = {}
        for task, packed in per_task.items():
            if packed.dtype != torch.int32 or packed.dim() != 2 or packed.shape[1] != words_for(k):
                raise ValueError(
                    f"masks[{layer!r}][{task!r}]: expected int32 [N, {words_for(k)}] for K={k}, "
                    f"got {packed.dtype} {tuple(packed.shape)}"
                )
            tensors[_key(layer, task)] = packed.detach().to("cpu").contiguous()
            dens[task] = density(packed, k)
            if task not in tasks:
                tasks.append(task)
        n = next(iter(per_task.values())).shape[0] if per_task else 0
        layers_meta[layer] = {"shape": [int(n), k], "density": dens}
    meta = {
        "format": "ncs-masks",
        "version": str(MASK_FORMAT_VERSION),
        "tasks": json.dumps(tasks),
        "layers": json.dumps(layers_meta),
    }
    # CRC-32 of every tensor and of the two JSON strings, verified by load_masks (files written
    # before checksums have no "crc32" entry and load unverified; readers that predate it ignore it)
    meta["crc32"] = json.dumps({"tensors": checksums(tensors), "tasks": text_crc32(meta["tasks"]),
                                "layers": text_crc32(meta["layers"])})
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=meta)


def load_masks(
    path: str, expected_shapes: Optional[Mapping[str, Tuple[int, int]]] = None
) -> Tuple[Dict[str, Dict[str, torch.Tensor]], Dict]:
    """Read a mask file written by save_masks; returns (masks[layer][task], metadata).

    Validates the format, the CRC-32 of the metadata and of every tensor (files written before
    checksums were added load unverified), every tensor against the recorded [N, K], and, if
    given, against expected_shapes[layer] = (N, K); an error names the tensor that is wrong.
    """
    from safetensors import safe_open

    try:
        f = safe_open(path, framework="pt", device="cpu")
    except Exception as e:  # corrupt header, not a safetensors file
        raise ValueError(f"{path}: not a readable safetensors mask file ({e})") from None
    meta = f.metadata() or {}
    if meta.get("format") != "ncs-masks":
        raise ValueError(f"{path}: metadata 'format' is {meta.get('format')!r}, expected 'ncs-masks'")
    if meta.get("version") != str(MASK_FORMAT_VERSION):
        raise ValueError(f"{path}: mask format version {meta.get('version')!r}, expected {MASK_FORMAT_VERSION}")
    sums = None
    if "crc32" in meta:
        try:
            sums = json.loads(meta["crc32"])
            ok = (text_crc32(meta["tasks"]) == int(sums["tasks"]) and text_crc32(meta["layers"]) == int(sums["layers"]))
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{path}: the mask metadata fails its CRC-32 check (file damaged)")
    try:
        layers_meta = json.loads(meta["layers"])
        tasks = json.loads(meta["tasks"])
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: metadata 'layers'/'tasks' missing or not JSON ({e})") from None
    masks: Dict[str, Dict[str, torch.Tensor]] = {}
    keys = set(f.keys())
    for layer, info in layers_meta.items():
        n, k = (int(v) for v in info["shape"])
        if expected_shapes is not None:
            if layer not in expected_shapes:
                raise ValueError(f"{path}: layer {layer!r} is not in the model (expected layers: {sorted(expected_shapes)})")
            if tuple(expected_shapes[layer]) != (n, k):
                raise ValueError(
                    f"{path}: layer {layer!r} has weight shape {(n, k)}, the model expects {tuple(expected_shapes[layer])}"
                )
        masks[layer] = {}
        for task in info["density"]:
            key = _key(layer, task)
            if key not in keys:
                raise ValueError(f"{path}: tensor {key!r} is listed in the metadata but missing")
            try:
                t = f.get_tensor(key)
            except Exception as e:  # truncated file
                raise ValueError(f"{path}: tensor {key!r} cannot be read, file damaged or truncated ({e})") from None
            if sums is not None and tensor_crc32(t) != sums["tensors"].get(key):
                raise ValueError(f"{path}: tensor {key!r} fails its CRC-32 check (file damaged)")
            if t.dtype != torch.int32 or tuple(t.shape) != (n, words_for(k)):
                raise ValueError(
                    f"{path}: tensor {key!r} is {t.dtype} {tuple(t.shape)}, expected int32 {(n, words_for(k))}"
                )
            rem = k % 32
            if rem and bool((t[:, -1] >> rem).ne(0).any()):
                raise ValueError(f"{path}: tensor {key!r} has bits set past K={k}")
            masks[layer][task] = t
    if expected_shapes is not None:
        missing = set(expected_shapes) - set(masks)
        if missing:
            raise ValueError(f"{path}: layers missing from the file: {sorted(missing)}")
    return masks, {"tasks": tasks, "layers": layers_meta, "version": int(meta["version"])}
