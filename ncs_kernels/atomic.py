"""One way to write a file so that a reader, or a kill, never sees half of it.

Every file the project writes (masks, checkpoints, configs, caches, run summaries, benchmark
results) goes through `atomic_path`: the content goes to a temporary file in the same folder, is
flushed to disk (fsync), then renamed over the target with `os.replace`, which is atomic on POSIX
and Windows. On any error the temporary file is removed and the target is left as it was.

    with atomic_path("out/masks.safetensors") as tmp:   # for writers that want a path
        save_file(tensors, tmp)
    atomic_write_text("out/config.yaml", text)
    atomic_write_json("out/metrics.json", doc)

Folders (a shard set, an export) are written the same way one level up: build them under a
temporary name and rename; see `ncs.data.shards` and `ncs.serve.export`.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator, Union

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "fsync_file"]

PathLike = Union[str, "os.PathLike[str]"]


def fsync_file(path: PathLike) -> None:
    """Flush a written file's data to disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: PathLike, fsync: bool = True) -> Iterator[str]:
    """Yield a temporary path beside `path`; on normal exit it is fsync'ed and renamed to `path`.

    The folder of `path` is created if needed. The temporary file keeps the target's suffix
    (some writers choose the format from it) and starts with `.tmp-`, so that a listing can tell
    it from a finished file. If the body raises, the temporary file is removed and `path` is
    untouched."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        if fsync:
            fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: PathLike, data: bytes, fsync: bool = True) -> None:
    with atomic_path(path, fsync=fsync) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_text(path: PathLike, text: str, fsync: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_write_json(path: PathLike, obj: Any, indent: int = 2, fsync: bool = True) -> None:
    """JSON with a trailing newline; keys in insertion order (the bytes are the same every run)."""
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n", fsync=fsync)
