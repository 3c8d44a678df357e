"""`ncs tune`: the same hyper-parameter search for every model, on the validation split only.

    ncs tune --config C --trials N --out DIR [--models all] [--seeds K] [--metric cvr_mse]
             [--ctr-auc-floor A | --ctr-auc-margin M] [--trial-seeds R] [--start-at-base]
             [--common-draws] [--sampler-seed S]

For each model kind, an Optuna study (TPE sampler, seeded) runs N trials. A trial trains the
model with the trial's config (the base config + the sampled values, seed = the config's seed)
and scores it on the VALIDATION split; the test split is not even prepared during the search.
Then each model's best config is written (DIR/best/<kind>.yaml), trained with K seeds (seed,
seed + 1, ...) by the normal runner (DIR/final/<kind>/seed<s>/, a run directory each) and its
TEST metrics reported as mean +- std over the seeds (DIR/summary.json, and a table on stdout).

Search space (the same for every model, see space()):
    optim.lr                 log-uniform in [lr / 10, lr * 10]       (lr of the base config)
    tasks[0].weight          uniform in [0.1, 0.9]; the other tasks share 1 - w0 in proportion to
                             their base weights (Eq. 2's omega, or ESMM's term weights)
    model.embed_dim          one of {d / 2, d, 2 d}
    passes over the data     baselines (every kind but connection): baselines.epochs in
                             [1, 2 (W + J)]; connection: stages.warmup.epochs in [1, 2 W] and
                             stages.joint.epochs in [1, 2 J] (W, J of the base config), so the
                             largest number of passes its final weights can see is the same
    plus each model's own capacity / method knobs (one or two each, never the common ones):
    connection               stages.masks.final_density log-uniform in [0.05, 0.8];
                             model.task_embed_dim in {0, d / 2}
    layer                    model.task_embed_dim in {0, d / 2}
    mmoe                     model.experts in [T, 2 T]             (T tasks)
    ple                      model.shared_experts in [1, 2], model.task_experts in [1, 2]
    single, shared_bottom, esmm   the common space only
Early stopping and everything else come from the base config, for every model alike.

Objective: the validation value of --metric (default: stages.joint.metric, or the last task's
main metric, e.g. cvr_mse; minimised, or maximised for an *_auc metric). With --ctr-auc-floor A,
a trial whose validation AUC of the first bce/focal task is below A is infeasible (TPE's
constraints_func; the best trial is the best feasible one). tune(ctr_auc_margin=M): the floor of every
kind but single is the validation CTR AUC of Single_Task's best trial (tuned first, unconstrained)
minus M (issue 10's condition). A trial whose metric is NaN fails and counts towards the budget.

--start-at-base: each model's first trial is the base config's own point of the space
(tune_space.base_params: the defaults, or the config's values), the others are sampled. With
few trials (a large data set) this keeps the untuned config among the candidates, so tuning
never selects a config worse on validation than the one a plain `ncs train` would run.

--common-draws: every sampled trial's common axes (lr, w0, embed_dim) are the same for every
model kind: trial j's are point j of a seeded, shifted Halton sequence over those axes
(tune_space.common_draw), enqueued before the search; TPE samples only each model's own axes
(epochs, density, experts, ...). With a few trials per model (a large data set) independent
draws compare the models' luck with the lr (one model draws 2e-4, the next 2e-3) more than the
models; common draws make the comparison paired, as in a common-random-numbers design, and the
Halton points cover each axis evenly. Trial 0 is the base point under --start-at-base.

--trial-seeds R (default 1): a trial trains its config R times (seeds seed .. seed + R - 1) and
its value is the mean of the R validation values (the CTR AUC the floor reads too: the mean).
On small data one seed's luck moves the validation metric as much as the config does (the real
sample: a best trial 0.3-6 % better than the same config's 5-seed mean), and 40 one-seed trials
then select seed luck; R seeds cut that noise by sqrt(R) at R times the cost per trial, so a
study of the same compute has R times fewer trials. trials/<kind>/trial_<n>.json keeps every
seed's metrics ("valid_per_seed").

Files: DIR/study.journal (Optuna's JSON-lines journal storage: a killed `ncs tune` resumes
where it stopped when run again with the same arguments; a trial cut short is run again with
the same parameters), DIR/trials/<kind>/trial_<n>.json (params, config overrides, validation
metrics, value, feasibility), DIR/tune.json (the arguments of the study), DIR/config.yaml (the
base config), DIR/best/<kind>.yaml, DIR/final/..., DIR/summary.json. No pickle anywhere.

Reproducibility: the sampler of model k is TPESampler(seed = hash(sampler seed, k, trials
done)), so an uninterrupted study is reproducible; after a resume the sampler restarts from a
seed that depends on the trials already done (deterministic, but not the same points an
uninterrupted study would have drawn).
"""
from __future__ import annotations

