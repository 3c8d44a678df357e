"""The stages of Algorithm 1 and the baselines' training, each resumable at epoch/round granularity.

ModelTrainer owns one model (kind single | layer | connection), its two optimizers and its
checkpoint file <ckpt_dir>/<kind>.safetensors, rewritten after every epoch and every round.

connection (Algorithm 1):
  warmup  mixed batches, Eq. 2 loss, task=None (every weight), stages.warmup.epochs epochs; then
          `init` = every parameter AND both optimizers' state is kept (in memory and in
          <kind>_init.safetensors): the bit-exact rewind target.
  masks   per task, rounds k = 0..n. Round k: rewind to init (weights + optimizer state), set
          the task's mask to M_k (M_0 = all ones), train epochs_per_round epochs on the task's
          space only (Eq. 1, strict masked optimizer), evaluate on validation under M_k (AUC for
          bce/focal tasks, MSE for mse tasks), then (k < n) prune q of M_k's survivors by |w|
          of the weights just trained: M_{k+1}. So "the round's mask" is the one it was trained
          and evaluated under: row k of the rounds table has density(M_k) and metric(M_k); the
          final density r is reached by M_n, which round n trains and evaluates (n+1 training
          runs in all). The kept mask is chosen by pruning.select_round (default: best
          validation metric among rounds 1..n).
  joint   rewind to init, every task's mask set to its selected one; alternating
          task-homogeneous batches (ctr batch, cvr batch from the clicked rows, ...), each
          forward under its task's mask, each update by MaskedAdam in optim.mode (strict: only the
          task's weights and moments move; leaky: plain Adam, the authors' code), loss
          omega_k * L_k; joint.epochs epochs, optional early stopping on validation (the best
          epoch's weights are kept). Mask generation always steps strictly, whatever optim.mode.
single / layer: mixed batches, Eq. 2, baseline_epochs(cfg) epochs (default warmup + joint, the
  passes the connection model's final weights have seen), same early stopping rule.
"""
from __future__ import annotations

import copy
import math
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

import ncs_kernels as nk

from ..config import baseline_epochs, main_metric, prune_fraction
from ..losses import mixed_loss, task_loss
from ..metrics import task_metrics
from ..models import MultiTaskModel, build_model
from . import batches as B
from .guards import NonFiniteGuard
from .checkpoint import (flatten_optimizer, has_checkpoint, load_latest, load_tensors, rng_state, save_tensors,
                         set_rng_state, unflatten_optimizer)
from .protocol import (Balancer, PerTaskModel, cycled_alternating_batches, diagnostic_rows, grad_diagnostics,
                       subset_split)
from .pruning import mask_density, prune_round, select_round


class StopTraining(Exception):
    """Raised by the on_checkpoint hook to end a run early (tests simulate a kill with it)."""


