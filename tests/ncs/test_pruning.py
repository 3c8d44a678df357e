"""Magnitude pruning rounds, round selection, strict vs leaky steps, and the bit-exact rewind."""
import math

import pytest
import torch

import ncs_kernels as nk
from _tiny import one_thread, tiny_data  # noqa: F401 (fixture)
from ncs.config import resolve_config
from ncs.train import batches as B
from ncs.train.pruning import (fraction_per_round, mask_density, prune_count, prune_round, select_round)
from ncs.train.stages import ModelTrainer, Optimizers


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _tiny_data(rows=96, seed=0):
    return tiny_data(rows, [6, 5, 4], seed)


def _cfg(**stages):
    return resolve_config({
        "seed": 3, "device": "cpu", "backend": "torch",
        "model": {"embed_dim": 4, "hidden": [16, 8, 4]},
        "optim": {"lr": 0.01},
        "train": {"batch_size": 32, "eval_batch_size": 64},
        "stages": {"warmup": {"epochs": 1}, "masks": {"rounds": 2}, "joint": {"epochs": 1}, **stages},
    })


# ---------------------------------------------------------------------------------------------
def test_prune_count_rounding_is_exact():
    assert prune_count(0.5, 10) == 5
    assert prune_count(0.25, 10, "round") == 3      # 2.5 rounds half up
    assert prune_count(0.25, 10, "floor") == 2
    assert prune_count(0.3, 7, "round") == 2        # 2.1
    assert prune_count(0.35, 7, "round") == 2       # 2.45
    assert prune_count(0.9, 1) == 0                 # never the last survivor
    assert prune_count(0.99, 10) == 9
    assert prune_count(0.5, 0) == 0
    with pytest.raises(ValueError, match="q"):
        prune_count(1.0, 10)
    assert fraction_per_round(0.2, 4) == pytest.approx(1 - 0.2 ** 0.25)
    # n rounds of q = 1 - r^(1/n) end at density r, up to rounding
    s = 100_000
    for _ in range(4):
        s -= prune_count(fraction_per_round(0.2, 4), s)
    assert abs(s - 20_000) <= 4


