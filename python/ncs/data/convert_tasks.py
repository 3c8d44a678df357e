"""Pass 1 of `ncs data convert`: one task per input file.

A task reads its rows in record batches, encodes every field with task-local ids (ncs.data.columns),
validates the labels, turns group keys into int64 and saves the encoded rows to its work folder
(chunk-NNNNNN.bin, scratch files inside the converter's unfinished output folder). The driver
(convert.py) then merges the tasks' vocabularies and remaps the ids (pass 2).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .columns import (LocalVocab, _binary_array, _first_values, _group_column, _hash_ids, _hash_strings,
                      _ids_from_lists, _numeric, place, validate_labels)
from .tfchunks import _native, _tf_chunks_native, _tf_chunks_python, _tf_encoded_native

_BATCH_ROWS = 1 << 20


@dataclass
class Task:
    index: int
    path: str
    fmt: str  # tfrecord | csv | parquet
    schema: Any = None  # TableSchema for csv/parquet
    max_len: int = 8
    skip_corrupt: bool = False
    work: str = ""
    fixed_vocab: Optional[Dict[str, Dict[str, int]]] = None
    batch_rows: int = _BATCH_ROWS
    threads: int = 1  # CSV / Parquet: fields of a batch encoded on this many threads


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
    """One scratch file per chunk (chunk-NNNNNN.bin): an 8-byte header length, a JSON list of
    [column, dtype, shape], then the columns' bytes. One file, not one per column: the open /
    unlink calls per column cost more than writing the bytes on a busy disk."""
    arrs = {k: np.ascontiguousarray(v) for k, v in cols.items()}
    head = json.dumps([[k, a.dtype.str, list(a.shape)] for k, a in arrs.items()]).encode()
    p = os.path.join(work, f"chunk-{i:06d}.bin")
    with open(p, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for a in arrs.values():
            if a.size:
                f.write(a.data)
    return p


def _load_chunk(p: str) -> Dict[str, np.ndarray]:
    with open(p, "rb") as f:
        spec = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        out: Dict[str, np.ndarray] = {}
        for k, dt, shape in spec:
            a = np.empty(shape, dtype=np.dtype(dt))
            if a.size and f.readinto(memoryview(a.reshape(-1)).cast("B")) != a.nbytes:
                raise OSError(f"{p}: truncated scratch file")
            out[k] = a
    return out


# --------------------------------------------------------------------------- TFRecord (LT4REC)
def _run_tfrecord(task: Task) -> TaskResult:
    from .lt4rec import LT4REC_FIELDS, LT4REC_MULTI

    t0 = time.perf_counter()
    names = list(LT4REC_FIELDS) + ["label", "cvrlabel", "seqnum"]
    vocabs = {f: LocalVocab(("-1", ""), binary=True,
                            fixed=None if task.fixed_vocab is None else task.fixed_vocab.get(f, {}))
              for f in LT4REC_FIELDS}
    lens = {f: (task.max_len if f in LT4REC_MULTI else 1) for f in LT4REC_FIELDS}
    stats: Dict[str, int] = {}
    # skip_corrupt needs the resynchronising Python reader; otherwise the native encoder (records
    # straight to ids) when built, else the native parser + the vectorised encoding below
    C = None if task.skip_corrupt else _native()
    if C is not None and hasattr(C, "tfrecord_encode_cpu") and all(v.native is not None for v in vocabs.values()):
        return _run_tfrecord_encoded(task, vocabs, lens, t0)
    chunks = (_tf_chunks_native(task.path, names) if C is not None
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


def _run_tfrecord_encoded(task: Task, vocabs: Dict[str, LocalVocab], lens: Dict[str, int], t0: float) -> TaskResult:
    """The TFRecord task on the native encoder: the same columns as the path above (the same
    ids, labels and group hashes), without the intermediate value columns."""
    from .vocab import stable_hash64

    fields = list(vocabs)
    chunks = _tf_encoded_native(task.path, fields, [lens[f] for f in fields],
                                [vocabs[f].native for f in fields], ["label", "cvrlabel"],
                                {"seqnum": b"", "FEA_UID": b"-1"})
    out_chunks, rows = [], 0
    held: Optional[Dict[str, np.ndarray]] = None
    for rec0, n, ids, labs, grp in chunks:
        click, conv = labs["label"], labs["cvrlabel"]
        validate_labels(task.path, rec0, click, conv, "label", "cvrlabel")
        enc: Dict[str, np.ndarray] = {f"f.{f}": ids[f] for f in fields}
        enc["l.click"] = click.astype(np.uint8)
        enc["l.conversion"] = conv.astype(np.float32)
        for g, name in (("request", "seqnum"), ("user", "FEA_UID")):
            idx, values = grp[name]  # hashed once per distinct value, as _hash_strings does
            enc[f"g.{g}"] = np.asarray([stable_hash64(v) for v in values], dtype=np.int64)[idx]
        rows += n
        if held is not None:  # a record that straddled two blocks: saved with the next chunk
            enc = {k: np.concatenate([held[k], v]) for k, v in enc.items()}
            held = None
        if len(enc["l.click"]) < 256:
            held = enc
            continue
        out_chunks.append(_save_chunk(task.work, len(out_chunks), enc))
    if held is not None:
        out_chunks.append(_save_chunk(task.work, len(out_chunks), held))
    return TaskResult(task.index, rows, out_chunks, {f: v.values() for f, v in vocabs.items()},
                      seconds=time.perf_counter() - t0)


# --------------------------------------------------------------------------- CSV / Parquet
def _encode_field(f, col, n: int, vocab: Optional[LocalVocab]) -> np.ndarray:
    """The ids of one field of a batch: [n] (max_len 1) or [n, max_len]."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from .table import _as_strings

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
        out = place(_hash_ids(flat, f.missing, f.hash_buckets), counts, f.max_len)
    else:
        out = _ids_from_lists(vocab, flat, counts, f.max_len)
    return out[:, 0] if f.max_len == 1 else out


