"""The `ncs` command line, in process: demo end to end, eval, masks, data stats, user errors."""
import gzip
import json
import os
from pathlib import Path

import pytest
import torch

from ncs import cli

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "lt4rec" / "part-r-00002.gz"
needs_sample = pytest.mark.skipif(not SAMPLE.is_file(), reason=f"real sample {SAMPLE} not present")


from _tiny import one_thread_module  # noqa: E402,F401  (autouse: one intra-op thread per module)


def _one_line_error(capsys, code, rc, *needles):
    out, err = capsys.readouterr()
    assert rc == code, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    import io
    from contextlib import redirect_stdout, redirect_stderr
    buf, ebuf = io.StringIO(), io.StringIO()
    with redirect_stdout(buf), redirect_stderr(ebuf):
        rc = cli.main(["demo", "--out", str(out), "--rows", "400"])
    return out, rc, buf.getvalue(), ebuf.getvalue()


def test_demo_end_to_end(demo_dir):
    out, rc, stdout, stderr = demo_dir
    assert rc == 0, stderr
    for name in ("Single_Task", "Layer_Share", "Connection_Share", "CVR MSE", "CTR AUC", "CVR gain"):
        assert name in stdout
    assert "kept masks: ctr" in stdout
    assert "masks cvr round 4/4" in stderr  # the log lines of every stage
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"single", "layer", "connection"}
    assert (out / "figures" / "masks.png").stat().st_size > 0


def test_eval_and_masks_commands(demo_dir, capsys):
    out, rc, _, _ = demo_dir
    assert rc == 0
    capsys.readouterr()
    assert cli.main(["eval", "--run", str(out), "--quiet"]) == 0
    got = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "metrics.json").read_text())
    for kind in ("single", "layer", "connection"):
        # re-evaluating the saved models on the rebuilt test split gives the run's test metrics
        assert got["models"][kind]["cvr_mse"] == pytest.approx(saved["models"][kind]["cvr_mse"], rel=1e-6)
        assert got["models"][kind]["ctr_auc"] == pytest.approx(saved["models"][kind]["ctr_auc"], rel=1e-6)
    fig = out / "figures" / "m.png"
    assert cli.main(["masks", "--run", str(out), "--figure", str(fig)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert set(stats["layers"]) == {"tower.layers.0", "tower.layers.1", "tower.layers.2"}
    assert fig.stat().st_size > 0


def test_train_refuses_existing_run_without_resume(demo_dir, capsys):
    out, rc, _, _ = demo_dir
    capsys.readouterr()
    rc = cli.main(["train", "--config", str(out / "config.yaml"), "--out", str(out), "--quiet"])
    _one_line_error(capsys, 2, rc, "--resume")


def test_train_resume_of_finished_run_is_a_no_op(demo_dir, capsys):
    out, rc, _, _ = demo_dir
    before = (out / "models" / "connection.safetensors").read_bytes()
    capsys.readouterr()
    # a changed setting is refused: the run would no longer be the one its checkpoints belong to
    rc = cli.main(["train", "--out", str(out), "--resume", "--quiet", "--models", "connection"])
    _one_line_error(capsys, 2, rc, "config differs", "models")
    # the same config (from the run directory) resumes: every model is done, nothing changes
    assert cli.main(["train", "--out", str(out), "--resume", "--quiet"]) == 0
    assert (out / "models" / "connection.safetensors").read_bytes() == before


def test_config_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  warmup:\n    epoch: 2\n")
    rc = cli.main(["train", "--config", str(bad), "--out", str(tmp_path / "o")])
    _one_line_error(capsys, 2, rc, "stages.warmup.epoch", "unknown key")
    bad.write_text("optim: {lr: -0.1}\n")
    rc = cli.main(["train", "--config", str(bad), "--out", str(tmp_path / "o")])
    _one_line_error(capsys, 2, rc, "optim.lr", "expected a number")
    rc = cli.main(["train", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")])
    _one_line_error(capsys, 2, rc, "not found")
    missing = tmp_path / "m.yaml"
    missing.write_text("data: {kind: tfrecord, path: no_such_file.gz}\n")
    rc = cli.main(["train", "--config", str(missing), "--out", str(tmp_path / "o2"), "--quiet"])
    _one_line_error(capsys, 2, rc, "no_such_file.gz")
    rc = cli.main(["eval", "--run", str(tmp_path / "none")])
    _one_line_error(capsys, 2, rc, "not a run directory")
    rc = cli.main(["masks", "--run", str(tmp_path)])
    _one_line_error(capsys, 2, rc, "masks.safetensors")


@needs_sample
def test_data_stats_on_the_real_sample(capsys):
    assert cli.main(["data", "stats", str(SAMPLE)]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["rows"] == 4322 and st["clicks"] == 1677 and st["fields"] == 20
    assert st["corrupt_records"] == 0


@needs_sample
def test_data_stats_on_a_corrupt_copy(tmp_path, capsys):
    raw = bytearray(gzip.open(SAMPLE).read())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte inside a record
    bad = tmp_path / "corrupt.gz"
    with gzip.open(bad, "wb") as f:
        f.write(bytes(raw))
    rc = cli.main(["data", "stats", str(bad)])
    line = _one_line_error(capsys, 2, rc, "ncs data stats: error", str(bad), "record")
    assert "CRC" in line
    # asked to skip: the corrupt record is counted, the rest is read
    assert cli.main(["data", "stats", str(bad), "--skip-corrupt"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["corrupt_records"] == 1 and st["rows"] == 4321
    trunc = tmp_path / "trunc.gz"
    trunc.write_bytes(SAMPLE.read_bytes()[:200_000])
    rc = cli.main(["data", "stats", str(trunc)])
    _one_line_error(capsys, 2, rc, str(trunc))
    rc = cli.main(["data", "stats", str(tmp_path / "absent.gz")])
    _one_line_error(capsys, 2, rc, "no such file")


@needs_sample
def test_train_and_eval_on_the_real_sample(tmp_path, capsys):
    cfg = tmp_path / "sample.yaml"
    cfg.write_text(
        f"threads: 1\nmodels: [single, connection]\n"
        f"data: {{kind: tfrecord, path: {SAMPLE}, options: {{max_len: 4}}, split: {{by: request}}}}\n"
        "model: {embed_dim: 4, hidden: [16, 8, 4]}\n"
        "optim: {lr: 0.003}\n"
        "train: {batch_size: 512}\n"
        "stages: {warmup: {epochs: 1}, masks: {rounds: 1, final_density: 0.5}, joint: {epochs: 1}}\n"
    )
    out = tmp_path / "run"
    assert cli.main(["train", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "Connection_Share" in printed and "Layer_Share" not in printed
    split = json.loads((out / "split.json").read_text())
    assert split["disjoint"]["request"] is True
    assert split["train"]["rows"] + split["valid"]["rows"] + split["test"]["rows"] == 4322
    vocab = json.loads((out / "vocab.json").read_text())
    assert len(vocab) == 20
    # every row of the file, encoded with the run's vocabulary
    assert cli.main(["eval", "--run", str(out), "--data", str(SAMPLE), "--quiet"]) == 0
    got = json.loads(capsys.readouterr().out)
    conn = got["models"]["connection"]
    assert conn["ctr_rows"] == 4322 and conn["cvr_rows"] == 1677
    assert 0.0 <= conn["ctr_auc"] <= 1.0 and conn["cvr_mse"] < 0.5
