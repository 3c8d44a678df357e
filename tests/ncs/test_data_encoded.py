"""The encoded shard format, `ncs data convert|synth`, streamed training and the time / given splits."""
import json
import os
import zlib

import numpy as np
import pytest
import torch

import ncs.data as D
from ncs.cli import main
from ncs.config import DEFAULT_TASKS, resolve_config
from ncs.data.convert import _native, convert, synth, validate_labels
from ncs.data.shards import EncodedDir, id_dtype, write_encoded
from ncs.data.stream import StreamPart, StreamSplit, open_source, split_source
from ncs.train import batches as B
from ncs.train.runner import run

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "lt4rec", "part-r-00002.gz")
SAMPLE = SAMPLE if os.path.exists(SAMPLE) else "/work/shared/data/lt4rec/part-r-00002.gz"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def syn():
    return D.synthetic(3000, seed=1)


@pytest.fixture(scope="module")
def enc(syn, tmp_path_factory):
    return write_encoded(syn, str(tmp_path_factory.mktemp("enc") / "d"), shard_rows=500)


def _equal(a, b):
    assert torch.equal(a.ids, b.ids)
    assert [(f.name, f.vocab_size, f.max_len) for f in a.fields] == [(f.name, f.vocab_size, f.max_len) for f in b.fields]
    for k in b.labels:
        assert torch.equal(a.labels[k], b.labels[k]), k
    for k in b.groups:
        assert torch.equal(a.groups[k], b.groups[k]), k


def test_round_trip_and_compact_types(syn, enc):
    _equal(enc.to_memory(), syn)
    assert len(enc.shards) == 6 and enc.shards[-1].rows == 500
    d = EncodedDir(enc.path, verify=True)
    assert np.load(os.path.join(d.path, "shard-00000", "f.age.npy")).dtype == np.int8
    assert np.load(os.path.join(d.path, "shard-00000", "f.tags.npy")).shape == (500, 5)
    assert np.load(os.path.join(d.path, "shard-00000", "l.click.npy")).dtype == np.uint8
    # resident bytes per row of the training columns: <= F * 4 + 16
    per_row = sum(np.load(os.path.join(d.path, "shard-00000", f"{c}.npy")).nbytes / 500
                  for c in d.columns if not c.startswith("g.") and not c.startswith("f.tags")
                  and not c.startswith("f.ucat"))
    assert per_row <= 14 * 4 + 16
    assert id_dtype(128) == np.int8 and id_dtype(129) == np.int16 and id_dtype(1 << 31) == np.int32


