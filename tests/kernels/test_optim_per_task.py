"""Per-task Adam moments (MaskedAdam(moments="per_task")): the fused task step on every backend
against the reference, the defining property (a task's step reads and writes only its own
moments), the optimizer against a hand-written per-task Adam loop, and the state round trip
through the trainer's safetensors checkpoints."""
import pytest
import torch

import ncs_kernels as nk
from ncs_kernels import reference as ref
from ncs.train.checkpoint import flatten_optimizer, load_tensors, save_tensors, unflatten_optimizer

from _cases import ADAM_TASK_CASES as TASK_CASES, assert_close, make_mask, one_per_backend, randn, textbook_adam

BACKEND_DEVICE = one_per_backend()


def _stacks(t_count, n, k, device, seed=0):
    m = randn(t_count, n, k, device=device, seed=seed)
    v = randn(t_count, n, k, device=device, seed=seed + 1).abs()
    return m, v


@pytest.mark.parametrize("target", BACKEND_DEVICE)
@pytest.mark.parametrize("decoupled,wd", [(False, 0.0), (False, 0.1), (True, 0.01)])
@pytest.mark.parametrize("n,k,density,t_count", TASK_CASES)
def test_task_step_matches_reference(target, n, k, density, t_count, decoupled, wd):
    """Steps alternating over the tasks (each with its own step count), masked and plain."""
    backend, device = target.backend, target.device
    masks = [make_mask(n, k, density if t % 2 == 0 else 0.5, device, seed=t)[1] for t in range(t_count)]
    p0 = randn(n, k, device=device, seed=7)
    m0, v0 = _stacks(t_count, n, k, device)
    mine = [p0.clone(), m0.clone(), v0.clone()]
    theirs = [p0.clone(), m0.clone(), v0.clone()]
    steps = [0] * t_count
    for i in range(2 * t_count + 1):
        t = (i * 2) % t_count  # not simply round-robin when t_count == 3
        steps[t] += 1
        g = randn(n, k, device=device, seed=20 + i)
        packed = masks[t] if i % 3 != 2 else None
        nk.masked_adam_task_step_(mine[0], g, mine[1], mine[2], packed, t, steps[t], 1e-2, 0.9, 0.999, 1e-8,
                                  wd, decoupled, backend=backend)
        ref.masked_adam_task_step_(theirs[0], g, theirs[1], theirs[2], packed, t, steps[t], 1e-2, 0.9, 0.999, 1e-8,
                                   wd, decoupled)
    for a, b, name in zip(mine, theirs, ("param", "exp_avg", "exp_avg_sq")):
        assert_close(a, b, name, rtol=1e-5, atol_scale=1e-6)


@pytest.mark.parametrize("target", [pytest.param(None, id="torch-cpu")] + BACKEND_DEVICE)
@pytest.mark.parametrize("t_count,task", [(2, 0), (2, 1), (3, 1), (3, 2)])
def test_task_step_reads_and_writes_only_its_own_moments(target, t_count, task):
    """The defining property. Other tasks' slices: bit-identical after the step, and the result
    does not depend on them (replaced by NaN / inf, the step gives bit-identical results).
    Strict: within the own slice and the weight, off-mask entries are bit-identical too."""
    backend, device = ("torch", "cpu") if target is None else (target.backend, target.device)
    n, k = 6, 45
    m_bool, packed = make_mask(n, k, 0.5, device)
    p0, g = randn(n, k, device=device, seed=3), randn(n, k, device=device, seed=4)
    m0, v0 = _stacks(t_count, n, k, device, seed=5)
    results = []
    for poison in (None, float("nan"), float("inf")):
        p, m, v = p0.clone(), m0.clone(), v0.clone()
        others = torch.arange(t_count, device=device) != task
        if poison is not None:
            m[others] = poison
            v[others] = poison
        before_m, before_v = m.clone(), v.clone()
        nk.masked_adam_task_step_(p, g, m, v, packed, task, 3, 0.1, 0.9, 0.99, 1e-8, 0.1, True, backend=backend)
        # the other slices: bit-identical (NaN compares via the bit pattern)
        assert torch.equal(m[others].view(torch.int32), before_m[others].view(torch.int32))
        assert torch.equal(v[others].view(torch.int32), before_v[others].view(torch.int32))
        # strict: off-mask weight and own moments unchanged, on-mask ones moved
        for after, old in ((p, p0), (m[task], m0[task]), (v[task], v0[task])):
            assert torch.equal(after[~m_bool], old[~m_bool])
            assert not torch.equal(after[m_bool], old[m_bool])
        results.append((p.clone(), m[task].clone(), v[task].clone()))
    for got in results[1:]:
        for a, b in zip(got, results[0]):
            assert torch.equal(a, b), "the task's step depends on another task's moments"


