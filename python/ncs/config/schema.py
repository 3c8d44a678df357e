"""The config schema: every key, its validator, its default and its doc (docs/CONFIG.md).

SCHEMA is nested dicts of _Leaf; ncs.config builds the frozen dataclasses of a resolved config
from it, so a key is declared here and nowhere else. A validator returns the normalised value or
raises ConfigError naming the key path and what was expected.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional

from ..models import MODEL_KINDS, PAPER_KINDS, RUN_ORDER


class ConfigError(ValueError):
    """A configuration file or value is wrong; the message names the key path."""


# ---------------------------------------------------------------------------------------------
# Leaf validators: each returns the normalised value or raises ConfigError(path: expected ...).

class _Leaf:
    def __init__(self, check: Callable[[str, Any], Any], default: Any, doc: str = ""):
        self.check = check
        self.default = default
        self.doc = doc


def _fail(path: str, expected: str, value: Any):
    raise ConfigError(f"{path}: expected {expected}, got {value!r}")


def _int(lo: Optional[int] = None, hi: Optional[int] = None, optional: bool = False):
    def check(path, v):
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f" >= {lo}" if hi is None and lo is not None else (f" in [{lo}, {hi}]" if lo is not None else "")
            _fail(path, f"an integer{rng}" + (" or null" if optional else ""), v)
        return int(v)
    return check


def _float(lo: Optional[float] = None, hi: Optional[float] = None, lo_open: bool = False,
           hi_open: bool = False, optional: bool = False):
    def check(path, v):
        if v is None and optional:
            return None
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
        if ok:
            f = float(v)
            if lo is not None and (f < lo or (lo_open and f == lo)):
                ok = False
            if hi is not None and (f > hi or (hi_open and f == hi)):
                ok = False
        if not ok:
            lb = "" if lo is None else ("(" if lo_open else "[") + f"{lo}, "
            ub = "" if hi is None else f"{hi}" + (")" if hi_open else "]")
            rng = f" in {lb}{ub}" if lo is not None and hi is not None else (f" >{'' if lo_open else '='} {lo}" if lo is not None else "")
            _fail(path, f"a number{rng}" + (" or null" if optional else ""), v)
        return float(v)
    return check


def _or_auto(check: Callable[[str, Any], Any], expected: str):
    """check, or the string "auto" (a size-aware default, resolved by ncs.config.sizing)."""
    def f(path, v):
        if v == "auto":
            return "auto"
        try:
            return check(path, v)
        except ConfigError:
            _fail(path, f"{expected} or 'auto'", v)
    return f


def _bool(path, v):
    if not isinstance(v, bool):
        _fail(path, "true or false", v)
    return v


def _choice(*options, optional: bool = False):
    def check(path, v):
        if v is None and optional:
            return None
        if v not in options:
            _fail(path, "one of " + ", ".join(map(str, options)) + (" or null" if optional else ""), v)
        return v
    return check


def _str(optional: bool = False):
    def check(path, v):
        if v is None and optional:
            return None
        if not isinstance(v, str) or not v:
            _fail(path, "a non-empty string" + (" or null" if optional else ""), v)
        return v
    return check


def _data_path(path, v):
    """A file / directory path, or a {train, valid, test} mapping of them (the split is given)."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, dict):
        if set(v) != {"train", "valid", "test"} or not all(isinstance(x, str) and x for x in v.values()):
            _fail(path, "a path, or a mapping {train: PATH, valid: PATH, test: PATH}", v)
        return {k: v[k] for k in ("train", "valid", "test")}
    _fail(path, "a path, or a mapping {train: PATH, valid: PATH, test: PATH}", v)


def _int_list(min_len: int = 1):
    def check(path, v):
        if not isinstance(v, (list, tuple)) or len(v) < min_len or any(
            isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in v
        ):
            _fail(path, f"a list of at least {min_len} positive integers", v)
        return [int(x) for x in v]
    return check


def _fractions(path, v):
    if not isinstance(v, (list, tuple)) or len(v) != 3 or any(
        isinstance(x, bool) or not isinstance(x, (int, float)) or x < 0 for x in v
    ):
        _fail(path, "three non-negative numbers [train, valid, test]", v)
    if abs(sum(v) - 1.0) > 1e-6 or v[0] <= 0 or v[1] <= 0 or v[2] <= 0:
        _fail(path, "three positive fractions [train, valid, test] summing to 1", v)
    return [float(x) for x in v]


