"""A split as device tensors, and the batch orders of every stage.

All data of a split is moved to the compute device once (when it fits) and batches are index
slices of those tensors: no per-row Python, no DataLoader. The order of an epoch is a function
of (seed, stage tag, epoch) alone, so a resumed run sees exactly the batches it would have seen.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch


@dataclass
class SplitTensors:
    ids: torch.Tensor                       # int64 [n, F, L]
    targets: Dict[str, torch.Tensor]        # task -> float32 [n]
    spaces: Dict[str, Optional[torch.Tensor]]  # task -> bool [n] (None: every row)
    space_index: Dict[str, torch.Tensor]    # task -> int64 row ids of the task's space
    device: torch.device                    # where batches are computed

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def batch(self, idx: torch.Tensor):
        """(ids, {task: target}, {task: in_space or None}) of rows idx, on the compute device."""
        dev = self.device
        ids = self.ids.index_select(0, idx).to(dev, non_blocking=True)
        tg = {t: v.index_select(0, idx).to(dev, non_blocking=True) for t, v in self.targets.items()}
        sp = {t: (None if v is None else v.index_select(0, idx).to(dev, non_blocking=True))
              for t, v in self.spaces.items()}
        return ids, tg, sp


def prepare_split(data, tasks: Sequence[dict], click_label: str, device: torch.device,
                  max_fraction_of_free: float = 0.5, stream: Optional[dict] = None) -> SplitTensors:
    """EncodedData -> SplitTensors. Everything goes to `device` when it takes less than
    max_fraction_of_free of the free device memory; otherwise it stays in host memory (pinned)
    and each batch is copied over. A streamed part (ncs.data.stream.StreamPart, data kind
    'encoded') becomes a StreamSplit with the same interface; `stream` holds its options
    (window_rows, prefetch, verify)."""
    if getattr(data, "streamed", False):
        from ..data.stream import StreamSplit

        return StreamSplit(data, tasks, click_label, device, **(stream or {}))  # type: ignore[return-value]
    ids = data.ids.to(torch.int64)
    targets, spaces = {}, {}
    for t in tasks:
        if t["label"] not in data.labels:
            raise ValueError(f"tasks: task {t['name']!r} uses label {t['label']!r}, but the data has labels "
                             f"{sorted(data.labels)}")
        targets[t["name"]] = data.labels[t["label"]].to(torch.float32)
        if t["space"] == "clicked":
            if click_label not in data.labels:
                raise ValueError(f"data.click_label: {click_label!r} is not a label of the data "
                                 f"({sorted(data.labels)})")
            spaces[t["name"]] = data.labels[click_label] > 0.5
        else:
            spaces[t["name"]] = None
    n = ids.shape[0]
    store = torch.device("cpu")
    if device.type == "cuda":
        nbytes = ids.numel() * 8 + sum(v.numel() * 5 for v in targets.values())
        free, _ = torch.cuda.mem_get_info(device)
        store = device if nbytes < max_fraction_of_free * free else torch.device("cpu")
    if store.type == "cpu" and device.type == "cuda":
        ids = ids.pin_memory()
    ids = ids.to(store)
    targets = {k: v.to(store) for k, v in targets.items()}
    spaces = {k: (None if v is None else v.to(store)) for k, v in spaces.items()}
    space_index = {k: (torch.arange(n, device=store) if v is None else v.nonzero().squeeze(1))
                   for k, v in spaces.items()}
    return SplitTensors(ids, targets, spaces, space_index, device)


def epoch_seed(seed: int, tag: str, epoch: int) -> int:
    """A 63-bit seed from (run seed, stage tag, epoch), stable across processes and versions."""
    h = hashlib.blake2b(f"{int(seed)}/{tag}/{int(epoch)}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def permutation(n: int, seed: int, tag: str, epoch: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator(device="cpu")
    g.manual_seed(epoch_seed(seed, tag, epoch))
    return torch.randperm(n, generator=g).to(device)


def mixed_batches(split: SplitTensors, batch_size: int, seed: int, tag: str, epoch: int
                  ) -> List[Tuple[Optional[str], torch.Tensor]]:
    """Shuffled batches of all rows (every task in every batch): [(None, row ids)]."""
    if getattr(split, "streamed", False):
        return split.epoch_batches(None, batch_size, seed, tag, epoch)  # type: ignore[attr-defined]
    n = len(split)
    perm = permutation(n, seed, tag, epoch, split.ids.device)
    return [(None, perm[i:i + batch_size]) for i in range(0, n, batch_size)]


def task_batches(split: SplitTensors, task: str, batch_size: int, seed: int, tag: str, epoch: int
                 ) -> List[Tuple[Optional[str], torch.Tensor]]:
    """Shuffled batches of the rows of one task's space: [(task, row ids)]."""
    if getattr(split, "streamed", False):
        return split.epoch_batches(task, batch_size, seed, tag, epoch)  # type: ignore[attr-defined]
    rows = split.space_index[task]
    perm = permutation(int(rows.numel()), seed, f"{tag}/{task}", epoch, rows.device)
    rows = rows[perm]
    return [(task, rows[i:i + batch_size]) for i in range(0, int(rows.numel()), batch_size)]


