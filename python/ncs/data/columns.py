"""Vectorised column encoding for `ncs data convert` (pyarrow kernels, never a Python loop per row).

validate_labels   click / conversion checks over a batch, naming file, row and column
LocalVocab        a growing value -> id table: the native hash table of csrc/cpu/vocab.cpp, or
                  pyarrow kernels matched per batch (only distinct values are looked up)
place             flat per-row ids -> [rows, width] ids (-1 padded), for vocabulary and hashed fields
_ids_from_lists   per-row value lists -> [rows, width] ids through a LocalVocab
_hash_ids         hash-bucket ids of a batch (hashed once per distinct value)
_group_column     a group key column -> int64 (integers and times keep their order)
_numeric, _hash_strings, _binary_array, _first_values: the small pieces the two readers share.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .errors import DataError


# label validation (vectorised): a clear error naming file, row and column. Kept self-contained
# so that it can be unified with the per-row validation of the in-memory readers.
def validate_labels(path: str, first_row: int, click: np.ndarray, conversion: Optional[np.ndarray],
                    click_col: str = "click", conversion_col: str = "conversion",
                    conversion_binary: bool = False) -> None:
    """click must be 0/1; conversion finite in [0, 1] (0/1 if binary) and 0 wherever click is 0.
    NaN means an empty / missing value."""
    bad = ~np.isin(click, (0.0, 1.0))
    if bad.any():
        i = int(np.argmax(bad))
        what = "empty" if np.isnan(click[i]) else f"{float(click[i]):g}"
        raise DataError(f"{path}: row {first_row + i}: column {click_col!r} must be 0 or 1, got {what}")
    if conversion is None:
        return
    ok = np.isfinite(conversion) & (conversion >= 0) & (conversion <= 1)
    if conversion_binary:
        ok &= np.isin(conversion, (0.0, 1.0))
    if not ok.all():
        i = int(np.argmax(~ok))
        what = "empty" if np.isnan(conversion[i]) else f"{float(conversion[i]):g}"
        want = "0 or 1" if conversion_binary else "a finite number in [0, 1]"
        raise DataError(f"{path}: row {first_row + i}: column {conversion_col!r} must be {want}, got {what}")
    bad = (conversion > 0) & (click == 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{path}: row {first_row + i}: column {conversion_col!r} is {float(conversion[i]):g} > 0 "
                        f"on a row whose {click_col!r} is 0 (a conversion needs a click)")


# ---------------------------------------------------------------------------------------------
class LocalVocab:
    """A growing value -> id table (ids from 1, first appearance order), looked up per batch with
    pyarrow kernels: only a batch's distinct values are matched, never a Python loop per row."""

    def __init__(self, missing: Sequence[str], binary: bool = False, fixed: Optional[Dict[str, int]] = None):
        import pyarrow as pa

        self.type = pa.binary() if binary else pa.string()
        self.missing = pa.array([m.encode() if binary else m for m in missing], self.type)
        self.chunks: List[Any] = []
        self.known = None
        self.n = 0
        self.fixed_ids = None
        self.binary, self.fixed = binary, fixed
        # the native table (csrc/cpu/vocab.cpp) when built: the same ids, one hash probe per value;
        # the pyarrow tables below are then built only if the native one hands over
        self.native = _native_vocab(missing, fixed)
        if self.native is None:
            self._pyarrow_fixed()

    def _pyarrow_fixed(self) -> None:
        """The pyarrow form of a fixed vocabulary (another run's: unknown values -> 0)."""
        import pyarrow as pa

        if self.fixed is None:
            return
        items = sorted(self.fixed.items(), key=lambda kv: kv[1])
        vals = [k.encode() if self.binary else k for k, _ in items]
        self.known = pa.array(vals, self.type)
        self.fixed_ids = np.asarray([v for _, v in items], dtype=np.int64)

    def ids(self, values) -> np.ndarray:
        """int32 ids of a flat pyarrow array (null and missing markers -> 0)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if len(values) == 0:
            return np.zeros(0, dtype=np.int32)
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if self.native is not None:
            ids = _native_ids(self.native, values)
            if ids is not None:
                return ids
            self._leave_native()
        if pa.types.is_dictionary(values.type):
            values = values.cast(values.type.value_type)
        enc = pc.dictionary_encode(values)
        d = enc.dictionary
        if d.type != self.type:  # numbers etc.: only the distinct values become text
            from .table import _as_strings

            d = _as_strings(d) if self.type == pa.string() else d.cast(self.type)
        nd = len(d)
        lut = np.zeros(nd + 1, dtype=np.int64)
        if self.known is not None and len(self.known):
            pos = pc.index_in(d, value_set=self.known).fill_null(-1).to_numpy(zero_copy_only=False)
        else:
            pos = np.full(nd, -1, dtype=np.int64)
        if self.fixed_ids is not None:
            lut[:nd] = np.where(pos >= 0, self.fixed_ids[np.maximum(pos, 0)], 0)
        else:
            lut[:nd] = pos + 1  # 0 where unknown, fixed below
            miss = pc.is_in(d, value_set=self.missing).to_numpy(zero_copy_only=False)
            new = (pos < 0) & ~miss
            if new.any():
                idx = np.nonzero(new)[0]
                lut[idx] = self.n + 1 + np.arange(idx.size)
                self.chunks.append(d.take(pa.array(idx)))
                self.n += idx.size
                self.known = pa.concat_arrays(self.chunks) if len(self.chunks) > 1 else self.chunks[0]
                if len(self.chunks) > 1:
                    self.chunks = [self.known]
            lut[:nd][miss] = 0
        codes = enc.indices.fill_null(nd).to_numpy(zero_copy_only=False)
        return lut[codes].astype(np.int32)

    def _leave_native(self) -> None:
        """Continue on the pyarrow path (a value type the native table does not key): hand it the
        values seen so far, in id order."""
        if self.fixed is not None:
            self._pyarrow_fixed()
        else:
            known = self._native_values()
            self.known = known if len(known) else None
            self.chunks = [known] if len(known) else []
            self.n = len(known)
        self.native = None

    def _native_values(self):
        import pyarrow as pa

        off, data = self.native.values()
        arr = pa.Array.from_buffers(pa.large_binary(), len(off) - 1,
                                    [None, pa.py_buffer(off.numpy()), pa.py_buffer(data.numpy())])
        return arr.cast(pa.large_string() if self.type == pa.string() else arr.type).cast(self.type)

    def values(self):
        """The values in id order (a pyarrow array; empty for a fixed vocabulary)."""
        import pyarrow as pa

        if self.fixed is not None:
            return pa.array([], self.type)
        if self.native is not None:
            return self._native_values()
        if self.known is None:
            return pa.array([], self.type)
        return self.known


def _native_vocab(missing: Sequence[str], fixed: Optional[Dict[str, int]]):
    """A csrc/cpu/vocab.cpp table holding the missing markers (-> 0) or the fixed ids; None
    without the native extension."""
    from .tfchunks import _native

    C = _native()
    if C is None or not hasattr(C, "NativeVocab"):
        return None
    v = C.NativeVocab(fixed is not None)
    if fixed is not None:
        for k, i in fixed.items():
            v.add_fixed(k, int(i))
    else:
        for m in missing:
            v.add_missing(m)
    return v


def _native_ids(vocab, values) -> Optional[np.ndarray]:
    """int32 ids of a flat pyarrow array through the native table: strings and bytes by their
    bytes, integers by their decimal text (the key the pyarrow path gives them). None for other
    types (the caller falls back to pyarrow)."""
    import pyarrow as pa
    import torch

    t = values.type
    valid = None
    if values.null_count:
        valid = torch.from_numpy(values.is_valid().to_numpy(zero_copy_only=False).copy())
    if pa.types.is_string(t) or pa.types.is_binary(t) or pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        large = pa.types.is_large_string(t) or pa.types.is_large_binary(t)
        _, obuf, dbuf = values.buffers()
        off = np.frombuffer(obuf, dtype=np.int64 if large else np.int32)[values.offset: values.offset + len(values) + 1]
        data = np.frombuffer(dbuf, dtype=np.uint8) if dbuf is not None else np.zeros(0, np.uint8)
        # pyarrow's buffers are read-only; the copies cost a memcpy of the chunk's bytes
        return vocab.lookup_bytes(torch.from_numpy(off.copy()), torch.from_numpy(data.copy()), valid).numpy()
    if pa.types.is_integer(t) and t != pa.uint64():
        v = np.array(values.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
        return vocab.lookup_int64(torch.from_numpy(v), valid).numpy()
    return None


def _hash_strings(arr) -> np.ndarray:
    """stable_hash64 of each value of a pyarrow string/binary array (null -> hash of ""), computed
    once per distinct value."""
    import pyarrow.compute as pc

    from .vocab import stable_hash64

    enc = pc.dictionary_encode(arr)
    keys = [stable_hash64(v if v is not None else b"") for v in enc.dictionary.to_pylist()] + [stable_hash64(b"")]
    return np.asarray(keys, dtype=np.int64)[enc.indices.fill_null(len(enc.dictionary)).to_numpy(zero_copy_only=False)]


def place(ids: np.ndarray, counts: np.ndarray, width: int) -> np.ndarray:
    """Flat per-row ids (row i has counts[i] of them) -> [rows, width] int32, -1 padded, the
    values past ``width`` dropped; a row with no value gets [0, -1, ...] (0 = missing)."""
    n = counts.size
    out = np.full((n, width), -1, dtype=np.int32)
    if ids.size:
        starts = np.cumsum(counts) - counts
        row = np.repeat(np.arange(n), counts)
        slot = np.arange(ids.size) - np.repeat(starts, counts)
        keep = slot < width
        out[row[keep], slot[keep]] = ids[keep]
    out[counts == 0, 0] = 0
    return out


def _ids_from_lists(vocab: LocalVocab, flat, counts: np.ndarray, width: int) -> np.ndarray:
    """Per-row lists (flat values + counts) -> [rows, width] ids, -1 padded; no value -> [0, -1..].
    Every value enters the vocabulary, also those past ``width`` (as the in-memory readers do)."""
    n = counts.size
    flat_ids = vocab.ids(flat)
    if width == 1 and flat_ids.size == n and (counts == 1).all():  # single-valued: one value per row
        return flat_ids.reshape(n, 1)
    return place(flat_ids, counts, width)


def _binary_array(offsets: np.ndarray, data: np.ndarray):
    import pyarrow as pa

    return pa.Array.from_buffers(pa.large_binary(), len(offsets) - 1,
                                 [None, pa.py_buffer(offsets.astype(np.int64)), pa.py_buffer(data)])


def _first_values(counts, offsets, data, default: bytes):
    """The first value of each row's list as a binary array (``default`` for an empty list)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = _binary_array(offsets, data)
    starts = np.cumsum(counts) - counts
    has = counts > 0
    firsts = arr.take(pa.array(np.where(has, starts, 0))) if len(arr) else pa.nulls(counts.size, pa.large_binary())
    return pc.if_else(pa.array(has), firsts, pa.scalar(default, pa.large_binary()))


