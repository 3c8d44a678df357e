#!/usr/bin/env python3
"""Smoke correctness pass (seconds): every ncs backend variant the benchmark times, one shape per
op, every benchmark dtype, against the reference backend ("torch") on the same tensors.

    python bench/smoke.py --device cuda --json smoke.json
    python bench/smoke.py --tiny --device cpu            # the dry run: tiny shapes, cpu + interpreter

It runs the benchmark's own problems (bench/_problems.make_problem: same variants, same switches,
the first benchmark shape of each op), so a verdict applies to exactly the code bench_ops.py
times: `bench_ops.py --smoke smoke.json` writes each row's verdict beside its figures
("smoke": pass | fail | error | not-checked). A benchmark of a variant that failed here means
nothing. One eager forward+backward (or one optimizer step) per case; compared are the output,
every gradient (or, for the optimizer, the parameter and both moments after the step) by
relative Frobenius error, ||got - ref|| / ||ref||, under a tolerance per dtype, plus exact zeros
of the weight gradient where the mask bit is 0. This is not the test suite: the tests cover
odd shapes, densities 0 and 1, tasks and every function; this answers "does each backend run
and agree here" before anything is timed.

Exit status: 0 when every case that could run passed, 1 when one failed or raised, 2 on bad
arguments. The JSON is rewritten after every case (a killed run leaves what finished).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _cases as K  # noqa: E402
from bench import _cli, _env, _timing  # noqa: E402
from bench._cli import OPS, split  # noqa: E402
from bench._problems import Problem, make_problem  # noqa: E402

import torch  # noqa: E402

SCHEMA = "ncs-smoke/1"
REFERENCE = "nk:torch"
# relative Frobenius error allowed against the reference computed in the same dtype and mode:
# fp32 with TF32 off differs only by summation order; TF32 and bf16 by one rounding of the
# inputs (TF32: 10-bit mantissa) or of the output (bf16: 8 bits), done differently by each side
TOLERANCE = {"fp32": 1e-4, "tf32": 1e-2, "bf16": 3e-2}


def smoke_shape(op: str, batch: int) -> Dict[str, int]:
    """The first benchmark shape of op (so the kernels compiled here are the ones bench_ops times)."""
    return K.op_shapes(op, batch)[0]


def checked_variants(op: str, device: str) -> List[str]:
    """The ncs variants with a verdict: every nk:<backend>[~switch] except the reference itself.
    (cross+nk:<backend> is the cross op in PyTorch, then masked_linear: masked_linear's verdict.)"""
    return [v for v in K.variants(op, device) if v.startswith("nk:") and v != REFERENCE]


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    if got.shape != ref.shape:
        return float("inf")
    if not torch.isfinite(got).all():
        return float("inf")
    den = ref.norm().item()
    num = (got - ref).norm().item()
    return num / den if den > 0 else num


def _outputs(prob: Problem, mask: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Run one eager step and return what it computed (named)."""
    if prob.forward is None:  # optimizer step: the state it updates in place
        prob.step()
        names = ("param", "grad", "exp_avg", "exp_avg_sq")
        return {n: t.detach().clone() for n, t in zip(names, prob.owned) if n != "grad"}
    prob.clear_grads()
    y = prob.forward()
    y.backward(prob.dy)
    out = {"y": y.detach().clone()}
    for i, t in enumerate(prob.leaves):
        out[f"grad{i}"] = t.grad.detach().clone()
    return out


def _packed(prob: Problem) -> Optional[torch.Tensor]:
    for t in prob.owned:
        if t.dtype == torch.int32 and t.dim() == 2:
            return t
    return None


def run_case(op: str, variant: str, shape: Dict[str, int], dtype_name: str, device: str,
             ref_cache: Dict) -> Dict:
    rec = {"op": op, "variant": variant, "dtype": dtype_name, "shape": dict(shape), "device": device,
           "tolerance": TOLERANCE[dtype_name]}
    why = K.why_skip(op, variant, device, dtype_name, "eager")
    if why:
        rec.update(status="skipped", reason=why)
        return rec
    t0 = time.perf_counter()
    try:
        with K.precision(dtype_name):
            key = (op, dtype_name)
            if key not in ref_cache:
                ref_cache[key] = _outputs(make_problem(op, REFERENCE, shape, dtype_name, device), None)
            ref = ref_cache[key]
            prob = make_problem(op, variant, shape, dtype_name, device)
            got = _outputs(prob, None)
            _timing.sync(device)
        errs = {name: rel_err(got[name], ref[name]) for name in ref}
        rec["rel_err"] = errs
        bad = [n for n, e in errs.items() if not e <= TOLERANCE[dtype_name]]
        packed = _packed(prob)
        if op != "masked_adam" and packed is not None:
            # the weight gradient (leaf 1 of the linear and cross problems) is exactly 0 off-mask
            k = prob.leaves[1].shape[1]
            import ncs_kernels as nk

            off = ~nk.unpack_mask(packed, k)
            nonzero = int((got["grad1"][off] != 0).sum().item())
            rec["dW_nonzero_off_mask"] = nonzero
            if nonzero:
                bad.append(f"dW has {nonzero} nonzero entries where the mask bit is 0")
        rec["status"] = "fail" if bad else "pass"
        if bad:
            rec["reason"] = "over tolerance or wrong: " + ", ".join(bad)
    except Exception as e:  # a backend that raises is a verdict too
        rec.update(status="error", reason=f"{type(e).__name__}: {e}"[:800])
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    return rec


def verdicts(doc: Dict) -> Dict[str, str]:
    """{"op|variant|dtype": status} of a smoke document (what bench_ops reads)."""
    return {f"{c['op']}|{c['variant']}|{c['dtype']}": c["status"] for c in doc.get("cases", [])}


def verdict_for(table: Dict[str, str], op: str, variant: str, dtype_name: str) -> str:
    """The smoke verdict of one benchmark row: pass | fail | error | skipped | not-checked, or
    "baseline" for the plain-PyTorch rows and "reference" for nk:torch."""
    if K.variant_backend(variant) is None:
        return "baseline"
    if variant == REFERENCE:
        return "reference"
    if variant.startswith("cross+"):  # the PyTorch cross, then masked_linear on that backend
        return table.get(f"masked_linear|{variant[len('cross+'):]}|{dtype_name}", "not-checked")
    return table.get(f"{op}|{variant}|{dtype_name}", "not-checked")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--batch", type=_cli.positive_int, default=None, help="batch B (default: the benchmark's)")
    p.add_argument("--ops", type=_cli.ops_arg, default="linear,cross,adam", help="comma list of linear, cross, adam")
    p.add_argument("--dtypes", default=None, help="comma list of fp32, tf32, bf16 (default: the benchmark's)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (the dry run)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for CPU runs")
    p.add_argument("--json", default=None, help="write the verdicts here")
    args = p.parse_args(argv)
    if args.dtypes:
        bad = [d for d in split(args.dtypes) if d not in K.DTYPES]
        if bad:
            p.error(f"--dtypes: expected names from {tuple(K.DTYPES)}, got {bad}")
    return args


def main(argv=None) -> int:
    return _cli.run_main(argv, parse_args, _run, "smoke")


def _run(args, device: str) -> int:
    path = Path(args.json) if args.json else None
    batch = args.batch or K.default_batch(device)
    dtypes = split(args.dtypes) if args.dtypes else list(K.dtype_names(device))
    doc = {"schema": SCHEMA, "env": _env.environment(device), "reference": REFERENCE, "tolerance": TOLERANCE,
           "complete": False, "cases": []}
    start = time.perf_counter()
    ref_cache: Dict = {}
    try:
        for key in split(args.ops):
            op = OPS[key]
            shape = smoke_shape(op, batch)
            for dt in dtypes:
                if op == "masked_adam" and dt != "fp32":
                    continue  # as in bench_ops: the optimizer step runs on fp32 master weights
                for v in checked_variants(op, device):
                    rec = run_case(op, v, shape, dt, device, ref_cache)
                    doc["cases"].append(rec)
                    mark = {"pass": "ok  ", "skipped": "skip"}.get(rec["status"], "FAIL")
                    detail = rec.get("reason", "") if rec["status"] != "pass" else \
                        "max rel err %.2e" % max(rec["rel_err"].values())
                    print(f"{mark} {op:20s} {v:24s} {dt:5s} {K.shape_id(shape):18s} {detail[:150]}", flush=True)
                    _env.write_json(path, doc)
            ref_cache.clear()
        doc["complete"] = True
    finally:
        failed = [c for c in doc["cases"] if c["status"] in ("fail", "error")]
        doc["summary"] = {s: sum(c["status"] == s for c in doc["cases"]) for s in ("pass", "fail", "error", "skipped")}
        doc["all_pass"] = not failed and doc["complete"]
        doc["seconds"] = round(time.perf_counter() - start, 2)
        _env.write_json(path, doc)
    print(f"# smoke: {doc['summary']} in {doc['seconds']}s" + (f"; wrote {path}" if path else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
