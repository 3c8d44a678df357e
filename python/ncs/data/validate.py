"""Read-time validation of the label and id columns, shared by every file reader.

Every reader (CSV / Parquet in table.py, TFRecord / LT4REC in lt4rec.py) hands each batch of
rows to ``check_rows`` at one point, with its label values and whatever per-row text problems
it found; ``check_rows`` either raises one DataError naming the file, the row (or record) and
the column, or, with ``on_bad_row="skip"``, returns the rows to keep and counts the others.
``finish`` refuses a file that leaves no rows. The checks are vectorised (numpy / pyarrow);
Python loops run only to locate a problem pyarrow reports for a whole column (bad UTF-8).

What is a bad row (docs/RELIABILITY.md lists them with the message each gets):
  click       empty (CSV: also pyarrow's null markers NA, NaN, null, ...), not a number,
              NaN/inf, or not 0/1
  conversion  not a number, NaN/inf, outside [0, 1] (or not 0/1 when binary), empty on a
              clicked row (empty on a non-clicked row is 0), > 0 on a row whose click is 0
  any column  bytes that are not valid UTF-8 (ids and groups included)
  CSV rows    a different number of fields than the header (ragged)
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import DataError

POLICIES = ("error", "skip")
_NUMBER = r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^[-+]?(nan|inf|infinity)$"

Message = Union[str, Callable[[int], str]]


def check_policy(on_bad_row: str) -> str:
    if on_bad_row not in POLICIES:
        raise DataError(f"data.options.on_bad_row: expected one of {', '.join(POLICIES)}, got {on_bad_row!r}")
    return on_bad_row


class Issues:
    """The bad rows of one batch and the first problem found (lowest row; ties: first added)."""

    def __init__(self, n: int):
        self.n = n
        self.bad = np.zeros(n, dtype=bool)
        self.first: Optional[Tuple[int, str, str]] = None  # (row in batch, column, message)

    def add(self, mask, column: str, message: Message) -> None:
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return
        i = int(np.argmax(mask))
        self.bad |= mask
        if self.first is None or i < self.first[0]:
            msg = message(i) if callable(message) else message
            self.first = (i, column, msg)


def label_values(arr) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A label column (pyarrow array of strings, numbers or bools) -> (float64 values, null
    mask, not-a-number mask). Text is trimmed; "" is null; NaN/inf text parse as NaN/inf."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    n = len(arr)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        empty = pc.equal(arr, "").fill_null(True)
        blank = pc.if_else(empty, pa.scalar(None, arr.type), arr)
        try:  # the common case: every value parses (one vectorised cast)
            vals = pc.cast(blank, pa.float64())
            return (vals.fill_null(np.nan).to_numpy(zero_copy_only=False), empty.to_numpy(zero_copy_only=False),
                    np.zeros(n, dtype=bool))
        except pa.ArrowInvalid:
            pass
        arr = pc.utf8_trim_whitespace(arr)
        empty = pc.equal(arr, "").fill_null(True).to_numpy(zero_copy_only=False)
        numeric = pc.match_substring_regex(arr, _NUMBER, ignore_case=True).fill_null(False)
        notnum = ~empty & ~numeric.to_numpy(zero_copy_only=False)
        ok = pc.if_else(numeric, arr, pa.scalar(None, arr.type))
        vals = pc.cast(ok, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
        return vals, empty, notnum
    try:
        num = pc.cast(arr, pa.float64())
    except (pa.ArrowException, TypeError):
        return np.full(n, np.nan), np.zeros(n, dtype=bool), arr.is_valid().to_numpy(zero_copy_only=False)
    null = num.is_null().to_numpy(zero_copy_only=False)
    return num.fill_null(np.nan).to_numpy(zero_copy_only=False), null, np.zeros(n, dtype=bool)


def check_labels(issues: Issues, click: str, click_vals, click_null, click_notnum,
                 conversion: Optional[str] = None, conv_vals=None, conv_null=None, conv_notnum=None,
                 conv_binary: bool = False, raw: Optional[Dict[str, Sequence]] = None) -> None:
    """Add the label problems of a batch to ``issues`` (see the module doc)."""
    def shown(col, vals, i):
        if raw is not None and col in raw:
            v = raw[col][i]
            return repr(v.as_py() if hasattr(v, "as_py") else v)
        return str(vals[i])

    issues.add(click_null, click, "is empty (or a null marker: NA, NaN, null...)")
    issues.add(click_notnum, click, lambda i: f"must be 0 or 1, got {shown(click, click_vals, i)} (not a number)")
    with np.errstate(invalid="ignore"):
        bad = ~click_null & ~click_notnum & ~((click_vals == 0) | (click_vals == 1))
    issues.add(bad, click, lambda i: f"must be 0 or 1, got {click_vals[i]}")
    if conversion is None:
        return
    want = "0 or 1" if conv_binary else "in [0, 1]"
    clicked = click_vals == 1
    issues.add(conv_notnum, conversion, lambda i: f"must be {want}, got {shown(conversion, conv_vals, i)} (not a number)")
    issues.add(conv_null & clicked, conversion, "is empty (or a null marker: NA, NaN, null...) on a clicked row")
    present = ~conv_null & ~conv_notnum
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(conv_vals) & (conv_vals >= 0) & (conv_vals <= 1)
        if conv_binary:
            ok &= (conv_vals == 0) | (conv_vals == 1)
        issues.add(present & ~ok, conversion, lambda i: f"must be {want}, got {conv_vals[i]}")
        issues.add(present & ok & (conv_vals > 0) & (click_vals == 0), conversion,
                   lambda i: f"is {conv_vals[i]} > 0 on a row whose click column {click!r} is 0")


def utf8_problems(issues: Issues, column: str, arr):
    """Check a text column (binary, string or list of them) is valid UTF-8; returns it as
    strings (bad values null), adding its bad rows to ``issues``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    t = arr.type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        flat = pc.list_flatten(arr)
        parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)
        sub = Issues(len(flat))
        fixed = utf8_problems(sub, column, flat)
        if sub.bad.any():
            rows = np.zeros(len(arr), dtype=bool)
            rows[parents[sub.bad]] = True
            issues.add(rows, column, sub.first[2])
        if fixed is flat:
            return arr
        offsets = arr.offsets
        cls = pa.LargeListArray if pa.types.is_large_list(t) else pa.ListArray
        return cls.from_arrays(offsets, fixed, mask=arr.is_null())
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        target = pa.large_string() if pa.types.is_large_binary(t) else pa.string()
        try:
            return arr.cast(target)
        except pa.ArrowInvalid:
            pass
        values = arr.to_pylist()
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        try:
            arr.validate(full=True)
            return arr
        except pa.ArrowInvalid:
            values = arr.cast(pa.large_binary() if pa.types.is_large_string(t) else pa.binary()).to_pylist()
            target = t
    else:
        return arr
    bad = np.zeros(len(values), dtype=bool)
    clean: List[Optional[str]] = []
    for i, v in enumerate(values):
        try:
            clean.append(None if v is None else v.decode("utf-8"))
        except UnicodeDecodeError:
            bad[i] = True
            clean.append(None)
    issues.add(bad, column, lambda i: f"holds bytes that are not valid UTF-8 ({values[i][:16]!r})")
    return pa.array(clean, type=target)


