"""Label statistics of a data file or of EncodedData, for `ncs data stats` and run outputs."""
from __future__ import annotations

import os
from typing import Dict, Optional, Union

import numpy as np

from .errors import DataError
from .formats import detect
from .types import EncodedData

_CLICK_NAMES = ("click", "label", "clicked", "is_click")
_CONV_NAMES = ("conversion", "cvrlabel", "play_rate", "playrate", "cvr")


def _summary(click: np.ndarray, conv: Optional[np.ndarray], fields: int, corrupt: int) -> Dict:
    rows = int(click.size)
    clicked = click > 0
    out = {
        "rows": rows,
        "clicks": int(clicked.sum()),
        "conversions": int((conv > 0).sum()) if conv is not None else 0,
        "conversion_mean": float(conv[clicked].mean()) if conv is not None and clicked.any() else 0.0,
        "click_rate": float(clicked.mean()) if rows else 0.0,
        "fields": int(fields),
        "corrupt_records": int(corrupt),
    }
    return out


def _tfrecord_stats(path: str) -> Dict:
    from .tfrecord import iter_tfrecord, parse_example

    counts: Dict[str, int] = {}
    clicks, convs = [], []
    names = set()
    for payload in iter_tfrecord(path, skip_corrupt=True, stats=counts):
        try:
            ex = parse_example(payload)
            clicks.append(float(ex["label"][0]))
            convs.append(float(ex["cvrlabel"][0]) if ex.get("cvrlabel") else 0.0)
        except (DataError, KeyError, IndexError, TypeError, ValueError):
            counts["corrupt_records"] += 1
            continue
        names.update(k for k in ex if k.startswith("FEA_"))
    return _summary(np.asarray(clicks), np.asarray(convs), len(names), counts["corrupt_records"])


def _table_stats(path: str, kind: str, schema, on_bad_row: str = "error") -> Dict:
    from .table import column_names, encode_table

    counts: Dict[str, int] = {}
    if schema is not None:
        data, _ = encode_table(path, schema, fmt=kind, on_bad_row=on_bad_row, stats=counts)
        out = stats(data)
        if on_bad_row == "skip":
            out["bad_rows"] = counts["bad_rows"]
        return out
    cols = column_names(path, kind)
    click = next((c for c in _CLICK_NAMES if c in cols), None)
    if click is None:
        raise DataError(f"{path}: no click column (looked for {list(_CLICK_NAMES)}); pass a schema")
    conv = next((c for c in _CONV_NAMES if c in cols), None)
    others = [c for c in cols if c not in (click, conv)]
    # the readers' own validation (labels, UTF-8, ragged rows), one id column encoded
    auto = {"fields": [{"name": others[0] if others else click, "hash_buckets": 1}], "click": click,
            "conversion": conv}
    data, _ = encode_table(path, auto, fmt=kind, on_bad_row=on_bad_row, stats=counts)
    out = stats(data)
    out["fields"] = len(others)
    if on_bad_row == "skip":
        out["bad_rows"] = counts["bad_rows"]
    return out


def stats(path_or_data: Union[str, os.PathLike, EncodedData], schema=None, on_bad_row: str = "error") -> Dict:
    """{"rows", "clicks", "conversions" (rows with conversion > 0), "conversion_mean" (among
    clicks), "click_rate", "fields", "corrupt_records"} of EncodedData or of a file: TFRecord
    (corrupt records are skipped and counted), CSV / Parquet (by ``schema``, or else by the
    usual label column names; bad rows are a DataError, or with on_bad_row="skip" dropped and
    counted in "bad_rows"), or an encoded .safetensors file."""
    if isinstance(path_or_data, EncodedData):
        d = path_or_data
        click = d.labels["click"].numpy() if "click" in d.labels else np.zeros(len(d))
        conv = d.labels["conversion"].numpy() if "conversion" in d.labels else None
        return _summary(click, conv, d.num_fields, 0)
    path = os.fspath(path_or_data)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    kind = detect(path)
    if kind == "encoded":
        from .cache import load_encoded

        return stats(load_encoded(path))
    if kind in ("csv", "parquet"):
        return _table_stats(path, kind, schema, on_bad_row)
    return _tfrecord_stats(path)