def _numeric(path: str, name: str, arr) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        vals = pc.cast(arr, pa.float64())
    except pa.ArrowException as e:
        raise DataError(f"{path}: column {name!r} must be numeric ({e})") from e
    return vals.fill_null(np.nan).to_numpy(zero_copy_only=False)


def _hash_ids(flat, missing: Sequence[str], buckets: int) -> np.ndarray:
    """1 + stable_hash64(value) % buckets per value (missing/null -> 0), hashed once per distinct
    value of the batch, the same ids as the in-memory reader."""
    import pyarrow.compute as pc

    from .vocab import hash_bucket

    import pyarrow as pa

    from .table import _as_strings

    if isinstance(flat, pa.ChunkedArray):
        flat = flat.combine_chunks()
    enc = pc.dictionary_encode(flat)
    miss = set(missing)
    table = [0 if (v is None or v in miss) else hash_bucket(v, buckets)
             for v in _as_strings(enc.dictionary).to_pylist()]
    lut = np.asarray(table + [0], dtype=np.int32)
    return lut[enc.indices.fill_null(len(table)).to_numpy(zero_copy_only=False)]


def _group_column(path: str, g: str, c: str, arr):
    """(values, (lo, hi) or None): integer columns keep their values (a time stays ordered),
    timestamps become int64 epoch units, anything else the stable hash of its text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = arr.type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        raise DataError(f"{path}: group column {c!r} must hold scalars, got {t}")
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):  # the CSV reader yields bytes (validated UTF-8)
        arr = _as_str(arr)
        t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        num = None
        for target in (pa.int64(), pa.timestamp("s")):  # a CSV read as text: numbers and dates stay ordered
            try:
                num = pc.cast(arr, target)
                break
            except pa.ArrowException:
                continue
        if num is None and g == "time":
            raise DataError(f"{path}: time column {c!r} must hold integers or timestamps")
        if num is not None:
            arr, t = num, num.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        arr = pc.cast(arr, pa.int64())
        t = arr.type
    if pa.types.is_integer(t):
        if arr.null_count:
            bad = int(np.argmax(arr.is_null().to_numpy(zero_copy_only=False)))
            raise DataError(f"{path}: group column {c!r} is empty in batch row {bad}")
        v = arr.to_numpy(zero_copy_only=False).astype(np.int64)
        return v, ((int(v.min()), int(v.max())) if v.size else None)
    if pa.types.is_floating(t) and g == "time":
        v = arr.fill_null(np.nan).to_numpy(zero_copy_only=False)
        if not np.isfinite(v).all() or (v != np.round(v)).any():
            raise DataError(f"{path}: time column {c!r} must hold integers")
        v = v.astype(np.int64)
        return v, ((int(v.min()), int(v.max())) if v.size else None)
    return _hash_strings(_as_str(arr)), None


def _as_str(arr):
    from .table import _as_strings

    return _as_strings(arr)
