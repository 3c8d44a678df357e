"""A few training steps of every stage through ModelTrainer.train_epoch, for the equivalence tests
(fused vs sparse embedding step, 2 gloo ranks vs one process)."""
import torch

from _tiny import tiny_data
from ncs.config import resolve_config
from ncs.train import batches as B
from ncs.train.stages import ModelTrainer

CPU = torch.device("cpu")
STEP_KINDS = ("connection", "single", "esmm", "mmoe")


def steps_data():
    return tiny_data(300, [13, 7, 29])


def steps_config(kind, step, balance):
    return resolve_config({"models": [kind], "device": "cpu", "model": {"embed_dim": 4, "hidden": [8, 4]},
                           "optim": {"embedding_step": step, "lr": 0.01},
                           "loss": {"balance": balance, "balance_lr": 0.05}})


def run_steps(kind, step, balance, data, dist=None):
    """(trainer, [epoch losses]) after: mixed batches, weighted (warmup; a baseline's epoch), the
    last one short and a 1-row one (fewer rows than ranks); for the connection model then a mask
    round (task batches of both tasks under a random 70 % mask, strict, unweighted) and joint
    steps (alternating task batches under the masks, weighted: PCGrad projects each step against
    the other task's last gradient)."""
    import ncs_kernels as nk

    cfg = steps_config(kind, step, balance)
    split = B.prepare_split(data, cfg.tasks, "click", CPU)
    tr = ModelTrainer(kind, cfg, data.fields, split, split, CPU, "/nonexistent")
    tr.dist = dist
    mixed = B.mixed_batches(split, 128, 0, "mixed", 0)  # 300 = 2 * 128 + 44
    losses = [tr.train_epoch(mixed + [(None, mixed[0][1][:1])], True, "mixed")]
    if kind != "connection":
        return tr, losses
    g = torch.Generator().manual_seed(7)
    for t in tr.names:
        tr.model.set_task_masks(t, {n: nk.pack_mask(torch.rand(m.out_features, m.in_features, generator=g) < 0.7)
                                    for n, m in tr.layers.items()})
    tr.opt.dense.mode = "strict"
    rnd = B.task_batches(split, "cvr", 32, 0, "t", 0)[:2] + B.task_batches(split, "ctr", 64, 0, "t", 0)[:2]
    losses.append(tr.train_epoch(rnd + [("cvr", rnd[0][1][:1])], False, "masks"))
    tr.opt.dense.mode = cfg.optim.mode
    joint = B.alternating_batches(split, tr.names, 64, 0, "joint", 0)[:6]
    losses.append(tr.train_epoch(joint, True, "joint"))
    return tr, losses


def max_difference(a, b) -> float:
    """The largest absolute difference between two trainers' parameters and buffers."""
    worst = 0.0
    for (n, p), (_, q) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        if p.numel() and p.is_floating_point():
            worst = max(worst, float((p - q).abs().max()))
    return worst