def check_rows(path: str, issues: Issues, first_row: int, on_bad_row: str, counts: Dict[str, int],
               what: str = "row", numbers: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
    """Act on a batch's issues: raise DataError "<path>: <what> <n>: column <c> <problem>" for the
    first bad row, or (skip) count the bad rows in counts["bad_rows"] and return the keep mask
    (None when every row is good). ``numbers``: the rows' numbers when not first_row + i."""
    counts.setdefault("bad_rows", 0)
    if not issues.bad.any():
        return None
    if on_bad_row == "error":
        i, col, msg = issues.first
        n = int(numbers[i]) if numbers is not None else first_row + i
        raise DataError(f"{path}: {what} {n}: column {col!r} {msg} "
                        f"(data.options.on_bad_row: skip drops such rows)")
    counts["bad_rows"] += int(issues.bad.sum())
    return ~issues.bad


def finish(path: str, rows: int, counts: Dict[str, int], what: str = "rows") -> None:
    """Refuse a file that yields no rows (header only, empty, or everything skipped)."""
    if rows:
        return
    skipped = counts.get("bad_rows", 0)
    if skipped:
        raise DataError(f"{path}: no {what} left after skipping {skipped} bad {what}")
    raise DataError(f"{path}: no data {what} (the file holds none)")
