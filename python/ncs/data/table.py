"""CSV / Parquet readers driven by a schema (dict, or a YAML/JSON file).

Schema:
  fields: list of {name, column (default name), vocab: "auto" | [values] | null,
                   hash_buckets: int | null, multi: bool, sep: "|", max_len: int, missing: [str]}
  click: column (0/1), conversion: column (optional), conversion_type: continuous | binary,
  groups: {group name: column}
Files are streamed in pyarrow record batches; each batch is dictionary-encoded so vocabulary
lookups and hashing touch only its distinct values, and the vocabularies grow batch by batch.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from . import validate as V
from .errors import DataError
from .formats import detect
from .types import EncodedData, FieldSpec
from .vocab import FieldVocab, Vocab, hash_bucket, stable_hash64

_TOP_KEYS = {"fields", "click", "conversion", "conversion_type", "groups"}
_FIELD_KEYS = {"name", "column", "vocab", "hash_buckets", "multi", "sep", "max_len", "missing"}
_BATCH_ROWS = 65536


@dataclass
class _Field:
    name: str
    column: str
    vocab: Any  # "auto" | list | None
    hash_buckets: Optional[int]
    multi: bool
    sep: str
    max_len: int
    missing: Tuple[str, ...]


@dataclass
class TableSchema:
    fields: List[_Field]
    click: str
    conversion: Optional[str]
    conversion_type: str
    groups: Dict[str, str]

    def columns(self) -> List[str]:
        cols = [f.column for f in self.fields] + [self.click]
        if self.conversion:
            cols.append(self.conversion)
        cols += list(self.groups.values())
        return list(dict.fromkeys(cols))


def read_schema(schema: Union[dict, str, os.PathLike]) -> dict:
    if isinstance(schema, dict):
        return schema
    path = os.fspath(schema)
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise DataError(f"schema file {path}: cannot read ({e})") from e
    try:
        if path.endswith(".json"):
            out = json.loads(text)
        else:
            import yaml

            out = yaml.safe_load(text)
    except Exception as e:  # yaml.YAMLError / json.JSONDecodeError
        raise DataError(f"schema file {path}: not valid YAML/JSON ({e})") from e
    if not isinstance(out, dict):
        raise DataError(f"schema file {path}: expected a mapping at the top, got {type(out).__name__}")
    return out


def parse_schema(schema: Union[dict, str, os.PathLike]) -> TableSchema:
    """Validate a schema; DataError names every unknown key or bad value."""
    raw = read_schema(schema)
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise DataError(f"schema: unknown keys {sorted(unknown)}; allowed {sorted(_TOP_KEYS)}")
    if not isinstance(raw.get("fields"), list) or not raw["fields"]:
        raise DataError("schema: 'fields' must be a non-empty list")
    if not isinstance(raw.get("click"), str):
        raise DataError("schema: 'click' must name the click column")
    conv = raw.get("conversion")
    if conv is not None and not isinstance(conv, str):
        raise DataError("schema: 'conversion' must be a column name or null")
    ctype = raw.get("conversion_type", "continuous")
    if ctype not in ("continuous", "binary"):
        raise DataError(f"schema: conversion_type must be 'continuous' or 'binary', got {ctype!r}")
    groups = raw.get("groups") or {}
    if not isinstance(groups, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in groups.items()):
        raise DataError("schema: 'groups' must map group names to column names")
    fields: List[_Field] = []
    seen = set()
    for i, f in enumerate(raw["fields"]):
        if not isinstance(f, dict) or not isinstance(f.get("name"), str):
            raise DataError(f"schema: fields[{i}] must be a mapping with a string 'name'")
        bad = set(f) - _FIELD_KEYS
        if bad:
            raise DataError(f"schema: fields[{i}] ({f['name']}): unknown keys {sorted(bad)}; allowed {sorted(_FIELD_KEYS)}")
        name = f["name"]
        if name in seen:
            raise DataError(f"schema: field name {name!r} appears twice")
        seen.add(name)
        hb = f.get("hash_buckets")
        vocab = f.get("vocab", None if hb is not None else "auto")
        if hb is not None:
            if not isinstance(hb, int) or isinstance(hb, bool) or hb < 1:
                raise DataError(f"schema: field {name}: hash_buckets must be an int >= 1, got {hb!r}")
            if vocab is not None:
                raise DataError(f"schema: field {name}: give either vocab or hash_buckets, not both")
        elif not (vocab == "auto" or isinstance(vocab, list)):
            raise DataError(f"schema: field {name}: vocab must be 'auto' or a list of values "
                            f"(or null with hash_buckets), got {vocab!r}")
        multi = bool(f.get("multi", False))
        max_len = f.get("max_len", 8 if multi else 1)
        if not isinstance(max_len, int) or max_len < 1 or (not multi and max_len != 1):
            raise DataError(f"schema: field {name}: max_len must be an int >= 1 (1 unless multi), got {max_len!r}")
        sep = f.get("sep", "|")
        if not isinstance(sep, str) or not sep:
            raise DataError(f"schema: field {name}: sep must be a non-empty string")
        missing = f.get("missing", ["", "-1"])
        if not isinstance(missing, list):
            raise DataError(f"schema: field {name}: missing must be a list of strings")
        fields.append(_Field(name, str(f.get("column", name)), vocab, hb, multi, sep, max_len,
                             tuple(str(m) for m in missing)))
    return TableSchema(fields, raw["click"], conv, ctype, dict(groups))


def _ragged_row(path: str) -> str:
    """Locate the first CSV row whose field count is not the header's (the error path only:
    pyarrow's streaming reader does not know row numbers)."""
    import csv

    with open(path, "r", encoding="utf-8", errors="replace", newline="") as f:
        rows = csv.reader(f)
        header = next(rows, [])
        for i, r in enumerate(rows):
            if r and len(r) != len(header):
                return f"row {i}: {len(r)} fields, the header has {len(header)}"
    return "a row has another number of fields than the header"


