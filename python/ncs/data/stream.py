"""Training straight from an encoded directory (shards.py), with bounded memory.

Splits never copy the data: a part is (directory, sorted global row ids) or a whole directory.
Splits on a directory are computed in one streamed pass over the group column:
  by: time                 the in-memory rule exactly (ncs.data.splits): rows ordered by the time
                           value, cut where the running row count crosses each fraction, every
                           time value in one part; memory O(distinct time values).
  by: request|user|random  a group (or row) goes to a part by a seeded 64-bit hash of its key:
                           groups stay whole and no table of all groups is built, but the parts'
                           row shares match the fractions only approximately (by group count),
                           and the assignment differs from the in-memory splitter's.

The epoch order (StreamSplit.epoch_batches) is a function of (seed, stage tag, epoch):
  * the split's rows of one shard form a block; the blocks are permuted, taken in windows of
    ``window_rows // shard_rows`` shards, and the rows of a window are permuted uniformly;
    batches are consecutive runs of that order. Memory: one window's positions.
    Cost in randomness: a batch holds rows of at most two windows, i.e. from a few shards, not
    from the whole split; across the epoch every row is still seen exactly once.
  * when the split fits in one window (small data) the order is B.permutation's exactly, so
    the streamed path gives the very batches of the in-memory path.
Batches are gathered from the memory-mapped shards on a background thread (``prefetch`` batches
ahead), pinned when training on CUDA and copied with non_blocking. Each shard's checksums are
checked on its first use in the process; at most ``max_open`` shards stay mapped (older ones are
unmapped so their pages leave the resident set).
"""
from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .errors import DataError
from .shards import EncodedDir


