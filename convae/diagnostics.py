"""Does the ConVAE use its latent? Reconstructions against their inputs and against other jets.

A falling loss says nothing about whether the decoder listens to the encoder: a ConVAE that
decodes every jet to one average jet still lowers its loss. These figures show that at once:

- per-jet exact EMD(input, reconstruction) against EMD(input, another real jet of the set):
  a collapsed model reconstructs a jet no better than a random other jet does (ratio ~1);
- Pearson correlation of input vs reconstructed jet mass, sum of pt_rel, the N-subjettiness
  ratios tau21 and tau32 and D2 (0 if collapsed): mass and spread can be right while the prongs
  are lost (a three-prong top jet decoded as one smeared blob keeps its mass, not its tau32);
- per observable, the medians of inputs and reconstructions and the W1 distance between the
  reconstructions of half the jets and the inputs of the other half, over the same W1 between
  the two halves' inputs (the truth floor): ~1 when the reconstructions are distributed as
  real jets are, however each jet is reconstructed;
- the spread ratio per feature: std across jets of each pt-ordered particle slot, reconstruction
  over input, averaged over slots (0 if every jet decodes to the same jet, 1 if the variation
  is kept). The same ratio between generated and real jets measures a generator's spread.

Example:
    >>> import torch
    >>> x = torch.rand(64, 30, 3)
    >>> mask = torch.ones(64, 30, dtype=torch.bool)
    >>> d = reconstruction_diagnostics(x, mask, x.clone(), mask)
    >>> round(d.emd_ratio, 3), round(d.spread["eta"], 3)
    (0.0, 1.0)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from convae.losses import emd
from convae.model import ConVAE, decoded_particles
from jetflows.errors import UserError
from jetflows.normalize import Normalization
from jetflows.physics import PT, d2, jet_observables, sort_by_pt, tau_ratios
from jetflows.spread import spread_ratio

#: Jet quantities whose input-vs-reconstruction correlation is reported.
CORRELATED: tuple[str, ...] = ("mass", "pt_sum", "tau21", "tau32", "d2")


@dataclass(frozen=True)
class ReconstructionDiagnostics:
    """Figures of reconstruction quality on a set of held-out jets.

    Arguments:
        n_jets: jets compared.
        emd_reconstruction: median per-jet EMD(input, its reconstruction).
        emd_other: median per-jet EMD(input, another random input jet).
        emd_ratio: emd_reconstruction / emd_other (a collapsed model: ~1; target < 1/3).
        correlation: {mass, pt_sum, tau21, tau32, d2}: Pearson r of input vs reconstruction.
        rank_correlation: the same as Spearman rank correlations (robust to D2's long tail,
            where a few jets with a tiny e2 dominate Pearson's r).
        median: {quantity: {"input": .., "reconstruction": ..}}.
        w1: {quantity: {"value", "floor", "ratio"}}: W1(reconstructions of one half, inputs of
            the other half), W1 between the halves' inputs, and their ratio (target <= 3).
        spread: {eta, phi, pt}: std across jets per particle slot, reconstruction / input,
            averaged over slots (a collapsed model: ~0; target >= 0.8).
    """

    n_jets: int
    emd_reconstruction: float
    emd_other: float
    emd_ratio: float
    correlation: dict[str, float]
    rank_correlation: dict[str, float]
    median: dict[str, dict[str, float]]
    w1: dict[str, dict[str, float]]
    spread: dict[str, float]

    def to_dict(self) -> dict[str, object]:
        """Plain-Python form, for JSON."""
        return asdict(self)


def jet_quantities(particles: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Relative-frame jet mass, sum of pt_rel, tau21, tau32 and D2: particles (N, P, 3) ->
    {name: (N,)} float64, in the order of `CORRELATED`."""
    x = particles.double()
    tau21, tau32 = tau_ratios(x, mask).unbind(1)
    return {
        "mass": jet_observables(x, mask)["mass"],
        "pt_sum": (x[..., PT] * mask).sum(1),
        "tau21": tau21,
        "tau32": tau32,
        "d2": d2(x, mask),
    }


def _w1(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(a.numpy(), b.numpy()))


def _w1_to_floor(
    q_in: torch.Tensor, q_rec: torch.Tensor, half: torch.Tensor, other: torch.Tensor
) -> dict[str, float]:
    """W1(reconstructions of ``half``, inputs of ``other``) against W1 of the two halves'
    inputs: the same sample sizes on both sides, so the ratio is ~1 for a faithful model."""
    value, floor = _w1(q_rec[half], q_in[other]), _w1(q_in[half], q_in[other])
    return {"value": value, "floor": floor, "ratio": value / floor if floor > 0 else math.nan}


def _constant(a: torch.Tensor) -> bool:
    """All values equal up to rounding (a collapsed generator's observables differ by ~1e-16:
    batched matrix products round identical jets differently)."""
    return bool((a.max() - a.min()) <= 1e-9 * a.abs().max().clamp_min(1e-300))


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    if _constant(a) or _constant(b):
        return 0.0
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum().item() / (a.norm() * b.norm()).item())


