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

from .errors import DataError
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


def _batches(path: str, fmt: str, columns: List[str], batch_rows: int):
    import pyarrow as pa

    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{path}: not a readable Parquet file ({e})") from e
        names = set(pf.schema_arrow.names)
        missing = [c for c in columns if c not in names]
        if missing:
            raise DataError(f"{path}: missing columns {missing} (has {sorted(names)})")
        yield from pf.iter_batches(batch_size=batch_rows, columns=columns)
    else:
        import pyarrow.csv as pcsv

        try:
            # the header first (cheap: one block), so that absent columns are named together
            names = pcsv.open_csv(path).schema.names
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{path}: not a readable CSV file ({e})") from e
        missing = [c for c in columns if c not in names]
        if missing:
            raise DataError(f"{path}: missing columns {missing} (has {names})")
        # every column as text: ids are strings, whatever they look like; labels are cast later
        reader = pcsv.open_csv(
            path,
            read_options=pcsv.ReadOptions(block_size=1 << 22),
            convert_options=pcsv.ConvertOptions(include_columns=columns, strings_can_be_null=True,
                                                column_types={c: pa.string() for c in columns}),
        )
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except pa.ArrowException as e:
                raise DataError(f"{path}: CSV parse error ({e})") from e
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


def _labels(path: str, name: str, arr, first_row: int, binary: bool, allow_null: bool) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        vals = pc.cast(arr, pa.float64())
    except pa.ArrowException as e:
        raise DataError(f"{path}: column {name!r} must be numeric ({e})") from e
    if vals.null_count and not allow_null:
        bad = int(np.nonzero(vals.is_null().to_numpy(zero_copy_only=False))[0][0])
        raise DataError(f"{path}: row {first_row + bad}: column {name!r} is empty")
    out = vals.fill_null(0.0).to_numpy(zero_copy_only=False)
    ok = np.isfinite(out) & (out >= 0) & (out <= 1)
    if binary:
        ok &= (out == 0) | (out == 1)
    if not ok.all():
        bad = int(np.nonzero(~ok)[0][0])
        want = "0 or 1" if binary else "in [0, 1]"
        raise DataError(f"{path}: row {first_row + bad}: column {name!r} must be {want}, got {out[bad]}")
    return out.astype(np.float32)


def encode_table(path: Union[str, os.PathLike], schema: Union[dict, str, os.PathLike],
                 vocab: Optional[Vocab] = None, fmt: Optional[str] = None,
                 batch_rows: int = _BATCH_ROWS) -> Tuple[EncodedData, Vocab]:
    """load_table that also returns the vocabularies it used (for encoding another file)."""
    path = os.fspath(path)
    sch = parse_schema(schema)
    if fmt is None:
        fmt = "parquet" if path.endswith((".parquet", ".pq")) else "csv"
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
    for batch in _batches(path, fmt, sch.columns(), batch_rows):
        cols = {name: batch.column(i) for i, name in enumerate(batch.schema.names)}
        ids = np.stack([_encode_field(f, fv, cols[f.column], width) for f, fv in zip(sch.fields, vocabs)], axis=1)
        parts.append(ids)
        click = _labels(path, sch.click, cols[sch.click], row0, True, False)
        clicks.append(click)
        if sch.conversion:
            conv = _labels(path, sch.conversion, cols[sch.conversion], row0,
                           sch.conversion_type == "binary", True)
        else:
            conv = np.zeros_like(click)
        convs.append(conv)
        for g, c in sch.groups.items():
            import pyarrow as pa
            import pyarrow.compute as pc

            if pa.types.is_list(cols[c].type) or pa.types.is_large_list(cols[c].type):
                raise DataError(f"{path}: group column {c!r} must hold scalars, got {cols[c].type}")
            if g == "time":  # ordered values (integers / timestamps), not hashes: split.by time
                from .convert import _group_column

                groups[g].append(_group_column(path, g, c, cols[c])[0])
                continue
            dict_enc = pc.dictionary_encode(_as_strings(cols[c]))
            keys = np.asarray([stable_hash64(v if v is not None else "") for v in dict_enc.dictionary.to_pylist()]
                              + [stable_hash64("")], dtype=np.int64)
            groups[g].append(keys[dict_enc.indices.fill_null(len(dict_enc.dictionary)).to_numpy(zero_copy_only=False)])
        row0 += batch.num_rows
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
               vocab: Optional[Vocab] = None) -> EncodedData:
    """Read a CSV or Parquet file (by extension; .parquet/.pq is Parquet) by ``schema``."""
    return encode_table(path, schema, vocab)[0]