def _betas(path, v):
    if not isinstance(v, (list, tuple)) or len(v) != 2 or any(
        isinstance(x, bool) or not isinstance(x, (int, float)) or not (0 <= x < 1) for x in v
    ):
        _fail(path, "two numbers in [0, 1)", v)
    return [float(x) for x in v]


def _dict_any(path, v):
    if v is None:
        return {}
    if not isinstance(v, dict):
        _fail(path, "a mapping", v)
    return dict(v)


BALANCE_METHODS = ("fixed", "uncertainty", "pcgrad")
LOSSES = ("bce", "focal", "mse")
BACKEND_NAMES = ("auto", "torch", "cpu", "triton", "cuda")


def _models(path, v):
    if isinstance(v, str):
        v = [s.strip() for s in v.split(",") if s.strip()]
    if isinstance(v, (list, tuple)) and list(v) == ["all"]:
        v = list(MODEL_KINDS)
    if not isinstance(v, (list, tuple)) or not v:
        _fail(path, f"a non-empty list of model kinds from {', '.join(MODEL_KINDS)}", v)
    for m in v:
        if m not in MODEL_KINDS:
            _fail(path, f"model kinds from {', '.join(MODEL_KINDS)}", m)
    if len(set(v)) != len(v):
        _fail(path, "no repeated model kinds", v)
    # run in a fixed order: the baselines first, so that a demo prints them as they finish
    return [m for m in RUN_ORDER if m in v]


TASK_KEYS = {
    "name": _Leaf(_str(), None, "task name (a Python identifier), e.g. ctr"),
    "label": _Leaf(_str(), None, "label column: click, conversion, ..."),
    "space": _Leaf(_choice("all", "clicked"), "all", "samples of the task: all rows, or clicked rows only"),
    "loss": _Leaf(_choice(*LOSSES), "bce", "bce (sigmoid + BCE), focal (sigmoid + focal), mse (sigmoid + MSE)"),
    "weight": _Leaf(_float(0.0), 1.0, "omega_k of Eq. 2"),
}


def _tasks(path, v):
    if not isinstance(v, list) or len(v) < 2:
        _fail(path, "a list of at least two tasks {name, label, space, loss, weight}", v)
    out = []
    for i, t in enumerate(v):
        p = f"{path}[{i}]"
        if not isinstance(t, dict):
            _fail(p, "a mapping {name, label, space, loss, weight}", t)
        for k in t:
            if k not in TASK_KEYS:
                raise ConfigError(f"{p}.{k}: unknown key; expected one of {', '.join(TASK_KEYS)}")
        for req in ("name", "label"):
            if req not in t:
                raise ConfigError(f"{p}.{req}: missing; every task needs a name and a label")
        task = {k: leaf.check(f"{p}.{k}", t.get(k, leaf.default)) for k, leaf in TASK_KEYS.items()}
        if not task["name"].isidentifier():
            _fail(f"{p}.name", "a Python identifier (letters, digits, _)", task["name"])
        out.append(task)
    names = [t["name"] for t in out]
    if len(set(names)) != len(names):
        _fail(path, "distinct task names", names)
    return out


DEFAULT_TASKS = [
    {"name": "ctr", "label": "click", "space": "all", "loss": "bce", "weight": 0.7},
    {"name": "cvr", "label": "conversion", "space": "clicked", "loss": "mse", "weight": 0.3},
]

