"""Bit-packed masks: packing, statistics, overlap and files (property-based where it helps)."""
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ncs_kernels as nk
from _cases import make_mask, native, popcount_words, randn, ref, why_unavailable


def _bool_masks(max_n=9, max_k=100):
    return st.tuples(st.integers(0, max_n), st.integers(0, max_k), st.integers(0, 2**31 - 1), st.floats(0, 1))


def _mask(n, k, seed, p):
    return make_mask(n, k, p, seed=seed)[0]


@settings(max_examples=150, deadline=None)
@given(_bool_masks())
def test_pack_unpack_roundtrip(args):
    n, k, seed, p = args
    m = _mask(n, k, seed, p)
    packed = nk.pack_mask(m)
    assert packed.dtype == torch.int32 and packed.shape == (n, (k + 31) // 32)
    assert torch.equal(nk.unpack_mask(packed, k), m)
    # bits past K are zero, and every bit is where the format says
    for r in range(min(n, 3)):
        for c in range(k):
            word = int(packed[r, c // 32]) & 0xFFFFFFFF
            assert ((word >> (c % 32)) & 1) == int(m[r, c])
    if k % 32:
        assert bool(((packed[:, -1].to(torch.int64) & 0xFFFFFFFF) >> (k % 32)).eq(0).all())


@settings(max_examples=100, deadline=None)
@given(_bool_masks(), st.integers(0, 2**31 - 1), st.floats(0, 1))
def test_popcount_density_overlap(args, seed2, p2):
    n, k, seed, p = args
    a, b = _mask(n, k, seed, p), _mask(n, k, seed2, p2)
    pa, pb = nk.pack_mask(a), nk.pack_mask(b)
    assert nk.popcount(pa) == int(a.sum())
    if n * k:
        assert nk.density(pa, k) == pytest.approx(float(a.float().mean()))
    o = nk.overlap(pa, pb, k)
    assert o["intersection"] == int((a & b).sum())
    assert o["union"] == int((a | b).sum())
    assert o["only_a"] == int((a & ~b).sum()) and o["only_b"] == int((b & ~a).sum())
    union = int((a | b).sum())
    assert o["jaccard"] == pytest.approx(int((a & b).sum()) / union if union else 1.0)


def test_popcount_words_sign_bit():
    words = torch.tensor([-1, 0, 1, -(2**31), 2**31 - 1], dtype=torch.int32)
    assert popcount_words(words).tolist() == [32, 0, 1, 1, 31]


def test_pack_rejects_bad_input():
    with pytest.raises(ValueError, match="mask"):
        nk.pack_mask(torch.ones(3))
    with pytest.raises(ValueError, match="0 and 1"):
        nk.pack_mask(torch.full((2, 2), 0.5))
    with pytest.raises(TypeError, match="int32"):
        nk.unpack_mask(torch.zeros(2, 1, dtype=torch.int64), 5)
    with pytest.raises(ValueError, match="words per row"):
        nk.unpack_mask(torch.zeros(2, 1, dtype=torch.int32), 33)


def test_save_load_roundtrip(tmp_path):
    masks = {
        "mlp.0": {"ctr": nk.pack_mask(_mask(5, 70, 1, 0.5)), "cvr": nk.pack_mask(_mask(5, 70, 2, 0.3))},
        "mlp.1": {"ctr": nk.pack_mask(_mask(3, 5, 3, 0.9)), "cvr": nk.pack_mask(_mask(3, 5, 4, 0.1))},
    }
    path = tmp_path / "masks.safetensors"
    nk.save_masks(str(path), masks, {"mlp.0": 70, "mlp.1": 5})
    got, meta = nk.load_masks(str(path), expected_shapes={"mlp.0": (5, 70), "mlp.1": (3, 5)})
    assert meta["tasks"] == ["ctr", "cvr"] and meta["version"] == 1
    assert meta["layers"]["mlp.0"]["density"]["ctr"] == pytest.approx(nk.density(masks["mlp.0"]["ctr"], 70))
    for layer in masks:
        for task in masks[layer]:
            assert torch.equal(got[layer][task], masks[layer][task])
    with pytest.raises(ValueError, match="mlp.0"):
        nk.load_masks(str(path), expected_shapes={"mlp.0": (5, 71), "mlp.1": (3, 5)})
    with pytest.raises(ValueError, match="missing"):
        nk.load_masks(str(path), expected_shapes={"mlp.0": (5, 70), "mlp.1": (3, 5), "mlp.2": (1, 1)})


def test_load_rejects_corrupt_and_foreign_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match="bad.safetensors"):
        nk.load_masks(str(bad))
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"a": torch.zeros(2, 1, dtype=torch.int32)}, str(other), metadata={"format": "x"})
    with pytest.raises(ValueError, match="format"):
        nk.load_masks(str(other))
    # a tensor whose shape disagrees with the metadata is named
    wrong = tmp_path / "wrong.safetensors"
    meta = {"format": "ncs-masks", "version": "1", "tasks": json.dumps(["ctr"]),
            "layers": json.dumps({"l": {"shape": [2, 40], "density": {"ctr": 1.0}}})}
    save_file({"l/ctr": torch.zeros(2, 1, dtype=torch.int32)}, str(wrong), metadata=meta)
    with pytest.raises(ValueError, match="l/ctr"):
        nk.load_masks(str(wrong))


# the native extension's masking, per device: its dtypes, with K around the 32-bit word boundaries
_NATIVE_WHY = {"cpu": None if native() is not None else f"ncs_kernels._C is not built: {nk.native_error()}",
               "cuda": why_unavailable("cuda", "cuda")}
APPLY_MASK = [pytest.param(dev, dt, k, id=f"{dev}-{str(dt)[6:]}-{k}",
                           marks=pytest.mark.skipif(_NATIVE_WHY[dev] is not None, reason=str(_NATIVE_WHY[dev])))
              for dev, dtypes, ks in (("cpu", (torch.float32, torch.float64), (1, 31, 32, 33, 70, 1680)),
                                      ("cuda", (torch.float32, torch.float16, torch.bfloat16), (1, 31, 32, 33, 1680)))
              for dt in dtypes for k in ks]


@pytest.mark.parametrize("device,dtype,k", APPLY_MASK)
def test_native_apply_mask_and_mask_inplace_exact(device, dtype, k):
    """_C.apply_mask_<device> and mask_inplace_<device> against the reference, bit for bit."""
    w = randn(7, k, dtype=dtype, device=device, seed=k)
    w[0, 0] = float("nan")  # masking is a select: NaN/Inf under a 0 bit become exactly +0.0
    w[-1, -1] = float("inf")
    m, _ = make_mask(7, k, 0.5, device, seed=k)
    m[0, 0] = False
    m[-1, -1] = False
    packed = nk.pack_mask(m)
    expect = ref.apply_mask(w, packed)
    got = getattr(native(), f"apply_mask_{device}")(w, packed)
    assert got.dtype == dtype and got.shape == w.shape
    assert torch.equal(got, expect)
    assert not torch.signbit(got[~m]).any()  # +0.0, not -0.0
    t = w.clone()
    getattr(native(), f"mask_inplace_{device}")(t, packed)
    assert torch.equal(t, expect)
