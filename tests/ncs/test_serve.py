"""Serving: ncs export (TorchScript / ONNX per task), ncs predict, ncs data encode, ncs eval --replay.

One tiny CSV run (single, layer, connection) is trained once for the module; everything else
reads it."""
import csv
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ncs import cli
from ncs.config import resolve_config
from ncs.serve import export as E
from ncs.serve.encode import encode_all, iter_chunks
from ncs.serve.predict import rank_score, scored_chunks
from ncs.serve.replay import replay, view_time_at_k
from ncs.serve.runs import Run, ServeError, open_run
from ncs.train import run as train_run

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO.parent / "shared" / "data" / "lt4rec" / "part-r-00002.gz"
SCHEMA = {"fields": [{"name": "user"}, {"name": "video"}, {"name": "cat"},
                     {"name": "tags", "multi": True, "max_len": 3}],
          "click": "click", "conversion": "play", "groups": {"request": "request"}}
KINDS = ("single", "layer", "connection")


from _tiny import one_thread_module  # noqa: E402,F401  (autouse: one intra-op thread per module)


def write_csv(path, rows, seed=0, users=9, videos=13, length=True, labels=True):
    rnd = random.Random(seed)
    cols = ["user", "video", "cat", "tags"] + (["click", "play", "request"] if labels else []) + \
        (["length"] if length else [])
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for i in range(rows):
            c = rnd.randrange(4)
            tags = "|".join(f"t{rnd.randrange(6)}" for _ in range(rnd.randrange(0, 4)))
            click = int(rnd.random() < 0.3 + 0.2 * (c == 1))
            play = round(rnd.random(), 3) if click else 0.0
            row = [f"u{rnd.randrange(users)}", f"v{rnd.randrange(videos)}", f"c{c}", tags]
            if labels:
                row += [click, play, i // 4]
            if length:
                row.append(rnd.choice([30, 60, 120, 300]))
            w.writerow(row)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    data = root / "train.csv"
    write_csv(data, 240)
    cfg = resolve_config({
        "seed": 1, "device": "cpu", "backend": "torch", "models": list(KINDS),
        "data": {"kind": "csv", "path": str(data), "options": {"schema": SCHEMA},
                 "split": {"by": "request", "fractions": [0.6, 0.2, 0.2]}},
        "model": {"embed_dim": 4, "hidden": [16, 8, 4]},
        "optim": {"lr": 0.01},
        "train": {"batch_size": 24, "eval_batch_size": 50},
        "stages": {"warmup": {"epochs": 1}, "masks": {"rounds": 2, "epochs_per_round": 1, "final_density": 0.3},
                   "joint": {"epochs": 1, "select_warmup": False}},  # one snapshot: the masked model itself
    })
    out = root / "run"
    train_run(cfg, str(out))
    new = root / "new.csv"  # other rows, with users and videos never seen in training
    write_csv(new, 37, seed=5, users=14, videos=20)
    return root, out, data, new


def _predict_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


def _err(capsys, rc, *needles):
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


# ---------------------------------------------------------------------------------------------
# Exported models = ncs predict, in a process that cannot import ncs

_LOADER = r"""
import hashlib, importlib, json, os, sys
# no route to ncs: drop the editable-install finders and every path entry that holds the package
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in (getattr(f, "__module__", "") or "")]
sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in (getattr(h, "__module__", "") or "")]
sys.path[:] = [p for p in sys.path
               if not (os.path.isdir(os.path.join(p or ".", "ncs")) or os.path.isdir(os.path.join(p or ".", "ncs_kernels")))
               or os.path.isdir(os.path.join(p or ".", "torch"))]
sys.path_importer_cache.clear()
importlib.invalidate_caches()
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ncs", "ncs_kernels"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, _Block())  # also covers a non-editable install next to torch
for mod in ("ncs", "ncs_kernels"):
    try:
        importlib.import_module(mod)
    except ImportError:
        pass
    else:
        raise SystemExit(mod + " is importable")
import numpy as np, onnxruntime as ort, torch
from safetensors.torch import load_file
ids = load_file(sys.argv[2])["ids"]
out = {}
for d in sys.argv[3:]:
    sig = json.load(open(os.path.join(d, "signature.json")))
    for rel, want in sig["sha256"].items():
        assert hashlib.sha256(open(os.path.join(d, rel), "rb").read()).hexdigest() == want, rel
    assert sig["inputs"][0]["shape"][1] == ids.shape[1]
    for task, t in sig["tasks"].items():
        ts = torch.jit.load(os.path.join(d, t["files"]["torchscript"]))(ids)
        sess = ort.InferenceSession(os.path.join(d, t["files"]["onnx"]), providers=["CPUExecutionProvider"])
        ox = sess.run(None, {"ids": ids.numpy()})[0]
        assert ts.dtype == torch.float32 and ts.shape == (ids.shape[0],) and ox.dtype == np.float32
        out[f"{d}|{task}"] = {"torchscript": ts.tolist(), "onnx": ox.tolist()}
assert not [m for m in sys.modules if m.split(".")[0] in ("ncs", "ncs_kernels")]
json.dump(out, open(sys.argv[1], "w"))
"""


def test_exports_reproduce_predict_without_ncs(trained, tmp_path, capsys, monkeypatch):
    root, run_dir, _, new = trained
    ids_file = tmp_path / "ids.safetensors"
    assert cli.main(["data", "encode", str(new), "--run", str(run_dir), "--out", str(ids_file)]) == 0
    dirs, want = [], {}
    for kind in KINDS:
        for compact in ((False, True) if kind == "connection" else (False,)):
            d = tmp_path / f"{kind}{'-c' if compact else ''}"
            if kind == "layer" and not compact:
                # the legacy (TorchScript-based) ONNX exporter works without onnxscript
                monkeypatch.setitem(sys.modules, "onnxscript", None)
            rc = cli.main(["export", "--run", str(run_dir), "--out", str(d), "--model", kind, "-q"]
                          + (["--compact"] if compact else []))
            monkeypatch.delitem(sys.modules, "onnxscript", raising=False)
            assert rc == 0, capsys.readouterr().err
            dirs.append(str(d))
        scores = tmp_path / f"{kind}.csv"
        assert cli.main(["predict", "--run", str(run_dir), "--data", str(new), "--out", str(scores),
                         "--model", kind, "--batch-size", "10", "-q"]) == 0
        want[kind] = _predict_csv(scores)
    capsys.readouterr()
    res_file = tmp_path / "res.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run([sys.executable, "-I", "-c", _LOADER, str(res_file), str(ids_file)] + dirs,
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(res_file.read_text())
    assert len(got) == len(dirs) * 2
    for key, v in got.items():
        d, task = key.split("|")
        kind = os.path.basename(d).split("-")[0]
        ref = want[kind][task]
        assert len(ref) == 37
        for fmt in ("torchscript", "onnx"):
            np.testing.assert_allclose(np.array(v[fmt]), ref, rtol=0, atol=1e-5, err_msg=f"{key} {fmt}")


def test_signature_and_checksums(trained, tmp_path):
    _, run_dir, _, _ = trained
    d = tmp_path / "x"
    sig = E.export_run(str(run_dir), str(d), kind="connection", tasks=["cvr"], formats=["torchscript"])
    assert sorted(os.listdir(d)) == ["cvr", "fields.json", "signature.json", "vocab.json"]
    assert sig["model"] == "connection" and list(sig["tasks"]) == ["cvr"] and sig["ncs_version"]
    assert sig["inputs"][0]["dtype"] == "int64" and sig["outputs"][0] == {"name": "prob", "dtype": "float32",
                                                                          "shape": ["batch"]}
    assert sig["run"] == os.path.abspath(run_dir)
    assert set(sig["sha256"]) == {"cvr/model.pt", "fields.json", "vocab.json"}
    assert json.loads((d / "vocab.json").read_text()) == json.loads((run_dir / "vocab.json").read_text())
    assert E.verify_export(str(d))["model"] == "connection"
    with open(d / "vocab.json", "a") as f:
        f.write(" ")
    with pytest.raises(E.ExportError, match="vocab.json fails its sha256"):
        E.verify_export(str(d))
    # re-exporting over an earlier export replaces it; a foreign non-empty directory is refused
    E.export_run(str(run_dir), str(d), kind="single", formats=["torchscript"])
    assert E.verify_export(str(d))["model"] == "single" and (d / "ctr").is_dir()
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(E.ExportError, match="not an earlier export"):
        E.export_run(str(run_dir), str(other), formats=["torchscript"])
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


# ---------------------------------------------------------------------------------------------
# Masks folded exactly; compaction changes nothing

def test_masks_folded_exactly(trained, tmp_path):
    _, run_dir, _, _ = trained
    r = open_run(str(run_dir))
    model, _ = r.model("connection", torch.device("cpu"))
    d = tmp_path / "x"
    E.export_run(str(run_dir), str(d), kind="connection", formats=["torchscript"])
    for task in model.tasks:
        net = E.task_network(model, task)
        loaded = torch.jit.load(str(d / task / "model.pt")).state_dict()
        for i, layer in enumerate(model.tower.layers):
            mask = layer.get_mask(task, packed=False)
            assert 0 < mask.float().mean() < 1  # masks really prune something here
            for w in (net.layers[i].weight, loaded[f"net.layers.{i}.weight"]):
                assert torch.equal(w[~mask], torch.zeros(int((~mask).sum())))  # exactly 0.0 where masked
                assert torch.equal(w[mask], layer.weight.detach()[mask])       # untouched elsewhere
                assert not torch.signbit(w[~mask]).any()


def _selection_cfg(data, stages):
    """A small connection run on the trained fixture's data: 2 mask rounds, density 0.3, `stages` merged in."""
    from ncs.config import merge
    return resolve_config({
        "seed": 1, "device": "cpu", "backend": "torch", "models": ["connection"],
        "data": {"kind": "csv", "path": str(data), "options": {"schema": SCHEMA},
                 "split": {"by": "request", "fractions": [0.6, 0.2, 0.2]}},
        "model": {"embed_dim": 4, "hidden": [16, 8, 4]}, "optim": {"lr": 0.05},
        "train": {"batch_size": 24, "eval_batch_size": 50},
        "stages": merge({"masks": {"rounds": 2, "epochs_per_round": 1, "final_density": 0.3}}, stages)})


def test_a_task_served_from_a_warmup_epoch_exports_its_dense_snapshot(trained, tmp_path):
    """stages.joint.select_warmup (the default): a task whose best validation epoch is a warmup one
    is served by the dense warmup model; the export is that network, named as the run's kind."""
    root, _, data, _ = trained
    cfg = _selection_cfg(data, {"warmup": {"epochs": 3}, "joint": {"epochs": 2, "early_stopping": False}})
    out = tmp_path / "run"
    res = train_run(cfg, str(out))
    best = res["stages"]["connection"]["joint"]["early_stopping"]["best_epoch"]
    assert min(best.values()) < 0  # this run serves some task from a warmup epoch (the case under test)
    model, _ = open_run(str(out)).model("connection", torch.device("cpu"))
    d = tmp_path / "x"
    sig = E.export_run(str(out), str(d), kind="connection", formats=["torchscript"])
    assert sig["model"] == "connection"
    g = torch.Generator().manual_seed(3)
    ids = torch.stack([torch.randint(-1, v, (200, 3), generator=g) for v in model.models["cvr"].vocab_sizes], 1)
    ids[:, :, 0] = ids[:, :, 0].clamp_min(0)
    for task, e in best.items():
        net = E.task_network(model, task)
        dense = [lay.get_mask(task, packed=False).all().item() for lay in model.models[task].tower.layers]
        assert all(dense) == (e < 0), (task, e)  # warmup snapshot: every weight; joint: the kept mask
        with torch.no_grad():
            ref = model.predict(ids)[task]
            torch.testing.assert_close(net(ids), ref, rtol=0, atol=1e-5)
            exported = torch.jit.load(str(d / task / "model.pt"))(ids)  # the exported file: probabilities
            torch.testing.assert_close(exported, torch.sigmoid(ref), rtol=0, atol=1e-6)


def test_a_task_served_from_a_mask_round_exports_that_rounds_network(trained, tmp_path):
    """stages.joint.select_rounds: a task served from its mask round k is served (and exported) as
    the round's network, its mask M_k; the export reproduces predict."""
    root, _, data, _ = trained
    cfg = _selection_cfg(data, {"warmup": {"epochs": 1}, "rewind": "mlp",
                                "joint": {"epochs": 2, "early_stopping": False, "select_rounds": True}})
    out = tmp_path / "run"
    res = train_run(cfg, str(out))
    best = res["stages"]["connection"]["joint"]["early_stopping"]["best_epoch"]
    rounds = {t: e for t, e in best.items() if isinstance(e, str)}
    assert rounds, best  # this run serves some task from a mask round (the case under test)
    model, _ = open_run(str(out)).model("connection", torch.device("cpu"))
    d = tmp_path / "x"
    E.export_run(str(out), str(d), kind="connection", formats=["torchscript"])
    g = torch.Generator().manual_seed(3)
    ids = torch.stack([torch.randint(-1, v, (200, 3), generator=g) for v in model.models["cvr"].vocab_sizes], 1)
    ids[:, :, 0] = ids[:, :, 0].clamp_min(0)
    dens = {r["round"]: r["density"] for t in rounds for r in res["stages"]["connection"]["masks"][t]["rounds"]}
    for task, e in rounds.items():
        k = int(e.split(".r")[1])
        layers = model.models[task].tower.layers
        got = sum(lay.get_mask(task, packed=False).sum().item() for lay in layers) / sum(lay.weight.numel() for lay in layers)
        assert got == pytest.approx(dens[k], abs=1e-6), (task, e)   # M_k, the round's own mask
        with torch.no_grad():
            exported = torch.jit.load(str(d / task / "model.pt"))(ids)
            torch.testing.assert_close(exported, torch.sigmoid(model.predict(ids)[task]), rtol=0, atol=1e-6)


def _dead_model(trained):
    """The connection model with masks edited so that every kind of dead unit exists."""
    _, run_dir, _, _ = trained
    model, _ = open_run(str(run_dir)).model("connection", torch.device("cpu"))
    l0, l1, l2 = model.tower.layers
    m0 = l0.get_mask("cvr", packed=False).clone()
    m1 = l1.get_mask("cvr", packed=False).clone()
    m2 = l2.get_mask("cvr", packed=False).clone()
    m0[3, :] = False          # neuron 3 of layer 0: no in-connection (constant relu(b), folded)
    m1[:, 5] = False          # neuron 5 of layer 0: no out-connection (dropped)
    m0[:, 7] = False          # cross input 7: read by no kept weight
    m2[:, 2] = False          # neuron 2 of layer 1: no out-connection
    with torch.no_grad():
        l0.bias[3] = 0.7      # so that the folded constant is not zero
    for layer, m in ((l0, m0), (l1, m1), (l2, m2)):
        layer.set_mask("cvr", m)
    return model


def test_compaction_changes_no_prediction(trained):
    model = _dead_model(trained)
    net = E.task_network(model, "cvr")
    small, sizes = E.compact(net)
    b, a = sizes["before"], sizes["after"]
    assert b["widths"] == [16, 8, 4] and a["widths"][0] <= 14 and a["widths"][1] <= 7
    assert a["inputs"] < b["inputs"] and a["dense_weights"] < b["dense_weights"]
    assert a["nonzero_weights"] <= b["nonzero_weights"]
    g = torch.Generator().manual_seed(3)
    ids = torch.stack([torch.randint(-1, v, (300, 3), generator=g) for v in model.vocab_sizes], 1)
    ids[:, :, 0] = ids[:, :, 0].clamp_min(0)
    with torch.no_grad():
        ref = model.predict(ids)["cvr"]
        torch.testing.assert_close(net(ids), ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(small(ids), net(ids), rtol=0, atol=1e-6)
    again, s2 = E.compact(small)  # a fixpoint
    assert s2["after"] == s2["before"]


def test_compaction_keeps_one_neuron_per_layer():
    g = torch.Generator().manual_seed(0)
    vocab = [3, 4]
    table = torch.randn(8, 2, generator=g)
    table[-1] = 0
    w0 = torch.zeros(5, 4 + 4)     # every neuron of layer 0 dead-in: all constants
    b0 = torch.randn(5, generator=g)
    w1, b1 = torch.randn(3, 5, generator=g), torch.randn(3, generator=g)
    head = (torch.randn(1, 3, generator=g), torch.randn(1, generator=g))
    net = E.CrossMLP(table, vocab, "mean", False, [(w0, b0), (w1, b1)], head).eval()
    small, sizes = E.compact(net)
    assert min(sizes["after"]["widths"]) >= 1
    ids = torch.tensor([[[0, 1], [2, -1]], [[2, -1], [3, 3]]])
    torch.testing.assert_close(small(ids), net(ids), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Bad inputs

def test_bad_inputs_are_clear_errors(trained, tmp_path, capsys):
    root, run_dir, data, new = trained
    out = str(tmp_path / "x")
    _err(capsys, cli.main(["export", "--run", str(tmp_path / "nope"), "--out", out]), "not a run directory")
    empty = tmp_path / "untrained"
    empty.mkdir()
    for f in ("config.yaml", "fields.json", "vocab.json"):
        shutil.copy(run_dir / f, empty / f)
    _err(capsys, cli.main(["export", "--run", str(empty), "--out", out]), "no trained models")
    _err(capsys, cli.main(["predict", "--run", str(empty), "--data", str(new), "--out", str(tmp_path / "s.csv")]),
         "no trained models")
    _err(capsys, cli.main(["export", "--run", str(run_dir), "--out", out, "--model", "mmoe"]),
         "--model", "no trained 'mmoe' model", "single, layer, connection")
    _err(capsys, cli.main(["export", "--run", str(run_dir), "--out", out, "--tasks", "ctr,watch"]),
         "--tasks", "'watch'")
    _err(capsys, cli.main(["export", "--run", str(run_dir), "--out", out, "--formats", "tflite"]), "--formats")
    _err(capsys, cli.main(["predict", "--run", str(run_dir), "--data", str(new), "--out", str(tmp_path / "s.txt")]),
         "--out", ".csv or .parquet")
    _err(capsys, cli.main(["predict", "--run", str(run_dir), "--data", str(tmp_path / "no.csv"),
                           "--out", str(tmp_path / "s.csv")]), "no such file")
    _err(capsys, cli.main(["predict", "--run", str(run_dir), "--data", str(new), "--out", str(tmp_path / "s.csv"),
                           "--rank", "1,1"]), "--rank")
    _err(capsys, cli.main(["predict", "--run", str(run_dir), "--data", str(new), "--out", str(tmp_path / "s.csv"),
                           "--rank", "1,1,1", "--length-column", "duration"]), "missing columns ['duration']")
    nolen = tmp_path / "nolabels.csv"
    write_csv(nolen, 5, labels=False)
    _err(capsys, cli.main(["eval", "--replay", "--run", str(run_dir), "--data", str(nolen)]),
         "missing columns", "click")
    _err(capsys, cli.main(["eval", "--replay", "--run", str(run_dir), "--group", "user"]), "--group", "request")
    novocab = tmp_path / "novocab"
    shutil.copytree(run_dir, novocab)
    os.unlink(novocab / "vocab.json")
    _err(capsys, cli.main(["data", "encode", str(new), "--run", str(novocab), "--out", str(tmp_path / "e.safetensors")]),
         "no vocab.json")
    # an encoded file of another vocabulary: wrong number of fields
    import ncs.data as D
    other = D.EncodedData([D.FieldSpec("a", 5, 1)] * 3, torch.zeros(4, 3, 1, dtype=torch.int64),
                          {"click": torch.zeros(4), "conversion": torch.zeros(4)}, {"request": torch.arange(4)})
    D.save_encoded(other, str(tmp_path / "other.safetensors"))
    _err(capsys, cli.main(["predict", "--run", str(run_dir), "--data", str(tmp_path / "other.safetensors"),
                           "--out", str(tmp_path / "s.csv")]), "3 fields", "the run has 4")


def test_exported_model_rejects_bad_ids(trained, tmp_path):
    _, run_dir, _, _ = trained
    d = tmp_path / "x"
    E.export_run(str(run_dir), str(d), kind="layer", tasks=["ctr"])
    m = torch.jit.load(str(d / "ctr" / "model.pt"))
    import onnxruntime as ort
    sess = ort.InferenceSession(str(d / "ctr" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"ids": np.zeros((3, 4, 5), np.int64)})[0].shape == (3,)
    for bad in (np.zeros((2, 3, 3), np.int64), np.zeros((2, 4), np.int64), np.zeros((2, 4, 3), np.int32)):
        with pytest.raises(Exception, match="INVALID_ARGUMENT"):
            sess.run(None, {"ids": bad})
    vocab = [f["vocab_size"] for f in json.loads((d / "fields.json").read_text())]
    ok = torch.zeros(2, 4, 3, dtype=torch.int64)
    assert m(ok).shape == (2,)
    assert m(torch.zeros(2, 4, 1, dtype=torch.int64)).shape == (2,)  # any number of slots
    for bad, what in ((torch.zeros(2, 3, 3, dtype=torch.int64), "expected int64 \\[B, F, L\\]"),
                      (torch.zeros(2, 4, dtype=torch.int64), "expected int64 \\[B, F, L\\]"),
                      (torch.zeros(2, 4, 3, dtype=torch.int32), "dtype int64"),
                      (torch.full((2, 4, 3), -2, dtype=torch.int64), "out of range")):
        with pytest.raises(Exception, match=what):
            m(bad)
    big = ok.clone()
    big[0, 1, 0] = vocab[1]
    with pytest.raises(Exception, match="out of range"):
        m(big)


def test_unknown_kind_has_no_exporter():
    class Mystery(torch.nn.Module):
        kind = "mystery"
        tasks = ("ctr",)

    with pytest.raises(E.ExportError, match="'mystery' has no plain-torch exporter"):
        E.task_network(Mystery(), "ctr")
    with pytest.raises(E.ExportError, match="unknown task 'cvr'"):
        E.task_network(Mystery(), "cvr")

    class OwnExport(Mystery):  # a kind that brings its own plain-torch network
        def export_task(self, task):
            return torch.nn.Identity()

    assert isinstance(E.task_network(OwnExport(), "ctr"), torch.nn.Identity)


# ---------------------------------------------------------------------------------------------
# Encoding, predict, replay

def test_encode_unseen_values_map_to_missing(trained, tmp_path):
    import ncs.data as D
    _, run_dir, data, new = trained
    r = open_run(str(run_dir))
    vocab = r.vocab
    got, _ = encode_all(r, str(new), chunk_rows=8)   # in chunks of 8 rows
    whole, _ = D.encode_table(str(new), SCHEMA, vocab=vocab, fmt="csv")
    assert torch.equal(got.ids, whole.ids) and torch.equal(got.labels["conversion"], whole.labels["conversion"])
    assert torch.equal(got.groups["request"], whole.groups["request"])
    with open(new) as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        u = row["user"]
        assert int(got.ids[i, 0, 0]) == vocab["user"].get(u, 0)
    assert any(row["user"] not in vocab["user"] for row in rows)  # the file has unseen users
    train_enc, _ = encode_all(r, str(data), chunk_rows=50)
    full, _ = D.encode_table(str(data), SCHEMA)
    assert torch.equal(train_enc.ids, full.ids)      # the training rows encode as in training
    # a scoring file without label columns
    nolab = tmp_path / "nolab.parquet"
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq
    t = pcsv.read_csv(str(new), convert_options=pcsv.ConvertOptions(
        column_types={"user": "string", "video": "string", "cat": "string", "tags": "string"}))
    pq.write_table(t.drop_columns(["click", "play", "request"]), str(nolab))
    nl, length = encode_all(r, str(nolab), length_column="length", chunk_rows=10)
    assert torch.equal(nl.ids, whole.ids)
    np.testing.assert_array_equal(length, np.array([float(x["length"]) for x in rows]))


def test_eval_data_by_format(trained, tmp_path, capsys):
    """`ncs eval --data FILE` reads FILE by its format (ncs.data.formats.detect): a CSV, the same
    rows as Parquet (upper-case suffix) and as an encoded .safetensors give the same metrics; a
    config YAML evaluates its test split."""
    import json

    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    _, run_dir, data, new = trained

    def metrics(path):
        assert cli.main(["eval", "--run", str(run_dir), "--data", str(path), "--quiet"]) == 0
        out = json.loads(capsys.readouterr().out)
        return out["models"], out["data"]

    ref, what = metrics(new)
    assert what == f"every row of {new}" and set(ref) == set(KINDS)
    pq_file = tmp_path / "NEW.PARQUET"
    pq.write_table(pcsv.read_csv(str(new), convert_options=pcsv.ConvertOptions(
        column_types={"user": "string", "video": "string", "cat": "string", "tags": "string"})), str(pq_file))
    assert metrics(pq_file)[0] == ref
    enc = tmp_path / "new.safetensors"
    assert cli.main(["data", "encode", str(new), "--run", str(run_dir), "--out", str(enc)]) == 0
    capsys.readouterr()
    got, what = metrics(enc)
    assert got == ref and what == str(enc)
    own, what = metrics(run_dir / "config.yaml")
    assert what == f"the test split of {run_dir / 'config.yaml'}"
    assert cli.main(["eval", "--run", str(run_dir), "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["models"] == own  # the run's own test split


@pytest.mark.skipif(not SAMPLE.is_file(), reason=f"real sample {SAMPLE} not present")
def test_tfrecord_chunks_match_the_reader(tmp_path):
    import itertools

    import ncs.data as D
    from ncs.serve.encode import _frame
    part = tmp_path / "part.tfrecord"  # the sample's first 500 records (re-framed, CRCs recomputed)
    part.write_bytes(_frame(list(itertools.islice(D.iter_tfrecord(str(SAMPLE)), 500))))
    full, vocab = D.encode_lt4rec(str(part), max_len=4)
    vocab["FEA_VID"] = dict(list(vocab["FEA_VID"].items())[:100])  # later videos: unseen -> 0
    fields = [{"name": f.name, "vocab_size": f.vocab_size if f.name != "FEA_VID" else 101, "max_len": f.max_len}
              for f in full.fields]
    from types import SimpleNamespace  # the parts of a run's Config the encoder reads
    cfg = SimpleNamespace(tasks=(), models=(), data=SimpleNamespace(kind="tfrecord", options={"max_len": 4}))
    r = Run("sample", cfg, fields, vocab)
    chunks = list(iter_chunks(r, str(part), chunk_rows=120, length_column="FEA_DURATION", order_column="FEA_ORDER"))
    assert [c.start for c in chunks] == [0, 120, 240, 360, 480]
    ids = torch.cat([c.data.ids for c in chunks])
    vid = D.LT4REC_FIELDS.index("FEA_VID")
    want = full.ids.clone()
    want[:, vid][want[:, vid] > 100] = 0
    assert torch.equal(ids, want) and int((ids[:, vid, 0] == 0).sum()) >= 300
    assert torch.equal(torch.cat([c.data.groups["request"] for c in chunks]), full.groups["request"])
    assert torch.equal(torch.cat([c.data.labels["conversion"] for c in chunks]), full.labels["conversion"])
    length = np.concatenate([c.length for c in chunks])
    assert len(length) == 500 and length.min() >= 0 and length.max() > 1
    order = np.concatenate([c.order for c in chunks])
    assert np.nanmin(order) == 0 and np.nanmax(order) >= 9 and np.isnan(order).any()  # "-1": missing
    with pytest.raises(ServeError, match="FEA_NOPE"):
        list(iter_chunks(r, str(part), chunk_rows=120, order_column="FEA_NOPE"))
    with pytest.raises(ServeError, match="--length-column.*FEA_NOPE"):
        list(iter_chunks(r, str(part), chunk_rows=120, length_column="FEA_NOPE"))


def test_predict_stream_parquet_and_rank(trained, tmp_path):
    import pyarrow.parquet as pq
    _, run_dir, data, new = trained
    pq_out = tmp_path / "s.parquet"
    assert cli.main(["predict", "--run", str(run_dir), "--data", str(data), "--out", str(pq_out),
                     "--rank", "1,0.5,2", "--length-column", "length", "-q"]) == 0
    t = pq.read_table(str(pq_out)).to_pydict()
    assert list(t) == ["row", "ctr", "cvr", "rank_score"] and t["row"] == list(range(240))
    r = open_run(str(run_dir))
    model, _ = r.model("connection", torch.device("cpu"))
    enc, length = encode_all(r, str(data), length_column="length")
    with torch.no_grad():
        ref = {k: torch.sigmoid(v).numpy() for k, v in model.predict(enc.ids).items()}
    for task in ("ctr", "cvr"):
        np.testing.assert_allclose(t[task], ref[task], rtol=0, atol=1e-6)
        assert 0 < min(t[task]) and max(t[task]) < 1
    want = np.asarray(t["ctr"], np.float64) * np.asarray(t["cvr"], np.float64) ** 0.5 * length ** 2
    np.testing.assert_allclose(t["rank_score"], want, rtol=1e-12)
    # streamed in chunks of 16 rows and batches of 5: the same numbers
    parts = list(scored_chunks(r, "connection", str(data), 5, torch.device("cpu"), chunk_rows=16))
    assert len(parts) == 15
    np.testing.assert_allclose(np.concatenate([p["cvr"] for _, p in parts]), t["cvr"], rtol=0, atol=1e-6)
    assert rank_score(np.array([0.5]), np.array([0.25]), None, (1, 1, 3))[0] == 0.125


def test_view_time_at_k_by_hand():
    groups = np.array([7, 7, 7, 2, 2])
    value = np.array([0.0, 60.0, 30.0, 10.0, 0.0])
    logged = np.zeros(5)
    got = view_time_at_k(groups, logged, value, [1, 2, 5])
    assert got == {1: (0.0 + 10.0) / 2, 2: (60.0 + 10.0) / 2, 5: 100.0 / 2}
    s = np.array([0.1, 0.9, 0.5, 0.2, 0.8])
    assert view_time_at_k(groups, s, value, [1, 2]) == {1: (60.0 + 0.0) / 2, 2: (90.0 + 10.0) / 2}
    ties = np.array([1.0, 1.0, 1.0, 0.0, 0.0])  # ties keep the logged order
    assert view_time_at_k(groups, ties, value, [1]) == {1: 5.0}


def test_replay_on_a_trained_run(trained, capsys):
    _, run_dir, data, _ = trained
    capsys.readouterr()
    assert cli.main(["eval", "--replay", "--run", str(run_dir), "--data", str(data), "--length-column", "length",
                     "--k", "1,2,4", "--rank", "1,1,1"]) == 0
    out, err = capsys.readouterr()
    res = json.loads(out)
    assert "view time at k" in err and "oracle" in err
    assert res["rows"] == 240 and res["groups"] == 60 and set(res["models"]) == set(KINDS)
    # the logged order by hand: the first k rows of each request, play * length
    with open(data) as f:
        rows = list(csv.DictReader(f))
    by_req = {}
    for x in rows:
        by_req.setdefault(x["request"], []).append(float(x["play"]) * float(x["length"]))
    for k in (1, 2, 4):
        hand = sum(sum(v[:k]) for v in by_req.values()) / len(by_req)
        assert res["logged"][str(k)] == pytest.approx(hand, rel=1e-6)
        for m in res["models"].values():
            assert m["rank_score"][str(k)] <= res["oracle"][str(k)] + 1e-9
            assert m["ctr_only"][str(k)] <= res["oracle"][str(k)] + 1e-9
    assert res["logged"]["4"] == pytest.approx(res["oracle"]["4"])  # every request has 4 rows
    # the run's own test split, length 1 by default
    res2 = replay(str(run_dir), kinds=["connection"], ks=[1])
    assert res2["data"] == "the run's test split" and res2["length"].startswith("1 for every")
    split = json.loads((run_dir / "split.json").read_text())
    assert res2["rows"] == split["test"]["rows"] and res2["groups"] == split["test"]["requests"]
    res3 = replay(str(run_dir), kinds=["connection"], ks=[1], length_column="length")
    assert res3["rows"] == res2["rows"] and res3["logged"][1] > 10 * res2["logged"][1]  # lengths 30..300
    with pytest.raises(ServeError, match="--k"):
        replay(str(run_dir), ks=[0])
    # the paper's Table 3 pairing: single's pCTR with each model's pCVR
    mixed = replay(str(run_dir), data=str(data), ks=[1, 2], ctr_model="single", length_column="length")
    plain = replay(str(run_dir), data=str(data), ks=[1, 2], length_column="length")
    assert mixed["ctr_model"] == "single"
    assert mixed["models"]["single"] == plain["models"]["single"]
    for kind in KINDS:
        assert mixed["models"][kind]["ctr_only"] == plain["models"]["single"]["ctr_only"]
    from ncs.serve.replay import replay_table
    assert "single_ctr*connection_cvr 1,1,1" in replay_table(mixed)


def test_replay_logged_order_column(trained):
    from ncs.serve.encode import _orders
    _, run_dir, data, _ = trained
    # any numeric column can give the logged (display) order; here 'length' stands in for a position
    res = replay(str(run_dir), data=str(data), kinds=["single"], ks=[1, 2], order_column="length")
    assert res["logged_order"].startswith("length ascending")
    with open(data) as f:
        rows = list(csv.DictReader(f))
    by_req = {}
    for i, x in enumerate(rows):
        by_req.setdefault(x["request"], []).append((float(x["length"]), i, float(x["play"])))
    for k in (1, 2):
        hand = sum(sum(p for _, _, p in sorted(v)[:k]) for v in by_req.values()) / len(by_req)
        assert res["logged"][k] == pytest.approx(hand, rel=1e-6)
    assert replay(str(run_dir), data=str(data), kinds=["single"], ks=[1])["logged_order"].startswith("the order")
    with pytest.raises(ServeError, match="missing columns \\['pos'\\]"):
        replay(str(run_dir), data=str(data), order_column="pos")
    np.testing.assert_array_equal(_orders([b"3", "-1", None, "x", 0]), [3.0, np.nan, np.nan, np.nan, 0.0])


@pytest.mark.parametrize("pooling,pad_included", [("mean", False), ("mean", True), ("sum", False), ("sum", True)])
@pytest.mark.parametrize("kind", KINDS)
def test_plain_network_equals_predict(kind, pooling, pad_included):
    """Every kind and pooling option, untrained weights and random masks: plain net = predict."""
    from ncs.models import build_model
    vocab = [5, 3, 7]
    model = build_model(kind, vocab, ("ctr", "cvr"), {"embed_dim": 3, "hidden": [9, 5], "pooling": pooling,
                                                    "pad_included": pad_included}, backend="torch").eval()
    g = torch.Generator().manual_seed(1)
    if kind == "connection":
        for task in model.tasks:
            for layer in model.tower.layers:
                layer.set_mask(task, torch.rand(layer.weight.shape, generator=g) < 0.5)
    ids = torch.stack([torch.randint(-1, v, (40, 4), generator=g) for v in vocab], 1)
    ids[:5] = -1  # rows whose fields have no value at all
    with torch.no_grad():
        ref = model.predict(ids)
        for task in model.tasks:
            net = E.task_network(model, task)
            torch.testing.assert_close(net(ids), ref[task], rtol=0, atol=1e-5)
            scorer = torch.jit.script(E.TaskScorer(net, vocab))
            torch.testing.assert_close(scorer(ids), torch.sigmoid(ref[task]), rtol=0, atol=1e-6)


def test_private_embeddings_are_refused_clearly():
    from ncs.models import build_model
    cfg = resolve_config({"models": ["connection"], "model": {"embed_dim": 4, "hidden": [8, 4], "task_embed_dim": 2}})
    for kind in ("connection", "layer"):
        model = build_model(kind, [5, 6, 7], ["ctr", "cvr"], cfg.model, backend="torch")
        with pytest.raises(E.ExportError, match="task_embed_dim"):
            E.task_network(model, "cvr")
