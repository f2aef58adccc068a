"""Threads chosen on purpose, measured: a command's time quiet and with one core busy.

Runs ``jetflows sample --n N`` against a run (a fresh process each time), or with
``--pipeline`` a short quickstart pipeline for top jets (data cached; a fresh run folder each
time, so every stage trains: ConVAE, latent flow, generation, evaluation), on a quiet machine and
beside a busy loop holding one core, once with the thread count jetflows chooses (the idle
cores) and once with torch's old default (every core, ``--threads`` set to the core count), and
prints the median wall times. The issue's bar: busy at most 2x quiet.

    python benchmarks/threads.py --run runs/standard_cloud [--n 10000] [--repeats 3]
    python benchmarks/threads.py --pipeline [--epochs 5] [--repeats 1]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from common import cpu_model
from sample_cli import wall


def _spin() -> None:
    while True:
        pass


@contextlib.contextmanager
def one_core_busy(busy: bool) -> Iterator[None]:
    """A process spinning on one core while the block runs (nothing when not ``busy``)."""
    if not busy:
        yield
        return
    spinner = multiprocessing.Process(target=_spin, daemon=True)
    spinner.start()
    try:
        yield
    finally:
        spinner.terminate()
        spinner.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/standard_cloud")
    parser.add_argument("--jet-class", default="top")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--extra", default="", help="more sample options, e.g. '--steps 1'")
    parser.add_argument("--pipeline", action="store_true", help="time a quickstart pipeline")
    parser.add_argument("--epochs", type=int, default=5, help="with --pipeline: each stage's")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "JETFLOWS_THREADS")}
    what = (
        f"quickstart pipeline, top, {args.epochs} epochs" if args.pipeline else f"sample {args.n}"
    )
    print(f"CPU: {cpu_model()}, {cores} usable cores, {args.repeats} repeats: {what}")
    exe = shutil.which("jetflows") or str(Path(sys.executable).with_name("jetflows"))
    with tempfile.TemporaryDirectory() as tmp:
        if args.pipeline:
            argv = [exe, "pipeline", "--config", "configs/quickstart.yaml", "--classes", "t"]
            argv += ["--set", f"convae_train.epochs={args.epochs}"]
            argv += ["--set", f"flow_train.epochs={args.epochs}", "--quiet", "--runs"]
            runs = iter(range(10_000))
            command = lambda more: [*argv, str(Path(tmp) / f"runs{next(runs)}"), *more]  # noqa: E731
        else:
            argv = [exe, "sample", "--n", str(args.n), "--class", args.jet_class, "--run", args.run]
            argv += ["--out", str(Path(tmp) / "jets.h5"), "--overwrite", "--quiet"]
            argv += args.extra.split()
            command = lambda more: [*argv, *more]  # noqa: E731
        wall(command([]), env)  # warm the file cache (and the jet cache)
        print("| threads | quiet | one core busy | busy / quiet |", "|---|---|---|---|", sep="\n")
        for label, more in (
            ("chosen (idle cores)", []),
            (f"every core ({cores})", ["--threads", str(cores)]),
        ):
            times = {}
            for busy in (False, True):
                with one_core_busy(busy):
                    times[busy] = statistics.median(
                        wall(command(more), env) for _ in range(args.repeats)
                    )
            print(
                f"| {label} | {times[False]:.2f} s | {times[True]:.2f} s | "
                f"{times[True] / times[False]:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
