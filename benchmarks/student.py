"""The few-step student beside its guided teacher: stable ratios to the truth floor and speed.

For each class of a run with a student (student.pt), draws K generated samples of n jets
(default 2,500) from the teacher (the set flow as the pipeline chose to sample it) and from the
student at each of its step counts, then scores every sample against many disjoint pairs
(A, B) of the class's held-out real jets (validation and test splits; the `floor_spread.py`
way): the stable ratio of an observable is mean W1(generated, A) / mean W1(A, B), over the
draws and the K samples, with the 10-90% range of the per-sample ratios beside it.

Observables: W1M (the jet mass), W1P (the particles' eta, phi, pt, pooled as jetnet does,
padding excluded), W1EFP (jetnet's EFP selection), tau21, tau32, D2; COV (jetnet's, 10 x 100
jets) as the mean of COV(generated, A) / COV(B, A) over ``--cov-draws`` pairs. Then the seconds
to sample 10,000 jets in this process (the model loaded: start-up apart, printed beside it),
best of ``--repeats``, and the student's training minutes from its history.

    python benchmarks/student.py --run runs/standard_fast [--classes t] [--gen-draws 4]
        [--draws 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import machine_line
from floor_spread import held_out

from pipelines.data.jetnet import Jets
from pipelines.evaluation.metrics import (
    _particle_masks,
    efps,
    observables,
    w1efp_selection,
    wasserstein_1d,
)
from pipelines.io import write_json
from pipelines.run.generators import STUDENT, TEACHER, load_sampler
from pipelines.run.sample import sampled_jets

NAMES = ("w1m", "w1p", "w1efp", "tau21", "tau32", "d2")
OBSERVABLE = {"w1m": "mass", "tau21": "tau21", "tau32": "tau32", "d2": "d2"}


class Scored:
    """A sample's per-jet quantities: observables, real particles (pooled), selected EFPs."""

    def __init__(self, jets: Jets) -> None:
        self.obs = observables(jets)
        self.particles = jets.particles
        self.real = _particle_masks(jets.particles, jets.mask)
        self.efps = efps(jets.particles)[:, w1efp_selection()]

    def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The quantities of jets ``rows``: per observable, per particle feature, per EFP."""
        parts = self.particles[rows][self.real[rows]]  # (particles, 3)
        out = {k: v[rows] for k, v in self.obs.items()}
        out.update({f"p{f}": parts[:, f] for f in range(3)})
        out.update({f"e{i}": self.efps[rows, i] for i in range(self.efps.shape[1])})
        return out


def w1s(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    """W1 of every figure in `NAMES` between two samples' quantities (`Scored.take`)."""
    out = {k: wasserstein_1d(a[v], b[v]) for k, v in OBSERVABLE.items()}
    out["w1p"] = float(np.mean([wasserstein_1d(a[f"p{f}"], b[f"p{f}"]) for f in range(3)]))
    efp = [k for k in a if k.startswith("e") and k[1:].isdigit()]
    out["w1efp"] = float(np.mean([wasserstein_1d(a[k], b[k]) for k in efp]))
    return out


def cov(real: np.ndarray, gen: np.ndarray, seed: int) -> float:
    """jetnet's COV (10 batches of 100 jets) of ``gen`` (N, P, 3) against ``real``."""
    import jetnet

    np.random.seed(seed)  # jetnet draws its batches from numpy's global stream
    return float(jetnet.evaluation.cov_mmd(real, gen, use_tqdm=False)[0])


def stable(
    real: Scored, gens: dict[str, list[Scored]], n: int, draws: int, cov_draws: int, seed: int
) -> dict[str, dict[str, dict[str, float]]]:
    """Per sampler and figure: the stable ratio and the 10-90% range of its per-sample ratios
    over ``draws`` disjoint real pairs (A, B) of ``n`` jets; COV over the first ``cov_draws``."""
    rng = np.random.default_rng(seed)
    total = len(real.obs["mass"])
    floors: dict[str, list[float]] = {k: [] for k in NAMES}
    model = {s: {k: [] for k in NAMES} for s in gens}  # per sampler: (draws, samples)
    covs = {s: [] for s in gens}
    for d in range(draws):
        order = rng.permutation(total)
        a_rows, b_rows = order[:n], order[n : 2 * n]
        a, b = real.take(a_rows), real.take(b_rows)
        for k, v in w1s(a, b).items():
            floors[k].append(v)
        for name, samples in gens.items():
            rows = np.arange(n)
            per = [w1s(a, g.take(rows)) for g in samples]
            for k in NAMES:
                model[name][k].append([p[k] for p in per])
            if d < cov_draws:
                floor = cov(real.particles[a_rows], real.particles[b_rows], seed + d)
                got = np.mean(
                    [cov(real.particles[a_rows], g.particles[:n], seed + d) for g in samples]
                )
                covs[name].append(got / floor)
    out = {}
    for name in gens:
        out[name] = {}
        for k in NAMES:
            values = np.array(model[name][k])  # (draws, samples)
            per_sample = values.mean(0) / np.mean(floors[k])
            out[name][k] = {
                "stable_ratio": float(values.mean() / np.mean(floors[k])),
                "sample_10_90": np.quantile(per_sample, [0.1, 0.9]).tolist(),
            }
        out[name]["cov"] = {"stable_ratio": float(np.mean(covs[name])) if covs[name] else None}
    return out


