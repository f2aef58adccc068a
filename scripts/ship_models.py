"""Rebuild the models shipped with jetflows (`pipelines/shipped/`) from their config.

Per class: train with the project's own pipeline (`jetflows pipeline --config CONFIG --classes
c --set name=NAME`; finished stages are skipped, so an existing run is reused as it is), cut its
few-step student and jet flow into ``pipelines/shipped/<c>.pt``, score that content as the main
job scores it (10,000 jets against 5,000 fresh Pythia jets of seed 7, stable ratios over 16
real pairs x 4 samples of 2,500) and record file, SHA-256, config, data, commit and scores in
``pipelines/shipped/manifest.json``. A shipped model is replaced only when the new one's worst
stable ratio (W1M, W1P, W1EFP, tau21, tau32, D2) is lower, or with --force.

    .venv/bin/python scripts/ship_models.py                       # all five classes, ~1 h each
    .venv/bin/python scripts/ship_models.py --classes t --run t=runs/fast_t   # pack a trained run
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """HEAD's hash, with "-dirty" when the work tree has uncommitted changes."""
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    return (head or "unknown") + ("-dirty" if dirty else "")


#: the figures a shipped model is judged by: it is replaced only when its worst one improves
JUDGED = ("w1m", "w1p", "w1efp", "tau21", "tau32", "d2")


def worst(scores: dict) -> float:
    """The largest stable ratio to the floor among `JUDGED`."""
    return max(scores[k]["stable_ratio"] for k in JUDGED if scores[k]["stable_ratio"] is not None)


def train(config: Path, jet_class: str, name: str, threads: int) -> Path:
    """The pipeline run of one class (trained, or reused where up to date)."""
    cmd = [
        sys.executable, "-m", "pipelines.cli", "pipeline", "--config", str(config),
        "--classes", jet_class, "--set", f"name={name}", "--threads", str(threads),
    ]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, check=True)
    return ROOT / "runs" / name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", default="g,q,t,w,z")
    parser.add_argument("--config", type=Path, default=Path("configs/standard_cloud.yaml"))
    parser.add_argument("--name", default="shipped_build", help="the pipeline run's name")
    parser.add_argument(
        "--run", action="append", default=[], metavar="CLASS=RUN",
        help="pack this trained run for the class instead of training (repeatable)",
    )  # fmt: skip
    parser.add_argument("--real", type=int, default=5000, help="fresh real jets per class")
    parser.add_argument("--seed", type=int, default=7, help="their Pythia seed")
    parser.add_argument("--out", type=Path, default=ROOT / "pipelines" / "shipped")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--force", action="store_true", help="replace a shipped model even where it scored better"
    )
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from jetflows.classes import canonical_class
    from pipelines.data.production import request_jets
    from pipelines.data.pythia import PythiaConfig
    from pipelines.evaluation.report import STABLE_NAMES
    from pipelines.run import shipped, showcase
    from pipelines.run.generators import build_sampler

    given = dict(item.split("=", 1) for item in args.run)
    given = {canonical_class(c): Path(r) for c, r in given.items()}
    for c in (canonical_class(c) for c in args.classes.split(",")):
        run = given.get(c) or train(args.config, c, f"{args.name}_{c}", args.threads)
        packed = shipped.pack(run, c, config=args.config)
        gen = build_sampler(shipped._states(packed.state))  # the content the file will hold
        data = packed.provenance["data"]
        real = request_jets(
            PythiaConfig(c, seed=args.seed, recipe=data["recipe"]), args.real,
            ROOT / "runs" / "shipped_real" / f"{c}.hdf5", num_particles=data["num_particles"],
        )  # fmt: skip
        scores = showcase.score(gen, real, seed=args.seed)
        scores["real"] = {"source": "pythia", "seed": args.seed, "n": args.real}
        old = shipped.manifest(args.out)["models"].get(c)
        if old and not args.force and worst(old["scores"]) <= worst(scores):
            print(f"{c}: kept the shipped model (worst stable ratio {worst(old['scores']):.2f} "
                  f"against {worst(scores):.2f}; --force replaces it)")  # fmt: skip
            continue
        path = shipped.write_shipped(packed, scores, args.out, commit=commit(), model=gen.model)
        cells = [
            f"{STABLE_NAMES[k]} {scores[k]['stable_ratio']:.2f}"
            for k in STABLE_NAMES
            if k in scores and scores[k].get("stable_ratio") is not None
        ]
        print(f"{c}: {path} ({path.stat().st_size / 2**20:.2f} MB): {', '.join(cells)}")


if __name__ == "__main__":
    main()