def test_task_step_validation():
    p = torch.zeros(3, 40)
    m = torch.zeros(2, 3, 40)
    with pytest.raises(ValueError, match="task"):
        nk.masked_adam_task_step_(p, p, m, m.clone(), None, 2, 1, 0.1)
    with pytest.raises(ValueError, match="task"):
        nk.masked_adam_task_step_(p, p, m, m.clone(), None, -1, 1, 0.1)
    with pytest.raises(ValueError, match=r"exp_avg: expected shape \[tasks, 3, 40\]"):
        nk.masked_adam_task_step_(p, p, torch.zeros(2, 3, 41), m.clone(), None, 0, 1, 0.1)
    with pytest.raises(ValueError, match="exp_avg_sq: expected 2 task slices"):
        nk.masked_adam_task_step_(p, p, m, torch.zeros(3, 3, 40), None, 0, 1, 0.1)
    with pytest.raises(ValueError, match="3-D"):
        nk.masked_adam_task_step_(p, p, p.clone(), p.clone(), None, 0, 1, 0.1)
    with pytest.raises(ValueError, match="packed"):
        nk.masked_adam_task_step_(p, p, m, m.clone(), torch.zeros(3, 1, dtype=torch.int32), 0, 1, 0.1)


# ---------------------------------------------------------------------------------------------
# The optimizer

def _layer_and_masks(tasks=("ctr", "cvr", "like"), k=37, n=5, seed=0):
    torch.manual_seed(seed)
    layer = nk.MaskedLinear(k, n, tasks=tasks)
    masks = {t: torch.rand(n, k) < d for t, d in zip(tasks, (0.6, 0.4, 0.9))}
    for t, m in masks.items():
        layer.set_mask(t, m)
    return layer, masks


# a sequence with repeats and a mixed (task None) step in the middle
SEQUENCE = ["ctr", "ctr", "cvr", None, "like", "cvr", "ctr", "like", "cvr"]


def _run(opt, layer, seq, via_step=False):
    grads = []
    for i, task in enumerate(seq):
        x = torch.randn(8, layer.in_features)
        opt.zero_grad()
        out = layer(x, task=task) if task is not None else layer(x, task=None)
        out.square().sum().backward()
        grads.append((layer.weight.grad.clone(), layer.bias.grad.clone()))
        masks = layer.task_masks(task) if task is not None else {}
        if via_step:
            opt.set_masks(masks)
            opt.step(task=task)
        else:
            opt.set_masks(masks, task=task)
            opt.step()
    return grads