def test_synth_cli_equals_synthetic(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["data", "synth", "--rows", "1500", "--seed", "2", "--conflict", "0.5", "--out", str(out),
                 "--shard-rows", "400"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 1500
    _equal(EncodedDir(str(out)).to_memory(), D.synthetic(1500, seed=2, conflict=0.5))
    assert main(["data", "synth", "--rows", "10", "--out", str(out)]) == 2  # exists
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("window", [1 << 20, 1000])
def test_streamed_batches_equal_in_memory(enc, window):
    mem = B.prepare_split(enc.to_memory(), DEFAULT_TASKS, "click", CPU)
    ss = B.prepare_split(StreamPart(enc), DEFAULT_TASKS, "click", CPU, stream={"window_rows": window, "prefetch": 2})
    sb, mb = B.mixed_batches(ss, 256, 0, "mixed", 1), B.mixed_batches(mem, 256, 0, "mixed", 1)
    assert len(sb) == len(mb)
    seen = []
    for (_, i1), (_, i2) in zip(sb, mb):
        a, b = ss.batch(i1), mem.batch(i1.idx)
        assert torch.equal(a[0], b[0])
        for k in a[1]:
            assert torch.equal(a[1][k], b[1][k])
            assert (a[2][k] is None) == (b[2][k] is None) and (a[2][k] is None or torch.equal(a[2][k], b[2][k]))
        if window > 3000:  # one window: the in-memory order exactly
            assert torch.equal(i1.idx, i2)
        seen.append(i1.idx)
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(3000))  # every row once
    al = list(B.alternating_batches(ss, ["ctr", "cvr"], 256, 0, "joint", 0))
    am = B.alternating_batches(mem, ["ctr", "cvr"], 256, 0, "joint", 0)
    assert [t for t, _ in al] == [t for t, _ in am]
    if window > 3000:
        assert all(torch.equal(x.idx, y) for (_, x), (_, y) in zip(al, am))
    rest = list(B.from_batch(B.alternating_batches(ss, ["ctr", "cvr"], 256, 0, "joint", 0), 5))
    assert [(t, x.idx.tolist()) for t, x in rest] == [(t, x.idx.tolist()) for t, x in al[5:]]
    # the cycled alternation (joint.alternate: cycle), lazy on the streamed path
    cyc = B.cycled_alternating_batches(ss, ["ctr", "cvr"], 256, 0, "joint", 0)
    assert not isinstance(cyc, list)
    cl, cm = list(cyc), B.cycled_alternating_batches(mem, ["ctr", "cvr"], 256, 0, "joint", 0)
    assert len(cyc) == len(cl) == len(cm) and [t for t, _ in cl] == [t for t, _ in cm]
    assert sum(t == "cvr" for t, _ in cl) == sum(t == "ctr" for t, _ in cl)  # CVR's rows gone over again
    if window > 3000:
        assert all(torch.equal(x.idx, y) for (_, x), (_, y) in zip(cl, cm))
    for k in (1, 7, len(cl) - 1):
        rest = list(B.from_batch(B.cycled_alternating_batches(ss, ["ctr", "cvr"], 256, 0, "joint", 0), k))
        assert [(t, x.idx.tolist()) for t, x in rest] == [(t, x.idx.tolist()) for t, x in cl[k:]]
    assert torch.equal(ss.ids[10:300], mem.ids[10:300])
    assert torch.equal(ss.ids.index_select(0, torch.tensor([5, 2999, 0])), mem.ids[[5, 2999, 0]])
    for t in ("ctr", "cvr"):
        assert torch.equal(ss.targets[t], mem.targets[t]) and torch.equal(ss.space_index[t], mem.space_index[t])
    assert torch.equal(ss.spaces["cvr"], mem.spaces["cvr"]) and ss.spaces["ctr"] is None


def test_time_split_in_memory_and_streamed(syn, tmp_path):
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 20, (len(syn),), generator=g) * 86400 + 1_600_000_000  # twenty "days"
    data = D.EncodedData(syn.fields, syn.ids, syn.labels, {**syn.groups, "time": t})
    parts = D.split_index(data, by="time", fractions=(0.8, 0.1, 0.1))
    times = [t[p] for p in parts]
    assert sum(p.numel() for p in parts) == len(data)
    assert times[0].max() < times[1].min() <= times[1].max() < times[2].min()  # ordered, no value in two parts
    d = write_encoded(data, str(tmp_path / "t"), shard_rows=700)
    assert d.dtypes["g.time"] == "int64"
    sp = split_source(open_source(d.path), "time", (0.8, 0.1, 0.1), 0)
    for p, q in zip(sp, parts):
        assert np.array_equal(p.rows if p.rows is not None else np.arange(len(data)), q.numpy())
    with pytest.raises(D.DataError, match="'time' group"):
        split_source(open_source(write_encoded(syn, str(tmp_path / "nt")).path), "time", (0.8, 0.1, 0.1), 0)
    with pytest.raises(ValueError, match="'time' group"):
        D.split_index(syn, by="time")


def test_hash_split_keeps_groups_whole(enc):
    tr, va, te = split_source(open_source(enc.path), "request", (0.8, 0.1, 0.1), 3)
    req = enc.read_column("g.request")
    sets = [set(req[p.rows].tolist()) for p in (tr, va, te)]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert len(tr) + len(va) + len(te) == 3000 and 0.7 < len(tr) / 3000 < 0.9


def _cfg(path, **data):
    return resolve_config({
        "seed": 0, "threads": 1, "models": ["connection", "single"], "device": "cpu",
        "data": {"kind": "encoded", "path": path, "stream": {"window_rows": 1000}, **data},
        "model": {"embed_dim": 4, "hidden": [16, 8, 4]},
        "train": {"batch_size": 256, "eval_batch_size": 1024, "checkpoint_every": 3},
        "stages": {"warmup": {"epochs": 1}, "masks": {"rounds": 1, "final_density": 0.5},
                   "joint": {"epochs": 1}},
    })


