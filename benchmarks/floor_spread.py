"""How much a ratio to the truth floor moves with the draw of the real jets.

The pipeline's ratio divides W1(generated, real A) by one floor, W1(real A, real B), of two
disjoint real samples of the generated sample's size. The floor of a substructure observable is
itself a noisy number at 2,500 jets, so a single ratio can be off by a factor that says
nothing about the model. For each class of a run this draws many disjoint pairs (A, B) of
that size from the class's held-out real jets (validation and test splits, never the training
jets) and prints, per observable:

- the pipeline's ratio (metrics.json: one draw);
- the floor's mean, spread (std / mean) and range over the draws;
- the stable ratio, mean W1(generated, A) / mean W1(A, B): the ratio a perfect generator
  scores 1 on, without one draw's luck;
- the 10-90% range of the per-draw ratios W1(generated, A) / W1(B, A): where a single
  evaluation of the same generated jets can land.

    python benchmarks/floor_spread.py --run runs/standard_cloud [--classes t,z] [--draws 40]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from common import machine_line

from pipelines.data.jetnet import Jets, concat_jets, read_jetnet_file
from pipelines.evaluation.metrics import observables, wasserstein_1d
from pipelines.io import write_json
from pipelines.run.config import load_config
from pipelines.run.stages import class_jets, split_jets

NAMES = ("mass", "tau21", "tau32", "d2")


def held_out(run: Path, jet_class: str) -> Jets:
    """The class's validation and test jets, as the run split them."""
    cfg = load_config(run / "config.yaml")
    _, valid, test = split_jets(class_jets(cfg, jet_class, run / jet_class, False), cfg)
    return concat_jets([valid, test])


def spread(real: dict, gen: dict, n: int, draws: int, seed: int) -> dict[str, dict]:
    """Per observable: the floor's and the model's W1 over ``draws`` disjoint real pairs."""
    rng = np.random.default_rng(seed)
    rows: dict[str, dict[str, list[float]]] = {k: {"floor": [], "model": []} for k in NAMES}
    for _ in range(draws):
        order = rng.permutation(len(real[NAMES[0]]))
        a, b = order[:n], order[n : 2 * n]
        for k in NAMES:
            rows[k]["floor"].append(wasserstein_1d(real[k][a], real[k][b]))
            rows[k]["model"].append(wasserstein_1d(real[k][a], gen[k]))
    out = {}
    for k, r in rows.items():
        floor, model = np.array(r["floor"]), np.array(r["model"])
        out[k] = {
            "floor_mean": float(floor.mean()),
            "floor_std": float(floor.std()),
            "floor_range": [float(floor.min()), float(floor.max())],
            "stable_ratio": float(model.mean() / floor.mean()),
            "draw_ratio_10_90": np.quantile(model / floor, [0.1, 0.9]).tolist(),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/standard_cloud")
    parser.add_argument("--classes", default=None, help="default: every class the run scored")
    parser.add_argument("--draws", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run = Path(args.run)
    print(machine_line())
    classes = (
        args.classes.split(",")
        if args.classes
        else sorted(p.parent.name for p in run.glob("*/metrics.json"))
    )
    if not classes:
        raise SystemExit(f"{run}: no class with metrics.json")
    print(
        "| class | observable | pipeline ratio | floor mean (std / mean) | floor range "
        "| stable ratio | one draw's ratio, 10-90% |",
        "|---|---|---|---|---|---|---|",
        sep="\n",
    )
    results = {}
    for jet_class in classes:
        gen_jets = read_jetnet_file(run / jet_class / "generated.hdf5")
        scored = json.loads((run / jet_class / "metrics.json").read_text())
        metrics, n = scored["metrics"], min(scored["n_jets"], len(gen_jets))
        real = observables(held_out(run, jet_class))
        if 2 * n > len(real[NAMES[0]]):
            raise SystemExit(f"{jet_class}: {len(real[NAMES[0]])} held-out jets, need 2 x {n}")
        gen = observables(gen_jets.take(slice(0, n)))
        results[jet_class] = {"n": n, **spread(real, gen, n, args.draws, args.seed)}
        for k in NAMES:
            r = results[jet_class][k]
            ratio = metrics[f"emd_{k}"]["ratio"]
            lo, hi = r["draw_ratio_10_90"]
            print(
                f"| {jet_class} | {k} | {ratio:.2f}x | {r['floor_mean']:.4g} "
                f"({r['floor_std'] / r['floor_mean']:.0%}) | {r['floor_range'][0]:.4g}-"
                f"{r['floor_range'][1]:.4g} | {r['stable_ratio']:.2f}x | {lo:.2f}-{hi:.2f}x |",
                flush=True,
            )
    write_json(run / "floor_spread.json", {"draws": args.draws, "classes": results})
    print(f"wrote {run / 'floor_spread.json'} ({args.draws} draws a class)")


if __name__ == "__main__":
    main()
