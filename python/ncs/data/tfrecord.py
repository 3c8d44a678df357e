"""TFRecord framing and tf.train.Example decoding, without TensorFlow or protobuf.

Record: uint64 length (LE) | uint32 masked crc32c(length bytes) | payload | uint32 masked
crc32c(payload). Files may be gzip-compressed (detected by the magic bytes, not the name).
"""
from __future__ import annotations

import os
import struct
import zlib
from typing import Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from .crc import TABLE, crc32c_batch, crc32c_scalar, mask_crc, mask_crc_array
from .errors import DataError

_HEADER = 12
_FOOTER = 4
_CHUNK = 8 << 20  # decompressed bytes read per refill
_BATCH = 4096  # records whose payload CRCs are checked together (vectorised)

FeatureValues = Union[List[bytes], List[float], List[int]]


class _Reader:
    """Buffered decompressed stream. gzip is decoded here with zlib (not gzip.open) so that a
    damaged or truncated stream still yields everything before the damage; failures become
    DataError with the record number (or, with ``tolerate``, end the stream)."""

    def __init__(self, path: str, tolerate: bool = False):
        self.path = path
        self.tolerate = tolerate  # skip_corrupt: a broken stream ends it like a truncation
        self.raw = open(path, "rb")
        self.gzip = self.raw.read(2) == b"\x1f\x8b"
        self.raw.seek(0)
        self.inflate = zlib.decompressobj(wbits=31) if self.gzip else None
        self.buf = bytearray()
        self.pos = 0
        self.eof = False

    def _read_chunk(self) -> bytes:
        if not self.gzip:
            return self.raw.read(_CHUNK)
        while True:
            data = self.raw.read(_CHUNK // 4)
            if not data:
                if not self.inflate.eof:
                    raise EOFError("compressed stream ends before its end marker")
                return b""
            out = bytearray()
            while data:
                if self.inflate.eof:  # a concatenated gzip member follows
                    self.inflate = zlib.decompressobj(wbits=31)
                out += self.inflate.decompress(data)
                data = self.inflate.unused_data if self.inflate.eof else b""
            if out:
                return bytes(out)

    def fill(self, need: int, record: int) -> None:
        while len(self.buf) - self.pos < need and not self.eof:
            try:
                chunk = self._read_chunk()
            except (OSError, EOFError, zlib.error) as e:
                self.eof = True
                if self.tolerate:
                    return
                raise DataError(f"{self.path}: record {record}: compressed stream is corrupt "
                                f"or truncated ({e})") from e
            if not chunk:
                self.eof = True
            else:
                if self.pos:
                    del self.buf[: self.pos]
                    self.pos = 0
                self.buf += chunk

    def available(self) -> int:
        return len(self.buf) - self.pos

    def rest(self, record: int) -> bytes:
        self.fill(1 << 62, record)
        out = bytes(self.buf[self.pos:])
        self.pos = len(self.buf)
        return out

    def close(self) -> None:
        self.raw.close()


def _window_header_ok(data: bytes) -> np.ndarray:
    """Offsets o where bytes [o, o+8) have the masked CRC stored at [o+8, o+12)."""
    n = len(data) - _HEADER + 1
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    arr = np.frombuffer(data, dtype=np.uint8)
    state = np.full(n, 0xFFFFFFFF, dtype=np.uint32)
    for j in range(8):  # 8 byte positions, every window at once
        state = TABLE[(state ^ arr[j: j + n].astype(np.uint32)) & 0xFF] ^ (state >> 8)
    crc = state ^ np.uint32(0xFFFFFFFF)
    stored = (arr[8: 8 + n].astype(np.uint32) | (arr[9: 9 + n].astype(np.uint32) << 8)
              | (arr[10: 10 + n].astype(np.uint32) << 16) | (arr[11: 11 + n].astype(np.uint32) << 24))
    return np.nonzero(mask_crc_array(crc) == stored)[0]


def _resync(data: bytes) -> Optional[int]:
    """First offset in ``data`` at which a whole valid record starts, or None."""
    for o in _window_header_ok(data):
        o = int(o)
        (length,) = struct.unpack_from("<Q", data, o)
        end = o + _HEADER + length + _FOOTER
        if end > len(data):
            continue
        payload = data[o + _HEADER: o + _HEADER + length]
        (stored,) = struct.unpack_from("<I", data, end - _FOOTER)
        if mask_crc(crc32c_scalar(payload) if length <= 64 else crc32c_batch([payload])[0]) == stored:
            return o
    return None


def iter_tfrecord(path: Union[str, os.PathLike], skip_corrupt: bool = False,
                  stats: Optional[Dict[str, int]] = None) -> Iterator[bytes]:
    """Yield the raw payload of every record of a (possibly gzip) TFRecord file, CRC-checked.

    A bad CRC or a truncated record raises DataError naming the file and the 0-based record
    number; with ``skip_corrupt=True`` it is skipped instead and counted in ``stats`` (a dict
    updated in place with "records" and "corrupt_records"). A corrupt *length* header makes
    the framing unknown: the reader then scans forward for the next offset where a whole,
    CRC-valid record starts (this loads the rest of the file into memory).
    """
    path = os.fspath(path)
    if stats is None:
        stats = {}
    stats.setdefault("records", 0)
    stats.setdefault("corrupt_records", 0)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    reader = _Reader(path, tolerate=skip_corrupt)
    record = 0  # 0-based index of the next record in the file

    def corrupt(msg: str) -> None:
        if not skip_corrupt:
            raise DataError(f"{path}: record {record}: {msg}")
        stats["corrupt_records"] += 1

    try:
        while True:
            # Frame up to _BATCH records, checking each length header as we go (the framing
            # depends on it), then check all payload CRCs of the batch in one vectorised call.
            batch: List[Tuple[bytes, int]] = []
            bad_header = None
            while len(batch) < _BATCH:
                reader.fill(_HEADER, record + len(batch))
                if reader.available() == 0:
                    break
                if reader.available() < _HEADER:
                    bad_header = "truncated"
                    break
                head = bytes(reader.buf[reader.pos: reader.pos + _HEADER])
                length, stored_len_crc = struct.unpack("<QI", head)
                if mask_crc(crc32c_scalar(head[:8])) != stored_len_crc:
                    bad_header = "length header CRC mismatch"
                    break
                reader.fill(_HEADER + length + _FOOTER, record + len(batch))
                if reader.available() < _HEADER + length + _FOOTER:
                    bad_header = f"truncated (header says {length} payload bytes)"
                    break
                start = reader.pos + _HEADER
                payload = bytes(reader.buf[start: start + length])
                (stored,) = struct.unpack_from("<I", reader.buf, start + length)
                reader.pos = start + length + _FOOTER
                batch.append((payload, stored))
            if batch:
                crcs = crc32c_batch([p for p, _ in batch])
                for (payload, stored), crc in zip(batch, crcs):
                    if mask_crc(crc) != stored:
                        corrupt("payload CRC mismatch")
                    else:
                        stats["records"] += 1
                        yield payload
                    record += 1
            if bad_header is not None:
                corrupt(bad_header)
                record += 1
                if bad_header.startswith("truncated"):
                    return
                rest = reader.rest(record)
                # skip past the bad header byte, then find the next whole valid record
                offset = _resync(rest[1:])
                if offset is None:
                    return
                reader.buf = bytearray(rest[1 + offset:])
                reader.pos = 0
                continue
            if not batch:
                return
    finally:
        reader.close()


# ---------------------------------------------------------------------------------------------
# Protobuf (tf.train.Example) decoding: just the wire format, by hand.
#   Example  { Features features = 1; }
#   Features { map<string, Feature> feature = 1; }   (map entry: key = 1, value = 2)
#   Feature  { oneof { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
#   BytesList { repeated bytes value = 1; }  FloatList { repeated float value = 1; }  Int64List { repeated int64 value = 1; }


class _ProtoError(Exception):
    pass


def _varint(buf: bytes, pos: int, end: int) -> Tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise _ProtoError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _ProtoError("varint too long")


def _fields(buf: bytes, pos: int, end: int) -> Iterator[Tuple[int, int, object]]:
    """Yield (field number, wire type, value) where value is an int (varint / fixed) or a
    (start, stop) slice for length-delimited fields."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        num, wire = key >> 3, key & 7
        if num == 0:
            raise _ProtoError("field number 0")
        if wire == 0:
            val, pos = _varint(buf, pos, end)
        elif wire == 1:
            if pos + 8 > end:
                raise _ProtoError("truncated fixed64")
            val = (pos, pos + 8)
            pos += 8
        elif wire == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise _ProtoError("length-delimited field runs past its message")
            val = (pos, pos + n)
            pos += n
        elif wire == 5:
            if pos + 4 > end:
                raise _ProtoError("truncated fixed32")
            val = (pos, pos + 4)
            pos += 4
        else:
            raise _ProtoError(f"unsupported wire type {wire}")
        yield num, wire, val


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= (1 << 63) else v


def _parse_feature(buf: bytes, start: int, end: int) -> FeatureValues:
    out: FeatureValues = []
    for num, wire, val in _fields(buf, start, end):
        if wire != 2 or num not in (1, 2, 3):
            continue  # unknown fields are skipped, as protobuf does
        s, e = val  # type: ignore[misc]
        if num == 1:
            out = [bytes(buf[a:b]) for n, w, (a, b) in _fields(buf, s, e) if n == 1 and w == 2]  # type: ignore[misc]
        elif num == 2:
            floats: List[float] = []
            for n, w, v in _fields(buf, s, e):
                if n != 1:
                    continue
                a, b = v  # type: ignore[misc]
                if w == 2:  # packed
                    if (b - a) % 4:
                        raise _ProtoError("packed float list length not a multiple of 4")
                    floats.extend(struct.unpack_from(f"<{(b - a) // 4}f", buf, a))
                elif w == 5:
                    floats.append(struct.unpack_from("<f", buf, a)[0])
                else:
                    raise _ProtoError(f"float value with wire type {w}")
            out = floats
        else:
            ints: List[int] = []
            for n, w, v in _fields(buf, s, e):
                if n != 1:
                    continue
                if w == 2:  # packed varints
                    a, b = v  # type: ignore[misc]
                    p = a
                    while p < b:
                        x, p = _varint(buf, p, b)
                        ints.append(_signed64(x))
                elif w == 0:
                    ints.append(_signed64(v))  # type: ignore[arg-type]
                else:
                    raise _ProtoError(f"int64 value with wire type {w}")
            out = ints
    return out


def parse_example(payload: bytes) -> Dict[str, FeatureValues]:
    """Decode a serialized tf.train.Example into {feature name: list of values}.

    BytesList -> list[bytes], FloatList -> list[float], Int64List -> list[int]; both packed
    and unpacked repeated encodings are accepted. Raises DataError on malformed input."""
    buf = bytes(payload)
    result: Dict[str, FeatureValues] = {}
    try:
        for num, wire, val in _fields(buf, 0, len(buf)):
            if num != 1 or wire != 2:
                continue
            fs, fe = val  # type: ignore[misc]
            for n, w, entry in _fields(buf, fs, fe):  # Features.feature map entries
                if n != 1 or w != 2:
                    continue
                es, ee = entry  # type: ignore[misc]
                key = None
                value: FeatureValues = []
                for kn, kw, kv in _fields(buf, es, ee):
                    if kn == 1 and kw == 2:
                        a, b = kv  # type: ignore[misc]
                        key = buf[a:b].decode("utf-8")
                    elif kn == 2 and kw == 2:
                        a, b = kv  # type: ignore[misc]
                        value = _parse_feature(buf, a, b)
                if key is None:
                    raise _ProtoError("feature map entry without a key")
                result[key] = value
    except (_ProtoError, UnicodeDecodeError, struct.error) as e:
        raise DataError(f"malformed tf.train.Example: {e}") from e
    return result
