"""Fault injection: SIGKILL at seeded random moments of every stage (mid-epoch, mid-write of a
checkpoint or JSON file, during evaluation), then `ncs train --config C --out O --resume`
ends with metrics and weights identical to an uninterrupted run."""
import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

import ncs_kernels as nk
from ncs import cli
from ncs.train.checkpoint import load_tensors
from _fault_driver import fork_run

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TRIALS = 20
SITES = ("step", "write", "eval", "json")
CONFIG = """\
seed: 3
device: cpu
backend: torch
threads: 1
models: [single, connection]
data: {kind: synthetic, rows: 240, seed: 1, conflict: 0.5, split: {fractions: [0.6, 0.2, 0.2]}}
model: {embed_dim: 2, hidden: [8, 4]}
optim: {lr: 0.01}
train: {batch_size: 32, eval_batch_size: 64, log_every: 2}
stages:
  warmup: {epochs: 1}
  masks: {rounds: 2, epochs_per_round: 2}
  joint: {epochs: 2, early_stopping: true, patience: 3}
"""


def _child(site, at, cfg, out, counts=None):
    return fork_run(site, at, ["train", "--config", str(cfg), "--out", str(out), "-q"], counts)


def _outputs(out):
    """What must not differ: test metrics, stage summaries (without timings), rounds, split,
    and every tensor of the final models, the masks and the last checkpoints."""
    m = json.loads((out / "metrics.json").read_text())
    for st in m["stages"].values():
        st.pop("seconds", None)
    res = {"metrics": m, "rounds": json.loads((out / "rounds.json").read_text()),
           "split": json.loads((out / "split.json").read_text())}
    tensors = {}
    for f in sorted((out / "models").glob("*.safetensors")) + [out / "checkpoints" / "single.safetensors",
                                                                 out / "checkpoints" / "connection.safetensors"]:
        tensors[f.name + f.parent.name] = load_tensors(str(f))[0]
    masks, _ = nk.load_masks(str(out / "masks.safetensors"))
    tensors["masks"] = {f"{la}/{t}": v for la, per in masks.items() for t, v in per.items()}
    return res, tensors


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    cfg = d / "c.yaml"
    cfg.write_text(CONFIG)
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # before any fork: children inherit one thread, no OpenMP pool
    rc, sig = _child("none", 0, cfg, d / "ref", counts=d / "counts.json")
    assert (rc, sig) == (0, None)
    yield cfg, _outputs(d / "ref"), json.loads((d / "counts.json").read_text())
    torch.set_num_threads(old)


def test_sigkill_anywhere_then_resume_is_identical(reference, tmp_path, monkeypatch):
    import ncs.report
    monkeypatch.setattr(ncs.report, "plot_curves", lambda *a, **k: None)  # figures are not compared
    monkeypatch.setattr(ncs.report, "plot_masks", lambda *a, **k: None)
    cfg, (want, want_t), counts = reference
    assert min(counts.values()) > 0, counts
    t0 = time.perf_counter()
    killed = 0
    for trial in range(TRIALS):
        rng = random.Random(1000 + trial)
        site = SITES[trial % len(SITES)]
        at = rng.randint(1, counts[site])
        out = tmp_path / f"t{trial}"
        rc, sig = _child(site, at, cfg, out)
        assert sig == signal.SIGKILL, (site, at, rc)
        killed += 1
        rc = cli.main(["train", "--config", str(cfg), "--out", str(out), "--resume", "-q"])
        assert rc == 0, (trial, site, at)
        left = [p.name for p in out.rglob("*") if p.name.startswith(".tmp") or p.name.endswith((".tmp", ".partial"))]
        assert not left, (trial, site, at, left)  # the resumed run removed the killed one's debris
        got, got_t = _outputs(out)
        assert got == want, (trial, site, at)
        assert set(got_t) == set(want_t)
        for f in want_t:
            assert set(got_t[f]) == set(want_t[f]), (trial, site, at, f)
            for k in want_t[f]:
                assert torch.equal(got_t[f][k], want_t[f][k]), (trial, site, at, f, k)
    print(f"\n{killed} SIGKILL trials ({dict(counts)} calls per site in a run), "
          f"{time.perf_counter() - t0:.1f} s")
