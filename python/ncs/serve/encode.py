"""Encode a data file with a run's vocabulary, in chunks of rows (streamed).

    for chunk in iter_chunks(run, "new.csv", length_column="duration"):
        chunk.data.ids      # int64 [rows, F, L], the exported models' input
        chunk.length        # float64 [rows] or None
        chunk.order         # float64 [rows] of order_column (NaN where missing or negative) or None

Each chunk is encoded by the same readers as training (ncs.data.encode_table /
encode_lt4rec) with the run's vocab.json held fixed, so a value never seen in training maps to
id 0 (the field's 'missing' row), exactly as `ncs eval --data FILE` encodes. Only one chunk of
the file is in memory at a time:

    .safetensors           an ncs-encoded file (ncs data encode / the data cache), sliced
    .csv .csv.gz .tsv      read in pyarrow batches by the run's data.options.schema
    .parquet .pq           read in row batches by the same schema
    anything else          the authors' TFRecord (gzip or plain), read record by record

Label columns a file may lack for scoring (click, conversion, groups) read as 0 / empty;
replay asks for them (need_labels=True) and names the missing ones.
"""
from __future__ import annotations

import os
import re
import struct
import tempfile
from dataclasses import dataclass
from typing import Iterator, List, Optional

import numpy as np
import torch

from .runs import Run, ServeError

CHUNK_ROWS = 65536


@dataclass
class Chunk:
    start: int                      # index of the chunk's first row in the file
    data: "object"                  # ncs.data.EncodedData
    length: Optional[np.ndarray]    # float64 [rows] of the length column, or None
    order: Optional[np.ndarray] = None  # float64 [rows] of the order column (NaN: missing), or None


def file_kind(path: str) -> str:
    """encoded, parquet, csv or tfrecord: ncs.data.formats.detect (the table above)."""
    from ..data.formats import detect

    return detect(path)


def _check_ids(run: Run, data, what: str) -> None:
    from ..models import check_ids

    try:
        check_ids(data.ids, [int(f["vocab_size"]) for f in run.fields], what)
    except ValueError as e:
        raise ServeError(f"{e}; the data was encoded with another vocabulary than the run's") from None


def _lengths(path: str, col: str, values, first_row: int) -> np.ndarray:
    out = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(out) | (out < 0)
    if bad.any():
        i = int(np.nonzero(bad)[0][0])
        raise ServeError(f"--length-column: {path}: row {first_row + i}: {col!r} must be a finite number >= 0, "
                         f"got {values[i]!r}")
    return out


def _orders(values) -> np.ndarray:
    """A position column as float64; missing, non-numeric or negative (e.g. "-1") -> NaN."""
    out = []
    for v in values:
        try:
            x = float(v.decode() if isinstance(v, bytes) else v)
        except (TypeError, ValueError, UnicodeDecodeError, AttributeError):
            x = float("nan")
        out.append(x if np.isfinite(x) and x >= 0 else float("nan"))
    return np.asarray(out, dtype=np.float64)


def iter_chunks(run: Run, path: str, chunk_rows: int = CHUNK_ROWS, length_column: Optional[str] = None,
                need_labels: bool = False, order_column: Optional[str] = None) -> Iterator[Chunk]:
    if not os.path.exists(path):
        raise ServeError(f"--data: {path}: no such file")
    if chunk_rows < 1:
        raise ServeError(f"--batch-size: expected an int >= 1, got {chunk_rows}")
    kind = file_kind(path)
    if kind == "encoded":
        yield from _encoded_chunks(run, path, chunk_rows, length_column, order_column)
        return
    if run.vocab is None:
        raise ServeError(f"--data: {run.dir} has no vocab.json (its data was synthetic or cached), so {path} "
                         f"cannot be encoded like its training data; pass an encoded .safetensors file")
    if kind == "tfrecord":
        yield from _tfrecord_chunks(run, path, chunk_rows, length_column, order_column)
    else:
        yield from _table_chunks(run, path, kind, chunk_rows, length_column, need_labels, order_column)


