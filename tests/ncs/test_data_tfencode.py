"""The native TFRecord encoder (csrc/cpu/tfrecord_encode.cpp: records straight to ids) against the
native parser + the vectorised LocalVocab encoding it replaces, and the block reader's handling
of records that straddle two inflated blocks. Skipped only where ncs_kernels._C is not built (CI
builds it)."""
import gzip
import os
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import ncs.data as D  # noqa: E402
import ncs.data.tfchunks as TC  # noqa: E402
from ncs.data.columns import LocalVocab, _binary_array, _first_values, _hash_strings, _ids_from_lists  # noqa: E402
from ncs.data.convert import convert  # noqa: E402
from ncs.data.lt4rec import LT4REC_FIELDS, LT4REC_MULTI  # noqa: E402
from ncs.data.shards import EncodedDir  # noqa: E402
from ncs.data.vocab import stable_hash64  # noqa: E402

from test_data_tfrecord import example, frame  # noqa: E402

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "lt4rec", "part-r-00002.gz")
SAMPLE = SAMPLE if os.path.exists(SAMPLE) else "/work/shared/data/lt4rec/part-r-00002.gz"
C = TC._native()
needs_encoder = pytest.mark.skipif(C is None or not hasattr(C, "tfrecord_encode_cpu"),
                                   reason="ncs_kernels._C is not built with the TFRecord encoder")
NAMES = list(LT4REC_FIELDS) + ["label", "cvrlabel", "seqnum"]


def _sample(n):
    raw = zlib.decompress(open(SAMPLE, "rb").read(), 31)
    pos = 0
    for _ in range(n):
        pos += 16 + int.from_bytes(raw[pos:pos + 8], "little")
    return raw[:pos]


def _encode(buf, widths, fixed=None):
    vocabs = [LocalVocab(("-1", ""), binary=True, fixed=None if fixed is None else fixed.get(f, {}))
              for f in LT4REC_FIELDS]
    out = C.tfrecord_encode_cpu(torch.frombuffer(bytearray(buf), dtype=torch.uint8), list(LT4REC_FIELDS), widths,
                                [v.native for v in vocabs], ["label", "cvrlabel"], ["seqnum", "FEA_UID"],
                                [b"", b"-1"], True)
    return out, vocabs


def _reference(buf, widths, fixed=None):
    """The ids, labels and group hashes of the path the encoder replaces."""
    out = C.tfrecord_parse_cpu(torch.frombuffer(bytearray(buf), dtype=torch.uint8), NAMES, True)
    cols = {name: out[2 + 4 * j: 6 + 4 * j] for j, name in enumerate(NAMES)}
    cols = {k: (c.numpy().astype(np.int64), o.numpy(), d.numpy(), x.numpy()) for k, (c, o, d, x) in cols.items()}
    ids, vocabs = {}, {}
    for f, w in zip(LT4REC_FIELDS, widths):
        v = LocalVocab(("-1", ""), binary=True, fixed=None if fixed is None else fixed.get(f, {}))
        counts, offs, data, _ = cols[f]
        a = _ids_from_lists(v, _binary_array(offs, data), counts, w)
        ids[f], vocabs[f] = (a[:, 0] if w == 1 else a), v
    groups = {"seqnum": _hash_strings(_first_values(*cols["seqnum"][:3], b"")),
              "FEA_UID": _hash_strings(_first_values(*cols["FEA_UID"][:3], b"-1"))}
    labels = {k: np.where(cols[k][0] > 0, cols[k][3], np.nan) for k in ("label", "cvrlabel")}
    return int(out[0][0]), int(out[1][0]), ids, labels, groups, vocabs


@needs_encoder
@pytest.mark.parametrize("max_len,fixed", [(8, False), (3, False), (2, True)])
def test_encoder_equals_parser_plus_vectorised_encoding(max_len, fixed):
    buf = _sample(900) + _sample(2)[:100]  # a partial record at the end: left unconsumed
    widths = [max_len if f in LT4REC_MULTI else 1 for f in LT4REC_FIELDS]
    fixed_vocab = None
    if fixed:  # another run's vocabulary: the first 300 records' values (unknown -> 0)
        _, _, _, _, _, v0 = _reference(_sample(300), widths)
        fixed_vocab = {f: {k.decode("utf-8", "replace"): i + 1 for i, k in enumerate(v.values().to_pylist())}
                       for f, v in v0.items()}
    consumed, n, ids, labels, groups, vocabs = _reference(buf, widths, fixed_vocab)
    out, nvocabs = _encode(buf, widths, fixed_vocab)
    assert (int(out[0][0]), int(out[1][0])) == (consumed, n) == (len(_sample(900)), 900)
    for i, f in enumerate(LT4REC_FIELDS):
        np.testing.assert_array_equal(out[2 + i].numpy(), ids[f], err_msg=f)
        assert nvocabs[i].values().to_pylist() == vocabs[f].values().to_pylist(), f
    nf = len(LT4REC_FIELDS)
    np.testing.assert_array_equal(out[2 + nf].numpy(), labels["label"])
    np.testing.assert_array_equal(out[3 + nf].numpy(), labels["cvrlabel"])
    for j, g in enumerate(("seqnum", "FEA_UID")):
        idx, off, data = (t.numpy() for t in out[4 + nf + 3 * j: 7 + nf + 3 * j])
        d = data.tobytes()
        keys = np.asarray([stable_hash64(d[off[k]:off[k + 1]]) for k in range(len(off) - 1)], dtype=np.int64)
        np.testing.assert_array_equal(keys[idx], groups[g], err_msg=g)


