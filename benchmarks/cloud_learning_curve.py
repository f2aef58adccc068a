"""The set flow's learning curve: quality against training minutes, from partial checkpoints.

A pipeline writes ``flow.last.pt`` after every epoch; copies of it taken while a cloud run
trains (e.g. every few minutes: ``cp runs/standard_cloud/t/flow.last.pt snapshots/flow.$(date
+%H%M).pt``) are scored here beside the finished ``flow.pt``: each snapshot's best weights so
far (what early stopping would ship) generate as many jets as the run scored, against the
run's held-out real jets and the truth floor. Minutes are the training epochs' own wall time
(the sum of the history's ``seconds``), so they say where more training, or a GPU, would take
the model. The learning-rate schedule is the run's (cosine over its epochs), so early
snapshots are not annealed: a shorter run would score somewhat better at the same minutes.

Scores are stable ratios (`pipelines.evaluation.stable`): ``--draws`` random splits of the
run's held-out real jets into halves of ``--n`` against the snapshot's generated jets (one
sample of ``--n``), COV on one split; the real jets' quantities are computed once.

    python benchmarks/cloud_learning_curve.py --run runs/standard_cloud --class t \\
        --snapshots 'snapshots/flow.*.pt'
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

import torch
from cloud_solvers import states_of
from common import machine_line

from flows.setflow import CHECKPOINT_KIND, SetFlowConfig
from pipelines.data.jetnet import read_jetnet_file
from pipelines.evaluation.stable import Scored, stable_ratios
from pipelines.io import atomic_path, write_json
from pipelines.run.checkpoints import load_checkpoint
from pipelines.run.generators import build_sampler
from pipelines.run.sample import sampled_jets

SHOWN = ("w1m", "w1p", "w1efp", "tau21", "tau32", "d2", "multiplicity", "cov")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/standard_cloud")
    parser.add_argument("--class", dest="jet_class", default="t")
    parser.add_argument("--snapshots", required=True, help="glob of flow.last.pt copies")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--guidance", type=float, default=None, help="for every snapshot; default: the run's"
    )
    parser.add_argument("--out", default=None, help="default: <run>/<class>/learning_curve")
    parser.add_argument("--n", type=int, default=2500, help="jets a sample (real half, generated)")
    parser.add_argument("--draws", type=int, default=16, help="random real splits")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line())
    class_dir = Path(args.run) / args.jet_class
    states = states_of(class_dir)  # the finished flow.pt and what it was fitted on
    real = Scored(read_jetnet_file(class_dir / "real_test.hdf5"))
    paths = [*sorted(glob.glob(args.snapshots)), str(class_dir / "flow.pt")]
    # every snapshot samples as the finished flow does (snapshots of older runs hold no guidance)
    final = SetFlowConfig(**states["flow.pt"]["set_flow_config"])
    guidance = args.guidance if args.guidance is not None else final.guidance
    options = {"guidance": guidance, "guidance_from": final.guidance_from}
    print(f"guidance {options['guidance']:g} from t = {options['guidance_from']:g}")
    head = "| snapshot | epochs | train min | " + " | ".join(SHOWN) + " |"
    lines = [head, "|---" * (len(SHOWN) + 3) + "|"]
    sizes = f"{args.n} generated vs {args.n} real jets, {args.draws} splits of {real.n}"
    print(f"{sizes}; stable ratios to the truth floor", *lines, sep="\n")
    rows = []
    for path in paths:
        state = load_checkpoint(path, CHECKPOINT_KIND)
        minutes = sum(row["seconds"] for row in state["history"]) / 60
        gen = build_sampler({**states, "flow.pt": state}, options=options)
        jets = sampled_jets(gen, args.n, seed=1)
        metrics = stable_ratios(real, jets, n=args.n, draws=args.draws, cov_draws=1)
        cells = " | ".join(f"{metrics[k]['stable_ratio']:.2f}x" for k in SHOWN)
        line = f"| {Path(path).name} | {state['epoch']} | {minutes:.1f} | {cells} |"
        lines.append(line)
        print(line, flush=True)
        rows.append({"snapshot": path, "epochs": state["epoch"], "minutes": minutes, **metrics})
    out = Path(args.out) if args.out else class_dir / "learning_curve"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "learning_curve.json", {"machine": machine_line(), "rows": rows})
    with atomic_path(out / "learning_curve.md") as tmp:
        tmp.write_text(f"{machine_line()}\n\n{sizes}\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