def _encoded_chunks(run: Run, path: str, chunk_rows: int, length_column: Optional[str],
                    order_column: Optional[str]) -> Iterator[Chunk]:
    import ncs.data as D

    data = D.load_encoded(path)
    if data.num_fields != len(run.fields):
        raise ServeError(f"--data: {path} has {data.num_fields} fields, the run has {len(run.fields)}")
    _check_ids(run, data, f"--data {path}: ids")
    length = None
    if length_column is not None:
        if length_column not in data.labels:
            raise ServeError(f"--length-column: {path} has no label {length_column!r} (labels: {sorted(data.labels)})")
        length = _lengths(path, length_column, data.labels[length_column].double().numpy(), 0)
    order = None
    if order_column is not None:
        src = {**data.labels, **data.groups}
        if order_column not in src:
            raise ServeError(f"--order-column: {path} has no label or group {order_column!r} "
                             f"(has {sorted(src)})")
        order = _orders(src[order_column].double().tolist())
    n = len(data)
    for a in range(0, max(n, 1), chunk_rows):
        b = min(n, a + chunk_rows)
        idx = torch.arange(a, b)
        yield Chunk(a, data.subset(idx), None if length is None else length[a:b],
                    None if order is None else order[a:b])
        if n == 0:
            return


def _fix_message(msg: str, tmp: str, path: str, row0: int, word: str) -> str:
    msg = msg.replace(tmp, path)
    return re.sub(rf"\b{word} (\d+)", lambda m: f"{word} {int(m.group(1)) + row0}", msg)


def _table_chunks(run: Run, path: str, fmt: str, chunk_rows: int, length_column: Optional[str],
                  need_labels: bool, order_column: Optional[str] = None) -> Iterator[Chunk]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    import ncs.data as D
    from ..data.table import open_parquet, parse_schema

    schema = run.cfg.data.options.get("schema")
    if schema is None:
        raise ServeError(f"--data: {path} is a table; the run's config has no data.options.schema for it")
    sch = parse_schema(schema)
    feature_cols = list(dict.fromkeys(f.column for f in sch.fields))
    label_cols = [sch.click] + ([sch.conversion] if sch.conversion else [])
    group_cols = list(sch.groups.values())
    extra_cols = [c for c in (length_column, order_column) if c]
    wanted = list(dict.fromkeys(feature_cols + label_cols + group_cols + extra_cols))
    if fmt == "parquet":
        try:
            pf = open_parquet(path)
        except D.DataError as e:
            raise ServeError(f"--data: {e}") from None
        names = list(pf.schema_arrow.names)
    else:
        import pyarrow.csv as pcsv

        try:
            names = list(pcsv.open_csv(path).schema.names)
        except (pa.ArrowException, OSError) as e:
            raise ServeError(f"--data: {path}: not a readable CSV file ({e})") from None
    missing = [c for c in feature_cols if c not in names]
    missing += [c for c in extra_cols if c not in names]
    if need_labels:
        missing += [c for c in label_cols + group_cols if c not in names]
    if missing:
        raise ServeError(f"--data: {path}: missing columns {missing} (has {names})")
    present = [c for c in wanted if c in names]
    if fmt == "parquet":
        batches = pf.iter_batches(batch_size=chunk_rows, columns=present)
    else:
        batches = _csv_batches(path, present, chunk_rows)
    row0 = 0
    with tempfile.TemporaryDirectory(prefix="ncs-encode-") as tmpdir:
        tmp = os.path.join(tmpdir, "chunk.parquet")
        for batch in batches:
            table = pa.Table.from_batches([batch])
            n = table.num_rows
            for c in label_cols + group_cols:  # columns a scoring file may lack
                if c not in table.column_names:
                    fill = pa.array(["0" if c == sch.click else None] * n, type=pa.string())
                    table = table.append_column(c, fill)
            length = None
            if length_column:
                try:
                    vals = table.column(length_column).cast(pa.float64()).to_numpy(zero_copy_only=False)
                except (pa.ArrowException, ValueError) as e:
                    raise ServeError(f"--length-column: {path}: column {length_column!r} must be numeric ({e})") from None
                length = _lengths(path, length_column, vals, row0)
            order = None
            if order_column:
                order = _orders(table.column(order_column).to_pylist())
            pq.write_table(table, tmp)
            try:
                data, _ = D.encode_table(tmp, schema, vocab=run.vocab, fmt="parquet")
            except D.DataError as e:
                raise D.DataError(_fix_message(str(e), tmp, path, row0, "row")) from None
            _check_sizes(run, data, path)
            yield Chunk(row0, data, length, order)
            row0 += n
        if row0 == 0:
            pq.write_table(pa.table({c: pa.array([], type=pa.string()) for c in
                                     list(dict.fromkeys(feature_cols + label_cols + group_cols))}), tmp)
            data, _ = D.encode_table(tmp, schema, vocab=run.vocab, fmt="parquet")
            yield Chunk(0, data, None if not length_column else np.zeros(0),
                        None if not order_column else np.zeros(0))


