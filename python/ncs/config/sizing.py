"""Size-aware optimisation defaults: the keys a minimal config leaves at "auto".

The paper trains on 297M impressions with batch 4096, lr 1e-4, one warmup epoch and two joint
epochs: about 217,500 optimizer steps. Those settings leave a small dataset untrained (a 3,459-row
training split is less than one batch: one step per epoch). So `train.batch_size`, `optim.lr`,
`stages.warmup.epochs` and `stages.joint.epochs` default to "auto", resolved once the training
split's size n is known:

    batch_size    the largest power of two <= n / 16 (at least 16 steps an epoch), in [32, 4096]
    warmup.epochs max(1, ceil(50 / steps per epoch))      at least 50 warmup steps
    joint.epochs  max(2, ceil(150 / steps per epoch))     at least 150 joint steps (an upper bound:
                                                          early stopping ends the stage)
    lr            min(1e-3, 1e-4 * sqrt(batch / 4096) * sqrt(217,530 / T)), T the planned warmup +
                  joint steps (at the resolved batch and epochs, warmup's data_fraction counted):
                  the paper's lr at the paper's batch and step count, scaled by the square-root
                  rule for Adam in the batch (Malladi et al., NeurIPS 2022) and by 1/sqrt(T), the
                  constant step size for a budget of T steps, and never above Adam's 1e-3 (Kingma
                  & Ba). The lr rises as the run gets shorter and falls as its batch gets noisier.
                  The cap binds from ~50k to ~4M training rows; at 1M synthetic rows the uncapped
                  1.9e-3 collapsed Single_Task's CVR model to a constant (validation CVR MSE 0.0303
                  for two epochs, where 9e-4 gives 0.0171).

The paper's own setting (n = 297M) gives the paper's values. The step minimums were chosen on the
validation split of the real LT4REC sample, and the lr rule was checked on the validation splits
of that sample and of 1M synthetic rows (docs/RESULTS.md), never on a test split. (Until
2026-12-02 the lr was 1e-4 * sqrt(4096 / batch), which is the paper's 1e-4 from batch 4096 on,
whatever the step count: at 1M rows, 588 steps, it left every model undertrained.) A number in the
config is used as it is. The resolved values are logged and written to metrics.json
("config.auto").
"""
from __future__ import annotations

import math
from typing import Any, Dict, Tuple

AUTO = "auto"
PAPER_BATCH = 4096
PAPER_LR = 1e-4
MIN_BATCH = 32
MIN_STEPS_PER_EPOCH = 16
MIN_WARMUP_STEPS = 50
MIN_JOINT_STEPS = 150
PAPER_WARMUP_EPOCHS = 1
PAPER_JOINT_EPOCHS = 2
PAPER_ROWS = 297_000_000
# the paper's optimizer steps: (1 warmup + 2 joint epochs) x ceil(297M / 4096) = 217,530
MAX_LR = 1e-3
PAPER_STEPS = (PAPER_WARMUP_EPOCHS + PAPER_JOINT_EPOCHS) * math.ceil(PAPER_ROWS / PAPER_BATCH)


def auto_batch_size(n_train: int) -> int:
    want = max(1, int(n_train) // MIN_STEPS_PER_EPOCH)
    b = 1 << (want.bit_length() - 1)  # the largest power of two <= want
    return int(min(PAPER_BATCH, max(MIN_BATCH, b)))


def auto_lr(batch_size: int, steps: int) -> float:
    """The lr for a run of `steps` optimizer steps (warmup + joint) at `batch_size`."""
    if batch_size < 1 or steps < 1:
        raise ValueError(f"auto_lr: expected batch_size >= 1 and steps >= 1, got {batch_size}, {steps}")
    rule = PAPER_LR * math.sqrt(float(batch_size) / PAPER_BATCH) * math.sqrt(PAPER_STEPS / float(steps))
    return float(min(MAX_LR, rule))


def planned_steps(n_train: int, batch_size: int, warmup_epochs: int, joint_epochs: int,
                  warmup_fraction: float = 1.0) -> int:
    """Optimizer steps of the warmup and joint stages (joint's epochs an upper bound)."""
    warm_rows = max(1, int(round(n_train * float(warmup_fraction))))
    return int(warmup_epochs * math.ceil(warm_rows / batch_size) + joint_epochs * math.ceil(n_train / batch_size))


def _epochs(min_steps: int, steps_per_epoch: int, paper: int) -> int:
    return int(max(paper, math.ceil(min_steps / max(1, steps_per_epoch))))


def auto_values(cfg, n_train: int) -> Dict[str, Any]:
    """{dotted key: value} for every key of `cfg` left at "auto", for a training split of n_train rows."""
    if n_train < 1:
        raise ValueError(f"the training split is empty (n_train={n_train}); cannot size batch and epochs")
    out: Dict[str, Any] = {}
    bs = cfg.train.batch_size
    if bs == AUTO:
        bs = out["train.batch_size"] = auto_batch_size(n_train)
    steps = math.ceil(n_train / bs)
    warm, joint = cfg.stages.warmup.epochs, cfg.stages.joint.epochs
    warm = _epochs(MIN_WARMUP_STEPS, steps, PAPER_WARMUP_EPOCHS) if warm == AUTO else warm
    joint = _epochs(MIN_JOINT_STEPS, steps, PAPER_JOINT_EPOCHS) if joint == AUTO else joint
    if cfg.optim.lr == AUTO:  # from the resolved epochs, so it is chosen after them (and logged before)
        out["optim.lr"] = auto_lr(bs, planned_steps(n_train, bs, warm, joint, cfg.stages.warmup.data_fraction))
    if cfg.stages.warmup.epochs == AUTO:
        out["stages.warmup.epochs"] = warm
    if cfg.stages.joint.epochs == AUTO:
        out["stages.joint.epochs"] = joint
    return out


def has_auto(cfg) -> bool:
    return AUTO in (cfg.train.batch_size, cfg.optim.lr, cfg.stages.warmup.epochs, cfg.stages.joint.epochs)


def resolve_auto(cfg, n_train: int) -> Tuple[Any, Dict[str, Any]]:
    """(cfg with every "auto" replaced by its value for n_train training rows, the values chosen).
    A config without "auto" comes back as it is."""
    if not has_auto(cfg):
        return cfg, {}
    chosen = auto_values(cfg, n_train)
    over: Dict[str, Any] = {}
    for key, v in chosen.items():
        d = over
        *head, last = key.split(".")
        for h in head:
            d = d.setdefault(h, {})
        d[last] = v
    return cfg.override(over), chosen
