"""TFRecord (LT4REC) files read in large chunks of records for `ncs data convert`.

_tf_encoded_native  the native encoder of ncs_kernels._C (tfrecord_encode_cpu; both CRCs checked):
                    records straight to id columns through the fields' NativeVocab tables;
                    32 MiB of decompressed records per call, read and inflated (python-isal when
                    installed, else zlib) on a reader thread while the previous block is parsed
_tf_chunks_native   the native parser (tfrecord_parse_cpu): the same blocks into value columns
_tf_chunks_python   the same chunks from the pure-Python reader (ncs.data.tfrecord), used when _C
                    lacks the parser or with skip_corrupt (it resynchronises after a bad record)
Each chunk of the last two: (first record, records, {feature: (counts, offsets, bytes, first
numeric value)}).
"""
from __future__ import annotations

import glob
import os
from typing import Any, Dict, List

import numpy as np

from .errors import DataError

_TF_CHUNK = 32 << 20  # decompressed TFRecord bytes parsed per native call


_NATIVE: List[Any] = []


def _native():
    """ncs_kernels._C when it has the TFRecord parser, else None. Loaded from its file without
    running ncs_kernels/__init__ (which costs seconds: backends, Triton)."""
    if _NATIVE:
        return _NATIVE[0]
    import sys

    C = sys.modules.get("ncs_kernels._C")
    if C is None:
        try:
            import importlib.util

            import torch  # noqa: F401  (the extension links against it)

            spec = importlib.util.find_spec("ncs_kernels")
            so = []
            for d in (spec.submodule_search_locations or []) if spec else []:
                so += sorted(glob.glob(os.path.join(d, "_C*.so")) + glob.glob(os.path.join(d, "_C*.pyd")))
            if so:
                s2 = importlib.util.spec_from_file_location("ncs_kernels._C", so[0])
                C = importlib.util.module_from_spec(s2)
                s2.loader.exec_module(C)
                sys.modules["ncs_kernels._C"] = C
        except Exception:
            C = None
    C = C if C is not None and hasattr(C, "tfrecord_parse_cpu") else None
    _NATIVE.append(C)
    return C


def _inflater():
    """The gzip inflater: python-isal's (ISA-L, about twice zlib's speed; the `fast-data` extra)
    when installed, else zlib. Both give the same bytes and the same API."""
    try:
        from isal import isal_zlib

        return isal_zlib
    except ImportError:
        import zlib

        return zlib


