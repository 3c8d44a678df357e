"""Epoch orders over a StreamSplit (ncs.data.stream): the batches of one epoch, task batches
interleaved round-robin, and the background thread that gathers each batch's rows ahead.

The order is a function of (seed, stage tag, epoch); see ncs.data.stream's docstring.
"""
from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING, Iterator, List, Optional, Tuple

import numpy as np
import torch

if TYPE_CHECKING:
    from .stream import StreamSplit


class _Prefetched:
    """A batch whose rows were already gathered (and pinned) on the prefetch thread."""

    __slots__ = ("idx", "data")

    def __init__(self, idx: torch.Tensor, data):
        self.idx = idx
        self.data = data

    def numel(self) -> int:
        return int(self.idx.numel())


class EpochBatches:
    """A lazy, resumable sequence of (task, row positions) batches: len(), iteration, and
    from_batch(k) to start at batch k without reading the batches before it."""

    def __init__(self, split: "StreamSplit", task: Optional[str], P: Optional[np.ndarray], batch_size: int,
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


class CycledTask:
    """One task's batches in the cycled alternation (stages.joint.alternate: cycle), lazily: its
    epoch order, then further passes in fresh seeded orders (make_pass(j): the pass with tag
    "<tag>/cycle<j>"), cut at nb batches. Same interface as EpochBatches for AlternatingBatches
    (nb, task, split, from_batch, positions); only one pass's window is held at a time."""

    def __init__(self, first: EpochBatches, nb: int, make_pass, start: int = 0):
        self.first, self.nb, self.make_pass, self.start = first, int(nb), make_pass, int(start)
        self.task, self.split = first.task, first.split

    def __len__(self) -> int:
        return max(0, self.nb - self.start)

    def from_batch(self, k: int) -> "CycledTask":
        return CycledTask(self.first, self.nb, self.make_pass, self.start + k)

    def positions(self) -> Iterator[np.ndarray]:
        left, skip, j = self.nb - self.start, self.start, 0
        while left > 0:
            p = self.first if j == 0 else self.make_pass(j)
            if p.nb == 0:
                return
            if skip >= p.nb:
                skip -= p.nb
            else:
                for pos in p.from_batch(skip).positions():
                    yield pos
                    left -= 1
                    if left == 0:
                        return
                skip = 0
            j += 1


def prefetched(split: "StreamSplit", items: Iterator[Tuple[Optional[str], np.ndarray]], depth: int):
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
