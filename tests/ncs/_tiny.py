"""Small encoded datasets and settings shared by the trainer tests."""
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
