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

import torch
from common import machine_line
from floor_spread import held_out

from pipelines.evaluation.stable import FIGURES, Scored, stable_ratios
from pipelines.io import write_json
from pipelines.run.generators import STUDENT, TEACHER, load_sampler
from pipelines.run.sample import sampled_jets

NAMES = FIGURES


def stable(
    real: Scored, gens: dict[str, list[Scored]], n: int, draws: int, cov_draws: int, seed: int
) -> dict[str, dict[str, dict[str, float]]]:
    """Per sampler: `pipelines.evaluation.stable.stable_ratios` on the same real pairs."""
    return {
        name: stable_ratios(real, samples, n=n, draws=draws, cov_draws=cov_draws, seed=seed)
        for name, samples in gens.items()
    }


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


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
            cells = [_cell(row[k]["stable_ratio"]) for k in NAMES]
            c = row.get("cov", {}).get("stable_ratio")
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
