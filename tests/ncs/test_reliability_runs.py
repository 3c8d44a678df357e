"""Verifiable checkpoints (damage, truncation, fallback, ENOSPC), mask-file and data-cache
checksums, the run-directory lock, --resume before the config, and the non-finite guard."""
import errno
import json
import os
import signal
import time
import warnings

import pytest
import torch

import ncs_kernels as nk
from _tiny import tiny_data
from ncs import cli
from ncs.config import resolve_config
from ncs.train import RunError, StopTraining, run
from ncs.train.checkpoint import CheckpointError, load_tensors, previous_path, save_tensors
from ncs.train.guards import NonFiniteError
from ncs.train.rundir import lock_run_dir


from _tiny import one_thread_module  # noqa: E402,F401  (autouse: one intra-op thread per module)


def _data():
    return tiny_data(120, [6, 5, 4, 7], 0)


def _cfg(**over):
    base = {"seed": 1, "device": "cpu", "backend": "torch", "models": ["single"],
            "data": {"split": {"by": "request", "fractions": [0.6, 0.2, 0.2]}},
            "model": {"embed_dim": 4, "hidden": [8, 4]}, "optim": {"lr": 0.01},
            "train": {"batch_size": 24, "eval_batch_size": 50, "log_every": 2},
            "stages": {"warmup": {"epochs": 1}, "joint": {"epochs": 2}}}
    base.update(over)
    return resolve_config(base)


def _weights(out):
    return load_tensors(os.path.join(out, "models", "single.safetensors"))[0]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("full"))
    return run(_cfg(), out, data=_data())["models"], _weights(out)


def _same(out, full, results):
    want_m, want_w = full
    assert results["models"] == want_m
    got = _weights(out)
    assert set(got) == set(want_w) and all(torch.equal(got[k], want_w[k]) for k in got)


def _zero_middle(path, n=64, part="file"):
    """Zero n bytes in the middle of the file, or of its tensor data (after the safetensors header)."""
    import struct
    raw = bytearray(open(path, "rb").read())
    start = 0 if part == "file" else 8 + struct.unpack_from("<Q", raw)[0]
    mid = start + (len(raw) - start) // 2
    raw[mid:mid + n] = bytes(n)
    open(path, "wb").write(bytes(raw))


@pytest.mark.parametrize("part,message", [("data", "tensor .* fails its CRC-32 check"),
                                          ("file", "damaged or truncated")])
def test_damaged_checkpoint_falls_back_to_the_previous_one(full, tmp_path, part, message):
    """64 bytes zeroed in the middle (of the file: here its JSON header; of the tensor data) used
    to load without a word and resume into other metrics."""
    out = str(tmp_path / "r")
    with pytest.raises(StopTraining):
        run(_cfg(), out, data=_data(), stop_after_checkpoints=2)
    ckpt = os.path.join(out, "checkpoints", "single.safetensors")
    assert os.path.isfile(previous_path(ckpt))
    _zero_middle(ckpt, part=part)
    with pytest.raises(CheckpointError, match=message):
        load_tensors(ckpt)
    logs = []
    results = run(_cfg(), out, resume=True, data=_data(), log=logs.append)
    assert any("resuming from the previous checkpoint" in line for line in logs), logs
    _same(out, full, results)