def _inflated_blocks(path: str, out: "queue.Queue", stop: "threading.Event") -> None:
    """Read `path` (gzip or not) and put its decompressed bytes on `out` as they come (one bytes
    object per read of _TF_CHUNK // 8 compressed bytes, a few times that inflated), then None.
    An error is put as ("error", DataError). Runs on a reader thread: zlib and file reads release
    the GIL, so inflating overlaps the parse of the previous block."""
    zlib = _inflater()
    try:
        with open(path, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            inflate = zlib.decompressobj(wbits=31) if gz else None
            while not stop.is_set():
                data = raw.read(_TF_CHUNK // 8)
                if not data:
                    if gz and not inflate.eof:
                        raise DataError("compressed stream ends before its end marker")
                    break
                if gz:
                    try:
                        while data:
                            if inflate.eof:
                                inflate = zlib.decompressobj(wbits=31)
                            out.put(inflate.decompress(data))
                            data = inflate.unused_data if inflate.eof else b""
                    except zlib.error as e:
                        raise DataError(f"compressed stream is corrupt ({e})") from e
                else:
                    out.put(data)
        out.put(None)
    except BaseException as e:  # noqa: BLE001  (handed to the consumer, which raises it)
        out.put(("error", e))


def _tensor(buf, offset: int = 0):
    """A uint8 tensor over `buf` from `offset`, without a copy (a bytes object is read-only: the
    parsers only read it, so torch's warning about that is silenced)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(buf, dtype=torch.uint8, offset=offset)


def _native_blocks(path: str, parse):
    """(first record, records, parse(buffer)) per block of whole records: the file read and
    inflated on a background thread; parse(uint8 tensor) -> the native output ([consumed],
    [records], ...). Each inflated block is parsed where it lies; only a record that straddles
    two blocks is copied (and parsed on its own). Errors of the native parser ("record K: ...")
    are renamed to the file's record numbers."""
    import queue
    import threading

    blocks: "queue.Queue" = queue.Queue(maxsize=3)
    stop = threading.Event()
    reader = threading.Thread(target=_inflated_blocks, args=(path, blocks, stop), daemon=True,
                              name="ncs-tfrecord-read")
    reader.start()
    left = b""
    rec0 = 0

    def run(buf, offset=0):
        try:
            return parse(_tensor(buf, offset))
        except ValueError as e:
            msg = str(e)
            if msg.startswith("record "):
                k, _, rest = msg[7:].partition(":")
                msg = f"record {rec0 + int(k)}:{rest}"
            raise DataError(f"{path}: {msg}") from None

    try:
        while True:
            block = blocks.get()
            if isinstance(block, tuple):
                e = block[1]
                if isinstance(e, DataError):
                    raise DataError(f"{path}: record {rec0}: {e}") from None
                raise e
            if block is None:
                if left:
                    if len(left) >= 12:
                        run(bytearray(left))  # checks the length header's CRC, as for any record
                    raise DataError(f"{path}: record {rec0}: truncated (the file ends inside a record)")
                return
            at = 0
            if left:  # complete the record that the previous block ended inside
                if len(left) < 12:
                    take = min(12 - len(left), len(block))
                    left, at = left + block[:take], take
                    if len(left) < 12:
                        continue
                    run(bytearray(left))  # the length header's CRC (nothing is consumed yet)
                need = 16 + int.from_bytes(left[:8], "little") - len(left)
                if need > len(block) - at:
                    left += block[at:]
                    continue
                one = bytearray(left)
                one += block[at:at + need]
                out = run(one)
                yield rec0, 1, out
                rec0 += 1
                at += need
                left = b""
            if at == len(block):
                continue
            out = run(block, at)
            consumed, n = int(out[0][0]), int(out[1][0])
            left = block[at + consumed:]
            if n:
                yield rec0, n, out
            rec0 += n
    finally:
        stop.set()
        while reader.is_alive():  # a consumer that stops early: drain so the reader can finish
            try:
                blocks.get(timeout=0.1)
            except queue.Empty:
                pass
        reader.join()


def _tf_chunks_native(path: str, names: List[str]):
    """(first record, records, {name: (counts, offsets, data, num)}) per chunk, from the native
    parser (tfrecord_parse_cpu)."""
    C = _native()
    for rec0, n, out in _native_blocks(path, lambda t: C.tfrecord_parse_cpu(t, names, True)):
        cols = {}
        for j, name in enumerate(names):
            c, o, d, num = out[2 + 4 * j: 6 + 4 * j]
            cols[name] = (c.numpy().astype(np.int64), o.numpy(), d.numpy(), num.numpy())
        yield rec0, n, cols


def _tf_encoded_native(path: str, fields: List[str], widths: List[int], vocabs: List[Any],
                       labels: List[str], groups: Dict[str, bytes]):
    """(first record, records, ids, labels, groups) per chunk, from the native encoder
    (tfrecord_encode_cpu): ids {field: int32 [records] or [records, width]} looked up in the
    NativeVocab tables `vocabs` (one per field); labels {name: float64 [records], NaN when
    none}; groups {name: (index int32 [records], distinct first values: list of bytes)} of the
    feature `name`'s first value (groups[name] when it has none)."""
    C = _native()
    gnames = list(groups)
    gdef = [groups[g] for g in gnames]  # bytes -> std::string as they are
    nf, nl = len(fields), len(labels)

    def parse(t):
        return C.tfrecord_encode_cpu(t, fields, widths, vocabs, labels, gnames, gdef, True)

    for rec0, n, out in _native_blocks(path, parse):
        ids = {f: out[2 + i].numpy() for i, f in enumerate(fields)}
        labs = {name: out[2 + nf + i].numpy() for i, name in enumerate(labels)}
        grp = {}
        for i, g in enumerate(gnames):
            idx, off, data = out[2 + nf + nl + 3 * i: 5 + nf + nl + 3 * i]
            o, d = off.numpy(), data.numpy().tobytes()
            grp[g] = (idx.numpy(), [d[o[k]:o[k + 1]] for k in range(len(o) - 1)])
        yield rec0, n, ids, labs, grp


def _tf_chunks_python(path: str, names: List[str], skip_corrupt: bool, stats: Dict[str, int]):
    """The same chunks from the pure-Python reader (when _C lacks the native parser)."""
    from .tfrecord import iter_tfrecord, parse_example

    def pack(exs):
        cols = {}
        for name in names:
            counts, offs, blobs, num = [], [0], [], []
            for ex in exs:
                vals = ex.get(name, [])
                counts.append(len(vals))
                first = np.nan
                for v in vals:
                    if isinstance(v, bytes):
                        blobs.append(v)
                        offs.append(offs[-1] + len(v))
                    elif first != first:
                        first = float(v)
                num.append(first if not (vals and isinstance(vals[0], bytes)) else np.nan)
            cols[name] = (np.asarray(counts, dtype=np.int64), np.asarray(offs, dtype=np.int64),
                          np.frombuffer(b"".join(blobs), dtype=np.uint8), np.asarray(num, dtype=np.float64))
        return cols

    exs, rec0, rec = [], 0, 0
    for payload in iter_tfrecord(path, skip_corrupt=skip_corrupt, stats=stats):
        try:
            exs.append(parse_example(payload))
        except DataError as e:
            if not skip_corrupt:
                raise DataError(f"{path}: record {rec}: {e}") from None
            stats["corrupt_records"] = stats.get("corrupt_records", 0) + 1
            rec += 1
            continue
        rec += 1
        if len(exs) == 65536:
            yield rec0, len(exs), pack(exs)
            rec0 += len(exs)
            exs = []
    if exs:
        yield rec0, len(exs), pack(exs)
