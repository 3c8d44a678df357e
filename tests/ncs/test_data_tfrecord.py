"""TFRecord framing, CRC-32C and tf.train.Example decoding, on hand-made files."""
import gzip
import os
import random
import struct

import numpy as np
import pytest

from ncs.data import DataError, iter_tfrecord, parse_example
from ncs.data import crc as C


# ---- a tiny protobuf / TFRecord encoder, written independently of the decoder under test ----
def varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num: int, wire: int, body: bytes) -> bytes:
    key = varint((num << 3) | wire)
    if wire == 2:
        return key + varint(len(body)) + body
    return key + body


def feature(values, packed=True) -> bytes:
    if values and isinstance(values[0], bytes):
        inner = b"".join(field(1, 2, v) for v in values)
        return field(1, 2, inner)
    if values and isinstance(values[0], float):
        if packed:
            inner = field(1, 2, struct.pack(f"<{len(values)}f", *values))
        else:
            inner = b"".join(field(1, 5, struct.pack("<f", v)) for v in values)
        return field(2, 2, inner)
    if packed:
        inner = field(1, 2, b"".join(varint(v) for v in values))
    else:
        inner = b"".join(field(1, 0, varint(v)) for v in values)
    return field(3, 2, inner)


def example(feats: dict, packed=True) -> bytes:
    entries = b"".join(field(1, 2, field(1, 2, k.encode()) + field(2, 2, feature(v, packed)))
                       for k, v in feats.items())
    return field(1, 2, entries)


def frame(payload: bytes) -> bytes:
    head = struct.pack("<Q", len(payload))
    return (head + struct.pack("<I", C.mask_crc(C.crc32c_scalar(head))) + payload
            + struct.pack("<I", C.mask_crc(C.crc32c_scalar(payload))))


def write_records(path, payloads, compress=False):
    blob = b"".join(frame(p) for p in payloads)
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(blob)
    else:
        with open(path, "wb") as f:
            f.write(blob)
    return blob


# ---- CRC-32C ----
def test_crc32c_known_vectors():
    assert C.crc32c_scalar(b"") == 0
    assert C.crc32c_scalar(b"123456789") == 0xE3069283  # the standard check value
    assert C.crc32c_scalar(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4
    assert C.crc32c_scalar(b"\xff" * 32) == 0x62A8AB43
    assert C.crc32c_scalar(bytes(range(32))) == 0x46DD794E


@pytest.mark.parametrize("piece", [None, 1, 5, 32, 300])
def test_crc32c_vectorised_matches_scalar(piece):
    rng = random.Random(piece or 0)
    msgs = [bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 3, 4, 8, 31, 32, 33, 700, 2049])))
            for _ in range(60)]
    got = C.crc32c_many(msgs, piece=piece)
    assert got.dtype == np.uint32
    assert [int(x) for x in got] == [C.crc32c_scalar(m) for m in msgs]
    assert C.crc32c_batch(msgs) == [C.crc32c_scalar(m) for m in msgs]
    assert C.crc32c_many([]).shape == (0,)


def test_crc32c_package_agrees_with_fallback():
    if C.PACKAGE is None:
        pytest.skip("neither the google-crc32c nor the crc32c package is installed")
    rng = random.Random(1)
    for n in (0, 1, 9, 1000, 70000):
        m = bytes(rng.getrandbits(8) for _ in range(n))
        assert C.crc32c_package(m) == C.crc32c_scalar(m) == int(C.crc32c_many([m])[0])


def test_mask_crc():
    crc = 0x12345678
    rot = ((crc >> 15) | (crc << 17)) & 0xFFFFFFFF
    assert C.mask_crc(crc) == (rot + 0xA282EAD8) & 0xFFFFFFFF
    arr = np.array([0, crc, 0xFFFFFFFF], dtype=np.uint32)
    assert [int(x) for x in C.mask_crc_array(arr)] == [C.mask_crc(int(x)) for x in arr]


# ---- protobuf ----
def test_parse_example_all_list_kinds():
    feats = {"b": [b"x", b"", "\u4e2d".encode()], "f": [0.5, -2.0, 3.25], "i": [0, 1, -1, 2**40, -(2**63)],
             "empty_i": []}
    for packed in (True, False):
        out = parse_example(example(feats, packed=packed))
        assert out["b"] == feats["b"]
        assert out["f"] == feats["f"]
        assert out["i"] == feats["i"]
        assert out["empty_i"] == []


