"""The on-disk encoded format: a directory of fixed-size row shards, one .npy per column.

    DIR/manifest.json          written last (its presence means "complete")
    DIR/vocab.json             optional: field -> value -> id (file sources), to encode more data alike
    DIR/shard-00000/<col>.npy  one column of the shard's rows, memory-mappable (np.load(mmap_mode="r"))

Columns: ``f.<field>`` ids of one field, [rows] for a single-valued field, [rows, max_len] for a
multi-valued one (padding -1), in the smallest signed integer type that holds vocab_size - 1
(int8, int16 or int32: ids are never wider than int32); ``l.<label>`` labels (uint8 for binary
labels such as click, float32 otherwise); ``g.<group>`` grouping keys (int64 hashes of string
keys as the in-memory readers make them, or the integer value of a numeric key such as time, in
the smallest type that holds it). Training reads f.* and l.* only: a row of F single-valued
fields costs at most F*4 + 5 bytes (+ 4 for its split's row list).

Every shard holds ``shard_rows`` rows except the last. The manifest records, per shard, the rows
and each column's file size and CRC32; opening a directory checks the manifest against the
shard files (existence, dtype, shape); reading a shard whole checks its checksums.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ncs_kernels.atomic import atomic_path, atomic_write_text

from .errors import DataError
from .types import FieldSpec

FORMAT = "ncs-shards"
VERSION = 1
MANIFEST = "manifest.json"
VOCAB = "vocab.json"
DEFAULT_SHARD_ROWS = 1 << 18


def id_dtype(vocab_size: int) -> np.dtype:
    """Smallest signed integer type holding ids -1 .. vocab_size - 1 (int32 at most)."""
    if vocab_size <= 1 << 7:
        return np.dtype(np.int8)
    if vocab_size <= 1 << 15:
        return np.dtype(np.int16)
    if vocab_size <= 1 << 31:
        return np.dtype(np.int32)
    raise DataError(f"vocab_size {vocab_size} does not fit int32 ids")


def int_dtype(lo: int, hi: int) -> np.dtype:
    for dt in (np.int8, np.int16, np.int32, np.int64):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    raise DataError(f"group values {lo}..{hi} do not fit int64")


def file_crc(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 24)
            if not b:
                return crc
            crc = zlib.crc32(b, crc)


def _dumps_untracked(obj: Any) -> str:
    """json.dumps with the cyclic garbage collector paused: a vocabulary of millions of strings
    otherwise triggers full collections over every object alive (2-4x the dump's own time)."""
    import gc

    was = gc.isenabled()
    gc.disable()
    try:
        return json.dumps(obj)
    finally:
        if was:
            gc.enable()


def vocab_hash(vocab_text: Optional[str], fields: Sequence[FieldSpec]) -> str:
    """Identity of an encoding: sha256 of the fields and of vocab.json's text."""
    h = hashlib.sha256()
    h.update(json.dumps([[f.name, int(f.vocab_size), int(f.max_len)] for f in fields]).encode())
    if vocab_text:
        h.update(vocab_text.encode("utf-8"))
    return h.hexdigest()


def _save_npy(path: str, arr: np.ndarray) -> Dict[str, int]:
    # inside the writer's unfinished folder: the folder's rename after the fsync'ed manifest is
    # the commit point, and each shard's CRC32 is checked on first use; no fsync per column file
    # (it would cost ~7 ms a file, a third of a small conversion)
    with atomic_path(path, fsync=False) as tmp:
        with open(tmp, "wb") as f:
            np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
    return {"bytes": os.path.getsize(path), "crc32": file_crc(path)}


class ShardWriter:
    """Writes a directory atomically: everything goes to DIR.tmp-XXXX, the manifest last, then one
    rename. A killed writer leaves only the .tmp-* folder, never a DIR that looks complete.

    write(columns) takes {column name: array} of any number of rows and cuts it into shards of
    ``shard_rows`` rows (a partial shard waits for more rows); close(...) writes the manifest."""

    def __init__(self, out: str, shard_rows: int = DEFAULT_SHARD_ROWS, overwrite: bool = False):
        self.out = os.path.abspath(os.fspath(out))
        if os.path.exists(self.out) and not overwrite:
            raise DataError(f"{self.out}: already exists (remove it or pass --overwrite)")
        parent = os.path.dirname(self.out)
        os.makedirs(parent, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix=os.path.basename(self.out) + ".tmp-", dir=parent)
        self.shard_rows = int(shard_rows)
        self.overwrite = overwrite
        self.shards: List[Dict[str, Any]] = []
        self.pending: Dict[str, List[np.ndarray]] = {}
        self.pending_rows = 0
        self.rows = 0
        self.dtypes: Dict[str, str] = {}

    def write(self, columns: Mapping[str, np.ndarray]) -> None:
        n = {len(v) for v in columns.values()}
        if len(n) != 1:
            raise ValueError(f"columns of different lengths: { {k: len(v) for k, v in columns.items()} }")
        for k, v in columns.items():
            self.pending.setdefault(k, []).append(v)
        self.pending_rows += n.pop()
        while self.pending_rows >= self.shard_rows:
            self._flush(self.shard_rows)

    def _flush(self, rows: int) -> None:
        cols = {k: np.concatenate(v) if len(v) > 1 else v[0] for k, v in self.pending.items()}
        name = f"shard-{len(self.shards):05d}"
        d = os.path.join(self.tmp, name)
        os.makedirs(d)
        files = {}
        for k, v in cols.items():
            files[k] = _save_npy(os.path.join(d, k + ".npy"), v[:rows])
            self.dtypes.setdefault(k, str(v.dtype))
        self.shards.append({"name": name, "rows": int(rows), "files": files})
        self.rows += rows
        self.pending = {k: [v[rows:]] for k, v in cols.items()}
        self.pending_rows -= rows

    def close(self, fields: Sequence[FieldSpec], labels: Mapping[str, str], groups: Sequence[str],
              vocab: Optional[Union[str, Mapping[str, Mapping[str, int]]]] = None,
              source: Optional[Dict[str, Any]] = None) -> "EncodedDir":
        if self.pending_rows:
            self._flush(self.pending_rows)
        text = None
        if vocab is not None:  # json.dumps: the C encoder (json.dump to a file is pure Python)
            # tables are in id order (built so, or read from a vocab.json); a str: the JSON already
            text = vocab if isinstance(vocab, str) else _dumps_untracked(vocab)
            atomic_write_text(os.path.join(self.tmp, VOCAB), text)
        manifest = {
            "format": FORMAT, "version": VERSION, "rows": self.rows, "shard_rows": self.shard_rows,
            "fields": [{"name": f.name, "vocab_size": int(f.vocab_size), "max_len": int(f.max_len)} for f in fields],
            "labels": dict(labels), "groups": list(groups), "dtypes": self.dtypes,
            "vocab_hash": vocab_hash(text, fields), "has_vocab": vocab is not None,
            "shards": self.shards, "source": source or {},
        }
        atomic_write_text(os.path.join(self.tmp, MANIFEST), json.dumps(manifest, indent=1))
        if os.path.exists(self.out):
            shutil.rmtree(self.out)
        os.replace(self.tmp, self.out)
        return EncodedDir(self.out)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def column_names(fields: Sequence[FieldSpec], labels: Iterable[str], groups: Iterable[str]) -> List[str]:
    return [f"f.{f.name}" for f in fields] + [f"l.{k}" for k in labels] + [f"g.{k}" for k in groups]


@dataclass
class _Shard:
    name: str
    rows: int
    start: int
    files: Dict[str, Dict[str, int]]


class EncodedDir:
    """A read-only view of an encoded directory. Shards are memory-mapped on demand;
    ``column(name, shard)`` returns the mapping, ``load_shard(i)`` a verified in-memory copy."""

    def __init__(self, path: str, verify: bool = False):
        self.path = os.path.abspath(os.fspath(path))
        mpath = os.path.join(self.path, MANIFEST)
        if not os.path.isdir(self.path):
            raise DataError(f"{self.path}: no such encoded directory")
        if not os.path.isfile(mpath):
            tmp = "" if ".tmp-" not in self.path else " (an unfinished conversion)"
            raise DataError(f"{self.path}: not an encoded directory: no {MANIFEST}{tmp}")
        try:
            with open(mpath, "r", encoding="utf-8") as f:
                m = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{mpath}: unreadable manifest ({e})") from e
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise DataError(f"{mpath}: not an {FORMAT} manifest")
        if m.get("version") != VERSION:
            raise DataError(f"{mpath}: format version {m.get('version')} is not supported (want {VERSION})")
        try:
            self.fields = [FieldSpec(str(f["name"]), int(f["vocab_size"]), int(f["max_len"])) for f in m["fields"]]
            self.labels: Dict[str, str] = dict(m["labels"])
            self.groups: List[str] = list(m["groups"])
            self.rows = int(m["rows"])
            self.shard_rows = int(m["shard_rows"])
            self.vocab_hash = str(m["vocab_hash"])
            self.dtypes: Dict[str, str] = dict(m["dtypes"])
            self.source = m.get("source", {})
            start = 0
            self.shards: List[_Shard] = []
            for s in m["shards"]:
                self.shards.append(_Shard(str(s["name"]), int(s["rows"]), start, dict(s["files"])))
                start += int(s["rows"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{mpath}: incomplete manifest ({e!r})") from e
        self.has_vocab = bool(m.get("has_vocab"))
        if start != self.rows:
            raise DataError(f"{mpath}: manifest does not match its shards: shard rows add up to {start}, "
                            f"manifest says {self.rows}")
        self.columns = column_names(self.fields, self.labels, self.groups)
        self.starts = np.array([s.start for s in self.shards] + [self.rows], dtype=np.int64)
        self._maps: Dict[Tuple[int, str], np.ndarray] = {}
        self._check_structure()
        if verify:
            for i in range(len(self.shards)):
                self.verify_shard(i)

    # ------------------------------------------------------------------ checks
    def _expected(self, col: str, rows: int) -> Tuple[Tuple[int, ...], np.dtype]:
        if col.startswith("f."):
            f = self.fields[[x.name for x in self.fields].index(col[2:])]
            return ((rows,) if f.max_len == 1 else (rows, f.max_len)), id_dtype(f.vocab_size)
        return (rows,), np.dtype(self.dtypes[col])

    def _check_structure(self) -> None:
        """Manifest vs shard files: every column file present, of the recorded size, with the
        dtype and shape the manifest implies (reads the .npy headers only)."""
        for s in self.shards:
            for col in self.columns:
                p = os.path.join(self.path, s.name, col + ".npy")
                rec = s.files.get(col)
                if rec is None:
                    raise DataError(f"{self.path}/{MANIFEST}: manifest does not match its shards: "
                                    f"shard {s.name} lists no column {col!r}")
                try:
                    size = os.path.getsize(p)
                except OSError:
                    raise DataError(f"{p}: missing (the manifest lists it)") from None
                if size != rec["bytes"]:
                    raise DataError(f"{p}: {size} bytes, the manifest says {rec['bytes']} (manifest does not match "
                                    f"its shards)")
                try:
                    with open(p, "rb") as f:
                        version = np.lib.format.read_magic(f)
                        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                else np.lib.format.read_array_header_2_0)
                        shape, _, dtype = read(f)
                except Exception as e:
                    raise DataError(f"{p}: not a .npy file ({e})") from e
                want_shape, want_dtype = self._expected(col, s.rows)
                if tuple(shape) != want_shape or np.dtype(dtype) != want_dtype:
                    raise DataError(f"{p}: {np.dtype(dtype)} {list(shape)}, the manifest implies "
                                    f"{want_dtype} {list(want_shape)} (manifest does not match its shards)")

    def verify_shard(self, i: int) -> None:
        s = self.shards[i]
        for col in self.columns:
            p = os.path.join(self.path, s.name, col + ".npy")
            if file_crc(p) != s.files[col]["crc32"]:
                raise DataError(f"{p}: checksum does not match the manifest (shard corrupt)")

    # ------------------------------------------------------------------ access
    def column(self, col: str, shard: int) -> np.ndarray:
        """The memory-mapped column of one shard (cached)."""
        key = (shard, col)
        m = self._maps.get(key)
        if m is None:
            p = os.path.join(self.path, self.shards[shard].name, col + ".npy")
            m = np.load(p, mmap_mode="r", allow_pickle=False)
            self._maps[key] = m
        return m

    def release(self, keep: Iterable[int] = ()) -> None:
        """Unmap every shard not in ``keep`` (their pages leave the process's resident set)."""
        keep = set(keep)
        for key in [k for k in self._maps if k[0] not in keep]:
            del self._maps[key]

    def load_shard(self, i: int, columns: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        """A verified in-memory copy of shard i's columns (default: every column)."""
        s = self.shards[i]
        out = {}
        for col in columns or self.columns:
            p = os.path.join(self.path, s.name, col + ".npy")
            with open(p, "rb") as f:
                raw = f.read()
            if zlib.crc32(raw) != s.files[col]["crc32"]:
                raise DataError(f"{p}: checksum does not match the manifest (shard corrupt)")
            out[col] = _from_npy_bytes(raw, p)
        return out

    def read_column(self, col: str, verify: bool = True) -> np.ndarray:
        """One column over every shard, concatenated (e.g. labels or groups for a split)."""
        parts = [self.load_shard(i, [col])[col] if verify else np.asarray(self.column(col, i))
                 for i in range(len(self.shards))]
        if not parts:
            shape, dt = self._expected(col, 0)
            return np.zeros(shape, dtype=dt)
        return np.concatenate(parts)

    def vocab(self) -> Optional[Dict[str, Dict[str, int]]]:
        p = os.path.join(self.path, VOCAB)
        if not os.path.isfile(p):
            return None
        with open(p, "r", encoding="utf-8") as f:
            return json.load(f)

    def __len__(self) -> int:
        return self.rows

    def to_memory(self):
        """The whole directory as in-memory EncodedData (small data only)."""
        import torch

        from .types import EncodedData

        L = max((f.max_len for f in self.fields), default=1)
        ids = np.full((self.rows, len(self.fields), L), -1, dtype=np.int64)
        for j, f in enumerate(self.fields):
            col = self.read_column(f"f.{f.name}")
            if col.ndim == 1:
                ids[:, j, 0] = col
            else:
                ids[:, j, :col.shape[1]] = col
        labels = {k: torch.from_numpy(self.read_column(f"l.{k}").astype(np.float32)) for k in self.labels}
        groups = {k: torch.from_numpy(self.read_column(f"g.{k}").astype(np.int64)) for k in self.groups}
        return EncodedData(list(self.fields), torch.from_numpy(ids), labels, groups)


def _from_npy_bytes(raw: bytes, path: str) -> np.ndarray:
    import io

    try:
        return np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception as e:
        raise DataError(f"{path}: not a readable .npy file ({e})") from e


def write_encoded(data, out: str, shard_rows: int = DEFAULT_SHARD_ROWS, vocab=None,
                  binary_labels: Sequence[str] = ("click",), source=None, overwrite: bool = False) -> EncodedDir:
    """In-memory EncodedData -> an encoded directory (tests, small data)."""
    w = ShardWriter(out, shard_rows, overwrite=overwrite)
    try:
        w.write(columns_of(data, binary_labels))
        return w.close(data.fields, label_types(data.labels, binary_labels), list(data.groups), vocab, source)
    except BaseException:
        w.abort()
        raise


def label_types(labels: Iterable[str], binary: Sequence[str]) -> Dict[str, str]:
    return {k: ("uint8" if k in binary else "float32") for k in labels}


def columns_of(data, binary_labels: Sequence[str] = ("click",), group_dtypes: Optional[Dict[str, Any]] = None
               ) -> Dict[str, np.ndarray]:
    """EncodedData (torch) -> the format's columns (compact dtypes)."""
    cols: Dict[str, np.ndarray] = {}
    ids = data.ids.numpy() if hasattr(data.ids, "numpy") else np.asarray(data.ids)
    for j, f in enumerate(data.fields):
        dt = id_dtype(f.vocab_size)
        cols[f"f.{f.name}"] = (ids[:, j, 0] if f.max_len == 1 else ids[:, j, :f.max_len]).astype(dt)
    for k, v in data.labels.items():
        v = v.numpy()
        cols[f"l.{k}"] = v.astype(np.uint8) if k in binary_labels else v.astype(np.float32)
    for k, v in data.groups.items():
        dt = (group_dtypes or {}).get(k, np.int64)
        cols[f"g.{k}"] = v.numpy().astype(dt)
    return cols