import glob
import json
import math
import os
import shutil
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence

if TYPE_CHECKING:
    from .config import Config

from .config import ConfigError, dump_config, load_config, main_metric, metric_names
from .models import PAPER_NAMES, RUN_ORDER
from .tune_space import _suggest, base_params, common_draw, overrides, space, trial_config  # noqa: F401  (the search space)

STUDY_FILE = "study.journal"


def _optuna():
    try:
        import optuna
    except ImportError:  # pragma: no cover - the test extra installs it
        raise ConfigError("ncs tune needs optuna: pip install 'ncs[tune]'") from None
    return optuna


def objective_metric(base: "Config", metric: Optional[str]) -> tuple:
    """(metric name, direction)."""
    if metric is None:
        metric = base.stages.joint.metric
    if metric is None:
        m, _ = main_metric(base.tasks[-1])
        metric = f"{base.tasks[-1].name}_{m}"
    valid = set()
    for t in base.tasks:
        valid |= {f"{t.name}_{m}" for m in metric_names(t)}
    if metric not in valid:
        raise ConfigError(f"--metric: expected one of {', '.join(sorted(valid))}, got {metric!r}")
    return metric, ("maximize" if metric.endswith("_auc") else "minimize")


def _ctr_name(base: "Config") -> Optional[str]:
    return next((t.name for t in base.tasks if t.loss != "mse"), None)


def _derived(seed: int, *parts) -> int:
    import hashlib
    h = hashlib.blake2b("/".join(str(p) for p in (seed,) + parts).encode(), digest_size=4).digest()
    return int.from_bytes(h, "little")


def _sized(base: "Config", log):
    """(the base config with its "auto" sizes (ncs.config.sizing) resolved on the training split,
    the loaded (data, train, valid) or None): the search space is then centred on the values a
    plain `ncs train` would use, and the data loaded for sizing is the study's (loaded once)."""
    from .config.sizing import has_auto, resolve_auto
    if not has_auto(base):
        return base, None
    from .train.runner import load_data, split_data
    data = load_data(base)
    train, valid, _test = split_data(base, data)  # the test split is never prepared here
    base, auto = resolve_auto(base, len(train))
    log(f"auto sizes for {len(train)} training rows: " + ", ".join(f"{k} {v:g}" for k, v in auto.items()))
    return base, (data, train, valid)


class _Study:
    """Data prepared once; one objective per model kind."""

    def __init__(self, base, out, metric, direction, floor, log, loaded=None, trial_seeds=1):
        from .train import batches as B
        from .train.runner import load_data, resolve_device, split_data
        self.base, self.out, self.metric, self.direction, self.floor, self.log = base, out, metric, direction, floor, log
        self.trial_seeds = trial_seeds
        self.device = resolve_device(base.device)
        if loaded is None:
            data = load_data(base)
            train, valid, _test = split_data(base, data)  # the test split is never prepared here
        else:  # already loaded by _sized
            data, train, valid = loaded
        click = base.data.click_label
        try:
            self.train = B.prepare_split(train, base.tasks, click, self.device)
            self.valid = B.prepare_split(valid, base.tasks, click, self.device)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.fields = data.fields
        self.ctr = _ctr_name(base)

    def evaluate_seeds(self, kind: str, params: Dict[str, Any], ckpt_dir: str) -> List[Dict[str, float]]:
        """The validation metrics of the trial's config trained with each of the trial seeds."""
        from .train.stages import ModelTrainer
        cfg = trial_config(kind, self.base, params)
        per_seed = []
        for i in range(self.trial_seeds):
            cfg_i = cfg if i == 0 else cfg.override({"seed": cfg.seed + i})
            d = ckpt_dir if i == 0 else f"{ckpt_dir}_s{i}"
            shutil.rmtree(d, ignore_errors=True)
            trainer = ModelTrainer(kind, cfg_i, self.fields, self.train, self.valid, self.device, d)
            trainer.run()
            per_seed.append(trainer.evaluate(self.valid))
            shutil.rmtree(d, ignore_errors=True)
        return per_seed

    def evaluate(self, kind: str, params: Dict[str, Any], ckpt_dir: str) -> Dict[str, float]:
        return mean_metrics(self.evaluate_seeds(kind, params, ckpt_dir))