def seconds(sampler, n: int, repeats: int) -> float:
    """Best wall time of sampling ``n`` jets (after one warm-up draw of 500)."""
    sampled_jets(sampler, 500, seed=0)
    best = float("inf")
    for i in range(repeats):
        start = time.perf_counter()
        sampled_jets(sampler, n, seed=i)
        best = min(best, time.perf_counter() - start)
    return best


def samplers(run: Path, jet_class: str) -> dict[str, tuple[object, float]]:
    """Teacher and student at each step count: (loaded sampler, seconds to load it)."""
    state = torch.load(run / jet_class / STUDENT, weights_only=False)
    out = {}
    for name, options in [
        ("teacher", {TEACHER: True}),
        *((f"student {k}", {"steps": k}) for k in sorted(state["student_config"]["steps"])),
    ]:
        start = time.perf_counter()
        out[name] = (load_sampler(run, jet_class, options=options), time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/standard_fast")
    parser.add_argument("--classes", default=None, help="default: every class with a student")
    parser.add_argument("--n", type=int, default=2500, help="jets per sample and real half")
    parser.add_argument("--gen-draws", type=int, default=4, help="generated samples a sampler")
    parser.add_argument("--draws", type=int, default=16, help="real pairs (A, B)")
    parser.add_argument("--cov-draws", type=int, default=2, help="real pairs scored for COV")
    parser.add_argument("--repeats", type=int, default=3, help="timings of 10,000 jets")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    print(machine_line(), flush=True)
    classes = (
        args.classes.split(",")
        if args.classes
        else sorted(p.parent.name for p in run.glob(f"*/{STUDENT}"))
    )
    if not classes:
        raise SystemExit(f"{run}: no class with a {STUDENT}")
    header = "| class | sampler | " + " | ".join(NAMES) + " | COV | s / 10k jets (load) |"
    print(header, "|" + "---|" * (len(NAMES) + 4), sep="\n", flush=True)
    results = {}
    for jet_class in classes:
        real = Scored(held_out(run, jet_class))
        if 2 * args.n > len(real.obs["mass"]):
            raise SystemExit(
                f"{jet_class}: {len(real.obs['mass'])} held-out jets, need 2 x {args.n}"
            )
        loaded = samplers(run, jet_class)
        gens = {
            name: [Scored(sampled_jets(s, args.n, seed=1000 + i)) for i in range(args.gen_draws)]
            for name, (s, _) in loaded.items()
        }
        scores = stable(real, gens, args.n, args.draws, args.cov_draws, args.seed)
        history = torch.load(run / jet_class / STUDENT, weights_only=False)["history"]
        minutes = sum(row["seconds"] for row in history) / 60
        results[jet_class] = {"scores": scores, "student_epoch_minutes": minutes, "timing": {}}
        for name, (sampler, load) in loaded.items():
            took = seconds(sampler, 10_000, args.repeats)
            results[jet_class]["timing"][name] = {"seconds_10k": took, "load_seconds": load}
            row = scores[name]
            cells = [f"{row[k]['stable_ratio']:.2f}" for k in NAMES]
            c = row["cov"]["stable_ratio"]
            print(
                f"| {jet_class} | {name} | " + " | ".join(cells)
                + f" | {'-' if c is None else f'{c:.2f}'} | {took:.2f} ({load:.2f}) |",
                flush=True,
            )  # fmt: skip
        print(f"{jet_class}: student training {minutes:.1f} min (epochs only)", flush=True)
    out = run / "student_benchmark.json"
    write_json(out, {"n": args.n, "draws": args.draws, "gen_draws": args.gen_draws, **results})
    print(f"wrote {out}; stable ratios over {args.draws} real pairs x {args.gen_draws} samples")


if __name__ == "__main__":
    main()
