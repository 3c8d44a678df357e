"""`ncs data convert` / `ncs data synth`: sources -> the encoded directory format (shards.py).

Streamed with bounded memory and parallel over input files (Parquet: over row groups):

  pass 1 (parallel, one task per file / row-group range): read record batches, dictionary-encode
      each field vectorised (pyarrow.compute.dictionary_encode, then index_in against the task's
      vocabulary so far), validate labels, hash string group keys; write the task's rows with
      task-local ids (int32) to a work folder. Memory: one batch + the task's vocabularies.
  merge: the tasks' vocabularies are merged in input order (value -> first id), which gives
      exactly the ids a sequential reader assigns (ids in order of first appearance).
  pass 2 (sequential, over the compact encoded rows only): remap local -> global ids with one
      lookup table per (task, field), cast to the smallest id type, cut into shards.

So vocabularies are built in the same pass that parses, and pass 2 never touches the source.
The output is written to OUT.tmp-XXXX and renamed to OUT after the manifest: a killed convert
leaves no OUT that looks complete.
"""
from __future__ import annotations

import glob
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import DataError
from .shards import DEFAULT_SHARD_ROWS, EncodedDir, ShardWriter, id_dtype, int_dtype, label_types
from .types import FieldSpec

_BATCH_ROWS = 1 << 20
_TF_CHUNK = 32 << 20  # decompressed TFRecord bytes parsed per native call


# ---------------------------------------------------------------------------------------------
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
        if fixed is not None:  # encode with another run's vocabulary: unknown values -> 0
            items = sorted(fixed.items(), key=lambda kv: kv[1])
            vals = [k.encode() if binary else k for k, _ in items]
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

    def values(self):
        """The values in id order (a pyarrow array; empty for a fixed vocabulary)."""
        import pyarrow as pa

        if self.known is None or self.fixed_ids is not None:
            return pa.array([], self.type)
        return self.known


def _hash_strings(arr) -> np.ndarray:
    """stable_hash64 of each value of a pyarrow string/binary array (null -> hash of ""), computed
    once per distinct value."""
    import pyarrow.compute as pc

    from .vocab import stable_hash64

    enc = pc.dictionary_encode(arr)
    keys = [stable_hash64(v if v is not None else b"") for v in enc.dictionary.to_pylist()] + [stable_hash64(b"")]
    return np.asarray(keys, dtype=np.int64)[enc.indices.fill_null(len(enc.dictionary)).to_numpy(zero_copy_only=False)]


def _ids_from_lists(vocab: LocalVocab, flat, counts: np.ndarray, width: int) -> np.ndarray:
    """Per-row lists (flat values + counts) -> [rows, width] ids, -1 padded; no value -> [0, -1..].
    Every value enters the vocabulary, also those past ``width`` (as the in-memory readers do)."""
    n = counts.size
    flat_ids = vocab.ids(flat)
    if width == 1 and flat_ids.size == n and (counts == 1).all():  # single-valued: one value per row
        return flat_ids.reshape(n, 1)
    out = np.full((n, width), -1, dtype=np.int32)
    if flat_ids.size:
        starts = np.cumsum(counts) - counts
        row = np.repeat(np.arange(n), counts)
        slot = np.arange(flat_ids.size) - np.repeat(starts, counts)
        keep = slot < width
        out[row[keep], slot[keep]] = flat_ids[keep]
    out[counts == 0, 0] = 0
    return out


# ---------------------------------------------------------------------------------------------
@dataclass
class Task:
    index: int
    path: str
    fmt: str  # tfrecord | csv | parquet
    schema: Any = None  # TableSchema for csv/parquet
    row_groups: Optional[List[int]] = None
    max_len: int = 8
    skip_corrupt: bool = False
    work: str = ""
    fixed_vocab: Optional[Dict[str, Dict[str, int]]] = None
    batch_rows: int = _BATCH_ROWS


@dataclass
class TaskResult:
    index: int
    rows: int
    chunks: List[str]
    vocab: Dict[str, List[str]]
    group_range: Dict[str, Tuple[int, int]] = field(default_factory=dict)
    seconds: float = 0.0
    stats: Dict[str, int] = field(default_factory=dict)