def mean_metrics(per_seed: Sequence[Dict[str, float]]) -> Dict[str, float]:
    """Each metric's mean over the seeds. A seed's NaN (or missing value) makes the mean NaN, so a
    trial with a diverged seed fails rather than being scored on its lucky seeds."""
    out: Dict[str, float] = {}
    for k in per_seed[0]:
        vals = [m.get(k) for m in per_seed]
        out[k] = (float("nan") if any(v is None for v in vals)
                  else sum(float(v) for v in vals) / len(vals))
    return out


def _trial_path(out: str, kind: str, number: int) -> str:
    return os.path.join(out, "trials", kind, f"trial_{number:04d}.json")


def _finished(study, optuna) -> List[Any]:
    TS = optuna.trial.TrialState
    return [t for t in study.get_trials(deepcopy=False)
            if t.state in (TS.COMPLETE, TS.FAIL) and not t.user_attrs.get("stale")]


def _recover_stale(study, storage, optuna, out: str, kind: str, log) -> None:
    """Trials left RUNNING by a killed process: marked failed (stale, not counted) and enqueued
    again with the same params."""
    TS = optuna.trial.TrialState
    for t in study.get_trials(deepcopy=False, states=(TS.RUNNING,)):
        storage.set_trial_user_attr(t._trial_id, "stale", True)
        storage.set_trial_state_values(t._trial_id, TS.FAIL)
        for d in glob.glob(os.path.join(out, "trials", kind, f"t{t.number}")) + glob.glob(
                os.path.join(out, "trials", kind, f"t{t.number}_s*")):
            shutil.rmtree(d, ignore_errors=True)
        if t.params:
            study.enqueue_trial(dict(t.params), skip_if_exists=False)
        log(f"tune {kind}: trial {t.number} was cut short; it runs again with the same params")


def _select_best(records: Sequence[Dict[str, Any]], direction: str) -> Optional[Dict[str, Any]]:
    ok = [r for r in records if r.get("value") is not None]
    if not ok:
        return None
    feas = [r for r in ok if r.get("feasible", True)] or ok
    sign = -1.0 if direction == "maximize" else 1.0
    return min(feas, key=lambda r: (sign * r["value"], r["number"]))


def _mean_std(values: List[float]) -> Dict[str, Any]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return {"mean": None, "std": None, "values": values}
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"mean": m, "std": sd, "values": values}


def _settings_doc(metric, direction, floor, sampler_seed, margin=None, trial_seeds=1,
                  start_at_base=False, common_draws=False) -> Dict[str, Any]:
    doc = {"metric": metric, "direction": direction, "ctr_auc_floor": floor, "sampler_seed": sampler_seed}
    if margin is not None:  # absent when unused: old studies resume
        doc["ctr_auc_margin"] = margin
    if trial_seeds != 1:
        doc["trial_seeds"] = trial_seeds
    if start_at_base:
        doc["start_at_base"] = True
    if common_draws:
        doc["common_draws"] = True
    return doc


