"""The experiment grids of docs/RESULTS.md: every run is (grid, run id, config overrides).

A grid is a list of RunSpec. Each run's config is a base YAML of configs/ plus nested overrides;
the driver (run_experiments.py) writes the resolved config next to the run directory and trains
it with `ncs train`, so a run can also be repeated by hand:

    ncs train --config RUNS/GRID/ID.yaml --out RUNS/GRID/ID

Grids (sizes are the ones RESULTS.md states; --tiny shrinks every grid to seconds, for the
smoke test):
  real      the 4,322-row Tencent Video sample, configs/lt4rec_sample.yaml, seeds 0-4, the split
            fixed (by request, 0.8/0.1/0.1, split seed 0); the model seed varies init and order
  real_splits  the same with split seed = model seed = 0..4: how much the 428-row test split moves
  real_ablation  five of the ablations below on the real sample, seeds 0-4 (vs the `real` runs)
  synth1m   synthetic data, 1,000,000 rows, planted conflict 0.5, a reduced model (d 8,
            256-128-64, batch 4096), seeds 0..2 (model seed; data and split fixed)
  synth1m_ablation  the loss weights 0.5 / 0.5 at 1M rows, seed 0 (vs synth1m seed 0)
  sweep     synthetic 200,000 rows, conflict 0 / 0.25 / 0.5 / 0.75 / 1, seeds 0-2, three models
  ablation  synthetic 200,000 rows, conflict 0.5, seeds 0-2, one option changed per variant,
            connection model only (its reference is the sweep's conflict-0.5 run of the same
            seed, which has the same config); "weights_05" changes the loss weights of every
            model, so it trains all three
  protocol_real  issue 10's protocol study on the real sample: PROTOCOL_VARIANTS (each mechanism
            alone and combined, over the pre-issue-10 protocol TODAY_REAL; defaults_all: the
            chosen defaults with every model), seeds 0-4, all models of each run
  protocol_synth  the same at 20,000 synthetic rows (conflict 0.5), the variants
            SYNTH_PROTOCOL_VARIANTS, seeds 0-4
  minimal_real  a config of ONLY data and model size (no base YAML: every other key its default,
            batch / lr / epochs "auto") on the real sample, seeds 0-4; two runs per seed (the paper's
            three models; the four competitors), which protocol_report.py pairs by seed
  minimal_synth1m  the same at 1,000,000 synthetic rows, conflict 0.5, data, split and model
            seed s = 0..4
  minimal_real_fixed, minimal_synth1m_fixed  the two under today's defaults: loss.balance fixed
            (the default since 2026-12-03), every model; the plain minimal grids pin the protocol
            they ran under (PROTOCOL_2026_12_02: PCGrad, select_warmup off)
  synth1m_probe  minimal_synth1m's seed 0, Connection_Share alone, the defaults and each of
            SYNTH1M_PROBES (one mechanism changed), compared on validation
  balance_sizes  loss.balance pcgrad (the default until 2026-12-03) against fixed as the data grows: the minimal
            synthetic config (conflict 0.5) at BALANCE_SIZES rows, seeds 0-4, Single_Task and
            Connection_Share (variant "<balance>_<rows/1000>k"; 1M rows: minimal_synth1m[_fixed])
  minimal_real_rewind_mlp, minimal_synth1m_rewind_mlp  Connection_Share of the _fixed grids (seeds 0-4)
            with stages.rewind mlp: the one mechanism that moved its 1M validation CVR most;
            ..._rewind_rounds: the same with stages.joint.select_rounds (REWIND_ROUNDS)
  rewind_sizes  today's defaults against REWIND_ROUNDS (stages.rewind mlp + joint.select_rounds) at
            BALANCE_SIZES rows, seeds 0-4 (variant "<today|rewind_rounds>_<rows/1000>k")
The fair tuning study (`ncs tune`, every model the same Optuna budget on the validation split) is
not a grid of `ncs train` runs: see TUNE_STUDIES and tune_study.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from ncs.config import merge  # noqa: F401  (the one config merge; G.merge for the driver)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"


@dataclass
class RunSpec:
    grid: str
    run_id: str
    base: str                      # a YAML of configs/, or "" (none: the defaults + overrides only)
    overrides: Dict[str, Any] = field(default_factory=dict)
    tags: Dict[str, Any] = field(default_factory=dict)   # what the report groups by


REAL_SEEDS = [0, 1, 2, 3, 4]
SYNTH1M_SEEDS = [0, 1, 2]
SMALL_SEEDS = [0, 1, 2]
CONFLICTS = [0.0, 0.25, 0.5, 0.75, 1.0]

# The synthetic setup: configs/demo.yaml (d 8, 256-128-64, lr 1e-3, warmup 1, 4 rounds to r 0.2,
# joint <= 4 epochs with early stopping on validation CVR MSE, patience 2) at a larger size.
SYNTH_1M = {
    "threads": 1,
    "data": {"rows": 1_000_000, "conflict": 0.5, "cache_dir": None},
    "train": {"batch_size": 4096, "eval_batch_size": 16384, "log_every": 50},
}
SYNTH_SMALL = {
    "threads": 1,
    "data": {"rows": 200_000, "conflict": 0.5, "cache_dir": None},
    "train": {"batch_size": 1024, "eval_batch_size": 16384, "log_every": 50},
}

# One option changed per variant (connection model only unless "models" is given).
ABLATIONS: Dict[str, Dict[str, Any]] = {
    "leaky": {"optim": {"mode": "leaky"}},
    "scope_layer": {"stages": {"masks": {"scope": "layer"}}},
    "rounds_2": {"stages": {"masks": {"rounds": 2}}},
    "density_0.5": {"stages": {"masks": {"final_density": 0.5}}},
    "density_0.05": {"stages": {"masks": {"final_density": 0.05}}},
    # warmup.epochs 0: the rewind target is then the model as initialised with a fresh optimizer
    # (the authors' code: ckpt_init saved right after variable initialisation)
    "random_init": {"stages": {"warmup": {"epochs": 0}}},
    "select_last": {"stages": {"masks": {"select": "last"}}},
    "select_best_any": {"stages": {"masks": {"select": "best_any"}}},
    "weights_0.5": {"models": ["single", "layer", "connection"],
                    "tasks": [{"name": "ctr", "label": "click", "space": "all", "loss": "bce", "weight": 0.5},
                              {"name": "cvr", "label": "conversion", "space": "clicked", "loss": "mse",
                               "weight": 0.5}]},
}

# The same options on the real sample (cheap: seconds per run), against the `real` grid's runs.
REAL_ABLATIONS = ["leaky", "scope_layer", "random_init", "select_last", "weights_0.5"]

# At 1M rows, one seed: the loss-weight sensitivity point of Table 2 (all three models).
SYNTH1M_ABLATIONS = ["weights_0.5"]

# Issue 10's protocol study: the mechanisms of the trainer, one at a time and combined, every model
# trained (the competitors too, when the build has them), on top of the PRE-issue-10 protocol
# ("today", spelled out so that later default changes do not move it). Tuned on validation only.
TODAY_REAL = {
    "loss": {"balance": "fixed"},
    "optim": {"moments": "shared"},
    "model": {"task_embed_dim": 0},
    "stages": {"subset": "first", "rewind": "all", "warmup": {"data_fraction": 1.0},
               "masks": {"data_fraction": 1.0},
               "joint": {"select": "last", "early_stopping": False, "embeddings": "train", "alternate": "cover"}},
}
# the synthetic "today" is configs/demo.yaml's: one epoch for all tasks, early stopping on cvr_mse
TODAY_SYNTH = {**TODAY_REAL, "stages": {**TODAY_REAL["stages"],
                                        "joint": {"select": "metric", "metric": "cvr_mse", "early_stopping": True,
                                                  "patience": 2, "embeddings": "train",
                                                  "alternate": "cover"}}}
PER_TASK = {"stages": {"joint": {"select": "per_task", "early_stopping": True, "patience": 2}}}
PROTOCOL_VARIANTS: Dict[str, Dict[str, Any]] = {
    "today": {},
    "per_task": PER_TASK,
    "uncertainty": {**PER_TASK, "loss": {"balance": "uncertainty"}},
    "uncertainty_lr0.05": {**PER_TASK, "loss": {"balance": "uncertainty", "balance_lr": 0.05}},
    "pcgrad": {**PER_TASK, "loss": {"balance": "pcgrad"}},
    "warmup1": {"stages": {**PER_TASK["stages"], "warmup": {"epochs": 1}}},
    "fraction0.5": {"stages": {**PER_TASK["stages"], "warmup": {"data_fraction": 0.5},
                               "masks": {"data_fraction": 0.5}}},
    "one_pass": {"stages": {**PER_TASK["stages"], "warmup": {"epochs": 1, "data_fraction": 0.5},
                            "masks": {"data_fraction": 0.5}}},
    "freeze_emb": {"stages": {**PER_TASK["stages"], "joint": {**PER_TASK["stages"]["joint"], "embeddings": "freeze"}}},
    "rewind_mlp": {"stages": {**PER_TASK["stages"], "rewind": "mlp"}},
    "cycle": {"stages": {"joint": {**PER_TASK["stages"]["joint"], "alternate": "cycle"}}},
    "cycle_uncertainty": {"loss": {"balance": "uncertainty"},
                          "stages": {"joint": {**PER_TASK["stages"]["joint"], "alternate": "cycle"}}},
    "cycle_pcgrad": {"loss": {"balance": "pcgrad"},
                     "stages": {"joint": {**PER_TASK["stages"]["joint"], "alternate": "cycle"}}},
    "cycle_fraction0.5": {"stages": {"warmup": {"data_fraction": 0.5}, "masks": {"data_fraction": 0.5},
                                     "joint": {**PER_TASK["stages"]["joint"], "alternate": "cycle"}}},
    "cycle_pcgrad_moments": {"loss": {"balance": "pcgrad"}, "optim": {"moments": "per_task"},
                             "stages": {"joint": {**PER_TASK["stages"]["joint"], "alternate": "cycle"}}},
    # the defaults with fixed loss weights instead of PCGrad (added after the 1M probes, 2026-12-02)
    "cycle_moments": {"optim": {"moments": "per_task"},
                      "stages": {"joint": {**PER_TASK["stages"]["joint"], "alternate": "cycle"}}},
    "cycle_pcgrad_temb": {"loss": {"balance": "pcgrad"}, "model": {"task_embed_dim": 4},
                          "stages": {"joint": {**PER_TASK["stages"]["joint"], "alternate": "cycle"}}},
    # the chosen protocol (the defaults since issue 10) with every model, competitors included
    "defaults_all": {"models": ["all"], "loss": {"balance": "pcgrad"}, "optim": {"moments": "per_task"},
                     "stages": {"joint": {**PER_TASK["stages"]["joint"], "alternate": "cycle"}}},
}

# --tiny: every grid in seconds (2 CPU cores): checks the plumbing, not the science.
TINY = {
    "threads": 1,
    "model": {"embed_dim": 4, "hidden": [16, 8, 4]},
    "train": {"batch_size": 256, "eval_batch_size": 4096, "log_every": 10},
    "stages": {"warmup": {"epochs": 1}, "masks": {"rounds": 2},
               "joint": {"epochs": 1, "early_stopping": False}},
}
TINY_SYNTH_ROWS = 3000


def _conf_tag(c: float) -> str:
    return f"{c:g}"


def grid(name: str, tiny: bool = False) -> List[RunSpec]:
    """The runs of a grid, in the order they are trained."""
    if name == "real":
        seeds = REAL_SEEDS[:2] if tiny else REAL_SEEDS
        runs = [RunSpec("real", f"seed{s}", "lt4rec_sample.yaml", {"seed": s}, {"seed": s}) for s in seeds]
    elif name == "real_splits":
        seeds = REAL_SEEDS[:2] if tiny else REAL_SEEDS
        runs = [RunSpec("real_splits", f"split{s}", "lt4rec_sample.yaml",
                        {"seed": s, "data": {"split": {"seed": s}}}, {"seed": s, "split_seed": s}) for s in seeds]
    elif name == "synth1m":
        seeds = SYNTH1M_SEEDS[:1] if tiny else SYNTH1M_SEEDS
        runs = [RunSpec("synth1m", f"seed{s}", "demo.yaml", merge(SYNTH_1M, {"seed": s}),
                        {"seed": s, "conflict": 0.5}) for s in seeds]
    elif name == "sweep":
        seeds = SMALL_SEEDS[:1] if tiny else SMALL_SEEDS
        conflicts = [0.0, 1.0] if tiny else CONFLICTS
        runs = [RunSpec("sweep", f"c{_conf_tag(c)}_seed{s}", "demo.yaml",
                        merge(SYNTH_SMALL, {"seed": s, "data": {"conflict": c}}), {"seed": s, "conflict": c})
                for c in conflicts for s in seeds]
    elif name == "ablation":
        seeds = SMALL_SEEDS[:1] if tiny else SMALL_SEEDS
        variants = list(ABLATIONS)[:2] if tiny else list(ABLATIONS)
        runs = []
        for v in variants:
            for s in seeds:
                over = merge(merge(SYNTH_SMALL, {"seed": s, "models": ["connection"]}), ABLATIONS[v])
                runs.append(RunSpec("ablation", f"{v}_seed{s}", "demo.yaml", over, {"seed": s, "variant": v}))
    elif name == "synth1m_ablation":
        runs = [RunSpec("synth1m_ablation", f"{v}_seed0", "demo.yaml",
                        merge(merge(SYNTH_1M, {"seed": 0, "models": ["connection"]}), ABLATIONS[v]),
                        {"seed": 0, "variant": v}) for v in SYNTH1M_ABLATIONS]
    elif name in ("protocol_real", "protocol_synth"):
        real = name == "protocol_real"
        seeds = REAL_SEEDS[:1] if tiny else REAL_SEEDS
        variants = ["today", "per_task"] if tiny else (list(PROTOCOL_VARIANTS) if real else SYNTH_PROTOCOL_VARIANTS)
        runs = []
        for v in variants:
            for s in seeds:
                base = merge(TODAY_REAL if real else merge(SYNTH_PROTOCOL, TODAY_SYNTH), {"seed": s})
                runs.append(RunSpec(name, f"{v}_seed{s}", "lt4rec_sample.yaml" if real else "demo.yaml",
                                    _deep(base, PROTOCOL_VARIANTS[v]), {"seed": s, "variant": v}))
    elif name in ("minimal_real", "minimal_synth1m"):
        return _minimal(name, tiny)  # tiny: the minimal config shrunk (rows), not TINY's schedule
    elif name in ("minimal_real_fixed", "minimal_synth1m_fixed"):
        # today's defaults: the minimal config unpinned, loss.balance fixed given (the default since
        # 2026-12-03, the key kept so that the grid does not move if the default does)
        runs = _minimal(name[:-len("_fixed")], tiny, pinned=False)
        for r in runs:
            r.grid, r.overrides, r.tags = name, merge(r.overrides, BALANCE_FIXED), dict(r.tags, variant="balance_fixed")
        return runs
    elif name.startswith(("minimal_real_rewind_", "minimal_synth1m_rewind_")):
        # Connection_Share alone under today's defaults plus the MLP-only rewind (stages.rewind mlp;
        # _rounds: and the mask rounds as selection candidates): the _fixed grid's runs of the
        # paper's models, reduced to the connection model; its tables take the other models from
        # the _fixed grid's JSON (protocol_report.py --versus --others)
        base, _, v = name.partition("_rewind_")
        if v not in ("mlp", "rounds"):
            raise ValueError(f"grid: expected one of {', '.join(GRIDS)}, got {name!r}")
        runs = [r for r in grid(base + "_fixed", tiny) if r.run_id.startswith("seed")]
        for r in runs:
            r.grid, r.tags = name, dict(r.tags, variant=f"rewind_{v}")
            r.overrides = merge(r.overrides, merge({"models": ["connection"]}, REWIND_MLP if v == "mlp" else REWIND_ROUNDS))
        return runs
    elif name == "rewind_sizes":
        return _rewind_sizes(tiny)
    elif name == "synth1m_probe":
        return _probes(tiny)
    elif name == "balance_sizes":
        return _balance_sizes(tiny)
    elif name == "real_ablation":
        seeds = REAL_SEEDS[:1] if tiny else REAL_SEEDS
        variants = REAL_ABLATIONS[:1] if tiny else REAL_ABLATIONS
        runs = []
        for v in variants:
            for s in seeds:
                over = merge({"seed": s, "models": ["connection"]}, ABLATIONS[v])
                runs.append(RunSpec("real_ablation", f"{v}_seed{s}", "lt4rec_sample.yaml", over,
                                    {"seed": s, "variant": v}))
    else:
        raise ValueError(f"grid: expected one of {', '.join(GRIDS)}, got {name!r}")
    if tiny:
        for r in runs:
            r.overrides = merge(r.overrides, TINY)
            if r.base != "lt4rec_sample.yaml":
                r.overrides = merge(r.overrides, {"data": {"rows": TINY_SYNTH_ROWS}})
            # keep a variant's own stage options on top of the tiny schedule
            if r.grid in ("ablation", "real_ablation", "synth1m_ablation"):
                r.overrides = merge(r.overrides, ABLATIONS[r.tags["variant"]])
    return runs


def _deep(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    return merge(base, over)


# the protocol study's synthetic size: what 2 shared CPU cores afford for 5 seeds x every variant
SYNTH_PROTOCOL = {
    "threads": 1,
    "data": {"rows": 20_000, "conflict": 0.5, "cache_dir": None},
}
SYNTH_PROTOCOL_VARIANTS = ["today", "per_task", "cycle_pcgrad", "cycle_pcgrad_moments", "cycle_fraction0.5",
                           "cycle_moments"]

# Configs of only data and model size (issue 10's "minimal config"): no base YAML.
MODEL_SIZE = {"model": {"embed_dim": 8, "hidden": [256, 128, 64]}}
# relative to configs/ (the folder a grid's config is resolved in), as in lt4rec_sample.yaml
SAMPLE_PATH = "../../shared/data/lt4rec/part-r-00002.gz"
MINIMAL_REAL = {"data": {"kind": "tfrecord", "path": SAMPLE_PATH, "options": {"max_len": 8}}, **MODEL_SIZE}
COMPETITORS = ["shared_bottom", "mmoe", "ple", "esmm"]
# what `auto` gave optim.lr at 1M rows until 2026-12-02 (ncs.config.sizing's old rule,
# 1e-4 * sqrt(4096 / batch)): the studies run under it pin it, so that they reproduce
LR_BEFORE_2026_12_02 = {"optim": {"lr": 1e-4}}
# the protocol of 2026-12-02 (PCGrad, the joint epochs only for the connection model's selection),
# which the runs of that day and the morning of 2026-12-03 trained under: their grids pin it, so
# that they reproduce under today's defaults (loss.balance fixed, stages.joint.select_warmup on)
PROTOCOL_2026_12_02 = {"loss": {"balance": "pcgrad"}, "stages": {"joint": {"select_warmup": False}}}


def minimal_synth(rows: int, seed: int) -> Dict[str, Any]:
    """The 1M-row minimal config of seed s (data, split and model seed s; threads and the eval
    batch / log interval do not change what is learned)."""
    return {"seed": seed, "threads": 1,
            "data": {"kind": "synthetic", "rows": rows, "seed": seed, "conflict": 0.5,
                     "split": {"by": "request", "fractions": [0.8, 0.1, 0.1], "seed": seed}},
            **MODEL_SIZE, "train": {"eval_batch_size": 16384, "log_every": 100}}


# At 1M rows, seed 0, Connection_Share alone: the defaults and one mechanism changed at a time
# (validation is what they are compared on; issue 10's "which mechanism moved what" at 1M rows).
SYNTH1M_PROBES: Dict[str, Dict[str, Any]] = {
    "defaults": {},
    "fraction0.5": {"stages": {"warmup": {"data_fraction": 0.5}, "masks": {"data_fraction": 0.5}}},
    "freeze_emb": {"stages": {"joint": {"embeddings": "freeze"}}},
    "density0.5": {"stages": {"masks": {"final_density": 0.5}}},
    "density0.1": {"stages": {"masks": {"final_density": 0.1}}},
    "temb4": {"model": {"task_embed_dim": 4}},
    "balance_fixed": {"loss": {"balance": "fixed"}},
    "moments_shared": {"optim": {"moments": "shared"}},
    "alternate_cover": {"stages": {"joint": {"alternate": "cover"}}},
    "rewind_mlp": {"stages": {"rewind": "mlp"}},
    "lr5e-4": {"optim": {"lr": 5e-4}},
}


BALANCE_FIXED = {"loss": {"balance": "fixed"}}
# the MLP-only rewind (mechanism 6 of issue 10): the embeddings keep what warmup and every mask
# round taught them; with select_warmup pinned on (the default since 2026-12-03), so that the grid
# does not move if that default does
REWIND_MLP = {"stages": {"rewind": "mlp", "joint": {"select_warmup": True, "select_rounds": False}}}


def _probes(tiny: bool) -> List[RunSpec]:
    base = merge(merge(minimal_synth(TINY_SYNTH_ROWS if tiny else 1_000_000, 0), PROTOCOL_2026_12_02),
                 {"models": ["connection"]})
    names = list(SYNTH1M_PROBES)[:2] if tiny else list(SYNTH1M_PROBES)
    return [RunSpec("synth1m_probe", k, "", merge(base, SYNTH1M_PROBES[k]), {"seed": 0, "variant": k})
            for k in names]


BALANCE_SIZES = (20_000, 50_000, 100_000, 300_000)
# the MLP-only rewind with the mask rounds as selection candidates (stages.joint.select_rounds): the
# connection model's rewind and selection only; measured on 2026-12-03, not the default (it loses on
# validation at 20k-300k rows: docs/RESULTS.md)
REWIND_ROUNDS = {"stages": {"rewind": "mlp", "joint": {"select_warmup": True, "select_rounds": True}}}
TODAY_STAGES = {"stages": {"rewind": "all", "joint": {"select_warmup": True, "select_rounds": False}}}


def _rewind_sizes(tiny: bool) -> List[RunSpec]:
    """The minimal synthetic config at BALANCE_SIZES rows, seeds 0-4 (1M rows: the
    minimal_synth1m_rewind_* grids): today's defaults (pinned) against REWIND_ROUNDS, Single_Task
    and Connection_Share in each (Single_Task the same run both ways, the options being the
    connection model's: trained twice so that each variant is paired by seed on its own),
    compared on validation."""
    sizes = BALANCE_SIZES[:1] if tiny else BALANCE_SIZES
    seeds = REAL_SEEDS[:1] if tiny else REAL_SEEDS
    runs = []
    for n in sizes:
        rows = TINY_SYNTH_ROWS if tiny else n
        for v, over in (("today", TODAY_STAGES), ("rewind_rounds", REWIND_ROUNDS)):
            for s in seeds:
                cfg = merge(merge(merge(minimal_synth(rows, s), BALANCE_FIXED), over), {"models": ["single", "connection"]})
                runs.append(RunSpec("rewind_sizes", f"{v}_{n // 1000}k_seed{s}", "", cfg,
                                    {"seed": s, "variant": f"{v}_{n // 1000}k", "rows": n}))
    return runs


def _balance_sizes(tiny: bool) -> List[RunSpec]:
    sizes = BALANCE_SIZES[:1] if tiny else BALANCE_SIZES
    seeds = REAL_SEEDS[:1] if tiny else REAL_SEEDS
    runs = []
    for n in sizes:
        rows = TINY_SYNTH_ROWS if tiny else n
        for bal in ("pcgrad", "fixed"):
            for s in seeds:
                # select_warmup off: the grid was begun before that option (2026-12-03) and compares
                # loss.balance alone; every run serves its tasks from joint epochs, as then
                over = merge(minimal_synth(rows, s), {"models": ["single", "connection"], "loss": {"balance": bal},
                                                      "stages": PROTOCOL_2026_12_02["stages"]})
                v = f"{bal}_{n // 1000}k"
                runs.append(RunSpec("balance_sizes", f"{v}_seed{s}", "", over,
                                    {"seed": s, "variant": v, "rows": n, "balance": bal}))
    return runs


def _minimal(name: str, tiny: bool, pinned: bool = True) -> List[RunSpec]:
    """pinned: the protocol the grid ran under (PROTOCOL_2026_12_02); the _fixed grids are the
    minimal configs under today's defaults (pinned=False, loss.balance fixed given)."""
    seeds = REAL_SEEDS[:1] if tiny else REAL_SEEDS
    runs = []
    for s in seeds:
        if name == "minimal_real":
            over = merge(MINIMAL_REAL, {"seed": s})
        else:
            over = minimal_synth(TINY_SYNTH_ROWS if tiny else 1_000_000, s)
        if pinned:
            over = merge(over, PROTOCOL_2026_12_02)
        runs.append(RunSpec(name, f"seed{s}", "", over, {"seed": s, "variant": "minimal"}))
        runs.append(RunSpec(name, f"comp_seed{s}", "", merge(over, {"models": COMPETITORS}),
                            {"seed": s, "variant": "minimal"}))
    return runs


# The fair tuning studies (tune_study.py): `ncs tune` arguments. Every model kind, the same number
# of trials over the same search space (ncs.tune_space), scored on the validation split; each best
# config then trained with seeds 0-4 and evaluated on test. trials: sized so that the study fits in
# ~40 CPU-minutes on one core (measured first: one trial 2-12 s; the study then took 23 CPU-minutes,
# 280 trials of 0.7-30 s wall, mean 8.9 s, at load average 7-8 on 2 cores, plus 35 final runs).
TUNE_STUDIES: Dict[str, Dict[str, Any]] = {
    "tune_real": {"config": "lt4rec_sample.yaml", "trials": 40, "seeds": 5, "models": "all", "sampler_seed": 0},
    # the same with issue 10's CTR condition as the constraint on validation (defined, not run yet)
    "tune_real_ctr": {"config": "lt4rec_sample.yaml", "trials": 40, "seeds": 5, "models": "all", "sampler_seed": 0,
                      "ctr_auc_margin": 0.002},
    # the same compute (40 trainings per model, ~42) spent on 14 trials scored on 3 seeds each:
    # less seed luck in the selection (ncs.tune --trial-seeds)
    "tune_real_ctr_r3": {"config": "lt4rec_sample.yaml", "trials": 14, "trial_seeds": 3, "seeds": 5, "models": "all",
                         "sampler_seed": 0, "ctr_auc_margin": 0.002},
    # 1M synthetic rows, conflict 0.5, the minimal config of seed 0 (minimal_synth1m's data and split):
    # every model 4 trials, the first the untuned defaults (start_at_base), then 3 sampled; CTR
    # within 0.002 of the tuned Single_Task on validation. Two processes, one per core: part b
    # takes its CTR floor from part a's tuned Single_Task (floor_from), so both parts are one
    # study with one constraint. One 1M trial is 1-5 min here, so 4 trials is what 2 cores allow.
    # Run (2026-12-01) under the `auto` lr rule of then, 1e-4 at 1M rows: pinned here, so that the
    # study reproduces (its search space is centred on it: lr in [1e-5, 1e-3]).
    "tune_synth1m_a": {"config": merge(merge(minimal_synth(1_000_000, 0), LR_BEFORE_2026_12_02), PROTOCOL_2026_12_02), "trials": 4, "seeds": 5,
                       "start_at_base": True, "models": "single,layer,connection", "sampler_seed": 0,
                       "ctr_auc_margin": 0.002},
    "tune_synth1m_b": {"config": merge(merge(minimal_synth(1_000_000, 0), LR_BEFORE_2026_12_02), PROTOCOL_2026_12_02), "trials": 4, "seeds": 5,
                       "start_at_base": True, "models": ",".join(COMPETITORS), "sampler_seed": 0,
                       "ctr_auc_margin": 0.002, "floor_from": "tune_synth1m_a"},
    # the same study under the `auto` lr of 2026-12-02 (1e-3 at 1M rows, the space lr in [1e-4, 1e-2]),
    # run 2026-12-03 under PROTOCOL_2026_12_02 (pinned)
    "tune_synth1m2_a": {"config": merge(minimal_synth(1_000_000, 0), PROTOCOL_2026_12_02), "trials": 4, "seeds": 5, "start_at_base": True,
                        "models": "single,layer,connection", "sampler_seed": 0, "ctr_auc_margin": 0.002},
    "tune_synth1m2_b": {"config": merge(minimal_synth(1_000_000, 0), PROTOCOL_2026_12_02), "trials": 4, "seeds": 5, "start_at_base": True,
                        "models": ",".join(COMPETITORS), "sampler_seed": 0, "ctr_auc_margin": 0.002,
                        "floor_from": "tune_synth1m2_a"},
    # Connection_Share again, under stages.joint.select_warmup (default since 2026-12-03: its warmup
    # epochs are selection candidates, as every epoch is for the other models, on which the option
    # does nothing): the same budget, space, sampler seed and CTR floor (part a's tuned Single_Task);
    # the study's result is parts a (Single_Task, Layer_Share) + b + c
    "tune_synth1m2_c": {"config": merge(minimal_synth(1_000_000, 0), {"loss": PROTOCOL_2026_12_02["loss"]}), "trials": 4, "seeds": 5, "start_at_base": True,
                        "models": "connection", "sampler_seed": 0, "ctr_auc_margin": 0.002,
                        "floor_from": "tune_synth1m2_a"},
    # Connection_Share a third time, with the two keys that make it win the 1M minimal comparison
    # (REWIND_ROUNDS: stages.rewind mlp + joint.select_rounds; they are the connection model's
    # alone): the same budget, space, sampler seed, PCGrad as parts a-c and part a's CTR floor; the
    # study is then parts a + b + d
    "tune_synth1m2_d": {"config": merge(merge(minimal_synth(1_000_000, 0), {"loss": PROTOCOL_2026_12_02["loss"]}), REWIND_ROUNDS),
                        "trials": 4, "seeds": 5, "start_at_base": True, "models": "connection", "sampler_seed": 0,
                        "ctr_auc_margin": 0.002, "floor_from": "tune_synth1m2_a"},
    # ... and under today's loss (fixed weights, the default since 2026-12-03; the other models'
    # parts ran under PCGrad, which moved none of them at 1M rows in minimal_synth1m_fixed): a+b+e
    "tune_synth1m2_e": {"config": merge(merge(minimal_synth(1_000_000, 0), BALANCE_FIXED), REWIND_ROUNDS),
                        "trials": 4, "seeds": 5, "start_at_base": True, "models": "connection", "sampler_seed": 0,
                        "ctr_auc_margin": 0.002, "floor_from": "tune_synth1m2_a"},
    # the same with common draws (ncs tune --common-draws): trials 1-3 of every model take the same
    # lr, loss weight and embed_dim (a seeded Halton sequence), so that 4 trials compare the models,
    # not their lr draws (tune_synth1m2: Connection_Share drew 2.1e-4, Layer_Share 1.9e-3)
    "tune_synth1m3_a": {"config": minimal_synth(1_000_000, 0), "trials": 4, "seeds": 5, "start_at_base": True,
                        "common_draws": True, "models": "single,layer,connection", "sampler_seed": 0,
                        "ctr_auc_margin": 0.002},
    "tune_synth1m3_b": {"config": minimal_synth(1_000_000, 0), "trials": 4, "seeds": 5, "start_at_base": True,
                        "common_draws": True, "models": ",".join(COMPETITORS), "sampler_seed": 0,
                        "ctr_auc_margin": 0.002, "floor_from": "tune_synth1m3_a"},
}

GRIDS = ("real", "real_splits", "real_ablation", "synth1m", "synth1m_ablation", "sweep", "ablation",
         "protocol_real", "protocol_synth", "minimal_real", "minimal_synth1m", "synth1m_probe",
         "minimal_real_fixed", "minimal_synth1m_fixed", "balance_sizes", "minimal_real_rewind_mlp",
         "minimal_synth1m_rewind_mlp", "minimal_real_rewind_rounds", "minimal_synth1m_rewind_rounds",
         "rewind_sizes")
