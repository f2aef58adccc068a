"""Flow speed on the CPU: sampling 10,000 jets per flow type and target, and training throughput.

Targets:
- latent: a flow on a ConVAE's 30-d latent space, then its decoder (default: the research
  code's, 11.2M parameters; --dense-width/--n-filter for smaller ones) and the pt-threshold
  mask: the two-stage generator end to end.
- particles: the jet-level flow (log mass, n) then the particle flow on 30 x 3 features
  conditioned on (mass, n), then decoding (sorting, mask).
Timings are of untrained models (the cost does not depend on the weights). Every flow here has
the registry's default size (6 transforms, width 128, 2 hidden layers, 8 bins).
Training throughput: forward + backward + Adam step of the NLL at batch 1024, vectors/s.

    python benchmarks/flow_sampling.py [--threads 2] [--n 10000] [--kinds zuko_nsf_coupling,...]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from convae.model import ConVAE, ConVAEConfig
from flows import latent, particle
from flows.models import FLOWS, FlowConfig, build_flow
from flows.train import nll
from jetflows.normalize import Normalization
from jetflows.training import OPTIMIZERS

P = 30


def _best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _target() -> particle.ParticleTarget:
    unit = Normalization("standard", (0.0, 0.0, -4.0), (0.1, 0.1, 1.0))
    return particle.ParticleTarget(
        P, ("mass", "multiplicity"), unit, Normalization("standard", (-2.0, 20.0), (0.5, 8.0))
    )


def _batched(fn: Callable[[int], object], n: int, batch: int) -> Callable[[], None]:
    return lambda: [fn(len(chunk)) for chunk in torch.arange(n).split(batch)]


def sampling(kind: str, n: int, batch: int, vae_config: ConVAEConfig) -> dict[str, float]:
    """Seconds to sample n jets in batches with a `kind` flow, latent + decode and particles."""
    torch.manual_seed(0)
    cfg = FlowConfig(kind=kind)
    vae = ConVAE(vae_config).eval()
    flow = build_flow(cfg, features=vae.config.latent_dim).eval()
    masking = latent.Masking("threshold", 1e-3)
    g = torch.Generator()
    seconds = {
        "latent": _best_of(
            _batched(
                lambda k: latent.generate(flow, vae, k, masking=masking, generator=g), n, batch
            )
        ),
        "latent_flow_only": _best_of(_batched(lambda k: flow.sample(k, generator=g), n, batch)),
    }
    pflow = build_flow(cfg, features=3 * P, context=2).eval()
    jflow = build_flow(cfg, features=2).eval()
    target = _target()
    seconds["particles"] = _best_of(lambda: particle.generate(pflow, jflow, n, target, generator=g))
    return seconds


def training(kind: str, features: int, context: int, batch: int = 1024, steps: int = 10) -> float:
    """NLL training vectors/s (forward, backward, Adam step)."""
    torch.manual_seed(0)
    flow = build_flow(FlowConfig(kind=kind), features=features, context=context)
    opt = OPTIMIZERS["adam"](flow.parameters(), lr=1e-4)
    x = torch.randn(batch, features)
    c = torch.randn(batch, context) if context else None

    def step() -> None:
        loss, _ = nll(flow, x, c, None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return batch / _best_of(lambda: [step() for _ in range(steps)], repeats=1) * steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--kinds", default=",".join(FLOWS))
    parser.add_argument("--batch-size", type=int, default=1000, help="jets per sampling call")
    parser.add_argument("--dense-width", type=int, default=1500, help="ConVAE (seed: 1500)")
    parser.add_argument("--n-filter", type=int, default=50, help="ConVAE (seed: 50)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vae_config = ConVAEConfig(dense_width=args.dense_width, n_filter=args.n_filter)
    size = sum(p.numel() for p in ConVAE(vae_config).parameters())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, n = {args.n} jets in "
        f"batches of {args.batch_size}, ConVAE {size:,} parameters"
    )
    header = (
        f"{'flow':22s} {'latent+decode':>14s} {'(flow only)':>12s} {'particles':>10s}"
        f" {'jets/s latent':>14s} {'jets/s particles':>17s}"
        f" {'train latent/s':>15s} {'train particles/s':>18s}"
    )
    print(header)
    for kind in args.kinds.split(","):
        s = sampling(kind, args.n, args.batch_size, vae_config)
        train_latent, train_particles = training(kind, 30, 0), training(kind, 3 * P, 2)
        print(
            f"{kind:22s} {s['latent']:13.3f}s {s['latent_flow_only']:11.3f}s "
            f"{s['particles']:9.3f}s {args.n / s['latent']:14.0f} {args.n / s['particles']:17.0f}"
            f" {train_latent:15.0f} {train_particles:18.0f}"
        )


if __name__ == "__main__":
    main()
