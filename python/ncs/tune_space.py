"""The search space of `ncs tune` (the same for every model; see ncs.tune's docstring) and a
trial's config: the base config with the trial's values."""
from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any, Dict

if TYPE_CHECKING:
    from .config import Config

from .config import baseline_epochs


# ---------------------------------------------------------------------------------------------
# the search space

def space(kind: str, base: "Config") -> Dict[str, Dict[str, Any]]:
    """{param name: {"type": "float"|"int"|"categorical", ...}} of model `kind` around config `base`."""
    lr = base.optim.lr
    d = base.model.embed_dim
    st = base.stages
    t = len(base.tasks)
    dims = sorted({max(1, d // 2), d, 2 * d})
    sp: Dict[str, Dict[str, Any]] = {
        "lr": {"type": "float", "low": lr / 10, "high": lr * 10, "log": True},
        "w0": {"type": "float", "low": 0.1, "high": 0.9},
        "embed_dim": {"type": "categorical", "choices": dims},
    }
    if kind == "connection":
        sp["warmup_epochs"] = {"type": "int", "low": 1, "high": max(1, 2 * st.warmup.epochs)}
        sp["joint_epochs"] = {"type": "int", "low": 1, "high": max(1, 2 * st.joint.epochs)}
        sp["final_density"] = {"type": "float", "low": 0.05, "high": 0.8, "log": True}
    else:
        sp["epochs"] = {"type": "int", "low": 1, "high": max(1, 2 * baseline_epochs(base))}
    if kind in ("connection", "layer"):
        sp["task_embed_dim"] = {"type": "categorical", "choices": [0, max(1, d // 2)]}
    if kind == "mmoe":
        sp["experts"] = {"type": "int", "low": t, "high": 2 * t}
    if kind == "ple":
        sp["shared_experts"] = {"type": "int", "low": 1, "high": 2}
        sp["task_experts"] = {"type": "int", "low": 1, "high": 2}
    return sp


def base_params(kind: str, base: "Config") -> Dict[str, Any]:
    """The base config's own point of the search space (each value clipped into its range; a
    categorical that the base config's value is not among takes its first choice): the trial
    `--start-at-base` enqueues first, so the tuned config is never worse on validation than
    the untuned one (with one trial seed)."""
    sp = space(kind, base)
    st = base.stages
    m = base.model
    masks = st.masks
    density = (masks.final_density if masks.prune_fraction is None
               else (1.0 - masks.prune_fraction) ** masks.rounds)
    raw: Dict[str, Any] = {"lr": base.optim.lr, "w0": base.tasks[0].weight, "embed_dim": m.embed_dim,
                           "warmup_epochs": st.warmup.epochs, "joint_epochs": st.joint.epochs,
                           "final_density": density, "task_embed_dim": m.task_embed_dim,
                           "experts": m.experts if m.experts is not None else len(base.tasks) + 1,
                           "shared_experts": m.shared_experts, "task_experts": m.task_experts}
    if kind != "connection":
        raw["epochs"] = baseline_epochs(base)
    out: Dict[str, Any] = {}
    for name, s in sp.items():
        v = raw[name]
        if s["type"] == "categorical":
            out[name] = v if v in s["choices"] else s["choices"][0]
        elif s["type"] == "int":
            out[name] = int(min(max(int(v), s["low"]), s["high"]))
        else:
            out[name] = float(min(max(float(v), s["low"]), s["high"]))
    return out


# The axes every model kind has (space() always holds them): what --common-draws pairs.
COMMON = ("lr", "w0", "embed_dim")
_PRIMES = (2, 3, 5)  # one Halton base per axis of COMMON


def _radical_inverse(j: int, b: int) -> float:
    """The van der Corput radical inverse of j >= 1 in base b (a Halton coordinate)."""
    f, x = 1.0, 0.0
    while j > 0:
        f /= b
        x += f * (j % b)
        j //= b
    return x


def common_draw(j: int, base: "Config", seed: int) -> Dict[str, Any]:
    """The j-th (j >= 1) common point of the axes COMMON, the same for every model kind: a Halton
    point (bases 2, 3, 5) shifted modulo 1 by a seeded random vector (Cranley-Patterson rotation),
    mapped into each axis's range as space() defines it (lr log-uniform, w0 uniform, embed_dim one
    of its choices). Low-discrepancy and extensible: point j does not depend on how many follow,
    so a study whose --trials grows keeps its earlier points."""
    sp = space("single", base)  # COMMON's ranges are the same for every kind
    rng = random.Random(f"ncs-common-draws/{seed}")
    out: Dict[str, Any] = {}
    for name, b in zip(COMMON, _PRIMES):
        s = sp[name]
        u = (_radical_inverse(j, b) + rng.random()) % 1.0
        if s["type"] == "categorical":
            out[name] = s["choices"][min(int(u * len(s["choices"])), len(s["choices"]) - 1)]
        elif s.get("log"):
            out[name] = math.exp(math.log(s["low"]) + u * (math.log(s["high"]) - math.log(s["low"])))
        else:
            out[name] = s["low"] + u * (s["high"] - s["low"])
    return out


def _suggest(trial, sp: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    out = {}
    for name, s in sp.items():
        if s["type"] == "float":
            out[name] = trial.suggest_float(name, s["low"], s["high"], log=s.get("log", False))
        elif s["type"] == "int":
            out[name] = trial.suggest_int(name, s["low"], s["high"])
        else:
            out[name] = trial.suggest_categorical(name, s["choices"])
    return out


def overrides(kind: str, base: "Config", params: Dict[str, Any]) -> Dict[str, Any]:
    """The config overrides (a nested dict for config.merge) of a trial's params."""
    over: Dict[str, Any] = {"models": [kind], "optim": {"lr": float(params["lr"])},
                            "model": {"embed_dim": int(params["embed_dim"])}}
    w0 = float(params["w0"])
    rest = base.tasks[1:]
    tot = sum(t.weight for t in rest)
    tasks = [dict(base.tasks[0].to_dict(), weight=w0)]
    for t in rest:
        share = t.weight / tot if tot > 0 else 1.0 / len(rest)
        tasks.append(dict(t.to_dict(), weight=(1.0 - w0) * share))
    over["tasks"] = tasks
    if kind == "connection":
        over["stages"] = {"warmup": {"epochs": int(params["warmup_epochs"])},
                          "joint": {"epochs": int(params["joint_epochs"])},
                          "masks": {"final_density": float(params["final_density"]), "prune_fraction": None}}
    else:
        over["baselines"] = {"epochs": int(params["epochs"])}
    for key in ("task_embed_dim", "experts", "shared_experts", "task_experts"):
        if key in params:
            over["model"][key] = int(params[key])
    return over


def trial_config(kind: str, base: "Config", params: Dict[str, Any]) -> "Config":
    return base.override(overrides(kind, base, params))
