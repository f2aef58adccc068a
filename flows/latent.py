"""Two-stage generation: a flow on ConVAE latent vectors, then the ConVAE decoder.

Fit: ``encode_latents`` (posterior means, or draws of q(z|x)) -> `flows.train.fit`.
Generate: flow sample (n, latent) -> decoder -> particles in physical units, sorted by pt, with a
mask from a pt threshold, a multiplicity drawn from the training distribution, or ("joint") a
multiplicity the flow samples together with the latent vector (the decoder always emits P
particles; what counts as real must be decided). Joint masking keeps a jet's multiplicity tied to
the rest of it, as in real jets (a narrow, low-mass gluon jet has few particles): the flow is fit
on (z, n + u), u ~ U(0, 1) dequantizing the integer n (`with_multiplicity`). With ``project`` the
flow also samples the jet's (log mass, sum pt_rel) (`with_jet_observables`) and each decoded jet
is projected onto them (`flows.particle.project_to_context`): the decoder gives the jet's
shape, the flow its mass, which a smooth decoder misses (measured: docs/benchmarks.md). A
conditional ConVAE (`convae.model.ConVAEConfig.condition`: tau21, tau32 ...) has its decoder's
condition sampled by the flow too, as the last columns (`with_condition`).

Example (an untrained pair, for shapes):
    >>> from convae.model import ConVAE, ConVAEConfig
    >>> from flows.models import FlowConfig, build_flow
    >>> vae = ConVAE(ConVAEConfig(n_filter=4, dense_width=32, latent_dim=6))
    >>> flow = build_flow(FlowConfig(transforms=2, hidden_features=16), features=6)
    >>> particles, mask = generate(flow, vae, 5, masking=Masking("threshold", 0.0))
    >>> particles.shape, mask.shape
    (torch.Size([5, 30, 3]), torch.Size([5, 30]))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from convae.model import ConVAE, decoded_particles
from flows.models import Flow
from flows.particle import jet_context, project_to_context
from jetflows.errors import UserError
from jetflows.normalize import Normalization
from jetflows.physics import PT

ENCODINGS = ("mean", "sample")


@torch.no_grad()
def encode_latents(
    convae: ConVAE,
    particles: torch.Tensor,
    *,
    mode: str = "mean",
    batch_size: int = 4096,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Latent vectors (N, latent) of particles (N, P, F) as the ConVAE sees them (normalized).

    ``mode`` "mean" takes the posterior mean; "sample" one draw of q(z|x) per jet.
    """
    if mode not in ENCODINGS:
        raise UserError(f"unknown encoding {mode!r}: use one of {ENCODINGS}")
    convae.eval()
    out = []
    for batch in particles.split(batch_size):
        mean, logvar = convae.encode(batch)
        if mode == "sample":
            noise = torch.randn(mean.shape, generator=generator, device=mean.device)
            mean = mean + noise * torch.exp(0.5 * logvar)
        out.append(mean)
    return torch.cat(out)


def multiplicity_probs(mask: torch.Tensor) -> torch.Tensor:
    """Empirical distribution of the number of particles: mask (N, P) -> probabilities (P + 1,)."""
    counts = torch.bincount(mask.sum(1).long(), minlength=mask.shape[1] + 1)
    return counts.double().div(counts.sum()).float()


def _by_threshold(
    pt: torch.Tensor, masking: Masking, labels: torch.Tensor | None, g: torch.Generator | None
) -> torch.Tensor:
    return pt > masking.pt_threshold


def _by_multiplicity(
    pt: torch.Tensor, masking: Masking, labels: torch.Tensor | None, g: torch.Generator | None
) -> torch.Tensor:
    if masking.probs is None:
        raise UserError("masking by multiplicity needs the training multiplicity probs")
    probs = masking.probs if masking.probs.dim() == 2 else masking.probs[None]
    rows = probs[labels.long()] if labels is not None and len(probs) > 1 else probs[[0] * len(pt)]
    counts = torch.multinomial(rows, 1, generator=g).squeeze(1)  # (n,)
    # pt is sorted in decreasing order: the hardest `count` particles are the real ones
    return torch.arange(pt.shape[1], device=pt.device)[None] < counts[:, None].to(pt.device)


def _by_flow(
    pt: torch.Tensor, masking: Masking, labels: torch.Tensor | None, g: torch.Generator | None
) -> torch.Tensor:
    raise UserError("joint masking takes each jet's multiplicity from the latent flow's sample")


#: method -> (pt (n, P) sorted decreasing, masking, labels, generator) -> mask (n, P).
MASKINGS: dict[str, Callable[..., torch.Tensor]] = {
    "threshold": _by_threshold,
    "multiplicity": _by_multiplicity,
    "joint": _by_flow,
}
#: maskings whose flow samples (z, n): one feature more than the latent space
JOINT = ("joint",)


