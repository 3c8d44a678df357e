"""CRC-32C (Castagnoli), as TFRecord framing uses it, without TensorFlow.

Three implementations that must agree:
  * ``crc32c_scalar``: the textbook byte-at-a-time table loop (the oracle; slow in Python).
  * ``crc32c_many``: numpy, vectorised *across* messages and across fixed-size pieces of each
    message. A CRC register update is linear over GF(2), so
      - leading zero bytes leave a zero register at zero (messages can be right-aligned in a
        matrix and processed column by column, all lanes at once),
      - crc(A || B) = shift(crc(A), len(B)) ^ crc(B) for the raw (zero-init) register, so long
        messages are cut into pieces, each piece is a lane, and pieces are recombined with a
        precomputed "shift by m zero bytes" operator (four 256-entry tables),
      - the 0xFFFFFFFF initial value contributes shift(0xFFFFFFFF, len) independently.
  * the ``crc32c`` / ``google_crc32c`` packages, used when importable (C speed).
``crc32c(data)`` and ``crc32c_batch(list)`` pick the fastest available one.
"""
from __future__ import annotations

import functools
from typing import List, Optional, Sequence

import numpy as np

_POLY = 0x82F63B78  # reflected Castagnoli polynomial
_MASK_DELTA = 0xA282EAD8


def _make_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table[i] = c
    return table


TABLE = _make_table()
_TABLE_LIST = [int(v) for v in TABLE]


def crc32c_scalar(data: bytes, crc: int = 0) -> int:
    """Byte-at-a-time CRC-32C; ``crc`` continues a previous result (0 to start)."""
    t = _TABLE_LIST
    c = crc ^ 0xFFFFFFFF
    for b in data:
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _zero_shift_scalar(state: int, n: int) -> int:
    t = _TABLE_LIST
    for _ in range(n):
        state = t[state & 0xFF] ^ (state >> 8)
    return state


@functools.lru_cache(maxsize=8)
def _shift_tables(m: int) -> np.ndarray:
    """[4, 256] uint32 tables of the linear map "feed m zero bytes into the raw register"."""
    basis = np.array([1 << i for i in range(32)], dtype=np.uint32)
    state = basis.copy()
    for _ in range(m):  # 32 lanes at once
        state = TABLE[state & 0xFF] ^ (state >> 8)
    tables = np.zeros((4, 256), dtype=np.uint32)
    for k in range(4):
        for bit in range(8):
            # entries whose byte has this bit set get the basis image XORed in
            sel = (np.arange(256) >> bit) & 1 == 1
            tables[k, sel] ^= state[8 * k + bit]
    return tables


def _apply_shift(tables: np.ndarray, x: np.ndarray) -> np.ndarray:
    return (tables[0][x & 0xFF] ^ tables[1][(x >> 8) & 0xFF]
            ^ tables[2][(x >> 16) & 0xFF] ^ tables[3][x >> 24])


@functools.lru_cache(maxsize=8)
def _init_residues(m: int) -> np.ndarray:
    """state after r zero bytes from 0xFFFFFFFF, r = 0..m-1."""
    out = np.zeros(m, dtype=np.uint32)
    s = 0xFFFFFFFF
    for r in range(m):
        out[r] = s
        s = _TABLE_LIST[s & 0xFF] ^ (s >> 8)
    return out


def _auto_piece(max_len: int) -> int:
    # Column steps cost ~m numpy ops, recombination ~max_len/m: balance near sqrt(2*max_len).
    target = max(1.0, (2.0 * max_len) ** 0.5)
    return int(min(8192, max(32, 1 << int(round(np.log2(target))))))


