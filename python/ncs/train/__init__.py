"""The three-stage NCS4CVR trainer (Algorithm 1) and the baselines' training.

    from ncs.train import run
    results = run(cfg, "runs/demo")                 # every model of cfg.models

runner         a whole run and its run directory (rundir: its lock; outputs: model file, masks, table)
stages         ModelTrainer: warmup(), masks() / mask_round(), joint(), baseline(); resumable
epoch          one pass over a batch list (forward, loss, backward, masked step)
position       Position: where training is (stage, epoch, task, round, step, ...), JSON in checkpoints
checkpointing  save / restore / the warmup snapshot (init) / rewind
checkpoint     the file format: safetensors + JSON, CRC-checked, atomic, no pickle
early          EarlyStopper: model selection over epochs, early stopping, the served predictor
evaluate       the one evaluation (trainer and `ncs eval`)
optimizers     MaskedAdam over the dense parameters + the embedding step
batches        a split as device tensors; batch orders as functions of (seed, stage, epoch)
pruning        magnitude pruning rounds, prune counts, q = 1 - r^(1/n), round selection
protocol       loss balancing, gradient diagnostics, data subsets, the per-task predictor
guards         the non-finite loss / gradient guard
"""
from .early import EarlyStopper
from .optimizers import Optimizers
from .position import Position
from .pruning import fraction_per_round, prune_count, prune_round, select_round
from .runner import RunError, load_model, results_table, run
from .stages import ModelTrainer, StopTraining

__all__ = ["run", "RunError", "load_model", "results_table", "ModelTrainer", "Optimizers", "StopTraining",
           "Position", "EarlyStopper", "prune_round", "prune_count", "fraction_per_round",
           "select_round"]
