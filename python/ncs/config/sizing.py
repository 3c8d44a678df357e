"""Size-aware optimisation defaults: the keys a minimal config leaves at "auto".

The paper trains on 297M impressions with batch 4096, lr 1e-4, one warmup epoch and two joint
epochs. Those settings leave a small dataset untrained (a 3,459-row training split is less than
one batch: one step per epoch). So `train.batch_size`, `optim.lr`, `stages.warmup.epochs` and
`stages.joint.epochs` default to "auto", resolved once the training split's size n is known:

    batch_size    the largest power of two <= n / 16 (at least 16 steps an epoch), in [32, 4096]
    lr            1e-4 * sqrt(4096 / batch_size): the paper's lr at the paper's batch, scaled by
                  the square-root rule for Adam (Malladi et al., NeurIPS 2022)
    warmup.epochs max(1, ceil(50 / steps per epoch))      at least 50 warmup steps
    joint.epochs  max(2, ceil(150 / steps per epoch))     at least 150 joint steps (an upper bound:
                                                          early stopping ends the stage)

Above about 1M training rows every rule gives the paper's value. The step minimums were chosen on
the validation split of the real LT4REC sample (docs/RESULTS.md), never on a test split. A number
in the config is used as it is. The resolved values are logged and written to metrics.json
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


def auto_batch_size(n_train: int) -> int:
    want = max(1, int(n_train) // MIN_STEPS_PER_EPOCH)
    b = 1 << (want.bit_length() - 1)  # the largest power of two <= want
    return int(min(PAPER_BATCH, max(MIN_BATCH, b)))


def auto_lr(batch_size: int) -> float:
    return float(PAPER_LR * math.sqrt(PAPER_BATCH / float(batch_size)))


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
    if cfg.optim.lr == AUTO:
        out["optim.lr"] = auto_lr(bs)
    steps = math.ceil(n_train / bs)
    if cfg.stages.warmup.epochs == AUTO:
        out["stages.warmup.epochs"] = _epochs(MIN_WARMUP_STEPS, steps, PAPER_WARMUP_EPOCHS)
    if cfg.stages.joint.epochs == AUTO:
        out["stages.joint.epochs"] = _epochs(MIN_JOINT_STEPS, steps, PAPER_JOINT_EPOCHS)
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