def _layers(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = {"a": torch.randn(8, 40, generator=g), "b": torch.randn(6, 8, generator=g), "c": torch.randn(3, 6, generator=g)}
    m = {n: nk.pack_mask(torch.rand(t.shape, generator=g) < 0.8) for n, t in w.items()}
    return w, m


@pytest.mark.parametrize("rounding", ["round", "floor"])
def test_global_round_removes_exactly_the_expected_count_of_smallest_survivors(rounding):
    w, m = _layers()
    q = 0.37
    survivors = {n: nk.popcount(p) for n, p in m.items()}
    total = sum(survivors.values())
    expect = math.floor(q * total + (0.5 if rounding == "round" else 0.0))
    new, removed = prune_round(w, m, q, "global", rounding)
    assert sum(removed.values()) == expect
    assert sum(nk.popcount(p) for p in new.values()) == total - expect
    # removed = the `expect` smallest |w| among survivors; pruned weights stay pruned
    mags, gone, kept = [], [], []
    for n in w:
        old = nk.unpack_mask(m[n], w[n].shape[1])
        now = nk.unpack_mask(new[n], w[n].shape[1])
        assert not bool((now & ~old).any())
        gone.append(w[n].abs()[old & ~now])
        kept.append(w[n].abs()[now])
    assert float(torch.cat(gone).max()) <= float(torch.cat(kept).min())


def test_per_layer_round_removes_the_expected_count_in_each_layer():
    w, m = _layers(1)
    q = 0.5
    new, removed = prune_round(w, m, q, "layer", "round")
    for n in w:
        s = nk.popcount(m[n])
        assert removed[n] == math.floor(q * s + 0.5)
        assert nk.popcount(new[n]) == s - removed[n]
        old = nk.unpack_mask(m[n], w[n].shape[1])
        now = nk.unpack_mask(new[n], w[n].shape[1])
        assert float(w[n].abs()[old & ~now].max()) <= float(w[n].abs()[now].min())


def test_ties_are_broken_by_position():
    w = {"a": torch.ones(2, 4), "b": torch.ones(1, 4)}
    m = {n: nk.ones_mask(*t.shape) for n, t in w.items()}
    new, removed = prune_round(w, m, 0.5, "global", "round")  # 6 of 12 equal weights
    assert nk.unpack_mask(new["a"], 4).flatten().tolist() == [False] * 6 + [True] * 2
    assert nk.unpack_mask(new["b"], 4).all()
    assert removed == {"a": 6, "b": 0}


def test_select_round():
    table = [{"round": 0, "metric": 0.80}, {"round": 1, "metric": 0.75}, {"round": 2, "metric": 0.78},
             {"round": 3, "metric": float("nan")}]
    assert select_round(table, True, "best") == 2        # round 0 (dense) is not a candidate
    assert select_round(table, True, "best_any") == 0
    assert select_round(table, True, "last") == 3
    assert select_round(table, False, "best") == 1       # lower is better (MSE)
    assert select_round([{"round": 0, "metric": 1.0}, {"round": 1, "metric": 1.0}], False) == 1


# ---------------------------------------------------------------------------------------------
def _trainer(tmp_path, mode="strict", **stages):
    # the served model is the joint stage's (select_warmup off), so trainer.model holds the kept masks
    cfg = _cfg(**stages).override({"stages": {"joint": {"select_warmup": False}}})
    # these tests are about the shared moments (per_task: test_train_moments)
    cfg = cfg.override({"optim": {"mode": mode, "moments": "shared"}})
    data = _tiny_data()
    tr = B.prepare_split(data, cfg.tasks, "click", torch.device("cpu"))
    return ModelTrainer("connection", cfg, data.fields, tr, tr, torch.device("cpu"), str(tmp_path)), tr


def _step(trainer, tr, task, rows=slice(0, 32)):
    idx = torch.arange(len(tr))[rows]
    if task is not None:
        idx = tr.space_index[task][:32]
    batch = [(task, idx)]
    trainer.train_epoch(batch, weighted=True, desc="t")


@pytest.mark.parametrize("mode", ["strict", "leaky"])
def test_strict_step_leaves_weights_outside_the_mask_unchanged(tmp_path, mode):
    torch.manual_seed(0)
    trainer, tr = _trainer(tmp_path, mode)
    _step(trainer, tr, None)  # a warmup step: every weight gets momentum
    layer = trainer.model.tower.layers[1]
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(layer.weight.shape, generator=g) < 0.5
    trainer.model.set_task_masks("cvr", {"tower.layers.1": mask})
    before = layer.weight.detach().clone()
    st = trainer.opt.dense.state[layer.weight]
    m_before = st["exp_avg"].clone()
    _step(trainer, tr, "cvr")
    after = layer.weight.detach()
    moved = after != before
    assert bool(moved[mask].any())
    if mode == "strict":
        assert torch.equal(after[~mask], before[~mask])
        assert torch.equal(st["exp_avg"][~mask], m_before[~mask])
    else:  # leaky: momentum moves weights the task does not own (the authors' behaviour)
        assert bool(moved[~mask].any())


def test_rewind_restores_weights_and_optimizer_state_bit_for_bit(tmp_path):
    torch.manual_seed(0)
    trainer, tr = _trainer(tmp_path)
    _step(trainer, tr, None)
    _step(trainer, tr, None, slice(32, 64))
    trainer.save_init()
    params = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    ot, od = trainer.opt.flatten()
    ot = {k: v.clone() for k, v in ot.items()}
    _step(trainer, tr, "ctr")
    _step(trainer, tr, "cvr")
    assert not all(torch.equal(params[k], v) for k, v in trainer.model.named_parameters())
    trainer.rewind()
    for k, v in trainer.model.named_parameters():
        assert torch.equal(v, params[k]), k
    ot2, od2 = trainer.opt.flatten()
    assert od2 == od and set(ot2) == set(ot)
    for k in ot:
        assert torch.equal(ot2[k], ot[k]), k
    # rewinding twice still gives the snapshot: the optimizer never aliases the stored state
    _step(trainer, tr, "ctr")
    trainer.rewind()
    ot3, _ = trainer.opt.flatten()
    assert all(torch.equal(ot3[k], ot[k]) for k in ot)
    # and the snapshot on disk is the same
    from ncs.train.checkpoint import load_tensors
    disk, _ = load_tensors(trainer.init_path)
    assert all(torch.equal(disk[f"model/{k}"], params[k]) for k in params)


def test_mask_stage_rounds_table_and_densities(tmp_path):
    torch.manual_seed(0)
    trainer, _ = _trainer(tmp_path, masks={"rounds": 3, "final_density": 0.3})
    trainer.run()
    q = 1 - 0.3 ** (1 / 3)
    total = sum(m.weight.numel() for m in trainer.layers.values())
    for task in ("ctr", "cvr"):
        rows = trainer.pos.rounds[task]
        assert [r["round"] for r in rows] == [0, 1, 2, 3]
        assert rows[0]["density"] == 1.0
        s = total
        for r in rows:
            assert r["density"] == pytest.approx(s / total)
            if "pruned" in r:
                assert r["pruned"] == prune_count(q, s)
                s -= r["pruned"]
        assert rows[-1]["density"] == pytest.approx(0.3, abs=0.01)
        hist = trainer.mask_hist[task]
        assert len(hist) == 4
        sel = trainer.pos.selected[task]
        assert sel >= 1
        kept = trainer.model.get_task_masks(task)
        assert all(torch.equal(kept[n], hist[sel][n]) for n in kept)
        assert all(torch.equal(trainer.selected_masks()[n][task], hist[sel][n]) for n in kept)
        assert mask_density(kept, trainer.in_features) == pytest.approx(rows[sel]["density"])