@pytest.fixture(scope="module")
def full_stream_run(enc, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run") / "full")
    return out, run(_cfg(enc.path), out)


@pytest.mark.parametrize("stop_after", [2, 13])
def test_resume_mid_epoch_on_streamed_data(enc, full_stream_run, tmp_path, stop_after):
    from ncs.train.stages import StopTraining

    out = str(tmp_path / "r")
    with pytest.raises(StopTraining):
        run(_cfg(enc.path), out, stop_after_checkpoints=stop_after)
    first = _cfg(enc.path).models[0]
    doc = json.load(open(os.path.join(out, "checkpoints", f"{first}.json")))
    if stop_after == 2:
        assert doc["pos"]["batch"] == 6  # stopped inside the first epoch
    res = run(_cfg(enc.path), out, resume=True)
    assert res["models"] == full_stream_run[1]["models"]


def test_given_split_mapping_and_vocab_mismatch(tmp_path, syn):
    a = write_encoded(syn.subset(torch.arange(0, 2000)), str(tmp_path / "a"))
    b = write_encoded(syn.subset(torch.arange(2000, 2500)), str(tmp_path / "b"))
    c = write_encoded(syn.subset(torch.arange(2500, 3000)), str(tmp_path / "c"))
    cfg = _cfg({"train": a.path, "valid": b.path, "test": c.path})
    cfg = cfg.override({"models": ["single"]})
    res = run(cfg, str(tmp_path / "run"))
    split = json.load(open(tmp_path / "run" / "split.json"))
    assert [split[k]["rows"] for k in ("train", "valid", "test")] == [2000, 500, 500]
    assert split["by"].startswith("given") and "ctr_auc" in res["models"]["single"]
    other = D.synthetic(500, seed=9)
    o = write_encoded(other, str(tmp_path / "o"))
    with pytest.raises(D.DataError, match="another vocabulary"):
        open_source({"train": a.path, "valid": o.path, "test": c.path})


def test_given_split_of_files_in_memory(tmp_path):
    import pyarrow as pa
    import pyarrow.csv as pcsv

    rng = np.random.default_rng(0)
    paths = {}
    for name, n in (("train", 400), ("valid", 100), ("test", 100)):
        click = rng.integers(0, 2, n)
        tab = pa.table({"u": rng.integers(0, 30, n).astype(str), "v": rng.integers(0, 50, n).astype(str),
                        "click": click, "conv": click * rng.random(n)})
        paths[name] = str(tmp_path / f"{name}.csv")
        pcsv.write_csv(tab, paths[name])
    schema = {"fields": [{"name": "u"}, {"name": "v"}], "click": "click", "conversion": "conv"}
    cfg = resolve_config({"threads": 1, "models": ["single"], "device": "cpu",
                          "data": {"kind": "csv", "path": paths, "options": {"schema": schema}},
                          "model": {"embed_dim": 4, "hidden": [8, 4]}, "train": {"batch_size": 128},
                          "stages": {"warmup": {"epochs": 1}, "joint": {"epochs": 0}}})
    run(cfg, str(tmp_path / "run"))
    split = json.load(open(tmp_path / "run" / "split.json"))
    assert [split[k]["rows"] for k in ("train", "valid", "test")] == [400, 100, 100]
    vocab = json.load(open(tmp_path / "run" / "vocab.json"))
    assert set(vocab) == {"u", "v"}


def test_convert_sample_matches_reader(tmp_path):
    ref, vocab = D.encode_lt4rec(SAMPLE)
    d = EncodedDir(convert([SAMPLE], str(tmp_path / "s"))["out"], verify=True)
    _equal(d.to_memory(), ref)
    assert d.vocab() == vocab
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]  # nothing half-written left


