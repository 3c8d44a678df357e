"""`ncs data convert` / `ncs data synth`: sources -> the encoded directory format (shards.py).

Streamed with bounded memory and parallel over input files (CSV / Parquet: also over a file's
fields, on threads, when there are more workers than files):

  pass 1 (parallel, one task per file): read record batches (TFRecord: the native encoder,
      records straight to ids; CSV / Parquet: each field's values looked up vectorised in the
      task's vocabulary so far), validate labels, hash string group keys; write the task's rows
      with task-local ids (int32) to a work folder. Memory: one batch + the task's vocabularies.
  merge: the tasks' vocabularies are merged in input order (value -> first id), which gives
      exactly the ids a sequential reader assigns (ids in order of first appearance).
  pass 2 (sequential, over the compact encoded rows only): remap local -> global ids with one
      lookup table per (task, field), cast to the smallest id type, cut into shards.

So vocabularies are built in the same pass that parses, and pass 2 never touches the source.
The output is written to OUT.tmp-XXXX and renamed to OUT after the manifest: a killed convert
leaves no OUT that looks complete.
"""
from __future__ import annotations

from __future__ import annotations

import glob
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .columns import validate_labels  # noqa: F401  (public here: tests, bench)
from .convert_tasks import _BATCH_ROWS, Task, TaskResult, _load_chunk, _run
from .errors import DataError
from .formats import SOURCE_FORMATS, detect
from .shards import DEFAULT_SHARD_ROWS, EncodedDir, ShardWriter, id_dtype, int_dtype, label_types
from .tfchunks import _native  # noqa: F401  (public here: tests, bench)
from .types import FieldSpec


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
    if fmt is not None and fmt not in SOURCE_FORMATS:
        raise DataError(f"convert: format must be tfrecord, csv or parquet, got {fmt!r}")
    fmts = {detect(p, fmt, accept=SOURCE_FORMATS) for p in paths}
    if len(fmts) != 1:
        raise DataError(f"convert: inputs mix formats {sorted(fmts)}; convert them separately")
    fmt = fmts.pop()
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
        tasks: List[Task] = [Task(i, p, fmt, sch) for i, p in enumerate(paths)]
        # CSV / Parquet: workers beyond the files encode a file's fields on threads (no vocabulary
        # built twice and merged, as splitting a file into row-group tasks would)
        threads = 1 if fmt == "tfrecord" else max(1, workers // len(tasks))
        for t in tasks:
            t.max_len, t.skip_corrupt, t.fixed_vocab, t.batch_rows = max_len, skip_corrupt, fixed, batch_rows
            t.threads = threads
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
                os.remove(d)
        shutil.rmtree(work)
        stats: Dict[str, int] = {}
        for r in results:
            for k, v in r.stats.items():
                stats[k] = stats.get(k, 0) + v
        src = {"inputs": paths, "format": fmt, "workers": workers, "max_len": max_len, "stats": stats,
               "vocab_from": None if base is None else base.path}
        d = writer.close(fields, label_types(["click", "conversion"], ["click"]), group_names,
                         _vocab_json(vocab) if fixed is None else fixed, src)
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
        if len(results) == 1 and arrs:  # one task: its values are the vocabulary, its ids the global ones
            glob = arrs[0]  # (a task's values are distinct, in id order)
        else:
            allv = pa.concat_arrays(arrs) if arrs else pa.array([], pa.string())
            glob = pc.unique(allv)  # first appearance order, inputs in order
            for r in results:
                vals = r.vocab.get(name)
                lut = np.zeros((0 if vals is None else len(vals)) + 1, dtype=np.int64)
                if vals is not None and len(vals):
                    lut[1:] = pc.index_in(vals, value_set=glob).to_numpy(zero_copy_only=False) + 1
                if not np.array_equal(lut, np.arange(lut.size)):  # the first task's are the identity
                    luts[r.index][name] = lut
        table = _json_table(glob)
        if table is None:  # keys that JSON escapes: through Python objects
            keys = glob.to_pylist()
            if pa.types.is_binary(glob.type) or pa.types.is_large_binary(glob.type):
                keys = [k.decode("utf-8", errors="replace") for k in keys]
            table = dict(zip(keys, range(1, len(keys) + 1)))
        vocab[name] = table
        fields.append(FieldSpec(name, len(glob) + 1, ml))
    return fields, vocab, luts


class _JsonTable(str):
    """One field's {value: id} table already as JSON text (json.dumps' bytes exactly)."""


def _json_table(values) -> Optional[_JsonTable]:
    """json.dumps({v: i + 1 for i, v in enumerate(values)}) made by pyarrow kernels, without a
    Python object per value, when no value needs an escape (printable ASCII without " or \\, the
    usual ids and codes); None otherwise."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if values.null_count:
        return None
    try:
        s = values.cast(pa.large_string())
    except pa.ArrowException:  # bytes that are not UTF-8
        return None
    n = len(s)
    if n == 0:
        return _JsonTable("{}")
    if pc.any(pc.match_substring_regex(s, r'[^ -~]|["\\]')).as_py():
        return None
    ids = pa.array(np.arange(1, n + 1, dtype=np.int64)).cast(pa.large_string())
    items = pc.binary_join_element_wise(pa.scalar('"', pa.large_string()), s, pa.scalar('": ', pa.large_string()),
                                        ids, pa.scalar("", pa.large_string()))
    one = pa.LargeListArray.from_arrays(pa.array([0, n], pa.int64()), items)
    return _JsonTable("{" + pc.binary_join(one, pa.scalar(", ", pa.large_string()))[0].as_py() + "}")


def _vocab_json(vocab: Dict[str, Any]) -> str:
    """json.dumps(vocab) where some tables are already _JsonTable text."""
    import json

    if not any(isinstance(t, _JsonTable) for t in vocab.values()):
        return json.dumps(vocab)
    return "{" + ", ".join(f"{json.dumps(k)}: {t if isinstance(t, _JsonTable) else json.dumps(t)}"
                           for k, t in vocab.items()) + "}"


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