def _ranks(a: torch.Tensor) -> torch.Tensor:
    return a.argsort().argsort().double()  # ties broken by order: fine for continuous values


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return 0.0 if _constant(a) or _constant(b) else _pearson(_ranks(a), _ranks(b))


def keep_hardest(
    particles: torch.Tensor, counts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each jet by decreasing pt and keep its ``counts`` hardest particles (pt > 0).

    particles (N, P, 3), counts (N,) -> particles (N, P, 3) with zero padding, mask (N, P).
    """
    x = sort_by_pt(particles)
    mask = torch.arange(x.shape[1], device=x.device)[None] < counts[:, None]
    mask = mask & (x[..., PT] > 0)  # a decoded particle without pt is no particle
    return x * mask[..., None], mask


@torch.no_grad()
def reconstruct(
    model: ConVAE,
    particles: torch.Tensor,
    mask: torch.Tensor,
    *,
    normalization: Normalization | None,
    batch_size: int = 2048,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode the posterior mean of each jet, in physical units, with the input's multiplicity.

    The decoder always emits P particles; each reconstruction keeps as many of its hardest
    particles as its input has (fewer if some decode to pt_rel <= 0: those are dropped), so the
    comparison is particle for particle. A conditional decoder (`ConVAEConfig.condition`) is
    told the input jet's quantities.

    Arguments:
        particles: (N, P, 3) in physical units; mask: (N, P).
        normalization: the model's input map (None: the model sees physical units).

    Returns:
        reconstruction (N, P, 3), its mask (N, P).
    """
    model.eval()
    device = next(model.parameters()).device
    out = []
    for x, m in zip(particles.split(batch_size), mask.split(batch_size), strict=True):
        x, m = x.to(device), m.to(device)
        seen = normalization.transform(x, m) if normalization is not None else x
        told = model.condition_of(x, m)  # the input's own, for a conditional decoder
        out.append(decoded_particles(model.reconstruct(seen, told), normalization).cpu())
    return keep_hardest(torch.cat(out), mask.sum(1))


def reconstruction_diagnostics(
    particles: torch.Tensor,
    mask: torch.Tensor,
    recon: torch.Tensor,
    recon_mask: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    quantities: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None,
) -> ReconstructionDiagnostics:
    """Compare each jet with its reconstruction and with another real jet.

    Arguments:
        particles, mask: (N, P, 3), (N, P) input jets in physical units (N >= 2).
        recon, recon_mask: their reconstructions (`reconstruct`).
        generator: seeds the pairing of each jet with another one.
        quantities: `jet_quantities` of the inputs and of the reconstructions, when the caller
            has them already (they take two kT clusterings per jet); else computed here.

    Returns:
        `ReconstructionDiagnostics`.
    """
    if len(particles) < 2 or recon.shape != particles.shape:
        raise UserError(
            f"need >= 2 jets and reconstructions of the same shape, got {tuple(particles.shape)} "
            f"and {tuple(recon.shape)}"
        )
    x, y = particles.double(), recon.double()
    # another jet for each: a random cyclic pairing, so no jet is paired with itself
    order = torch.randperm(len(x), generator=generator)
    other = torch.empty_like(order)
    other[order] = order.roll(1)
    rec = emd(x, y, mask, recon_mask, method="exact").median().item()
    rand = emd(x, x[other], mask, mask[other], method="exact").median().item()
    q_in, q_rec = quantities or (jet_quantities(x, mask), jet_quantities(y, recon_mask))
    half, rest = order[: len(x) // 2], order[len(x) // 2 :]
    return ReconstructionDiagnostics(
        n_jets=len(x),
        emd_reconstruction=rec,
        emd_other=rand,
        emd_ratio=rec / rand if rand > 0 else float("nan"),
        correlation={k: _pearson(q_in[k], q_rec[k]) for k in CORRELATED},
        rank_correlation={k: _spearman(q_in[k], q_rec[k]) for k in CORRELATED},
        median={
            k: {"input": q_in[k].median().item(), "reconstruction": q_rec[k].median().item()}
            for k in CORRELATED
        },
        w1={k: _w1_to_floor(q_in[k], q_rec[k], half, rest) for k in CORRELATED},
        spread=spread_ratio(y, recon_mask, x, mask),
    )