def _csv_batches(path: str, columns: List[str], chunk_rows: int):
    import pyarrow as pa
    import pyarrow.csv as pcsv

    reader = pcsv.open_csv(
        path, read_options=pcsv.ReadOptions(block_size=1 << 22),
        convert_options=pcsv.ConvertOptions(include_columns=columns, strings_can_be_null=True,
                                            column_types={c: pa.string() for c in columns}))
    pending, rows = [], 0
    while True:
        try:
            b = reader.read_next_batch()
        except StopIteration:
            break
        except pa.ArrowException as e:
            raise ServeError(f"--data: {path}: CSV parse error ({e})") from None
        pending.append(b)
        rows += b.num_rows
        while rows >= chunk_rows:
            t = pa.Table.from_batches(pending).combine_chunks()
            head, rest = t.slice(0, chunk_rows), t.slice(chunk_rows)
            yield head.to_batches()[0] if head.num_rows else pa.RecordBatch.from_pylist([], schema=t.schema)
            pending = rest.to_batches()
            rows = rest.num_rows
    if rows:
        t = pa.Table.from_batches(pending).combine_chunks()
        yield t.to_batches()[0]


def _check_sizes(run: Run, data, path: str) -> None:
    got = [int(f.vocab_size) for f in data.fields]
    want = [int(f["vocab_size"]) for f in run.fields]
    if got != want or [f.name for f in data.fields] != [f["name"] for f in run.fields]:
        raise ServeError(f"--data: {path}: encoded with the run's schema and vocab.json it gives fields "
                         f"{[(f.name, f.vocab_size) for f in data.fields]}, but the run's fields.json has "
                         f"{[(f['name'], f['vocab_size']) for f in run.fields]}; is vocab.json from this run?")


def _frame(payloads: List[bytes]) -> bytes:
    from ..data.crc import crc32c_batch, mask_crc

    heads = [struct.pack("<Q", len(p)) for p in payloads]
    hc = crc32c_batch(heads)
    pc = crc32c_batch(payloads)
    parts = []
    for h, c1, p, c2 in zip(heads, hc, payloads, pc):
        parts += [h, struct.pack("<I", mask_crc(c1)), p, struct.pack("<I", mask_crc(c2))]
    return b"".join(parts)


