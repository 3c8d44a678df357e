"""Streamed batch scoring of a file with a run's trained model.

    summary = predict_file("runs/x", "new.csv", "scores.parquet", rank=(1, 1, 1), length_column="duration")

One output row per input row (same order): `row` (0-based input row), one float32 column per
task (its probability: sigmoid of the head; for the play-rate CVR task the predicted play rate
in [0, 1]) and, with `rank`, `rank_score` = pCTR^alpha * pCVR^beta * length^gamma (the paper's
Eq. 3). Without a length column every length is 1 (the score is then pCTR^alpha * pCVR^beta).
The file is read, scored and written one chunk at a time.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

from ncs_kernels.atomic import atomic_path

from .encode import CHUNK_ROWS, Chunk, iter_chunks
from .runs import Run, ServeError, open_run


def parse_rank(text: str) -> Tuple[float, float, float]:
    try:
        vals = tuple(float(x) for x in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 3 or not all(np.isfinite(vals)):
        raise ServeError(f"--rank: expected three numbers alpha,beta,gamma (e.g. 1,1,1), got {text!r}")
    return vals  # type: ignore[return-value]


def rank_score(pctr: np.ndarray, pcvr: np.ndarray, length: Optional[np.ndarray],
               rank: Sequence[float]) -> np.ndarray:
    """Eq. 3: pCTR^alpha * pCVR^beta * length^gamma (float64; length None = 1)."""
    a, b, g = (float(x) for x in rank)
    s = np.power(pctr.astype(np.float64), a) * np.power(pcvr.astype(np.float64), b)
    if length is not None:
        s = s * np.power(length.astype(np.float64), g)
    return s


def score(model, ids: torch.Tensor, names: Sequence[str], batch_size: int, device: torch.device) -> Dict[str, np.ndarray]:
    """{task: float32 probabilities [rows]} of model.predict over ids, batch by batch."""
    outs: Dict[str, list] = {t: [] for t in names}
    with torch.no_grad():
        for a in range(0, ids.shape[0], batch_size):
            pred = model.predict(ids[a:a + batch_size].to(device))
            for t in names:
                outs[t].append(torch.sigmoid(pred[t].float()).cpu().numpy())
    return {t: (np.concatenate(v) if v else np.zeros(0, dtype=np.float32)).astype(np.float32) for t, v in outs.items()}


def scored_chunks(run: Run, kind: str, path: str, batch_size: int, device: torch.device,
                  length_column: Optional[str] = None, need_labels: bool = False,
                  chunk_rows: int = CHUNK_ROWS) -> Iterator[Tuple[Chunk, Dict[str, np.ndarray]]]:
    if batch_size < 1:
        raise ServeError(f"--batch-size: expected an int >= 1, got {batch_size}")
    model, _ = run.model(kind, device)
    for chunk in iter_chunks(run, path, max(chunk_rows, batch_size), length_column, need_labels):
        yield chunk, score(model, chunk.data.ids, run.task_names, batch_size, device)


def _out_format(out: str) -> str:
    low = out.lower()
    if low.endswith((".parquet", ".pq")):
        return "parquet"
    if low.endswith(".csv"):
        return "csv"
    raise ServeError(f"--out: {out}: expected a .csv or .parquet path")


class _Writer:
    """Columns in, a CSV or Parquet file out (to `path`), chunk by chunk."""

    def __init__(self, path: str, fmt: str):
        self.path, self.fmt = path, fmt
        self.w = None

    def write(self, cols: Dict[str, np.ndarray]) -> None:
        import pyarrow as pa

        t = pa.table(cols)
        if self.w is None:
            if self.fmt == "parquet":
                import pyarrow.parquet as pq
                self.w = pq.ParquetWriter(self.path, t.schema)
            else:
                import pyarrow.csv as pcsv
                self.w = pcsv.CSVWriter(self.path, t.schema)
        self.w.write_table(t)

    def close(self) -> None:
        if self.w is not None:
            self.w.close()


def predict_file(run_dir: str, data: str, out: str, kind: Optional[str] = None, batch_size: int = 8192,
                 rank: Optional[Sequence[float]] = None, length_column: Optional[str] = None,
                 device: str = "cpu", log: Optional[Callable[[str], None]] = None) -> Dict[str, object]:
    from ..train.runner import resolve_device

    log = log or (lambda msg: None)
    run = open_run(run_dir)
    kind = run.choose_kind(kind)
    dev = resolve_device(device)
    if length_column is not None and rank is None:
        raise ServeError("--length-column: only used with --rank alpha,beta,gamma")
    ctr, cvr = run.ctr_task(), run.cvr_task()
    fmt = _out_format(out)
    rows = 0
    with atomic_path(out) as tmp:  # the scores appear whole or not at all
        writer = _Writer(tmp, fmt)
        try:
            for chunk, probs in scored_chunks(run, kind, data, batch_size, dev, length_column):
                n = len(chunk.data)
                cols: Dict[str, np.ndarray] = {"row": np.arange(chunk.start, chunk.start + n, dtype=np.int64)}
                cols.update(probs)
                if rank is not None:
                    cols["rank_score"] = rank_score(probs[ctr], probs[cvr], chunk.length, rank)
                writer.write(cols)
                rows += n
        finally:
            writer.close()
    log(f"ncs predict: {rows} rows scored with the {kind} model -> {out}")
    return {"rows": rows, "model": kind, "out": out, "columns": ["row"] + run.task_names +
            (["rank_score"] if rank is not None else []),
            "rank": None if rank is None else {"alpha": rank[0], "beta": rank[1], "gamma": rank[2],
                                                "ctr_task": ctr, "cvr_task": cvr,
                                                "length": length_column or "1 (no --length-column)"}}
