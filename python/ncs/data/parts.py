"""Parts of an encoded directory without copying it: a part is (directory, sorted global row
ids) or the whole directory. The split rules are in ncs.data.stream's docstring.

StreamPart      rows of one EncodedDir
EncodedSource   data of kind 'encoded': one directory, or a {train, valid, test} mapping of them
split_source    (train, valid, test) parts, computed in one streamed pass over the group column
part_summary    rows, clicks and rates of each part (streamed)
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .errors import DataError
from .shards import EncodedDir


@dataclass
class StreamPart:
    """Rows of an encoded directory: all of them (rows None) or the sorted global ids ``rows``."""

    dir: EncodedDir
    rows: Optional[np.ndarray] = None
    split_by: Optional[str] = None
    streamed = True

    def __len__(self) -> int:
        return self.dir.rows if self.rows is None else int(self.rows.size)

    @property
    def fields(self):
        return self.dir.fields


class EncodedSource:
    """cfg data of kind 'encoded': one directory, or a {train, valid, test} mapping of them."""

    streamed = True

    def __init__(self, dirs: Dict[str, EncodedDir]):
        self.dirs = dirs
        first = next(iter(dirs.values()))
        for name, d in dirs.items():
            if d.vocab_hash != first.vocab_hash:
                raise DataError(f"{d.path}: encoded with another vocabulary than {first.path} "
                                f"(vocab_hash {d.vocab_hash[:12]} vs {first.vocab_hash[:12]}); encode it with "
                                f"`ncs data convert ... --vocab-from {first.path}`")
        self.fields = first.fields

    def __len__(self) -> int:
        return sum(d.rows for d in self.dirs.values())

    def split_parts(self, by: str, fractions: Sequence[float], seed: int):
        return split_source(self, by, fractions, seed)


def open_source(path) -> EncodedSource:
    if isinstance(path, dict):
        missing = {"train", "valid", "test"} - set(path)
        if missing or set(path) - {"train", "valid", "test"}:
            raise DataError(f"data.path: a mapping needs exactly the keys train, valid, test, got {sorted(path)}")
        return EncodedSource({k: EncodedDir(path[k]) for k in ("train", "valid", "test")})
    return EncodedSource({"all": EncodedDir(path)})


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def split_source(src: EncodedSource, by: str, fractions: Sequence[float], seed: int
                 ) -> Tuple[StreamPart, StreamPart, StreamPart]:
    """(train, valid, test) parts; a {train, valid, test} source is its own split."""
    from .splits import _check_fractions

    if "all" not in src.dirs:
        return tuple(StreamPart(src.dirs[k], split_by="given (data.path mapping)")  # type: ignore[return-value]
                     for k in ("train", "valid", "test"))
    d = src.dirs["all"]
    fr = _check_fractions(fractions)
    cuts = np.array([fr[0], fr[0] + fr[1]])
    n = d.rows
    rdt = np.int32 if n < (1 << 31) else np.int64  # row lists: 4 bytes per row, built shard by shard
    codes: List[np.ndarray] = []  # per shard: the part (0, 1, 2) of each row
    if by == "time":
        if "time" not in d.groups:
            raise DataError(f"{d.path}: data.split.by time needs a 'time' group (schema groups: {{time: COLUMN}}); "
                            f"this data has groups {d.groups}")
        uniq: Optional[np.ndarray] = None
        counts: Optional[np.ndarray] = None
        for i in range(len(d.shards)):
            u, c = np.unique(np.asarray(d.column("g.time", i)), return_counts=True)
            if uniq is None:
                uniq, counts = u, c
            else:
                allv = np.concatenate([uniq, u])
                allc = np.concatenate([counts, c])
                uniq, inv = np.unique(allv, return_inverse=True)
                counts = np.bincount(inv, weights=allc).astype(np.int64)
            d.release()
        if uniq is None:
            return tuple(StreamPart(d, np.zeros(0, dtype=np.int64)) for _ in range(3))  # type: ignore[return-value]
        before = np.cumsum(counts) - counts  # rows with an earlier time value
        part_of_value = np.searchsorted(cuts, before / max(n, 1), side="right")  # = torch.bucketize(right=True)
        for i, s in enumerate(d.shards):
            t = np.asarray(d.column("g.time", i))
            codes.append(part_of_value[np.searchsorted(uniq, t)].astype(np.uint8))
            d.release()
    else:
        if by != "random" and by not in d.groups:
            raise DataError(f"{d.path}: data.split.by {by!r}: not a group of this data ({d.groups}) nor 'random'")
        salt = np.uint64(int.from_bytes(hashlib.blake2b(f"split:{seed}".encode(), digest_size=8)
                                        .digest(), "little"))
        for i, s in enumerate(d.shards):
            key = (np.arange(s.start, s.start + s.rows, dtype=np.int64) if by == "random"
                   else np.asarray(d.column(f"g.{by}", i)).astype(np.int64))
            u = (_splitmix(key.view(np.uint64) ^ salt) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
            codes.append(np.searchsorted(cuts, u, side="right").astype(np.uint8))
            d.release()
    # second pass over the part codes (1 byte per row): exact-size row lists, no concatenation
    sizes = np.zeros(3, dtype=np.int64)
    for c in codes:
        sizes += np.bincount(c, minlength=3)[:3]
    out_rows = [np.empty(int(sizes[k]), dtype=rdt) for k in range(3)]
    fill = [0, 0, 0]
    for s, c in zip(d.shards, codes):
        for k in range(3):
            idx = np.flatnonzero(c == k)
            out_rows[k][fill[k]: fill[k] + idx.size] = s.start + idx
            fill[k] += idx.size
    codes.clear()
    out = [StreamPart(d, None if r.size == n else r) for r in out_rows]  # None: the whole directory
    return tuple(out)  # type: ignore[return-value]


def part_summary(parts: Sequence[StreamPart]) -> Dict[str, Any]:
    """Rows, clicks and rates of each part (streamed; group counts are left out at this scale)."""
    out: Dict[str, Any] = {}
    for name, p in zip(("train", "valid", "test"), parts):
        clicks = 0
        conv_sum = 0.0
        for i, rows in _per_shard(p):
            c = np.asarray(p.dir.column("l.click", i))
            v = np.asarray(p.dir.column("l.conversion", i))
            if rows is not None:
                c, v = c[rows], v[rows]
            clicks += int(c.sum(dtype=np.int64))
            conv_sum += float(v[c > 0].sum(dtype=np.float64))
            p.dir.release()
        n = len(p)
        out[name] = {"rows": n, "clicks": clicks, "click_rate": clicks / n if n else 0.0,
                     "conversion_mean": conv_sum / clicks if clicks else 0.0}
    out["streamed"] = True
    return out


def _per_shard(p: StreamPart) -> Iterator[Tuple[int, Optional[np.ndarray]]]:
    """(shard, local row ids or None for every row) for the shards a part touches."""
    d = p.dir
    if p.rows is None:
        for i in range(len(d.shards)):
            yield i, None
        return
    bnd = np.searchsorted(p.rows, d.starts)
    for i, s in enumerate(d.shards):
        if bnd[i + 1] > bnd[i]:
            yield i, p.rows[bnd[i]:bnd[i + 1]] - s.start
