"""The masked optimizer step: every backend against the reference, and MaskedAdam/MaskedAdamW
against a hand-written reference loop over several steps with alternating tasks."""
import pytest
import torch

import ncs_kernels as nk

from _cases import (LOW_PRECISION, TARGETS, adam_cases, assert_close, impl, make_mask, one_per_backend, randn, ref,
                    target_params, textbook_adam)

WD = [(False, 0.0), (False, 0.1), (True, 0.01)]  # (decoupled, weight_decay): Adam, Adam + L2, AdamW


@pytest.mark.parametrize("decoupled,wd", WD, ids=["adam", "adam-l2", "adamw"])
@pytest.mark.parametrize("target,dtype,shape,density", adam_cases())
def test_step_matches_reference(target, dtype, shape, density, decoupled, wd):
    """Several steps alternating two tasks' masks and unmasked steps; strict: every masked step
    leaves the off-mask weight and moments bit-identical."""
    n, k = shape
    device = target.device
    m_a, packed_a = make_mask(n, k, density, device)
    m_b, packed_b = make_mask(n, k, 0.7, device, seed=1)
    state = [randn(n, k, dtype=dtype, device=device, seed=s) for s in range(3)]
    state[2] = state[2].abs()  # exp_avg_sq >= 0
    mine = [t.clone() for t in state]
    theirs = [t.clone() for t in state]
    be = impl(target.backend)
    for step in (1, 7):  # the first step and a later bias correction; 6 calls in all
        g = randn(n, k, dtype=dtype, device=device, seed=10 + step)
        for m, packed in ((m_a, packed_a), (m_b, packed_b), (None, None)):
            before = [t.clone() for t in mine]
            hp = (packed, step, 1e-2, 0.9, 0.999, 1e-8, wd, decoupled)
            be.masked_adam_step_(mine[0], g, mine[1], mine[2], *hp)
            ref.masked_adam_step_(theirs[0], g, theirs[1], theirs[2], *hp)
            if m is not None:
                for after, old, name in zip(mine, before, ("param", "exp_avg", "exp_avg_sq")):
                    assert torch.equal(after[~m], old[~m]), f"{name} moved outside the mask"
    tol = dict(rtol=1e-5, atol_scale=1e-6) if dtype == torch.float32 else {}
    for a, b, name in zip(mine, theirs, ("param", "exp_avg", "exp_avg_sq")):
        assert_close(a, b, name, **tol)


@pytest.mark.parametrize("target", one_per_backend())
def test_strict_leaves_masked_out_weights_bit_identical(target):
    device = target.device
    m, packed = make_mask(6, 45, 0.5, device)
    p = randn(6, 45, device=device)
    ea, eas = randn(6, 45, device=device, seed=1), randn(6, 45, device=device, seed=2).abs()
    before = [t.clone() for t in (p, ea, eas)]
    impl(target.backend).masked_adam_step_(p, randn(6, 45, device=device, seed=3), ea, eas, packed, 4, 0.1, 0.9, 0.99,
                                           1e-8, 0.1, True)
    for after, old in zip((p, ea, eas), before):
        assert torch.equal(after[~m], old[~m])
        assert not torch.equal(after[m], old[m])


@pytest.mark.parametrize("target", one_per_backend())
def test_public_step_empty_and_full_mask(target):
    """Through nk.masked_adam_step_: an all-zero mask changes nothing, bit for bit; an all-ones
    mask is the plain step."""
    device = target.device
    state = [randn(3, 33, device=device, seed=s) for s in range(4)]
    state[3] = state[3].abs()
    ours = [t.clone() for t in state]
    _, p0 = make_mask(3, 33, 0.0, device)
    nk.masked_adam_step_(*ours, p0, 1, 1e-3, backend=target.backend)
    for a, e in zip(ours, state):
        assert torch.equal(a, e)
    _, p1 = make_mask(3, 33, 1.0, device)
    theirs = [t.clone() for t in state]
    nk.masked_adam_step_(*ours, p1, 1, 1e-3, weight_decay=0.01, decoupled=True, backend=target.backend)
    ref.masked_adam_step_(*theirs, None, 1, 1e-3, 0.9, 0.999, 1e-8, 0.01, True)
    for a, e, name in zip(ours, theirs, ("param", "grad", "exp_avg", "exp_avg_sq")):
        assert_close(a, e, name, rtol=1e-6, atol_scale=1e-7)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("target", target_params([t for t in TARGETS if t.id == "cuda-cuda-cublas"]))
def test_step_low_precision_state(target, dtype):
    """fp16 / bf16 weight and state: computed in fp32, rounded once to the state dtype."""
    n, k, device = 9, 70, target.device
    p, g = randn(n, k, seed=51, dtype=dtype, device=device), randn(n, k, seed=52, dtype=dtype, device=device)
    m_state = randn(n, k, seed=53, scale=0.1, dtype=dtype, device=device)
    v_state = (randn(n, k, seed=54, device=device).abs() * 0.01).to(dtype)
    mask, packed = make_mask(n, k, 0.5, device, seed=55)
    got = [p.clone(), g, m_state.clone(), v_state.clone()]
    exp32 = [t.float().clone() for t in (p, g, m_state, v_state)]
    args = (packed, 3, 1e-2, 0.9, 0.999, 1e-8, 0.01, True)
    impl(target.backend).masked_adam_step_(*got, *args)
    ref.masked_adam_step_(*exp32, *args)
    for name, a, e in (("param", got[0], exp32[0]), ("exp_avg", got[2], exp32[2]), ("exp_avg_sq", got[3], exp32[3])):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), e.to(dtype).float(), rtol=1e-2, atol=1e-3, msg=lambda s: f"{name}: {s}")
    assert torch.equal(got[0][~mask], p[~mask])
    assert torch.equal(got[2][~mask], m_state[~mask])
    assert torch.equal(got[3][~mask], v_state[~mask])


def _reference_adam_loop(params, grads_per_step, masks_per_step, lr, betas, eps, wd, decoupled, strict):
    """Plain loop: per parameter, the textbook Adam update, masked element-wise when strict."""
    state = {i: (torch.zeros_like(p), torch.zeros_like(p)) for i, p in enumerate(params)}
    for step, (grads, masks) in enumerate(zip(grads_per_step, masks_per_step), start=1):
        for i, (p, g) in enumerate(zip(params, grads)):
            keep = masks.get(i) if strict else None
            p_new, m_new, v_new = textbook_adam(p, g, *state[i], step, keep, lr, betas, eps, wd, decoupled)
            p.copy_(p_new)
            state[i] = (m_new, v_new)
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
