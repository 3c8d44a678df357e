"""The `ncs` command line.

    ncs train --config FILE --out DIR [--models single,layer,connection] [--resume] [--backend B] [--seed N]
    ncs eval  --run DIR [--data CONFIG_OR_FILE]
    ncs masks --run DIR
    ncs data stats FILE [--skip-corrupt]
    ncs data convert INPUT... --out DIR [--schema S] [--workers N]
    ncs data synth --rows N [--seed S] [--conflict C] --out DIR
    ncs demo [--out DIR] [--rows N]
    ncs tune --config FILE --trials N --out DIR [--models all] [--seeds K] [--metric M]
    ncs export / predict / data encode / eval --replay   (serving: see ncs/serve/commands.py)

Every user error (bad config, missing file, corrupt data) is one line on stderr and a non-zero
exit code (2), never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

EXIT_USER_ERROR = 2


class UserError(Exception):
    pass


def _eprint(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _progress_enabled(args) -> bool:
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def _logger(args):
    if getattr(args, "quiet", False):
        return lambda msg: None
    return _eprint


def _overrides(args) -> Dict[str, Any]:
    over: Dict[str, Any] = {}
    if getattr(args, "models", None):
        over["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    if getattr(args, "backend", None):
        over["backend"] = args.backend
    if getattr(args, "seed", None) is not None:
        over["seed"] = args.seed
    if getattr(args, "device", None):
        over["device"] = args.device
    return over


# ---------------------------------------------------------------------------------------------
def cmd_train(args) -> int:
    from .config import load_config
    from .train import results_table, run

    out = args.out
    cfg_path = args.config
    if cfg_path is None:
        if not args.resume:
            raise UserError("train: --config is required (or --resume with --out of an existing run)")
        cfg_path = os.path.join(out, "config.yaml")
    cfg = load_config(cfg_path, _overrides(args))
    t0 = time.perf_counter()
    rank0 = os.environ.get("RANK", "0") == "0"  # torchrun: only rank 0 reports
    results = run(cfg, out, resume=args.resume, progress=_progress_enabled(args) and rank0,
                  log=_logger(args) if rank0 else (lambda msg: None))
    if not rank0:
        return 0
    print(results_table(results, cfg.tasks))
    print(f"run directory: {out} ({time.perf_counter() - t0:.1f} s)")
    return 0


def _load_eval_data(run_dir: str, cfg: Dict[str, Any], data_arg: Optional[str]):
    """(EncodedData to evaluate, description). No --data: the run's own test split. --data
    CONFIG.yaml: that config's data and split, its test split. --data FILE: every row of FILE."""
    from .config import load_config
    from .train.runner import load_data, split_data

    if data_arg is None:
        _, _, test = split_data(cfg, load_data(cfg))
        return test, "the run's test split"
    if not os.path.exists(data_arg):
        raise UserError(f"--data: {data_arg}: no such file")
    if data_arg.lower().endswith((".yaml", ".yml")):
        other = load_config(data_arg)
        use = cfg.override({"data": other.data.to_dict()})
        _, _, test = split_data(use, load_data(use))
        return test, f"the test split of {data_arg}"
    import ncs.data as D
    if os.path.isdir(data_arg):  # an encoded directory (ncs data convert): streamed
        from .data.shards import EncodedDir
        from .data.stream import StreamPart
        return StreamPart(EncodedDir(data_arg)), f"every row of {data_arg}"
    low = data_arg.lower()
    if low.endswith(".safetensors"):
        return D.load_encoded(data_arg), data_arg
    vocab_path = os.path.join(run_dir, "vocab.json")
    if not os.path.isfile(vocab_path):
        raise UserError(f"--data: {run_dir} has no vocab.json (its data was synthetic or cached), so "
                        f"{data_arg} cannot be encoded like its training data; pass a config YAML instead")
    with open(vocab_path, "r", encoding="utf-8") as f:
        vocab = json.load(f)
    opts = cfg.data.options
    if low.endswith((".parquet", ".pq", ".csv", ".csv.gz", ".tsv")):
        if opts.get("schema") is None:
            raise UserError(f"--data: {data_arg} is a table; the run's config has no data.options.schema for it")
        fmt = "parquet" if low.endswith((".parquet", ".pq")) else "csv"
        data = D.encode_table(data_arg, opts["schema"], vocab=vocab, fmt=fmt,
                              on_bad_row=opts.get("on_bad_row", "error"))[0]
    else:
        data = D.encode_lt4rec(data_arg, max_len=int(opts.get("max_len", 8)), vocab=vocab,
                               skip_corrupt=bool(opts.get("skip_corrupt", False)),
                               on_bad_row=opts.get("on_bad_row", "error"))[0]
    # values never seen in training map to id 0 (missing), as at serving time
    return data, f"every row of {data_arg}"


