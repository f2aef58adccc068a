"""ConVAE training throughput on the CPU: jets/s for forward + backward + optimizer step.

The research code's architecture (n_filter 50, latent 30, dense 1500, P = 30) with its loss
(Chamfer + jet terms + KL, its weighting), batches of 100 and 1024, plus the time of one
Chamfer call.
That model costs ~100 MFLOP per jet per step; this machine does ~310 GFLOP/s in a large
matrix product, so ~3000 jets/s is the ceiling: the fraction reached is printed.

    python benchmarks/convae_throughput.py [--threads 2] [--steps 20]
"""

from __future__ import annotations

import argparse
import time

import torch

from convae.losses import chamfer
from convae.model import ConVAE
from convae.train import OPTIMIZERS, ConVAELoss, LossConfig

CEILING = 3000.0  # jets/s, from the issue: ~100 MFLOP/jet/step at ~310 GFLOP/s


def throughput(batch: int, steps: int, precision: str) -> float:
    """Training jets/s with the research code's model and loss at this batch size and precision."""
    torch.manual_seed(0)
    model = ConVAE()
    opt = OPTIMIZERS["adam"](model.parameters(), lr=1e-4)  # what fit uses (fused Adam)
    objective = ConVAELoss(LossConfig(), gamma_2=10.0, normalization=None, precision=precision)
    x = torch.rand(batch, 30, 3)
    mask = torch.rand(batch, 30) < 0.9
    for step in range(steps + 3):  # 3 warm-up steps
        if step == 3:
            start = time.perf_counter()
        loss, _ = objective(model, x, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    x, y = torch.rand(100, 30, 3), torch.rand(100, 30, 3, requires_grad=True)
    start = time.perf_counter()
    for _ in range(100):
        chamfer(x, y).sum().backward()
    print(f"Chamfer, batch 100 x 30, forward+backward: {(time.perf_counter() - start) * 10:.3f} ms")
    for precision in ("fp32", "bf16"):
        for batch in (100, 1024):
            rate = throughput(batch, args.steps, precision)
            print(
                f"{precision} batch {batch:5d}: {rate:6.0f} training jets/s = "
                f"{rate / CEILING:.0%} of the ~{CEILING:.0f} jets/s ceiling, "
                f"{rate / 49:.0f}x the research code's 49 jets/s"
            )


if __name__ == "__main__":
    main()
