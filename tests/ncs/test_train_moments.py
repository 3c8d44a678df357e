"""optim.moments in the trainer: per-task Adam moments are used by the task steps, checkpointed
bit-exactly (kill + --resume == uninterrupted, across rewinds), and absent from the rewind target."""
import os

import pytest
import torch

from _tiny import tiny_data
from ncs.config import resolve_config
from ncs.train import StopTraining, run
from ncs.train.checkpoint import load_tensors


from _tiny import one_thread_module  # noqa: E402,F401  (autouse: one intra-op thread per module)


def _cfg(moments="per_task", **over):
    base = {
        "seed": 1, "device": "cpu", "backend": "torch", "models": ["connection"],
        "data": {"split": {"by": "request", "fractions": [0.6, 0.2, 0.2]}},
        "model": {"embed_dim": 4, "hidden": [16, 8, 4]},
        "optim": {"lr": 0.01, "moments": moments},
        "train": {"batch_size": 24, "eval_batch_size": 50},
        "stages": {"warmup": {"epochs": 1}, "masks": {"rounds": 2, "epochs_per_round": 2},
                   "joint": {"epochs": 2}},
    }
    base.update(over)
    return resolve_config(base)


def _data():
    return tiny_data(120, [6, 5, 4, 7], 0)


def _tensors(out):
    res = {}
    for sub in ("checkpoints", "models"):
        d = os.path.join(out, sub)
        for f in sorted(os.listdir(d)):
            if f.endswith(".safetensors") and not f.startswith(".tmp"):
                res[f"{sub}/{f}"] = load_tensors(os.path.join(d, f))
    return res


@pytest.fixture(scope="module")
def per_task_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("per_task"))
    return out, run(_cfg(), out, data=_data())


def test_per_task_state_is_checkpointed_and_not_in_the_rewind_target(per_task_run):
    out, _ = per_task_run
    tensors, doc = load_tensors(os.path.join(out, "checkpoints", "connection.safetensors"))
    task_keys = [k for k in tensors if k.endswith("/exp_avg_task")]
    assert len(task_keys) == 3  # the three masked tower layers
    for k in task_keys:
        assert tensors[k].shape[0] == 2  # ctr, cvr
    steps = [s["task_step"] for s in doc["optim"]["dense"]["scalars"].values() if "task_step" in s]
    assert len(steps) == 3 and all(st[0] > 0 and st[1] > 0 for st in steps)
    init, _ = load_tensors(os.path.join(out, "checkpoints", "connection_init.safetensors"))
    assert not [k for k in init if "_task" in k]  # warmup (task None) uses the shared moments only


def test_per_task_changes_the_connection_model_only_through_task_steps(per_task_run, tmp_path):
    out, res = per_task_run
    shared = run(_cfg("shared"), str(tmp_path / "shared"), data=_data())
    a = load_tensors(os.path.join(out, "checkpoints", "connection_init.safetensors"))[0]
    b = load_tensors(os.path.join(tmp_path / "shared", "checkpoints", "connection_init.safetensors"))[0]
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)  # warmup: identical
    assert res["models"]["connection"] != shared["models"]["connection"]


@pytest.mark.parametrize("stop_after", [13, 18])
def test_per_task_killed_and_resumed_run_ends_identical(per_task_run, tmp_path, stop_after):
    """Checkpoints: 1 warmup, 2 enter masks, ctr 3-9, cvr 10-16 (mid-round and round ends, each
    round starting with a rewind), 17 enter joint, 18-19 joint epochs, 20 done."""
    out_full, res_full = per_task_run
    out = str(tmp_path / "run")
    with pytest.raises(StopTraining):
        run(_cfg(), out, data=_data(), stop_after_checkpoints=stop_after)
    res = run(_cfg(), out, resume=True, data=_data())
    want, got = _tensors(out_full), _tensors(out)
    assert set(want) == set(got)
    for f in want:
        assert set(want[f][0]) == set(got[f][0]), f
        for k in want[f][0]:
            assert torch.equal(want[f][0][k], got[f][0][k]), f"{f}: {k} differs"
        if "optim" in want[f][1]:
            assert want[f][1]["optim"] == got[f][1]["optim"], f
    assert res["models"] == res_full["models"]
