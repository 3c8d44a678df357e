"""The serving subcommands of the `ncs` CLI (cli.py holds only their argparse wiring):

    ncs export  --run R --out DIR [--model KIND] [--tasks a,b] [--formats torchscript,onnx] [--compact]
    ncs predict --run R --data FILE --out scores.(csv|parquet) [--model KIND] [--batch-size N]
                [--rank alpha,beta,gamma [--length-column COL]]
    ncs data encode FILE --run R --out ids.safetensors
    ncs eval --replay --run R [--data FILE] [--model KIND] [--rank a,b,g] [--length-column COL]
                [--k 1,3,5] [--group request] [--order-column COL|file]
                [--ctr-model KIND]
"""
from __future__ import annotations

import json
import sys


def _log(args):
    if getattr(args, "quiet", False):
        return lambda msg: None
    return lambda msg: print(msg, file=sys.stderr, flush=True)


def _csv(text):
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def cmd_export(args) -> int:
    from ..metrics import json_safe
    from .export import export_run

    sig = export_run(args.run, args.out, kind=args.model, tasks=_csv(args.tasks),
                     formats=_csv(args.formats) or [], compact_nets=args.compact, log=_log(args))
    summary = {"out": args.out, "model": sig["model"], "formats": sig["formats"],
               "tasks": {t: {"files": d["files"], "bytes": d["bytes"], **({"compaction": d["compaction"]} if "compaction" in d else {})}
                         for t, d in sig["tasks"].items()}}
    print(json.dumps(json_safe(summary), indent=2))
    return 0


def cmd_predict(args) -> int:
    from .predict import parse_rank, predict_file

    rank = parse_rank(args.rank) if args.rank else None
    summary = predict_file(args.run, args.data, args.out, kind=args.model, batch_size=args.batch_size,
                           rank=rank, length_column=args.length_column, device=args.device or "cpu",
                           log=_log(args))
    print(json.dumps(summary, indent=2))
    return 0


def cmd_data_encode(args) -> int:
    from .encode import encode_file
    from .runs import open_run

    print(json.dumps(encode_file(open_run(args.run), args.file, args.out), indent=2))
    return 0


def cmd_replay(args) -> int:
    from ..data.formats import is_config
    from ..metrics import json_safe
    from .predict import parse_rank
    from .replay import replay, replay_table
    from .runs import ServeError

    if args.data is not None and is_config(args.data):
        raise ServeError("--data: --replay takes a data file (or no --data: the run's test split), not a config")
    try:
        ks = [int(k) for k in _csv(args.k)] if args.k else [1, 3, 5]
    except ValueError:
        raise ServeError(f"--k: expected comma-separated positive integers, got {args.k!r}") from None
    res = replay(args.run, data=args.data, kinds=_csv(args.model), rank=parse_rank(args.rank or "1,1,1"),
                 length_column=args.length_column, ks=ks, group=args.group, batch_size=args.batch_size,
                 device=args.device or "cpu", order_column=args.order_column,
                 ctr_model=args.ctr_model)
    print(json.dumps(json_safe(res), indent=2))
    if not getattr(args, "quiet", False):
        print(replay_table(res), file=sys.stderr)
    return 0
