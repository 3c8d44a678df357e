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

import math
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

import ncs_kernels as nk

from ..config import baseline_epochs, main_metric, prune_fraction
from ..losses import multitask_loss, task_loss
from ..metrics import task_metrics
from ..models import MultiTaskModel, build_model
from . import batches as B
from .checkpoint import (flatten_optimizer, load_tensors, rng_state, save_tensors, set_rng_state,
                         unflatten_optimizer)
from .pruning import mask_density, prune_round, select_round


class StopTraining(Exception):
    """Raised by the on_checkpoint hook to end a run early (tests simulate a kill with it)."""


class Optimizers:
    """MaskedAdam over the dense parameters (MLP weights under the task's masks, biases and heads)
    and SparseAdam over the embedding tables (only the rows of the batch do work)."""

    def __init__(self, model: MultiTaskModel, cfg: dict, backend: str = "auto"):
        o = cfg["optim"]
        betas = tuple(o["betas"])
        self.dense = nk.MaskedAdam(model.dense_parameters(), lr=o["lr"], betas=betas, eps=o["eps"],
                                   weight_decay=o["weight_decay"], mode=o["mode"], backend=backend)
        self.sparse = torch.optim.SparseAdam(model.embedding_parameters(), lr=o["embedding_lr"] or o["lr"],
                                             betas=betas, eps=o["eps"])

    def zero_grad(self) -> None:
        self.dense.zero_grad(set_to_none=True)
        self.sparse.zero_grad(set_to_none=True)

    def step(self, masks: Dict[torch.Tensor, torch.Tensor]) -> None:
        self.dense.set_masks(masks)
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
        self.mask_hist: Dict[str, List[Dict[str, torch.Tensor]]] = {}
        self.init: Optional[Tuple[Dict[str, torch.Tensor], Dict[str, Any]]] = None
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
        for task, hist in self.mask_hist.items():
            for k, masks in enumerate(hist):
                for layer, packed in masks.items():
                    tensors[f"maskhist/{task}/{k}/{layer}"] = packed
        save_tensors(self.ckpt_path, tensors, {"kind": self.kind, "pos": self.pos, "optim": od, "rng": rng_state()})
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.kind)

    def restore(self) -> bool:
        """Load the last checkpoint if there is one; True if loaded."""
        if not os.path.isfile(self.ckpt_path):
            return False
        # loaded on the CPU: load_state_dict copies weights to the model's device, and the torch
        # optimizers move their state to each parameter's device themselves, except MaskedAdam's
        # "step" counters, which stay on the CPU as in a fresh run (no device sync per step)
        tensors, doc = load_tensors(self.ckpt_path)
        if doc.get("kind") != self.kind:
            raise RuntimeError(f"{self.ckpt_path}: checkpoint of model {doc.get('kind')!r}, expected {self.kind!r}")
        self.model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")})
        self.opt.load(tensors, doc["optim"])
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
        """Weights and optimizer state back to init, bit for bit; masks are left as they are."""
        if self.init is None:
            raise RuntimeError("rewind: no init snapshot (warmup has not finished)")
        tensors, doc = self.init
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
        for i, (task, idx) in enumerate(batches):
            ids, tg, sp = self.train.batch(idx)
            self.opt.zero_grad()
            if task is None:
                loss, _ = multitask_loss(model(ids), tg, sp, self.tasks, self.gamma, self.alpha)
                masks: Dict[torch.Tensor, torch.Tensor] = {}
            else:
                t = self.task_cfg[task]
                loss = task_loss(t["loss"], model(ids, task), tg[task], None, self.gamma, self.alpha)
                if weighted:
                    loss = loss * t["weight"]
                masks = self._task_masks(task)
            loss.backward()
            self.opt.step(masks)
            total += loss.detach()
            self.pos["step"] += 1
            if every and (start + i + 1) % every == 0 and start + i + 1 < n_all:
                self.pos.update(batch=start + i + 1, batch_loss=float(total.item()))
                self.checkpoint()
            if bar is not None:
                # the only host syncs of the loop: one every log_every steps, for the bar
                if (i + 1) % log_every == 0:
                    bar.set_postfix(loss=f"{(total / (i + 1)).item():.4f}")
                bar.update()
        if bar is not None:
            bar.close()
        self.pos.update(batch=0, batch_loss=0.0)
        return float((total / max(1, n_all)).item())

    @torch.no_grad()
    def evaluate(self, split: B.SplitTensors, task: Optional[str] = None) -> Dict[str, float]:
        """task=None: every task as served (connection: each under its own mask), over each task's
        space. task given: that task only, under its current mask, over its space."""
        model = self.model
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

    # ------------------------------------------------------------------ early stopping
    def _early_metric(self) -> Tuple[str, bool]:
        name = self.cfg["stages"]["joint"]["metric"]
        if name is None:
            t = self.tasks[-1]
            m, hib = main_metric(t)
            return f"{t['name']}_{m}", hib
        return name, name.endswith("_auc")

    def _early_update(self, metrics: Dict[str, float], epoch: int) -> bool:
        """Track the best validation epoch (saving its weights); True when training should stop."""
        js = self.cfg["stages"]["joint"]
        if not js["early_stopping"]:
            return False
        name, hib = self._early_metric()
        v = metrics.get(name, float("nan"))
        es = self.pos["early"] or {"metric": name, "best": None, "best_epoch": None, "bad": 0, "stopped": False}
        better = v is not None and not math.isnan(v) and (
            es["best"] is None or (v > es["best"] if hib else v < es["best"]))
        if better:
            es.update(best=v, best_epoch=epoch, bad=0)
            save_tensors(self.best_path, self._model_tensors(), {"kind": self.kind, "epoch": epoch}, sidecar=False)
        else:
            es["bad"] += 1
        es["stopped"] = es["bad"] >= js["patience"]
        self.pos["early"] = es
        return es["stopped"]

    def _early_finish(self) -> None:
        if self.pos["early"] and self.pos["early"]["best_epoch"] is not None and os.path.isfile(self.best_path):
            tensors, _ = load_tensors(self.best_path, self.device)
            self.model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items()})

    # ------------------------------------------------------------------ flows
    def run(self) -> None:
        if self.kind == "connection":
            self._run_connection()
        else:
            self._run_baseline()

    def _epochs(self, stage: str, epochs: int, desc: str, early: bool,
                batches_for: Callable[[int], Sequence]) -> bool:
        """Train epochs pos["epoch"] .. epochs-1 of `stage` (batches_for(e) gives epoch e's
        batches, Eq. 2 weighted), evaluating on validation and checkpointing after each. With
        `early`, early stopping may end the stage: then pos["stage"] is "done" and True returns."""
        pos = self.pos
        for e in range(pos["epoch"], epochs):
            t0 = time.perf_counter()
            loss = self.train_epoch(batches_for(e), True, f"{self.kind} {desc} {e + 1}/{epochs}")
            val = self.evaluate(self.valid)
            self._curve(stage=stage, epoch=e, train_loss=loss, **val)
            self.log(f"{self.kind}: {desc} {e + 1}/{epochs} loss {loss:.4f} valid {_fmt(val)}")
            pos["epoch"] = e + 1
            stop = early and self._early_update(val, e)
            self._timed(stage, t0)
            if stop:
                pos["stage"] = "done"
            self.checkpoint()
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
            self._epochs("warmup", st["warmup"]["epochs"], "warmup epoch", early=False,
                         batches_for=lambda e: B.mixed_batches(self.train, bs, self.seed, "mixed", e))
            self.save_init()
            pos.update(stage="masks", epoch=0, task_index=0, round=0)
            self.checkpoint()
        if pos["stage"] == "masks":
            # Mask generation always takes strict steps (the task trains its sub-network alone);
            # optim.mode applies to the joint stage, where tasks share weights.
            mode = self.opt.dense.mode
            self.opt.dense.mode = "strict"
            try:
                self._masks_stage()
            finally:
                self.opt.dense.mode = mode
            self.rewind()
            for t in self.names:
                self.model.set_task_masks(t, self.mask_hist[t][pos["selected"][t]])
            pos.update(stage="joint", epoch=0)
            self.checkpoint()
        if pos["stage"] == "joint":
            self._epochs("joint", st["joint"]["epochs"], "joint epoch", early=True,
                         batches_for=lambda e: B.alternating_batches(self.train, self.names, bs, self.seed,
                                                                     "joint", e))
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
                    bt = B.task_batches(self.train, task, bs, self.seed, f"masks/{k}", e)
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