@pytest.mark.parametrize("cls,wd", [(nk.MaskedAdam, 0.0), (nk.MaskedAdam, 0.05), (nk.MaskedAdamW, 0.05)])
@pytest.mark.parametrize("mode", ["strict", "leaky"])
def test_per_task_optimizer_matches_reference_loop(cls, wd, mode):
    """Masked weight: each task's own (m, v, step), zero at its first step; the bias (no mask)
    and the mixed step (task None, every weight) use the shared state."""
    layer, masks = _layer_and_masks()
    w0, b0 = layer.weight.detach().clone(), layer.bias.detach().clone()
    opt = cls(layer.parameters(), lr=1e-2, weight_decay=wd, mode=mode, moments="per_task", tasks=layer.tasks)
    torch.manual_seed(1)
    grads = _run(opt, layer, SEQUENCE)
    lr, betas, eps, dec = 1e-2, (0.9, 0.999), 1e-8, cls is nk.MaskedAdamW
    w, b = w0.clone(), b0.clone()
    shared = {"w": (torch.zeros_like(w), torch.zeros_like(w), 0), "b": (torch.zeros_like(b), torch.zeros_like(b), 0)}
    own = {t: (torch.zeros_like(w), torch.zeros_like(w), 0) for t in layer.tasks}
    for task, (gw, gb) in zip(SEQUENCE, grads):
        keep = masks[task] if (task is not None and mode == "strict") else None
        m_, v_, s = own[task] if task is not None else shared["w"]
        w, m_, v_ = textbook_adam(w, gw, m_, v_, s + 1, keep, lr, betas, eps, wd, dec)
        if task is not None:
            own[task] = (m_, v_, s + 1)
        else:
            shared["w"] = (m_, v_, s + 1)
        m_, v_, s = shared["b"]
        b, m_, v_ = textbook_adam(b, gb, m_, v_, s + 1, None, lr, betas, eps, wd, dec)
        shared["b"] = (m_, v_, s + 1)
    torch.testing.assert_close(layer.weight.detach(), w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.bias.detach(), b, rtol=1e-5, atol=1e-6)
    st = opt.state[layer.weight]
    assert st["task_step"] == [3, 3, 2] and int(st["step"]) == 1
    for i, t in enumerate(layer.tasks):
        torch.testing.assert_close(st["exp_avg_task"][i], own[t][0], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(st["exp_avg_sq_task"][i], own[t][1], rtol=1e-5, atol=1e-9)
    assert "exp_avg_task" not in opt.state[layer.bias]


def test_step_task_argument_equals_set_masks_task():
    results = []
    for via_step in (False, True):
        layer, _ = _layer_and_masks()
        opt = nk.MaskedAdam(layer.parameters(), lr=1e-2, moments="per_task", tasks=layer.tasks)
        torch.manual_seed(1)
        _run(opt, layer, SEQUENCE, via_step=via_step)
        results.append(layer.weight.detach().clone())
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("mode", ["strict", "leaky"])
def test_per_task_with_one_task_is_shared_adam(mode):
    """One task, no mixed steps: per-task moments are exactly today's shared Adam."""
    out = {}
    for moments in ("shared", "per_task"):
        layer, _ = _layer_and_masks(tasks=("cvr",))
        opt = nk.MaskedAdam(layer.parameters(), lr=1e-2, mode=mode, moments=moments, tasks=["cvr"])
        torch.manual_seed(2)
        _run(opt, layer, ["cvr"] * 5)
        out[moments] = (layer.weight.detach().clone(), layer.bias.detach().clone())
    assert all(torch.equal(a, b) for a, b in zip(out["shared"], out["per_task"]))


def test_per_task_differs_from_shared_with_two_tasks():
    """The option does something: with two tasks the weights differ from shared moments."""
    out = {}
    for moments in ("shared", "per_task"):
        layer, _ = _layer_and_masks(tasks=("ctr", "cvr"))
        opt = nk.MaskedAdam(layer.parameters(), lr=1e-2, moments=moments, tasks=layer.tasks)
        torch.manual_seed(2)
        _run(opt, layer, ["ctr", "cvr", "ctr", "cvr"])
        out[moments] = layer.weight.detach().clone()
    assert not torch.equal(out["shared"], out["per_task"])


@pytest.mark.parametrize("mode,wd", [("strict", 0.0), ("strict", 0.05), ("leaky", 0.0), ("leaky", 0.05)])
def test_per_task_step_leaves_other_tasks_and_off_mask_bit_identical(mode, wd):
    layer, masks = _layer_and_masks()
    opt = nk.MaskedAdamW(layer.parameters(), lr=1e-2, weight_decay=wd, mode=mode, moments="per_task",
                         tasks=layer.tasks)
    torch.manual_seed(3)
    _run(opt, layer, ["ctr", None, "cvr", "like"])
    st = opt.state[layer.weight]
    before = {k: st[k].clone() for k in ("exp_avg_task", "exp_avg_sq_task", "exp_avg", "exp_avg_sq")}
    w_before = layer.weight.detach().clone()
    _run(opt, layer, ["cvr"])
    i = layer.tasks.index("cvr")
    for k in ("exp_avg_task", "exp_avg_sq_task"):
        for j in range(3):
            if j != i:
                assert torch.equal(st[k][j], before[k][j]), f"{k}[{j}] changed on a cvr step"
        assert not torch.equal(st[k][i], before[k][i])
    for k in ("exp_avg", "exp_avg_sq"):  # the shared moments of the masked weight: untouched by task steps
        assert torch.equal(st[k], before[k])
    m = masks["cvr"]
    if mode == "strict":
        assert torch.equal(layer.weight.detach()[~m], w_before[~m])
        for k in ("exp_avg_task", "exp_avg_sq_task"):
            assert torch.equal(st[k][i][~m], before[k][i][~m])
    elif wd == 0.0:
        # leaky, per-task moments: the task's own moments are 0 off its (unchanged) mask, as its
        # masked gradient always was, so nothing leaks there; the leak of shared moments is gone
        assert torch.equal(layer.weight.detach()[~m], w_before[~m])
    else:  # leaky: the decoupled decay still reaches the off-mask weights
        assert not torch.equal(layer.weight.detach()[~m], w_before[~m])
    assert st["task_step"] == [1, 2, 1]


def test_per_task_state_round_trips_through_checkpoint_bit_exactly(tmp_path):
    """state_dict -> flatten_optimizer -> safetensors -> unflatten -> load_state_dict: the same
    state bit for bit (tensors and the per-task step counts)."""
    layer, _ = _layer_and_masks()
    opt = nk.MaskedAdamW(layer.parameters(), lr=1e-2, moments="per_task", tasks=layer.tasks)
    torch.manual_seed(4)
    _run(opt, layer, SEQUENCE)
    sd = opt.state_dict()
    tensors, doc = flatten_optimizer("dense", sd)
    assert {"optim/dense/0/exp_avg_task", "optim/dense/0/exp_avg_sq_task"} <= set(tensors)
    assert doc["scalars"]["0"] == {"task_step": [3, 3, 2]}
    path = str(tmp_path / "c.safetensors")
    save_tensors(path, tensors, {"optim": doc})
    want = {k: v.clone() for k, v in tensors.items()}
    t2, d2 = load_tensors(path)
    loaded = unflatten_optimizer("dense", t2, d2["optim"])
    layer2, _ = _layer_and_masks()
    opt2 = nk.MaskedAdamW(layer2.parameters(), lr=1.0, moments="per_task", tasks=layer2.tasks)
    opt2.load_state_dict(loaded)
    assert opt2.param_groups[0]["lr"] == 1e-2
    assert opt2.state[layer2.weight]["task_step"] == [3, 3, 2]
    for idx, p in enumerate((layer2.weight, layer2.bias)):
        for k, v in opt2.state[p].items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, want[f"optim/dense/{idx}/{k}"]), (idx, k)
    assert "task_step" not in opt2.state[layer2.bias]


