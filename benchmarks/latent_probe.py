"""Does a ConVAE's latent hold a jet's prongs? An MLP probe from the latent to the jet's tau21,
tau32 and log D2.

The probe (two hidden layers of 256, GELU, Adam, 60 epochs) is fitted on the posterior means of
the run's training jets and scored on its held-out test jets (the split of its config), beside
the same correlation of the decoded jets (`convae.diagnostics.reconstruct`). A probe that
recovers an observable no better than the decoder says the latent lacks it: no decoder or
loss can then reconstruct it, and the decoder has to be told it (`convae.condition`). For a
conditional ConVAE the decoded column is told the input's own ratios, so it is no longer a
bound the latent sets: there the probe says how much of them the latent still carries.

    python benchmarks/latent_probe.py --run runs/standard --classes t
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from common import machine_line

from convae.diagnostics import reconstruct
from jetflows.physics import jet_quantities
from pipelines.data.jetnet import read_jetnet_file
from pipelines.run.checkpoints import load_checkpoint
from pipelines.run.config import load_config
from pipelines.run.stages import convae_of, split_jets

NAMES = ("tau21", "tau32", "log D2")


def observables(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, 3): tau21, tau32, log D2 of particles (N, P, 3)."""
    rows = jet_quantities(x, mask, ("tau21", "tau32", "d2")).float()
    return torch.cat([rows[:, :2], rows[:, 2:].clamp_min(1e-3).log()], 1)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson r of two (N,) tensors."""
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def probe(z: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> torch.nn.Module:
    """An MLP z (N, L) -> standardized y (N, K), fitted by mean squared error."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(z.shape[1], 256),
        torch.nn.GELU(),
        torch.nn.Linear(256, 256),
        torch.nn.GELU(),
        torch.nn.Linear(256, y.shape[1]),
    )
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(z)).split(256):
            loss = ((net(z[batch]) - y[batch]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def class_rows(run: Path, jet_class: str, epochs: int) -> list[str]:
    """The probe's and the decoder's r per observable for one class of a run."""
    cfg = load_config(run / "config.yaml").for_class(jet_class)  # its data settings
    vae, norm = convae_of(load_checkpoint(run / jet_class / "convae.pt", "jetflows.convae"), "cpu")
    vae.eval()
    jets = read_jetnet_file(run / jet_class / "data.hdf5", cfg.data.num_particles)
    train, _, test = split_jets(jets, cfg)  # the pipeline's own split
    (x, m), (tx, tm) = (
        (torch.from_numpy(j.particles), torch.from_numpy(j.mask)) for j in (train, test)
    )
    with torch.no_grad():
        z, tz = (vae.encode(norm.transform(a, b))[0] for a, b in ((x, m), (tx, tm)))
    y, ty = observables(x, m), observables(tx, tm)
    z_mean, z_std = z.mean(0), z.std(0).clamp_min(1e-6)  # a collapsed dimension: constant
    y_mean, y_std = y.mean(0), y.std(0)
    net = probe((z - z_mean) / z_std, (y - y_mean) / y_std, epochs, seed=0)
    with torch.no_grad():
        guessed = net((tz - z_mean) / z_std) * y_std + y_mean
    decoded = observables(*reconstruct(vae, tx, tm, normalization=norm))
    return [
        f"| {run.name} | {jet_class} | {name} | {pearson(guessed[:, i], ty[:, i]):.3f} "
        f"| {pearson(decoded[:, i], ty[:, i]):.3f} | {len(tx)} |"
        for i, name in enumerate(NAMES)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", nargs="+", required=True, help="finished two-stage runs")
    parser.add_argument("--classes", default=None, help="default: every class the run has")
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(1)
    np.random.seed(0)
    print(machine_line(), flush=True)
    print("| run | class | observable | r, probe on the latent | r, decoded | jets |")
    print("|---|---|---|---|---|---|")
    for name in args.run:
        run = Path(name)
        classes = args.classes.split(",") if args.classes else None
        for d in sorted(p for p in run.iterdir() if (p / "convae.pt").is_file()):
            if classes is None or d.name in classes:
                print("\n".join(class_rows(run, d.name, args.epochs)), flush=True)


if __name__ == "__main__":
    main()
