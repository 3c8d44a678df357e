"""Data-parallel training (ncs.distributed): 2 gloo ranks under torchrun vs one process."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from ncs import distributed as D
from ncs.config import resolve_config
from ncs.train import runner
from ncs.train.runner import RunError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CFG = """\
models: [connection]
device: cpu
threads: 1
data: {kind: synthetic, rows: 500, seed: 3}
model: {embed_dim: 4, hidden: [8, 4]}
train: {batch_size: 64}
stages: {warmup: {epochs: 1}, masks: {rounds: 2, epochs_per_round: 1}, joint: {epochs: 1}}
"""


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(ROOT, "python"), ROOT, env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_ranks(script, *args, **env):
    """Two processes running `script` as ranks 0 and 1 of one gloo group on a free local port
    (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT set, plus `env`); stdout/stderr piped."""
    port = _free_port()
    procs = []
    for r in range(2):
        penv = _env()
        penv.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                    **env)
        procs.append(subprocess.Popen([sys.executable, str(script), *args], env=penv, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return procs


def _torchrun(n, *args, timeout=120):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port",
           str(_free_port()), "-m", "ncs", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("balance", ["pcgrad", "uncertainty"])
def test_two_gloo_ranks_match_one_process(tmp_path, balance):
    """PCGrad (the default until 2026-12-03) and uncertainty weighting, each with the default
    optim.embedding_step fused: a 2-rank torchrun run equals the 1-rank run with the same global batch."""
    import yaml

    text = CFG + ("" if balance is None else f"loss: {{balance: {balance}}}\n")
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(text)
    out2 = tmp_path / "r2"
    p = _torchrun(2, "train", "--config", str(cfg_path), "--out", str(out2))
    assert p.returncode == 0, p.stderr[-3000:]
    # the one-process run, same global batch
    cfg = resolve_config(yaml.safe_load(text))
    assert cfg.loss.balance == (balance or "pcgrad") and cfg.optim.embedding_step == "fused"
    one = runner.run(cfg, str(tmp_path / "r1"))
    two = json.loads((out2 / "metrics.json").read_text())
    assert two["world_size"] == 2 and two["config"]["world_size"] == 2 and one["world_size"] == 1
    for k, v in one["models"]["connection"].items():
        assert two["models"]["connection"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    # the same masks as one process (pruning by |w| on equal weights)
    import ncs_kernels as nk
    m1, _ = nk.load_masks(str(tmp_path / "r1" / "masks.safetensors"))
    m2, _ = nk.load_masks(str(out2 / "masks.safetensors"))
    assert D.masks_digest(m1) == D.masks_digest(m2)
    # the ranks' masks are bit-identical (their digests, written by rank 0)
    dist = json.loads((out2 / "distributed.json").read_text())
    hashes = dist["sha256"]["connection"]["masks"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    # ... and equal to the masks file rank 0 wrote
    assert D.masks_digest(m2) == hashes[0]
    # only rank 0 wrote: nothing of another rank's scratch directory in the run directory
    assert sorted(os.listdir(out2 / "checkpoints")) == sorted(os.listdir(tmp_path / "r1" / "checkpoints"))
    # resume with a different world size: a clear one-line error
    if balance is not None:
        return
    with pytest.raises(RunError, match="world size 2, now 1"):
        runner.run(cfg, str(out2), resume=True)


def test_world_size_must_divide_the_batch():
    with pytest.raises(D.DistributedError, match="train.batch_size: 100 is not divisible by the world size 3"):
        D.check_batch(3, 100)
    D.check_batch(4, 100)


def test_env_world_size(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert D.env_world_size() == 1 and D.init("cpu") is None
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(D.DistributedError, match="WORLD_SIZE"):
        D.env_world_size()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(D.DistributedError, match="torchrun"):
        D.init("cpu")


def test_shard_weights_make_the_global_loss():
    """Each rank's scaled loss sums to the global batch's Eq. 2 loss (clicked-rows CVR mean)."""
    from ncs.losses import multitask_loss
    from ncs.train.batches import SplitTensors

    g = torch.Generator().manual_seed(0)
    n = 37
    click = torch.rand(n, generator=g) < 0.3
    split = SplitTensors(torch.zeros(n, 1, 1, dtype=torch.int64), {}, {"ctr": None, "cvr": click},
                         {}, torch.device("cpu"))
    tasks = [{"name": "ctr", "loss": "bce", "weight": 1.0}, {"name": "cvr", "loss": "mse", "weight": 0.7}]
    logits = {t: torch.randn(n, generator=g) for t in ("ctr", "cvr")}
    targets = {"ctr": click.float(), "cvr": torch.rand(n, generator=g)}
    idx = torch.randperm(n, generator=g)[:29]
    want, _ = multitask_loss({k: v[idx] for k, v in logits.items()}, {k: v[idx] for k, v in targets.items()},
                             {"ctr": None, "cvr": click[idx]}, tasks)
    for world in (2, 3, 5):
        got = 0.0
        for r in range(world):
            dp = object.__new__(D.DataParallel)
            dp.rank, dp.world_size, dp.device = r, world, torch.device("cpu")
            loc = dp.shard(split, None, idx)
            _, parts = multitask_loss({k: v[loc] for k, v in logits.items()}, {k: v[loc] for k, v in targets.items()},
                                      {"ctr": None, "cvr": click[loc]}, tasks)
            got = got + dp.mixed_loss("connection", parts, tasks)
        assert float(got) == pytest.approx(float(want), rel=1e-6)


DEAD = textwrap.dedent("""
    import os, sys, time, torch
    from ncs import distributed as D
    dp = D.init("cpu")
    if dp.rank == 1:
        time.sleep(0.5)
        os._exit(3)          # dies without a word
    time.sleep(float(os.environ["WAIT"]))
    try:
        dp.sum(torch.ones(3))
    except D.DistributedError as e:
        print("ERR", e)
        sys.exit(7)
    print("no error")
