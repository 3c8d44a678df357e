"""Run configuration: YAML files validated against one schema, with a default for every key.

    cfg = load_config("configs/paper.yaml")                      # a frozen Config, every key present
    cfg = resolve_config({"stages": {"joint": {"epochs": 3}}})   # overrides on the defaults
    cfg.stages.joint.metric, cfg.model.hidden, cfg.tasks[0].name # typed, nested, read-only
    cfg2 = cfg.override({"optim": {"mode": "leaky"}})            # a new, re-validated Config
    cfg.to_dict()                                                # plain dicts/lists (config.yaml)

The keys, validators, defaults and docs live in ncs.config.schema (SCHEMA); the dataclasses here
are built from it, so a key is declared once. An unknown key is an error naming its path
("stages.warmup.epoch: unknown key; expected one of ..."), a bad value an error naming the key
and what was expected. Errors are ConfigError (a ValueError), which the CLI prints as one line.
Lists of the YAML are tuples here (frozen); data.path (a {train, valid, test} mapping) and
data.options are the only mappings (free-form reader options), copied from the file.

Every path of a config file (data.path, each path of its mapping, data.options.schema when it is
a file, data.cache_dir) is relative to the folder of the file (load_config); a config built from
a dict (resolve_config) keeps its paths as given unless base_dir is passed.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from typing import Any, Dict, List, Optional, Tuple

import yaml

from ..models import MODEL_KINDS  # noqa: F401  (owned by ncs.models; re-exported for the schema's users)
from .schema import (BACKEND_NAMES, BALANCE_METHODS, DEFAULT_TASKS, LOSSES, SCHEMA, TASK_KEYS,  # noqa: F401
                     ConfigError)

__all__ = ["Config", "ConfigError", "Task", "SCHEMA", "TASK_KEYS", "BACKEND_NAMES", "BALANCE_METHODS", "LOSSES",
           "DEFAULT_TASKS", "DEMO_CONFIG", "resolve_config", "load_config", "dump_config", "defaults", "demo_config",
           "merge", "metric_names", "main_metric", "prune_fraction", "baseline_epochs"]


# ---------------------------------------------------------------------------------------------
# Frozen dataclasses, one per section of SCHEMA (and Task for an entry of `tasks`).

class _Section:
    """Base of the generated config classes: to_dict() gives the plain YAML-able form.

    A section also reads as a read-only mapping (section["key"], .get, .keys), so that helpers
    which take a plain task mapping (losses, metrics, the readers) take a Task alike; code that
    reads a config uses the attributes."""

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def keys(self) -> List[str]:
        return [f.name for f in dataclasses.fields(self)]

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self.keys() else default


def _plain(v: Any) -> Any:
    if isinstance(v, _Section):
        return v.to_dict()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _frozen(v: Any) -> Any:
    """A validated value as stored: lists become tuples; a mapping (data.path, data.options: free
    form) is a private deep copy, kept as the reader gets it."""
    if isinstance(v, list):
        return tuple(_frozen(x) for x in v)
    if isinstance(v, dict):
        return copy.deepcopy(v)
    return v


def _class_name(path: str) -> str:
    return "".join(p.capitalize() for p in path.split(".")) + "Config" if path else "Config"


def _make_class(schema: Dict[str, Any], path: str, classes: Dict[str, type]) -> type:
    fields = []
    for k, node in schema.items():
        if isinstance(node, dict):
            sub = _make_class(node, f"{path}.{k}" if path else k, classes)
            fields.append((k, sub))
        else:
            fields.append((k, Any))
    cls = dataclasses.make_dataclass(_class_name(path), fields, bases=(_Section,), frozen=True)
    cls.__module__ = __name__
    classes[path] = cls
    return cls


_CLASSES: Dict[str, type] = {}
Config = _make_class(SCHEMA, "", _CLASSES)
Task = dataclasses.make_dataclass("Task", [(k, Any) for k in TASK_KEYS], bases=(_Section,), frozen=True)
Task.__module__ = __name__


def _override(self, over: Dict[str, Any]) -> "Config":
    """A new Config: this one's values with `over` (a nested dict) merged in, validated again."""
    return resolve_config(merge(self.to_dict(), over))


Config.override = _override
Config.__doc__ = "A resolved, validated run config (frozen); see ncs.config and docs/CONFIG.md."
for _p, _c in _CLASSES.items():
    globals()[_c.__name__] = _c   # ncs.config.StagesJointConfig, ... (for isinstance and docs)


