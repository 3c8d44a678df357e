"""Shapes, masks and comparison helpers shared by the cross-backend op tests."""
import torch

import ncs_kernels as nk
from ncs_kernels import reference as ref

# (B, K, N): B = 1, K and N not multiples of 32 or of any block size, K = 1680 (the paper's width)
LINEAR_SHAPES = [(1, 1, 1), (1, 33, 5), (7, 31, 3), (5, 70, 33), (3, 1680, 9), (16, 64, 32), (13, 100, 17)]
# (B, F, d, N)
CROSS_SHAPES = [(1, 1, 1, 1), (3, 2, 3, 5), (5, 3, 8, 7), (2, 20, 3, 9), (4, 27, 1, 3), (1, 20, 64, 3), (3, 2, 64, 4)]
DENSITIES = [0.0, 1.0, 0.5]
LOW_PRECISION = (torch.float16, torch.bfloat16)


def make_mask(n, k, density, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    if density in (0.0, 1.0):
        m = torch.full((n, k), bool(density))
    else:
        m = torch.rand(n, k, generator=g) < density
    return m.to(device), nk.pack_mask(m).to(device)


def randn(*shape, scale=1.0, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype=dtype, device=device)


def assert_close(actual, expected, name, rtol=2e-4, atol_scale=2e-4):
    """Compare with a tolerance relative to the magnitude of the expected tensor."""
    assert actual is not None, f"{name}: backend returned None"
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol_scale * scale, msg=lambda m: f"{name}: {m}")


def assert_low_precision_close(actual, expected_lp, expected_fp32, name):
    """A low-precision kernel's error against the fp32 reference is at most twice PyTorch's own
    low-precision error (plus a small floor)."""
    own = (expected_lp.float() - expected_fp32).abs().max().item()
    err = (actual.float() - expected_fp32).abs().max().item()
    floor = 1e-2 * max(1.0, expected_fp32.abs().max().item())
    assert err <= 2 * own + floor, f"{name}: error {err:.3g} > 2 x torch's own {own:.3g} + {floor:.3g}"


__all__ = ["LINEAR_SHAPES", "CROSS_SHAPES", "DENSITIES", "make_mask", "randn", "assert_close", "ref"]