def test_parse_example_skips_unknown_fields():
    payload = field(7, 0, varint(99)) + example({"a": [1]}) + field(9, 5, b"\0\0\0\0")
    assert parse_example(payload) == {"a": [1]}


@pytest.mark.parametrize("bad", [b"\x0a\x05\x0a", b"\x0a", b"\x0b\x00", b"\x08" + b"\xff" * 11])
def test_parse_example_malformed(bad):
    with pytest.raises(DataError, match="malformed"):
        parse_example(bad)


# ---- record framing ----
@pytest.mark.parametrize("compress", [False, True])
def test_roundtrip_records(tmp_path, compress):
    payloads = [example({"label": [i % 2], "x": [str(i).encode()]}) for i in range(50)] + [b""]
    path = tmp_path / ("r.gz" if compress else "r.tfrecord")
    write_records(path, payloads, compress)
    st = {}
    assert list(iter_tfrecord(path, stats=st)) == payloads
    assert st == {"records": 51, "corrupt_records": 0}


def test_bad_payload_crc_names_record(tmp_path):
    payloads = [example({"label": [i]}) for i in range(10)]
    blob = bytearray(write_records(tmp_path / "ok", payloads))
    # flip one payload byte of record 3
    offset = sum(16 + len(p) for p in payloads[:3]) + 12 + 2
    blob[offset] ^= 0x40
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(bytes(blob))
    with pytest.raises(DataError, match=r"bad\.gz: record 3: payload CRC"):
        list(iter_tfrecord(bad))
    st = {}
    got = list(iter_tfrecord(bad, skip_corrupt=True, stats=st))
    assert got == payloads[:3] + payloads[4:]
    assert st == {"records": 9, "corrupt_records": 1}


def test_bad_length_header_resyncs(tmp_path):
    payloads = [example({"label": [i], "pad": [b"y" * i]}) for i in range(8)]
    blob = bytearray(write_records(tmp_path / "ok", payloads))
    offset = sum(16 + len(p) for p in payloads[:5])  # length field of record 5
    blob[offset] ^= 0x01
    bad = tmp_path / "bad.tfrecord"
    bad.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="record 5: length header CRC"):
        list(iter_tfrecord(bad))
    st = {}
    got = list(iter_tfrecord(bad, skip_corrupt=True, stats=st))
    assert got == payloads[:5] + payloads[6:]
    assert st["corrupt_records"] == 1


@pytest.mark.parametrize("cut", [3, 12, 20])
def test_truncated_file(tmp_path, cut):
    payloads = [example({"label": [i], "pad": [b"z" * 30]}) for i in range(4)]
    blob = write_records(tmp_path / "ok", payloads)
    last_start = sum(16 + len(p) for p in payloads[:3])
    bad = tmp_path / "trunc.tfrecord"
    bad.write_bytes(blob[: last_start + cut])
    with pytest.raises(DataError, match=r"trunc\.tfrecord: record 3: truncated"):
        list(iter_tfrecord(bad))
    st = {}
    assert list(iter_tfrecord(bad, skip_corrupt=True, stats=st)) == payloads[:3]
    assert st == {"records": 3, "corrupt_records": 1}


def test_truncated_gzip_stream(tmp_path):
    payloads = [os.urandom(2000) for _ in range(20)]  # incompressible, so the cut lands mid-records
    write_records(tmp_path / "ok.gz", payloads, compress=True)
    raw = (tmp_path / "ok.gz").read_bytes()
    bad = tmp_path / "cut.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"cut\.gz: record \d+: compressed stream"):
        list(iter_tfrecord(bad))
    st = {}
    got = list(iter_tfrecord(bad, skip_corrupt=True, stats=st))
    assert 0 < len(got) < 20 and got == payloads[: len(got)]
    assert st["corrupt_records"] == 1


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        list(iter_tfrecord(tmp_path / "nope"))


def test_concatenated_gzip_members(tmp_path):
    payloads = [example({"a": [i]}) for i in range(10)]
    blob = (gzip.compress(b"".join(frame(p) for p in payloads[:4]))
            + gzip.compress(b"".join(frame(p) for p in payloads[4:])))
    (tmp_path / "mm.gz").write_bytes(blob)
    assert list(iter_tfrecord(tmp_path / "mm.gz")) == payloads