def tune(base: "Config", out: str, trials: int, models: Optional[Sequence[str]] = None, seeds: int = 3,
         metric: Optional[str] = None, ctr_auc_floor: Optional[float] = None, sampler_seed: int = 0,
         final: bool = True, log: Optional[Callable[[str], None]] = None,
         ctr_auc_margin: Optional[float] = None, trial_seeds: int = 1,
         start_at_base: bool = False, common_draws: bool = False) -> Dict[str, Any]:
    """Tune every kind of `models` (default: base.models) with `trials` trials each, then train
    each best config with `seeds` seeds and report its test metrics. Returns summary.json's dict.
    ctr_auc_margin M: every kind but single is constrained to a validation CTR AUC >= Single_Task's
    (its best trial's) - M; single is then tuned first and must be among the kinds. trial_seeds R:
    each trial's value is the mean validation metric of R seeds. start_at_base: each model's
    first trial is the base config's point of the space. common_draws: every sampled trial's
    lr, w0 and embed_dim are the same for every model (tune_space.common_draw)."""
    import torch

    from .metrics import json_safe
    from .train.checkpoint import atomic_write_json

    optuna = _optuna()
    log = log or (lambda msg: None)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"--trials: expected an integer >= 1, got {trials!r}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"--seeds: expected an integer >= 1, got {seeds!r}")
    if isinstance(trial_seeds, bool) or not isinstance(trial_seeds, int) or trial_seeds < 1:
        raise ConfigError(f"--trial-seeds: expected an integer >= 1, got {trial_seeds!r}")
    kinds = list(models) if models else list(base.models)
    bad = [k for k in kinds if k not in RUN_ORDER]
    if bad:
        raise ConfigError(f"--models: unknown model kinds {bad}; expected kinds from {', '.join(RUN_ORDER)}")
    kinds = [k for k in RUN_ORDER if k in kinds]
    for k in kinds:  # a kind the base config cannot train (e.g. esmm on a non-click chain): fail now
        base.override({"models": [k]})
    base, loaded = _sized(base, log)
    metric, direction = objective_metric(base, metric)
    ctr = _ctr_name(base)
    if ctr_auc_floor is not None and ctr is None:
        raise ConfigError("--ctr-auc-floor: the config has no bce/focal task whose AUC it could bound")
    if ctr_auc_margin is not None:
        bad_m = isinstance(ctr_auc_margin, bool) or not isinstance(ctr_auc_margin, (int, float)) or not ctr_auc_margin >= 0
        why = (f"expected a number >= 0, got {ctr_auc_margin!r}" if bad_m else "give it or --ctr-auc-floor, not both"
               if ctr_auc_floor is not None else "the config has no bce/focal task" if ctr is None else
               "the floor is Single_Task's validation CTR AUC minus it; tune 'single' too" if "single" not in kinds
               else None)
        if why:
            raise ConfigError(f"ctr_auc_margin: {why}")
    os.makedirs(out, exist_ok=True)

    # one study directory = one base config and one objective; --trials may grow between runs
    settings = _settings_doc(metric, direction, ctr_auc_floor, sampler_seed, ctr_auc_margin, trial_seeds,
                             bool(start_at_base), bool(common_draws))
    base_doc = base.override({"models": list(RUN_ORDER)})  # the kinds tuned may differ between runs
    cfg_path = os.path.join(out, "config.yaml")
    tune_path = os.path.join(out, "tune.json")
    if os.path.isfile(tune_path):
        with open(tune_path, "r", encoding="utf-8") as f:
            old = json.load(f)
        old_cfg = load_config(cfg_path)
        if old.get("settings") != json_safe(settings) or old_cfg != base_doc:
            raise ConfigError(f"--out: {out} holds a study of another config or objective (see {tune_path}); "
                              f"use another --out")
    else:
        dump_config(base_doc, cfg_path)
    atomic_write_json(tune_path, json_safe({"settings": settings, "trials": trials, "models": kinds,
                                            "space": {k: space(k, base) for k in kinds}}))

    threads = torch.get_num_threads()
    if base.threads is not None:
        torch.set_num_threads(base.threads)
    try:
        st = _Study(base, out, metric, direction, ctr_auc_floor, log, loaded=loaded, trial_seeds=trial_seeds)
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(os.path.join(out, STUDY_FILE)))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        summary: Dict[str, Any] = {"metric": metric, "direction": direction, "ctr_auc_floor": ctr_auc_floor,
                                   "trials": trials, "trial_seeds": trial_seeds, "seeds": seeds, "models": {}}
        for kind in kinds:  # RUN_ORDER: single first
            summary["models"][kind] = _tune_one(optuna, storage, st, kind, trials, sampler_seed, log,
                                                start_at_base=bool(start_at_base),
                                                common_draws=bool(common_draws))
            if kind == "single" and ctr_auc_margin is not None:
                ref = (summary["models"]["single"].get("best_valid_metrics") or {}).get(f"{ctr}_auc")
                if ref is None or ref != ref:
                    raise ConfigError("ctr_auc_margin: Single_Task has no successful trial to take the floor from")
                st.floor = ref - ctr_auc_margin
                summary.update(ctr_auc_floor=st.floor, ctr_auc_margin=ctr_auc_margin)
                log(f"tune: CTR AUC floor {st.floor:.5f} = Single_Task's validation {ref:.5f} - {ctr_auc_margin:g}")
        if final:
            for kind in kinds:
                best = summary["models"][kind]
                if best.get("params") is None:
                    log(f"tune {kind}: no successful trial; nothing to train")
                    continue
                best["test"] = _final(base, out, kind, best["params"], seeds, log)
        atomic_write_json(os.path.join(out, "summary.json"), json_safe(summary))
        return summary
    finally:
        torch.set_num_threads(threads)