def cmd_eval(args) -> int:
    from .config import load_config
    from .metrics import json_safe
    from .models import check_ids
    from .train import results_table
    from .train.batches import prepare_split
    from .train.runner import load_model, resolve_device
    from .train.evaluate import evaluate

    if getattr(args, "replay", False):
        from .serve.commands import cmd_replay
        return cmd_replay(args)
    run_dir = args.run
    cfg_path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(cfg_path):
        raise UserError(f"--run: {run_dir} is not a run directory (no config.yaml)")
    cfg = load_config(cfg_path, {"device": args.device} if args.device else None)
    device = resolve_device(cfg.device)
    data, what = _load_eval_data(run_dir, cfg, args.data)
    kinds = [k for k in cfg.models if os.path.isfile(os.path.join(run_dir, "models", f"{k}.safetensors"))]
    if not kinds:
        raise UserError(f"--run: {run_dir} has no trained models (models/*.safetensors); train it first")
    split = prepare_split(data, cfg.tasks, cfg.data.click_label, device)
    results: Dict[str, Any] = {"models": {}, "data": what}
    for kind in kinds:
        model, fields = load_model(run_dir, kind, cfg, device)
        try:
            if getattr(data, "streamed", False):  # encoded shards: ids are in range of their own fields
                if [(f.name, f.vocab_size) for f in data.fields] != [(f.name, f.vocab_size) for f in fields]:
                    raise ValueError(f"--data: the fields / vocab sizes of {args.data or 'the data'} differ "
                                     f"from the model's")
            else:
                check_ids(data.ids, [f.vocab_size for f in fields], "--data ids")
        except ValueError as e:
            raise UserError(f"{e}; the data was encoded with another vocabulary than the run's") from None
        results["models"][kind] = evaluate(model, split, cfg.tasks, cfg.train.eval_batch_size, device)
    print(json.dumps(json_safe(results), indent=2))
    print(results_table(results, cfg.tasks), file=sys.stderr)
    return 0


def cmd_masks(args) -> int:
    import ncs_kernels as nk

    from .metrics import json_safe
    from .report import mask_stats, plot_masks

    path = os.path.join(args.run, "masks.safetensors")
    if not os.path.isfile(path):
        raise UserError(f"--run: {path} not found (train the connection model first)")
    masks, meta = nk.load_masks(path)
    in_features = {layer: info["shape"][1] for layer, info in meta["layers"].items()}
    stats = mask_stats(masks, in_features)
    fig = args.figure or os.path.join(args.run, "figures", "masks.png")
    plot_masks(stats, fig)
    stats["figure"] = fig
    print(json.dumps(json_safe(stats), indent=2))
    return 0


