"""Data-parallel training over torchrun ranks: gloo on the CPU, NCCL on CUDA.

    torchrun --nproc_per_node 2 -m ncs train --config C --out O

Every rank holds the whole model and the whole data; each global batch (the configured
train.batch_size rows, in the order a one-process run uses) is cut into world_size contiguous
slices and rank r trains on slice r. The loss of a rank is scaled so that the SUM over ranks is
the global batch's loss, exactly the one-process loss:

  Eq. 2 (mixed batch)  sum_k omega_k * L_k with L_k = sum over the rank's rows in task k's space
                       / the GLOBAL count of task k's rows in the batch (CVR: the clicked rows);
                       ESMM: every term is a mean over all rows, so local rows / global rows
  Eq. 1 (task batch)   the rank's mean * local rows / global rows

and the gradients are all-reduced with SUM after backward, so every rank applies the same
update and the weights stay identical (checked: a hash of every parameter and of the masks is
compared across ranks after each model and written to <out>/distributed.json). A 2-rank run
equals a 1-rank run up to the order of the floating-point sums.

Gradients (reduce_gradients): the dense ones in ONE flat buffer (plus a has-grad flag per
parameter) and one all_reduce(SUM); a table's sparse rows (or, optim.embedding_step fused, its
bags' ids and pooled gradients) all-gathered in rank order, the batch's rows, never the table.
Loss balancing: uncertainty shares out its regulariser 0.5 s_k over the ranks and all-reduces
the log-variances' gradients with the rest; PCGrad reduces each task's gradient on its own
before projecting (reduce_task_gradients on mixed batches; the joint stage reduces, then
projects). Every rank so computes the one-process step. We do not use DistributedDataParallel:
its bucketed all-reduce is for dense gradients, it hooks the autograd graph of a module whose
forward differs per stage and task, and the masked optimizers and PCGrad must see summed
gradients; one explicit reduction per step is what DDP would compute (docs/DISTRIBUTED.md).

Only rank 0 writes the run directory: every other rank runs in a private scratch directory
(deleted at the end), seeded with the run's config and checkpoints on --resume, so the trainer
itself needs no rank checks. Evaluation runs on every rank over the whole split (identical
results; rank 0's are written).

Failures: the process group has a bounded timeout (NCS_DIST_TIMEOUT seconds, default 300); each
rank keeps a heartbeat in the rendezvous store and records its exception there when it fails.
A collective that fails raises DistributedError naming the rank(s) that stopped (their own
error when they recorded one, else a stale heartbeat), never a hang. Under torchrun, the agent
also stops the remaining workers when one exits and names the failed rank.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import threading
import time
from typing import Dict, List, Mapping, Optional, Sequence

import torch


class DistributedError(RuntimeError):
    """A distributed-run problem (bad world size, a rank that stopped, ranks that disagree)."""


HEARTBEAT_S = 1.0
STALE_S = float(os.environ.get("NCS_DIST_STALE", "5"))  # seconds without a heartbeat = stopped


def env_world_size() -> int:
    """WORLD_SIZE from the environment (torchrun sets it); 1 when absent."""
    v = os.environ.get("WORLD_SIZE")
    if v is None:
        return 1
    try:
        n = int(v)
    except ValueError:
        raise DistributedError(f"WORLD_SIZE: expected a positive integer, got {v!r}") from None
    if n < 1:
        raise DistributedError(f"WORLD_SIZE: expected a positive integer, got {v!r}")
    return n


class DataParallel:
    """One rank of a data-parallel run (see the module doc). Build it with init()."""

    def __init__(self, rank: int, world_size: int, local_rank: int, device: torch.device, backend: str,
                 store, timeout_s: float):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.device, self.backend, self.store, self.timeout_s = device, backend, store, timeout_s
        self._weights: Dict[str, torch.Tensor] = {}
        self._row_weight: Optional[torch.Tensor] = None
        self._stop = threading.Event()
        self._beat_thread = threading.Thread(target=self._beat, name="ncs-heartbeat", daemon=True)
        self._beat_thread.start()

    # ------------------------------------------------------------------ liveness
    def _beat(self) -> None:
        while not self._stop.is_set():
            try:
                self.store.set(f"hb/{self.rank}", repr(time.time()))
            except Exception:  # the store is gone (its host died): the collectives will say so
                return
            self._stop.wait(HEARTBEAT_S)

    def record_failure(self, exc: BaseException) -> None:
        """Tell the other ranks why this one stops (best effort)."""
        msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        try:
            self.store.set(f"failed/{self.rank}", msg[:300])
        except Exception:
            pass

    def _peer_report(self) -> str:
        """Which peers stopped: a recorded failure, or a heartbeat that does not move for
        STALE_S seconds (a bounded wait: a live rank beats every HEARTBEAT_S)."""
        def read(key):
            return self.store.get(key).decode() if self.store.check([key]) else None

        peers = [r for r in range(self.world_size) if r != self.rank]
        try:
            first = {r: read(f"hb/{r}") for r in peers}
            deadline = time.time() + STALE_S
            while True:
                failed = {r: read(f"failed/{r}") for r in peers}
                if any(failed.values()) or time.time() >= deadline:
                    break
                time.sleep(0.25)
            now = {r: read(f"hb/{r}") for r in peers}
        except Exception:
            return "the rendezvous store is unreachable (rank 0 or the torchrun agent stopped)"
        dead: List[str] = []
        for r in peers:
            if failed.get(r):
                dead.append(f"rank {r} failed ({failed[r]})")
            elif now[r] is None:
                dead.append(f"rank {r} never reported a heartbeat")
            elif now[r] == first[r] and time.time() >= deadline:
                dead.append(f"rank {r} stopped (no heartbeat for {time.time() - float(now[r]):.0f} s)")
        if dead:
            return "; ".join(dead)
        return f"no rank reported a failure; every rank is alive but one did not join within the " \
               f"{self.timeout_s:.0f} s timeout"

    def _collective(self, what: str, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except DistributedError:
            raise
        except RuntimeError as e:  # gloo/NCCL: connection closed, timeout, ...
            raise DistributedError(f"rank {self.rank}: {what} failed: {self._peer_report()} "
                                   f"[{str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__}]"
                                   ) from None

    # ------------------------------------------------------------------ batches and loss
    def shard(self, split, task: Optional[str], idx: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of the global batch `idx`; remembers the loss weights
        (local / global counts) that make the sum over ranks the global batch's loss."""
        n = int(idx.numel())
        parts = torch.tensor_split(idx, self.world_size)
        local = parts[self.rank]
        start = sum(int(p.numel()) for p in parts[:self.rank])
        nl = int(local.numel())
        self._row_weight = torch.tensor(nl / n if n else 0.0, dtype=torch.float32, device=self.device)
        self._weights = {}
        if nl == 0 and n > 0:
            # fewer rows than ranks (an epoch's last batch): this rank runs the batch's first row
            # with weight 0, so every rank runs the same graph (same parameters with gradients,
            # same collectives) and adds exactly zero; that row is in the batch anyway, so the
            # set of embedding rows updated is the one-process set
            if task is None:
                self._weights = {t: self._row_weight for t in split.spaces}
            return idx[:1]
        if task is None:
            for t, space in split.spaces.items():
                if space is None:
                    self._weights[t] = self._row_weight
                else:
                    s = space.index_select(0, idx)
                    glob = s.sum().to(torch.float32)
                    loc = s[start:start + nl].sum().to(torch.float32)
                    self._weights[t] = (loc / glob.clamp_min(1.0)).to(self.device)
        return local

    def scale_parts(self, kind: str, parts: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The rank's share of each task's L_k (the shares sum to the global batch's L_k): what
        loss.balance combines (uncertainty, PCGrad) under torchrun."""
        return {n: v * (self._row_weight if kind == "esmm" else self._weights[n]) for n, v in parts.items()}

    def mixed_loss(self, kind: str, parts: Mapping[str, torch.Tensor], tasks: Sequence[dict]) -> torch.Tensor:
        """The rank's share of Eq. 2 (or ESMM's loss) from its per-task losses L_k."""
        share = self.scale_parts(kind, parts)
        total = None
        for t in tasks:
            term = t["weight"] * share[t["name"]]
            total = term if total is None else total + term
        return total

    def task_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The rank's share of an Eq. 1 batch loss (a mean over its rows)."""
        return loss * self._row_weight

    # ------------------------------------------------------------------ gradients
    def _sum_dense(self, grads: Sequence[Optional[torch.Tensor]], like: Sequence[torch.Tensor]
                   ) -> List[Optional[torch.Tensor]]:
        """Sum dense gradients over the ranks: ONE flat buffer and all_reduce, plus a has-grad flag
        each (None, no gradient on any rank, stays None: it matters to Adam)."""
        flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, like)]
                         + [torch.tensor([float(g is not None) for g in grads], dtype=like[0].dtype,
                                         device=like[0].device)])
        self._collective("gradient all_reduce", torch.distributed.all_reduce, flat)
        flags = flat[-len(like):].tolist()
        out: List[Optional[torch.Tensor]] = []
        off = 0
        for p, f in zip(like, flags):
            out.append(flat[off:off + p.numel()].view_as(p) if f > 0 else None)
            off += p.numel()
        return out

    def reduce_gradients(self, model: torch.nn.Module, extra: Sequence[torch.Tensor] = ()) -> None:
        """Sum every parameter's gradient over the ranks (dense: one all_reduce; sparse: gather);
        `extra`: more dense parameters in the same all_reduce (uncertainty's log-variances)."""
        dense, sparse = [], []
        for p in list(model.parameters()) + list(extra):
            if not p.requires_grad:
                continue
            (sparse if p.grad is not None and p.grad.is_sparse else dense).append(p)
        # a parameter sparse on one rank is sparse on all (same module); dense ones may lack a grad
        if dense:
            for p, g in zip(dense, self._sum_dense([p.grad for p in dense], dense)):
                p.grad = g
        for p in sparse:
            p.grad = self._gather_sparse(p.grad)
        # optim.embedding_step fused: the tables' pooled gradients wait in their sinks
        for m in model.modules():
            sink = getattr(m, "fused_sink", None)
            if sink is not None:
                got = self.gather_pooled(sink.take(), m.bag.weight)
                if got is not None:
                    sink.add(*got)

    def reduce_task_gradients(self, grads: Sequence[Dict[int, object]], params: Sequence[torch.Tensor],
                              tables: Mapping[int, object]) -> List[Dict[int, object]]:
        """PCGrad on a mixed batch: each task's gradient ({index into params: dense, sparse or a
        fused table's (rows, pooled)}) summed over the ranks on its own, before the projection
        (dense: one all_reduce for every task; tables: all-gathers in rank order). A table no
        task-k gradient reaches is so on every rank (the same graph everywhere)."""
        rowwise = set(tables) | {i for g in grads for i, v in g.items() if not isinstance(v, tuple) and v.is_sparse}
        slots = [(k, i) for k in range(len(grads)) for i in range(len(params)) if i not in rowwise]
        out: List[Dict[int, object]] = [{} for _ in grads]
        if slots:
            got = self._sum_dense([grads[k].get(i) for k, i in slots], [params[i] for _, i in slots])
            for (k, i), g in zip(slots, got):
                if g is not None:
                    out[k][i] = g
        for k, g in enumerate(grads):
            for i in sorted(rowwise):
                if g.get(i) is not None:
                    out[k][i] = self.gather_pooled(g[i], params[i]) if i in tables else self._gather_sparse(g[i])
        return out

    def _gather_rows(self, parts: Sequence[Optional[torch.Tensor]], like: torch.Tensor) -> Optional[torch.Tensor]:
        """All-gather one tensor per rank (rows may differ in count, None = absent) -> the
        concatenation in rank order, None when every rank had None."""
        t = parts[0]
        n = torch.tensor([-1 if t is None else t.shape[0]], dtype=torch.int64, device=self.device)
        counts = [torch.zeros_like(n) for _ in range(self.world_size)]
        self._collective("all_gather", torch.distributed.all_gather, counts, n)
        c = [int(x.item()) for x in counts]
        if max(c) < 0:
            return None
        m = max(max(c), 0)
        pad = torch.zeros((m,) + tuple(like.shape[1:]), dtype=like.dtype, device=like.device)
        if t is not None:
            pad[:t.shape[0]] = t
        got = [torch.empty_like(pad) for _ in range(self.world_size)]
        self._collective("all_gather", torch.distributed.all_gather, got, pad)
        return torch.cat([g[:max(k, 0)] for g, k in zip(got, c)])

    def gather_pooled(self, got, weight: torch.Tensor):
        """A fused table's (rows, pooled gradient) of the global batch (None: none on any rank),
        in rank order = the one-process bag order, so the fused step sums each row exactly as one
        process does."""
        rows, grad = (None, None) if got is None else got
        L = torch.tensor([-1 if rows is None else rows.shape[1]], dtype=torch.int64, device=self.device)
        Ls = [torch.zeros_like(L) for _ in range(self.world_size)]
        self._collective("all_gather", torch.distributed.all_gather, Ls, L)
        width = max(int(x.item()) for x in Ls)
        if width < 0:
            return None
        rows = self._gather_rows([rows], torch.zeros((0, width), dtype=torch.int64, device=weight.device))
        grad = self._gather_rows([grad], torch.zeros((0, weight.shape[1]), dtype=weight.dtype, device=weight.device))
        return rows, grad

    def _gather_sparse(self, g: torch.Tensor) -> torch.Tensor:
        """Every rank's coalesced sparse row gradient, concatenated in rank order (SparseAdam sums the duplicates)."""
        g = g.coalesce()
        idx = self._gather_rows([g.indices()[0].unsqueeze(1)], torch.zeros((0, 1), dtype=torch.int64, device=g.device))
        val = self._gather_rows([g.values()], g.values()[:0])
        return torch.sparse_coo_tensor(idx.t(), val, g.shape, check_invariants=False)

    # ------------------------------------------------------------------ small collectives
    def sum(self, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        self._collective("all_reduce", torch.distributed.all_reduce, t)
        return t

    def gather_digest(self, digest: str) -> List[str]:
        """Every rank's hex digest (sha256), rank order."""
        b = torch.tensor(list(bytes.fromhex(digest)), dtype=torch.uint8, device=self.device)
        out = [torch.empty_like(b) for _ in range(self.world_size)]
        self._collective("digest all_gather", torch.distributed.all_gather, out, b)
        return [bytes(t.cpu().tolist()).hex() for t in out]

    def barrier(self) -> None:
        self._collective("barrier", torch.distributed.barrier)

    def check_same(self, what: str, digest: str) -> List[str]:
        """All-gather a digest; DistributedError naming the ranks that differ from rank 0."""
        got = self.gather_digest(digest)
        bad = [r for r, d in enumerate(got) if d != got[0]]
        if bad:
            raise DistributedError(f"{what} differ across ranks: ranks {bad} differ from rank 0 "
                                   f"({', '.join(d[:12] for d in got)})")
        return got

    def close(self) -> None:
        self._stop.set()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, names sorted: bit-identity."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().contiguous().cpu()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def masks_digest(masks: Mapping[str, Mapping[str, torch.Tensor]]) -> str:
    return tensors_digest({f"{layer}/{task}": m for layer, per in masks.items() for task, m in per.items()})


def init(device_name: str = "auto") -> Optional[DataParallel]:
    """The DataParallel of this process from torchrun's environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT); None for a one-process run (WORLD_SIZE unset or 1).

    device_name: the config's device. cuda (or auto with CUDA): NCCL, cuda:LOCAL_RANK; cpu: gloo.
    Every rank must resolve the same device type (checked: a mix is an error)."""
    world = env_world_size()
    if world == 1:
        return None
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise DistributedError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: launch with "
                               f"torchrun --nproc_per_node {world} -m ncs train ...")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise DistributedError(f"rank {rank}: device 'cuda' requested but CUDA is not available on this rank")
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(f"rank {rank}: LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} "
                                   f"CUDA devices; use --nproc_per_node <= the GPU count")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    timeout_s = float(os.environ.get("NCS_DIST_TIMEOUT", "300"))
    timeout = datetime.timedelta(seconds=timeout_s)
    # under torchrun the agent hosts the store at MASTER_PORT; launched by hand, rank 0 hosts it
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    try:
        base = torch.distributed.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                                          is_master=(rank == 0 and not agent), timeout=timeout,
                                          wait_for_workers=False)
    except Exception as e:
        raise DistributedError(f"rank {rank}: cannot reach the rendezvous store at {os.environ['MASTER_ADDR']}:"
                               f"{os.environ['MASTER_PORT']}: {e}") from None
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = torch.distributed.PrefixStore(f"ncs/{restart}/", base)
    torch.distributed.init_process_group(backend, store=torch.distributed.PrefixStore("pg/", store),
                                         rank=rank, world_size=world, timeout=timeout)
    dp = DataParallel(rank, world, local_rank, device, backend, store, timeout_s)
    # every rank on the same kind of device
    kinds = dp.gather_digest(hashlib.sha256(device.type.encode()).hexdigest())
    if len(set(kinds)) > 1:
        dp.close()
        raise DistributedError(f"ranks resolved different device types (some cuda, some cpu); "
                               f"set device explicitly so that every rank uses the same")
    return dp


def check_batch(world_size: int, batch_size: int, what: str = "train.batch_size") -> None:
    if batch_size % world_size:
        raise DistributedError(f"{what}: {batch_size} is not divisible by the world size {world_size}; "
                               f"the global batch is split evenly across ranks (choose a multiple of {world_size})")