def test_convert_native_and_python_agree(tmp_path, monkeypatch):
    import gzip

    raw = zlib.decompress(open(SAMPLE, "rb").read(), 31)
    n = 0
    pos = 0
    while n < 600:  # the first 600 records, twice, in two files (a glob)
        pos += 16 + int.from_bytes(raw[pos:pos + 8], "little")
        n += 1
    for i in range(2):
        with gzip.open(tmp_path / f"p{i}.gz", "wb") as f:
            f.write(raw[:pos])
    ref, _ = D.encode_lt4rec([tmp_path / "p0.gz", tmp_path / "p1.gz"])
    a = EncodedDir(convert([str(tmp_path / "p*.gz")], str(tmp_path / "a"))["out"])
    _equal(a.to_memory(), ref)
    import ncs.data.tfchunks as C  # where the native-parser cache lives

    monkeypatch.setattr(C, "_inflater", lambda: zlib)  # zlib where python-isal is installed
    z = EncodedDir(convert([str(tmp_path / "p*.gz")], str(tmp_path / "z"))["out"])
    _equal(z.to_memory(), ref)
    monkeypatch.setattr(C, "_NATIVE", [None])  # as when _C lacks the parser (and the native vocabulary)
    b = EncodedDir(convert([str(tmp_path / "p*.gz")], str(tmp_path / "b"))["out"])
    _equal(b.to_memory(), ref)


def test_native_parser_checks_both_crcs():
    C = _native()
    if C is None:
        pytest.skip("ncs_kernels._C is not built")  # CI builds it; the python path is tested above
    raw = bytearray(zlib.decompress(open(SAMPLE, "rb").read(), 31)[:20000])
    assert C.crc32c_cpu(torch.frombuffer(bytearray(b"123456789"), dtype=torch.uint8)) == D.crc32c(b"123456789")
    for at, msg in ((3, "length header CRC"), (40, "payload CRC")):
        bad = bytearray(raw)
        bad[at] ^= 0x10
        with pytest.raises(ValueError, match=msg):
            C.tfrecord_parse_cpu(torch.frombuffer(bad, dtype=torch.uint8), ["label"], True)


def _table(tmp_path, fmt, n=3000):
    import pyarrow as pa

    rng = np.random.default_rng(1)
    click = rng.integers(0, 2, n)
    tab = pa.table({"uid": rng.integers(0, 500, n), "vid": np.char.add("v", rng.integers(0, 900, n).astype(str)),
                    "tags": ["|".join(map(str, rng.integers(0, 20, rng.integers(0, 4)))) for _ in range(n)],
                    "cat": rng.integers(0, 7, n).astype(str),
                    "click": click, "conv": click * rng.random(n), "req": rng.integers(0, 400, n),
                    "day": rng.integers(0, 5, n)})
    p = str(tmp_path / f"t.{fmt}")
    if fmt == "csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(tab, p)
    else:
        import pyarrow.parquet as pq

        pq.write_table(tab, p, row_group_size=700)
    schema = {"fields": [{"name": "uid"}, {"name": "vid"}, {"name": "tags", "multi": True, "max_len": 3},
                         {"name": "cat", "hash_buckets": 5}],
              "click": "click", "conversion": "conv", "groups": {"request": "req", "time": "day"}}
    return p, schema


@pytest.mark.parametrize("fmt,workers", [("csv", 1), ("csv", 3), ("parquet", 2)])
def test_convert_tables_match_reader(tmp_path, fmt, workers):
    p, schema = _table(tmp_path, fmt)
    ref, vocab = D.encode_table(p, schema)
    d = EncodedDir(convert([p], str(tmp_path / "o"), schema=schema, workers=workers, batch_rows=1000)["out"])
    m = d.to_memory()
    assert torch.equal(m.ids, ref.ids)
    assert [f.vocab_size for f in m.fields] == [f.vocab_size for f in ref.fields]
    for k in ref.labels:
        assert torch.equal(m.labels[k], ref.labels[k])
    assert d.vocab() == vocab
    assert torch.equal(m.groups["time"], torch.from_numpy(np.asarray(__import__("pyarrow.parquet").parquet.read_table(
        p).column("day")) if fmt == "parquet" else m.groups["time"].numpy()))
    assert d.dtypes["g.time"] == "int8"
    assert torch.equal(ref.groups["time"], m.groups["time"])  # the in-memory reader keeps time values too
    parts = D.split_index(ref, by="time", fractions=(0.6, 0.2, 0.2))
    days = [set(ref.groups["time"][p].tolist()) for p in parts]
    assert days == [{0, 1, 2}, {3}, {4}]
    # a test file encoded with the training vocabulary: the same vocab_hash, given-split ready
    e = EncodedDir(convert([p], str(tmp_path / "e"), schema=schema, vocab_from=d.path)["out"])
    assert e.vocab_hash == d.vocab_hash and torch.equal(e.to_memory().ids, m.ids)


