"""The paper's online metric, offline: rank the impressions of each request by the rank score
(Eq. 3) and measure the view time the top k would have earned.

    res = replay("runs/x", rank=(1, 1, 1), ks=(1, 3, 5), group="request")

For each group (a request, or any group key of the data, e.g. a user-day column named in the
schema's groups) the impressions are ordered by a policy and

    view_time@k = sum over the group's top k of play_rate * length

is averaged over the groups (a group with fewer than k impressions counts all of them).
play_rate is the label of the run's CVR task (the logged play rate: 0 when not clicked, so
click * play rate); length is --length-column, or 1 for every impression when the data has
none (then view time@k is the expected number of completed plays in the top k, and gamma has
no effect). Policies:

    logged      the logged display order: ascending --order-column (FEA_ORDER, the position, by
                default for the authors' TFRecord; missing or negative positions last), else the
                order of the rows in the file
    ctr_only    pCTR alone (the same model's CTR head, or ctr_model's)
    rank_score  pCTR^alpha * pCVR^beta * length^gamma; pCTR from ctr_model when given (the
                paper's Table 3 pairs single_ctr with each model's CVR), else the same model's
    oracle      the true play_rate * length (an upper bound)

Ties keep the logged order. This needs no online traffic, but it only re-ranks what was shown:
it cannot say what an unshown video would have earned.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import numpy as np

from .predict import rank_score, score
from .runs import Run, ServeError, open_run


def view_time_at_k(groups: np.ndarray, policy_score: np.ndarray, value: np.ndarray,
                   ks: Sequence[int]) -> Dict[int, float]:
    """Mean over groups of the sum of `value` over each group's top k rows by `policy_score`
    (descending; ties in row order)."""
    n = len(groups)
    if n == 0:
        return {int(k): float("nan") for k in ks}
    pos = np.arange(n)
    order = np.lexsort((pos, -policy_score.astype(np.float64), groups))
    g = groups[order]
    first = np.ones(n, dtype=bool)
    first[1:] = g[1:] != g[:-1]
    start = np.maximum.accumulate(np.where(first, pos, 0))
    within = pos - start
    v = value[order].astype(np.float64)
    n_groups = int(first.sum())
    return {int(k): float(v[within < k].sum() / n_groups) for k in ks}


def _gain(a: float, b: float) -> Optional[float]:
    return None if not b or not np.isfinite(a) or not np.isfinite(b) else (a - b) / b * 100.0


def _test_split(run: Run, length_column: Optional[str], order_column: Optional[str]):
    import ncs.data as D
    from ..train.runner import load_data

    full = load_data(run.cfg)
    s = run.cfg.data.split
    test_idx = D.split_index(full, by=s.by, fractions=tuple(s.fractions), seed=s.seed)[2]
    length = order = None
    if length_column is not None or order_column is not None:
        d = run.cfg.data
        path = d.path
        if d.kind == "synthetic" or not isinstance(path, str):
            what = "--length-column" if length_column is not None else "--order-column"
            raise ServeError(f"{what}: the run's data ({d.kind}) is not one file to read the column from; "
                             f"pass --data FILE")
        from .encode import iter_chunks
        chunks = list(iter_chunks(run, path, length_column=length_column, order_column=order_column))
        rows = sum(len(c.data) for c in chunks)
        if rows != len(full):
            raise ServeError(f"{path} has {rows} rows now, the run's data had {len(full)}")
        idx = test_idx.numpy()
        if length_column is not None:
            length = np.concatenate([c.length for c in chunks])[idx]
        if order_column is not None:
            order = np.concatenate([c.order for c in chunks])[idx]
    return full.subset(test_idx), length, order, "the run's test split"


def _order_column(run: Run, data: Optional[str], order_column: Optional[str]) -> Optional[str]:
    """'auto': FEA_ORDER (the display position) for the authors' TFRecord, else file order."""
    if order_column in (None, "", "file", "none"):
        return None
    if order_column != "auto":
        return order_column
    from .encode import file_kind
    kind = file_kind(data) if data is not None else run.cfg.data.kind
    return "FEA_ORDER" if kind == "tfrecord" else None


