"""The binary cache of encoded data (safetensors + JSON metadata) and load_dataset(cfg)."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
import zlib
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ncs_kernels.atomic import atomic_path

from .errors import DataError
from .types import EncodedData, FieldSpec

FORMAT = "ncs-encoded"
VERSION = 1
_META_KEY = "ncs_meta"


def _crc(t: torch.Tensor) -> int:
    return zlib.crc32(np.ascontiguousarray(t.numpy()).view(np.uint8))


def save_encoded(data: EncodedData, path: str, extra: Optional[Dict[str, Any]] = None) -> None:
    """Write ``data`` to ``path`` (safetensors; fields, label/group names and per-tensor CRC32
    in the JSON metadata). Atomic (ncs_kernels.atomic: a temporary file beside it, fsync, rename)."""
    from safetensors.torch import save_file

    path = os.fspath(path)
    tensors: Dict[str, torch.Tensor] = {"ids": data.ids.to(torch.int64).contiguous()}
    for k, v in data.labels.items():
        tensors["label." + k] = v.to(torch.float32).contiguous()
    for k, v in data.groups.items():
        tensors["group." + k] = v.to(torch.int64).contiguous()
    tensors = {k: v.cpu() for k, v in tensors.items()}
    meta = {
        "format": FORMAT, "version": VERSION, "rows": len(data),
        "fields": [[f.name, f.vocab_size, f.max_len] for f in data.fields],
        "labels": list(data.labels), "groups": list(data.groups),
        "crc32": {k: _crc(v) for k, v in tensors.items()},
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={_META_KEY: json.dumps(meta)})


def read_meta(path: str) -> Dict[str, Any]:
    """The JSON metadata of an encoded file (cheap: the header only)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            raw = (f.metadata() or {}).get(_META_KEY)
    except FileNotFoundError as e:
        raise DataError(f"{path}: no such file") from e
    except Exception as e:  # SafetensorError, OSError, ...: not a readable safetensors header
        raise DataError(f"{path}: not a valid encoded-data file ({e})") from e
    try:
        meta = json.loads(raw) if raw else None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: metadata is not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{path}: not an {FORMAT} file (missing or wrong '{_META_KEY}' metadata)")
    if meta.get("version") != VERSION:
        raise DataError(f"{path}: format version {meta.get('version')} is not supported (want {VERSION})")
    return meta


def load_encoded(path: str) -> EncodedData:
    """Read a file written by save_encoded; DataError if it is corrupt or inconsistent."""
    from safetensors.torch import load_file

    path = os.fspath(path)
    meta = read_meta(path)
    try:
        tensors = load_file(path)
    except Exception as e:
        raise DataError(f"{path}: corrupt tensor data ({e})") from e
    try:
        fields = [FieldSpec(str(n), int(v), int(m)) for n, v, m in meta["fields"]]
        rows = int(meta["rows"])
        names = ["ids"] + ["label." + k for k in meta["labels"]] + ["group." + k for k in meta["groups"]]
        crcs = meta["crc32"]
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: incomplete metadata ({e!r})") from e
    for name in names:
        if name not in tensors:
            raise DataError(f"{path}: tensor {name!r} is missing")
        if _crc(tensors[name]) != crcs.get(name):
            raise DataError(f"{path}: tensor {name!r} fails its CRC32 check (file corrupt)")
    ids = tensors["ids"]
    L = max((f.max_len for f in fields), default=1)
    if ids.dtype != torch.int64 or ids.dim() != 3 or tuple(ids.shape[:2]) != (rows, len(fields)) or ids.shape[2] < L:
        raise DataError(f"{path}: ids must be int64 [{rows}, {len(fields)}, >={L}], got {ids.dtype} {list(ids.shape)}")
    if rows:
        top = torch.tensor([f.vocab_size for f in fields]).view(1, -1, 1)
        if bool((ids < -1).any()) or bool((ids >= top).any()):
            raise DataError(f"{path}: ids out of range for the field vocabularies")
    labels = {k: tensors["label." + k] for k in meta["labels"]}
    groups = {k: tensors["group." + k] for k in meta["groups"]}
    for k, v in list(labels.items()) + list(groups.items()):
        if v.shape != (rows,):
            raise DataError(f"{path}: {k!r} must have shape [{rows}], got {list(v.shape)}")
    return EncodedData(fields, ids, labels, groups)


# --------------------------------------------------------------------------------------------
_KINDS = {
    "synthetic": None,  # any synthetic() keyword
    "tfrecord": {"path", "max_len", "skip_corrupt", "on_bad_row"},
    "csv": {"path", "schema", "on_bad_row"},
    "parquet": {"path", "schema", "on_bad_row"},
}