def crc32c_many(messages: Sequence[bytes], piece: Optional[int] = None) -> np.ndarray:
    """CRC-32C of every message, uint32 [len(messages)], vectorised with numpy.

    ``piece`` is the lane length in bytes (default: chosen from the longest message)."""
    n_msg = len(messages)
    if n_msg == 0:
        return np.zeros(0, dtype=np.uint32)
    lengths = np.fromiter((len(x) for x in messages), dtype=np.int64, count=n_msg)
    m = int(piece) if piece else _auto_piece(int(lengths.max()))
    if m < 1:
        raise ValueError(f"piece must be >= 1, got {piece}")
    pieces = (lengths + m - 1) // m  # 0 for empty messages
    total_pieces = int(pieces.sum())
    raw_acc = np.zeros(n_msg, dtype=np.uint32)
    p_max = int(pieces.max())
    if total_pieces:
        data = np.frombuffer(b"".join(messages), dtype=np.uint8)
        # Right-align each message inside its pieces*m slots: the zero padding at the front of
        # the first piece does not change a zero-init register.
        padded_start = np.concatenate(([0], np.cumsum(pieces * m)[:-1]))
        src_start = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        pad = pieces * m - lengths
        delta = padded_start + pad - src_start
        dst = np.arange(data.size, dtype=np.int64) + np.repeat(delta, lengths)
        flat = np.zeros(total_pieces * m, dtype=np.uint8)
        flat[dst] = data
        cols = np.ascontiguousarray(flat.reshape(total_pieces, m).T).astype(np.uint32)
        state = np.zeros(total_pieces, dtype=np.uint32)
        for j in range(m):  # one column = one byte position of every piece
            state = TABLE[(state ^ cols[j]) & 0xFF] ^ (state >> 8)
        # Recombine pieces per message: right-align piece lists (leading zero pieces are inert).
        piece_idx = np.arange(total_pieces, dtype=np.int64) - np.repeat(
            np.concatenate(([0], np.cumsum(pieces)[:-1])), pieces)
        slot = np.repeat(np.arange(n_msg, dtype=np.int64) * p_max + (p_max - pieces), pieces) + piece_idx
        grid = np.zeros(n_msg * p_max, dtype=np.uint32)
        grid[slot] = state
        grid = np.ascontiguousarray(grid.reshape(n_msg, p_max).T)
        tables = _shift_tables(m)
        for p in range(p_max):
            raw_acc = _apply_shift(tables, raw_acc) ^ grid[p]
    # Contribution of the 0xFFFFFFFF initial register: shift it by len = q*m + r zero bytes.
    q = lengths // m
    init = _init_residues(m)[lengths % m]
    if p_max:
        tables = _shift_tables(m)
        for step in range(int(q.max())):
            init = np.where(q > step, _apply_shift(tables, init), init)
    return (raw_acc ^ init ^ np.uint32(0xFFFFFFFF)).astype(np.uint32)


def _load_package():
    try:
        import google_crc32c  # type: ignore

        return "google_crc32c", lambda b: int(google_crc32c.value(bytes(b)))
    except Exception:  # ImportError or a broken install: fall back
        pass
    try:
        import crc32c as _c  # type: ignore

        return "crc32c", lambda b: int(_c.crc32c(bytes(b)))
    except Exception:
        return None, None


PACKAGE, _package_fn = _load_package()


def crc32c_package(data: bytes) -> Optional[int]:
    """The installed package's CRC-32C, or None when no package is importable."""
    return None if _package_fn is None else _package_fn(data)


def crc32c(data: bytes) -> int:
    """CRC-32C of one message with the fastest implementation available."""
    if _package_fn is not None:
        return _package_fn(data)
    if len(data) <= 64:
        return crc32c_scalar(data)
    return int(crc32c_many([bytes(data)])[0])


def crc32c_batch(messages: Sequence[bytes]) -> List[int]:
    if _package_fn is not None:
        return [_package_fn(x) for x in messages]
    return [int(v) for v in crc32c_many(messages)]


def mask_crc(crc: int) -> int:
    """TFRecord's masked CRC: rotate right by 15 and add a constant (mod 2^32)."""
    crc &= 0xFFFFFFFF
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def mask_crc_array(crc: np.ndarray) -> np.ndarray:
    c = crc.astype(np.uint64)
    rot = ((c >> np.uint64(15)) | (c << np.uint64(17))) & np.uint64(0xFFFFFFFF)
    return ((rot + np.uint64(_MASK_DELTA)) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