def _build(schema: Dict[str, Any], values: Dict[str, Any], path: str):
    kw = {}
    for k, node in schema.items():
        sub = f"{path}.{k}" if path else k
        if isinstance(node, dict):
            kw[k] = _build(node, values[k], sub)
        elif sub == "tasks":
            kw[k] = tuple(Task(**t) for t in values[k])
        else:
            kw[k] = _frozen(values[k])
    return _CLASSES[path](**kw)


# ---------------------------------------------------------------------------------------------
# Keys that are no longer in the schema but that old files (and run directories) still hold.
# optim.embedding_optimizer had one value (sparse_adam) and was never read: it is accepted with
# that value (a FutureWarning says it is ignored); any other value is the error it always was.
_REMOVED = {("optim", "embedding_optimizer"): ("sparse_adam", "optim.embedding_step chooses the embedding step")}


def _drop_removed(given: Dict[str, Any]) -> Dict[str, Any]:
    for (sec, key), (only, instead) in _REMOVED.items():
        part = given.get(sec)
        if isinstance(part, dict) and key in part:
            if part[key] != only:
                raise ConfigError(f"{sec}.{key}: expected one of {only}, got {part[key]!r}")
            warnings.warn(f"{sec}.{key} is no longer a config key and is ignored (it had the one value "
                          f"{only}); {instead}", FutureWarning, stacklevel=4)
            given = {**given, sec: {k: v for k, v in part.items() if k != key}}
    return given


def _apply(schema: Dict[str, Any], given: Any, path: str) -> Dict[str, Any]:
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {given!r}")
    for k in given:
        if k not in schema:
            where = f"{path}.{k}" if path else str(k)
            raise ConfigError(f"{where}: unknown key; expected one of {', '.join(schema)}")
    out = {}
    for k, node in schema.items():
        where = f"{path}.{k}" if path else k
        if isinstance(node, dict):
            out[k] = _apply(node, given.get(k), where)
        else:
            v = given[k] if k in given else copy.deepcopy(node.default)
            out[k] = node.check(where, v)
    return out


def _relative_to(base_dir: str, p: str) -> str:
    return p if os.path.isabs(p) else os.path.normpath(os.path.join(base_dir, p))


def _resolve_paths(d: Dict[str, Any], base_dir: str) -> None:
    """Every file / directory of the data section, relative to base_dir (the config file's folder)."""
    p = d["path"]
    if isinstance(p, dict):
        d["path"] = {k: _relative_to(base_dir, v) for k, v in p.items()}
    elif p:
        d["path"] = _relative_to(base_dir, p)
    if d["cache_dir"]:
        d["cache_dir"] = _relative_to(base_dir, d["cache_dir"])
    schema = d["options"].get("schema")
    if isinstance(schema, str) and schema:   # a schema file (an inline schema is a mapping)
        d["options"] = {**d["options"], "schema": _relative_to(base_dir, schema)}


def defaults() -> "Config":
    return resolve_config({})


def resolve_config(given: Optional[Dict[str, Any]] = None, base_dir: Optional[str] = None) -> "Config":
    """Validate `given` (a nested dict) against the schema and fill in every default; with
    base_dir (the config file's folder) every relative path of the data section is made absolute
    against it."""
    values = _apply(SCHEMA, _drop_removed(given or {}), "")
    _cross_checks(values)
    if base_dir is not None:
        _resolve_paths(values["data"], base_dir)
    return _build(SCHEMA, values, "")


def _cross_checks(cfg: Dict[str, Any]) -> None:
    d = cfg["data"]
    if d["kind"] != "synthetic" and not d["path"]:
        raise ConfigError(f"data.path: expected a file path for data.kind={d['kind']!r}, got null")
    js = cfg["stages"]["joint"]
    if js["select"] == "last" and js["early_stopping"]:
        raise ConfigError("stages.joint.select: 'last' serves the last epoch, so early_stopping must be false; "
                          "use select per_task or metric with early stopping")
    _model_checks(cfg)
    metric = cfg["stages"]["joint"]["metric"]
    if metric is not None:
        valid = set()
        for t in cfg["tasks"]:
            valid |= {f"{t['name']}_{m}" for m in _metric_names(t["loss"])}
        if metric not in valid:
            raise ConfigError(f"stages.joint.metric: expected one of {', '.join(sorted(valid))}, got {metric!r}")


