"""Autoguidance of the set flow: guidance weight x where it starts and ends, against quality
and time.

For a trained cloud run, every (guidance, guidance_from, guidance_until) setting samples as
many jets as the run scored (2,500 at the standard scale) with the run's flow guided by a
worse version of itself (`flows.setflow.SetFlow.guided_velocity`), scores them against the
run's held-out real jets beside the truth floor (W1M, W1P and its eta/phi/pt parts, W1EFP, W1
of tau21, tau32 and D2, COV), and times the sampling. The guide is the run's own guide.pt
(``set_flow.guide_epochs``), or ``--guide-run``'s flow.pt: a run of the same config trained
for fewer epochs.

    python benchmarks/cloud_guidance.py --run runs/standard_cloud --class t
    python benchmarks/cloud_guidance.py --run runs/cloud_e60 --guide-run runs/cloud_e8 \\
        --guidance 1,2,3 --from 0,0.5 --until 0.8,1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from cloud_solvers import states_of
from common import machine_line

from pipelines.data.jetnet import read_jetnet_file
from pipelines.evaluation.evaluate import EvalConfig, evaluate
from pipelines.io import write_json
from pipelines.run.generators import build_sampler
from pipelines.run.sample import sampled_jets

SHOWN = (
    "w1m", "w1p", "w1p_eta", "w1p_phi", "w1p_pt", "w1efp",
    "emd_tau21", "emd_tau32", "emd_d2", "cov",
)  # fmt: skip


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/standard_cloud")
    parser.add_argument("--class", dest="jet_class", default="t")
    parser.add_argument("--guide-run", help="take the guide from this run's flow.pt")
    parser.add_argument("--guidance", type=floats, default=[1.0, 2.0, 3.0])
    parser.add_argument("--from", dest="starts", type=floats, default=[0.0, 0.5])
    parser.add_argument("--until", dest="ends", type=floats, default=[1.0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="default: <run>/<class>/guidance.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line())
    class_dir = Path(args.run) / args.jet_class
    states = states_of(class_dir)
    if args.guide_run:
        states["guide.pt"] = states_of(Path(args.guide_run) / args.jet_class)["flow.pt"]
    if "guide.pt" not in states:
        raise SystemExit(f"{class_dir}: no guide.pt (set_flow.guide_epochs) and no --guide-run")
    epochs = (len(states["flow.pt"]["history"]), len(states["guide.pt"]["history"]))
    real = read_jetnet_file(class_dir / "real_test.hdf5")
    n = len(real) // 2
    cfg = EvalConfig(n_jets=n, fpnd=False, cov_mmd=True)
    print(f"{class_dir}: flow {epochs[0]} epochs, guide {epochs[1]}; {n} vs {n} jets")
    columns = ["guidance", "from", "until", *SHOWN, f"{n} jets (s)"]
    print("| " + " | ".join(columns) + " |", "|---" * len(columns) + "|", sep="\n", flush=True)
    rows = []
    # unguided once (its interval does not matter), then every guided setting
    settings = [(1.0, 0.0, 1.0)] if 1.0 in args.guidance else []
    settings += [
        (w, start, end)
        for end in args.ends
        for start in args.starts
        for w in args.guidance
        if start < end and w != 1.0
    ]
    for w, start, end in settings:
        options = {"guidance": w, "guidance_from": start, "guidance_until": end}
        gen = build_sampler(states, options=options)
        began = time.perf_counter()
        jets = sampled_jets(gen, n, seed=args.seed)
        seconds = time.perf_counter() - began
        metrics = evaluate(real, jets, cfg=cfg, progress=False)["metrics"]
        ratios = {k: metrics[k]["ratio"] for k in SHOWN}
        rows.append({"guidance": w, "from": start, "until": end, "seconds": seconds, **ratios})
        cells = [f"{ratios[k]:.2f}x" for k in SHOWN]
        head = f"| {w:g} | {start:g} | {end:g} | "
        print(head + " | ".join(cells) + f" | {seconds:.1f} |", flush=True)
    out = Path(args.out) if args.out else class_dir / "guidance.json"
    write_json(out, {"machine": machine_line(), "epochs": epochs, "n": n, "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
