"""The real LT4REC sample (../shared/data/lt4rec/part-r-00002.gz): counts, labels, stats, corruption."""
import gzip
import struct
from pathlib import Path

import pytest
import torch

from ncs.data import (LT4REC_FIELDS, DataError, encode_lt4rec, iter_tfrecord, load_lt4rec,
                      parse_example, stats)

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "lt4rec" / "part-r-00002.gz"
needs_sample = pytest.mark.skipif(not SAMPLE.exists(), reason=f"real sample not present at {SAMPLE}")


@pytest.fixture(scope="module")
def sample():
    if not SAMPLE.exists():
        pytest.skip(f"real sample not present at {SAMPLE}")
    return encode_lt4rec(SAMPLE)


@needs_sample
def test_sample_records_parse():
    first = parse_example(next(iter(iter_tfrecord(SAMPLE))))
    for name in LT4REC_FIELDS:
        assert name in first and all(isinstance(v, bytes) for v in first[name])
    assert isinstance(first["label"][0], int) and isinstance(first["cvrlabel"][0], float)


def test_sample_counts_and_labels(sample):
    data, vocab = sample
    click, conv = data.labels["click"], data.labels["conversion"]
    assert len(data) == 4322
    assert int(click.sum()) == 1677
    assert torch.equal(conv > 0, click > 0)  # a play rate exactly where there is a click
    assert abs(float(conv[click > 0].mean()) - 0.818) < 0.001
    assert float(conv.min()) >= 0 and float(conv.max()) <= 1
    assert data.ids.shape == (4322, 20, 8) and data.ids.dtype == torch.int64
    assert [f.name for f in data.fields] == list(LT4REC_FIELDS)
    assert int(torch.unique(data.groups["request"]).numel()) == 603
    assert int(torch.unique(data.groups["user"]).numel()) == 500
    # README: 500 users and 4,191 videos -> vocab sizes (row 0 = missing)
    sizes = {f.name: f.vocab_size for f in data.fields}
    assert sizes["FEA_UID"] == 501 and sizes["FEA_VID"] == 4192
    assert len(vocab["FEA_VID"]) == 4191


def test_sample_id_layout(sample):
    data, _ = sample
    for f, spec in enumerate(data.fields):
        col = data.ids[:, f]
        assert int(col.max()) < spec.vocab_size
        assert bool((col[:, 0] >= 0).all())  # slot 0 always holds an id (0 = missing)
        assert bool((col[:, spec.max_len:] == -1).all())  # beyond max_len: padding
        if spec.max_len > 1:
            assert spec.max_len == 8
            # padding only after the values
            valid = col >= 0
            assert bool((valid[:, 1:] <= valid[:, :-1]).all())
    stag = LT4REC_FIELDS.index("FEA_STAG")
    assert int((data.ids[:, stag, 0] == 0).sum()) > 0  # "-1" values became id 0


def test_fixed_vocab_maps_unknown_to_zero(sample):
    data, vocab = sample
    small = {k: dict(list(v.items())[:3]) for k, v in vocab.items()}
    data2 = load_lt4rec(SAMPLE, vocab=small)
    assert data2.fields[4].vocab_size == 4
    assert int(data2.ids[:, 4, 0].max()) <= 3
    same = data.ids[:, 4, 0] <= 3
    assert torch.equal(data2.ids[same, 4, 0], data.ids[same, 4, 0])
    assert bool((data2.ids[~same, 4, 0] == 0).all())
    # groups do not depend on the vocabulary
    assert torch.equal(data2.groups["user"], data.groups["user"])


def test_max_len_truncates(sample):
    data, _ = sample
    d3 = load_lt4rec(SAMPLE, max_len=3)
    assert d3.ids.shape == (4322, 20, 3)
    assert torch.equal(d3.ids, data.ids[:, :, :3])


@needs_sample
def test_sample_stats():
    s = stats(SAMPLE)
    assert s["rows"] == 4322 and s["clicks"] == 1677 and s["conversions"] == 1677
    assert s["fields"] == 20 and s["corrupt_records"] == 0
    assert abs(s["click_rate"] - 1677 / 4322) < 1e-9
    assert abs(s["conversion_mean"] - 0.818) < 0.001


@needs_sample
def test_corrupt_copy_of_sample(tmp_path):
    raw = bytearray(gzip.decompress(SAMPLE.read_bytes()))
    # walk to record 100 and flip a byte inside its payload
    off = 0
    for _ in range(100):
        (n,) = struct.unpack_from("<Q", raw, off)
        off += 16 + n
    raw[off + 12 + 5] ^= 0xFF
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match=r"bad\.gz: record 100"):
        load_lt4rec(bad)
    d = load_lt4rec(bad, skip_corrupt=True)
    assert len(d) == 4321
    s = stats(bad)
    assert s["rows"] == 4321 and s["corrupt_records"] == 1
    # truncated: drop the last 10 bytes of the decompressed stream
    cut = tmp_path / "cut.tfrecord"
    cut.write_bytes(gzip.decompress(SAMPLE.read_bytes())[:-10])
    with pytest.raises(DataError, match=r"cut\.tfrecord: record 4321: truncated"):
        load_lt4rec(cut)
    assert len(load_lt4rec(cut, skip_corrupt=True)) == 4321


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="max_len"):
        load_lt4rec(tmp_path / "x", max_len=0)
    with pytest.raises(ValueError, match="unknown fields"):
        load_lt4rec(tmp_path / "x", vocab={"NOPE": {}})


def test_sample_split_and_cache(sample, tmp_path):
    from ncs.data import load_dataset, split, split_summary

    data, _ = sample
    s = split_summary(*split(data, by="request", seed=0))
    assert s["disjoint"]["request"] and s["train"]["rows"] + s["valid"]["rows"] + s["test"]["rows"] == 4322
    assert s["train"]["requests"] + s["valid"]["requests"] + s["test"]["requests"] == 603
    cfg = {"kind": "tfrecord", "path": str(SAMPLE), "max_len": 8}
    a = load_dataset(cfg, cache_dir=str(tmp_path))
    b = load_dataset(cfg, cache_dir=str(tmp_path))  # from the cache
    assert torch.equal(a.ids, data.ids) and torch.equal(b.ids, data.ids) and b.fields == data.fields
    assert torch.equal(b.groups["request"], data.groups["request"])
    assert stats(next(tmp_path.glob("tfrecord-*.safetensors")))["clicks"] == 1677