def alternating_batches(split: SplitTensors, tasks: Sequence[str], batch_size: int, seed: int, tag: str,
                        epoch: int) -> List[Tuple[Optional[str], torch.Tensor]]:
    """Task-homogeneous batches, interleaved round-robin (ctr, cvr, ctr, cvr, ...); when a task's
    space runs out (CVR: the clicked rows) the others go on until every space is covered once."""
    per = [task_batches(split, t, batch_size, seed, tag, epoch) for t in tasks]
    if getattr(split, "streamed", False):
        from ..data.stream import AlternatingBatches

        return AlternatingBatches(per)  # type: ignore[return-value]
    out = []
    for i in range(max((len(p) for p in per), default=0)):
        for p in per:
            if i < len(p):
                out.append(p[i])
    return out


def from_batch(batches, k: int):
    """The batches of an epoch from batch k on (a resumed mid-epoch position): a list is
    sliced, a streamed epoch (ncs.data.stream) skips without reading the batches before k."""
    if k <= 0:
        return batches
    if hasattr(batches, "from_batch"):
        return batches.from_batch(k)
    return batches[k:]


def eval_slices(n: int, batch_size: int) -> Iterator[slice]:
    for i in range(0, n, batch_size):
        yield slice(i, min(n, i + batch_size))


def cycled_alternating_batches(split: SplitTensors, tasks: Sequence[str], batch_size: int, seed: int, tag: str,
                               epoch: int) -> List[Tuple[Optional[str], torch.Tensor]]:
    """stages.joint.alternate = cycle: task-homogeneous batches round-robin (ctr, cvr, ctr, cvr,
    ...) until the largest space is covered once; a smaller space (CVR: the clicked rows) is
    gone over again, each further pass in a fresh seeded order (tag "<tag>/cycle<j>"), so every
    task takes as many steps as the largest (a Single_Task or Layer_Share CVR head gets one step
    per mixed batch; the plain alternation gives it only clicked_rows / batch_size)."""
    if getattr(split, "streamed", False):  # lazy: one pass's window at a time, never the epoch's rows
        from ..data.epochs import AlternatingBatches, CycledTask

        first = [task_batches(split, t, batch_size, seed, tag, epoch) for t in tasks]
        n = max((p.nb for p in first), default=0)
        return AlternatingBatches([CycledTask(p, n if p.nb else 0, lambda j, t=t: task_batches(
            split, t, batch_size, seed, f"{tag}/cycle{j}", epoch)) for p, t in zip(first, tasks)])  # type: ignore
    per = [task_batches(split, t, batch_size, seed, tag, epoch) for t in tasks]
    n = max((len(p) for p in per), default=0)
    for k, t in enumerate(tasks):
        j = 1
        while per[k] and len(per[k]) < n:
            per[k] = per[k] + task_batches(split, t, batch_size, seed, f"{tag}/cycle{j}", epoch)
            j += 1
    out = []
    for i in range(n):
        for p in per:
            if i < len(p):
                out.append(p[i])
    return out
