"""Do generated jets carry their kinematics? corr(jet mass, jet pt) of real and generated jets,
with the generator drawing (pt, eta) independently of the jet (the default) and conditioned on
them (`latent.kinematics` / `particle.kinematics`), like with like: the mass of every jet from
its particles (`pipelines.evaluation.dataset_summary.particle_level`).

Runs the pipeline (quickstart size by default) per class and setting, then samples
``--n`` jets with `jetflows sample`'s code and prints the Pearson correlations; also the mean
relative mass of jets generated at --low and --high pt (a conditioned generator should follow
the real trend: heavier objects look lighter per unit pt at higher pt).

    python benchmarks/kinematics.py [--config configs/quickstart.yaml] [--classes t]
        [--target latent] [--n 2000] [--low 850] [--high 1200]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from common import machine_line

from pipelines.data.jetnet import Jets, read_jetnet_file
from pipelines.evaluation.dataset_summary import particle_level
from pipelines.run.config import load_config
from pipelines.run.generators import GENERATORS, load_sampler
from pipelines.run.pipeline import run_pipeline
from pipelines.run.sample import sample_jets


def generated(run: Path, cls: str, n: int, kinematics: np.ndarray | None = None) -> Jets:
    """n jets from the run's generator, as `jetflows sample` writes them."""
    gen = load_sampler(run, cls)
    batches = list(sample_jets(gen, n, kinematics=kinematics))
    pf, jf = (np.concatenate([b[i] for b in batches]) for i in (0, 1))
    mask = pf[..., 3] > 0
    return Jets(pf[..., :3], mask, jf, np.zeros(len(pf), int))


def corr(jets: Jets) -> float:
    mass, _ = particle_level(jets)
    return float(np.corrcoef(mass, jets.jet_features[:, 0])[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--classes", default="t")
    conditionable = [name for name, g in GENERATORS.items() if g.target.kinematics]
    parser.add_argument("--target", default="latent", choices=conditionable)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--low", type=float, default=850.0)
    parser.add_argument("--high", type=float, default=1200.0)
    parser.add_argument("--runs", type=Path, default=Path("runs/benchmarks/kinematics"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(machine_line(), flush=True)
    option = GENERATORS[args.target].target.kinematics
    for cls in args.classes:
        for conditioned in (False, True):
            name = f"{args.target}_{'conditioned' if conditioned else 'pool'}"
            sets = [f"target={args.target}", f"{option}={str(conditioned).lower()}", f"name={name}"]
            cfg = load_config(args.config, sets)
            run = run_pipeline(cfg, root=args.runs, classes=(cls,), progress=False)
            real = read_jetnet_file(run / cls / "real_test.hdf5")
            line = f"{cls} {name}: corr(mass, pt) real {corr(real):.3f}, "
            line += f"generated {corr(generated(run, cls, args.n)):.3f}"
            if conditioned:
                means = []
                for pt in (args.low, args.high):
                    kin = np.tile([pt, 0.0], (args.n, 1))
                    mass, _ = particle_level(generated(run, cls, args.n, kin))
                    means.append(float(np.mean(mass / pt)))
                order = np.argsort(real.jet_features[:, 0])
                third = len(order) // 3
                real_rel = [
                    float(np.mean(m / real.jet_features[idx, 0]))
                    for idx in (order[:third], order[-third:])
                    for m in [particle_level(real.take(idx))[0]]
                ]
                line += (
                    f"; mean m/pt generated at {args.low:.0f} / {args.high:.0f} GeV: "
                    f"{means[0]:.4f} / {means[1]:.4f} (real, lowest / highest third in pt: "
                    f"{real_rel[0]:.4f} / {real_rel[1]:.4f})"
                )
            print(line, flush=True)


if __name__ == "__main__":
    main()