@needs_encoder
def test_encoder_repeated_key_last_wins_and_numbers_in_a_field_are_an_error():
    a = example({"FEA_VID": [b"x", b"y"], "label": [1], "FEA_VID ": [b"z"]})
    b = example({"FEA_VID": [b"x"], "label": [0]})
    twice = example({"FEA_VID": [b"a"], "label": [1]})[2:] + example({"FEA_VID": [b"q", b"r"]})[2:]
    twice = b"\x0a" + bytes([len(twice)]) + twice  # the key FEA_VID twice in one map: the last wins
    buf = frame(a) + frame(b) + frame(twice)
    v = C.NativeVocab(False)
    out = C.tfrecord_encode_cpu(torch.frombuffer(bytearray(buf), dtype=torch.uint8), ["FEA_VID"], [2], [v],
                                ["label"], [], [], True)
    np.testing.assert_array_equal(out[2].numpy(), [[1, 2], [1, -1], [3, 4]])
    np.testing.assert_array_equal(out[3].numpy(), [1, 0, 1])
    assert v.values()[1].numpy().tobytes() == b"xyqr"  # "a" never entered: its entry was replaced
    bad = frame(b) + frame(example({"FEA_VID": [3], "label": [1]}))
    with pytest.raises(ValueError, match="record 1: .*holds numbers"):
        C.tfrecord_encode_cpu(torch.frombuffer(bytearray(bad), dtype=torch.uint8), ["FEA_VID"], [1],
                              [C.NativeVocab(False)], [], [], [], True)


@needs_encoder
@pytest.mark.parametrize("gz", [True, False])
def test_records_straddling_blocks(tmp_path, monkeypatch, gz):
    """Tiny blocks: most records (and some length headers) straddle two blocks."""
    raw = _sample(400)
    p = tmp_path / ("s.gz" if gz else "s.tfrecord")
    if gz:
        with gzip.open(p, "wb") as f:
            f.write(raw)
    else:
        p.write_bytes(raw)
    ref, _ = D.encode_lt4rec(str(p))
    monkeypatch.setattr(TC, "_TF_CHUNK", 8 * 701)  # reads of 701 bytes (inflated: a few KB)
    d = EncodedDir(convert([str(p)], str(tmp_path / "o"))["out"])
    m = d.to_memory()
    assert len(m) == 400
    np.testing.assert_array_equal(m.ids.numpy(), ref.ids.numpy())
    for k in ref.labels:
        np.testing.assert_array_equal(m.labels[k].numpy(), ref.labels[k].numpy())
    for k in ref.groups:
        np.testing.assert_array_equal(m.groups[k].numpy(), ref.groups[k].numpy())
    starts = [0]
    while starts[-1] < len(raw):
        starts.append(starts[-1] + 16 + int.from_bytes(raw[starts[-1]:starts[-1] + 8], "little"))
    cut = tmp_path / "cut.tfrecord"
    cut.write_bytes(raw[:starts[5] + 7])  # ends inside record 5's length header
    with pytest.raises(D.DataError, match="record 5: truncated"):
        convert([str(cut)], str(tmp_path / "o2"))
    bad = bytearray(raw)
    bad[starts[1] + 3] ^= 1  # record 1's length header
    (tmp_path / "bad.tfrecord").write_bytes(bytes(bad))
    with pytest.raises(D.DataError, match="record 1: length header CRC mismatch"):
        convert([str(tmp_path / "bad.tfrecord")], str(tmp_path / "o3"))


@pytest.mark.parametrize("values", [["a", "b c", "123", "-1", " ", "~x"], [], ['a"b'], ["a\\b"], ["é"], ["\x7f"],
                                    ["\x1f"], ["tab\t"]])
def test_vocab_json_text_is_json_dumps(values):
    """vocab.json's tables rendered by pyarrow kernels: json.dumps' text exactly, or None (then
    json.dumps itself) for values it would escape."""
    import json

    import pyarrow as pa

    from ncs.data.convert import _json_table, _vocab_json

    ref = json.dumps({v: i + 1 for i, v in enumerate(values)})
    fast = 0
    for t in (pa.string(), pa.large_string(), pa.binary()):
        table = _json_table(pa.array([v.encode() if t == pa.binary() else v for v in values], t))
        assert table is None or table == ref
        fast += table is not None
    assert fast == (3 if all(" " <= c <= "~" and c not in '"\\' for v in values for c in v) else 0)
    vocab = {"f": _json_table(pa.array(values)) or {v: i + 1 for i, v in enumerate(values)}, "g": {"é": 1}}
    assert _vocab_json(vocab) == json.dumps({"f": {v: i + 1 for i, v in enumerate(values)}, "g": {"é": 1}})
