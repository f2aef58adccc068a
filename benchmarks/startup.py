"""Where `jetflows sample`'s start-up goes: its imports, one by one, and the whole command.

Runs ``python -X importtime`` on what the command imports before it samples (the command line
and the sampling module), several times, and prints the median cumulative time of each
top-level import (what removing or deferring it would save), then the median wall time of
``jetflows sample --n 10`` (start-up with almost no sampling) and of ``--n 10000`` against a
run, each a fresh process.

    python benchmarks/startup.py --run runs/standard_cloud [--jet-class top] [--repeats 5]
        [--threads 2]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import cpu_model
from sample_cli import wall

SAMPLE_PATH = "import pipelines.cli; from pipelines.run.sample import sample_to_file"


def import_times(env: dict[str, str]) -> dict[str, float]:
    """Seconds of each import the command line and the sampling module make themselves
    (cumulative: its own imports included)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", SAMPLE_PATH],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    out = {}
    for line in done.stderr.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        # "import time: self | cumulative | name": one space, then two per level; level 1 is
        # what the command line and the sampling module import themselves
        name = parts[2].rstrip()
        if len(name) - len(name.lstrip()) == 3:
            out[name.strip()] = int(parts[1]) / 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/standard_cloud")
    parser.add_argument("--jet-class", default="top")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--extra", default="", help="more sample options, e.g. '--steps 1'")
    args = parser.parse_args()
    env = {**os.environ, "JETFLOWS_THREADS": str(args.threads)}
    print(f"CPU: {cpu_model()}, JETFLOWS_THREADS={args.threads}, {args.repeats} repeats")
    runs = collections.defaultdict(list)
    for _ in range(args.repeats):
        for name, seconds in import_times(env).items():
            runs[name].append(seconds)
    rows = sorted(((statistics.median(v), k) for k, v in runs.items()), reverse=True)
    print("imports before sampling, the largest (median cumulative):")
    for seconds, name in rows[:8]:
        print(f"  {name:<34} {seconds:.3f} s")
    exe = shutil.which("jetflows") or str(Path(sys.executable).with_name("jetflows"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "jets.h5"
        base = [exe, "sample", "--class", args.jet_class, "--run", args.run, "--out", str(out)]
        base += ["--overwrite", "--quiet", *args.extra.split()]
        wall([*base, "--n", "10"], env)  # warm the file cache
        for n in (10, 10_000):
            times = [wall([*base, "--n", str(n)], env) for _ in range(args.repeats)]
            print(
                f"jetflows sample --n {n} {args.extra}: median {statistics.median(times):.2f} s, "
                f"best {min(times):.2f} s"
            )


if __name__ == "__main__":
    main()