def _model_checks(cfg: Dict[str, Any]) -> None:
    m, tasks, models = cfg["model"], cfg["tasks"], cfg["models"]
    if "ple" in models:
        bottom = max(1, len(m["hidden"]) - 1)
        if m["ple_levels"] > bottom:
            raise ConfigError(f"model.ple_levels: expected at most {bottom} (the layers of model.hidden but the "
                              f"last), got {m['ple_levels']}")
        if m["shared_experts"] + m["task_experts"] < 1:
            raise ConfigError("model.task_experts: expected shared_experts + task_experts >= 1, got 0")
    if "esmm" in models:
        t0 = tasks[0]
        if t0["space"] != "all" or t0["loss"] == "mse":
            raise ConfigError(f"tasks[0]: models esmm needs the click task first (space all, loss bce or focal), "
                              f"got {t0['name']!r} (space {t0['space']}, loss {t0['loss']})")
        for i, t in enumerate(tasks[1:], 1):
            if t["space"] != "clicked":
                raise ConfigError(f"tasks[{i}].space: models esmm needs every task after the first to be "
                                  f"post-click (space clicked), got {t['space']!r} for {t['name']!r}")


def _metric_names(loss: str) -> List[str]:
    return ["mse"] if loss == "mse" else ["auc", "logloss"]


def metric_names(task: "Task") -> List[str]:
    """Metrics reported for a task: AUC + logloss for classification losses, MSE for mse."""
    return _metric_names(task.loss)


def main_metric(task: "Task") -> Tuple[str, bool]:
    """(metric name, higher_is_better) used to pick rounds and for early stopping."""
    return ("mse", False) if task.loss == "mse" else ("auc", True)


def prune_fraction(cfg: "Config") -> float:
    """q per round: stages.masks.prune_fraction, or pruning.fraction_per_round(r, n) (1 - r^(1/n))."""
    from ..train.pruning import fraction_per_round
    m = cfg.stages.masks
    if m.prune_fraction is not None:
        return float(m.prune_fraction)
    return fraction_per_round(m.final_density, m.rounds)


def baseline_epochs(cfg: "Config") -> int:
    e = cfg.baselines.epochs
    if e is None:
        if "auto" in (cfg.stages.warmup.epochs, cfg.stages.joint.epochs):
            raise ValueError("baseline_epochs: resolve the 'auto' epochs first (ncs.config.sizing.resolve_auto)")
        e = cfg.stages.warmup.epochs + cfg.stages.joint.epochs
    return int(e)


def load_config(path: str, overrides: Optional[Dict[str, Any]] = None) -> "Config":
    """Read a YAML config (missing keys take defaults), apply `overrides` (nested dict), validate;
    its paths are relative to the file's folder."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found")
    try:
        with open(path, "r", encoding="utf-8") as f:
            given = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(given).__name__}")
    if overrides:
        given = merge(given, overrides)
    try:
        return resolve_config(given, base_dir=os.path.dirname(os.path.abspath(path)))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    """Nested dict merge; `over` wins (the one merge of configs and their overrides)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def dump_config(cfg: "Config", path: str) -> None:
    """Write the resolved config as YAML (atomically)."""
    from ncs_kernels.atomic import atomic_write_text
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None))


# The built-in synthetic setup of `ncs demo`; configs/demo.yaml is the same (a test checks).
# Sized for < 3 minutes for every stage and both baselines on 2 CPU cores with the torch backend.
DEMO_CONFIG: Dict[str, Any] = {
    "seed": 0,
    "threads": 1,
    "data": {"kind": "synthetic", "rows": 50000, "seed": 0, "conflict": 0.5,
             "split": {"by": "request", "fractions": [0.8, 0.1, 0.1], "seed": 0}},
    "model": {"embed_dim": 8, "hidden": [256, 128, 64]},
    "optim": {"lr": 0.001},
    "train": {"batch_size": 512, "eval_batch_size": 8192, "log_every": 20},
    "stages": {
        "warmup": {"epochs": 1},
        "masks": {"rounds": 4, "final_density": 0.2},
        "joint": {"epochs": 4},
    },
}
DEMO_ROWS = DEMO_CONFIG["data"]["rows"]


def demo_config(rows: Optional[int] = None) -> "Config":
    given = copy.deepcopy(DEMO_CONFIG)
    if rows is not None:
        given["data"]["rows"] = int(rows)
    return resolve_config(given)
