"""One set flow for several classes against one per class, at equal training compute.

The issue asks whether one model for all classes beats per-class models. This trains one set
flow on the union of the classes' training jets, told each jet's class (a one-hot appended to
its jet-level context (mass, n, sum pt_rel)), for the same epochs as the per-class runs, so
it sees the same jet-epochs, i.e. the same CPU time, as the per-class models together. Each
class keeps its own jet-level flow and feature scaling (small and cheap: what the comparison
is about is the set flow). Every class is then generated and scored exactly as its per-class
run was (the run's held-out real jets, its evaluation settings and sampling seed), and its
row is printed beside the per-class flow's, both sampled without guidance (a joint guide is
not trained here).

Needs finished per-class cloud runs of the same config (``benchmarks/quality.py --configs
configs/standard_cloud.yaml`` or ``jetflows pipeline``):

    python benchmarks/cloud_joint.py --run runs/standard_cloud --classes t,w
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch
from cloud_solvers import states_of
from common import machine_line
from torch import nn

from flows import setflow
from pipelines.data.jetnet import read_jetnet_file
from pipelines.evaluation.evaluate import evaluate
from pipelines.io import atomic_path, write_json
from pipelines.run import stages
from pipelines.run.config import load_config
from pipelines.run.generators import build_sampler, jet_level_sampler
from pipelines.run.sample import sampled_jets

SHOWN = ("w1m", "w1p", "w1efp", "cov", "emd_tau21", "emd_tau32", "emd_d2")


class ClassConditioned(nn.Module):
    """A joint set flow seen as one class's: ``sample`` appends the class's one-hot (1, K) to
    the jet-level context (B, C), which is all `flows.setflow.generate` asks of a set flow."""

    def __init__(self, flow: setflow.SetFlow, onehot: torch.Tensor) -> None:
        super().__init__()
        self.flow, self.context = flow, flow.context - onehot.shape[1]
        self.register_buffer("onehot", onehot)

    def sample(
        self,
        mask: torch.Tensor,
        context: torch.Tensor,
        *,
        generator: torch.Generator | None,
        guide: setflow.SetFlow | None = None,
    ) -> torch.Tensor:
        """Particles (B, P, F) for a mask (B, P) and context (B, C) (unguided: the joint flow
        has no guide)."""
        tag = self.onehot.expand(len(mask), -1)
        return self.flow.sample(mask, torch.cat([context, tag], -1), generator=generator)


def class_data(run: Path, jet_class: str, k: int, classes: int) -> tuple:
    """The class's (train, valid) set-flow data, as its run built them, with the one-hot."""
    cfg = load_config(run / "config.yaml")
    train, valid, _ = stages.split_jets(read_jetnet_file(run / jet_class / "data.hdf5"), cfg)
    _, _, parts = stages.set_flow_data(cfg, jet_class, (train, valid))
    tag = torch.zeros(1, classes)
    tag[0, k] = 1.0
    return tuple((x, m, torch.cat([c, tag.expand(len(x), -1)], -1)) for x, m, c in parts)


def joined(parts: list[tuple]) -> tuple:
    """(train, valid) of every class concatenated (all classes have the same P)."""
    return tuple(
        tuple(torch.cat(list(column)) for column in zip(*split, strict=True))
        for split in zip(*parts, strict=True)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/standard_cloud")
    parser.add_argument("--classes", default="t,w")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=None, help="default: the runs' own")
    parser.add_argument("--out", default=None, help="default: <run>/joint")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(), flush=True)
    run, classes = Path(args.run), args.classes.split(",")
    cfg = load_config(run / "config.yaml")
    train_cfg = cfg.flow_train
    if args.epochs:
        train_cfg = dataclasses.replace(train_cfg, epochs=args.epochs)
    train, valid = joined([class_data(run, c, k, len(classes)) for k, c in enumerate(classes)])
    torch.manual_seed(train_cfg.seed)
    # unguided, both the joint flow and the per-class flows it is compared with: a joint
    # guide was never trained
    flow_cfg = dataclasses.replace(cfg.set_flow, guidance=1.0, guidance_from=0.0)
    flow = setflow.SetFlow(flow_cfg, context=train[2].shape[1])
    start = time.perf_counter()
    setflow.fit(flow, train, valid, config=train_cfg, progress=True)
    minutes = (time.perf_counter() - start) / 60
    flow.eval()
    head = "| class | model | training min | " + " | ".join(SHOWN) + " |"
    lines = [head, "|---" * (len(SHOWN) + 3) + "|"]
    rows = []
    for k, jet_class in enumerate(classes):
        class_dir = run / jet_class
        states = states_of(class_dir)
        per_class_min = sum(r["seconds"] for r in states["flow.pt"]["history"]) / 60
        trained = build_sampler(states, options={"guidance": 1.0})
        real = read_jetnet_file(class_dir / "real_test.hdf5")
        jets = sampled_jets(trained, cfg.n_generate, seed=cfg.data.seed)
        alone = evaluate(real, jets, cfg=cfg.evaluate, progress=False)["metrics"]
        onehot = torch.zeros(1, len(classes))
        onehot[0, k] = 1.0
        model = ClassConditioned(flow, onehot)
        sampler = jet_level_sampler(
            setflow.generate, lambda _, m=model: m, trained.record, states, trained.device
        )
        joint_gen = dataclasses.replace(trained, sampler=sampler)
        jets = sampled_jets(joint_gen, cfg.n_generate, seed=cfg.data.seed)
        scored = evaluate(real, jets, cfg=cfg.evaluate, progress=False)["metrics"]
        for model_name, metrics, mins in (
            ("per class", alone, per_class_min),
            (f"joint ({len(classes)} classes)", scored, minutes),
        ):
            cells = " | ".join(f"{metrics[m]['ratio']:.2f}x" for m in SHOWN)
            lines.append(f"| {jet_class} | {model_name} | {mins:.1f} | {cells} |")
            print(lines[-1], flush=True)
        rows.append({"class": jet_class, "per_class": alone, "joint": scored})
    out = Path(args.out) if args.out else run / "joint"
    out.mkdir(parents=True, exist_ok=True)
    note = (
        f"joint training: {minutes:.1f} min for {len(classes)} classes ({train_cfg.epochs} epochs)"
    )
    write_json(out / "joint.json", {"machine": machine_line(), "note": note, "rows": rows})
    with atomic_path(out / "joint.md") as tmp:
        tmp.write_text(f"{machine_line()}\n\n{note}\n\n" + "\n".join(lines) + "\n")
    print(note)


if __name__ == "__main__":
    main()
