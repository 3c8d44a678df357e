"""Small encoded datasets, configs and settings shared by the trainer tests."""
import copy

import pytest
import torch

from ncs.data.types import EncodedData, FieldSpec


def tiny_data(rows: int, vocab, seed: int = 0) -> EncodedData:
    """Two-slot fields with about half the second slots padded, ~40 % clicks, play rate on clicks."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, v, (rows, 2), generator=g) for v in vocab], dim=1)
    ids[:, :, 1][torch.rand(rows, len(vocab), generator=g) < 0.5] = -1
    click = (torch.rand(rows, generator=g) < 0.4).float()
    conv = torch.rand(rows, generator=g) * click
    return EncodedData([FieldSpec(f"f{i}", v, 2) for i, v in enumerate(vocab)], ids,
                       {"click": click, "conversion": conv},
                       {"request": torch.arange(rows) // 3, "user": torch.arange(rows) % 11})


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread is faster and immune to a busy machine's OpenMP waits."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True, scope="module")
def one_thread_module():
    """The same for a whole module (import it into the module to use it): module-scoped runs and
    the tests that compare with them then reduce floats in the same order."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


TINY_VOCAB = [6, 5, 4, 7]


def tiny_run_data(rows: int = 120, seed: int = 0) -> EncodedData:
    """The trainer tests' dataset: four two-slot fields of vocabularies TINY_VOCAB."""
    return tiny_data(rows, TINY_VOCAB, seed)


def tiny_run_config(stages: dict, /, **over):
    """The trainer tests' config: seed 1, CPU, backend torch, split by request 0.6/0.2/0.2, embed 4,
    hidden 16-8-4, lr 0.01, batch 24 (eval 50), and the test module's `stages`. Each keyword replaces
    that top-level key; a dict given for a key whose default is a dict is merged one level into
    it (stages={"joint": {...}} replaces stages.joint, keeps stages.warmup and stages.masks)."""
    from ncs.config import resolve_config

    base = {
        "seed": 1, "device": "cpu", "backend": "torch",
        "data": {"split": {"by": "request", "fractions": [0.6, 0.2, 0.2]}},
        "model": {"embed_dim": 4, "hidden": [16, 8, 4]},
        "optim": {"lr": 0.01},
        "train": {"batch_size": 24, "eval_batch_size": 50},
        "stages": copy.deepcopy(stages),
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return resolve_config(base)