def replay(run_dir: str, data: Optional[str] = None, kinds: Optional[Sequence[str]] = None,
           rank: Sequence[float] = (1.0, 1.0, 1.0), length_column: Optional[str] = None,
           ks: Sequence[int] = (1, 3, 5), group: str = "request", batch_size: int = 8192,
           device: str = "cpu", order_column: Optional[str] = "auto",
           ctr_model: Optional[str] = None) -> Dict[str, Any]:
    from ..train.runner import resolve_device

    run = open_run(run_dir)
    ks = [int(k) for k in ks]
    if not ks or any(k < 1 for k in ks):
        raise ServeError(f"--k: expected positive integers, got {ks}")
    if kinds:
        kinds = [run.choose_kind(k) for k in kinds]
    else:
        run.choose_kind(None)  # the 'no trained model' error
        kinds = run.trained_kinds()
    dev = resolve_device(device)
    order_column = _order_column(run, data, order_column)
    if data is None:
        ds, length, order, what = _test_split(run, length_column, order_column)
    else:
        from .encode import encode_all
        ds, length, order = encode_all(run, data, length_column=length_column, need_labels=True,
                                       order_column=order_column, with_order=True)
        what = f"every row of {data}"
    from .encode import _check_ids
    _check_ids(run, ds, "--data ids")
    if group not in ds.groups:
        raise ServeError(f"--group: the data has no group {group!r}; it has {sorted(ds.groups) or 'none'}")
    ctr, cvr = run.ctr_task(), run.cvr_task()
    label = run.label_of(cvr)
    if label not in ds.labels:
        raise ServeError(f"the data has no label {label!r} (the play rate of task {cvr!r})")
    play = ds.labels[label].double().numpy()
    groups = ds.groups[group].numpy()
    value = play * (length if length is not None else 1.0)
    res: Dict[str, Any] = {
        "data": what, "rows": len(ds), "groups": int(len(np.unique(groups))) if len(ds) else 0, "group": group,
        "k": ks, "rank": {"alpha": float(rank[0]), "beta": float(rank[1]), "gamma": float(rank[2])},
        "ctr_task": ctr, "cvr_task": cvr,
        "value": f"{label} (play rate) x length",
        "length": length_column or "1 for every impression (the data has no length column)",
        "logged_order": (f"{order_column} ascending (missing last), then file order" if order_column
                         else "the order of the rows in the file"),
        "logged": view_time_at_k(groups, np.zeros(len(ds)) if order is None else
                                 np.where(np.isnan(order), -np.inf, -order), value, ks),
        "oracle": view_time_at_k(groups, value, value, ks),
        "models": {},
    }
    fixed_ctr = None
    if ctr_model is not None:  # the paper's Table 3: e.g. single_ctr * connection_cvr * length
        ctr_model = run.choose_kind(ctr_model)
        m, _ = run.model(ctr_model, dev)
        fixed_ctr = score(m, ds.ids, [ctr], batch_size, dev)[ctr]
        res["ctr_model"] = ctr_model
    for kind in kinds:
        model, _ = run.model(kind, dev)
        p = score(model, ds.ids, run.task_names, batch_size, dev)
        pctr = p[ctr] if fixed_ctr is None else fixed_ctr
        ctr_only = view_time_at_k(groups, pctr.astype(np.float64), value, ks)
        ranked = view_time_at_k(groups, rank_score(pctr, p[cvr], length, rank), value, ks)
        res["models"][kind] = {
            "ctr_only": ctr_only, "rank_score": ranked,
            "gain_vs_logged_pct": {k: _gain(ranked[k], res["logged"][k]) for k in ks},
            "gain_vs_ctr_only_pct": {k: _gain(ranked[k], ctr_only[k]) for k in ks},
        }
    return res


def replay_table(res: Dict[str, Any]) -> str:
    ks = res["k"]
    head = f"{'policy':<24}" + "".join(f"{'VT@' + str(k):>11}" for k in ks)
    lines = [f"view time at k (mean over {res['groups']} {res['group']} groups, {res['rows']} rows; "
             f"value = {res['value']}, length = {res['length']}; logged order = {res['logged_order']})",
             head, "-" * len(head)]

    def row(name, vals):
        return f"{name:<24}" + "".join(f"{vals[k]:>11.4f}" for k in ks)

    lines.append(row("logged order", res["logged"]))
    a, b, g = (res["rank"][x] for x in ("alpha", "beta", "gamma"))
    fixed = res.get("ctr_model")
    if fixed:
        lines.append(row(f"{fixed} ctr only", next(iter(res["models"].values()))["ctr_only"]))
    for kind, m in res["models"].items():
        if not fixed:
            lines.append(row(f"{kind} ctr only", m["ctr_only"]))
        name = f"{fixed}_ctr*{kind}_cvr" if fixed else f"{kind} rank"
        lines.append(row(f"{name} {a:g},{b:g},{g:g}", m["rank_score"]))
    lines.append(row("oracle", res["oracle"]))
    return "\n".join(lines)