def test_truncated_and_both_damaged_stop_with_a_clear_error(tmp_path, capsys):
    out = str(tmp_path / "r")
    with pytest.raises(StopTraining):
        run(_cfg(), out, data=_data(), stop_after_checkpoints=2)
    ckpt = os.path.join(out, "checkpoints", "single.safetensors")
    raw = open(ckpt, "rb").read()
    open(ckpt, "wb").write(raw[: len(raw) * 2 // 3])
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        load_tensors(ckpt)
    _zero_middle(previous_path(ckpt), part="data")
    with pytest.raises(CheckpointError, match=r"truncated.*; the previous checkpoint cannot be used either: .*CRC-32"):
        run(_cfg(), out, resume=True, data=_data())


def test_enospc_during_a_checkpoint_write_keeps_the_previous(full, tmp_path, monkeypatch):
    import safetensors.torch as st

    out = str(tmp_path / "r")
    with pytest.raises(StopTraining):
        run(_cfg(), out, data=_data(), stop_after_checkpoints=1)
    ckpt = os.path.join(out, "checkpoints", "single.safetensors")
    before = open(ckpt, "rb").read()
    real = st.save_file

    def full_disk(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:
            f.truncate(os.path.getsize(filename) // 3)  # part of it reached the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(st, "save_file", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device.*previous one is left"):
        run(_cfg(), out, resume=True, data=_data())
    assert open(ckpt, "rb").read() == before
    assert not [f for f in os.listdir(os.path.dirname(ckpt)) if f.startswith(".tmp")]
    monkeypatch.setattr(st, "save_file", real)
    _same(out, full, run(_cfg(), out, resume=True, data=_data()))


def test_legacy_checkpoint_without_checksums_loads(tmp_path):
    from safetensors.torch import save_file

    p = str(tmp_path / "old.safetensors")
    save_file({"a": torch.arange(4)}, p, metadata={"ncs_checkpoint": json.dumps(
        {"format": "ncs-checkpoint", "version": 1, "pos": 3})})
    t, doc = load_tensors(p)
    assert torch.equal(t["a"], torch.arange(4)) and doc["pos"] == 3
    save_tensors(p, {"a": torch.arange(4)}, {"pos": 3})
    assert load_tensors(p)[1] == {"format": "ncs-checkpoint", "version": 2, "pos": 3}


def test_mask_file_checksums(tmp_path):
    g = torch.Generator().manual_seed(0)
    masks = {"l0": {"ctr": nk.pack_mask(torch.rand(40, 70, generator=g) < 0.5),
                    "cvr": nk.pack_mask(torch.rand(40, 70, generator=g) < 0.3)}}
    p = str(tmp_path / "m.safetensors")
    nk.save_masks(p, masks, {"l0": 70})
    got, _ = nk.load_masks(p)
    assert torch.equal(got["l0"]["cvr"], masks["l0"]["cvr"])
    raw = bytearray(open(p, "rb").read())
    raw[-50] ^= 0x10  # one bit of the last tensor's data
    open(p, "wb").write(bytes(raw))
    with pytest.raises(ValueError, match="fails its CRC-32 check"):
        nk.load_masks(p)
    # a file written before checksums (no "crc32" metadata) still loads, unverified
    from safetensors.torch import save_file
    meta = {"format": "ncs-masks", "version": "1", "tasks": json.dumps(["ctr"]),
            "layers": json.dumps({"l0": {"shape": [40, 70], "density": {"ctr": 0.5}}})}
    save_file({"l0/ctr": masks["l0"]["ctr"]}, p, metadata=meta)
    assert torch.equal(nk.load_masks(p)[0]["l0"]["ctr"], masks["l0"]["ctr"])


def test_damaged_data_cache_is_rebuilt(tmp_path):
    from ncs.data import load_dataset
    cfg = {"kind": "synthetic", "rows": 300, "seed": 2}
    a = load_dataset(cfg, cache_dir=str(tmp_path))
    (f,) = [x for x in os.listdir(tmp_path) if x.endswith(".safetensors")]
    _zero_middle(str(tmp_path / f), part="data")
    with pytest.warns(UserWarning, match="fails its CRC32 check"):
        b = load_dataset(cfg, cache_dir=str(tmp_path))
    assert torch.equal(a.ids, b.ids) and torch.equal(a.labels["conversion"], b.labels["conversion"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset(cfg, cache_dir=str(tmp_path))  # rewritten: loads clean


def test_second_run_on_a_locked_directory_names_the_holder(tmp_path, capsys):
    out = tmp_path / "r"
    cfgf = tmp_path / "c.yaml"
    cfgf.write_text("models: [single]\ndevice: cpu\ndata: {rows: 200}\n")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the holder: takes the lock, says so, waits to be killed
        try:
            with lock_run_dir(str(out)):
                os.write(w, b"x")
                time.sleep(60)
        finally:
            os._exit(0)
    try:
        assert os.read(r, 1) == b"x"
        rc = cli.main(["train", "--config", str(cfgf), "--out", str(out), "-q"])
        _, err = capsys.readouterr()
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert f"is in use by another ncs run (pid {pid} holds" in err
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    logs = []
    with lock_run_dir(str(out), logs.append):  # the dead holder's lock is stale: taken over
        assert open(out / ".lock").read().strip() == str(os.getpid())
    assert logs == [f"{out}: taking over the stale lock of pid {pid}, which is no longer running"]


def test_resume_before_the_config_was_written_simply_starts(full, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "config.yaml.tmp").write_text("seed: ")  # killed while writing it
    _same(str(out), full, run(_cfg(), str(out), resume=True, data=_data()))
    assert not (out / "config.yaml.tmp").exists()


def _nan_at(monkeypatch, step):
    from ncs.train import epoch  # the training loop (stages.py calls it)
    real = epoch.mixed_loss
    n = {"i": 0}

    def loss(*a, **k):
        out, parts = real(*a, **k)
        n["i"] += 1
        return (out * float("nan") if n["i"] == step else out), parts

    monkeypatch.setattr(epoch, "mixed_loss", loss)


def test_nonfinite_loss_stops_naming_stage_epoch_step(tmp_path, monkeypatch, capsys):
    """72 train rows, batch 24: 3 steps per epoch; step 5 is epoch 2, batch 2."""
    _nan_at(monkeypatch, 5)
    out = str(tmp_path / "r")
    with pytest.raises(NonFiniteError, match=r"single stage baseline \(single epoch 2/3\), epoch 2, batch 2, step 5: "
                                             r"non-finite"):
        run(_cfg(), out, data=_data())
    tensors, doc = load_tensors(os.path.join(out, "checkpoints", "single.safetensors"))
    assert doc["pos"]["epoch"] == 1 and all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())


def test_nonfinite_skip_batch(tmp_path, monkeypatch):
    _nan_at(monkeypatch, 5)
    logs = []
    res = run(_cfg(train={"batch_size": 24, "eval_batch_size": 50, "log_every": 2, "on_nonfinite": "skip_batch"}),
              str(tmp_path / "r"), data=_data(), log=logs.append)
    assert all(v == v for v in res["models"]["single"].values() if isinstance(v, float))
    assert sum("batch skipped" in line for line in logs) == 1
    doc = load_tensors(str(tmp_path / "r" / "checkpoints" / "single.safetensors"))[1]
    assert doc["pos"]["skipped_batches"] == 1


def test_nonfinite_gradient_alone_is_caught(tmp_path, monkeypatch):
    """A finite loss with an inf gradient (a hook on the head's weight) stops training too."""
    from ncs.train import stages
    real = stages.Optimizers.step
    n = {"i": 0}

    def step(self, *a, **k):
        n["i"] += 1
        return real(self, *a, **k)

    monkeypatch.setattr(stages.Optimizers, "step", step)
    real_backward = torch.Tensor.backward

    def backward(self, *a, **k):
        real_backward(self, *a, **k)
        if n["i"] == 1:  # the second step's gradient
            p = next(q for q in stages_model[0].parameters() if q.grad is not None and not q.grad.is_sparse)
            p.grad.view(-1)[0] = float("inf")

    stages_model = []
    real_init = stages.ModelTrainer.__init__

    def init(self, *a, **k):
        real_init(self, *a, **k)
        stages_model.append(self.model)

    monkeypatch.setattr(stages.ModelTrainer, "__init__", init)
    monkeypatch.setattr(torch.Tensor, "backward", backward)
    with pytest.raises(NonFiniteError, match=r"epoch 1, batch 2, step 2"):
        run(_cfg(loss={"balance": "fixed"}), str(tmp_path / "r"), data=_data())