def test_label_validation_names_file_row_column(tmp_path):
    import pyarrow as pa
    import pyarrow.csv as pcsv

    validate_labels("f", 0, np.array([0.0, 1.0]), np.array([0.0, 0.5]))
    cases = [([0, 2], [0, 0], "row 11: column 'click' must be 0 or 1, got 2"),
             ([0, 1], [0, 1.5], "row 11: column 'conv' must be a finite number"),
             ([0, 1], [0.3, 0.5], "row 10: column 'conv' is 0.3 > 0 on a row whose 'click' is 0"),
             ([0, None], [0, 0], "row 11: column 'click' must be 0 or 1, got empty")]
    for click, conv, msg in cases:
        p = str(tmp_path / "bad.csv")
        pcsv.write_csv(pa.table({"u": ["a"] * 12, "click": [0] * 10 + click, "conv": [0.0] * 10 + conv}), p)
        with pytest.raises(D.DataError, match=msg.replace("(", r"\(")) as e:
            convert([p], str(tmp_path / "x"), schema={"fields": [{"name": "u"}], "click": "click",
                                                      "conversion": "conv"})
        assert p in str(e.value)
        assert not os.path.exists(tmp_path / "x") and not [q for q in os.listdir(tmp_path) if ".tmp-" in q]


def test_bad_shards_are_clear_errors(enc, tmp_path):
    import shutil

    d = str(tmp_path / "c")
    shutil.copytree(enc.path, d)
    f = os.path.join(d, "shard-00002", "l.conversion.npy")
    raw = bytearray(open(f, "rb").read())
    raw[-3] ^= 0xFF
    open(f, "wb").write(bytes(raw))
    with pytest.raises(D.DataError, match="shard-00002/l.conversion.npy: checksum does not match"):
        EncodedDir(d, verify=True)
    ss = StreamSplit(StreamPart(EncodedDir(d)), DEFAULT_TASKS, "click", CPU)
    with pytest.raises(D.DataError, match="checksum does not match"):
        ss.gather_ids(np.arange(1000, 1100))
    m = json.load(open(os.path.join(d, "manifest.json")))
    m["shards"][1]["rows"] = 499
    json.dump(m, open(os.path.join(d, "manifest.json"), "w"))
    with pytest.raises(D.DataError, match="manifest.json: manifest does not match its shards"):
        EncodedDir(d)
    m["shards"][1]["rows"] = 500
    m["fields"][0]["vocab_size"] = 1 << 20  # implies int32 ids; the file holds int16
    json.dump(m, open(os.path.join(d, "manifest.json"), "w"))
    with pytest.raises(D.DataError, match="f.uid.npy: int16 .* manifest implies int32"):
        EncodedDir(d)
    os.remove(os.path.join(d, "manifest.json"))
    with pytest.raises(D.DataError, match="not an encoded directory"):
        EncodedDir(d)


