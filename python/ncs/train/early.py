"""Model selection over epochs and early stopping (stages.joint.select / early_stopping / patience).

    stopper = EarlyStopper(cfg, kind, ckpt_dir)
    stop = stopper.update(pos, val_metrics, epoch, model_tensors)   # after each epoch
    stopper.gc(pos)                                                 # after the checkpoint
    served, epochs = stopper.finish(pos, model, device)             # the served predictor

One tracker per task (select: per_task) or one for all tasks (select: metric); an epoch that is
some tracker's new best saves the weights to <kind>_best_e<epoch>.safetensors. The trackers'
state is JSON in Position.early, so it is checkpointed with the rest of the position.
"""
from __future__ import annotations

import copy
import math
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ..config import main_metric
from .checkpoint import load_tensors, save_tensors
from .position import Position
from .protocol import PerTaskModel


class EarlyStopper:
    def __init__(self, cfg, kind: str, ckpt_dir: str):
        self.joint = cfg.stages.joint
        self.tasks = cfg.tasks
        self.names = [t.name for t in cfg.tasks]
        self.kind = kind
        self.ckpt_dir = ckpt_dir

    def trackers(self) -> List[Tuple[str, str, bool, List[str]]]:
        """(tracker id, validation metric, higher is better, tasks it selects for)."""
        if self.joint.select == "per_task":
            out = []
            for t in self.tasks:
                m, hib = main_metric(t)
                out.append((t.name, f"{t.name}_{m}", hib, [t.name]))
            return out
        name = self.joint.metric
        if name is None:
            t = self.tasks[-1]
            m, hib = main_metric(t)
            name, hib = f"{t.name}_{m}", hib
        else:
            hib = name.endswith("_auc")
        return [("all", name, hib, list(self.names))]

    def snapshot_path(self, epoch: Any) -> str:
        return os.path.join(self.ckpt_dir, f"{self.kind}_best_e{epoch}.safetensors")

    def update(self, pos: Position, metrics: Dict[str, float], epoch: Any,
               model_tensors: Callable[[], Dict[str, torch.Tensor]], only: Optional[str] = None) -> bool:
        """Track the best validation epoch per tracker; a new best saves model_tensors(). True
        when early stopping should end the stage: no tracker improved for `patience` epochs.
        `epoch`: an int (warmup -W..-1, joint 0..) or a mask round's id "<task>.r<k>"; `only`: a
        task, whose tracker alone is updated (a mask round, evaluated on its task only; the
        other trackers neither improve nor count a bad epoch)."""
        js = self.joint
        if js.select == "last":
            return False
        es = pos.early
        if not es or "trackers" not in es:
            es = {"select": js.select, "stopped": False,
                  "trackers": {tid: {"metric": name, "tasks": tasks, "best": None, "best_epoch": None, "bad": 0}
                               for tid, name, _, tasks in self.trackers()}}
        improved = False
        for tid, name, hib, tasks in self.trackers():
            if only is not None and only not in tasks:
                continue
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
            save_tensors(self.snapshot_path(epoch), model_tensors(), {"kind": self.kind, "epoch": epoch},
                         sidecar=False)
        es["stopped"] = bool(js.early_stopping) and all(tr["bad"] >= js.patience
                                                         for tr in es["trackers"].values())
        es["best_epoch"] = {t: tr["best_epoch"] for tr in es["trackers"].values() for t in tr["tasks"]}
        pos.early = es
        return es["stopped"]

    def gc(self, pos: Position) -> None:
        """Delete snapshot files no task refers to any more (after the checkpoint that forgot them)."""
        es = pos.early
        keep = set()
        if es and "trackers" in es:
            keep = {self.snapshot_path(tr["best_epoch"]) for tr in es["trackers"].values()
                    if tr["best_epoch"] is not None}
        prefix = f"{self.kind}_best_e"
        if not os.path.isdir(self.ckpt_dir):
            return
        for f in os.listdir(self.ckpt_dir):
            path = os.path.join(self.ckpt_dir, f)
            if f.startswith(prefix) and f.endswith(".safetensors") and path not in keep:
                os.remove(path)

    def finish(self, pos: Position, model: torch.nn.Module, device) -> Tuple[Optional[torch.nn.Module],
                                                                              Optional[Dict[str, Any]]]:
        """(served predictor, {task: best epoch}): each task's best-epoch snapshot (select: last,
        or no best yet: the current weights); (None, None) without trackers. `model` gets the
        snapshot of the last task (the one the single-metric rule picks for), so its masks and
        weights stay a valid model."""
        es = pos.early
        if not es or "trackers" not in es:
            return None, None
        best = {t: tr["best_epoch"] for tr in es["trackers"].values() for t in tr["tasks"]}
        loaded: Dict[Any, Dict[str, torch.Tensor]] = {}
        for e in sorted({e for e in best.values() if e is not None}, key=str):
            tensors, _ = load_tensors(self.snapshot_path(e), device)
            loaded[e] = {k[len("model/"):]: v for k, v in tensors.items()}
        current = {k: v.detach().clone() for k, v in model.state_dict().items()}
        modules: Dict[Any, torch.nn.Module] = {}
        per_task: Dict[str, torch.nn.Module] = {}
        for t in self.names:
            e = best[t]
            if e not in modules:
                m = copy.deepcopy(model)
                m.load_state_dict(loaded[e] if e is not None else current)
                m.eval()
                modules[e] = m
            per_task[t] = modules[e]
        primary = best[self.names[-1]]
        if primary is not None:
            model.load_state_dict(loaded[primary])
        return PerTaskModel(per_task, self.names), best


def served_tensors(model: torch.nn.Module, served: Optional[PerTaskModel], served_epochs: Optional[Dict[str, Any]],
                   names: List[str]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """What models/<kind>.safetensors holds: "model/..." = model (the last task's snapshot), and
    with per-task selection "task/<t>/model/..." for each other distinct snapshot (t: the first
    task served by it); meta["per_task_epochs"] = {task: epoch or None}, meta["per_task_weights"]
    = {task: the key prefix of its weights}."""
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    meta: Dict[str, Any] = {}
    if served is not None:
        best = served_epochs
        primary = best[names[-1]]
        meta["per_task_epochs"] = best
        src: Dict[str, str] = {}
        first: Dict[Any, str] = {}
        for t in names:
            if best[t] == primary:
                src[t] = "model"
                continue
            if best[t] not in first:   # one copy per distinct snapshot
                first[best[t]] = t
                tensors.update({f"task/{t}/model/{k}": v for k, v in served.models[t].state_dict().items()})
            src[t] = f"task/{first[best[t]]}/model"
        meta["per_task_weights"] = src
    return tensors, meta
