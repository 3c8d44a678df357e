"""The synthetic generator: calibrated rates, determinism, chunking, and the conflict knob."""
import numpy as np
import pytest
import torch

from ncs.data import synthetic, synthetic_chunks

N = 50_000


@pytest.fixture(scope="module")
def by_conflict():
    return {c: synthetic(N, seed=0, conflict=c) for c in (0.0, 1.0, 2.0)}


def test_rates_at_conflict_one(by_conflict):
    d = by_conflict[1.0]
    click, conv = d.labels["click"], d.labels["conversion"]
    assert abs(float(click.mean()) - 0.39) < 0.03
    assert abs(float(conv[click > 0].mean()) - 0.82) < 0.03
    assert 0.35 < float((conv[click > 0] == 1.0).float().mean()) < 0.65  # about half at exactly 1
    assert torch.equal(conv > 0, click > 0)
    assert float(conv.max()) <= 1.0


@pytest.mark.parametrize("seed", [7])
def test_rates_other_seeds(seed):
    d = synthetic(N, seed=seed)
    click, conv = d.labels["click"], d.labels["conversion"]
    assert abs(float(click.mean()) - 0.39) < 0.03
    assert abs(float(conv[click > 0].mean()) - 0.82) < 0.03


def test_layout(by_conflict):
    d = by_conflict[1.0]
    assert d.ids.dtype == torch.int64 and d.ids.shape[:2] == (N, len(d.fields))
    assert 10 <= len(d.fields) <= 20
    for f, spec in enumerate(d.fields):
        col = d.ids[:, f]
        assert int(col.max()) < spec.vocab_size
        assert bool((col[:, 0] >= 0).all())
        assert bool((col[:, spec.max_len:] == -1).all())
    assert any(f.max_len > 1 for f in d.fields)
    assert d.labels["click"].dtype == torch.float32 and d.groups["request"].dtype == torch.int64
    sizes = torch.unique(d.groups["request"], return_counts=True)[1].float()
    assert 5.5 < float(sizes.mean()) < 8.5  # about 7 impressions per request
    # a request has one user
    req, user = d.groups["request"].numpy(), d.groups["user"].numpy()
    first = {}
    for r, u in zip(req[:5000], user[:5000]):
        assert first.setdefault(r, u) == u


def test_deterministic_by_seed():
    a, b, c = synthetic(3000, seed=5), synthetic(3000, seed=5), synthetic(3000, seed=6)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.labels["conversion"], b.labels["conversion"])
    assert torch.equal(a.groups["request"], b.groups["request"])
    assert not torch.equal(a.ids, c.ids)


def test_chunks_concatenate_to_the_whole():
    rows = 70_000  # more than one internal block
    whole = synthetic(rows, seed=2)
    parts = list(synthetic_chunks(rows, chunk=25_000, seed=2))
    assert [len(p) for p in parts] == [25_000, 25_000, 20_000]
    assert torch.equal(torch.cat([p.ids for p in parts]), whole.ids)
    for k in ("click", "conversion"):
        assert torch.equal(torch.cat([p.labels[k] for p in parts]), whole.labels[k])
    assert torch.equal(torch.cat([p.groups["request"] for p in parts]), whole.groups["request"])
    assert len(set(whole.groups["request"].tolist())) == int(torch.unique(whole.groups["request"]).numel())


def _by_cover(d):
    cover = d.fields.index(next(f for f in d.fields if f.name == "cover_quality"))
    q = d.ids[:, cover, 0].numpy()
    click, conv = d.labels["click"].numpy(), d.labels["conversion"].numpy()
    ctr = np.array([click[q == k].mean() for k in range(1, 5)])
    play = np.array([conv[(q == k) & (click > 0)].mean() for k in range(1, 5)])
    return ctr, play


def test_conflict_knob(by_conflict):
    rates = {c: float(d.labels["click"].mean()) for c, d in by_conflict.items()}
    plays = {c: float(d.labels["conversion"][d.labels["click"] > 0].mean()) for c, d in by_conflict.items()}
    assert rates[0.0] < rates[1.0] < rates[2.0]  # clickbait raises clicks
    assert plays[0.0] > plays[1.0] > plays[2.0]  # ... and lowers the play rate
    # the visible bait signal (cover quality) pulls the two tasks apart as conflict grows
    ctr0, play0 = _by_cover(by_conflict[0.0])
    ctr2, play2 = _by_cover(by_conflict[2.0])
    assert np.ptp(ctr0) < 0.03 and np.ptp(play0) < 0.03  # no effect without conflict
    assert np.all(np.diff(ctr2) > 0) and np.all(np.diff(play2) < 0)
    # correlation of the two labels' per-bucket means: >= 0 at conflict 0, strongly negative at 2
    assert np.corrcoef(ctr2, play2)[0, 1] < -0.9


def test_interest_drives_both_tasks_without_conflict(by_conflict):
    # with conflict 0 the tasks agree: rows from the interest recall (alg 1) click and play more
    d = by_conflict[0.0]
    alg = d.ids[:, [f.name for f in d.fields].index("recall_alg"), 0]
    click, conv = d.labels["click"], d.labels["conversion"]
    interest, popular = alg == 1, alg == 2
    assert float(click[interest].mean()) > float(click[popular].mean()) + 0.05
    assert float(conv[interest & (click > 0)].mean()) > float(conv[popular & (click > 0)].mean())


def test_arguments():
    with pytest.raises(TypeError, match="unknown keyword"):
        synthetic(10, colour=1)
    with pytest.raises(ValueError, match="conflict"):
        synthetic(10, conflict=-1)
    with pytest.raises(ValueError, match="chunk"):
        next(synthetic_chunks(10, chunk=0))
    assert len(synthetic(0)) == 0
    small = synthetic(100, n_users=7, n_videos=30, dim=4)
    assert small.fields[0].vocab_size == 8 and small.fields[7].vocab_size == 31
