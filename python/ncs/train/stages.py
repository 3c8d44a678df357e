"""The stages of Algorithm 1 and the baselines' training, each resumable at epoch/round granularity.

ModelTrainer owns one model (kind single | layer | connection | ...), its two optimizers
(optimizers.py), its checkpoints <ckpt_dir>/<kind>.safetensors (checkpointing.py, rewritten after
every epoch and every round), its Position (position.py) and its EarlyStopper (early.py). The
connection model follows Algorithm 1 of the paper:

  Step 1  warmup(): mixed batches, Eq. 2 loss, task=None (every weight), stages.warmup.epochs
          epochs; then sNET_init = every parameter AND both optimizers' state (in memory and in
          <kind>_init.safetensors): the bit-exact rewind target.
  Step 2  masks(): per task, rounds k = 0..n (mask_round). Round k: rewind to init (weights +
          optimizer state), set the task's mask to M_k (M_0 = all ones), train epochs_per_round
          epochs on the task's space only (Eq. 1, strict masked optimizer), evaluate on validation
          under M_k (AUC for bce/focal tasks, MSE for mse tasks), then (k < n) prune q of M_k's
          survivors by |w| of the weights just trained: M_{k+1}. Row k of the rounds table has
          density(M_k) and metric(M_k); the final density r is reached by M_n, which round n
          trains and evaluates (n+1 training runs in all). The kept mask is chosen by
          pruning.select_round (default: best validation metric among rounds 1..n).
  Step 3  joint(): rewind to init, every task's mask set to its selected one; alternating
          task-homogeneous batches, each forward under its task's mask, each update by
          MaskedAdam in optim.mode (strict: only the task's weights and moments move; leaky:
          plain Adam, the authors' code), loss omega_k * L_k; joint.epochs epochs, early stopping
          and model selection on validation (early.py). Mask generation always steps strictly.
          stages.joint.select_warmup: the warmup epochs are selection candidates too (epochs
          -W..-1; a task served from one gets the dense warmup model of that epoch);
          stages.joint.select_rounds: so is every mask round, for its own task ("<task>.r<k>").
single / layer / ...: baseline(): mixed batches, Eq. 2, baseline_epochs(cfg) epochs (default
  warmup + joint, the passes the connection model's final weights have seen), same selection.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

import ncs_kernels as nk

from ..config import baseline_epochs, main_metric, prune_fraction
from ..models import build_model
from . import batches as B
from .checkpointing import TrainerCheckpoints
from .early import EarlyStopper, served_tensors
from .epoch import train_epoch
from .evaluate import evaluate
from .optimizers import Optimizers
from .position import Position
from .batches import cycled_alternating_batches
from .protocol import Balancer, diagnostic_rows, grad_diagnostics, subset_split
from .pruning import mask_density, prune_round, select_round


class StopTraining(Exception):
    """Raised by the on_checkpoint hook to end a run early (tests simulate a kill with it)."""


def derived_seed(seed: int, tag: str) -> int:
    return B.epoch_seed(seed, tag, 0)


class ModelTrainer:
    def __init__(self, kind: str, cfg, fields, train: B.SplitTensors, valid: B.SplitTensors,
                 device: torch.device, ckpt_dir: str, progress: bool = False,
                 on_checkpoint: Optional[Callable[[str], None]] = None, log: Optional[Callable[[str], None]] = None):
        self.kind = kind
        from ..config.sizing import resolve_auto
        cfg, _ = resolve_auto(cfg, len(train))  # "auto" sizes (the runner resolves them first; bench/tests may not)
        self.cfg = cfg
        self.tasks = cfg.tasks
        self.task_cfg = {t.name: t for t in self.tasks}
        self.names = [t.name for t in self.tasks]
        self.train, self.valid = train, valid
        self.device = device
        self.ckpt_dir = ckpt_dir
        self.progress = progress
        self.on_checkpoint = on_checkpoint
        self.log = log or (lambda msg: None)
        self.seed = int(cfg.seed)
        self.gamma = cfg.loss.focal_gamma
        self.alpha = cfg.loss.focal_alpha
        # model init is a function of (seed, kind) alone
        torch.manual_seed(derived_seed(self.seed, f"init/{kind}"))
        self.model = build_model(kind, fields, self.names, cfg.model, backend=cfg.backend).to(device)
        self.opt = Optimizers(self.model, cfg, backend=cfg.backend)
        self.layers = nk.masked_modules(self.model) if kind == "connection" else {}
        self.in_features = {n: m.in_features for n, m in self.layers.items()}
        self.balancer = Balancer(cfg, device)
        self.ckpt = TrainerCheckpoints(kind, ckpt_dir, self.model, self.opt, self.balancer, device,
                                       cfg.stages.rewind, self.log)
        self.early = EarlyStopper(cfg, kind, ckpt_dir)
        self.served: Optional[torch.nn.Module] = None   # per-task selection's predictor, once done
        self.served_epochs: Optional[Dict[str, Any]] = None
        self.freeze_embeddings = False                   # stages.joint.embeddings: freeze, in joint
        self.epoch_split: Optional[B.SplitTensors] = None  # a stage's data subset (data_fraction)
        self.mask_hist: Dict[str, List[Dict[str, torch.Tensor]]] = {}
        self.dist = None  # ncs.distributed.DataParallel of a torchrun run (set by the runner)
        self.pos = Position.start(kind)
        self._mask_cache: Dict[str, Dict[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ checkpoints (checkpointing.py)
    @property
    def ckpt_path(self) -> str:
        return self.ckpt.path

    @property
    def init_path(self) -> str:
        return self.ckpt.init_path

    def checkpoint(self) -> None:
        self.ckpt.save(self.pos, self.mask_hist)
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.kind)

    def restore(self) -> bool:
        """Load the last checkpoint if there is one; True if loaded."""
        got = self.ckpt.restore()
        if got is None:
            return False
        self.pos, self.mask_hist = got
        return True

    def save_init(self) -> None:
        self.ckpt.save_init()

    def rewind(self) -> None:
        self.ckpt.rewind()

    # ------------------------------------------------------------------ primitives
    def task_masks(self, task: str) -> Dict[torch.Tensor, torch.Tensor]:
        """{weight: packed mask buffer} for the optimizer; cached, because set_mask and
        load_state_dict write into the same buffers, so the mapping never goes stale."""
        if task not in self._mask_cache:
            self._mask_cache[task] = nk.model_task_masks(self.model, task)
        return self._mask_cache[task]

    def train_epoch(self, batches: Sequence[Tuple[Optional[str], torch.Tensor]], weighted: bool, desc: str) -> float:
        return train_epoch(self, batches, weighted, desc)

    def evaluate(self, split: B.SplitTensors, task: Optional[str] = None) -> Dict[str, float]:
        """task=None: every task as served (connection: each under its own mask), over each task's
        space. task given: that task only, under its current mask, over its space."""
        model = self.model if (task is not None or self.served is None) else self.served
        return evaluate(model, split, self.tasks, self.cfg.train.eval_batch_size, self.device, task)

    def diagnostics(self, stage: str) -> Optional[Dict[str, Any]]:
        """Gradient diagnostics (protocol.grad_diagnostics) on train.diagnostics_batches fixed
        training batches: the joint stage under each task's mask, the other stages through the
        mixed network. None when off or when the model shares nothing."""
        nb = self.cfg.train.diagnostics_batches
        if nb == 0 or self.kind == "single":
            return None
        bs = self.cfg.train.batch_size
        rows = diagnostic_rows(len(self.train), nb, bs, self.seed)
        d = grad_diagnostics(self.model, self.train, self.tasks, rows, bs, self.balancer.effective_weights(),
                             task_forward=(stage == "joint"), gamma=self.gamma, alpha=self.alpha, kind=self.kind)
        return d if d["groups"] else None

    def _timed(self, stage: str, t0: float) -> None:
        self.pos.add_seconds(stage, time.perf_counter() - t0)

    def _epochs(self, stage: str, epochs: int, desc: str, early: bool,
                batches_for: Callable[[int], Sequence], select_offset: Optional[int] = None) -> bool:
        """Train epochs pos.epoch .. epochs-1 of `stage` (batches_for(e) gives epoch e's batches,
        Eq. 2 weighted), evaluating on validation, recording the gradient diagnostics and
        checkpointing after each. With `early`, model selection tracks the epochs and early
        stopping may end the stage: then pos.stage is "done" and True returns. With
        select_offset k (and not early), model selection tracks epoch e as epoch e + k (warmup:
        k = -W, so its epochs are -W..-1 beside the joint stage's 0..) and never stops."""
        pos = self.pos
        for e in range(pos.epoch, epochs):
            t0 = time.perf_counter()
            loss = self.train_epoch(batches_for(e), True, f"{self.kind} {desc} {e + 1}/{epochs}")
            val = self.evaluate(self.valid)
            rec = dict(stage=stage, epoch=e, train_loss=loss, **val)
            if self.balancer.method == "uncertainty":
                rec["loss_weights"] = self.balancer.effective_weights()
            diag = self.diagnostics(stage)
            if diag is not None:
                rec["grad"] = diag
            pos.curves.append(rec)
            self.log(f"{self.kind}: {desc} {e + 1}/{epochs} loss {loss:.4f} valid {_fmt(val)}")
            pos.epoch = e + 1
            tracked = e if early else (None if select_offset is None else e + select_offset)
            stop = tracked is not None and self.early.update(pos, val, tracked, self.ckpt.model_tensors) and early
            self._timed(stage, t0)
            if stop:
                pos.stage = "done"
            self.checkpoint()
            if tracked is not None:
                self.early.gc(pos)
            if stop:
                return True
        return False

    def _finish(self) -> None:
        """The served predictor: each task's selected epoch (early.py)."""
        self.served, self.served_epochs = self.early.finish(self.pos, self.model, self.device)

    # ------------------------------------------------------------------ flows
    def run(self) -> None:
        if self.kind != "connection":
            self.baseline()
            return
        if self.pos.stage == "warmup":
            self.warmup()
        if self.pos.stage == "masks":
            self.masks()
        if self.pos.stage == "joint":
            self.joint()
        elif self.pos.stage == "done":
            self._finish()

    def baseline(self) -> None:
        pos, bs = self.pos, self.cfg.train.batch_size
        if pos.stage == "baseline":
            self._epochs("train", baseline_epochs(self.cfg), "epoch", early=True,
                         batches_for=lambda e: B.mixed_batches(self.train, bs, self.seed, "mixed", e))
            self._finish()
            pos.stage = "done"
            self.checkpoint()
        elif pos.stage == "done":
            self._finish()

    def warmup(self) -> None:
        """Step 1: train sNET on mixed samples of every task; keep sNET_init."""
        st, bs = self.cfg.stages, self.cfg.train.batch_size
        sub = subset_split(self.train, st.warmup.data_fraction, st.subset, self.seed)
        self.epoch_split = sub
        offset = -st.warmup.epochs if st.joint.select_warmup and st.joint.select != "last" else None
        try:
            self._epochs("warmup", st.warmup.epochs, "warmup epoch", early=False,
                         batches_for=lambda e: B.mixed_batches(sub, bs, self.seed, "mixed", e),
                         select_offset=offset)
        finally:
            self.epoch_split = None
        self.save_init()
        self.pos.stage, self.pos.epoch, self.pos.task_index, self.pos.round = "masks", 0, 0, 0
        self.checkpoint()

    def masks(self) -> None:
        """Step 2: per task, n pruning rounds from the all-ones mask; keep the best round's mask."""
        st = self.cfg.stages
        # Mask generation always takes strict steps (the task trains its sub-network alone);
        # optim.mode applies to the joint stage, where tasks share weights.
        mode = self.opt.dense.mode
        self.opt.dense.mode = "strict"
        self.epoch_split = subset_split(self.train, st.masks.data_fraction, st.subset, self.seed)
        try:
            for ti in range(self.pos.task_index, len(self.names)):
                task = self.names[ti]
                hist = self.mask_hist.setdefault(task, [])
                if not hist:   # M_0: all ones
                    hist.append({name: nk.ones_mask(m.out_features, m.in_features, device=self.device)
                                 for name, m in self.layers.items()})
                for k in range(self.pos.round, st.masks.rounds + 1):
                    self.mask_round(task, k)
                _, hib = main_metric(self.task_cfg[task])
                table = self.pos.rounds.setdefault(task, [])
                best = select_round(table, hib, st.masks.select)
                self.pos.selected[task] = best
                self.model.set_task_masks(task, hist[best])
                self.log(f"connection: {task} keeps round {best} (density {table[best]['density']:.3f})")
                self.pos.next_task(ti)
                self.checkpoint()
        finally:
            self.opt.dense.mode = mode
            self.epoch_split = None
        self.rewind()
        for t in self.names:
            self.model.set_task_masks(t, self.mask_hist[t][self.pos.selected[t]])
        self.pos.stage, self.pos.epoch = "joint", 0
        self.checkpoint()

    def mask_round(self, task: str, k: int) -> None:
        """Round k of `task`: rewind to sNET_init, train under M_k, evaluate, prune to M_{k+1}."""
        pos, mc = self.pos, self.cfg.stages.masks
        n, bs = mc.rounds, self.cfg.train.batch_size
        metric, _ = main_metric(self.task_cfg[task])
        hist = self.mask_hist[task]
        table = pos.rounds.setdefault(task, [])
        t0 = time.perf_counter()
        mask_k = hist[k]
        if pos.epoch == 0 and not pos.batch:  # not when resuming mid-epoch
            self.rewind()
        self.model.set_task_masks(task, mask_k)
        R = mc.epochs_per_round
        losses = pos.round_losses
        for e in range(pos.epoch, R):
            bt = B.task_batches(self.epoch_split if self.epoch_split is not None else self.train, task, bs,
                                self.seed, f"masks/{k}", e)
            losses.append(self.train_epoch(bt, False, f"masks {task} round {k}/{n} epoch {e + 1}/{R}"))
            pos.epoch = e + 1
            if e + 1 < R:  # mid-round checkpoint; the round's end writes the next one
                self._timed("masks", t0)
                self.checkpoint()
                t0 = time.perf_counter()
        val = self.evaluate(self.valid, task)
        js = self.cfg.stages.joint
        candidate = js.select_rounds and js.select == "per_task"
        if candidate:  # stages.joint.select_rounds: this round's model is a candidate for its task
            self.early.update(pos, val, round_id(task, k), self.ckpt.model_tensors, only=task)
        dens = mask_density(mask_k, self.in_features)
        row = {"task": task, "round": k, "density": dens, "metric_name": f"{task}_{metric}",
               "metric": val[f"{task}_{metric}"], "train_loss": losses[-1] if losses else None}
        if k < n:
            weights = {name: m.weight for name, m in self.layers.items()}
            new, removed = prune_round(weights, mask_k, prune_fraction(self.cfg), mc.scope, mc.count_rounding)
            hist.append(new)
            row["pruned"] = sum(removed.values())
        table.append(row)
        pos.curves.append(dict(stage="masks", task=task, round=k, density=dens, train_loss=row["train_loss"], **val))
        self.log(f"connection: masks {task} round {k}/{n} density {dens:.3f} "
                 f"valid {row['metric_name']} {_num(row['metric'])}")
        pos.next_round(k)
        self._timed("masks", t0)
        self.checkpoint()
        if candidate:
            self.early.gc(pos)

    def joint(self) -> None:
        """Step 3: from sNET_init under the kept masks, alternating task batches."""
        js, bs = self.cfg.stages.joint, self.cfg.train.batch_size
        self.freeze_embeddings = js.embeddings == "freeze"
        alternate = cycled_alternating_batches if js.alternate == "cycle" else B.alternating_batches
        try:
            self._epochs("joint", js.epochs, "joint epoch", early=True,
                         batches_for=lambda e: alternate(self.train, self.names, bs, self.seed, "joint", e))
        finally:
            self.freeze_embeddings = False
        self._finish()
        self.pos.stage = "done"
        self.checkpoint()

    # ------------------------------------------------------------------ results
    def served_tensors(self) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
        """What models/<kind>.safetensors holds (early.served_tensors)."""
        return served_tensors(self.model, self.served, self.served_epochs, self.names)

    def predictor(self) -> torch.nn.Module:
        """The model as served: per-task selection's predictor once training is done."""
        return self.served if self.served is not None else self.model

    def selected_masks(self) -> Dict[str, Dict[str, torch.Tensor]]:
        """{layer: {task: packed}} of the connection model's kept masks (each task's selected round;
        not the served snapshot's, which for a task served from a warmup epoch is all ones)."""
        if all(t in self.pos.selected and self.mask_hist.get(t) for t in self.names):
            return {name: {t: self.mask_hist[t][self.pos.selected[t]][name].clone() for t in self.names}
                    for name in self.layers}
        return {name: {t: m.get_mask(t).clone() for t in self.names} for name, m in self.layers.items()}

    def stage_summary(self) -> Dict[str, Any]:
        pos = self.pos
        out: Dict[str, Any] = {"steps": pos.step, "seconds": pos.seconds}
        if self.kind == "connection":
            out["warmup"] = {"epochs": self.cfg.stages.warmup.epochs}
            out["masks"] = {
                t: {"rounds": pos.rounds.get(t, []), "selected_round": pos.selected.get(t),
                    "density": (pos.rounds[t][pos.selected[t]]["density"] if t in pos.selected else None)}
                for t in self.names
            }
            out["masks_q"] = prune_fraction(self.cfg)
            out["joint"] = {"epochs_run": sum(1 for c in pos.curves if c.get("stage") == "joint"),
                            "early_stopping": pos.early}
        else:
            out["train"] = {"epochs_run": sum(1 for c in pos.curves if c.get("stage") == "train"),
                            "early_stopping": pos.early}
        return out


def round_id(task: str, k: int) -> str:
    """The selection id of mask round k of `task` (stages.joint.select_rounds): "<task>.r<k>"."""
    return f"{task}.r{k}"


def _num(v) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.5f}"


def _fmt(metrics: Dict[str, float]) -> str:
    return " ".join(f"{k} {_num(v)}" for k, v in metrics.items() if not k.endswith("_rows"))
