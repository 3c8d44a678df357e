#!/usr/bin/env python3
"""Aggregate issue 10's protocol study (grids protocol_real / protocol_synth of grids.py).

    python scripts/experiments/protocol_report.py --runs runs/exp --grid protocol_real \
        --json docs/results/protocol_real.json --md docs/results/protocol_real.md

Per variant and model, over the seeds: validation (the served model; what tuning reads) and
test CVR MSE and CTR AUC, mean ± std; per seed against Single_Task of the same seed and
variant: the CVR MSE gain (single - model) / single in %, the CTR AUC difference, and in how
many seeds the model's CVR MSE is lower. `--pick` prints the variant chosen on VALIDATION: the
best mean validation connection CVR gain over Single_Task among variants whose validation CTR AUC is within 0.002 of Single_Task's (test is never read
for the choice).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

PAPER = {"single": "Single_Task", "layer": "Layer_Share", "connection": "Connection_Share",
         "shared_bottom": "SharedBottom", "mmoe": "MMoE", "ple": "PLE", "esmm": "ESMM"}


def _ms(xs: List[float]) -> Dict[str, float]:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def collect(runs: Path, grid: str) -> Dict[str, Dict[int, Dict[str, Any]]]:
    """{variant: {seed: {"models": test metrics per kind, "valid": validation metrics per kind}}};
    several runs of one variant and seed (e.g. the paper's models and the competitors trained
    apart) are merged."""
    out: Dict[str, Dict[int, Dict[str, Any]]] = {}
    for tags in sorted((runs / grid).glob("*.tags.json")):
        t = json.loads(tags.read_text())
        m = runs / grid / t["run_id"] / "metrics.json"
        if m.is_file():
            rec = out.setdefault(t["variant"], {}).setdefault(int(t["seed"]), {"models": {}, "valid": {}})
            got = json.loads(m.read_text())
            for key in ("models", "valid"):
                rec[key].update(got.get(key, {}))
    return out


def seeds_of_versus_json(path: Path) -> Dict[int, Dict[str, Any]]:
    """The per-seed values of a committed --versus JSON (one variant) as collect() gives them:
    {seed: {"models": {kind: {cvr_mse, ctr_auc}}, "valid": {kind: {cvr_mse}}}} (test CVR MSE and
    CTR AUC, validation CVR MSE: what versus() reads)."""
    doc = json.loads(Path(path).read_text())
    variants = doc.get("variants") or {}
    if len(variants) != 1:
        raise ValueError(f"--others: {path}: expected a --versus JSON of one variant, got {len(variants)}")
    (kinds,) = variants.values()
    out: Dict[int, Dict[str, Any]] = {}
    for kind, row in kinds.items():
        for i, s in enumerate(row["seeds"]):
            rec = out.setdefault(int(s), {"models": {}, "valid": {}})
            rec["models"][kind] = {"cvr_mse": row["test_cvr_mse"]["values"][i], "ctr_auc": row["test_ctr_auc"]["values"][i]}
            rec["valid"][kind] = {"cvr_mse": row["valid_cvr_mse"]["values"][i]}
    return out


def with_others(seeds: Dict[int, Dict[str, Any]], others: Dict[int, Dict[str, Any]]) -> Dict[int, Dict[str, Any]]:
    """Each seed's models of the grid, plus the models of `others` (the same seed) the grid has not
    trained: a variant of one model set against the rest of another grid, paired by seed."""
    out = {}
    for s, rec in seeds.items():
        o = others.get(s, {"models": {}, "valid": {}})
        out[s] = {key: {**{k: v for k, v in o.get(key, {}).items() if k not in rec["models"]}, **rec.get(key, {})}
                  for key in ("models", "valid")}
    return out


def versus(seeds: Dict[int, Dict[str, Any]], ref: str = "connection") -> Dict[str, Any]:
    """Every model against `ref` (Connection_Share), paired by seed, on test: per model its
    validation / test CVR MSE and test CTR AUC (mean ± std, values per seed), and for the others
    ref's CVR gain over it (other - ref) / other in %, the seeds where ref's CVR MSE is lower, and
    ref's CTR AUC minus the model's."""
    kinds = sorted({k for m in seeds.values() for k in m["models"]}, key=lambda k: list(PAPER).index(k))
    order = sorted(seeds)
    res: Dict[str, Any] = {}
    for kind in kinds:
        have = [s for s in order if kind in seeds[s]["models"]]
        row: Dict[str, Any] = {"seeds": have}
        for name, key, metric in (("valid_cvr_mse", "valid", "cvr_mse"), ("test_cvr_mse", "models", "cvr_mse"),
                                  ("test_ctr_auc", "models", "ctr_auc")):
            vals = [seeds[s].get(key, {}).get(kind, {}).get(metric) for s in have]
            row[name] = dict(_ms(vals), values=vals)
        if kind != ref:
            pairs = [(seeds[s]["models"][kind], seeds[s]["models"][ref]) for s in have if ref in seeds[s]["models"]]
            gain = [(o["cvr_mse"] - c["cvr_mse"]) / o["cvr_mse"] * 100 for o, c in pairs]
            dauc = [c["ctr_auc"] - o["ctr_auc"] for o, c in pairs]
            row["vs_ref"] = {"cvr_gain_pct": dict(_ms(gain), values=gain), "ctr_auc_diff": dict(_ms(dauc), values=dauc),
                             "ref_cvr_better": sum(g > 0 for g in gain), "pairs": len(pairs)}
        res[kind] = row
    return res


def versus_md(vs: Dict[str, Any], ref: str = "connection", extra: Dict[str, Dict[str, str]] = None) -> str:
    """The table of versus(): the reference model last, in bold. `extra`: {column: {kind: text}}
    inserted after the model name."""
    extra = extra or {}
    head = ["model", *extra, "valid CVR MSE", "test CVR MSE", "test CTR AUC",
            f"{PAPER[ref]}'s CVR gain (paired)", "seeds better", "CTR AUC difference"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ms = lambda d, p: "-" if d["n"] == 0 else f"{d['mean']:.{p}f} ± {d['std']:.{p}f}"  # noqa: E731
    for kind in [k for k in vs if k != ref] + [k for k in vs if k == ref]:
        r = vs[kind]
        cells = [f"**{PAPER[kind]}**" if kind == ref else PAPER.get(kind, kind)]
        cells += [extra[c].get(kind, "") for c in extra]
        cvr = ms(r["test_cvr_mse"], 5)
        cells += [ms(r["valid_cvr_mse"], 5), f"**{cvr}**" if kind == ref else cvr, ms(r["test_ctr_auc"], 4)]
        if kind == ref or "vs_ref" not in r:
            cells += ["", "", ""]
        else:
            v = r["vs_ref"]
            cells += [f"{v['cvr_gain_pct']['mean']:+.2f} % ± {v['cvr_gain_pct']['std']:.2f}",
                      f"{v['ref_cvr_better']}/{v['pairs']}",
                      f"{v['ctr_auc_diff']['mean']:+.4f} ± {v['ctr_auc_diff']['std']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def probes(data: Dict[str, Dict[int, Dict[str, Any]]], kind: str, ref: str = "defaults") -> Dict[str, Any]:
    """One model's variants (a grid like synth1m_probe): per variant its validation and test CVR
    MSE and CTR AUC (mean over the variant's seeds) and the validation differences against the
    variant `ref`: CVR gain (ref - v) / ref in % (positive: the variant is better) and CTR AUC v - ref."""
    rows: Dict[str, Any] = {}
    for v, seeds in data.items():
        row: Dict[str, Any] = {"seeds": sorted(seeds)}
        for name, key, metric in (("valid_cvr_mse", "valid", "cvr_mse"), ("valid_ctr_auc", "valid", "ctr_auc"),
                                  ("test_cvr_mse", "models", "cvr_mse"), ("test_ctr_auc", "models", "ctr_auc")):
            row[name] = _ms([seeds[s].get(key, {}).get(kind, {}).get(metric) for s in sorted(seeds)])["mean"]
        rows[v] = row
    if ref in rows:
        r = rows[ref]
        for row in rows.values():
            row["valid_cvr_gain_pct"] = 100.0 * (r["valid_cvr_mse"] - row["valid_cvr_mse"]) / r["valid_cvr_mse"]
            row["valid_ctr_auc_diff"] = row["valid_ctr_auc"] - r["valid_ctr_auc"]
    return {"model": kind, "ref": ref, "variants": rows}


def probes_md(rep: Dict[str, Any]) -> str:
    head = ("| variant | valid CVR MSE | valid CVR gain vs " + rep["ref"] + " | valid CTR AUC | CTR AUC diff | "
            "test CVR MSE | test CTR AUC |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    order = sorted(rep["variants"], key=lambda v: (v != rep["ref"], -rep["variants"][v].get("valid_cvr_gain_pct", 0.0)))
    for v in order:
        r = rep["variants"][v]
        gain = "" if v == rep["ref"] or "valid_cvr_gain_pct" not in r else f"{r['valid_cvr_gain_pct']:+.2f} %"
        diff = "" if v == rep["ref"] or "valid_ctr_auc_diff" not in r else f"{r['valid_ctr_auc_diff']:+.4f}"
        name = f"**{v}**" if v == rep["ref"] else v
        lines.append(f"| {name} | {r['valid_cvr_mse']:.5f} | {gain} | {r['valid_ctr_auc']:.4f} | {diff} | "
                     f"{r['test_cvr_mse']:.5f} | {r['test_ctr_auc']:.4f} |")
    return "\n".join(lines)


def collect_tune(study: Path) -> Dict[str, Any]:
    """A `ncs tune` study directory (tune_study.py): {"seeds": {seed: {"models", "valid"}} of the
    final runs of every best config, "summary": summary.json, "tune": tune.json}."""
    summary = json.loads((study / "summary.json").read_text())
    seeds: Dict[int, Dict[str, Any]] = {}
    for kind in summary["models"]:
        for m in sorted((study / "final" / kind).glob("seed*/metrics.json")):
            s = int(m.parent.name[len("seed"):])
            got = json.loads(m.read_text())
            rec = seeds.setdefault(s, {"models": {}, "valid": {}})
            rec["models"][kind] = got["models"][kind]
            rec["valid"][kind] = got.get("valid", {}).get(kind, {})
    return {"seeds": seeds, "summary": summary, "tune": json.loads((study / "tune.json").read_text())}


def tune_report(study) -> Dict[str, Any]:
    """The report of one study directory, or of a study split over processes (a list of
    directories, e.g. tune_synth1m_a and _b: disjoint model kinds, one objective). A kind tuned
    in several parts is taken from the last one (tune_synth1m2_c re-tunes Connection_Share of
    part a): its results, its trials and its search seconds."""
    parts = [Path(study)] if isinstance(study, (str, Path)) else [Path(x) for x in study]
    got = [collect_tune(p) for p in parts]
    summ = dict(got[0]["summary"], models={})
    seeds: Dict[int, Dict[str, Any]] = {}
    space: Dict[str, Any] = {}
    for p, g in zip(parts, got):
        if g["summary"]["metric"] != summ["metric"] or g["summary"]["trials"] != summ["trials"]:
            raise SystemExit(f"--tune: {p} has another objective or budget than {parts[0]}")
        summ["models"].update(g["summary"]["models"])
        space.update(g["tune"].get("space") or {})
        for sd, rec in g["seeds"].items():
            r = seeds.setdefault(sd, {"models": {}, "valid": {}})
            r["models"].update(rec["models"])
            r["valid"].update(rec["valid"])
    vs = versus(seeds)
    per_kind = {k: {key: r.get(key) for key in ("trials_done", "best_trial", "best_valid", "params", "feasible")}
                for k, r in summ["models"].items()}
    owner = {k: p for p, g in zip(parts, got) for k in g["summary"]["models"]}  # the last part wins
    trials = [json.loads(f.read_text()) for p in parts for f in sorted((p / "trials").glob("*/trial_*.json"))
              if owner.get(f.parent.name) == p]
    secs = {k: sum(t["seconds"] for t in trials if t["kind"] == k) for k in summ["models"]}
    timing = [p.parent / f"{p.name}.time.json" for p in parts]  # tune_study.py's wall / CPU seconds
    process = [json.loads(t.read_text()) for t in timing if t.is_file()]
    return {"study": "+".join(p.name for p in parts), "metric": summ["metric"], "trials_per_model": summ["trials"],
            "seeds": summ["seeds"], "ctr_auc_floor": [g["summary"].get("ctr_auc_floor") for g in got],
            "trial_seeds": summ.get("trial_seeds", 1), "space": space, "best": per_kind,
            "search_seconds": secs, "process": (process[0] if len(process) == 1 else process) or None,
            "versus_connection": vs}


def tune_md(rep: Dict[str, Any]) -> str:
    extra = {"trials": {k: str(b["trials_done"]) for k, b in rep["best"].items()},
             f"best trial's valid {rep['metric']}": {k: ("-" if b["best_valid"] is None else f"{b['best_valid']:.5f}")
                                                    for k, b in rep["best"].items()}}
    return versus_md(rep["versus_connection"], extra=extra)


def aggregate(data: Dict[str, Dict[int, Dict[str, Any]]]) -> Dict[str, Any]:
    res: Dict[str, Any] = {}
    for variant, seeds in data.items():
        kinds = sorted({k for m in seeds.values() for k in m["models"]}, key=lambda k: list(PAPER).index(k))
        rv: Dict[str, Any] = {}
        for kind in kinds:
            row: Dict[str, Any] = {}
            for split, key in (("valid", "valid"), ("test", "models")):
                mse = [m[key][kind]["cvr_mse"] for m in seeds.values() if kind in m.get(key, {})]
                auc = [m[key][kind]["ctr_auc"] for m in seeds.values() if kind in m.get(key, {})]
                gain, dauc, wins = [], [], 0
                for m in seeds.values():
                    if kind in m.get(key, {}) and "single" in m.get(key, {}):
                        b, x = m[key]["single"], m[key][kind]
                        gain.append((b["cvr_mse"] - x["cvr_mse"]) / b["cvr_mse"] * 100)
                        dauc.append(x["ctr_auc"] - b["ctr_auc"])
                        wins += x["cvr_mse"] < b["cvr_mse"]
                row[split] = {"cvr_mse": _ms(mse), "ctr_auc": _ms(auc), "cvr_gain_pct": _ms(gain),
                              "ctr_auc_diff": _ms(dauc), "cvr_wins": wins, "seeds": len(mse)}
            rv[kind] = row
        res[variant] = rv
    return res


def pick(agg: Dict[str, Any], tol: float = 0.002, exclude=("today",)) -> Dict[str, Any]:
    """The variant with the best mean VALIDATION connection CVR gain over Single_Task among those
    whose mean validation CTR AUC difference is >= -tol (fallback: best gain overall). "today"
    (the pre-issue-10 protocol, which serves the last epoch of every model, not each task's
    best) is the reference, not a candidate."""
    cand = {v: a for v, a in agg.items() if "connection" in a and v not in exclude}
    ok = {v: a for v, a in cand.items() if a["connection"]["valid"]["ctr_auc_diff"]["mean"] >= -tol}
    pool = ok or cand
    best = max(pool, key=lambda v: pool[v]["connection"]["valid"]["cvr_gain_pct"]["mean"])
    return {"variant": best, "ctr_constraint_met_on_valid": bool(ok), "candidates": sorted(ok)}


def pick_over(aggs: Dict[str, Dict[str, Any]], tol: float = 0.002, exclude=("today", "defaults_all")) -> Dict[str, Any]:
    """The protocol for the defaults, chosen on VALIDATION over several data sets: among the
    variants run on every grid, those whose mean validation CTR AUC difference to Single_Task is
    >= -tol on every grid; the best mean (over grids) validation CVR gain of Connection_Share
    among them, or among all when none qualifies."""
    common = set.intersection(*[{v for v, a in agg.items() if "connection" in a} for agg in aggs.values()]) - set(exclude)
    score = {v: statistics.fmean(agg[v]["connection"]["valid"]["cvr_gain_pct"]["mean"] for agg in aggs.values())
             for v in common}
    ok = [v for v in common if all(agg[v]["connection"]["valid"]["ctr_auc_diff"]["mean"] >= -tol for agg in aggs.values())]
    pool = ok or list(common)
    best = max(pool, key=lambda v: score[v])
    return {"variant": best, "ctr_constraint_met_on_valid": bool(ok), "mean_valid_cvr_gain_pct": score,
            "grids": list(aggs)}


def markdown(agg: Dict[str, Any], split: str) -> str:
    lines = [f"| variant | model | {split} CVR MSE | {split} CTR AUC | CVR gain vs Single | CTR AUC diff | CVR wins |",
             "|---|---|---|---|---|---|---|"]
    for variant, rv in agg.items():
        for kind, row in rv.items():
            r = row[split]
            f = lambda d, p: "-" if d["n"] == 0 else f"{d['mean']:.{p}f} ± {d['std']:.{p}f}"  # noqa: E731
            gain = "-" if kind == "single" else f"{r['cvr_gain_pct']['mean']:+.2f} % ± {r['cvr_gain_pct']['std']:.2f}"
            diff = "-" if kind == "single" else f"{r['ctr_auc_diff']['mean']:+.4f} ± {r['ctr_auc_diff']['std']:.4f}"
            wins = "-" if kind == "single" else f"{r['cvr_wins']}/{r['seeds']}"
            lines.append(f"| {variant} | {PAPER.get(kind, kind)} | {f(r['cvr_mse'], 5)} | {f(r['ctr_auc'], 4)} | "
                         f"{gain} | {diff} | {wins} |")
    return "\n".join(lines)


def compact(agg: Dict[str, Any], variants: List[str] = None) -> str:
    """One row per variant and model: validation (tuning) then test (reported) columns."""
    lines = ["| variant | model | valid CVR gain | valid CTR AUC diff | test CVR MSE | test CVR gain (wins) | "
             "test CTR AUC | test CTR AUC diff |", "|---|---|---|---|---|---|---|---|"]
    for variant in variants or list(agg):
        if variant not in agg:
            continue
        for kind, row in agg[variant].items():
            v, t = row["valid"], row["test"]
            ms = lambda d, p: "-" if d["n"] == 0 else f"{d['mean']:.{p}f} ± {d['std']:.{p}f}"  # noqa: E731
            if kind == "single":
                lines.append(f"| {variant} | {PAPER[kind]} | | | {ms(t['cvr_mse'], 5)} | | {ms(t['ctr_auc'], 4)} | |")
                continue
            lines.append(
                f"| {variant} | {PAPER.get(kind, kind)} | {v['cvr_gain_pct']['mean']:+.2f} % | "
                f"{v['ctr_auc_diff']['mean']:+.4f} | {ms(t['cvr_mse'], 5)} | "
                f"{t['cvr_gain_pct']['mean']:+.2f} % ± {t['cvr_gain_pct']['std']:.2f} ({t['cvr_wins']}/{t['seeds']}) | "
                f"{ms(t['ctr_auc'], 4)} | {t['ctr_auc_diff']['mean']:+.4f} ± {t['ctr_auc_diff']['std']:.4f} |")
    return "\n".join(lines)


def replace_block(doc: Path, name: str, text: str) -> None:
    s = doc.read_text()
    a, b = f"<!-- table:{name} -->", f"<!-- /table:{name} -->"
    if a not in s or b not in s:
        raise SystemExit(f"--doc: {doc} has no {a} ... {b} block")
    i, j = s.index(a) + len(a), s.index(b)
    doc.write_text(s[:i] + "\n" + text + "\n" + s[j:])


def plot_gains(agg: Dict[str, Any], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    variants = [v for v in agg if "connection" in agg[v]]
    kinds = [k for k in PAPER if k != "single" and any(k in agg[v] for v in variants)]
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.45 * len(variants) + 1.8), sharey=True)
    h = 0.8 / max(1, len(kinds))
    for ax, metric, lab in ((axes[0], "cvr_gain_pct", "CVR MSE gain vs Single_Task (%), test"),
                            (axes[1], "ctr_auc_diff", "CTR AUC - Single_Task's, test")):
        for i, k in enumerate(kinds):
            ys = [j + i * h for j in range(len(variants))]
            m = [agg[v][k]["test"][metric]["mean"] if k in agg[v] else float("nan") for v in variants]
            e = [agg[v][k]["test"][metric]["std"] if k in agg[v] else 0 for v in variants]
            ax.barh(ys, m, height=h, xerr=e, label=PAPER.get(k, k), capsize=2)
        ax.axvline(0, color="k", linewidth=0.7)
        if metric == "ctr_auc_diff":
            ax.axvline(-0.002, color="r", linewidth=0.7, linestyle="--")
        ax.set_xlabel(lab)
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks([j + h * (len(kinds) - 1) / 2 for j in range(len(variants))])
    axes[0].set_yticklabels(variants, fontsize=8)
    axes[0].invert_yaxis()
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def emit(rep: Any, md: str, json_path: Optional[str], doc: Optional[str], marker: str) -> int:
    """The end of every report: the JSON (if asked), the doc's marked block (if asked), the table
    on stdout. Returns 0 (the exit status)."""
    if json_path:
        Path(json_path).write_text(json.dumps(rep, indent=1, allow_nan=True) + "\n")
    if doc:
        replace_block(Path(doc), marker, md)
    print(md)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="runs/exp")
    p.add_argument("--grid")
    p.add_argument("--json")
    p.add_argument("--md")
    p.add_argument("--split", default="test", choices=("valid", "test"))
    p.add_argument("--pick", action="store_true")
    p.add_argument("--doc", help="replace the <!-- table:GRID --> block of this markdown file")
    p.add_argument("--figure", help="bar chart of every variant's test gains (PNG)")
    p.add_argument("--pick-over", help="comma-separated grids: choose the defaults on validation over all of them")
    p.add_argument("--marker", help="the block name for --doc (default: the grid name)")
    p.add_argument("--variants", help="comma-separated variants (and their order) for --doc / --figure")
    p.add_argument("--tune", help="a `ncs tune` study directory (tune_study.py), or several (comma-separated: "
                                  "one study split over processes): the tuned models' table")
    p.add_argument("--probes", metavar="KIND",
                   help="--grid: one model's variants against the variant 'defaults', on validation (synth1m_probe)")
    p.add_argument("--versus", action="store_true",
                   help="--grid: every model against Connection_Share, paired by seed (one variant per grid)")
    p.add_argument("--others", metavar="JSON",
                   help="--versus: the models the grid did not train, per seed, from a committed --versus JSON "
                        "(e.g. docs/results/minimal_synth1m_fixed.json)")
    a = p.parse_args(argv)
    if a.tune:
        parts = [Path(x) for x in a.tune.split(",")]
        for part in parts:
            if not (part / "summary.json").is_file():
                print(f"--tune: {part} has no summary.json (is the study finished?)", file=sys.stderr)
                return 2
        rep = tune_report(parts if len(parts) > 1 else parts[0])
        return emit(rep, tune_md(rep), a.json, a.doc, a.marker or rep["study"])
    if a.others and not a.versus:
        print("--others: only with --versus", file=sys.stderr)
        return 2
    if a.probes or a.versus:
        data = collect(Path(a.runs), a.grid)
        if not data:
            print(f"--runs: no finished runs of grid {a.grid} under {a.runs}", file=sys.stderr)
            return 2
        if a.probes:
            rep = dict(probes(data, a.probes), grid=a.grid)
            md = probes_md(rep)
        else:
            if a.others:
                try:
                    others = seeds_of_versus_json(Path(a.others))
                except ValueError as e:  # the JSON itself, or not one variant: the message names the file
                    print(e if str(e).startswith("--others") else f"--others: {a.others}: not JSON ({e})",
                          file=sys.stderr)
                    return 2
                except (OSError, KeyError, IndexError, TypeError) as e:
                    print(f"--others: {a.others}: expected a --versus JSON (per model: seeds and the "
                          f"values of valid_cvr_mse, test_cvr_mse, test_ctr_auc): {type(e).__name__} {e}",
                          file=sys.stderr)
                    return 2
                data = {v: with_others(seeds, others) for v, seeds in data.items()}
            rep = {"grid": a.grid, "variants": {v: versus(seeds) for v, seeds in data.items()}}
            if a.others:
                rep["others"] = a.others
            md = "\n\n".join(versus_md(vs) for vs in rep["variants"].values())
        return emit(rep, md, a.json, a.doc, a.marker or a.grid)
    if a.pick_over:
        aggs = {g: aggregate(collect(Path(a.runs), g)) for g in a.pick_over.split(",")}
        print(json.dumps(pick_over(aggs), indent=1))
        return 0
    agg = aggregate(collect(Path(a.runs), a.grid))
    if not agg:
        print(f"--runs: no finished runs of grid {a.grid} under {a.runs}", file=sys.stderr)
        return 2
    out = {"grid": a.grid, "variants": agg, "pick_on_valid": pick(agg)}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1, allow_nan=True))
    order = a.variants.split(",") if a.variants else None
    if order:
        agg = {v: agg[v] for v in order if v in agg}
    if a.doc:
        replace_block(Path(a.doc), a.marker or a.grid, compact(agg))
    if a.figure:
        plot_gains(agg, a.figure, f"{a.grid}: mean ± std over seeds (test split)")
    md = f"Validation (served models):\n\n{markdown(agg, 'valid')}\n\nTest:\n\n{markdown(agg, 'test')}\n"
    if a.md:
        Path(a.md).write_text(md)
    print(md if not a.pick else "")
    if a.pick:
        print(json.dumps(out["pick_on_valid"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