def _tune_one(optuna, storage, st: _Study, kind: str, trials: int, sampler_seed: int, log,
              start_at_base: bool = False, common_draws: bool = False) -> Dict[str, Any]:
    from .metrics import json_safe
    from .train.checkpoint import atomic_write_json

    sp = space(kind, st.base)
    floor, ctr = st.floor, st.ctr

    def constraints(ft):
        c = ft.user_attrs.get("constraint")
        return [float(c)] if c is not None else [0.0]

    study = optuna.create_study(storage=storage, study_name=kind, direction=st.direction, load_if_exists=True)
    _recover_stale(study, storage, optuna, st.out, kind, log)
    done = len(_finished(study, optuna))
    if start_at_base and not study.get_trials(deepcopy=False):  # a fresh study: the base point first
        study.enqueue_trial(base_params(kind, st.base))
    if common_draws:  # the common axes of every sampled trial, enqueued once each (resume-safe)
        have = int(study.user_attrs.get("common_draws", 0))
        want = trials - (1 if start_at_base else 0)
        for j in range(have + 1, want + 1):
            study.enqueue_trial(common_draw(j, st.base, sampler_seed), skip_if_exists=False)
        if want > have:
            study.set_user_attr("common_draws", want)
    sampler = optuna.samplers.TPESampler(
        seed=_derived(sampler_seed, kind, done), n_startup_trials=max(1, min(10, trials // 3)),
        constraints_func=constraints if floor is not None else None)
    study = optuna.create_study(storage=storage, study_name=kind, direction=st.direction, load_if_exists=True,
                                sampler=sampler)

    def objective(trial):
        params = _suggest(trial, sp)
        t0 = time.perf_counter()
        ckpt = os.path.join(st.out, "trials", kind, f"t{trial.number}")
        per_seed = st.evaluate_seeds(kind, params, ckpt)
        val = mean_metrics(per_seed)
        value = val.get(st.metric)
        feasible = True
        if floor is not None:
            auc = val.get(f"{ctr}_auc")
            c = floor - auc if auc is not None and auc == auc else 1.0
            trial.set_user_attr("constraint", c)
            feasible = c <= 0
        rec = {"kind": kind, "number": trial.number, "params": params,
               "overrides": overrides(kind, st.base, params), "valid": val, "metric": st.metric,
               "value": value, "feasible": feasible, "seconds": time.perf_counter() - t0,
               "trial_seeds": st.trial_seeds, **({"valid_per_seed": per_seed} if st.trial_seeds > 1 else {}),
               "state": "complete" if value is not None and value == value else "fail"}
        atomic_write_json(_trial_path(st.out, kind, trial.number), json_safe(rec))
        st.log(f"tune {kind}: trial {trial.number} valid {st.metric} "
               f"{'nan' if value is None else format(value, '.5f')}"
               + ("" if floor is None else f" {ctr}_auc {val.get(f'{ctr}_auc', float('nan')):.5f}"
                  + ("" if feasible else " (infeasible)"))
               + " " + json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in params.items()}))
        return float("nan") if value is None else float(value)  # NaN: Optuna marks the trial failed

    remaining = trials - done
    if remaining > 0:
        log(f"tune {kind}: {done} trials done, {remaining} to go")
        study.optimize(objective, n_trials=remaining, catch=())
    records = []
    for t in _finished(study, optuna):
        p = _trial_path(st.out, kind, t.number)
        if os.path.isfile(p):
            with open(p, "r", encoding="utf-8") as f:
                records.append(json.load(f))
    best = _select_best(records, st.direction)
    res: Dict[str, Any] = {"trials_done": len(records), "space": sp}
    if best is not None:
        res.update(best_trial=best["number"], best_valid=best["value"], best_valid_metrics=best["valid"],
                   feasible=best.get("feasible", True), params=best["params"])
    return res


