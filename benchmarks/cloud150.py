"""Set flows at 150 particles: the velocity network's training time per epoch and peak memory,
transformer (attention: P^2) against EPiC (linear in P), on real jets.

Takes the class's Pythia jets at P = 150 from the chunk cache (the standard configs' seed 42,
generated once otherwise), standardizes (eta, phi, log pt) over their real particles (the
networks' cost does not depend on the values), and times a few hundred
optimizer steps of each network at the batch size and widths asked for, on the jets' own
multiplicities (the transformer runs each batch on the slots up to its longest jet; EPiC's
pools divide by every slot, so it runs on all 150). The seconds per epoch are extrapolated to
``--n-train`` jets. The same at P = 30 is printed beside it, so the cost of 150 is a ratio.

``--sample``: the seconds and peak memory of sampling ``--n`` jets (the real jets' masks) with
the set flow's ODE as `configs/standard_cloud150.yaml` samples (8 midpoint steps, ``--precision``
auto as the config; guided by a
width-48 x 2 guide from t = 0.3, as the config's calibration may choose), at P = 30 and 150: the
network's cost does not depend on its weights, so untrained ones time the same. Peak memory is
the process's maximum resident set so far (it only grows), so run ``--sample`` alone.

    python benchmarks/cloud150.py --class t --threads 2
    python benchmarks/cloud150.py --class t --threads 2 --sample --n 10000
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import time

import numpy as np
import torch
from common import machine_line

from flows.setflow import SetFlow, SetFlowConfig
from pipelines.data.production import generate_jets
from pipelines.data.pythia import PythiaConfig

NETWORKS = {
    "transformer": {"network": "transformer", "width": 96, "layers": 3, "heads": 4},
    "epic": {"network": "epic", "width": 128, "layers": 4, "global_width": 32},
}


def _data(jets, P: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardized (eta, phi, log pt) (N, P, 3) of the real particles, and the mask."""
    mask = torch.from_numpy(jets.mask[:, :P].copy())
    x = torch.from_numpy(jets.particles[:, :P].copy()).float()
    x[..., 2] = torch.log(x[..., 2].clamp_min(1e-8))
    real = x[mask]
    x = (x - real.mean(0)) / real.std(0)
    return x * mask[..., None], mask


def _seconds_per_epoch(net: str, x, mask, batch: int, steps: int, n_train: int) -> float:
    torch.manual_seed(0)
    flow = SetFlow(SetFlowConfig(**NETWORKS[net]), context=3)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    context = torch.randn(len(x), 3)
    order = torch.randperm(len(x))
    start = None
    for step in range(steps + 3):  # three warm-up steps
        if step == 3:
            start = time.perf_counter()
        rows = order[(step * batch) % len(x) :][:batch]
        loss = flow.loss(x[rows], mask[rows], context[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
    per_step = (time.perf_counter() - start) / steps
    return per_step * n_train / batch


def _sampling_seconds(mask: torch.Tensor, guided: bool, precision: str) -> float:
    """Seconds to sample jets of ``mask`` with the transformer set flow, guided or not, in
    ``precision`` ("auto": as the config, bf16 where this CPU runs the network faster in it;
    its timing is inside the seconds)."""
    torch.manual_seed(0)
    config = SetFlowConfig(**NETWORKS["transformer"], precision=precision, steps=8)
    if guided:
        config = dataclasses.replace(config, guidance=1.5, guidance_from=0.3)
    flow = SetFlow(config, context=3).eval()
    guide = None
    if guided:
        guide_config = dataclasses.replace(config, width=48, layers=2, guidance=1.0)
        guide = SetFlow(guide_config, context=3).eval()
    context = torch.randn(len(mask), 3)
    start = time.perf_counter()
    flow.sample(mask, context, generator=torch.Generator().manual_seed(0), guide=guide)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--class", dest="jet_class", default="t")
    parser.add_argument("--n", type=int, default=4000, help="jets timed on")
    parser.add_argument("--n-train", type=int, default=20160, help="jets an epoch holds")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sample", action="store_true", help="time sampling --n jets instead")
    parser.add_argument(
        "--precision", default="auto", help="sampling arithmetic: auto (the config's), fp32, bf16"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(), f"torch threads {args.threads}", flush=True)
    jets = generate_jets(PythiaConfig(args.jet_class, seed=42), args.n, num_particles=150)
    n = jets.mask.sum(1)
    print(
        f"{args.jet_class}: {args.n} jets at P = 150, multiplicity mean {n.mean():.1f}, "
        f"median {np.median(n):.0f}, 90% {np.percentile(n, 90):.0f}, max {n.max()}"
    )
    if args.sample:
        print(f"precision {args.precision}")
        print(f"| P | guided | s for {args.n} jets | peak RSS GB |")
        print("|---|---|---|---|")
        for P in (30, 150):
            mask = torch.from_numpy(jets.mask[:, :P].copy())
            for guided in (False, True):
                sec = _sampling_seconds(mask, guided, args.precision)
                rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
                print(f"| {P} | {guided} | {sec:.1f} | {rss:.2f} |", flush=True)
        return
    print(f"| network | P | s / epoch ({args.n_train} jets, batch {args.batch}) | peak RSS GB |")
    print("|---|---|---|---|")
    for net in NETWORKS:
        for P in (30, 150):
            x, mask = _data(jets, P)
            sec = _seconds_per_epoch(net, x, mask, args.batch, args.steps, args.n_train)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            print(f"| {net} | {P} | {sec:.0f} | {rss:.2f} |", flush=True)


if __name__ == "__main__":
    main()