def cmd_data_stats(args) -> int:
    import ncs.data as D

    path = args.file
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file")
    low = path.lower()
    is_tfrecord = not low.endswith((".safetensors", ".parquet", ".pq", ".csv", ".csv.gz", ".tsv"))
    if is_tfrecord and not args.skip_corrupt:
        # strict pass: the first corrupt record is an error naming it (stats() itself skips and counts)
        for rec, payload in enumerate(D.iter_tfrecord(path, skip_corrupt=False)):
            try:
                ex = D.parse_example(payload)
                float(ex["label"][0])
            except D.DataError as e:
                raise D.DataError(f"{path}: record {rec}: {e}") from None
            except (KeyError, IndexError, TypeError, ValueError) as e:
                raise D.DataError(f"{path}: record {rec}: no valid 'label' ({type(e).__name__}: {e})") from None
    print(json.dumps(D.stats(path, on_bad_row="skip" if args.skip_corrupt else "error"), indent=2))
    return 0


def _cmd_data_convert(args) -> int:
    from .data.convert import convert

    if args.workers < 1 or args.shard_rows < 1 or args.max_len < 1:
        raise UserError("--workers, --shard-rows and --max-len must be >= 1")
    print(json.dumps(convert(args.inputs, args.out, schema=args.schema, workers=args.workers, fmt=args.format,
                             shard_rows=args.shard_rows, max_len=args.max_len, skip_corrupt=args.skip_corrupt,
                             vocab_from=args.vocab_from, overwrite=args.overwrite), indent=2))
    return 0


def _cmd_data_synth(args) -> int:
    from .data.convert import synth

    if args.rows < 0 or args.shard_rows < 1:
        raise UserError("--rows must be >= 0 and --shard-rows >= 1")
    try:
        out = synth(args.rows, args.out, seed=args.seed, conflict=args.conflict, shard_rows=args.shard_rows,
                    overwrite=args.overwrite)
    except ValueError as e:
        if isinstance(e, UserError.__mro__[0]) or type(e).__name__ == "DataError":
            raise
        raise UserError(str(e)) from None
    print(json.dumps(out, indent=2))
    return 0


