"""Wall time of `jetflows sample --n 10000 --class top`, process start included.

Runs the real command (a fresh Python process each time) against a trained run, best and median
of several repeats, and splits out the import time (`python -X importtime` is too fine-grained:
the start-up cost is measured as a process that only imports the sampling module).

    python benchmarks/sample_cli.py [--run runs/quickstart] [--n 10000] [--repeats 5]
        [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import cpu_model


def wall(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/quickstart")
    parser.add_argument("--jet-class", default="top")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    exe = shutil.which("jetflows") or str(Path(sys.executable).with_name("jetflows"))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "top.h5"
        argv = [
            exe,
            "sample",
            "--n",
            str(args.n),
            "--class",
            args.jet_class,
            "--run",
            args.run,
            "--out",
            str(out),
            "--overwrite",
            "--quiet",
        ]
        wall(argv, env)  # warm the file cache
        times = [wall(argv, env) for _ in range(args.repeats)]
        small = [a if a != str(args.n) else "10" for a in argv]
        startup = statistics.median(wall(small, env) for _ in range(args.repeats))
        imports = min(
            wall([sys.executable, "-c", "import pipelines.run.sample"], env) for _ in range(3)
        )
        size = out.stat().st_size / 1e6
    print(f"CPU: {cpu_model()}, OMP_NUM_THREADS={args.threads}, {args.repeats} repeats")
    print(f"{' '.join(argv[1:8])}")
    print(
        f"wall best {min(times):.2f} s, median {statistics.median(times):.2f} s "
        f"(goal <= 2 s); the same with --n 10 (start-up): median {startup:.2f} s; "
        f"importing the sampling module alone {imports:.2f} s; file {size:.1f} MB"
    )


if __name__ == "__main__":
    main()
