"""The native vocabulary (csrc/cpu/vocab.cpp) and CRC-32C against their references: the pyarrow
LocalVocab path and the portable slicing-by-8 table. Runs wherever the extension is built (CI
builds it); skipped only without it."""
import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
torch = pytest.importorskip("torch")

from ncs.data.columns import LocalVocab  # noqa: E402
from ncs.data.tfchunks import _native  # noqa: E402

C = _native()
needs_native = pytest.mark.skipif(C is None or not hasattr(C, "NativeVocab"),
                                  reason="ncs_kernels._C is not built with the native vocabulary")


def _pyarrow_vocab(missing, binary=False, fixed=None):
    v = LocalVocab(missing, binary=binary, fixed=fixed)
    v._leave_native()  # the reference path (the pyarrow tables)
    return v


def _chunks(kind, rng, n_chunks=4, n=3000):
    out = []
    for _ in range(n_chunks):
        ints = rng.integers(-3, 900, n)
        mask = rng.random(n) < 0.05
        if kind == "int":
            out.append(pa.array(ints, pa.int64(), mask=mask))
        elif kind == "int32":
            out.append(pa.array(ints.astype(np.int32), pa.int32(), mask=mask))
        else:
            vals = [("" if i % 97 == 0 else ("é" if i % 89 == 0 else f"v{i}")) for i in ints]
            arr = pa.array(vals, pa.large_string() if kind == "large" else pa.string(), mask=mask)
            out.append(arr.slice(7, n - 20) if kind == "sliced" else arr)
    return out


@needs_native
@pytest.mark.parametrize("kind", ["str", "large", "sliced", "int", "int32"])
def test_native_ids_and_values_equal_the_pyarrow_path(kind):
    rng = np.random.default_rng(3)
    nat, ref = LocalVocab(("-1", "")), _pyarrow_vocab(("-1", ""))
    assert nat.native is not None
    for ch in _chunks(kind, rng):
        a, b = nat.ids(ch), ref.ids(ch)
        assert a.dtype == b.dtype == np.int32
        np.testing.assert_array_equal(a, b)
    assert nat.values().to_pylist() == ref.values().to_pylist()


@needs_native
def test_native_fixed_vocabulary_maps_unknown_to_zero():
    fixed = {"v1": 5, "v2": 2, "-1": 9}
    nat, ref = LocalVocab(("-1",), fixed=fixed), _pyarrow_vocab(("-1",), fixed=fixed)
    ch = pa.array(["v1", "v2", "x", None, "-1", "v1"])
    np.testing.assert_array_equal(nat.ids(ch), ref.ids(ch))
    np.testing.assert_array_equal(nat.ids(ch), [5, 2, 0, 0, 9, 5])
    assert len(nat.values()) == 0


@needs_native
def test_native_hands_over_to_pyarrow_for_other_types():
    nat, ref = LocalVocab(("",)), _pyarrow_vocab(("",))
    for ch in (pa.array(["a", "b"]), pa.array([1.5, 2.0, None]), pa.array(["2", "c"])):
        np.testing.assert_array_equal(nat.ids(ch), ref.ids(ch))
    assert nat.native is None
    assert nat.values().to_pylist() == ref.values().to_pylist() == ["a", "b", "1.5", "2", "c"]


@needs_native
def test_native_table_grows_past_its_first_size():
    v = C.NativeVocab(False)
    keys = np.arange(200_000, dtype=np.int64)
    ids = v.lookup_int64(torch.from_numpy(keys), None).numpy()
    np.testing.assert_array_equal(ids, keys + 1)
    np.testing.assert_array_equal(v.lookup_int64(torch.from_numpy(keys[::-1].copy()), None).numpy(), keys[::-1] + 1)
    assert len(v) == 200_000


@needs_native
def test_native_lookup_rejects_bad_offsets():
    v = C.NativeVocab(False)
    with pytest.raises(RuntimeError, match="offsets out of range"):
        v.lookup_bytes(torch.tensor([0, 5], dtype=torch.int64), torch.zeros(3, dtype=torch.uint8), None)


@needs_native
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000, 4099])
def test_crc32c_instruction_equals_the_table(n):
    buf = torch.from_numpy(np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8))
    assert C.crc32c_cpu(buf) == C.crc32c_cpu(buf, software=True)
    if n == 9:
        assert C.crc32c_cpu(torch.tensor(list(b"123456789"), dtype=torch.uint8)) == 0xE3069283


@needs_native
def test_native_integers_and_their_text_share_ids():
    """The integer cache sits in front of the text table: 7 and "7" are one value, whatever
    arrives first, and a missing marker given as text also catches the integer."""
    v = C.NativeVocab(False)
    v.add_missing("-1")
    ints = torch.tensor([7, -1, 123456789012, 7, 0, -5], dtype=torch.int64)
    np.testing.assert_array_equal(v.lookup_int64(ints, None).numpy(), [1, 0, 2, 1, 3, 4])
    text = pa.array(["123456789012", "7", "8", "-5", "-1"])
    _, off, data = text.buffers()
    o = torch.from_numpy(np.frombuffer(off, dtype=np.int32)[: len(text) + 1].copy())
    d = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())
    np.testing.assert_array_equal(v.lookup_bytes(o, d, None).numpy(), [2, 1, 5, 4, 0])
    np.testing.assert_array_equal(v.lookup_int64(torch.tensor([8, 9], dtype=torch.int64), None).numpy(), [5, 6])
    valid = torch.tensor([True, False])
    np.testing.assert_array_equal(v.lookup_int64(torch.tensor([9, 9], dtype=torch.int64), valid).numpy(), [6, 0])