def cmd_demo(args) -> int:
    from .config import demo_config
    from .train import results_table, run

    cfg = demo_config(args.rows)
    over = _overrides(args)
    if over:
        cfg = cfg.override(over)
    out = args.out or tempfile.mkdtemp(prefix="ncs-demo-")
    log = _logger(args)
    log(f"ncs demo: {cfg.data.rows} synthetic rows, models {','.join(cfg.models)}, out {out}")
    t0 = time.perf_counter()
    results = run(cfg, out, resume=args.resume, progress=_progress_enabled(args), log=log)
    print(results_table(results, cfg.tasks))
    st = results["stages"].get("connection")
    if st:
        dens = ", ".join(f"{t} {v['density']:.3f} (round {v['selected_round']})" for t, v in st["masks"].items())
        print(f"kept masks: {dens}")
    print(f"run directory: {out} ({time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_tune(args) -> int:
    from .tune import main as tune_main
    return tune_main(args, _overrides(args), _logger(args))


# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from .config import BACKEND_NAMES, DEMO_ROWS

    p = argparse.ArgumentParser(prog="ncs", description="NCS4CVR: neuron-connection level sharing for CTR + CVR")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def common(sp):
        sp.add_argument("--quiet", "-q", action="store_true", help="no progress bars or log lines")
        sp.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the config's device")

    t = sub.add_parser("train", help="train the models of a config into a run directory")
    t.add_argument("--config", help="YAML config (see configs/)")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--models", help="comma-separated model kinds (single,layer,connection,shared_bottom,mmoe,ple,esmm) or all")
    t.add_argument("--resume", action="store_true", help="continue from the run's last checkpoints")
    t.add_argument("--backend", choices=BACKEND_NAMES, help="ncs_kernels backend (default: the config's)")
    t.add_argument("--seed", type=int, help="override the config's seed")
    common(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a run's trained models")
    e.add_argument("--run", required=True, help="run directory")
    e.add_argument("--data", help="a config YAML (its test split) or a data file (all rows)")
    e.add_argument("--replay", action="store_true", help="view time at k of rank-score orderings (docs/SERVING.md)")
    e.add_argument("--model", help="--replay: comma-separated model kinds (default: every trained one)")
    e.add_argument("--rank", help="--replay: alpha,beta,gamma of Eq. 3 (default 1,1,1)")
    e.add_argument("--length-column", help="--replay: the video length column (default: length 1)")
    e.add_argument("--k", help="--replay: comma-separated k (default 1,3,5)")
    e.add_argument("--group", default="request", help="--replay: the group whose impressions are ranked")
    e.add_argument("--batch-size", type=int, default=8192, help="--replay: scoring batch size")
    e.add_argument("--ctr-model", help="--replay: take pCTR from this kind for every model (Table 3: single)")
    e.add_argument("--order-column", default="auto",
                   help="--replay: the logged position column, or 'file' (default: FEA_ORDER for TFRecord, else file order)")
    common(e)
    e.set_defaults(func=cmd_eval)

    m = sub.add_parser("masks", help="mask statistics (JSON) and figure of a run")
    m.add_argument("--run", required=True, help="run directory")
    m.add_argument("--figure", help="PNG path (default RUN/figures/masks.png)")
    m.set_defaults(func=cmd_masks)

    d = sub.add_parser("data", help="data utilities")
    dsub = d.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    dsub.required = True
    ds = dsub.add_parser("stats", help="label statistics of a data file (JSON)")
    ds.add_argument("file")
    ds.add_argument("--skip-corrupt", action="store_true", help="skip and count corrupt records and bad rows instead of failing")
    ds.set_defaults(func=cmd_data_stats)
    from .serve import commands as serve_cmds
    de = dsub.add_parser("encode", help="encode a file with a run's vocabulary (the exported models' input)")
    de.add_argument("file")
    de.add_argument("--run", required=True, help="run directory")
    de.add_argument("--out", required=True, help="output .safetensors")
    de.set_defaults(func=serve_cmds.cmd_data_encode)

    x = sub.add_parser("export", help="per-task TorchScript / ONNX models of a run (docs/SERVING.md)")
    x.add_argument("--run", required=True, help="run directory")
    x.add_argument("--out", required=True, help="export directory")
    x.add_argument("--model", help="model kind (default: connection if trained)")
    x.add_argument("--tasks", help="comma-separated tasks (default: all)")
    x.add_argument("--formats", default="torchscript,onnx", help="comma-separated subset of torchscript,onnx")
    x.add_argument("--compact", action="store_true", help="drop neurons whose connections are all masked")
    x.add_argument("--quiet", "-q", action="store_true", help="no log lines")
    x.set_defaults(func=serve_cmds.cmd_export)

    pr = sub.add_parser("predict", help="score a data file with a run's model (CSV / Parquet out)")
    pr.add_argument("--run", required=True, help="run directory")
    pr.add_argument("--data", required=True, help="data file (as for ncs eval --data)")
    pr.add_argument("--out", required=True, help="scores.csv or scores.parquet")
    pr.add_argument("--model", help="model kind (default: connection if trained)")
    pr.add_argument("--batch-size", type=int, default=8192, help="scoring batch size")
    pr.add_argument("--rank", help="alpha,beta,gamma: add rank_score = pCTR^a * pCVR^b * length^g (Eq. 3)")
    pr.add_argument("--length-column", help="the video length column for --rank (default: length 1)")
    common(pr)
    pr.set_defaults(func=serve_cmds.cmd_predict)

    tu = sub.add_parser("tune", help="the same Optuna search for every model on the validation split, then "
                                     "the best configs' test metrics over seeds (docs/TUNE.md)")
    tu.add_argument("--config", required=True, help="YAML config: data, tasks and the centre of the search space")
    tu.add_argument("--trials", type=int, required=True, help="trials per model (the same for every model)")
    tu.add_argument("--out", required=True, help="study directory (rerun the same command to resume)")
    tu.add_argument("--models", help="comma-separated model kinds or all (default: the config's models)")
    tu.add_argument("--seeds", type=int, default=3, help="seeds of the final training of each best config")
    tu.add_argument("--metric", help="validation objective, e.g. cvr_mse (default: the joint early-stopping metric)")
    tu.add_argument("--ctr-auc-floor", type=float, help="trials below this validation CTR AUC are infeasible")
    tu.add_argument("--sampler-seed", type=int, default=0, help="seed of the TPE samplers")
    tu.add_argument("--no-final", action="store_true", help="search only; no final training on the best configs")
    tu.add_argument("--backend", choices=BACKEND_NAMES, help="ncs_kernels backend (default: the config's)")
    tu.add_argument("--seed", type=int, help="override the config's seed")
    common(tu)
    tu.set_defaults(func=cmd_tune)

    dc = dsub.add_parser("convert", help="TFRecord / CSV / Parquet -> an encoded directory (docs/DATA.md)")
    dc.add_argument("inputs", nargs="+", metavar="INPUT", help="files, directories or globs (quoted)")
    dc.add_argument("--out", required=True, help="the encoded directory to write")
    dc.add_argument("--schema", help="YAML/JSON schema (CSV and Parquet)")
    dc.add_argument("--workers", type=int, default=1, help="processes (over files / Parquet row groups)")
    dc.add_argument("--format", choices=["tfrecord", "csv", "parquet"], help="default: by file extension")
    dc.add_argument("--shard-rows", type=int, default=1 << 18, help="rows per shard")
    dc.add_argument("--max-len", type=int, default=8, help="TFRecord: values kept per multi-valued field")
    dc.add_argument("--skip-corrupt", action="store_true", help="TFRecord: skip corrupt records (counted)")
    dc.add_argument("--vocab-from", help="encode with this encoded directory's vocabulary (e.g. a test file)")
    dc.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    dc.set_defaults(func=_cmd_data_convert)
    dy = dsub.add_parser("synth", help="synthetic data straight into an encoded directory")
    dy.add_argument("--rows", type=int, required=True)
    dy.add_argument("--seed", type=int, default=0)
    dy.add_argument("--conflict", type=float, default=1.0)
    dy.add_argument("--out", required=True)
    dy.add_argument("--shard-rows", type=int, default=1 << 18, help="rows per shard")
    dy.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    dy.set_defaults(func=_cmd_data_synth)

    dm = sub.add_parser("demo", help="all stages and both baselines on built-in synthetic data")
    dm.add_argument("--out", help="run directory (default: a new temporary directory)")
    dm.add_argument("--rows", type=int, help=f"synthetic rows (default {DEMO_ROWS})")
    dm.add_argument("--resume", action="store_true", help="continue a demo run in --out")
    dm.add_argument("--models", help="comma-separated model kinds or all (default: the paper's three)")
    dm.add_argument("--backend", choices=BACKEND_NAMES, help="ncs_kernels backend")
    dm.add_argument("--seed", type=int, help="seed")
    common(dm)
    dm.set_defaults(func=cmd_demo)
    return p


def _prog(args) -> str:
    sub = getattr(args, "data_command", None)
    return f"ncs {args.command}" + (f" {sub}" if sub else "")


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .config import ConfigError
    from .train.checkpoint import CheckpointError
    from .train.runner import RunError
    from .distributed import DistributedError

    from .train.guards import NonFiniteError

    user_errors = [UserError, ConfigError, RunError, CheckpointError, NonFiniteError, FileNotFoundError,
                   DistributedError]
    try:
        from .data import DataError
        user_errors.append(DataError)
    except ImportError:
        pass
    try:
        return int(args.func(args) or 0)
    except tuple(user_errors) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        _eprint(f"{_prog(args)}: error: {msg}")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        _eprint(f"{_prog(args)}: interrupted")
        return 130
    except BrokenPipeError:
        # stdout closed early (`ncs masks ... | head`): not an error of ours; silence the flush at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
