"""The NCS4CVR authors' data format: TFRecord of tf.train.Example with 20 FEA_* string fields."""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from . import validate as V
from .errors import DataError
from .tfrecord import iter_tfrecord, parse_example
from .types import EncodedData, FieldSpec
from .vocab import FieldVocab, Vocab, encode_values, stable_hash64

# The order of /work/shared/data/lt4rec/README.md (the reference code's input order).
LT4REC_FIELDS: Tuple[str, ...] = (
    "FEA_SVID", "FEA_SCP", "FEA_SICAT1", "FEA_SICAT2",
    "FEA_VID", "FEA_CP", "FEA_ICAT1", "FEA_ICAT2",
    "FEA_ORDER", "FEA_COVERQUALITY", "FEA_DURATION", "FEA_ALGID",
    "FEA_UID", "FEA_AGE", "FEA_UGROUP",
    "FEA_SIKEYWORD", "FEA_STAG", "FEA_IXFTAG", "FEA_IKEYWORD", "FEA_UCAT",
)
LT4REC_MULTI = frozenset({"FEA_SIKEYWORD", "FEA_STAG", "FEA_IXFTAG", "FEA_IKEYWORD", "FEA_UCAT"})

PathLike = Union[str, os.PathLike]


def _text(v) -> str:
    """A feature value as text; UnicodeDecodeError for bytes that are not UTF-8 (validated)."""
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def encode_lt4rec(paths: Union[PathLike, Sequence[PathLike]], max_len: int = 8,
                  skip_corrupt: bool = False, vocab: Optional[Vocab] = None,
                  stats: Optional[Dict[str, int]] = None, on_bad_row: str = "error") -> Tuple[EncodedData, Vocab]:
    """Like load_lt4rec, for one or several files sharing one vocabulary; also returns it.

    on_bad_row: "error" (a record with a missing, NaN/inf or out-of-range label, a cvrlabel
    > 0 on a non-click, or non-UTF-8 feature bytes is a DataError naming the file, record and
    feature) or "skip" (dropped and counted in ``stats["bad_rows"]``). A file that yields no
    records is a DataError either way."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len must be an int >= 1, got {max_len!r}")
    if vocab is not None:
        unknown = set(vocab) - set(LT4REC_FIELDS)
        if unknown:
            raise ValueError(f"vocab: unknown fields {sorted(unknown)}; expected a subset of {list(LT4REC_FIELDS)}")
    vocabs = [FieldVocab(f, None if vocab is None else vocab.get(f, {})) for f in LT4REC_FIELDS]
    lens = [max_len if f in LT4REC_MULTI else 1 for f in LT4REC_FIELDS]
    width = max(lens)
    rows: List[List[int]] = []
    clicks: List[float] = []
    convs: List[float] = []
    requests: List[int] = []
    users: List[int] = []
    if stats is None:
        stats = {}
    V.check_policy(on_bad_row)
    stats.setdefault("bad_rows", 0)
    for path in paths:
        path = os.fspath(path)
        file_stats: Dict[str, int] = {}
        start = len(rows)
        numbers: List[int] = []  # record number of each row read from this file
        missing: Dict[str, List[int]] = {"label": [], "cvrlabel": []}  # rows without the label
        bad_text: Dict[str, List[int]] = {}  # column -> rows with bytes that are not UTF-8
        for rec, payload in enumerate(iter_tfrecord(path, skip_corrupt=skip_corrupt, stats=file_stats)):
            try:
                ex = parse_example(payload)
            except DataError as e:
                if skip_corrupt:
                    file_stats["corrupt_records"] = file_stats.get("corrupt_records", 0) + 1
                    continue
                raise DataError(f"{path}: record {rec}: {e}") from e
            i = len(rows) - start
            numbers.append(rec)
            labels = []
            for key in ("label", "cvrlabel"):
                try:
                    labels.append(float(ex[key][0]))
                except (KeyError, IndexError, TypeError, ValueError):
                    missing[key].append(i)
                    labels.append(float("nan"))
            flat: List[int] = []
            for fv, n in zip(vocabs, lens):
                texts = []
                for v in ex.get(fv.name, ()):
                    try:
                        texts.append(_text(v))
                    except UnicodeDecodeError:
                        bad_text.setdefault(fv.name, []).append(i)
                flat.extend(encode_values(fv, texts, n, width))
            rows.append(flat)
            clicks.append(labels[0])
            convs.append(labels[1])
            seq = ex.get("seqnum") or [b""]
            requests.append(stable_hash64(seq[0] if isinstance(seq[0], bytes) else _text(seq[0])))
            uid = ex.get("FEA_UID") or [b"-1"]
            users.append(stable_hash64(uid[0] if isinstance(uid[0], bytes) else str(uid[0])))
        # the one validation point of this reader (validate.py), over the file's records at once
        m = len(rows) - start
        issues = V.Issues(m)

        def rows_mask(idx: List[int]) -> np.ndarray:
            out = np.zeros(m, dtype=bool)
            out[idx] = True
            return out

        for col, idx in bad_text.items():
            issues.add(rows_mask(idx), col, "holds bytes that are not valid UTF-8")
        click = np.asarray(clicks[start:], dtype=np.float64)
        conv = np.asarray(convs[start:], dtype=np.float64)
        no_click, no_conv = rows_mask(missing["label"]), rows_mask(missing["cvrlabel"])
        issues.add(no_click, "label", "is missing or not a number")
        issues.add(no_conv, "cvrlabel", "is missing or not a number")
        V.check_labels(issues, "label", click, no_click, np.zeros(m, dtype=bool),
                       "cvrlabel", conv, np.zeros(m, dtype=bool), no_conv)
        keep = V.check_rows(path, issues, 0, on_bad_row, stats, what="record", numbers=np.asarray(numbers))
        if keep is not None:
            for lst in (rows, clicks, convs, requests, users):
                lst[start:] = [x for x, k in zip(lst[start:], keep) if k]
        V.finish(path, len(rows) - start, {"bad_rows": int((~keep).sum()) if keep is not None else 0},
                 what="records")
        for k, v in file_stats.items():
            stats[k] = stats.get(k, 0) + v
    n = len(rows)
    ids = torch.from_numpy(np.asarray(rows, dtype=np.int64).reshape(n, len(LT4REC_FIELDS), width))
    fields = [FieldSpec(fv.name, fv.size, n_) for fv, n_ in zip(vocabs, lens)]
    data = EncodedData(
        fields, ids,
        {"click": torch.tensor(clicks, dtype=torch.float32),
         "conversion": torch.tensor(convs, dtype=torch.float32)},
        {"request": torch.tensor(requests, dtype=torch.int64),
         "user": torch.tensor(users, dtype=torch.int64)},
    )
    return data, {fv.name: dict(fv.table) for fv in vocabs}


def load_lt4rec(path: PathLike, max_len: int = 8, skip_corrupt: bool = False,
                vocab: Optional[Vocab] = None, on_bad_row: str = "error") -> EncodedData:
    """Read the authors' TFRecord (gzip or plain) into EncodedData.

    Fields: LT4REC_FIELDS in order; "-1" (and no value) -> id 0; vocabularies are built from
    the data (ids from 1) unless ``vocab`` (field -> value -> id) is given, in which case
    unknown values map to 0. Multi-valued fields keep their first ``max_len`` values (padding
    -1). Labels: "click" (= label), "conversion" (= cvrlabel). Groups: "request" (hash of
    seqnum) and "user" (hash of the FEA_UID string: stable even when a fixed vocab maps an
    unseen user to 0)."""
    return encode_lt4rec(path, max_len=max_len, skip_corrupt=skip_corrupt, vocab=vocab, on_bad_row=on_bad_row)[0]
