"""Checksums for files of tensors (checkpoints, mask files, exported models, encoded shards).

    sums = checksums(tensors)                # {name: CRC-32 of the tensor's bytes}
    bad = first_mismatch(tensors, sums)      # None, or the name of a missing / damaged tensor

CRC-32 (zlib) of each tensor's raw bytes, in the tensor's own dtype and C order: any byte
changed on disk changes it; 1 - 2**-32 of random damage is caught. A few GB/s on one core, so
a checkpoint of tens of MB costs milliseconds. ``text_crc32`` covers a JSON metadata string.
"""
from __future__ import annotations

import zlib
from typing import Dict, Mapping, Optional

import torch


def tensor_crc32(t: torch.Tensor) -> int:
    """CRC-32 of the bytes of ``t`` (moved to the CPU, made contiguous; any dtype)."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel() == 0:
        return 0
    return zlib.crc32(memoryview(flat.view(torch.uint8).numpy()))


def text_crc32(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def checksums(tensors: Mapping[str, torch.Tensor]) -> Dict[str, int]:
    return {k: tensor_crc32(v) for k, v in tensors.items()}


def first_mismatch(tensors: Mapping[str, torch.Tensor], sums: Mapping[str, int]) -> Optional[str]:
    """The first tensor name that is missing, extra or fails its checksum; None when all match."""
    for name in sums:
        if name not in tensors:
            return name
    for name, t in tensors.items():
        if name not in sums or tensor_crc32(t) != int(sums[name]):
            return name
    return None
