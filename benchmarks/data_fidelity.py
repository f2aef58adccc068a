"""How close the embedded Pythia8 + FastJet jets are to JetNet, per recipe, measured with what
jetnet ships: its FPND statistics of the real JetNet jets (g, q, t at 30 particles) and JetNet's
feature maxima (`JetNet.fpnd_norm`).

Prints, per recipe and class:
- g, q, t: FPND of the embedded real jets against jetnet's statistics at --small and --n jets
  (JetNet's own real jets score ~0 at 50,000);
- every class: max and 99.9% quantile of |eta_rel|, |phi_rel|, pt_rel over the 30 hardest
  particles beside JetNet's maxima, the jet-mass peak, the median multiplicity and the fraction
  of jets with fewer than 30 particles;
- the CPU, and jets/s where jets had to be generated (cached chunks are reused).
Writes fidelity.json (strict JSON) and fidelity.md to --out.

    python benchmarks/data_fidelity.py [--n 20000] [--small 5000] [--recipes particle,fpnd-matched]
        [--classes gqtwz] [--seed 42] [--jobs 2] [--out runs/benchmarks/data_fidelity]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import machine_line

from pipelines.data.jetnet import Jets
from pipelines.data.production import generate_jets
from pipelines.data.pythia import RECIPES, PythiaConfig
from pipelines.evaluation.dataset_summary import mass_peak
from pipelines.evaluation.fpnd import FPND_CLASSES, fpnd
from pipelines.io import write_json

FEATURES = ("eta_rel", "phi_rel", "pt_rel")


def jetnet_maxima() -> np.ndarray:
    """JetNet's feature maxima (|eta_rel|, |phi_rel|, pt_rel) as jetnet ships them for FPND."""
    from jetnet.datasets import JetNet

    return np.asarray(JetNet.fpnd_norm.feature_maxes, dtype=np.float64)


def feature_extremes(jets: Jets) -> dict[str, dict[str, float]]:
    """Max and 99.9% quantile of |eta_rel|, |phi_rel|, pt_rel over the real 30 hardest particles."""
    values = np.abs(jets.particles[:, :30][jets.mask[:, :30]].astype(np.float64))
    return {
        name: {"max": float(values[:, i].max()), "q999": float(np.quantile(values[:, i], 0.999))}
        for i, name in enumerate(FEATURES)
    }


def class_row(cls: str, recipe: str, args: argparse.Namespace) -> dict:
    """Every figure of one class and recipe (generating what the cache lacks)."""
    cfg = PythiaConfig(cls, seed=args.seed, recipe=recipe)
    n = args.n if cls in FPND_CLASSES else args.small
    start = time.perf_counter()
    jets = generate_jets(cfg, n, num_particles=30, jobs=args.jobs, progress=True)
    seconds = time.perf_counter() - start
    row: dict = {
        "jets": n,
        "seconds": seconds,
        "features": feature_extremes(jets),
        "mass_peak": mass_peak(jets.jet_features[:, 2]),
        "multiplicity_median": float(np.median(jets.jet_features[:, 3])),
        "fewer_than_30": float((jets.mask.sum(1) < 30).mean()),
    }
    if cls in FPND_CLASSES:
        row["fpnd"] = {
            str(size): fpnd(jets.particles[:size], cls) for size in sorted({args.small, n})
        }
    return row


def line(cls: str, recipe: str, row: dict, maxima: np.ndarray) -> str:
    fpnd_text = ", ".join(f"FPND@{k} {v:.2f}" for k, v in row.get("fpnd", {}).items())
    extremes = " ".join(
        f"{name} max {row['features'][name]['max']:.3f} q99.9 {row['features'][name]['q999']:.3f}"
        f" (JetNet max {maxima[i]:.3f})"
        for i, name in enumerate(FEATURES)
    )
    return (
        f"{recipe:>8} {cls}: {fpnd_text + '; ' if fpnd_text else ''}{extremes}; mass peak "
        f"{row['mass_peak']:.1f} GeV, n median {row['multiplicity_median']:.0f}, "
        f"<30 particles {row['fewer_than_30']:.1%}, {row['jets']} jets in {row['seconds']:.0f} s"
    )


def markdown(rows: dict, maxima: np.ndarray, machine: str) -> str:
    head = (
        "| recipe | class | FPND (jets) | abs eta_rel max / q99.9 | abs phi_rel max / q99.9 | "
        "pt_rel max / q99.9 | mass peak | n median | <30 particles |"
    )
    lines = [
        f"Machine: {machine}. JetNet's maxima: |eta_rel| {maxima[0]:.3f}, |phi_rel| "
        f"{maxima[1]:.3f}, pt_rel {maxima[2]:.3f}.",
        "",
        head,
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for recipe, per_class in rows.items():
        for cls, r in per_class.items():
            f = r["features"]
            fp = ", ".join(f"{v:.2f} ({k})" for k, v in r.get("fpnd", {}).items()) or "-"
            cells = [f"{f[n]['max']:.3f} / {f[n]['q999']:.3f}" for n in FEATURES]
            lines.append(
                f"| {recipe} | {cls} | {fp} | {' | '.join(cells)} | {r['mass_peak']:.1f} | "
                f"{r['multiplicity_median']:.0f} | {r['fewer_than_30']:.1%} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="jets per class for g, q, t")
    parser.add_argument("--small", type=int, default=5000, help="the smaller FPND size; w, z")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--classes", default="gqtwz")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/data_fidelity"))
    args = parser.parse_args()
    torch.set_num_threads(args.jobs)
    machine = machine_line()
    print(machine, flush=True)
    maxima = jetnet_maxima()
    rows: dict[str, dict[str, dict]] = {}
    for recipe in args.recipes.split(","):
        for cls in args.classes:
            row = class_row(cls, recipe, args)
            rows.setdefault(recipe, {})[cls] = row
            print(line(cls, recipe, row, maxima), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine, "jetnet_maxima": maxima.tolist(), "rows": rows}
    write_json(args.out / "fidelity.json", record)
    (args.out / "fidelity.md").write_text(markdown(rows, maxima, machine))
    print(f"wrote {args.out}/fidelity.json and fidelity.md")


if __name__ == "__main__":
    main()
