"""Reconstruction-loss cost: our differentiable EMDs vs Chamfer vs jetnet's qpth EMDLoss.

One batch of 100 Pythia top jets x 30 particles against a perturbed copy (a stand-in for a
reconstruction), forward + backward, on the CPU. jetnet's qpth EMDLoss is timed on a few jets
(--qpth-jets) and scaled linearly to 100 (it solves one QP per jet); the issue measured 377 s
for the full batch on this machine. Prints the thread count and the ratios.

    python benchmarks/losses.py [--threads 2] [--qpth-jets 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from convae import losses as L
from pipelines.data.production import generate_jets
from pipelines.data.pythia import PythiaConfig


def timed(func, x, y, mask, repeats: int) -> float:
    """Median seconds of forward + backward."""
    times = []
    for _ in range(repeats):
        y_ = y.detach().clone().requires_grad_(True)
        start = time.perf_counter()
        value = func(x, y_, mask) if mask is not None else func(x, y_)
        value.sum().backward()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--qpth-jets", type=int, default=1)  # 2 jets ran > 14 min here
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    jets = generate_jets(PythiaConfig("t"), 100, jobs=2, progress=False)
    x, mask = torch.tensor(jets.particles), torch.tensor(jets.mask)
    y = (x + 0.01 * torch.randn_like(x)).clamp_min(0) * mask[..., None]
    print(f"torch threads: {torch.get_num_threads()}, batch 100 jets x 30 particles")
    results = {}
    for name, func, repeats in (
        ("chamfer", L.chamfer, 50),
        ("emd exact (POT)", L.PARTICLE_LOSSES["emd"], 5),
        ("emd sinkhorn (geomloss)", L.PARTICLE_LOSSES["emd_sinkhorn"], 5),
    ):
        results[name] = timed(func, x, y, mask, repeats)
        print(f"{name:42s} {results[name] * 1e3:10.2f} ms per batch", flush=True)
    try:
        from jetnet.losses import EMDLoss

        k = args.qpth_jets
        qpth = timed(EMDLoss(num_particles=30), x[:k], y[:k], None, 1) * 100 / k
        results[f"jetnet qpth EMDLoss (from {k} jets, x{100 // k})"] = qpth
    except ImportError:
        qpth = 377.0
        print("qpth not installed (pip install qpth): using the issue's 377 s")
    print(f"{'jetnet qpth EMDLoss, scaled to 100 jets':42s} {qpth * 1e3:10.2f} ms per batch")
    for name in ("emd exact (POT)", "emd sinkhorn (geomloss)"):
        print(
            f"{name}: {qpth / results[name]:,.0f}x faster than qpth, "
            f"{results[name] / results['chamfer']:.1f} Chamfer calls"
        )


if __name__ == "__main__":
    main()