""")


def test_a_dead_rank_is_named_not_a_hang(tmp_path):
    script = tmp_path / "dead.py"
    script.write_text(DEAD)
    procs = _spawn_ranks(script, NCS_DIST_TIMEOUT="6", NCS_DIST_STALE="3", WAIT="1")
    out0, err0 = procs[0].communicate(timeout=90)
    procs[1].communicate(timeout=30)
    assert procs[0].returncode == 7, (out0, err0[-2000:])
    assert "rank 1" in out0 and "heartbeat" in out0, out0


STEPS = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, sys.argv[1])
    from _steps import STEP_KINDS, max_difference, run_steps, steps_data
    from ncs import distributed as D
    torch.set_num_threads(1)
    dp = D.init("cpu")
    data = steps_data()
    worst = {}
    for balance in ("fixed", "pcgrad", "uncertainty"):
        for kind in STEP_KINDS:
            two = {}
            for step in ("sparse_adam", "fused"):
                a, la = run_steps(kind, step, balance, data, dp)
                b, lb = run_steps(kind, step, balance, data)
                assert all(abs(x - y) <= 1e-5 * abs(y) + 1e-7 for x, y in zip(la, lb)), (step, kind, la, lb)
                worst[balance] = max(worst.get(balance, 0.0), max_difference(a, b))
                state = dict(a.model.state_dict())
                if a.balancer.log_var is not None:   # uncertainty: the log-variances, trained alike
                    state.update({f"s{i}": p.detach().reshape(1) for i, p in enumerate(a.balancer.log_var)})
                    assert all(abs(float(p.detach()) - float(q.detach())) < 1e-6 for p, q in zip(a.balancer.log_var, b.balancer.log_var))
                    assert all(float(p.detach()) != 0.0 for p in a.balancer.log_var)
                dp.check_same(f"{balance} {step} {kind} parameters", D.tensors_digest(state))
                two[step] = a
            worst["fused-vs-sparse"] = max(worst.get("fused-vs-sparse", 0.0), max_difference(two["fused"], two["sparse_adam"]))
    print("WORST", repr(worst))
    dp.close()
""")


def test_two_rank_steps_equal_one_process_steps(tmp_path):
    """Every stage's steps (mixed batches: Eq. 2, ESMM; a mask round; alternating joint steps; the
    last batch short and split unevenly, 1-row batches: fewer rows than ranks) for loss.balance
    fixed, pcgrad and uncertainty, sparse and fused embedding steps, four models: after 2-rank
    steps every parameter (and log-variance) equals the one-process steps' (up to reduction
    order) and is bit-identical across the ranks; fused equals sparse on 2 ranks too."""
    import ast

    script = tmp_path / "steps.py"
    script.write_text(STEPS)
    procs = _spawn_ranks(script, os.path.dirname(os.path.abspath(__file__)), NCS_DIST_TIMEOUT="60")
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, e[-3000:]
    worst = ast.literal_eval(outs[0][0].split("WORST")[1].strip())
    assert set(worst) == {"fixed", "pcgrad", "uncertainty", "fused-vs-sparse"}
    assert max(worst.values()) < 2e-6, worst