def _final(base: "Config", out: str, kind: str, params: Dict[str, Any], seeds: int, log) -> Dict[str, Any]:
    from .train.runner import run
    cfg = trial_config(kind, base, params)
    os.makedirs(os.path.join(out, "best"), exist_ok=True)
    dump_config(cfg, os.path.join(out, "best", f"{kind}.yaml"))
    per_seed: List[Dict[str, Any]] = []
    for i in range(seeds):
        s = base.seed + i
        cfg_s = cfg.override({"seed": s})
        rd = os.path.join(out, "final", kind, f"seed{s}")
        mpath = os.path.join(rd, "metrics.json")
        if os.path.isfile(mpath):  # finished before a kill: reuse
            with open(mpath, "r", encoding="utf-8") as f:
                per_seed.append(json.load(f)["models"][kind])
            continue
        res = run(cfg_s, rd, resume=os.path.isfile(os.path.join(rd, "config.yaml")), log=lambda m: None)
        per_seed.append(res["models"][kind])
        log(f"tune {kind}: best config, seed {s}: test " + " ".join(
            f"{k} {v:.5f}" for k, v in res["models"][kind].items() if isinstance(v, float) and not k.endswith("_rows")))
    names = [k for k in per_seed[0] if not k.endswith("_rows")]
    return {k: _mean_std([m.get(k) for m in per_seed]) for k in names}


def summary_table(summary: Dict[str, Any], tasks: List[dict]) -> str:
    """Each tuned model: its best validation objective and its test CVR MSE / CTR AUC (mean +- std)."""
    ctr = next((t.name for t in tasks if t.loss != "mse"), None)
    cvr = next((t.name for t in tasks if t.loss == "mse"), None)
    head = f"{'Model':<18}{'valid ' + summary['metric']:>16}{'test CVR MSE':>22}{'test CTR AUC':>22}"
    lines = [head, "-" * len(head)]

    def ms(d):
        if not d or d.get("mean") is None:
            return "-"
        return f"{d['mean']:.5f} ± {d['std']:.5f}"

    for kind, r in summary["models"].items():
        test = r.get("test") or {}
        bv = r.get("best_valid")
        lines.append(f"{PAPER_NAMES[kind]:<18}{('-' if bv is None else format(bv, '.5f')):>16}"
                     f"{ms(test.get(f'{cvr}_mse')) if cvr else '-':>22}{ms(test.get(f'{ctr}_auc')) if ctr else '-':>22}")
    return "\n".join(lines)


def main(args, over: Dict[str, Any], log: Callable[[str], None]) -> int:
    """`ncs tune` (cli.py parses the arguments)."""
    cfg = load_config(args.config, over)
    t0 = time.perf_counter()
    summary = tune(cfg, args.out, args.trials,
                   seeds=args.seeds, metric=args.metric, ctr_auc_floor=args.ctr_auc_floor,
                   ctr_auc_margin=getattr(args, "ctr_auc_margin", None), sampler_seed=args.sampler_seed,
                   final=not args.no_final, log=log, trial_seeds=getattr(args, "trial_seeds", 1),
                   start_at_base=getattr(args, "start_at_base", False),
                   common_draws=getattr(args, "common_draws", False))
    print(summary_table(summary, cfg.tasks))
    print(f"tune directory: {args.out} ({time.perf_counter() - t0:.1f} s)")
    return 0