def _paths(cfg: Dict) -> List[str]:
    p = cfg.get("path")
    if p is None:
        raise DataError(f"data config of kind {cfg['kind']!r} needs 'path'")
    ps = p if isinstance(p, list) else [p]
    return [os.path.abspath(os.path.expanduser(os.fspath(x))) for x in ps]


def _source_signature(cfg: Dict) -> List:
    sig = []
    files = [] if cfg["kind"] == "synthetic" else _paths(cfg)
    if isinstance(cfg.get("schema"), (str, os.PathLike)):
        files.append(os.path.abspath(os.fspath(cfg["schema"])))
    for f in files:
        try:
            st = os.stat(f)
        except OSError as e:
            raise DataError(f"{f}: cannot read data source ({e})") from e
        sig.append([f, st.st_size, st.st_mtime_ns])
    return sig


def cache_key(cfg: Dict) -> str:
    """sha256 of the config, the source files' (path, size, mtime) and the format version."""
    blob = json.dumps({"cfg": cfg, "sources": _source_signature(cfg), "version": VERSION},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _build(cfg: Dict, stats: Optional[Dict[str, int]] = None) -> EncodedData:
    kind = cfg["kind"]
    if kind == "synthetic":
        from .synth import synthetic

        kw = {k: v for k, v in cfg.items() if k != "kind"}
        try:
            return synthetic(**kw)
        except TypeError as e:
            raise DataError(f"data config (synthetic): {e}") from e
    if kind == "tfrecord":
        from .lt4rec import encode_lt4rec

        return encode_lt4rec(_paths(cfg), max_len=int(cfg.get("max_len", 8)),
                             skip_corrupt=bool(cfg.get("skip_corrupt", False)), stats=stats,
                             on_bad_row=cfg.get("on_bad_row", "error"))[0]
    from .table import encode_table

    if "schema" not in cfg:
        raise DataError(f"data config of kind {kind!r} needs 'schema' (a mapping or a YAML/JSON path)")
    paths = _paths(cfg)
    if len(paths) != 1:
        raise DataError(f"data config of kind {kind!r}: 'path' must be one file")
    return encode_table(paths[0], cfg["schema"], fmt=kind, on_bad_row=cfg.get("on_bad_row", "error"),
                        stats=stats)[0]


def load_dataset(cfg: Dict, cache_dir: Optional[str] = None, stats: Optional[Dict[str, int]] = None) -> EncodedData:
    """Encode the data that ``cfg`` describes; cfg["kind"] is one of synthetic, tfrecord, csv,
    parquet. With ``cache_dir`` the result is cached there under a key of the config and the
    source files' size and mtime; a corrupt cache entry (every tensor is CRC32-checked) is
    rebuilt (with a warning). ``stats``: a dict updated with the reader's counts ("bad_rows"
    skipped with on_bad_row: skip, "corrupt_records"), also when the data comes from the cache."""
    if not isinstance(cfg, dict) or cfg.get("kind") not in _KINDS:
        got = cfg.get("kind") if isinstance(cfg, dict) else type(cfg).__name__
        raise DataError(f"data config: 'kind' must be one of {sorted(_KINDS)}, got {got!r}")
    cfg = copy.deepcopy(cfg)
    allowed = _KINDS[cfg["kind"]]
    if allowed is not None:
        unknown = set(cfg) - allowed - {"kind"}
        if unknown:
            raise DataError(f"data config of kind {cfg['kind']!r}: unknown keys {sorted(unknown)}; "
                            f"allowed {sorted(allowed)}")
    counts: Dict[str, int] = {} if stats is None else stats
    if cache_dir is None:
        return _build(cfg, counts)
    key = cache_key(cfg)
    path = os.path.join(os.fspath(cache_dir), f"{cfg['kind']}-{key[:20]}.safetensors")
    if os.path.exists(path):
        try:
            data = load_encoded(path)
            for k, v in (read_meta(path).get("extra", {}).get("counts") or {}).items():
                counts[k] = counts.get(k, 0) + int(v)
            return data
        except DataError as e:
            warnings.warn(f"rebuilding the data cache: {e}")
    before = dict(counts)
    data = _build(cfg, counts)
    made = {k: v - before.get(k, 0) for k, v in counts.items()}
    save_encoded(data, path, extra={"cfg": json.loads(json.dumps(cfg, default=str)), "key": key, "counts": made})
    return data