# --------------------------------------------------------------------------- parts and splits
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
        salt = np.uint64(int.from_bytes(__import__("hashlib").blake2b(f"split:{seed}".encode(), digest_size=8)
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


# --------------------------------------------------------------------------- the trainer's view
class _Prefetched:
    """A batch whose rows were already gathered (and pinned) on the prefetch thread."""

    __slots__ = ("idx", "data")

    def __init__(self, idx: torch.Tensor, data):
        self.idx = idx
        self.data = data

    def numel(self) -> int:
        return int(self.idx.numel())


class _LazyIds:
    """split.ids for the trainer's evaluation: ids[slice] and ids.index_select(0, positions)."""

    def __init__(self, split: "StreamSplit"):
        self.split = split
        self.device = torch.device("cpu")

    @property
    def shape(self):
        s = self.split
        return (len(s), len(s.fields), s.width)

    def __getitem__(self, sl):
        if not isinstance(sl, slice):
            raise TypeError("streamed ids support slices and index_select only")
        a, b, step = sl.indices(len(self.split))
        return torch.from_numpy(self.split.gather_ids(np.arange(a, b, step, dtype=np.int64)))

    def index_select(self, dim: int, idx: torch.Tensor) -> torch.Tensor:
        if dim != 0:
            raise ValueError("index_select: dim must be 0")
        return torch.from_numpy(self.split.gather_ids(idx.cpu().numpy().astype(np.int64)))


class _LazyDict(dict):
    def __init__(self, keys, fn):
        super().__init__()
        self._keys = list(keys)
        self._fn = fn

    def __getitem__(self, k):
        if not dict.__contains__(self, k):
            if k not in self._keys:
                raise KeyError(k)
            dict.__setitem__(self, k, self._fn(k))
        return dict.__getitem__(self, k)

    def __contains__(self, k):
        return k in self._keys

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)

    def keys(self):
        return list(self._keys)

    def items(self):
        return [(k, self[k]) for k in self._keys]

    def values(self):
        return [self[k] for k in self._keys]


class StreamSplit:
    """The in-memory SplitTensors' interface (len, batch(idx), ids, targets, spaces, space_index,
    device) over a StreamPart. targets / spaces / space_index are built on first use (the
    evaluation splits); training batches come from epoch_batches()."""

    streamed = True

    def __init__(self, part: StreamPart, tasks: Sequence[dict], click_label: str, device: torch.device,
                 window_rows: int = 1 << 20, prefetch: int = 4, max_open: int = 16, verify: bool = True):
        d = part.dir
        for t in tasks:
            if t["label"] not in d.labels:
                raise ValueError(f"tasks: task {t['name']!r} uses label {t['label']!r}, but the data has labels "
                                 f"{sorted(d.labels)}")
            if t["space"] == "clicked" and click_label not in d.labels:
                raise ValueError(f"data.click_label: {click_label!r} is not a label of the data ({sorted(d.labels)})")
        self.part, self.dir, self.rows = part, d, part.rows
        self.tasks = list(tasks)
        self.click_label = click_label
        self.device = device
        self.fields = d.fields
        self.width = max((f.max_len for f in d.fields), default=1)
        self.n = len(part)
        self.window_shards = max(1, int(window_rows) // max(1, d.shard_rows))
        self.prefetch = int(prefetch)
        self.max_open = max(2, int(max_open), 2 * self.window_shards + 2)
        self.verify = verify
        self._verified: set = set()
        self._open: "OrderedDict[int, None]" = OrderedDict()
        self._lock = threading.Lock()
        # split positions at which each shard's rows begin
        self.pos_starts = d.starts.copy() if self.rows is None else np.searchsorted(self.rows, d.starts)
        names = [t["name"] for t in self.tasks]
        self.targets = _LazyDict(names, lambda t: torch.from_numpy(
            self._column(f"l.{self._task(t)['label']}").astype(np.float32)))
        self.spaces = _LazyDict(names, lambda t: None if self._task(t)["space"] != "clicked" else torch.from_numpy(
            self._column(f"l.{click_label}") > 0.5))
        self.space_index = _LazyDict(names, lambda t: torch.from_numpy(self._space_positions(t)))
        self.ids = _LazyIds(self)

    def __len__(self) -> int:
        return self.n

    def _task(self, name: str) -> dict:
        return next(t for t in self.tasks if t["name"] == name)

    # ------------------------------------------------------------------ reading
    def _touch(self, shard: int) -> None:
        with self._lock:
            if self.verify and shard not in self._verified:
                self.dir.verify_shard(shard)
                self._verified.add(shard)
            self._open[shard] = None
            self._open.move_to_end(shard)
            if len(self._open) > self.max_open:
                while len(self._open) > self.max_open:
                    self._open.popitem(last=False)
                self.dir.release(keep=list(self._open))

    def _globals(self, pos: np.ndarray) -> np.ndarray:
        return pos if self.rows is None else self.rows[pos]

    def _by_shard(self, g: np.ndarray):
        shard = np.searchsorted(self.dir.starts, g, side="right") - 1
        if g.size and (g.min() < 0 or g.max() >= self.dir.rows):
            raise IndexError("row index out of range")
        order = np.argsort(shard, kind="stable")
        ss = shard[order]
        cuts = np.flatnonzero(np.diff(ss)) + 1
        for sel in np.split(order, cuts):
            if sel.size:
                s = int(shard[sel[0]])
                yield s, sel, g[sel] - self.dir.starts[s]

    def gather_ids(self, pos: np.ndarray) -> np.ndarray:
        g = self._globals(pos)
        out = np.full((g.size, len(self.fields), self.width), -1, dtype=np.int64)
        for s, sel, local in self._by_shard(g):
            self._touch(s)
            for j, f in enumerate(self.fields):
                col = self.dir.column(f"f.{f.name}", s)[local]
                if col.ndim == 1:
                    out[sel, j, 0] = col
                else:
                    out[sel, j, :col.shape[1]] = col
        return out

    def gather_labels(self, pos: np.ndarray, label: str) -> np.ndarray:
        g = self._globals(pos)
        out = np.empty(g.size, dtype=np.float32)
        for s, sel, local in self._by_shard(g):
            self._touch(s)
            out[sel] = self.dir.column(f"l.{label}", s)[local]
        return out

    def _column(self, col: str) -> np.ndarray:
        """One column over the split's rows (streamed shard by shard)."""
        parts = []
        for i, rows in _per_shard(self.part):
            self._touch(i)
            c = self.dir.column(col, i)
            parts.append(np.asarray(c if rows is None else c[rows]))
        self.dir.release(keep=list(self._open))
        return np.concatenate(parts) if parts else np.zeros(0)

    def _space_positions(self, task: str) -> np.ndarray:
        if self._task(task)["space"] != "clicked":
            return np.arange(self.n, dtype=np.int64)
        return np.flatnonzero(self._column(f"l.{self.click_label}") > 0).astype(np.int64)

    def _gather(self, pos: np.ndarray):
        ids = torch.from_numpy(self.gather_ids(pos))
        tg, sp = {}, {}
        click = None
        for t in self.tasks:
            tg[t["name"]] = torch.from_numpy(self.gather_labels(pos, t["label"]))
            if t["space"] == "clicked":
                if click is None:
                    click = torch.from_numpy(self.gather_labels(pos, self.click_label) > 0.5)
                sp[t["name"]] = click
            else:
                sp[t["name"]] = None
        return ids, tg, sp

    def batch(self, idx):
        """(ids, {task: target}, {task: in_space or None}) of a batch, on the compute device."""
        data = idx.data if isinstance(idx, _Prefetched) else self._gather(idx.cpu().numpy().astype(np.int64))
        ids, tg, sp = data
        dev = self.device
        nb = dev.type == "cuda"
        return (ids.to(dev, non_blocking=nb), {k: v.to(dev, non_blocking=nb) for k, v in tg.items()},
                {k: (None if v is None else v.to(dev, non_blocking=nb)) for k, v in sp.items()})

    # ------------------------------------------------------------------ epoch orders
    def epoch_batches(self, task: Optional[str], batch_size: int, seed: int, tag: str, epoch: int) -> "EpochBatches":
        """The batches of one epoch: every row (task None) or the rows of the task's space."""
        if task is None:
            P = None
            sub_tag = tag
        else:
            sub_tag = f"{tag}/{task}"
            P = None if self._task(task)["space"] != "clicked" else self.space_index[task].numpy()
        return EpochBatches(self, task, P, batch_size, seed, sub_tag, epoch)


class EpochBatches:
    """A lazy, resumable sequence of (task, row positions) batches: len(), iteration, and
    from_batch(k) to start at batch k without reading the batches before it."""

    def __init__(self, split: StreamSplit, task: Optional[str], P: Optional[np.ndarray], batch_size: int,
                 seed: int, tag: str, epoch: int, start: int = 0):
        self.split, self.task, self.P = split, task, P
        self.bs = int(batch_size)
        self.seed, self.tag, self.epoch = seed, tag, epoch
        self.total = split.n if P is None else int(P.size)
        self.start = int(start)
        self.nb = -(-self.total // self.bs)

    def __len__(self) -> int:
        return max(0, self.nb - self.start)

    def from_batch(self, k: int) -> "EpochBatches":
        return EpochBatches(self.split, self.task, self.P, self.bs, self.seed, self.tag, self.epoch, self.start + k)

    def _windows(self) -> Iterator[np.ndarray]:
        """The epoch's order of positions, window by window, starting at element start * bs."""
        from ..train.batches import epoch_seed

        sp = self.split
        skip = self.start * self.bs
        ns = len(sp.dir.shards)
        es = epoch_seed(self.seed, self.tag, self.epoch)
        g = torch.Generator()
        if ns <= sp.window_shards:  # one window: B.permutation's order exactly
            g.manual_seed(es)
            perm = torch.randperm(self.total, generator=g).numpy()
            yield (perm if self.P is None else self.P[perm])[skip:]
            return
        bnd = sp.pos_starts if self.P is None else np.searchsorted(self.P, sp.pos_starts)
        g.manual_seed(es)
        order = torch.randperm(ns, generator=g).numpy()
        W = sp.window_shards
        done = 0
        for w in range(0, ns, W):
            shards = order[w: w + W]
            size = int(sum(bnd[s + 1] - bnd[s] for s in shards))
            if done + size <= skip:
                done += size
                continue
            pos = np.concatenate([np.arange(bnd[s], bnd[s + 1], dtype=np.int64) for s in shards])
            gw = torch.Generator()
            gw.manual_seed(epoch_seed(self.seed, f"{self.tag}#window{w // W}", self.epoch))
            pos = pos[torch.randperm(pos.size, generator=gw).numpy()]
            if self.P is not None:
                pos = self.P[pos]
            yield pos[max(0, skip - done):]
            done += size

    def positions(self) -> Iterator[np.ndarray]:
        """Row positions of each batch, in order."""
        buf: List[np.ndarray] = []
        have = 0
        for win in self._windows():
            buf.append(win)
            have += win.size
            while have >= self.bs:
                allp = np.concatenate(buf) if len(buf) > 1 else buf[0]
                yield allp[: self.bs]
                rest = allp[self.bs:]
                buf, have = ([rest] if rest.size else []), rest.size
        if have:
            yield np.concatenate(buf)

    def __iter__(self):
        return prefetched(self.split, ((self.task, p) for p in self.positions()), self.split.prefetch)


class AlternatingBatches:
    """Task batches interleaved round-robin, as B.alternating_batches: ctr, cvr, ctr, cvr, ...;
    when one task runs out the others go on. Resumable with from_batch(k)."""

    def __init__(self, per: List[EpochBatches], start: int = 0):
        self.per = per
        self.start = start

    def _schedule(self) -> Iterator[int]:
        lens = [p.nb for p in self.per]
        for i in range(max(lens, default=0)):
            for j, n in enumerate(lens):
                if i < n:
                    yield j

    def __len__(self) -> int:
        return max(0, sum(p.nb for p in self.per) - self.start)

    def from_batch(self, k: int) -> "AlternatingBatches":
        return AlternatingBatches(self.per, self.start + k)

    def __iter__(self):
        sched = list(self._schedule())
        skip = [0] * len(self.per)
        for j in sched[: self.start]:
            skip[j] += 1
        its = [iter(p.from_batch(skip[j]).positions()) for j, p in enumerate(self.per)]
        split = self.per[0].split if self.per else None

        def gen():
            for j in sched[self.start:]:
                yield self.per[j].task, next(its[j])

        return prefetched(split, gen(), split.prefetch if split else 0)


def prefetched(split: StreamSplit, items: Iterator[Tuple[Optional[str], np.ndarray]], depth: int):
    """Gather each batch's rows on a background thread, ``depth`` batches ahead."""
    pin = split is not None and split.device.type == "cuda"

    def load(task, pos):
        ids, tg, sp = split._gather(pos)
        if pin:
            ids = ids.pin_memory()
            tg = {k: v.pin_memory() for k, v in tg.items()}
            sp = {k: (None if v is None else v.pin_memory()) for k, v in sp.items()}
        return task, _Prefetched(torch.from_numpy(pos), (ids, tg, sp))

    if depth <= 0:
        for task, pos in items:
            yield load(task, pos)
        return
    q: "queue.Queue" = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def work():
        try:
            for task, pos in items:
                if stop.is_set():
                    return
                q.put(load(task, pos))
            q.put(end)
        except BaseException as e:  # re-raised on the consumer side
            q.put(e)

    th = threading.Thread(target=work, name="ncs-prefetch", daemon=True)
    th.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while th.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                th.join(0.05)
