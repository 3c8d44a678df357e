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

import json
import os
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

if TYPE_CHECKING:
    from .config import Config

from .cli_parser import build_parser  # noqa: F401  (ncs.cli.build_parser)

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


def _load_eval_data(run_dir: str, cfg: "Config", data_arg: Optional[str]):
    """(EncodedData to evaluate, description). No --data: the run's own test split. --data
    CONFIG.yaml: that config's data and split, its test split. --data FILE: every row of FILE."""
    from .config import load_config
    from .train.runner import load_data, split_data

    if data_arg is None:
        _, _, test = split_data(cfg, load_data(cfg))
        return test, "the run's test split"
    if not os.path.exists(data_arg):
        raise UserError(f"--data: {data_arg}: no such file")
    from .data.formats import detect, is_config
    if is_config(data_arg):
        other = load_config(data_arg)
        use = cfg.override({"data": other.data.to_dict()})
        _, _, test = split_data(use, load_data(use))
        return test, f"the test split of {data_arg}"
    import ncs.data as D
    if os.path.isdir(data_arg):  # an encoded directory (ncs data convert): streamed
        from .data.shards import EncodedDir
        from .data.stream import StreamPart
        return StreamPart(EncodedDir(data_arg)), f"every row of {data_arg}"
    fmt = detect(data_arg)
    if fmt == "encoded":
        return D.load_encoded(data_arg), data_arg
    vocab_path = os.path.join(run_dir, "vocab.json")
    if not os.path.isfile(vocab_path):
        raise UserError(f"--data: {run_dir} has no vocab.json (its data was synthetic or cached), so "
                        f"{data_arg} cannot be encoded like its training data; pass a config YAML instead")
    with open(vocab_path, "r", encoding="utf-8") as f:
        vocab = json.load(f)
    opts = cfg.data.options
    if fmt in ("csv", "parquet"):
        if opts.get("schema") is None:
            raise UserError(f"--data: {data_arg} is a table; the run's config has no data.options.schema for it")
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
    from .data.formats import detect
    is_tfrecord = detect(path) == "tfrecord"
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