def test_per_task_resume_equals_uninterrupted(tmp_path):
    """Rewind-style restore: load a mid-run snapshot into a fresh optimizer and model, replay the
    same batches: bit-identical weights and state to the uninterrupted run."""
    layer, _ = _layer_and_masks()
    opt = nk.MaskedAdam(layer.parameters(), lr=1e-2, moments="per_task", tasks=layer.tasks)
    torch.manual_seed(6)
    _run(opt, layer, SEQUENCE[:5])
    tensors, doc = flatten_optimizer("dense", opt.state_dict())
    path = str(tmp_path / "snap.safetensors")
    save_tensors(path, {**{f"model/{k}": v for k, v in layer.state_dict().items()}, **tensors}, {"optim": doc})
    rng = torch.get_rng_state()
    _run(opt, layer, SEQUENCE[5:])
    t2, d2 = load_tensors(path)
    layer2, _ = _layer_and_masks()
    layer2.load_state_dict({k[len("model/"):]: v for k, v in t2.items() if k.startswith("model/")})
    opt2 = nk.MaskedAdam(layer2.parameters(), lr=1e-2, moments="per_task", tasks=layer2.tasks)
    opt2.load_state_dict(unflatten_optimizer("dense", t2, d2["optim"]))
    torch.set_rng_state(rng)
    _run(opt2, layer2, SEQUENCE[5:])
    assert torch.equal(layer2.weight, layer.weight) and torch.equal(layer2.bias, layer.bias)
    for p, p2 in ((layer.weight, layer2.weight), (layer.bias, layer2.bias)):
        a, b = opt.state[p], opt2.state[p2]
        assert set(a) == set(b)
        for k in a:
            assert (a[k] == b[k]) if not isinstance(a[k], torch.Tensor) else torch.equal(a[k], b[k]), k


def test_per_task_validation():
    p = [torch.zeros(2, 3, requires_grad=True)]
    with pytest.raises(ValueError, match="moments"):
        nk.MaskedAdam(p, moments="per_layer")
    with pytest.raises(ValueError, match="tasks"):
        nk.MaskedAdam(p, moments="per_task")
    with pytest.raises(ValueError, match="tasks"):
        nk.MaskedAdam(p, moments="per_task", tasks=["ctr", "ctr"])
    with pytest.raises(ValueError, match="tasks"):
        nk.MaskedAdam(p, moments="per_task", tasks=0)
    opt = nk.MaskedAdam(p, moments="per_task", tasks=["ctr", "cvr"])
    with pytest.raises(ValueError, match=r"task: expected one of \['ctr', 'cvr'\]"):
        opt.set_masks({}, task="like")
    with pytest.raises(ValueError, match="task"):
        opt.step(task=2)
    assert opt.task_index("cvr") == 1 and opt.task_index(1) == 1 and opt.task_index(None) is None
    assert nk.MaskedAdam(p, moments="per_task", tasks=3).tasks == (0, 1, 2)
    # shared moments: the task is accepted and ignored (backward compatible)
    shared = nk.MaskedAdam(p)
    shared.set_masks({}, task="anything")
    # a per-task state into a shared optimizer, or into one with other tasks: a clear error
    layer, _ = _layer_and_masks(tasks=("ctr", "cvr"))
    per = nk.MaskedAdam(layer.parameters(), moments="per_task", tasks=layer.tasks)
    _run(per, layer, ["ctr"])
    sd = per.state_dict()
    with pytest.raises(ValueError, match="moments='shared'"):
        nk.MaskedAdam(layer.parameters()).load_state_dict(sd)
    with pytest.raises(ValueError, match="2 tasks"):
        nk.MaskedAdam(layer.parameters(), moments="per_task", tasks=["a", "b", "c"]).load_state_dict(sd)