def _save_chunk(work: str, i: int, cols: Dict[str, np.ndarray]) -> str:
    d = os.path.join(work, f"chunk-{i:06d}")
    os.makedirs(d)
    for k, v in cols.items():
        np.save(os.path.join(d, k + ".npy"), np.ascontiguousarray(v), allow_pickle=False)
    return d


def _load_chunk(d: str) -> Dict[str, np.ndarray]:
    return {f[:-4]: np.load(os.path.join(d, f), allow_pickle=False) for f in sorted(os.listdir(d))}


# --------------------------------------------------------------------------- TFRecord (LT4REC)
_NATIVE: List[Any] = []


def _native():
    """ncs_kernels._C when it has the TFRecord parser, else None. Loaded from its file without
    running ncs_kernels/__init__ (which costs seconds: backends, Triton)."""
    if _NATIVE:
        return _NATIVE[0]
    import sys

    C = sys.modules.get("ncs_kernels._C")
    if C is None:
        try:
            import importlib.util

            import torch  # noqa: F401  (the extension links against it)

            spec = importlib.util.find_spec("ncs_kernels")
            so = []
            for d in (spec.submodule_search_locations or []) if spec else []:
                so += sorted(glob.glob(os.path.join(d, "_C*.so")) + glob.glob(os.path.join(d, "_C*.pyd")))
            if so:
                s2 = importlib.util.spec_from_file_location("ncs_kernels._C", so[0])
                C = importlib.util.module_from_spec(s2)
                s2.loader.exec_module(C)
                sys.modules["ncs_kernels._C"] = C
        except Exception:
            C = None
    C = C if C is not None and hasattr(C, "tfrecord_parse_cpu") else None
    _NATIVE.append(C)
    return C