class Optimizers:
    """MaskedAdam over the dense parameters (MLP weights under the task's masks, biases and heads)
    and SparseAdam over the embedding tables (only the rows of the batch do work).

    optim.moments per_task: the masked weights keep one Adam state per task (nk.MaskedAdam
    moments="per_task"); step() passes the batch's task, so mask generation and joint steps use
    the task's own moments, while mixed batches (task None: warmup, the baselines) use the shared
    ones. The per-task state is not in the warmup snapshot, so every rewind starts it afresh."""

    def __init__(self, model: MultiTaskModel, cfg: dict, backend: str = "auto"):
        o = cfg["optim"]
        betas = tuple(o["betas"])
        # optim.moments per_task: per-task Adam moments for the masked weights, indexed by task
        # name (steps with task None, i.e. mixed batches, use the shared moments)
        self.dense = nk.MaskedAdam(model.dense_parameters(), lr=o["lr"], betas=betas, eps=o["eps"],
                                   weight_decay=o["weight_decay"], mode=o["mode"], backend=backend,
                                   moments=o.get("moments", "shared"), tasks=[t["name"] for t in cfg["tasks"]])
        if o.get("embedding_step", "sparse_adam") == "fused":
            from ncs_kernels.embedding_adam import attach_fused_step
            self.sparse = attach_fused_step(model, lr=o["embedding_lr"] or o["lr"], betas=betas, eps=o["eps"])
        else:
            self.sparse = torch.optim.SparseAdam(model.embedding_parameters(), lr=o["embedding_lr"] or o["lr"],
                                                 betas=betas, eps=o["eps"])

    def zero_grad(self) -> None:
        self.dense.zero_grad(set_to_none=True)
        self.sparse.zero_grad(set_to_none=True)

    def step(self, masks: Dict[torch.Tensor, torch.Tensor], task: Optional[str] = None) -> None:
        """One update: `task` is the batch's task (None: a mixed batch), `masks` its masks."""
        self.dense.set_masks(masks, task=task)
        self.dense.step()
        self.sparse.step()

    def flatten(self) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
        t1, d1 = flatten_optimizer("dense", self.dense.state_dict())
        t2, d2 = flatten_optimizer("sparse", self.sparse.state_dict())
        return {**t1, **t2}, {"dense": d1, "sparse": d2}

    def load(self, tensors: Dict[str, torch.Tensor], doc: Dict[str, Any]) -> None:
        # unflatten clones every tensor: the optimizers must never alias a stored snapshot
        self.dense.load_state_dict(unflatten_optimizer("dense", tensors, doc["dense"]))
        self.sparse.load_state_dict(unflatten_optimizer("sparse", tensors, doc["sparse"]))


def derived_seed(seed: int, tag: str) -> int:
    return B.epoch_seed(seed, tag, 0)


