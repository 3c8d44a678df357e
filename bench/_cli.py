"""What the benchmark scripts (bench_ops.py, smoke.py, stages.py) share on their command line:
the op names, argument types, the device and thread settings, and SIGTERM handling (a run
stopped by `timeout` still writes what it measured)."""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from typing import List, Optional

import torch

from bench import _env

# --ops names -> the op
OPS = {"linear": "masked_linear", "cross": "cross_masked_linear", "adam": "masked_adam"}


def split(s: Optional[str]) -> Optional[List[str]]:
    """"a, b,,c" -> ["a", "b", "c"]; None stays None."""
    return None if s is None else [x.strip() for x in s.split(",") if x.strip()]


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {v}")
    return v


def ops_arg(text: str) -> str:
    """argparse type of --ops: a comma list of names from OPS (kept as given)."""
    bad = [o for o in split(text) if o not in OPS]
    if bad:
        raise argparse.ArgumentTypeError(f"expected names from {tuple(OPS)}, got {bad}")
    return text


def device_of(args, prog: str) -> Optional[str]:
    """--tiny sets NCS_BENCH_TINY (before any case list is built); then the device --device
    names ("auto": NCS_BENCH_DEVICE, else CUDA when present). None, after saying why on stderr,
    when CUDA is asked for and there is none (the caller exits 2)."""
    if getattr(args, "tiny", False):
        os.environ["NCS_BENCH_TINY"] = "1"
    device = _env.bench_device() if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        print(f"{prog}: --device cuda but no CUDA device is available", file=sys.stderr)
        return None
    return device


@contextlib.contextmanager
def threads(n: Optional[int]):
    """torch.set_num_threads(n) for the block when n is given; the count restored after (the
    scripts' main() is also called in-process, by the tests)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Stopped(Exception):
    """SIGTERM (e.g. from `timeout`): stop, keep what was measured."""


def _raise_stopped(signum, frame):
    raise Stopped(f"signal {signum}")


class Interruptible:
    """`with Interruptible(doc) as run:` SIGTERM raises Stopped inside the block; on leaving it the
    previous handler is back, and a Stopped or KeyboardInterrupt that ended the block is written
    into doc["stopped"] and swallowed, with run.status = 124 (the caller then writes what it has)."""

    def __init__(self, doc: dict):
        self.doc = doc
        self.status = 0

    def __enter__(self) -> "Interruptible":
        self._prev = signal.signal(signal.SIGTERM, _raise_stopped)
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        signal.signal(signal.SIGTERM, self._prev)
        if kind is not None and issubclass(kind, (Stopped, KeyboardInterrupt)):
            self.doc["stopped"] = f"interrupted ({exc or 'KeyboardInterrupt'})"
            self.status = 124
            return True
        return False


def run_main(argv, parse_args, run, prog: str) -> int:
    """The scripts' main(): parse, set --tiny and the device (exit 2 without the CUDA asked for),
    then run(args, device) under --threads."""
    args = parse_args(argv)
    device = device_of(args, prog)
    if device is None:
        return 2
    with threads(args.threads):
        return run(args, device)
