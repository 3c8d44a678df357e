"""The argument parser of the `ncs` command line (the commands are in ncs.cli)."""
from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    from . import cli as C
    from .config import BACKEND_NAMES, DEMO_ROWS

    p = argparse.ArgumentParser(prog="ncs", description="NCS4CVR: neuron-connection level sharing for CTR + CVR")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def common(sp):
        sp.add_argument("--quiet", "-q", action="store_true", help="no progress bars or log lines")
        sp.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the config's device")

    def config_overrides(sp):  # the flags cli._overrides() reads (with --models, --device), then common
        sp.add_argument("--backend", choices=BACKEND_NAMES, help="ncs_kernels backend (default: the config's)")
        sp.add_argument("--seed", type=int, help="override the config's seed")
        common(sp)

    t = sub.add_parser("train", help="train the models of a config into a run directory")
    t.add_argument("--config", help="YAML config (see configs/)")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--models", help="comma-separated model kinds (single,layer,connection,shared_bottom,mmoe,ple,esmm) or all")
    t.add_argument("--resume", action="store_true", help="continue from the run's last checkpoints")
    config_overrides(t)
    t.set_defaults(func=C.cmd_train)

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
    e.set_defaults(func=C.cmd_eval)

    m = sub.add_parser("masks", help="mask statistics (JSON) and figure of a run")
    m.add_argument("--run", required=True, help="run directory")
    m.add_argument("--figure", help="PNG path (default RUN/figures/masks.png)")
    m.set_defaults(func=C.cmd_masks)

    d = sub.add_parser("data", help="data utilities")
    dsub = d.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    dsub.required = True
    ds = dsub.add_parser("stats", help="label statistics of a data file (JSON)")
    ds.add_argument("file")
    ds.add_argument("--skip-corrupt", action="store_true", help="skip and count corrupt records and bad rows instead of failing")
    ds.set_defaults(func=C.cmd_data_stats)
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
    tu.add_argument("--ctr-auc-margin", type=float,
                    help="Single_Task is tuned first; every other model's trials below its best validation "
                         "CTR AUC minus this margin are infeasible (issue 10's condition, e.g. 0.002)")
    tu.add_argument("--trial-seeds", type=int, default=1,
                    help="seeds per trial: a trial's value is the mean validation metric of this many seeds "
                         "(less seed luck in the selection on small data; R times the cost per trial)")
    tu.add_argument("--start-at-base", action="store_true",
                    help="each model's first trial is the base config's own point (then sampled ones)")
    tu.add_argument("--common-draws", action="store_true",
                    help="every sampled trial's lr, loss weight and embed_dim are the same for every model "
                         "(a seeded Halton sequence): a paired comparison, for a few trials per model")
    tu.add_argument("--sampler-seed", type=int, default=0, help="seed of the TPE samplers (and the common draws)")
    tu.add_argument("--no-final", action="store_true", help="search only; no final training on the best configs")
    config_overrides(tu)
    tu.set_defaults(func=C.cmd_tune)

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
    dc.set_defaults(func=C._cmd_data_convert)
    dy = dsub.add_parser("synth", help="synthetic data straight into an encoded directory")
    dy.add_argument("--rows", type=int, required=True)
    dy.add_argument("--seed", type=int, default=0)
    dy.add_argument("--conflict", type=float, default=1.0)
    dy.add_argument("--out", required=True)
    dy.add_argument("--shard-rows", type=int, default=1 << 18, help="rows per shard")
    dy.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    dy.set_defaults(func=C._cmd_data_synth)

    dm = sub.add_parser("demo", help="all stages and both baselines on built-in synthetic data")
    dm.add_argument("--out", help="run directory (default: a new temporary directory)")
    dm.add_argument("--rows", type=int, help=f"synthetic rows (default {DEMO_ROWS})")
    dm.add_argument("--resume", action="store_true", help="continue a demo run in --out")
    dm.add_argument("--models", help="comma-separated model kinds or all (default: the paper's three)")
    config_overrides(dm)
    dm.set_defaults(func=C.cmd_demo)
    return p
