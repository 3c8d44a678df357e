"""The masked optimizer step: every backend against the reference, and MaskedAdam/MaskedAdamW
against a hand-written reference loop over several steps with alternating tasks."""
import pytest
import torch

import ncs_kernels as nk
from ncs_kernels import reference as ref

from conftest import backend_device_params
from _cases import assert_close, make_mask, randn

BACKEND_DEVICE = backend_device_params()


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("decoupled,wd", [(False, 0.0), (False, 0.1), (True, 0.01)])
@pytest.mark.parametrize("n,k,density", [(1, 1, 1.0), (5, 33, 0.5), (7, 70, 0.0), (3, 100, 0.3), (1, 1680, 0.5)])
def test_step_matches_reference(backend, device, n, k, density, decoupled, wd):
    m, packed = make_mask(n, k, density, device)
    state = [randn(n, k, device=device, seed=s) for s in range(3)]
    state[2] = state[2].abs()  # exp_avg_sq >= 0
    mine = [t.clone() for t in state]
    theirs = [t.clone() for t in state]
    for step in (1, 2, 3):
        g = randn(n, k, device=device, seed=10 + step)
        for masks in (packed, None):
            nk._backends.impl(backend).masked_adam_step_(mine[0], g, mine[1], mine[2], masks, step, 1e-2, 0.9, 0.999, 1e-8, wd, decoupled)
            ref.masked_adam_step_(theirs[0], g, theirs[1], theirs[2], masks, step, 1e-2, 0.9, 0.999, 1e-8, wd, decoupled)
    for a, b, name in zip(mine, theirs, ("param", "exp_avg", "exp_avg_sq")):
        assert_close(a, b, name, rtol=1e-5, atol_scale=1e-6)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_strict_leaves_masked_out_weights_bit_identical(backend, device):
    m, packed = make_mask(6, 45, 0.5, device)
    p = randn(6, 45, device=device)
    ea, eas = randn(6, 45, device=device, seed=1), randn(6, 45, device=device, seed=2).abs()
    before = [t.clone() for t in (p, ea, eas)]
    nk._backends.impl(backend).masked_adam_step_(p, randn(6, 45, device=device, seed=3), ea, eas, packed, 4, 0.1, 0.9, 0.99, 1e-8, 0.1, True)
    for after, old in zip((p, ea, eas), before):
        assert torch.equal(after[~m], old[~m])
        assert not torch.equal(after[m], old[m])


def _reference_adam_loop(params, grads_per_step, masks_per_step, lr, betas, eps, wd, decoupled, strict):
    """Plain loop: per parameter, the textbook Adam update, masked element-wise when strict."""
    state = {i: (torch.zeros_like(p), torch.zeros_like(p)) for i, p in enumerate(params)}
    for step, (grads, masks) in enumerate(zip(grads_per_step, masks_per_step), start=1):
        for i, (p, g) in enumerate(zip(params, grads)):
            m_, v_ = state[i]
            g = g.clone()
            if wd and not decoupled:
                g = g + wd * p
            m_new = betas[0] * m_ + (1 - betas[0]) * g
            v_new = betas[1] * v_ + (1 - betas[1]) * g * g
            upd = (m_new / (1 - betas[0] ** step)) / ((v_new / (1 - betas[1] ** step)).sqrt() + eps)
            p_new = p * (1 - lr * wd) if (wd and decoupled) else p.clone()
            p_new = p_new - lr * upd
            keep = masks.get(i) if strict else None
            keep = torch.ones_like(p, dtype=torch.bool) if keep is None else keep
            p.copy_(torch.where(keep, p_new, p))
            state[i] = (torch.where(keep, m_new, m_), torch.where(keep, v_new, v_))
    return params


@pytest.mark.parametrize("cls,wd", [(nk.MaskedAdam, 0.0), (nk.MaskedAdam, 0.05), (nk.MaskedAdamW, 0.05)])
@pytest.mark.parametrize("mode", ["strict", "leaky"])
def test_optimizer_alternating_tasks(cls, wd, mode):
    torch.manual_seed(0)
    layer = nk.MaskedLinear(37, 5, tasks=("ctr", "cvr", "like"))
    masks = {t: torch.rand(5, 37) < p for t, p in zip(layer.tasks, (0.6, 0.4, 0.9))}
    for t, m in masks.items():
        layer.set_mask(t, m)
    params0 = [layer.weight.detach().clone(), layer.bias.detach().clone()]
    opt = cls(layer.parameters(), lr=1e-2, weight_decay=wd, mode=mode)
    grads, step_masks = [], []
    for step in range(6):
        task = layer.tasks[step % 3]
        x = torch.randn(8, 37)
        opt.zero_grad()
        layer(x, task=task).square().sum().backward()
        grads.append([layer.weight.grad.clone(), layer.bias.grad.clone()])
        step_masks.append({0: masks[task]})
        opt.set_masks(layer.task_masks(task))
        opt.step()
    want = _reference_adam_loop(params0, grads, step_masks, 1e-2, (0.9, 0.999), 1e-8, wd,
                                cls is nk.MaskedAdamW, mode == "strict")
    torch.testing.assert_close(layer.weight.detach(), want[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.bias.detach(), want[1], rtol=1e-5, atol=1e-6)


def test_strict_vs_leaky_outside_mask():
    torch.manual_seed(1)
    results = {}
    for mode in ("strict", "leaky"):
        torch.manual_seed(1)
        layer = nk.MaskedLinear(20, 4, tasks=("ctr", "cvr"))
        ctr_mask = torch.rand(4, 20) < 0.5
        layer.set_mask("ctr", ctr_mask)
        opt = nk.MaskedAdam(layer.parameters(), lr=0.1, mode=mode)
        # one cvr step (all weights) builds momentum everywhere; then ctr steps
        for task in ("cvr", "ctr", "ctr"):
            opt.zero_grad()
            layer(torch.randn(3, 20), task=task).sum().backward()
            opt.set_masks(layer.task_masks(task))
            if task == "ctr":
                before = layer.weight.detach().clone()
            opt.step()
        results[mode] = (before, layer.weight.detach().clone(), ctr_mask)
    before, after, m = results["strict"]
    assert torch.equal(before[~m], after[~m]), "strict: a weight outside the task's mask moved"
    before, after, m = results["leaky"]
    assert not torch.equal(before[~m], after[~m]), "leaky: momentum should move weights outside the mask"


def test_optimizer_validation():
    with pytest.raises(ValueError, match="mode"):
        nk.MaskedAdam([torch.zeros(2, requires_grad=True)], mode="loose")
    with pytest.raises(ValueError, match="lr"):
        nk.MaskedAdam([torch.zeros(2, requires_grad=True)], lr=-1)
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = nk.MaskedAdam(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="SparseAdam"):
        opt.step()
    p = torch.zeros(3, 40)
    with pytest.raises(ValueError, match="packed"):
        nk.masked_adam_step_(p, p, p.clone(), p.clone(), torch.zeros(3, 1, dtype=torch.int32), 1, 0.1)
    with pytest.raises(ValueError, match="step"):
        nk.masked_adam_step_(p, p, p.clone(), p.clone(), None, 0, 0.1)