def _prefetched(it, depth: int = 1):
    """The items of `it`, the next `depth` of them read ahead on a thread (an error is raised
    where the item would have been)."""
    import queue
    import threading

    q: "queue.Queue" = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def feed():
        try:
            for x in it:
                q.put((True, x))
                if stop.is_set():
                    return
            q.put((True, end))
        except BaseException as e:  # noqa: BLE001  (raised by the consumer)
            q.put((False, e))

    t = threading.Thread(target=feed, daemon=True, name="ncs-convert-read")
    t.start()
    try:
        while True:
            ok, x = q.get()
            if not ok:
                raise x
            if x is end:
                return
            yield x
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        t.join()


def _run_table(task: Task) -> TaskResult:
    from .table import _batches

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
    batches = _batches(task.path, task.fmt, sch.columns(), task.batch_rows)
    row0 = 0
    granges: Dict[str, Tuple[int, int]] = {}
    pool = None
    if task.threads > 1:  # fields encoded on threads (the native lookups and pyarrow release the GIL)
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(task.threads, thread_name_prefix="ncs-convert")
        batches = _prefetched(batches)  # the next batch read meanwhile
    try:
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
            futs = [pool.submit(_encode_field, f, cols[f.column], n, vocabs[f.name]) for f in sch.fields] if pool \
                else None
            if futs is None:
                for f in sch.fields:
                    enc[f"f.{f.name}"] = _encode_field(f, cols[f.column], n, vocabs[f.name])
            enc["l.click"] = click.astype(np.uint8)
            enc["l.conversion"] = (conv if conv is not None else np.zeros(n)).astype(np.float32)
            gerr = None
            try:
                for g, c in sch.groups.items():
                    enc[f"g.{g}"], lo_hi = _group_column(task.path, g, c, cols[c])
                    if lo_hi is not None:
                        lo, hi = granges.get(g, lo_hi)
                        granges[g] = (min(lo, lo_hi[0]), max(hi, lo_hi[1]))
            except Exception as e:  # noqa: BLE001  (a field's error comes first, as without threads)
                if futs is None:
                    raise
                gerr = e
            for f, fut in zip(sch.fields, futs or ()):
                enc[f"f.{f.name}"] = fut.result()
            if gerr is not None:
                raise gerr
            out_chunks.append(_save_chunk(task.work, len(out_chunks), enc))
            rows += n
            row0 += n
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return TaskResult(task.index, rows, out_chunks, {k: v.values() for k, v in vocabs.items() if v is not None},
                      group_range=granges, seconds=time.perf_counter() - t0)


def _run(task: Task) -> TaskResult:
    if task.fmt == "tfrecord":
        return _run_tfrecord(task)
    return _run_table(task)