class ModelTrainer:
    def __init__(self, kind: str, cfg: dict, fields, train: B.SplitTensors, valid: B.SplitTensors,
                 device: torch.device, ckpt_dir: str, progress: bool = False,
                 on_checkpoint: Optional[Callable[[str], None]] = None, log: Optional[Callable[[str], None]] = None):
        self.kind = kind
        self.cfg = cfg
        self.tasks: List[dict] = cfg["tasks"]
        self.task_cfg = {t["name"]: t for t in self.tasks}
        self.names = [t["name"] for t in self.tasks]
        self.train, self.valid = train, valid
        self.device = device
        self.ckpt_dir = ckpt_dir
        self.progress = progress
        self.on_checkpoint = on_checkpoint
        self.log = log or (lambda msg: None)
        self.seed = int(cfg["seed"])
        self.gamma = cfg["loss"]["focal_gamma"]
        self.alpha = cfg["loss"]["focal_alpha"]
        # model init is a function of (seed, kind) alone
        torch.manual_seed(derived_seed(self.seed, f"init/{kind}"))
        self.model = build_model(kind, fields, self.names, cfg["model"], backend=cfg["backend"]).to(device)
        self.opt = Optimizers(self.model, cfg, backend=cfg["backend"])
        self.layers = nk.masked_modules(self.model) if kind == "connection" else {}
        self.in_features = {n: m.in_features for n, m in self.layers.items()}
        self.balancer = Balancer(cfg, device)
        self.served: Optional[torch.nn.Module] = None   # per-task selection's predictor, once done
        self.freeze_embeddings = False                   # stages.joint.embeddings: freeze, in joint
        self._epoch_split: Optional[B.SplitTensors] = None  # a stage's data subset (data_fraction)
        self.mask_hist: Dict[str, List[Dict[str, torch.Tensor]]] = {}
        self.init: Optional[Tuple[Dict[str, torch.Tensor], Dict[str, Any]]] = None
        self.dist = None  # ncs.distributed.DataParallel of a torchrun run (set by the runner)
        self.pos: Dict[str, Any] = {
            "stage": "warmup" if kind == "connection" else "baseline",
            "epoch": 0, "task_index": 0, "round": 0, "step": 0,
            "rounds": {}, "selected": {}, "curves": [], "early": None, "seconds": {},
        }

    # ------------------------------------------------------------------ checkpoints
    @property
    def ckpt_path(self) -> str:
        return os.path.join(self.ckpt_dir, f"{self.kind}.safetensors")

    @property
    def init_path(self) -> str:
        return os.path.join(self.ckpt_dir, f"{self.kind}_init.safetensors")

    @property
    def best_path(self) -> str:
        return os.path.join(self.ckpt_dir, f"{self.kind}_best.safetensors")

    def _model_tensors(self) -> Dict[str, torch.Tensor]:
        return {f"model/{k}": v for k, v in self.model.state_dict().items()}

    def checkpoint(self) -> None:
        tensors = self._model_tensors()
        ot, od = self.opt.flatten()
        tensors.update(ot)
        bt, bd = self.balancer.state_tensors()
        tensors.update(bt)
        for task, hist in self.mask_hist.items():
            for k, masks in enumerate(hist):
                for layer, packed in masks.items():
                    tensors[f"maskhist/{task}/{k}/{layer}"] = packed
        save_tensors(self.ckpt_path, tensors, {"kind": self.kind, "pos": self.pos, "optim": od, "rng": rng_state(),
                                               "balance": bd}, keep_previous=True)
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.kind)

    def restore(self) -> bool:
        """Load the last checkpoint if there is one; True if loaded."""
        if not has_checkpoint(self.ckpt_path):
            return False
        # loaded on the CPU: load_state_dict copies weights to the model's device, and the torch
        # optimizers move their state to each parameter's device themselves, except MaskedAdam's
        # "step" counters, which stay on the CPU as in a fresh run (no device sync per step)
        tensors, doc = load_latest(self.ckpt_path, log=self.log)  # damaged: the previous one
        if doc.get("kind") != self.kind:
            raise RuntimeError(f"{self.ckpt_path}: checkpoint of model {doc.get('kind')!r}, expected {self.kind!r}")
        self.model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")})
        self.opt.load(tensors, doc["optim"])
        self.balancer.load(tensors, doc.get("balance"), self.device)
        self.pos = doc["pos"]
        hist: Dict[str, Dict[int, Dict[str, torch.Tensor]]] = {}
        for key, v in tensors.items():
            if key.startswith("maskhist/"):
                _, task, k, layer = key.split("/", 3)
                hist.setdefault(task, {}).setdefault(int(k), {})[layer] = v.to(self.device)
        self.mask_hist = {t: [h[k] for k in sorted(h)] for t, h in hist.items()}
        set_rng_state(doc["rng"])
        if os.path.isfile(self.init_path):
            self.init = load_tensors(self.init_path)
        return True

    def save_init(self) -> None:
        """Snapshot every parameter and both optimizers' state: the rewind target."""
        tensors = {f"model/{k}": v.detach().clone() for k, v in self.model.named_parameters()}
        ot, od = self.opt.flatten()
        tensors.update({k: v.clone() for k, v in ot.items()})
        doc = {"optim": od}
        save_tensors(self.init_path, tensors, doc)
        self.init = (tensors, {"format": "ncs-checkpoint", "version": 1, **doc})

    @torch.no_grad()
    def rewind(self) -> None:
        """Weights and optimizer state back to init, bit for bit; masks are left as they are.
        stages.rewind = mlp: only the dense parameters (MLP, heads) and their optimizer; the
        embeddings and their SparseAdam state go on from where they are."""
        if self.init is None:
            raise RuntimeError("rewind: no init snapshot (warmup has not finished)")
        tensors, doc = self.init
        if self.cfg["stages"]["rewind"] == "mlp":
            emb = {id(p) for p in self.model.embedding_parameters()}
            for name, p in self.model.named_parameters():
                if id(p) not in emb:
                    p.copy_(tensors[f"model/{name}"])
            from .checkpoint import unflatten_optimizer
            self.opt.dense.load_state_dict(unflatten_optimizer("dense", tensors, doc["optim"]["dense"]))
            return
        for name, p in self.model.named_parameters():
            p.copy_(tensors[f"model/{name}"])
        self.opt.load(tensors, doc["optim"])

    # ------------------------------------------------------------------ primitives
    def _task_masks(self, task: str) -> Dict[torch.Tensor, torch.Tensor]:
        """{weight: packed mask buffer} for the optimizer; cached, because set_mask and
        load_state_dict write into the same buffers, so the mapping never goes stale."""
        cache = self.__dict__.setdefault("_mask_cache", {})
        if task not in cache:
            cache[task] = nk.model_task_masks(self.model, task)
        return cache[task]

    def train_epoch(self, batches: Sequence[Tuple[Optional[str], torch.Tensor]], weighted: bool, desc: str) -> float:
        """One pass over `batches`: (None, rows) = mixed batch, Eq. 2; (task, rows) = a batch of
        the task's space, Eq. 1 (times omega_k when weighted). Returns the mean batch loss."""
        model = self.model
        model.train()
        log_every = self.cfg["train"]["log_every"]
        # mid-epoch position (train.checkpoint_every): resume at the exact batch of the epoch
        every = self.cfg["train"].get("checkpoint_every")
        start = int(self.pos.get("batch", 0))
        n_all = len(batches)
        batches = B.from_batch(batches, start)
        total = torch.full((), float(self.pos.get("batch_loss", 0.0)), dtype=torch.float32, device=self.device)
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=len(batches), desc=desc, leave=False, dynamic_ncols=True)
        guard = NonFiniteGuard(self, desc)  # train.on_nonfinite (guards.py)
        dist = self.dist  # a torchrun run: this rank's slice of each global batch (ncs.distributed)
        split = self._epoch_split if self._epoch_split is not None else self.train
        bal = self.balancer
        params = None
        if bal.pcgrad and weighted:
            params = [p for p in model.parameters() if p.requires_grad]
        for i, (task, idx) in enumerate(batches):
            if dist is not None:
                idx = dist.shard(split, task, idx)
            ids, tg, sp = split.batch(idx)
            self.opt.zero_grad()
            bal.zero_grad()
            if task is None:
                # loss: Eq. 2 (ESMM: its loss) with the fixed weights (the logged number, whatever
                # loss.balance); parts: each task's L_k, which loss.balance combines
                loss, parts = mixed_loss(self.kind, model(ids), tg, sp, self.tasks, self.gamma, self.alpha)
                if dist is not None:  # (the runner allows only loss.balance fixed under torchrun)
                    loss = dist.mixed_loss(self.kind, parts, self.tasks)
                masks: Dict[torch.Tensor, torch.Tensor] = {}
                if params is not None:
                    bal.pcgrad_mixed_backward(parts, params)
                else:
                    (loss if bal.method == "fixed" else bal.combine(parts)).backward()
            else:
                t = self.task_cfg[task]
                lk = task_loss(t["loss"], model(ids, task), tg[task], None, self.gamma, self.alpha)
                loss = lk * t["weight"] if weighted else lk
                if dist is not None:
                    loss = dist.task_loss(loss)
                masks = self._task_masks(task)
                (bal.term(task, lk) if weighted and bal.method == "uncertainty" else loss).backward()
                if params is not None:
                    bal.pcgrad_task_step(task, params)
            if dist is not None:
                dist.reduce_gradients(model)
            if self.freeze_embeddings:
                for p in model.embedding_parameters():
                    p.grad = None
            if guard.ok(i, loss):
                self.opt.step(masks, task)
                if weighted:
                    bal.step()
                total += loss.detach()
            self.pos["step"] += 1
            if every and (start + i + 1) % every == 0 and start + i + 1 < n_all:
                guard.finish()  # never checkpoint past a non-finite step
                self.pos.update(batch=start + i + 1, batch_loss=float(total.item()))
                self.checkpoint()
            if bar is not None:
                # the only host syncs of the loop: one every log_every steps, for the bar
                if (i + 1) % log_every == 0:
                    bar.set_postfix(loss=f"{(total / (i + 1)).item():.4f}")
                bar.update()
        if bar is not None:
            bar.close()
        guard.finish()
        if dist is not None:  # the global batches' losses
            total = dist.sum(total)
        self.pos.update(batch=0, batch_loss=0.0)
        return float((total / max(1, n_all - guard.skipped)).item())

    @torch.no_grad()
    def evaluate(self, split: B.SplitTensors, task: Optional[str] = None) -> Dict[str, float]:
        """task=None: every task as served (connection: each under its own mask), over each task's
        space. task given: that task only, under its current mask, over its space."""
        model = self.model if (task is not None or self.served is None) else self.served
        model.eval()
        eb = self.cfg["train"]["eval_batch_size"]
        if task is None:
            outs: Dict[str, List[torch.Tensor]] = {t: [] for t in self.names}
            for sl in B.eval_slices(len(split), eb):
                pred = model.predict(split.ids[sl].to(self.device, non_blocking=True))
                for t in self.names:
                    outs[t].append(pred[t].float())
            metrics: Dict[str, float] = {}
            for t in self.names:
                logits = torch.cat(outs[t]) if outs[t] else torch.zeros(0)
                space = split.spaces[t]
                metrics.update(task_metrics(self.task_cfg[t], logits.cpu(), split.targets[t].cpu(),
                                            None if space is None else space.cpu()))
            return metrics
        rows = split.space_index[task]
        parts = []
        for sl in B.eval_slices(int(rows.numel()), eb):
            ids = split.ids.index_select(0, rows[sl]).to(self.device, non_blocking=True)
            parts.append(model(ids, task).float())
        logits = torch.cat(parts) if parts else torch.zeros(0)
        return task_metrics(self.task_cfg[task], logits.cpu(), split.targets[task].index_select(0, rows).cpu())

    def _curve(self, **rec) -> None:
        self.pos["curves"].append(rec)

    def _timed(self, stage: str, t0: float) -> None:
        self.pos["seconds"][stage] = self.pos["seconds"].get(stage, 0.0) + (time.perf_counter() - t0)

    # ------------------------------------------------------------------ model selection
    def _trackers(self) -> List[Tuple[str, str, bool, List[str]]]:
        """(tracker id, validation metric, higher is better, tasks it selects for)."""
        sel = self.cfg["stages"]["joint"]["select"]
        if sel == "per_task":
            out = []
            for t in self.tasks:
                m, hib = main_metric(t)
                out.append((t["name"], f"{t['name']}_{m}", hib, [t["name"]]))
            return out
        name = self.cfg["stages"]["joint"]["metric"]
        if name is None:
            t = self.tasks[-1]
            m, hib = main_metric(t)
            name, hib = f"{t['name']}_{m}", hib
        else:
            hib = name.endswith("_auc")
        return [("all", name, hib, list(self.names))]

    def _snapshot_path(self, epoch: int) -> str:
        return os.path.join(self.ckpt_dir, f"{self.kind}_best_e{epoch}.safetensors")

    def _early_update(self, metrics: Dict[str, float], epoch: int) -> bool:
        """Per tracker (one per task with select: per_task; one for all with select: metric),
        track the best validation epoch; an epoch that is some tracker's new best saves its
        weights (<kind>_best_e<epoch>.safetensors). True when early stopping should end the
        stage: no tracker improved for `patience` epochs."""
        js = self.cfg["stages"]["joint"]
        if js["select"] == "last":
            return False
        es = self.pos["early"]
        if not es or "trackers" not in es:
            es = {"select": js["select"], "stopped": False,
                  "trackers": {tid: {"metric": name, "tasks": tasks, "best": None, "best_epoch": None, "bad": 0}
                               for tid, name, _, tasks in self._trackers()}}
        improved = False
        for tid, name, hib, _ in self._trackers():
            tr = es["trackers"][tid]
            v = metrics.get(name, float("nan"))
            better = v is not None and not math.isnan(v) and (
                tr["best"] is None or (v > tr["best"] if hib else v < tr["best"]))
            if better:
                tr.update(best=v, best_epoch=epoch, bad=0)
                improved = True
            else:
                tr["bad"] += 1
        if improved:
            save_tensors(self._snapshot_path(epoch), self._model_tensors(), {"kind": self.kind, "epoch": epoch},
                         sidecar=False)
        es["stopped"] = bool(js["early_stopping"]) and all(tr["bad"] >= js["patience"]
                                                            for tr in es["trackers"].values())
        es["best_epoch"] = {t: tr["best_epoch"] for tr in es["trackers"].values() for t in tr["tasks"]}
        self.pos["early"] = es
        return es["stopped"]

    def _gc_snapshots(self) -> None:
        """Delete snapshot files no task refers to any more (after the checkpoint that forgot them)."""
        es = self.pos["early"]
        keep = set()
        if es and "trackers" in es:
            keep = {self._snapshot_path(tr["best_epoch"]) for tr in es["trackers"].values()
                    if tr["best_epoch"] is not None}
        prefix = f"{self.kind}_best_e"
        if not os.path.isdir(self.ckpt_dir):
            return
        for f in os.listdir(self.ckpt_dir):
            path = os.path.join(self.ckpt_dir, f)
            if f.startswith(prefix) and f.endswith(".safetensors") and path not in keep:
                os.remove(path)

    def _early_finish(self) -> None:
        """Build the served predictor: each task's best-epoch snapshot (select: last, or no
        best yet: the current weights). self.model gets the snapshot of the last task (the
        one the old single-metric rule picked for), so its masks and weights stay a valid model."""
        es = self.pos["early"]
        if not es or "trackers" not in es:
            self.served = None
            return
        best = {t: tr["best_epoch"] for tr in es["trackers"].values() for t in tr["tasks"]}
        loaded: Dict[int, Dict[str, torch.Tensor]] = {}
        for e in sorted({e for e in best.values() if e is not None}):
            tensors, _ = load_tensors(self._snapshot_path(e), self.device)
            loaded[e] = {k[len("model/"):]: v for k, v in tensors.items()}
        current = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        modules: Dict[Any, torch.nn.Module] = {}
        per_task: Dict[str, torch.nn.Module] = {}
        for t in self.names:
            e = best[t]
            if e not in modules:
                m = copy.deepcopy(self.model)
                m.load_state_dict(loaded[e] if e is not None else current)
                m.eval()
                modules[e] = m
            per_task[t] = modules[e]
        primary = best[self.names[-1]]
        if primary is not None:
            self.model.load_state_dict(loaded[primary])
        self.served = PerTaskModel(per_task, self.names)
        self.served_epochs = best

    def served_tensors(self) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
        """What models/<kind>.safetensors holds: "model/..." = self.model (the last task's
        snapshot), and with per-task selection "task/<t>/model/..." for each other distinct
        snapshot (t: the first task served by it); meta["per_task_epochs"] = {task: epoch or
        None}, meta["per_task_weights"] = {task: the key prefix of its weights}."""
        tensors = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        meta: Dict[str, Any] = {}
        if self.served is not None:
            best = self.served_epochs
            primary = best[self.names[-1]]
            meta["per_task_epochs"] = best
            src: Dict[str, str] = {}
            first: Dict[Any, str] = {}
            for t in self.names:
                if best[t] == primary:
                    src[t] = "model"
                    continue
                if best[t] not in first:   # one copy per distinct snapshot
                    first[best[t]] = t
                    tensors.update({f"task/{t}/model/{k}": v for k, v in self.served.models[t].state_dict().items()})
                src[t] = f"task/{first[best[t]]}/model"
            meta["per_task_weights"] = src
        return tensors, meta

    def predictor(self) -> torch.nn.Module:
        """The model as served: per-task selection's predictor once training is done."""
        return self.served if self.served is not None else self.model

    # ------------------------------------------------------------------ flows
    def run(self) -> None:
        if self.kind == "connection":
            self._run_connection()
        else:
            self._run_baseline()

    def diagnostics(self, stage: str) -> Optional[Dict[str, Any]]:
        """Gradient diagnostics (protocol.grad_diagnostics) on train.diagnostics_batches fixed
        training batches: the joint stage under each task's mask, the other stages through the
        mixed network. None when off or when the model shares nothing."""
        nb = self.cfg["train"]["diagnostics_batches"]
        if nb == 0 or self.kind == "single":
            return None
        bs = self.cfg["train"]["batch_size"]
        rows = diagnostic_rows(len(self.train), nb, bs, self.seed)
        d = grad_diagnostics(self.model, self.train, self.tasks, rows, bs, self.balancer.effective_weights(),
                             task_forward=(stage == "joint"), gamma=self.gamma, alpha=self.alpha, kind=self.kind)
        return d if d["groups"] else None

    def _epochs(self, stage: str, epochs: int, desc: str, early: bool,
                batches_for: Callable[[int], Sequence]) -> bool:
        """Train epochs pos["epoch"] .. epochs-1 of `stage` (batches_for(e) gives epoch e's
        batches, Eq. 2 weighted), evaluating on validation, recording the gradient diagnostics
        and checkpointing after each. With `early`, model selection tracks the epochs and early
        stopping may end the stage: then pos["stage"] is "done" and True returns."""
        pos = self.pos
        for e in range(pos["epoch"], epochs):
            t0 = time.perf_counter()
            loss = self.train_epoch(batches_for(e), True, f"{self.kind} {desc} {e + 1}/{epochs}")
            val = self.evaluate(self.valid)
            rec = dict(stage=stage, epoch=e, train_loss=loss, **val)
            if self.balancer.method == "uncertainty":
                rec["loss_weights"] = self.balancer.effective_weights()
            diag = self.diagnostics(stage)
            if diag is not None:
                rec["grad"] = diag
            self._curve(**rec)
            self.log(f"{self.kind}: {desc} {e + 1}/{epochs} loss {loss:.4f} valid {_fmt(val)}")
            pos["epoch"] = e + 1
            stop = early and self._early_update(val, e)
            self._timed(stage, t0)
            if stop:
                pos["stage"] = "done"
            self.checkpoint()
            if early:
                self._gc_snapshots()
            if stop:
                return True
        return False

    def _run_baseline(self) -> None:
        pos = self.pos
        bs = self.cfg["train"]["batch_size"]
        if pos["stage"] == "baseline":
            self._epochs("train", baseline_epochs(self.cfg), "epoch", early=True,
                         batches_for=lambda e: B.mixed_batches(self.train, bs, self.seed, "mixed", e))
            self._early_finish()
            pos["stage"] = "done"
            self.checkpoint()
        elif pos["stage"] == "done":
            self._early_finish()

    def _run_connection(self) -> None:
        pos = self.pos
        cfg = self.cfg
        bs = cfg["train"]["batch_size"]
        st = cfg["stages"]
        if pos["stage"] == "warmup":
            sub = subset_split(self.train, st["warmup"]["data_fraction"], st["subset"], self.seed)
            self._epoch_split = sub
            try:
                self._epochs("warmup", st["warmup"]["epochs"], "warmup epoch", early=False,
                             batches_for=lambda e: B.mixed_batches(sub, bs, self.seed, "mixed", e))
            finally:
                self._epoch_split = None
            self.save_init()
            pos.update(stage="masks", epoch=0, task_index=0, round=0)
            self.checkpoint()
        if pos["stage"] == "masks":
            # Mask generation always takes strict steps (the task trains its sub-network alone);
            # optim.mode applies to the joint stage, where tasks share weights.
            mode = self.opt.dense.mode
            self.opt.dense.mode = "strict"
            self._epoch_split = subset_split(self.train, st["masks"]["data_fraction"], st["subset"], self.seed)
            try:
                self._masks_stage()
            finally:
                self.opt.dense.mode = mode
                self._epoch_split = None
            self.rewind()
            for t in self.names:
                self.model.set_task_masks(t, self.mask_hist[t][pos["selected"][t]])
            pos.update(stage="joint", epoch=0)
            self.checkpoint()
        if pos["stage"] == "joint":
            self.freeze_embeddings = st["joint"]["embeddings"] == "freeze"
            alternate = cycled_alternating_batches if st["joint"]["alternate"] == "cycle" else B.alternating_batches
            try:
                self._epochs("joint", st["joint"]["epochs"], "joint epoch", early=True,
                             batches_for=lambda e: alternate(self.train, self.names, bs, self.seed, "joint", e))
            finally:
                self.freeze_embeddings = False
            self._early_finish()
            pos["stage"] = "done"
            self.checkpoint()
        elif pos["stage"] == "done":
            self._early_finish()

    def _masks_stage(self) -> None:
        pos = self.pos
        mc = self.cfg["stages"]["masks"]
        n = mc["rounds"]
        q = prune_fraction(self.cfg)
        bs = self.cfg["train"]["batch_size"]
        for ti in range(pos["task_index"], len(self.names)):
            task = self.names[ti]
            tcfg = self.task_cfg[task]
            metric, hib = main_metric(tcfg)
            hist = self.mask_hist.setdefault(task, [])
            if not hist:
                hist.append({name: nk.ones_mask(m.out_features, m.in_features, device=self.device)
                             for name, m in self.layers.items()})
            table = pos["rounds"].setdefault(task, [])
            for k in range(pos["round"], n + 1):
                t0 = time.perf_counter()
                mask_k = hist[k]
                if pos["epoch"] == 0 and not pos.get("batch", 0):  # not when resuming mid-epoch
                    self.rewind()
                self.model.set_task_masks(task, mask_k)
                R = mc["epochs_per_round"]
                losses = pos.setdefault("round_losses", [])
                for e in range(pos["epoch"], R):
                    bt = B.task_batches(self._epoch_split if self._epoch_split is not None else self.train, task, bs, self.seed, f"masks/{k}", e)
                    losses.append(self.train_epoch(bt, False, f"masks {task} round {k}/{n} epoch {e + 1}/{R}"))
                    pos["epoch"] = e + 1
                    if e + 1 < R:  # mid-round checkpoint; the round's end writes the next one
                        self._timed("masks", t0)
                        self.checkpoint()
                        t0 = time.perf_counter()
                val = self.evaluate(self.valid, task)
                dens = mask_density(mask_k, self.in_features)
                row = {"task": task, "round": k, "density": dens, "metric_name": f"{task}_{metric}",
                       "metric": val[f"{task}_{metric}"], "train_loss": losses[-1] if losses else None}
                if k < n:
                    weights = {name: m.weight for name, m in self.layers.items()}
                    new, removed = prune_round(weights, mask_k, q, mc["scope"], mc["count_rounding"])
                    hist.append(new)
                    row["pruned"] = sum(removed.values())
                table.append(row)
                self._curve(stage="masks", task=task, round=k, density=dens, train_loss=row["train_loss"], **val)
                self.log(f"connection: masks {task} round {k}/{n} density {dens:.3f} "
                         f"valid {row['metric_name']} {_num(row['metric'])}")
                pos.update(round=k + 1, epoch=0, round_losses=[])
                self._timed("masks", t0)
                self.checkpoint()
            best = select_round(table, hib, mc["select"])
            pos["selected"][task] = best
            self.model.set_task_masks(task, hist[best])
            self.log(f"connection: {task} keeps round {best} (density {table[best]['density']:.3f})")
            pos.update(task_index=ti + 1, round=0, epoch=0)
            self.checkpoint()

    # ------------------------------------------------------------------ results
    def selected_masks(self) -> Dict[str, Dict[str, torch.Tensor]]:
        """{layer: {task: packed}} of the connection model's kept masks."""
        return {name: {t: m.get_mask(t).clone() for t in self.names} for name, m in self.layers.items()}

    def stage_summary(self) -> Dict[str, Any]:
        pos = self.pos
        out: Dict[str, Any] = {"steps": pos["step"], "seconds": pos["seconds"]}
        if self.kind == "connection":
            out["warmup"] = {"epochs": self.cfg["stages"]["warmup"]["epochs"]}
            out["masks"] = {
                t: {"rounds": pos["rounds"].get(t, []), "selected_round": pos["selected"].get(t),
                    "density": (pos["rounds"][t][pos["selected"][t]]["density"]
                                if t in pos["selected"] else None)}
                for t in self.names
            }
            out["masks_q"] = prune_fraction(self.cfg)
            out["joint"] = {"epochs_run": sum(1 for c in pos["curves"] if c.get("stage") == "joint"),
                            "early_stopping": pos["early"]}
        else:
            out["train"] = {"epochs_run": sum(1 for c in pos["curves"] if c.get("stage") == "train"),
                            "early_stopping": pos["early"]}
        return out


def _num(v) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.5f}"


def _fmt(metrics: Dict[str, float]) -> str:
    return " ".join(f"{k} {_num(v)}" for k, v in metrics.items() if not k.endswith("_rows"))
