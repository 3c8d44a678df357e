"""The drop-in layers: masks API, nn.Linear equivalence, state_dict round trips."""
import pytest
import torch

import ncs_kernels as nk


def test_all_ones_at_start_equals_linear():
    lin = torch.nn.Linear(45, 7)
    layer = nk.MaskedLinear.from_linear(lin, tasks=("ctr", "cvr"))
    x = torch.randn(3, 2, 45)  # leading dims are kept, as nn.Linear
    for task in (None, "ctr", "cvr"):
        torch.testing.assert_close(layer(x, task=task), lin(x))
    assert layer.mask_density("ctr") == 1.0


def test_set_get_mask_packed_and_bool():
    layer = nk.MaskedLinear(70, 3, tasks=("a", "b", "c", "d"))
    m = torch.rand(3, 70) < 0.3
    layer.set_mask("b", m)
    assert torch.equal(layer.get_mask("b", packed=False), m)
    layer.set_mask("c", nk.pack_mask(m))
    assert torch.equal(layer.get_mask("c"), nk.pack_mask(m))
    x = torch.randn(4, 70)
    want = torch.nn.functional.linear(x, layer.weight * m, layer.bias)
    torch.testing.assert_close(layer(x, task="b"), want)
    with pytest.raises(KeyError, match="unknown task 'e'"):
        layer(x, task="e")
    with pytest.raises(ValueError, match="mask"):
        layer.set_mask("a", torch.ones(3, 71, dtype=torch.bool))
    bad = nk.pack_mask(torch.ones(3, 70, dtype=torch.bool))
    bad[0, -1] = -1  # bits past in_features
    with pytest.raises(ValueError, match="past in_features"):
        layer.set_mask("a", bad)


def test_state_dict_round_trip_with_masks():
    layer = nk.MaskedLinear(33, 5, tasks=("ctr", "cvr"))
    layer.set_mask("cvr", torch.rand(5, 33) < 0.5)
    sd = layer.state_dict()
    assert set(sd) == {"weight", "bias", "mask_ctr", "mask_cvr"}
    other = nk.MaskedLinear(33, 5, tasks=("ctr", "cvr"))
    other.load_state_dict(sd)
    x = torch.randn(2, 33)
    torch.testing.assert_close(other(x, task="cvr"), layer(x, task="cvr"))


def test_task_names_validated():
    with pytest.raises(ValueError, match="tasks"):
        nk.MaskedLinear(3, 2, tasks=())
    with pytest.raises(ValueError, match="identifier"):
        nk.MaskedLinear(3, 2, tasks=("ctr", "not ok"))
    with pytest.raises(ValueError, match="duplicate"):
        nk.MaskedLinear(3, 2, tasks=("ctr", "ctr"))


def test_model_task_masks_and_modules():
    model = torch.nn.Sequential(nk.MaskedLinear(8, 4), torch.nn.ReLU(), nk.MaskedLinear(4, 2))
    assert list(nk.masked_modules(model)) == ["0", "2"]
    masks = nk.model_task_masks(model, "cvr")
    assert set(map(id, masks)) == {id(model[0].weight), id(model[2].weight)}
    assert nk.model_task_masks(model, None) == {}


def test_cross_layer_bad_emb():
    layer = nk.CrossMaskedLinear(3, 4, 5)
    with pytest.raises(ValueError, match=r"emb: expected shape \[B, 3, 4\]"):
        layer(torch.randn(2, 3, 5), task="ctr")