def _tf_chunks_native(path: str, names: List[str]):
    """(first record, {name: (counts, offsets, data, num)}) per chunk, from the native parser."""
    import zlib

    import torch

    C = _native()
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        inflate = zlib.decompressobj(wbits=31) if gz else None
        left = b""
        rec0 = 0
        eof = False
        while not eof:
            parts = [left]
            have = len(left)
            while have < _TF_CHUNK:
                data = raw.read(_TF_CHUNK // 8)
                if not data:
                    if gz and not inflate.eof:
                        raise DataError(f"{path}: record {rec0}: compressed stream ends before its end marker")
                    eof = True
                    break
                if gz:
                    try:
                        while data:
                            if inflate.eof:
                                inflate = zlib.decompressobj(wbits=31)
                            out = inflate.decompress(data)
                            parts.append(out)
                            have += len(out)
                            data = inflate.unused_data if inflate.eof else b""
                    except zlib.error as e:
                        raise DataError(f"{path}: record {rec0}: compressed stream is corrupt ({e})") from e
                else:
                    parts.append(data)
                    have += len(data)
            buf = b"".join(parts)
            if not buf:
                return
            t = torch.frombuffer(bytearray(buf), dtype=torch.uint8)
            try:
                out = C.tfrecord_parse_cpu(t, names, True)
            except ValueError as e:
                msg = str(e)
                if msg.startswith("record "):
                    k, _, rest = msg[7:].partition(":")
                    msg = f"record {rec0 + int(k)}:{rest}"
                raise DataError(f"{path}: {msg}") from None
            consumed, n = int(out[0][0]), int(out[1][0])
            cols = {}
            for j, name in enumerate(names):
                c, o, d, num = out[2 + 4 * j: 6 + 4 * j]
                cols[name] = (c.numpy().astype(np.int64), o.numpy(), d.numpy(), num.numpy())
            left = buf[consumed:]
            if n:
                yield rec0, n, cols
            rec0 += n
            if eof and left:
                raise DataError(f"{path}: record {rec0}: truncated (the file ends inside a record)")


def _tf_chunks_python(path: str, names: List[str], skip_corrupt: bool, stats: Dict[str, int]):
    """The same chunks from the pure-Python reader (when _C lacks the native parser)."""
    from .tfrecord import iter_tfrecord, parse_example

    def pack(exs):
        cols = {}
        for name in names:
            counts, offs, blobs, num = [], [0], [], []
            for ex in exs:
                vals = ex.get(name, [])
                counts.append(len(vals))
                first = np.nan
                for v in vals:
                    if isinstance(v, bytes):
                        blobs.append(v)
                        offs.append(offs[-1] + len(v))
                    elif first != first:
                        first = float(v)
                num.append(first if not (vals and isinstance(vals[0], bytes)) else np.nan)
            cols[name] = (np.asarray(counts, dtype=np.int64), np.asarray(offs, dtype=np.int64),
                          np.frombuffer(b"".join(blobs), dtype=np.uint8), np.asarray(num, dtype=np.float64))
        return cols

    exs, rec0, rec = [], 0, 0
    for payload in iter_tfrecord(path, skip_corrupt=skip_corrupt, stats=stats):
        try:
            exs.append(parse_example(payload))
        except DataError as e:
            if not skip_corrupt:
                raise DataError(f"{path}: record {rec}: {e}") from None
            stats["corrupt_records"] = stats.get("corrupt_records", 0) + 1
            rec += 1
            continue
        rec += 1
        if len(exs) == 65536:
            yield rec0, len(exs), pack(exs)
            rec0 += len(exs)
            exs = []
    if exs:
        yield rec0, len(exs), pack(exs)


def _binary_array(offsets: np.ndarray, data: np.ndarray):
    import pyarrow as pa

    return pa.Array.from_buffers(pa.large_binary(), len(offsets) - 1,
                                 [None, pa.py_buffer(offsets.astype(np.int64)), pa.py_buffer(data)])


def _run_tfrecord(task: Task) -> TaskResult:
    from .lt4rec import LT4REC_FIELDS, LT4REC_MULTI

    t0 = time.perf_counter()
    names = list(LT4REC_FIELDS) + ["label", "cvrlabel", "seqnum"]
    vocabs = {f: LocalVocab(("-1", ""), binary=True,
                            fixed=None if task.fixed_vocab is None else task.fixed_vocab.get(f, {}))
              for f in LT4REC_FIELDS}
    lens = {f: (task.max_len if f in LT4REC_MULTI else 1) for f in LT4REC_FIELDS}
    stats: Dict[str, int] = {}
    # skip_corrupt needs the resynchronising Python reader; otherwise the native one when built
    native = _native() is not None and not task.skip_corrupt
    chunks = (_tf_chunks_native(task.path, names) if native
              else _tf_chunks_python(task.path, names, task.skip_corrupt, stats))
    out_chunks, rows = [], 0
    for rec0, n, cols in chunks:
        c_click, _, _, click = cols["label"]
        c_conv, _, _, conv = cols["cvrlabel"]
        click = np.where(c_click > 0, click, np.nan)
        conv = np.where(c_conv > 0, conv, np.nan)
        validate_labels(task.path, rec0, click, conv, "label", "cvrlabel")
        enc: Dict[str, np.ndarray] = {}
        for f in LT4REC_FIELDS:
            counts, offs, data, _ = cols[f]
            ids = _ids_from_lists(vocabs[f], _binary_array(offs, data), counts, lens[f])
            enc[f"f.{f}"] = ids[:, 0] if lens[f] == 1 else ids
        enc["l.click"] = click.astype(np.uint8)
        enc["l.conversion"] = conv.astype(np.float32)
        counts, offs, data, _ = cols["seqnum"]
        first = _first_values(counts, offs, data, b"")
        enc["g.request"] = _hash_strings(first)
        counts, offs, data, _ = cols["FEA_UID"]
        enc["g.user"] = _hash_strings(_first_values(counts, offs, data, b"-1"))
        out_chunks.append(_save_chunk(task.work, len(out_chunks), enc))
        rows += n
    return TaskResult(task.index, rows, out_chunks, {f: v.values() for f, v in vocabs.items()},
                      seconds=time.perf_counter() - t0, stats=stats)


def _first_values(counts, offsets, data, default: bytes):
    """The first value of each row's list as a binary array (``default`` for an empty list)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = _binary_array(offsets, data)
    starts = np.cumsum(counts) - counts
    has = counts > 0
    firsts = arr.take(pa.array(np.where(has, starts, 0))) if len(arr) else pa.nulls(counts.size, pa.large_binary())
    return pc.if_else(pa.array(has), firsts, pa.scalar(default, pa.large_binary()))


# --------------------------------------------------------------------------- CSV / Parquet
def _run_table(task: Task) -> TaskResult:
    import pyarrow as pa
    import pyarrow.compute as pc

    from .table import _as_strings, _batches

    t0 = time.perf_counter()
    sch = task.schema
    vocabs: Dict[str, Optional[LocalVocab]] = {}
    for f in sch.fields:
        if f.hash_buckets is not None:
            vocabs[f.name] = None
        elif task.fixed_vocab is not None and f.name in task.fixed_vocab:
            vocabs[f.name] = LocalVocab(f.missing, fixed=task.fixed_vocab[f.name])
        elif isinstance(f.vocab, list):
            vocabs[f.name] = LocalVocab(f.missing, fixed={str(v): i + 1 for i, v in enumerate(f.vocab)})
        else:
            vocabs[f.name] = LocalVocab(f.missing)
    out_chunks, rows = [], 0
    if task.fmt == "parquet" and task.row_groups is not None:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(task.path)
        batches = pf.iter_batches(batch_size=task.batch_rows, row_groups=task.row_groups, columns=sch.columns())
        row0 = sum(pf.metadata.row_group(i).num_rows for i in range(task.row_groups[0])) if task.row_groups else 0
    else:
        batches = _batches(task.path, task.fmt, sch.columns(), task.batch_rows)
        row0 = 0
    granges: Dict[str, Tuple[int, int]] = {}
    for batch in batches:
        cols = {name: batch.column(i) for i, name in enumerate(batch.schema.names)}
        n = batch.num_rows
        click = _numeric(task.path, sch.click, cols[sch.click])
        conv = _numeric(task.path, sch.conversion, cols[sch.conversion]) if sch.conversion else None
        if conv is not None:
            conv = np.where(np.isnan(conv) & (click == 0), 0.0, conv)  # empty conversion on a non-click: 0
        validate_labels(task.path, row0, click, conv, sch.click, sch.conversion or "conversion",
                        sch.conversion_type == "binary")
        enc: Dict[str, np.ndarray] = {}
        for f in sch.fields:
            col = cols[f.column]
            is_list = pa.types.is_list(col.type) or pa.types.is_large_list(col.type)
            if not f.multi and not is_list:
                flat, counts = col, np.ones(n, dtype=np.int64)  # text made per distinct value
            else:
                if not is_list:
                    col = pc.split_pattern(_as_strings(col), f.sep)
                if not f.multi:
                    col = pc.list_slice(col.fill_null(pa.scalar([], col.type)), 0, 1)
                counts = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
                flat = pc.list_flatten(col)
            if f.hash_buckets is not None:
                ids = _hash_ids(flat, f.missing, f.hash_buckets)
                out = np.full((n, f.max_len), -1, dtype=np.int32)
                starts = np.cumsum(counts) - counts
                row = np.repeat(np.arange(n), counts)
                slot = np.arange(ids.size) - np.repeat(starts, counts)
                keep = slot < f.max_len
                out[row[keep], slot[keep]] = ids[keep]
                out[counts == 0, 0] = 0
            else:
                out = _ids_from_lists(vocabs[f.name], flat, counts, f.max_len)
            enc[f"f.{f.name}"] = out[:, 0] if f.max_len == 1 else out
        enc["l.click"] = click.astype(np.uint8)
        enc["l.conversion"] = (conv if conv is not None else np.zeros(n)).astype(np.float32)
        for g, c in sch.groups.items():
            enc[f"g.{g}"], lo_hi = _group_column(task.path, g, c, cols[c])
            if lo_hi is not None:
                lo, hi = granges.get(g, lo_hi)
                granges[g] = (min(lo, lo_hi[0]), max(hi, lo_hi[1]))
        out_chunks.append(_save_chunk(task.work, len(out_chunks), enc))
        rows += n
        row0 += n
    return TaskResult(task.index, rows, out_chunks, {k: v.values() for k, v in vocabs.items() if v is not None},
                      group_range=granges, seconds=time.perf_counter() - t0)


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


def _run(task: Task) -> TaskResult:
    if task.fmt == "tfrecord":
        return _run_tfrecord(task)
    return _run_table(task)


# --------------------------------------------------------------------------- driver
def expand_inputs(inputs: Sequence[str]) -> List[str]:
    out: List[str] = []
    for x in inputs:
        x = os.path.expanduser(os.fspath(x))
        if any(ch in x for ch in "*?["):
            hits = sorted(glob.glob(x))
            if not hits:
                raise DataError(f"{x}: no file matches this pattern")
            out += hits
        elif os.path.isdir(x):
            out += sorted(os.path.join(x, f) for f in os.listdir(x) if not f.startswith("."))
        elif not os.path.exists(x):
            raise DataError(f"{x}: no such file")
        else:
            out.append(x)
    return [os.path.abspath(p) for p in out]


def guess_format(path: str) -> str:
    low = path.lower()
    if low.endswith((".parquet", ".pq")):
        return "parquet"
    if low.endswith((".csv", ".csv.gz", ".tsv")):
        return "csv"
    return "tfrecord"


def convert(inputs: Sequence[str], out: str, schema=None, workers: int = 1, fmt: Optional[str] = None,
            shard_rows: int = DEFAULT_SHARD_ROWS, max_len: int = 8, skip_corrupt: bool = False,
            vocab_from: Optional[str] = None, overwrite: bool = False, batch_rows: int = _BATCH_ROWS,
            log=None) -> Dict[str, Any]:
    """Convert files to an encoded directory; returns a summary (rows, seconds, rows_per_s).

    vocab_from: an encoded directory (or a run directory of `ncs train`, with vocab.json and
    fields.json) whose vocabulary to encode with (unknown values -> 0, the same vocab sizes), so
    that e.g. a test file is encoded like its training file."""
    t0 = time.perf_counter()
    paths = expand_inputs(inputs)
    if not paths:
        raise DataError("convert: no input files")
    fmts = {fmt or guess_format(p) for p in paths}
    if len(fmts) != 1:
        raise DataError(f"convert: inputs mix formats {sorted(fmts)}; convert them separately")
    fmt = fmts.pop()
    if fmt not in ("tfrecord", "csv", "parquet"):
        raise DataError(f"convert: format must be tfrecord, csv or parquet, got {fmt!r}")
    sch = None
    if fmt != "tfrecord":
        if schema is None:
            raise DataError(f"convert: {fmt} input needs --schema (a YAML/JSON schema file)")
        from .table import parse_schema

        sch = parse_schema(schema)
    fixed = None
    base = None
    base_sizes: Dict[str, int] = {}
    if vocab_from is not None:
        import json

        if os.path.isfile(os.path.join(vocab_from, "manifest.json")) or not os.path.isfile(
                os.path.join(vocab_from, "vocab.json")):
            base = EncodedDir(vocab_from)
            fixed = base.vocab()
            if fixed is None:
                raise DataError(f"{base.path}: has no vocab.json to encode with")
        else:  # a run directory (ncs train): its vocab.json and fields.json
            with open(os.path.join(vocab_from, "vocab.json"), encoding="utf-8") as f:
                fixed = json.load(f)
            fj = os.path.join(vocab_from, "fields.json")
            if os.path.isfile(fj):
                with open(fj, encoding="utf-8") as f:
                    base_sizes = {x["name"]: int(x["vocab_size"]) for x in json.load(f)}
    writer = ShardWriter(out, shard_rows, overwrite=overwrite)
    work = os.path.join(writer.tmp, "work")
    try:
        tasks: List[Task] = []
        for p in paths:
            if fmt == "parquet" and workers > 1:
                import pyarrow.parquet as pq

                try:
                    ngroups = pq.ParquetFile(p).num_row_groups
                except Exception as e:
                    raise DataError(f"{p}: not a readable Parquet file ({e})") from e
                per = max(1, -(-ngroups // workers))
                for a in range(0, ngroups, per):
                    tasks.append(Task(len(tasks), p, fmt, sch, list(range(a, min(ngroups, a + per)))))
            else:
                tasks.append(Task(len(tasks), p, fmt, sch))
        for t in tasks:
            t.max_len, t.skip_corrupt, t.fixed_vocab, t.batch_rows = max_len, skip_corrupt, fixed, batch_rows
            t.work = os.path.join(work, f"task-{t.index:05d}")
            os.makedirs(t.work)
        if workers > 1 and len(tasks) > 1:
            import multiprocessing as mp

            # fork (Linux): workers start at once, without re-importing torch; NCS_CONVERT_MP=spawn to change
            method = os.environ.get("NCS_CONVERT_MP") or ("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=mp.get_context(method)) as ex:
                results = list(ex.map(_run, tasks))
        else:
            results = [_run(t) for t in tasks]
        t1 = time.perf_counter()
        fields, vocab, luts = _merge(fmt, sch, results, max_len, fixed, base)
        fields = [FieldSpec(f.name, base_sizes.get(f.name, f.vocab_size), f.max_len) for f in fields]
        granges: Dict[str, Tuple[int, int]] = {}
        for r in results:
            for g, (lo, hi) in r.group_range.items():
                a, b = granges.get(g, (lo, hi))
                granges[g] = (min(a, lo), max(b, hi))
        group_names = ["request", "user"] if fmt == "tfrecord" else list(sch.groups)
        gdt = {g: (int_dtype(*granges[g]) if g in granges else np.dtype(np.int64)) for g in group_names}
        for r in results:
            for d in r.chunks:
                cols = _load_chunk(d)
                outc: Dict[str, np.ndarray] = {}
                for f in fields:
                    c = cols[f"f.{f.name}"]
                    lut = luts[r.index].get(f.name)
                    if lut is not None:
                        c = np.where(c >= 0, lut[np.maximum(c, 0)], -1)
                    outc[f"f.{f.name}"] = c.astype(id_dtype(f.vocab_size))
                outc["l.click"] = cols["l.click"]
                outc["l.conversion"] = cols["l.conversion"]
                for g in group_names:
                    outc[f"g.{g}"] = cols[f"g.{g}"].astype(gdt[g])
                writer.write(outc)
                shutil.rmtree(d)
        shutil.rmtree(work)
        stats: Dict[str, int] = {}
        for r in results:
            for k, v in r.stats.items():
                stats[k] = stats.get(k, 0) + v
        src = {"inputs": paths, "format": fmt, "workers": workers, "max_len": max_len, "stats": stats,
               "vocab_from": None if base is None else base.path}
        d = writer.close(fields, label_types(["click", "conversion"], ["click"]), group_names,
                         vocab if fixed is None else fixed, src)
    except BaseException:
        writer.abort()
        raise
    secs = time.perf_counter() - t0
    summary = {"out": d.path, "rows": d.rows, "shards": len(d.shards), "inputs": len(paths), "format": fmt,
               "workers": workers, "seconds": round(secs, 3), "parse_seconds": round(t1 - t0, 3),
               "rows_per_s": round(d.rows / secs, 1) if secs > 0 else None,
               "bytes": sum(f["bytes"] for s in d.shards for f in s.files.values())}
    if stats:
        summary["stats"] = stats
    return summary


def _merge(fmt, sch, results: List[TaskResult], max_len: int, fixed, base: Optional[EncodedDir]):
    """Global vocabularies (first appearance over the inputs in order) and per-task lookup
    tables local id -> global id."""
    from .lt4rec import LT4REC_FIELDS, LT4REC_MULTI

    if fmt == "tfrecord":
        specs = [(f, max_len if f in LT4REC_MULTI else 1, None) for f in LT4REC_FIELDS]
    else:
        specs = [(f.name, f.max_len, f.hash_buckets) for f in sch.fields]
    luts: Dict[int, Dict[str, np.ndarray]] = {r.index: {} for r in results}
    vocab: Dict[str, Dict[str, int]] = {}
    fields: List[FieldSpec] = []
    for name, ml, hb in specs:
        if hb is not None:
            fields.append(FieldSpec(name, hb + 1, ml))
            continue
        if fixed is not None and name in fixed:
            size = max(fixed[name].values(), default=0) + 1
            if base is not None:
                size = next((f.vocab_size for f in base.fields if f.name == name), size)
            fields.append(FieldSpec(name, size, ml))
            continue
        if sch is not None:
            spec = next(f for f in sch.fields if f.name == name)
            if isinstance(spec.vocab, list):
                table = {str(v): i + 1 for i, v in enumerate(spec.vocab)}
                fields.append(FieldSpec(name, len(table) + 1, ml))
                vocab[name] = table
                continue
        import pyarrow as pa
        import pyarrow.compute as pc

        arrs = [r.vocab[name] for r in results if name in r.vocab]
        allv = pa.concat_arrays(arrs) if arrs else pa.array([], pa.string())
        glob = pc.unique(allv)  # first appearance order, inputs in order
        for r in results:
            vals = r.vocab.get(name)
            lut = np.zeros((0 if vals is None else len(vals)) + 1, dtype=np.int64)
            if vals is not None and len(vals):
                lut[1:] = pc.index_in(vals, value_set=glob).to_numpy(zero_copy_only=False) + 1
            luts[r.index][name] = lut
        keys = glob.to_pylist()
        if pa.types.is_binary(glob.type) or pa.types.is_large_binary(glob.type):
            keys = [k.decode("utf-8", errors="replace") for k in keys]
        vocab[name] = dict(zip(keys, range(1, len(keys) + 1)))
        fields.append(FieldSpec(name, len(keys) + 1, ml))
    return fields, vocab, luts


# --------------------------------------------------------------------------- synthetic
def synth(rows: int, out: str, seed: int = 0, conflict: float = 1.0, shard_rows: int = DEFAULT_SHARD_ROWS,
          overwrite: bool = False, **kw) -> Dict[str, Any]:
    """synthetic(rows, seed, conflict) written block by block (bounded memory) into ``out``."""
    from .synth import synthetic_chunks

    t0 = time.perf_counter()
    w = ShardWriter(out, shard_rows, overwrite=overwrite)
    fields = None
    try:
        for part in synthetic_chunks(rows, chunk=1 << 16, seed=seed, conflict=conflict, **kw):
            if fields is None:
                fields = part.fields
            ids = part.ids.numpy()
            cols = {}
            for j, f in enumerate(fields):
                cols[f"f.{f.name}"] = (ids[:, j, 0] if f.max_len == 1 else ids[:, j, :f.max_len]).astype(
                    id_dtype(f.vocab_size))
            cols["l.click"] = part.labels["click"].numpy().astype(np.uint8)
            cols["l.conversion"] = part.labels["conversion"].numpy().astype(np.float32)
            cols["g.request"] = part.groups["request"].numpy()  # int64: block * 65536 + local request
            cols["g.user"] = part.groups["user"].numpy().astype(np.int32)
            w.write(cols)
        if fields is None:
            from .synth import _fields, _resolve, _world

            fields = _fields(_world(int(seed), _resolve(rows, kw)))
        d = w.close(fields, label_types(["click", "conversion"], ["click"]), ["request", "user"], None,
                    {"synthetic": {"rows": rows, "seed": seed, "conflict": conflict, **kw}})
    except BaseException:
        w.abort()
        raise
    secs = time.perf_counter() - t0
    return {"out": d.path, "rows": d.rows, "shards": len(d.shards), "seconds": round(secs, 3),
            "rows_per_s": round(d.rows / secs, 1) if secs > 0 else None,
            "bytes": sum(f["bytes"] for s in d.shards for f in s.files.values())}
