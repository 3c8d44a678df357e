"""Value -> row-id vocabularies shared by the readers, and stable hashing of group keys."""
from __future__ import annotations

import hashlib
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np

Vocab = Dict[str, Dict[str, int]]  # field -> value -> row id (>= 1; 0 = missing/unknown)


def stable_hash64(value: Union[str, bytes]) -> int:
    """A process-independent signed int64 hash (Python's hash() is salted per process)."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    return int.from_bytes(hashlib.blake2b(value, digest_size=8).digest(), "little", signed=True)


def hash_bucket(value: str, buckets: int) -> int:
    """Row id in 1..buckets for a hashed field (0 stays 'missing')."""
    return 1 + (stable_hash64(value) % buckets)


class FieldVocab:
    """One field's vocabulary: grows from the data (ids from 1) or is fixed (unknown -> 0)."""

    def __init__(self, name: str, fixed: Optional[Mapping[str, int]] = None,
                 missing: Sequence[str] = ("-1", "")):
        self.name = name
        self.grow = fixed is None
        self.table: Dict[str, int] = dict(fixed) if fixed is not None else {}
        for v, i in self.table.items():
            if not isinstance(i, (int, np.integer)) or i < 1:
                raise ValueError(f"vocab for field {name!r}: id of {v!r} must be an int >= 1, got {i!r}")
        self.missing = frozenset(missing)
        self.next_id = max(self.table.values(), default=0) + 1

    def id(self, value: str) -> int:
        if value in self.missing:
            return 0
        i = self.table.get(value)
        if i is None:
            if not self.grow:
                return 0
            i = self.next_id
            self.table[value] = i
            self.next_id += 1
        return i

    @property
    def size(self) -> int:
        """Embedding rows, row 0 included."""
        return self.next_id


def encode_values(vocab: FieldVocab, values: Iterable[str], max_len: int, width: int) -> List[int]:
    """Ids of up to max_len values, padded with -1 to ``width`` slots; no value -> [0, -1, ...]."""
    ids = [vocab.id(v) for v in values][:max_len]
    if not ids:
        ids = [0]
    return ids + [-1] * (width - len(ids))
