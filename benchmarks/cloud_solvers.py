"""The set flow's ODE: solver x steps against quality and the time of sampling 10,000 jets.

For a trained cloud run (``jetflows pipeline --config configs/standard_cloud.yaml``), every
(solver, steps) pair rebuilds the generator from the run's checkpoints with that solver and
step count (the weights unchanged), generates as many jets as the run scored (2,500 at the
standard scale), scores them against the run's held-out real jets beside the truth floor (W1M,
W1P, W1 of tau21 and tau32, COV off for speed), and times the sampling of ``--n`` jets
(10,000: what ``jetflows sample --n 10000`` spends beyond its ~2 s start-up).

    python benchmarks/cloud_solvers.py --run runs/standard_cloud --class t
    python benchmarks/cloud_solvers.py --grid euler:4,8,16 --grid midpoint:4,8,20
    python benchmarks/cloud_solvers.py --grid midpoint:6,8 --precision fp32,bf16
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import machine_line, run_states

from flows.setflow import SetFlowConfig
from pipelines.data.jetnet import read_jetnet_file
from pipelines.evaluation.evaluate import EvalConfig, evaluate
from pipelines.io import atomic_path, write_json
from pipelines.run.generators import GENERATORS, build_sampler
from pipelines.run.sample import sampled_jets

GRID = ("euler:4,8,16", "midpoint:4,8,20", "rk4:2,4,8")
SHOWN = ("w1m", "w1p", "emd_tau21", "emd_tau32", "emd_d2")


def states_of(class_dir: Path) -> dict[str, dict]:
    """The run's checkpoints by file name (`common.run_states`: flow.pt, what it was fitted
    on and, when there, its guide.pt); a run whose generator takes no ODE options (not a set
    flow) is refused."""
    states = run_states(class_dir)
    gen = GENERATORS[states["flow.pt"]["extra"]["target"]]
    if gen.options is None:
        raise SystemExit(f"{class_dir}: a {gen.name} run, which has no ODE to solve")
    return states


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/standard_cloud")
    parser.add_argument("--class", dest="jet_class", default="t")
    parser.add_argument("--grid", action="append", help="solver:steps,steps (repeatable)")
    parser.add_argument("--n", type=int, default=10_000, help="jets timed per setting")
    parser.add_argument("--precision", default="fp32", help="fp32,bf16: the network's arithmetic")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="default: <run>/<class>/solvers")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line())
    class_dir = Path(args.run) / args.jet_class
    states = states_of(class_dir)
    real = read_jetnet_file(class_dir / "real_test.hdf5")
    n_scored = len(real) // 2
    cfg = EvalConfig(n_jets=n_scored, fpnd=False, cov_mmd=False)
    shipped = states["flow.pt"]["set_flow_config"]
    stored = SetFlowConfig(**shipped)
    guided = f"guidance {stored.guidance:g} from t = {stored.guidance_from:g}"
    print(f"shipped: {shipped['solver']} x {shipped['steps']}, {guided}; {n_scored} vs {n_scored}")
    columns = ["solver", "steps", "precision", "network calls", *SHOWN, f"{args.n} jets (s)"]
    head = "| " + " | ".join(columns) + " |"
    lines = [head, "|---" * len(columns) + "|"]
    print(lines[0], lines[1], sep="\n", flush=True)
    rows = []
    calls = {"euler": 1, "midpoint": 2, "rk4": 4}
    for spec in args.grid or GRID:
        solver, steps = spec.split(":")
        for n_steps in (int(s) for s in steps.split(",")):
            for precision in args.precision.split(","):
                options = {"solver": solver, "steps": n_steps, "precision": precision}
                gen = build_sampler(states, options=options)
                jets = sampled_jets(gen, n_scored, seed=1)
                metrics = evaluate(real, jets, cfg=cfg, progress=False)["metrics"]
                start = time.perf_counter()
                sampled_jets(gen, args.n, seed=2)
                seconds = time.perf_counter() - start
                cells = " | ".join(f"{metrics[k]['ratio']:.2f}x" for k in SHOWN)
                line = (
                    f"| {solver} | {n_steps} | {precision} | {calls[solver] * n_steps} | {cells} "
                    f"| {seconds:.1f} |"
                )
                lines.append(line)
                print(line, flush=True)
                rows.append({**options, "seconds": seconds, "metrics": metrics})
    out = Path(args.out) if args.out else class_dir / "solvers"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "solvers.json", {"machine": machine_line(), "rows": rows})
    with atomic_path(out / "solvers.md") as tmp:
        tmp.write_text(f"{machine_line()}\n\nratios: W1 / truth floor\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