# The schema: nested dicts of _Leaf. Every key has a default.
SCHEMA: Dict[str, Any] = {
    "seed": _Leaf(_int(0), 0, "seeds model init and the data order (a function of (seed, stage, epoch))"),
    "backend": _Leaf(_choice(*BACKEND_NAMES), "auto", "ncs_kernels backend for layers and the optimizer"),
    "device": _Leaf(_choice("auto", "cpu", "cuda"), "auto", "auto: cuda when available"),
    "threads": _Leaf(_int(1, optional=True), None,
                     "torch CPU intra-op threads during the run; null: torch's default. Small models "
                     "on a busy CPU run far faster with 1 (no OpenMP barrier waits)"),
    "models": _Leaf(_models, list(PAPER_KINDS),
                    "which models to train, from " + ", ".join(MODEL_KINDS) + " (or all); see docs/TRAINER.md"),
    "data": {
        "kind": _Leaf(_choice("synthetic", "tfrecord", "csv", "parquet", "encoded"), "synthetic",
                      "reader; encoded: a directory written by `ncs data convert|synth`, streamed (docs/DATA.md)"),
        "path": _Leaf(_data_path, None,
                      "file (tfrecord/csv/parquet) or encoded directory, relative to the config file; or a "
                      "mapping {train, valid, test} of them, encoded with one vocabulary (then no split is made)"),
        "rows": _Leaf(_int(1), 20000, "synthetic: number of rows"),
        "seed": _Leaf(_int(0), 0, "synthetic: generator seed"),
        "conflict": _Leaf(_float(0.0, 1.0), 0.5, "synthetic: how much the CTR and CVR signals disagree"),
        "options": _Leaf(_dict_any, {}, "extra reader options passed through to ncs.data.load_dataset, e.g. "
                                  "schema (a file: relative to the config file), max_len, skip_corrupt, "
                                  "on_bad_row (error: a bad row is an error naming file, "
                                  "row, column; skip: dropped, counted in split.json; docs/RELIABILITY.md)"),
        "cache_dir": _Leaf(_str(optional=True), None,
                           "cache for encoded data (reader-specific), relative to the config file"),
        "click_label": _Leaf(_str(), "click", "the label whose positives form the 'clicked' space"),
        "stream": {
            "window_rows": _Leaf(_int(1), 1 << 20,
                                 "encoded data: rows per shuffle window (shards are permuted, rows permuted "
                                 "within a window); a split that fits one window gets the in-memory order exactly"),
            "prefetch": _Leaf(_int(0), 4, "encoded data: batches gathered ahead on a background thread (0: none)"),
            "verify": _Leaf(_bool, True, "encoded data: check each shard's checksums on its first use"),
        },
        "split": {
            "by": _Leaf(_choice("request", "user", "random", "time"), "request",
                        "group kept whole in one split; time: rows ordered by the 'time' group, cut at the "
                        "fractions, no time value in two parts (the paper's split)"),
            "fractions": _Leaf(_fractions, [0.8, 0.1, 0.1], "train, valid, test"),
            "seed": _Leaf(_int(0), 0, "split seed"),
        },
    },
    "tasks": _Leaf(_tasks, DEFAULT_TASKS, "the tasks; the first bce/focal task is the 'CTR' of reports"),
    "model": {
        "embed_dim": _Leaf(_int(1), 64, "d: embedding width per field"),
        "hidden": _Leaf(_int_list(1), [512, 256, 128], "MLP widths; the first layer is the fused cross layer"),
        "pooling": _Leaf(_choice("mean", "sum"), "mean", "pooling of multi-valued fields"),
        "pad_included": _Leaf(_bool, False,
                              "true: padding slots count as row 0 in the pooling (the authors' code); "
                              "false: padding is excluded"),
        "embedding_init_std": _Leaf(_float(0.0, lo_open=True), 0.05, "normal init of embedding rows"),
        "task_embed_dim": _Leaf(_int(0), 0,
                                "layer and connection models: width d_p of a private embedding table per task "
                                "and field, concatenated to the shared one in that task's forward (STEM); "
                                "0: embeddings fully shared (the paper)"),
        "experts": _Leaf(_int(1, optional=True), None, "mmoe: number of experts; null: tasks + 1 (as many as ple's "
                                                         "default 1 shared + 1 per task)"),
        "shared_experts": _Leaf(_int(0), 1, "ple: shared experts per level"),
        "task_experts": _Leaf(_int(0), 1, "ple: experts per task and level"),
        "ple_levels": _Leaf(_int(1), 1, "ple: CGC levels; the bottom (hidden minus the last layer) is split "
                                        "into this many contiguous chunks, one per level"),
    },
    "loss": {
        "focal_gamma": _Leaf(_float(0.0), 2.0, "focal loss gamma"),
        "focal_alpha": _Leaf(_float(0.0, 1.0, optional=True), 0.25, "focal loss alpha (null: no alpha)"),
        "balance": _Leaf(_choice(*BALANCE_METHODS), "fixed",
                         "how task losses are combined on shared parameters (docs/TRAINER.md): fixed: "
                         "omega_k of Eq. 2; uncertainty: Kendall et al. 2018, learned log-variances "
                         "(MSE tasks: 0.5 exp(-s) L + 0.5 s, BCE/focal tasks: exp(-s) L + 0.5 s, each times "
                         "omega_k); pcgrad: Yu et al. 2020, a task's gradient on the shared parameters is "
                         "projected off every other task's gradient it conflicts with"),
        "balance_lr": _Leaf(_float(0.0, lo_open=True), 0.01, "uncertainty: Adam learning rate of the log-variances"),
    },
    "optim": {
        "lr": _Leaf(_or_auto(_float(0.0, lo_open=True), "a number > 0"), "auto",
                    "Adam learning rate of the MLPs and heads; auto: 1e-4 * sqrt(batch_size / 4096) * "
                    "sqrt(217530 / T), T the planned warmup + joint steps: the paper's 1e-4 at its batch "
                    "and step count, scaled by the square-root rules in batch and steps (ncs.config.sizing)"),
        "betas": _Leaf(_betas, [0.9, 0.999], "Adam betas"),
        "eps": _Leaf(_float(0.0), 1e-8, "Adam eps"),
        "weight_decay": _Leaf(_float(0.0), 0.0, "L2 weight decay of the MLPs (never the embeddings)"),
        "mode": _Leaf(_choice("strict", "leaky"), "strict",
                      "strict: a task's step leaves weights outside its mask (and their moments) unchanged; "
                      "leaky: plain Adam step (the authors' code)"),
        "moments": _Leaf(_choice("shared", "per_task"), "per_task",
                         "Adam moments of the masked (shared) MLP weights. shared: one exp_avg/exp_avg_sq per "
                         "weight, so the task with the larger gradients (CTR) dominates the second moment; "
                         "per_task: each task's steps (mask generation, joint) use their own moments and step "
                         "count, started at zero; mixed batches (warmup, baselines), biases and heads keep "
                         "the shared ones"),
        "embedding_lr": _Leaf(_float(0.0, lo_open=True, optional=True), None, "null: same as lr"),
        "embedding_step": _Leaf(_choice("sparse_adam", "fused"), "fused",
                                "how the embedding step is computed (same update, any loss.balance, under torchrun "
                                "too): fused = the pooled gradient kept by the backward, one fused row-wise Adam "
                                "kernel (ncs_kernels.embedding_adam, fbgemm TBE style; ~2x faster stages); "
                                "sparse_adam = nn.EmbeddingBag's sparse gradient + torch.optim.SparseAdam"),
    },
    "train": {
        "batch_size": _Leaf(_or_auto(_int(1), "an integer >= 1"), "auto",
                            "training batch size; auto: the largest power of two <= n_train / 16 in [32, "
                            "4096] (the paper's 4096 from 65,536 training rows on)"),
        "eval_batch_size": _Leaf(_int(1), 16384, "evaluation batch size"),
        "log_every": _Leaf(_int(1), 50, "steps between loss read-backs (.item()) for the progress bar"),
        "on_nonfinite": _Leaf(_choice("error", "skip_batch"), "error",
                              "a NaN/inf loss or gradient: error stops naming the stage, epoch and step "
                              "(the last checkpoint is the last good state); skip_batch skips that "
                              "batch's step and counts it (one host sync per step)"),
        "diagnostics_batches": _Leaf(_int(0), 2,
                                     "gradient diagnostics after every epoch: per task, the gradient norm on "
                                     "each shared parameter group and the cosine between tasks, on this many "
                                     "fixed training batches (0: off)"),
        "checkpoint_every": _Leaf(_int(1, optional=True), None,
                                  "also checkpoint every N steps inside an epoch, so that --resume restarts at "
                                  "the exact batch (long epochs on large data); null: at epoch ends only"),
    },
    "stages": {
        "subset": _Leaf(_choice("first", "random"), "first",
                        "which training rows warmup.data_fraction / masks.data_fraction keep: the first rows "
                        "in data order (the earliest, for time-ordered logs) or a seeded random subset"),
        "rewind": _Leaf(_choice("all", "mlp"), "all",
                        "what the rewinds (each mask round, the joint stage) restore to the warmup snapshot: "
                        "all: every weight and optimizer state (Algorithm 1); mlp: the MLP and heads only, "
                        "the embeddings keep training across rounds and into the joint stage"),
        "warmup": {
            "epochs": _Leaf(_or_auto(_int(0), "an integer >= 0"), "auto",
                            "N_warm: epochs of mixed batches, Eq. 2, every weight; auto: max(1, ceil(50 / "
                            "steps per epoch)), the paper's 1 on large data"),
            "data_fraction": _Leaf(_float(0.0, 1.0, lo_open=True), 1.0,
                                   "fraction of the training rows warmup sees (stages.subset says which)"),
        },
        "masks": {
            "rounds": _Leaf(_int(1), 4, "n: pruning rounds"),
            "final_density": _Leaf(_float(0.0, 1.0, lo_open=True, hi_open=True), 0.2, "r: density after n rounds"),
            "prune_fraction": _Leaf(_float(0.0, 1.0, lo_open=True, hi_open=True, optional=True), None,
                                    "q per round; null: q = 1 - r^(1/n)"),
            "epochs_per_round": _Leaf(_int(1), 1, "training epochs of the task per round"),
            "data_fraction": _Leaf(_float(0.0, 1.0, lo_open=True), 1.0,
                                   "fraction of the training rows the mask rounds see (stages.subset says which)"),
            "scope": _Leaf(_choice("global", "layer"), "global", "rank magnitudes over all masked layers or per layer"),
            "count_rounding": _Leaf(_choice("round", "floor"), "round",
                                    "pruned count = round-half-up(q * survivors) or floor(q * survivors)"),
            "select": _Leaf(_choice("best", "last", "best_any"), "best",
                            "best: best validation round among the pruned rounds 1..n; last: round n; "
                            "best_any: also round 0 (the dense mask)"),
        },
        "joint": {
            "epochs": _Leaf(_or_auto(_int(0), "an integer >= 0"), "auto",
                            "E: epochs of alternating task batches (an upper bound with early stopping); auto: "
                            "max(2, ceil(150 / steps per epoch)), the paper's 2 on large data"),
            "early_stopping": _Leaf(_bool, True,
                                    "stop when no task's validation metric improved for `patience` epochs "
                                    "(select: metric: when joint.metric did not)"),
            "patience": _Leaf(_int(1), 2, "epochs without improvement before stopping"),
            "metric": _Leaf(_str(optional=True), None,
                            "select: metric: the validation metric that picks the epoch, e.g. cvr_mse; null: the "
                            "last task's main metric"),
            "select": _Leaf(_choice("per_task", "metric", "last"), "per_task",
                            "which epoch's weights are served (joint stage and baselines): per_task: each task "
                            "its own best validation epoch (early stopping ends when no task improved for "
                            "`patience` epochs); metric: one epoch for all tasks, the best by joint.metric; "
                            "last: the last epoch (no early stopping)"),
            "select_warmup": _Leaf(_bool, True,
                                   "connection, select per_task / metric: the warmup epochs are candidates "
                                   "too (a task whose best validation epoch is a warmup one is served by the "
                                   "dense warmup model of that epoch), so the connection model chooses among "
                                   "every epoch its weights went through, as the baselines do; false: the "
                                   "joint epochs only (before 2026-12-03)"),
            "select_rounds": _Leaf(_bool, False,
                                   "connection, select per_task: every mask round is a candidate for its own "
                                   "task too (round k of task t: the sub-network M_k trained on t alone), so a "
                                   "task whose best validation model came out of mask generation (CTR under "
                                   "rewind: mlp, whose embeddings keep training through the rounds) is served "
                                   "from it"),
            "alternate": _Leaf(_choice("cover", "cycle"), "cycle",
                               "task batches of the joint stage: cover: round-robin until every space is "
                               "covered once (a small space, e.g. CVR's clicked rows, runs out early); cycle: "
                               "smaller spaces are gone over again so every task takes as many steps as the largest"),
            "embeddings": _Leaf(_choice("train", "freeze"), "train",
                                "freeze: the joint stage leaves the embeddings at their rewound (warmup) values "
                                "and trains the MLP and heads only"),
        },
    },
    "baselines": {
        "epochs": _Leaf(_int(0, optional=True), None,
                        "epochs of the single/layer baselines; null: warmup + joint epochs, the number of "
                        "passes the connection model's final weights have seen"),
    },
}