def _tfrecord_chunks(run: Run, path: str, chunk_rows: int, length_column: Optional[str],
                     order_column: Optional[str] = None) -> Iterator[Chunk]:
    import ncs.data as D

    opts = run.cfg.data.options
    max_len = int(opts.get("max_len", 8))
    skip = bool(opts.get("skip_corrupt", False))

    def lengths_of(payloads: List[bytes], row0: int) -> np.ndarray:
        vals = []
        for i, p in enumerate(payloads):
            ex = D.parse_example(p)
            v = ex.get(length_column) or []
            try:
                x = v[0]
                vals.append(float(x.decode() if isinstance(x, bytes) else x))
            except (IndexError, ValueError, UnicodeDecodeError):
                raise ServeError(f"--length-column: {path}: record {row0 + i}: feature {length_column!r} "
                                 f"has no numeric first value (got {v[:1]!r})") from None
        return _lengths(path, length_column, vals, row0)

    def orders_of(payloads: List[bytes], row0: int) -> np.ndarray:
        exs = [D.parse_example(p) for p in payloads]
        if exs and not any(order_column in ex for ex in exs):
            raise ServeError(f"--order-column: {path}: no record of {row0}..{row0 + len(exs) - 1} has a feature "
                             f"{order_column!r}")
        return _orders([(ex.get(order_column) or [None])[0] for ex in exs])

    row0 = 0
    with tempfile.TemporaryDirectory(prefix="ncs-encode-") as tmpdir:
        tmp = os.path.join(tmpdir, "chunk.tfrecord")

        def encode(payloads: List[bytes], start: int) -> Chunk:
            with open(tmp, "wb") as f:
                f.write(_frame(payloads))
            try:
                data, _ = D.encode_lt4rec(tmp, max_len=max_len, vocab=run.vocab, skip_corrupt=skip)
            except D.DataError as e:
                raise D.DataError(_fix_message(str(e), tmp, path, start, "record")) from None
            _check_sizes(run, data, path)
            return Chunk(start, data, lengths_of(payloads, start) if length_column else None,
                         orders_of(payloads, start) if order_column else None)

        pending: List[bytes] = []
        for payload in D.iter_tfrecord(path, skip_corrupt=skip):
            pending.append(payload)
            if len(pending) >= chunk_rows:
                yield encode(pending, row0)
                row0 += len(pending)
                pending = []
        if pending or row0 == 0:
            yield encode(pending, row0)


def encode_all(run: Run, path: str, length_column: Optional[str] = None, need_labels: bool = False,
               chunk_rows: int = CHUNK_ROWS, order_column: Optional[str] = None, with_order: bool = False):
    """(EncodedData of every row of `path`, length float64 [rows] or None[, order or None])."""
    from ..data.types import EncodedData

    chunks = list(iter_chunks(run, path, chunk_rows, length_column, need_labels, order_column))
    first = chunks[0].data
    width = max(c.data.ids.shape[2] for c in chunks)

    def pad(ids):
        if ids.shape[2] == width:
            return ids
        extra = torch.full((ids.shape[0], ids.shape[1], width - ids.shape[2]), -1, dtype=ids.dtype)
        return torch.cat([ids, extra], dim=2)

    data = EncodedData(
        first.fields, torch.cat([pad(c.data.ids) for c in chunks]),
        {k: torch.cat([c.data.labels[k] for c in chunks]) for k in first.labels},
        {k: torch.cat([c.data.groups[k] for c in chunks]) for k in first.groups})
    length = None if length_column is None else np.concatenate([c.length for c in chunks])
    if with_order:
        order = None if order_column is None else np.concatenate([c.order for c in chunks])
        return data, length, order
    return data, length


def encode_file(run: Run, path: str, out: str, chunk_rows: int = CHUNK_ROWS) -> dict:
    """`ncs data encode`: every row of `path` into an ncs-encoded safetensors file at `out`."""
    import ncs.data as D

    if not out.lower().endswith(".safetensors"):
        raise ServeError(f"--out: {out}: expected a .safetensors path")
    data, _ = encode_all(run, path, chunk_rows=chunk_rows)
    extra = {"run": os.path.abspath(run.dir), "source": os.path.abspath(path), "encoded_by": "ncs data encode"}
    D.save_encoded(data, out, extra=extra)
    unseen = {}
    if len(data):
        for i, f in enumerate(run.fields):
            unseen[f["name"]] = int((data.ids[:, i, :] == 0).sum())
    return {"rows": len(data), "out": out, "ids_shape": list(data.ids.shape), "missing_or_unseen_ids": unseen,
            "labels": sorted(data.labels), "groups": sorted(data.groups)}
