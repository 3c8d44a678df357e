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

Modules: ncs.data.parts (parts, sources, the split rules above), ncs.data.epochs (epoch orders,
the prefetch thread), this one (StreamSplit, the trainer's view); every name is importable here.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Optional, Sequence

import numpy as np
import torch

from .epochs import AlternatingBatches, EpochBatches, _Prefetched, prefetched  # noqa: F401  (ncs.data.stream names)
from .parts import (EncodedSource, StreamPart, _per_shard, _splitmix, open_source, part_summary,  # noqa: F401
                    split_source)

__all__ = ["StreamPart", "EncodedSource", "open_source", "split_source", "part_summary", "StreamSplit",
           "EpochBatches", "AlternatingBatches", "prefetched"]


# --------------------------------------------------------------------------- the trainer's view
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