def open_parquet(path: str):
    """pyarrow.parquet.ParquetFile(path); DataError naming the file if it is not readable Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from e


def column_names(path: str, fmt: str) -> List[str]:
    """The columns of a CSV (its header) or Parquet file; DataError if it cannot be read."""
    import pyarrow as pa

    if fmt == "parquet":
        return list(open_parquet(path).schema_arrow.names)
    import pyarrow.csv as pcsv

    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: empty file (no header, no rows)")
    try:
        return list(pcsv.open_csv(path, parse_options=pcsv.ParseOptions(invalid_row_handler=lambda r: "skip"),
                                  convert_options=pcsv.ConvertOptions(check_utf8=False)).schema.names)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable CSV file ({e})") from e


def _batches(path: str, fmt: str, columns: List[str], batch_rows: int, on_bad_row: str = "error",
             counts: Optional[Dict[str, int]] = None):
    import pyarrow as pa

    if fmt == "parquet":
        pf = open_parquet(path)
        names = set(pf.schema_arrow.names)
        missing = [c for c in columns if c not in names]
        if missing:
            raise DataError(f"{path}: missing columns {missing} (has {sorted(names)})")
        try:
            yield from pf.iter_batches(batch_size=batch_rows, columns=columns)
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{path}: corrupt Parquet data ({e})") from e
    else:
        import pyarrow.csv as pcsv

        counts = {} if counts is None else counts
        counts.setdefault("ragged_rows", 0)

        def skip_ragged(row) -> str:
            counts["ragged_rows"] += 1
            return "skip"

        def ragged(e: Exception) -> DataError:
            if "columns, got" in str(e) or "Expected" in str(e):
                return DataError(f"{path}: {_ragged_row(path)} (ragged CSV; data.options.on_bad_row: "
                                 f"skip drops such rows)")
            return DataError(f"{path}: CSV parse error ({e})")

        names = column_names(path, fmt)  # the header first, so that absent columns are named together
        missing = [c for c in columns if c not in names]
        if missing:
            raise DataError(f"{path}: missing columns {missing} (has {names})")
        # every column as bytes: ids are strings, whatever they look like; validate.py checks
        # the UTF-8 (naming the row) and casts the labels
        try:
            reader = pcsv.open_csv(
                path,
                read_options=pcsv.ReadOptions(block_size=1 << 22),
                parse_options=pcsv.ParseOptions(invalid_row_handler=skip_ragged if on_bad_row == "skip" else None),
                convert_options=pcsv.ConvertOptions(include_columns=columns, strings_can_be_null=True,
                                                    column_types={c: pa.binary() for c in columns}),
            )
        except pa.ArrowException as e:
            raise ragged(e) from e
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except pa.ArrowException as e:
                raise ragged(e) from e
            yield batch


def _as_strings(arr):
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    if pa.types.is_floating(arr.type):
        # 3.0 -> "3" so that integer-valued floats (a CSV column with gaps) match int vocabularies
        as_int = pc.cast(arr, pa.int64(), safe=False)
        is_int = pc.equal(pc.cast(as_int, arr.type), arr)
        return pc.if_else(is_int, pc.cast(as_int, pa.string()), pc.cast(arr, pa.string()))
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return pc.cast(arr, pa.string())
    return arr


def _lookup(spec: _Field, fv: Optional[FieldVocab], values) -> np.ndarray:
    """Ids (int64) of a flat pyarrow array of values; null -> 0. Only distinct values are
    looked up in Python."""
    import pyarrow.compute as pc

    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    enc = pc.dictionary_encode(_as_strings(values))
    dictionary = enc.dictionary.to_pylist()
    if spec.hash_buckets is not None:
        table = [0 if (v is None or v in spec.missing) else hash_bucket(v, spec.hash_buckets) for v in dictionary]
    else:
        table = [0 if v is None else fv.id(v) for v in dictionary]  # type: ignore[union-attr]
    lut = np.asarray(table + [0], dtype=np.int64)  # last entry: null index
    idx = enc.indices.fill_null(len(dictionary)).to_numpy(zero_copy_only=False)
    return lut[idx]


def _encode_field(spec: _Field, fv: Optional[FieldVocab], col, width: int) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(col)
    out = np.full((n, width), -1, dtype=np.int64)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if not spec.multi:
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            col = pc.list_flatten(pc.list_slice(col.fill_null(pa.scalar([], col.type)), 0, 1, 1, True))
        out[:, 0] = _lookup(spec, fv, col)
        return out
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
        col = pc.split_pattern(_as_strings(col), spec.sep)
    col = pc.list_slice(col, 0, spec.max_len)
    lengths = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat_ids = _lookup(spec, fv, pc.list_flatten(col))
    # a missing marker inside a list keeps its slot as id 0, like the LT4REC reader
    row = np.repeat(np.arange(n), lengths)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    slot = np.arange(flat_ids.size) - np.repeat(starts, lengths)
    out[row, slot] = flat_ids
    out[lengths == 0, 0] = 0  # no value at all: one "missing" slot
    return out


def _validated(path: str, sch: TableSchema, batch, row0: int, on_bad_row: str, counts: Dict[str, int]):
    """The one validation point of this reader (validate.py): UTF-8 of every column, then the
    labels; returns ({column: array}, click, conversion) of the rows kept."""
    import pyarrow as pa

    issues = V.Issues(batch.num_rows)
    cols = {name: V.utf8_problems(issues, name, batch.column(i)) for i, name in enumerate(batch.schema.names)}
    click = V.label_values(cols[sch.click])
    conv = V.label_values(cols[sch.conversion]) if sch.conversion else (None, None, None)
    raw = {c: cols[c] for c in (sch.click, sch.conversion) if c}
    V.check_labels(issues, sch.click, *click, sch.conversion, *conv, conv_binary=sch.conversion_type == "binary", raw=raw)
    keep = V.check_rows(path, issues, row0, on_bad_row, counts)
    cv, cn = click[0], conv[0]
    if keep is not None:
        mask = pa.array(keep)
        cols = {k: v.filter(mask) for k, v in cols.items()}
        cv = cv[keep]
        cn = cn[keep] if cn is not None else None
    click_out = cv.astype(np.float32)
    conv_out = np.nan_to_num(cn, nan=0.0).astype(np.float32) if cn is not None else np.zeros_like(click_out)
    return cols, click_out, conv_out


def encode_table(path: Union[str, os.PathLike], schema: Union[dict, str, os.PathLike],
                 vocab: Optional[Vocab] = None, fmt: Optional[str] = None,
                 batch_rows: int = _BATCH_ROWS, on_bad_row: str = "error",
                 stats: Optional[Dict[str, int]] = None) -> Tuple[EncodedData, Vocab]:
    """load_table that also returns the vocabularies it used (for encoding another file).

    on_bad_row: "error" (a bad label, bad UTF-8 or ragged row is a DataError naming the file,
    row and column) or "skip" (such rows are dropped and counted in ``stats["bad_rows"]``,
    a dict updated in place). A file that leaves no rows is a DataError either way."""
    path = os.fspath(path)
    V.check_policy(on_bad_row)
    counts: Dict[str, int] = {} if stats is None else stats
    counts.setdefault("bad_rows", 0)
    sch = parse_schema(schema)
    if fmt is None:
        fmt = "parquet" if detect(path) == "parquet" else "csv"
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"fmt must be 'csv' or 'parquet', got {fmt!r}")
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    vocabs: List[Optional[FieldVocab]] = []
    for f in sch.fields:
        if f.hash_buckets is not None:
            vocabs.append(None)
        elif vocab is not None and f.name in vocab:
            vocabs.append(FieldVocab(f.name, vocab[f.name], f.missing))
        elif isinstance(f.vocab, list):
            vocabs.append(FieldVocab(f.name, {str(v): i + 1 for i, v in enumerate(f.vocab)}, f.missing))
        else:
            vocabs.append(FieldVocab(f.name, None, f.missing))
    width = max(f.max_len for f in sch.fields)
    parts: List[np.ndarray] = []
    clicks: List[np.ndarray] = []
    convs: List[np.ndarray] = []
    groups: Dict[str, List[np.ndarray]] = {g: [] for g in sch.groups}
    row0 = 0
    for batch in _batches(path, fmt, sch.columns(), batch_rows, on_bad_row, counts):
        n_raw = batch.num_rows
        cols, click, conv = _validated(path, sch, batch, row0, on_bad_row, counts)
        ids = np.stack([_encode_field(f, fv, cols[f.column], width) for f, fv in zip(sch.fields, vocabs)], axis=1)
        parts.append(ids)
        clicks.append(click)
        convs.append(conv)
        for g, c in sch.groups.items():
            import pyarrow as pa
            import pyarrow.compute as pc

            if pa.types.is_list(cols[c].type) or pa.types.is_large_list(cols[c].type):
                raise DataError(f"{path}: group column {c!r} must hold scalars, got {cols[c].type}")
            if g == "time":  # ordered values (integers / timestamps), not hashes: split.by time
                from .columns import _group_column

                groups[g].append(_group_column(path, g, c, cols[c])[0])
                continue
            dict_enc = pc.dictionary_encode(_as_strings(cols[c]))
            keys = np.asarray([stable_hash64(v if v is not None else "") for v in dict_enc.dictionary.to_pylist()]
                              + [stable_hash64("")], dtype=np.int64)
            groups[g].append(keys[dict_enc.indices.fill_null(len(dict_enc.dictionary)).to_numpy(zero_copy_only=False)])
        row0 += n_raw
    counts["bad_rows"] += counts.pop("ragged_rows", 0)
    V.finish(path, sum(len(c) for c in clicks), counts)
    F = len(sch.fields)
    ids_all = np.concatenate(parts) if parts else np.zeros((0, F, width), dtype=np.int64)
    specs = [FieldSpec(f.name, (f.hash_buckets + 1) if fv is None else fv.size, f.max_len)
             for f, fv in zip(sch.fields, vocabs)]
    cat = (lambda xs, dt: torch.from_numpy(np.concatenate(xs) if xs else np.zeros(0, dtype=dt)))
    data = EncodedData(
        specs, torch.from_numpy(ids_all),
        {"click": cat(clicks, np.float32), "conversion": cat(convs, np.float32)},
        {g: cat(v, np.int64) for g, v in groups.items()},
    )
    used = {f.name: dict(fv.table) for f, fv in zip(sch.fields, vocabs) if fv is not None}
    return data, used


def load_table(path: Union[str, os.PathLike], schema: Union[dict, str, os.PathLike],
               vocab: Optional[Vocab] = None, on_bad_row: str = "error") -> EncodedData:
    """Read a CSV or Parquet file (by extension; .parquet/.pq is Parquet) by ``schema``."""
    return encode_table(path, schema, vocab, on_bad_row=on_bad_row)[0]
