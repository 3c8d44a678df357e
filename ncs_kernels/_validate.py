"""Argument checks shared by every op.

Each check raises an error that names the argument and says what was expected, so a user who
passes the wrong thing learns which thing and why without reading kernel code.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def words_for(k: int) -> int:
    """Number of int32 words that hold k mask bits."""
    return (k + 31) // 32


def check_tensor(
    name: str,
    t,
    *,
    ndim: Optional[int] = None,
    dtypes: Optional[Sequence[torch.dtype]] = None,
    contiguous: bool = True,
) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name}: expected dtype in ({names}), got {str(t.dtype).replace('torch.', '')}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor (call .contiguous() first), got strides {t.stride()}")


def _short(v) -> str:
    return str(v).replace("torch.", "")


def _check_same(what: str, error: type, tensors) -> None:
    """Every tensor (None skipped) has the `what` ("device" / "dtype") of the first one."""
    items = [(k, v) for k, v in tensors.items() if v is not None]
    if not items:
        return
    ref_name, ref = items[0]
    for name, t in items[1:]:
        if getattr(t, what) != getattr(ref, what):
            raise error(f"{name}: expected {what} {_short(getattr(ref, what))} (the {what} of {ref_name}), "
                        f"got {_short(getattr(t, what))}")


def check_same_device(**tensors) -> None:
    _check_same("device", ValueError, tensors)


def check_same_dtype(**tensors) -> None:
    _check_same("dtype", TypeError, tensors)


def check_packed(name: str, packed, n: int, k: int) -> None:
    """A packed mask for a weight [n, k] is int32 [n, ceil(k/32)], contiguous."""
    if not isinstance(packed, torch.Tensor):
        raise TypeError(f"{name}: expected a packed int32 mask tensor, got {type(packed).__name__}")
    if packed.dtype != torch.int32:
        raise TypeError(
            f"{name}: expected an int32 packed mask (use ncs_kernels.pack_mask), got {str(packed.dtype).replace('torch.', '')}"
        )
    want = (n, words_for(k))
    if tuple(packed.shape) != want:
        raise ValueError(
            f"{name}: expected packed mask shape {want} = [out_features, ceil(in_features/32)] "
            f"for a weight of shape ({n}, {k}), got {tuple(packed.shape)}"
        )
    if not packed.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous packed mask")


def _check_packed_bias_alike(inp_name: str, inp, weight, packed, bias) -> None:
    """The checks after the input's and weight's own: the packed mask and the bias fit the weight,
    and all share the input's device (and, but for the mask, its dtype)."""
    check_packed("packed", packed, weight.shape[0], weight.shape[1])
    if bias is not None:
        check_tensor("bias", bias, ndim=1, dtypes=FLOAT_DTYPES)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias: expected shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    check_same_device(**{inp_name: inp}, weight=weight, packed=packed, bias=bias)
    check_same_dtype(**{inp_name: inp}, weight=weight, bias=bias)


def check_linear_args(x, weight, packed, bias, x_name: str = "x") -> None:
    check_tensor(x_name, x, ndim=2, dtypes=FLOAT_DTYPES)
    check_tensor("weight", weight, ndim=2, dtypes=FLOAT_DTYPES)
    if x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"{x_name}: expected {weight.shape[1]} features (weight is {tuple(weight.shape)} = [out, in]), "
            f"got shape {tuple(x.shape)}"
        )
    _check_packed_bias_alike(x_name, x, weight, packed, bias)


def check_cross_args(emb, weight, packed, bias) -> None:
    check_tensor("emb", emb, ndim=3, dtypes=FLOAT_DTYPES)
    check_tensor("weight", weight, ndim=2, dtypes=FLOAT_DTYPES)
    _, f, d = emb.shape
    width = f * f + f * d
    if weight.shape[1] != width:
        raise ValueError(
            f"weight: expected {width} = F*F + F*d input features for emb with F={f}, d={d}, "
            f"got weight shape {tuple(weight.shape)}"
        )
    _check_packed_bias_alike("emb", emb, weight, packed, bias)
