"""Fused embedding-bag backward + row-wise sparse Adam (ncs_kernels.embedding_adam): every
backend against nn.EmbeddingBag(sparse=True) + torch.optim.SparseAdam over several steps, and
against the pure-PyTorch reference; the optimizer's state round trip."""
import pytest
import torch

from _cases import cpu_tensor_backends, embedding_adam

EA = embedding_adam()

BACKENDS = cpu_tensor_backends()


def _ids(bags, L, V, pad, dup, seed):
    g = torch.Generator().manual_seed(seed)
    hi = max(1, V // 4) if dup else V  # dup: few distinct rows, so ids repeat within and across bags
    rows = torch.randint(0, hi, (bags, L), generator=g)
    if pad is not None:
        rows[torch.rand(bags, L, generator=g) < 0.3] = pad
        if bags > 2:
            rows[1] = pad  # an empty bag (every slot padding)
    return rows


def _plain(V, d, mode, pad, weight, lr, betas, eps):
    bag = torch.nn.EmbeddingBag(V, d, mode=mode, sparse=True, padding_idx=pad)
    with torch.no_grad():
        bag.weight.copy_(weight)
    return bag, torch.optim.SparseAdam([bag.weight], lr=lr, betas=betas, eps=eps)


CASES = [  # bags, L, V, d, pad row (None: no padding), duplicates
    (1, 1, 1, 1, None, True),
    (7, 3, 50, 5, 49, True),
    (33, 1, 200, 16, None, False),
    (64, 4, 97, 33, 96, True),
    (5, 6, 10, 64, 9, True),
    (40, 2, 1000, 7, 999, False),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["mean", "sum"])
@pytest.mark.parametrize("bags,L,V,d,pad,dup", CASES)
def test_matches_embedding_bag_and_sparse_adam(backend, mode, bags, L, V, d, pad, dup):
    lr, betas, eps = 0.05, (0.9, 0.99), 1e-8
    w0 = torch.randn(V, d, generator=torch.Generator().manual_seed(1)) * 0.1
    if pad is not None:
        w0[pad] = 0
    bag, sa = _plain(V, d, mode, pad, w0, lr, betas, eps)
    table = torch.nn.Parameter(w0.clone())
    opt = EA.RowwiseSparseAdam([table], lr=lr, betas=betas, eps=eps, mode=mode, padding_idx={id(table): pad},
                               backend=backend)
    for step in range(4):
        rows = _ids(bags, L, V, pad, dup, seed=10 + step)
        target = torch.randn(bags, d, generator=torch.Generator().manual_seed(20 + step))
        sa.zero_grad()
        plain = bag(rows)
        opt.zero_grad()
        out = EA.embedding_bag(table, rows, mode, pad, opt.sink(table))
        torch.testing.assert_close(out, plain.detach(), rtol=1e-5, atol=1e-6)
        ((plain - target) ** 2).sum().backward()
        sa.step()
        ((out - target) ** 2).sum().backward()
        assert table.grad is None  # never a materialised gradient
        opt.step()
        torch.testing.assert_close(table.detach(), bag.weight.detach(), rtol=1e-5, atol=1e-6)
    st, ref = opt.state[table], sa.state[bag.weight]
    assert st["step"] == ref["step"] == 4
    torch.testing.assert_close(st["exp_avg"], ref["exp_avg"].to_dense() if ref["exp_avg"].is_sparse else ref["exp_avg"],
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(st["exp_avg_sq"], ref["exp_avg_sq"], rtol=1e-5, atol=1e-9)


def test_forward_equals_embedding_bag():
    V, d, pad = 30, 6, 29
    w = torch.randn(V, d)
    rows = _ids(9, 3, V, pad, True, 0)
    for mode in ("mean", "sum"):
        want = torch.nn.functional.embedding_bag(rows, w, mode=mode, padding_idx=pad)
        got = EA.embedding_bag(torch.nn.Parameter(w.clone()), rows, mode, pad, EA.GradSink())
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        assert torch.equal(got[1], torch.zeros(d))  # an empty bag (every slot padding)
    w[pad] = 0  # a zero padding row (FieldEmbeddings'): the masked_fill may be skipped
    for L in (1, 3):
        rows = _ids(9, L, V, pad, True, L)
        for mode in ("mean", "sum"):
            want = torch.nn.functional.embedding_bag(rows, w, mode=mode, padding_idx=pad)
            torch.testing.assert_close(EA.pooled_lookup(w, rows, mode, pad, padding_row_is_zero=True), want,
                                       rtol=1e-6, atol=1e-7)
    for L in (1, 4):  # no padding_idx
        rows = torch.randint(0, V, (8, L))
        want = torch.nn.functional.embedding_bag(rows, w, mode="mean")
        torch.testing.assert_close(EA.pooled_lookup(w, rows, "mean", None), want, rtol=1e-6, atol=1e-7)


# the Triton kernel computes in fp32 registers: fp64 tables are for the reference and cpu
@pytest.mark.parametrize("backend,dtype", [
    pytest.param(p.values[0], dt, marks=p.marks, id=f"{p.id}-{str(dt)[6:]}")
    for p, dtypes in zip(cpu_tensor_backends("cpu", "triton"), ([torch.float32, torch.float64], [torch.float32]))
    for dt in dtypes])
def test_backends_match_the_reference(backend, dtype):
    for bags, L, V, d, pad, dup in CASES:
        for mode in ("mean", "sum"):
            g = torch.Generator().manual_seed(bags + d)
            st = [torch.randn(V, d, generator=g, dtype=dtype) for _ in range(3)]
            st[2] = st[2].abs()
            mine, theirs = [t.clone() for t in st], [t.clone() for t in st]
            rows = _ids(bags, L, V, pad, dup, 3)
            grad = torch.randn(bags, d, generator=g, dtype=dtype)
            for step in (1, 2, 7):
                EA.embedding_rowwise_adam_(*mine, rows, grad, step, 0.01, 0.9, 0.999, 1e-8, mode, pad, backend)
                EA.reference_rowwise_adam_(*theirs, rows, grad, step, 0.01, 0.9, 0.999, 1e-8, mode, pad)
            for a, b in zip(mine, theirs):
                torch.testing.assert_close(a, b, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=1e-7)


def test_only_the_batch_rows_move():
    V, d = 100, 4
    st = [torch.randn(V, d), torch.zeros(V, d), torch.zeros(V, d)]
    before = st[0].clone()
    rows = torch.tensor([[3, 5], [5, 99], [99, 99]])
    EA.embedding_rowwise_adam_(*st, rows, torch.ones(3, d), 1, 0.1, mode="sum", padding_idx=99, backend="cpu")
    moved = (st[0] != before).any(1).nonzero().squeeze(1).tolist()
    assert moved == [3, 5]


def test_state_round_trip_and_interchange_with_sparse_adam():
    V, d, pad = 40, 3, 39
    table = torch.nn.Parameter(torch.randn(V, d))
    opt = EA.RowwiseSparseAdam([table], lr=0.1, padding_idx={id(table): pad})
    for s in range(2):
        out = EA.embedding_bag(table, _ids(6, 2, V, pad, True, s), "mean", pad, opt.sink(table))
        out.sum().backward()
        opt.step()
    sd = opt.state_dict()
    # the same layout as SparseAdam's: load into one and back
    sa = torch.optim.SparseAdam([table], lr=0.1)
    sa.load_state_dict(sd)
    again = EA.RowwiseSparseAdam([table], lr=0.1, padding_idx={id(table): pad})
    again.load_state_dict(sa.state_dict())
    for k in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(again.state[table][k], opt.state[table][k])
    assert again.state[table]["step"] == 2


def test_bad_input_is_named():
    w = torch.zeros(5, 2)
    with pytest.raises(ValueError, match="rows: expected int64"):
        EA.embedding_rowwise_adam_(w, w.clone(), w.clone(), torch.zeros(2, 1, dtype=torch.int32), torch.zeros(2, 2), 1, 0.1)
    with pytest.raises(ValueError, match="grad: expected"):
        EA.embedding_rowwise_adam_(w, w.clone(), w.clone(), torch.zeros(2, 1, dtype=torch.int64), torch.zeros(3, 2), 1, 0.1)
    with pytest.raises(ValueError, match="step"):
        EA.embedding_rowwise_adam_(w, w.clone(), w.clone(), torch.zeros(2, 1, dtype=torch.int64), torch.zeros(2, 2), 0, 0.1)
    with pytest.raises(RuntimeError, match="outside the table"):
        EA.embedding_rowwise_adam_(w, w.clone(), w.clone(), torch.full((2, 1), 7, dtype=torch.int64),
                                   torch.zeros(2, 2), 1, 0.1, backend="cpu")
    with pytest.raises(ValueError, match="backend"):
        EA.embedding_rowwise_adam_(w, w.clone(), w.clone(), torch.zeros(2, 1, dtype=torch.int64), torch.zeros(2, 2), 1,
                                   0.1, backend="bogus")
