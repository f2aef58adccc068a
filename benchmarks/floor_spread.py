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

The generated sample is a draw too. With ``--gen-draws K`` the run's model (as `jetflows
sample` loads it: the options the pipeline chose) draws K more samples of the same size; the
stable ratio then averages over them as well, and the range of the per-sample stable ratios
shows how much one generated draw moves it.

    python benchmarks/floor_spread.py --run runs/standard_cloud [--classes t,z] [--draws 40]
        [--gen-draws 4]
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
from pipelines.run.generators import load_sampler
from pipelines.run.sample import sampled_jets
from pipelines.run.stages import class_jets, split_jets

NAMES = ("mass", "tau21", "tau32", "d2")


def held_out(run: Path, jet_class: str) -> Jets:
    """The class's validation and test jets, as the run split them."""
    cfg = load_config(run / "config.yaml").for_class(jet_class)  # its data settings
    _, valid, test = split_jets(class_jets(cfg, jet_class, run / jet_class, False), cfg)
    return concat_jets([valid, test])


def spread(real: dict, gens: list[dict], n: int, draws: int, seed: int) -> dict[str, dict]:
    """Per observable: the floor's W1 over ``draws`` disjoint real pairs (A, B), and each
    generated sample's (``gens``: their observables, the pipeline's first) W1 to the same A."""
    rng = np.random.default_rng(seed)
    floors: dict[str, list[float]] = {k: [] for k in NAMES}
    models: dict[str, list[list[float]]] = {k: [] for k in NAMES}  # (draws, generated samples)
    for _ in range(draws):
        order = rng.permutation(len(real[NAMES[0]]))
        a, b = order[:n], order[n : 2 * n]
        for k in NAMES:
            floors[k].append(wasserstein_1d(real[k][a], real[k][b]))
            models[k].append([wasserstein_1d(real[k][a], gen[k]) for gen in gens])
    out = {}
    for k in NAMES:
        floor, model = np.array(floors[k]), np.array(models[k])
        per_sample = model.mean(0) / floor.mean()  # each generated sample's stable ratio
        out[k] = {
            "floor_mean": float(floor.mean()),
            "floor_std": float(floor.std()),
            "floor_range": [float(floor.min()), float(floor.max())],
            "stable_ratio": float(model.mean() / floor.mean()),
            "draw_ratio_10_90": np.quantile(model[:, 0] / floor, [0.1, 0.9]).tolist(),
            "sample_ratios": per_sample.tolist(),
        }
    return out


def generated_samples(run: Path, jet_class: str, n: int, extra: int) -> list[Jets]:
    """The pipeline's generated jets (first n), then ``extra`` new samples of n jets drawn as
    `jetflows sample` draws from the run (seeds 1000, 1001, ...)."""
    gens = [read_jetnet_file(run / jet_class / "generated.hdf5").take(slice(0, n))]
    if extra:
        sampler = load_sampler(run, jet_class)
        gens += [sampled_jets(sampler, n, seed=1000 + i) for i in range(extra)]
    return gens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/standard_cloud")
    parser.add_argument("--classes", default=None, help="default: every class the run scored")
    parser.add_argument("--draws", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gen-draws", type=int, default=0, help="new generated samples")
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
        "| stable ratio | one draw's ratio, 10-90% | stable ratio per generated sample |",
        "|---|---|---|---|---|---|---|---|",
        sep="\n",
    )
    results = {}
    for jet_class in classes:
        scored = json.loads((run / jet_class / "metrics.json").read_text())
        metrics, n = scored["metrics"], scored["n_jets"]
        real = observables(held_out(run, jet_class))
        if 2 * n > len(real[NAMES[0]]):
            raise SystemExit(f"{jet_class}: {len(real[NAMES[0]])} held-out jets, need 2 x {n}")
        gens = [observables(g) for g in generated_samples(run, jet_class, n, args.gen_draws)]
        results[jet_class] = {"n": n, **spread(real, gens, n, args.draws, args.seed)}
        for k in NAMES:
            r = results[jet_class][k]
            ratio = metrics[f"emd_{k}"]["ratio"]
            lo, hi = r["draw_ratio_10_90"]
            print(
                f"| {jet_class} | {k} | {ratio:.2f}x | {r['floor_mean']:.4g} "
                f"({r['floor_std'] / r['floor_mean']:.0%}) | {r['floor_range'][0]:.4g}-"
                f"{r['floor_range'][1]:.4g} | {r['stable_ratio']:.2f}x | {lo:.2f}-{hi:.2f}x | "
                + ", ".join(f"{v:.2f}" for v in r["sample_ratios"])
                + " |",
                flush=True,
            )
    write_json(run / "floor_spread.json", {"draws": args.draws, "classes": results})
    print(f"wrote {run / 'floor_spread.json'} ({args.draws} draws a class)")


if __name__ == "__main__":
    main()
