"""A trained run directory as the serving commands see it: config, fields, vocabulary, models."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

import torch

from ..train.runner import RunError


class ServeError(RunError):
    """A user-facing problem of export / predict / replay / encode (one line in the CLI, exit 2)."""


class ExportError(ServeError):
    """A user-facing export problem (unknown kind / task / format, missing dependency...)."""


class Run:
    def __init__(self, run_dir: str, cfg: Dict[str, Any], fields: List[Dict[str, Any]], vocab: Optional[Dict]):
        self.dir = run_dir
        self.cfg = cfg
        self.fields = fields
        self.vocab = vocab
        self.tasks: List[Dict[str, Any]] = list(cfg.tasks)
        self.task_names = [t.name for t in self.tasks]

    # -- models
    def trained_kinds(self) -> List[str]:
        d = os.path.join(self.dir, "models")
        named = [k for k in self.cfg.models if os.path.isfile(os.path.join(d, f"{k}.safetensors"))]
        extra = sorted(f[: -len(".safetensors")] for f in (os.listdir(d) if os.path.isdir(d) else [])
                       if f.endswith(".safetensors") and not f.startswith(".") and f[: -len(".safetensors")] not in named)
        return named + extra

    def choose_kind(self, kind: Optional[str] = None) -> str:
        trained = self.trained_kinds()
        if not trained:
            raise ServeError(f"--run: {self.dir} has no trained models (models/*.safetensors); train it first")
        if kind is None:
            return "connection" if "connection" in trained else trained[0]
        if kind not in trained:
            raise ServeError(f"--model: {self.dir} has no trained {kind!r} model; trained: {', '.join(trained)}")
        return kind

    def model(self, kind: str, device: torch.device):
        from ..train.runner import load_model

        try:
            model, fields = load_model(self.dir, kind, self.cfg, device)
        except (ValueError, KeyError) as e:  # e.g. a kind this version of ncs cannot build
            raise ServeError(f"--model: cannot rebuild the {kind!r} model of {self.dir}: {e}") from None
        return model.eval(), fields

    # -- tasks
    def ctr_task(self) -> str:
        """The first bce/focal task (the 'CTR' of reports), else the first task."""
        return next((t.name for t in self.tasks if t.loss != "mse"), self.task_names[0])

    def cvr_task(self) -> str:
        """The first mse task (the play-rate 'CVR'), else the last task."""
        return next((t.name for t in self.tasks if t.loss == "mse"), self.task_names[-1])

    def label_of(self, task: str) -> str:
        return next(t.label for t in self.tasks if t.name == task)

    # -- data
    def encoding(self) -> Dict[str, Any]:
        d = self.cfg.data
        return {"data_kind": d.kind, "options": d.options}


def open_run(run_dir: Optional[str]) -> Run:
    from ..config import load_config

    if not run_dir:
        raise ServeError("--run: expected a run directory")
    cfg_path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(cfg_path):
        raise ServeError(f"--run: {run_dir} is not a run directory (no config.yaml)")
    cfg = load_config(cfg_path)
    fpath = os.path.join(run_dir, "fields.json")
    if not os.path.isfile(fpath):
        raise ServeError(f"--run: {run_dir} has no fields.json (an unfinished run?); train it first")
    with open(fpath, "r", encoding="utf-8") as f:
        fields = json.load(f)
    vocab = None
    vpath = os.path.join(run_dir, "vocab.json")
    if os.path.isfile(vpath):
        with open(vpath, "r", encoding="utf-8") as f:
            vocab = json.load(f)
    return Run(run_dir, cfg, fields, vocab)
