"""Splits keep groups together; the encoded cache round-trips and rejects corrupt files."""
import json
import os
import time

import pytest
import torch

from ncs.data import (DataError, EncodedData, FieldSpec, load_dataset, load_encoded, read_meta,
                      save_encoded, split, split_summary, stats, synthetic)


@pytest.fixture(scope="module")
def data():
    return synthetic(20_000, seed=3)


@pytest.mark.parametrize("by", ["request", "user"])
def test_group_splits_are_disjoint(data, by):
    tr, va, te = split(data, by=by, fractions=(0.7, 0.2, 0.1), seed=1)
    assert len(tr) + len(va) + len(te) == len(data)
    sets = [set(p.groups[by].tolist()) for p in (tr, va, te)]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    for part, frac in zip((tr, va, te), (0.7, 0.2, 0.1)):
        assert abs(len(part) / len(data) - frac) < 0.03
    s = split_summary(tr, va, te)
    assert s["disjoint"][by] is True
    assert s["train"]["rows"] == len(tr) and set(s) == {"train", "valid", "test", "disjoint"}
    assert {"clicks", "click_rate", "conversion_mean", "requests", "users"} <= set(s["valid"])


def test_split_deterministic_and_seeded(data):
    a = split(data, "request", seed=4)
    b = split(data, "request", seed=4)
    c = split(data, "request", seed=5)
    assert all(torch.equal(x.ids, y.ids) for x, y in zip(a, b))
    assert not torch.equal(a[2].groups["request"], c[2].groups["request"])


def test_random_split(data):
    tr, va, te = split(data, by="random", fractions=(0.5, 0.25, 0.25), seed=0)
    assert (len(tr), len(va), len(te)) == (10_000, 5_000, 5_000)
    # rows keep their original order inside each part
    assert bool((tr.groups["request"][1:] >= tr.groups["request"][:-1]).all())


def test_split_arguments(data):
    with pytest.raises(ValueError, match="fractions"):
        split(data, fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="by must be"):
        split(data, by="session")


def _tiny():
    fields = [FieldSpec("a", 5, 1), FieldSpec("b", 3, 2)]
    ids = torch.tensor([[[1, -1], [2, 0]], [[4, -1], [0, -1]], [[0, -1], [1, 2]]])
    return EncodedData(fields, ids, {"click": torch.tensor([1.0, 0, 1]), "conversion": torch.tensor([0.5, 0, 1])},
                       {"request": torch.tensor([7, 7, 9])})


def test_encoded_round_trip(tmp_path):
    d = _tiny()
    p = tmp_path / "sub" / "d.safetensors"
    save_encoded(d, str(p), extra={"note": "x"})
    e = load_encoded(str(p))
    assert e.fields == d.fields and torch.equal(e.ids, d.ids)
    assert e.labels.keys() == d.labels.keys() and all(torch.equal(e.labels[k], d.labels[k]) for k in d.labels)
    assert torch.equal(e.groups["request"], d.groups["request"])
    assert read_meta(str(p))["extra"] == {"note": "x"}
    assert os.listdir(p.parent) == ["d.safetensors"]  # no temporary file left behind
    assert stats(str(p))["rows"] == 3


def test_corrupt_encoded_files(tmp_path):
    p = tmp_path / "d.safetensors"
    save_encoded(_tiny(), str(p))
    raw = p.read_bytes()
    # a flipped byte in the tensor data: caught by the per-tensor CRC
    flipped = bytearray(raw)
    flipped[-3] ^= 0x10
    (tmp_path / "flip.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(DataError, match=r"flip\.safetensors: tensor .* CRC32"):
        load_encoded(str(tmp_path / "flip.safetensors"))
    # truncated file, garbage header, not our format
    (tmp_path / "cut.safetensors").write_bytes(raw[:-10])
    with pytest.raises(DataError, match=r"cut\.safetensors"):
        load_encoded(str(tmp_path / "cut.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{bad}")
    with pytest.raises(DataError, match=r"junk\.safetensors"):
        load_encoded(str(tmp_path / "junk.safetensors"))
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(DataError, match="not an ncs-encoded file"):
        load_encoded(str(tmp_path / "other.safetensors"))
    with pytest.raises(DataError, match="no such file"):
        load_encoded(str(tmp_path / "none.safetensors"))


def test_out_of_range_ids_rejected(tmp_path):
    d = _tiny()
    d.ids[0, 0, 0] = 5  # vocab_size of field a is 5: ids must be < 5
    save_encoded(d, str(tmp_path / "r.safetensors"))
    with pytest.raises(DataError, match="out of range"):
        load_encoded(str(tmp_path / "r.safetensors"))


def test_load_dataset_caches(tmp_path):
    cfg = {"kind": "synthetic", "rows": 3000, "seed": 1, "conflict": 0.5}
    cache = tmp_path / "cache"
    a = load_dataset(cfg, cache_dir=str(cache))
    files = os.listdir(cache)
    assert len(files) == 1 and files[0].startswith("synthetic-")
    b = load_dataset(cfg, cache_dir=str(cache))
    assert torch.equal(a.ids, b.ids) and torch.equal(a.labels["conversion"], b.labels["conversion"])
    assert torch.equal(a.ids, load_dataset(cfg).ids)
    load_dataset(dict(cfg, seed=2), cache_dir=str(cache))
    assert len(os.listdir(cache)) == 2
    # a corrupt cache entry is rebuilt, with a warning
    path = cache / files[0]
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning, match="rebuilding"):
        c = load_dataset(cfg, cache_dir=str(cache))
    assert torch.equal(a.ids, c.ids)
    load_encoded(str(path))  # valid again


def test_load_dataset_csv_invalidated_by_source_change(tmp_path):
    csv = tmp_path / "a.csv"
    csv.write_text("u,c\nx,1\ny,0\n")
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"fields": [{"name": "u"}], "click": "c"}))
    cfg = {"kind": "csv", "path": str(csv), "schema": str(schema)}
    cache = tmp_path / "cache"
    assert len(load_dataset(cfg, cache_dir=str(cache))) == 2
    csv.write_text("u,c\nx,1\ny,0\nz,1\n")
    os.utime(csv, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert len(load_dataset(cfg, cache_dir=str(cache))) == 3
    assert len(os.listdir(cache)) == 2


def test_load_dataset_config_errors(tmp_path):
    with pytest.raises(DataError, match="'kind' must be one of"):
        load_dataset({"kind": "hdf5"})
    with pytest.raises(DataError, match=r"unknown keys \['colour'\]"):
        load_dataset({"kind": "tfrecord", "path": "x", "colour": 1})
    with pytest.raises(DataError, match="needs 'schema'"):
        load_dataset({"kind": "csv", "path": str(tmp_path)})
    with pytest.raises(DataError, match="unknown keyword"):
        load_dataset({"kind": "synthetic", "rows": 10, "colour": 1})
    with pytest.raises(DataError, match="cannot read data source"):
        load_dataset({"kind": "tfrecord", "path": str(tmp_path / "none")}, cache_dir=str(tmp_path))