def test_cli_convert_errors_are_one_line(tmp_path, capsys):
    assert main(["data", "convert", str(tmp_path / "nope.gz"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "nope.gz: no such file" in err and len(err.strip().splitlines()) == 1
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n")
    assert main(["data", "convert", str(p), "--out", str(tmp_path / "o")]) == 2
    assert "needs --schema" in capsys.readouterr().err


def test_eval_on_encoded_run_and_directory(enc, full_stream_run, tmp_path, capsys):
    out = full_stream_run[0]
    assert main(["eval", "--run", out, "-q"]) == 0  # the run's own (streamed) test split
    res = json.loads(capsys.readouterr().out)
    assert res["models"]["single"] == full_stream_run[1]["models"]["single"]
    assert main(["eval", "--run", out, "--data", enc.path, "-q"]) == 0  # every row of a directory
    assert json.loads(capsys.readouterr().out)["data"].startswith("every row of")
    other = write_encoded(D.synthetic(300, seed=9), str(tmp_path / "o"))
    assert main(["eval", "--run", out, "--data", other.path, "-q"]) == 2
    assert "another vocabulary" in capsys.readouterr().err


def test_convert_with_a_run_vocabulary_then_eval(tmp_path, capsys):
    cfg = resolve_config({"threads": 1, "models": ["single"], "device": "cpu",
                          "data": {"kind": "tfrecord", "path": SAMPLE, "split": {"by": "request"}},
                          "model": {"embed_dim": 4, "hidden": [8, 4]}, "train": {"batch_size": 512},
                          "stages": {"warmup": {"epochs": 1}, "joint": {"epochs": 0}}})
    run(cfg, str(tmp_path / "run"))
    d = convert([SAMPLE], str(tmp_path / "e"), vocab_from=str(tmp_path / "run"))["out"]
    assert main(["eval", "--run", str(tmp_path / "run"), "--data", d, "-q"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert main(["eval", "--run", str(tmp_path / "run"), "--data", SAMPLE, "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["models"] == res["models"]  # same as the file read directly


def test_bench_data_smoke(tmp_path):
    import subprocess
    import sys

    repo = os.path.join(os.path.dirname(__file__), "..", "..")
    env = dict(os.environ, NCS_BENCH_RESULTS=str(tmp_path), PYTHONPATH=os.pathsep.join(
        [os.path.join(repo, "python"), repo, os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, os.path.join(repo, "bench", "data.py"), "synth", "--rows", "2000",
                        "--tmp", str(tmp_path)], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    doc = json.load(open(tmp_path / "data_synth.json"))
    assert doc["rows"] == 2000 and doc["bytes_per_row"] > 0
    assert [q for q in os.listdir(tmp_path) if q.startswith("ncs-bench")] == []  # inputs deleted


def test_convert_corrupt_tfrecord_names_file_and_record(tmp_path):
    raw = bytearray(zlib.decompress(open(SAMPLE, "rb").read(), 31))
    first = 16 + int.from_bytes(raw[:8], "little")
    bad = bytearray(raw)
    bad[first + 12 + 30] ^= 0x01  # a payload byte of record 1
    (tmp_path / "crc.tfrecord").write_bytes(bytes(bad))
    (tmp_path / "cut.tfrecord").write_bytes(bytes(raw[:first + 40]))  # ends inside record 1
    for name, msg in (("crc", "record 1: payload CRC mismatch"), ("cut", "record 1: truncated")):
        with pytest.raises(D.DataError, match=msg) as e:
            convert([str(tmp_path / f"{name}.tfrecord")], str(tmp_path / f"o-{name}"))
        assert f"{name}.tfrecord" in str(e.value) and not (tmp_path / f"o-{name}").exists()
    s = convert([str(tmp_path / "crc.tfrecord")], str(tmp_path / "skip"), skip_corrupt=True)
    assert s["rows"] == 4321 and s["stats"]["corrupt_records"] == 1


@pytest.mark.parametrize("how", ["first", "random"])
def test_streamed_data_fraction_subset_gathers_only_its_rows(enc, how):
    """stages.*.data_fraction on streamed data (protocol.subset_split): the subset equals the
    one cut from the split's full-length columns (ids, targets, spaces, dtypes), and the streamed
    split's full-length label columns are never materialised."""
    from ncs.train.protocol import subset_split

    ss = StreamSplit(StreamPart(EncodedDir(enc.path)), DEFAULT_TASKS, "click", CPU)
    sub = subset_split(ss, 0.3, how, 7)
    assert dict.__len__(ss.targets) == 0 and dict.__len__(ss.spaces) == 0  # nothing built lazily
    ref_rows = (torch.arange(len(sub)) if how == "first" else
                __import__("ncs.train.batches", fromlist=["permutation"]).permutation(len(ss), 7, "subset", 0, CPU)
                [:len(sub)].sort().values)
    assert torch.equal(sub.ids, ss.ids.index_select(0, ref_rows))
    for t in ("ctr", "cvr"):
        full_t = ss.targets[t]
        assert sub.targets[t].dtype == full_t.dtype and torch.equal(sub.targets[t], full_t.index_select(0, ref_rows))
        full_s = ss.spaces[t]
        assert (sub.spaces[t] is None) == (full_s is None)
        if full_s is not None:
            assert torch.equal(sub.spaces[t], full_s.index_select(0, ref_rows))
            assert torch.equal(sub.space_index[t], full_s.index_select(0, ref_rows).nonzero().squeeze(1))