def with_multiplicity(
    z: torch.Tensor, mask: torch.Tensor, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The joint flow's data: latents z (N, L) and each jet's n + u, u ~ U(0, 1): (N, L + 1).

    mask: (N, P) of the encoded jets.
    """
    u = torch.rand(len(z), generator=generator, device=z.device)
    return torch.cat([z, (mask.sum(1).to(z) + u)[:, None]], 1)


def with_jet_observables(
    z: torch.Tensor,
    particles: torch.Tensor,
    mask: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The projecting flow's data: (z, n + u, log mass, sum pt_rel): (N, L + 3).

    particles: (N, P, 3) physical units, mask (N, P) of the encoded jets.
    """
    rows = jet_context(particles, mask, ("mass", "pt_sum")).to(z)  # the particle flow's own
    return torch.cat([with_multiplicity(z, mask, generator=generator), rows], 1)


def with_condition(
    rows: torch.Tensor, convae: ConVAE, particles: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """The flow's data (N, K) with the ConVAE decoder's condition of the jets appended:
    (N, K + C); unchanged for an unconditional ConVAE.

    particles: (N, P, 3) physical units, mask (N, P) of the encoded jets.
    """
    condition = convae.condition_of(particles, mask)
    return rows if condition is None else torch.cat([rows, condition.to(rows)], 1)


def _first(counts: torch.Tensor, num_particles: int) -> torch.Tensor:
    """Mask (n, P) of the first ``counts`` (n,) slots (the hardest particles)."""
    return torch.arange(num_particles, device=counts.device)[None] < counts[:, None]


@dataclass(frozen=True)
class Masking:
    """Which decoded particles are real.

    Arguments:
        method: "threshold" (pt_rel > ``pt_threshold``), "multiplicity" (the hardest n, with
            n drawn from ``probs``) or "joint" (the hardest n, n sampled by the flow with z).
        pt_threshold: in pt_rel units.
        probs: (P + 1,) or (K classes, P + 1) multiplicity probabilities (`multiplicity_probs`).
    """

    method: str = "threshold"
    pt_threshold: float = 1e-3
    probs: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.method not in MASKINGS:
            raise UserError(f"unknown masking {self.method!r}: use one of {sorted(MASKINGS)}")


def to_jets(
    decoded: torch.Tensor,
    *,
    normalization: Normalization | None,
    masking: Masking,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    counts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder output (n, P, 3) -> particles (n, P, 3) in physical units, pt-sorted, and mask.

    Padding is exactly zero; pt_rel is clamped at 0 (an identity output layer can go below).
    ``counts`` (n,): multiplicities sampled with the latents (joint masking); they decide.
    """
    x = decoded_particles(decoded, normalization)
    if counts is not None:
        # the jet has the multiplicity its model sampled (dropping the chosen particles the
        # decoder gave pt <= 0 made top jets' multiplicity 274x the floor): such a particle
        # keeps its direction and takes the jet's softest decoded pt
        mask = _first(counts.to(x.device), x.shape[1])
        x = torch.cat([x[..., :PT], _soft_floor(x[..., PT], mask)[..., None]], -1)
    else:
        mask = MASKINGS[masking.method](x[..., PT], masking, labels, generator)
        mask = mask & (x[..., PT] > 0)  # a decoded particle without pt is no particle
    return x * mask[..., None], mask


#: the pt_rel of a chosen particle in a jet whose decoded pts are all <= 0 (a soft particle)
SOFTEST_PT = 1e-4


def _soft_floor(pt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """pt (n, P) with each chosen (``mask``) pt <= 0 raised to the smallest positive pt of its
    jet's chosen particles (`SOFTEST_PT` where none is positive)."""
    positive = mask & (pt > 0)
    softest = torch.where(positive, pt, torch.full_like(pt, torch.inf)).amin(1, keepdim=True)
    softest = torch.where(torch.isfinite(softest), softest, torch.full_like(softest, SOFTEST_PT))
    return torch.where(mask & (pt <= 0), softest.expand_as(pt), pt)


@torch.no_grad()
def generate(
    flow: Flow,
    convae: ConVAE,
    n: int,
    *,
    masking: Masking,
    normalization: Normalization | None = None,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    project: bool = False,
    context: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """n jets: flow sample (n, latent) -> decoder -> (particles (n, P, 3), mask (n, P)).

    ``context`` (n, C): for a flow conditioned on each jet's context (e.g. its kinematics).

    ``labels`` (n,) are the class indices for a class-conditional flow. With joint masking the
    flow samples (z, n + u) (`with_multiplicity`); with ``project`` (joint masking only) also
    (log mass, sum pt_rel), onto which each jet is projected (`with_jet_observables`); and
    last the condition of a conditional ConVAE's decoder (`with_condition`).
    """
    joint = masking.method in JOINT
    if project and not joint:
        raise UserError("projecting onto sampled jet observables needs masking 'joint'")
    latent_dim, told = convae.config.latent_dim, len(convae.config.condition)
    extra = int(joint) + 2 * int(project)
    if flow.features != latent_dim + extra + told:
        raise UserError(
            f"the flow has {flow.features} features but the ConVAE's latent space has "
            f"{latent_dim}"
            + (f" (+{extra} for the jet's n, mass, pt)" if extra else "")
            + (f" (+{told} for its decoder's condition)" if told else "")
        )
    convae.eval()
    sample = flow.sample(n, context, labels, generator=generator)
    z, jet = sample[:, :latent_dim], sample[:, latent_dim : latent_dim + extra]
    condition = sample[:, latent_dim + extra :] if told else None
    counts = None
    if joint:  # undo the dequantization: floor, within 1..P
        counts = jet[:, 0].floor().clamp(1, convae.config.num_particles).long()
    particles, mask = to_jets(
        convae.decode(z, condition),
        normalization=normalization,
        masking=masking,
        labels=labels,
        generator=generator,
        counts=counts,
    )
    if project:
        particles = project_to_context(particles, mask, jet[:, 1].exp(), jet[:, 2])
    return particles, mask
