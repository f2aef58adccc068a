"""The set flow's learning curve: quality against training minutes, from partial checkpoints.

A pipeline writes ``flow.last.pt`` after every epoch; copies of it taken while a cloud run
trains (e.g. every few minutes: ``cp runs/standard_cloud/t/flow.last.pt snapshots/flow.$(date
+%H%M).pt``) are scored here beside the finished ``flow.pt``: each snapshot's best weights so
far (what early stopping would ship) generate as many jets as the run scored, against the
run's held-out real jets and the truth floor. Minutes are the training epochs' own wall time
(the sum of the history's ``seconds``), so they say where more training, or a GPU, would take
the model. The learning-rate schedule is the run's (cosine over its epochs), so early
snapshots are not annealed: a shorter run would score somewhat better at the same minutes.

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
from pipelines.evaluation.evaluate import EvalConfig, evaluate
from pipelines.io import atomic_path, write_json
from pipelines.run.checkpoints import load_checkpoint
from pipelines.run.generators import build_sampler
from pipelines.run.sample import sampled_jets

SHOWN = ("w1m", "w1p", "w1efp", "emd_tau21", "emd_tau32", "emd_d2", "cov")


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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line())
    class_dir = Path(args.run) / args.jet_class
    states = states_of(class_dir)  # the finished flow.pt and what it was fitted on
    real = read_jetnet_file(class_dir / "real_test.hdf5")
    cfg = EvalConfig(n_jets=len(real) // 2, fpnd=False, cov_mmd=True)
    paths = [*sorted(glob.glob(args.snapshots)), str(class_dir / "flow.pt")]
    # every snapshot samples as the finished flow does (snapshots of older runs hold no guidance)
    final = SetFlowConfig(**states["flow.pt"]["set_flow_config"])
    guidance = args.guidance if args.guidance is not None else final.guidance
    options = {"guidance": guidance, "guidance_from": final.guidance_from}
    print(f"guidance {options['guidance']:g} from t = {options['guidance_from']:g}")
    head = "| snapshot | epochs | train min | " + " | ".join(SHOWN) + " |"
    lines = [head, "|---" * (len(SHOWN) + 3) + "|"]
    print(f"{len(real) // 2} vs {len(real) // 2} jets; ratios to the truth floor", *lines, sep="\n")
    rows = []
    for path in paths:
        state = load_checkpoint(path, CHECKPOINT_KIND)
        minutes = sum(row["seconds"] for row in state["history"]) / 60
        gen = build_sampler({**states, "flow.pt": state}, options=options)
        jets = sampled_jets(gen, len(real) // 2, seed=1)
        metrics = evaluate(real, jets, cfg=cfg, progress=False)["metrics"]
        cells = " | ".join(f"{metrics[k]['ratio']:.2f}x" for k in SHOWN)
        line = f"| {Path(path).name} | {state['epoch']} | {minutes:.1f} | {cells} |"
        lines.append(line)
        print(line, flush=True)
        rows.append({"snapshot": path, "epochs": state["epoch"], "minutes": minutes, **metrics})
    out = Path(args.out) if args.out else class_dir / "learning_curve"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "learning_curve.json", {"machine": machine_line(), "rows": rows})
    with atomic_path(out / "learning_curve.md") as tmp:
        tmp.write_text(f"{machine_line()}\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
