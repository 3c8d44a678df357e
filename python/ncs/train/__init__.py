"""The three-stage NCS4CVR trainer (Algorithm 1) and the baselines' training.

    from ncs.train import run
    results = run(cfg, "runs/demo")                 # every model of cfg["models"]

batches     a split as device tensors; batch orders as functions of (seed, stage, epoch)
pruning     magnitude pruning rounds, prune counts, round selection
checkpoint  safetensors + JSON checkpoints, atomic, no pickle
stages      ModelTrainer: warmup, mask generation, joint training, baselines; resumable
runner      a whole run and its run directory
"""
from .pruning import fraction_per_round, prune_count, prune_round, select_round
from .runner import RunError, load_model, results_table, run
from .stages import ModelTrainer, Optimizers, StopTraining

__all__ = ["run", "RunError", "load_model", "results_table", "ModelTrainer", "Optimizers", "StopTraining",
           "prune_round", "prune_count", "fraction_per_round", "select_round"]
