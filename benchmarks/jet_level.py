"""Where a set-flow run's generated jet mass comes from: the jet flow, or the particles.

A cloud run generates a jet in two steps: the jet flow samples its (log m/pt, n, sum pt_rel)
given its (pt, eta), then the set flow places n particles told those numbers. This splits the
generated mass's miss into the two, as stable ratios to the floor (many disjoint pairs of the
held-out real jets, the `floor_spread.py` way):

- the jet flow alone: W1 of its sampled m/pt against the real jets' (from their particles),
  and its mean shift;
- the particles: the mass the generated particles make against the mass they were told
  (mean shift and correlation), and the generated jets' m/pt against the real jets'.

    python benchmarks/jet_level.py --run runs/standard_cloud --classes t [--n 2500]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from common import machine_line
from floor_spread import held_out

from flows import setflow
from flows.particle import N_COLUMN, ParticleTarget, sample_jet_rows
from flows.train import flow_from_state
from jetflows.physics import jet_quantities
from pipelines.evaluation.metrics import wasserstein_1d
from pipelines.run.checkpoints import load_checkpoint
from pipelines.run.generators import SamplerRecord, kinematics_context, load_sampler


def stable_ratio(real: np.ndarray, gen: np.ndarray, n: int, draws: int, seed: int) -> float:
    """mean W1(gen[:n], A) / mean W1(A, B) over ``draws`` disjoint real pairs of n."""
    rng = np.random.default_rng(seed)
    model, floor = [], []
    for _ in range(draws):
        order = rng.permutation(len(real))
        a, b = real[order[:n]], real[order[n : 2 * n]]
        model.append(wasserstein_1d(a, gen[:n]))
        floor.append(wasserstein_1d(a, b))
    return float(np.mean(model) / np.mean(floor))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/standard_cloud")
    parser.add_argument("--classes", default="t")
    parser.add_argument("--n", type=int, default=2500)
    parser.add_argument("--draws", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line())
    run = Path(args.run)
    for jet_class in args.classes.split(","):
        real_jets = held_out(run, jet_class)
        real = torch.from_numpy(real_jets.particles)
        real_mass = jet_quantities(real, torch.from_numpy(real_jets.mask), ("mass",))[:, 0].exp()
        state = load_checkpoint(run / jet_class / "flow.pt", setflow.CHECKPOINT_KIND)
        record = SamplerRecord.from_dict(state["extra"])
        target = ParticleTarget.from_dict(record.particle_target)
        jet_flow = flow_from_state(
            load_checkpoint(run / jet_class / "jet_flow.pt", "jetflows.flow")
        )
        g = torch.Generator().manual_seed(7)
        pool = torch.tensor(record.jet_kinematics, dtype=torch.float32)
        kin = pool[torch.randint(len(pool), (4 * args.n,), generator=g)]
        context = (
            kinematics_context(kin, record.kinematics_norm) if record.kinematics_norm else None
        )
        with torch.no_grad():
            raw, _ = sample_jet_rows(jet_flow, len(kin), target, generator=g, kinematics=context)
        told = raw[:, target.jet_names.index("mass")].exp().numpy()
        gen = load_sampler(run, jet_class)
        with torch.no_grad():
            particles, mask = gen.sampler(len(kin), torch.Generator().manual_seed(8), kin)
        made = jet_quantities(particles, mask, ("mass",))[:, 0].exp().numpy()
        r = real_mass.numpy()
        print(
            f"{jet_class}: real m/pt mean {r.mean():.4f}; jet flow's {told.mean():.4f} "
            f"({told.mean() / r.mean() - 1:+.1%}), stable W1 ratio "
            f"{stable_ratio(r, told, args.n, args.draws, 0):.2f}x; multiplicity real "
            f"{real_jets.mask.sum(1).mean():.2f}, jet flow {raw[:, N_COLUMN].mean():.2f}"
        )
        print(
            f"{jet_class}: generated jets' m/pt mean {made.mean():.4f} "
            f"({made.mean() / r.mean() - 1:+.1%}), stable W1 ratio "
            f"{stable_ratio(r, made, args.n, args.draws, 0):.2f}x (the sampler as jetflows "
            f"sample loads it; its own jet rows)"
        )


if __name__ == "__main__":
    main()
