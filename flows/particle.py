"""Direct generation: a flow on the flattened (P x 3) particles, conditioned on jet context.

Target: pt-sorted jets, each particle as (eta_rel, phi_rel, log pt_rel), standardized with
statistics of real particles. Padding is handled honestly by *dequantization*: padded slots
hold standard-normal noise (independent of everything), the flow is conditioned on the
multiplicity n, and after sampling only the first n slots are kept. The flow therefore never
has to put mass on an exact zero (a delta it cannot represent), and no padded value is ever
read as a particle.

Context: JetFlow (arXiv:2211.13630) missed the jet-mass distribution until it was
conditioned on jet mass and n, so the particle flow takes context = (mass, n) (configurable,
optionally with sum(pt_rel)), plus the class through the flow's embedding. A small jet-level
flow on (log mass, n + u[, sum pt_rel]), u ~ U(0, 1) dequantizing the integer n, samples that
context, so that unconditional sampling of a class still works: jet flow -> context -> particle
flow -> particles.

The jet axis: eta_rel and phi_rel are relative to the jet axis, so the pt-weighted centroid of a
real jet's particles is ~0 (std 0.01-0.02, against 0.15 for one particle's eta_rel). A flow that
samples every particle's angles has to learn this as a correlation among 2P coordinates, and
coupling flows did not (the generated axis spread came out far too wide). With ``centroid`` the
leading particle's (eta, phi) are replaced by the jet's centroid, an invertible change of
variables given the pts (the leading particle has >= 6% of the jet's pt), so the flow models the
axis as one narrow 2-D marginal and `decode` solves for the leading particle's angles.

The jet mass and sum(pt_rel): conditioning on them is not enough for a coupling flow on 90
coordinates (it misses the mass distribution, and a few jets have sum(pt_rel) well above 1,
which real jets never exceed, inflating FPD; measured: docs/benchmarks.md). With ``project`` each
generated jet's pts are scaled to the sum(pt_rel) the jet flow sampled (when it is a context)
and its angles dilated about its axis to the sampled mass (mass grows linearly with the angular
size at fixed pts): a projection onto the constraints the flow was conditioned on, optional,
and reported beside the flow's raw output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flows.models import Flow
from jetflows.errors import UserError
from jetflows.normalize import Normalization, fit_normalization
from jetflows.physics import ETA, JET_QUANTITIES, PHI, PT, jet_observables, jet_quantities

PT_FLOOR = 1e-6  # log of pt_rel: real particles have pt_rel > 0; the floor guards the log


#: name -> jet-level observable (N,) (`jetflows.physics.JET_QUANTITIES`).
CONTEXTS = JET_QUANTITIES
#: what the jet flow always samples (a flow needs >= 2 features); other contexts are added
JET_BASE = ("mass", "multiplicity")


def check_context(context: tuple[str, ...]) -> None:
    """A particle flow's context must name `CONTEXTS` and include "multiplicity" (ValueError)."""
    if "multiplicity" not in context or set(context) - set(CONTEXTS):
        raise UserError(
            f"context must include 'multiplicity' and use names in {sorted(CONTEXTS)}, "
            f"got {list(context)}"
        )


def jet_names(context: tuple[str, ...]) -> tuple[str, ...]:
    """The jet flow's columns for a particle-flow ``context``: `JET_BASE` and the rest of
    ``context``, in `CONTEXTS` order."""
    return tuple(n for n in CONTEXTS if n in JET_BASE or n in context)


def centroid(particles: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """pt-weighted mean (eta_rel, phi_rel) of the real particles: (N, 2); ~the jet axis."""
    pt = particles[..., PT] * mask  # (N, P)
    return (pt[..., None] * particles[..., :PT]).sum(1) / pt.sum(1, keepdim=True).clamp_min(1e-12)


@dataclass(frozen=True)
class ParticleTarget:
    """Preprocessing of the particle flow's data, fitted on the training jets.

    Arguments:
        num_particles: P.
        context: names in `CONTEXTS` the particle flow is conditioned on ("multiplicity" is
            required: it decides which slots are real).
        features: `Normalization` of (eta_rel, phi_rel, log pt_rel) of real particles.
        jet: `Normalization` of the jet-level rows (`jet_names`): what the jet flow models,
            (log mass, n) and any other context; the particle flow sees ``context``.
        centroid: `Normalization` of the jets' pt-weighted (eta, phi) centroid, which then
            replaces the leading particle's angles in the flow's data (module docstring);
            None: every particle's own angles.
        project: `generate` projects each jet onto its sampled mass and sum(pt_rel)
            (`project_to_context`).
    """

    num_particles: int
    context: tuple[str, ...]
    features: Normalization
    jet: Normalization
    centroid: Normalization | None = None
    project: bool = False

    @property
    def jet_names(self) -> tuple[str, ...]:
        """The jet flow's columns, in `CONTEXTS` order."""
        return jet_names(self.context)

    def to_dict(self) -> dict[str, object]:
        """Plain-Python form, for checkpoints."""
        return {
            "num_particles": self.num_particles,
            "context": list(self.context),
            "features": self.features.to_dict(),
            "jet": self.jet.to_dict(),
            "centroid": None if self.centroid is None else self.centroid.to_dict(),
            "project": self.project,
        }

    @classmethod
    def from_dict(cls, state: dict[str, object]) -> ParticleTarget:
        """Rebuild from `to_dict` output."""
        return cls(
            int(state["num_particles"]),
            tuple(state["context"]),
            Normalization.from_dict(state["features"]),
            Normalization.from_dict(state["jet"]),
            None if state.get("centroid") is None else Normalization.from_dict(state["centroid"]),
            bool(state.get("project", False)),
        )


def _check_jets(particles: torch.Tensor, mask: torch.Tensor) -> None:
    if particles.dim() != 3 or particles.shape[2] != 3 or mask.shape != particles.shape[:2]:
        raise UserError(
            f"particles must be (N, P, 3) with a mask (N, P), got {tuple(particles.shape)} "
            f"and {tuple(mask.shape)}"
        )
    if not torch.isfinite(particles).all():
        raise UserError("particles contain NaN or inf")
    if (mask.sum(1) == 0).any():
        raise UserError("every jet needs at least one particle")


def _log_pt(particles: torch.Tensor) -> torch.Tensor:
    pt = particles[..., PT].clamp_min(PT_FLOOR).log()
    return torch.stack([particles[..., ETA], particles[..., PHI], pt], -1)


def jet_context(
    particles: torch.Tensor, mask: torch.Tensor, names: tuple[str, ...] = tuple(CONTEXTS)
) -> torch.Tensor:
    """Raw jet-level rows (N, len(names)) of particles (N, P, 3) (`jet_quantities`)."""
    return jet_quantities(particles, mask, names)


def _columns(target: ParticleTarget) -> list[int]:
    return [target.jet_names.index(name) for name in target.context]


N_COLUMN = JET_BASE.index("multiplicity")  # in every target's `jet_names`


def fit_target(
    particles: torch.Tensor,
    mask: torch.Tensor,
    *,
    context: tuple[str, ...] = ("mass", "multiplicity"),
    use_centroid: bool = False,
    project: bool = False,
) -> ParticleTarget:
    """Fit the preprocessing on training jets: particles (N, P, 3), mask (N, P).

    ``use_centroid``, ``project``: `ParticleTarget`'s ``centroid`` and ``project``.
    """
    _check_jets(particles, mask)
    check_context(context)
    return ParticleTarget(
        particles.shape[1],
        tuple(context),
        fit_normalization(_log_pt(particles), mask),
        fit_normalization(jet_context(particles, mask, jet_names(context))),
        fit_normalization(centroid(particles, mask)) if use_centroid else None,
        project,
    )


def encode(
    particles: torch.Tensor,
    mask: torch.Tensor,
    target: ParticleTarget,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Jets -> flow data.

    Arguments:
        particles: (N, P, 3) pt-sorted, zero-padded; mask (N, P).
        target: from `fit_target`.
        generator: for the padding noise and the dequantization of n.

    Returns:
        x (N, 3P) for the particle flow, its context (N, C) (standardized), and the jet-level
        flow's data (N, 2): standardized (log mass, n) with n dequantized by U(0, 1) noise.
    """
    _check_jets(particles, mask)
    if particles.shape[1] != target.num_particles:
        raise UserError(f"the target was fitted for P = {target.num_particles} particles")
    x = target.features.transform(_log_pt(particles), mask)
    if target.centroid is not None:  # the leading particle's angles -> the jet's centroid
        x[:, 0, :PT] = target.centroid.transform(centroid(particles, mask))
    noise = torch.randn(x.shape, generator=generator)
    x = torch.where(mask[..., None], x, noise).flatten(1)
    raw = jet_context(particles, mask, target.jet_names)
    jitter = torch.zeros_like(raw)
    jitter[:, N_COLUMN] = torch.rand(len(raw), generator=generator)
    context = target.jet.transform(raw)[:, _columns(target)]
    return x, context, target.jet.transform(raw + jitter)


def decode(
    x: torch.Tensor, multiplicity: torch.Tensor, target: ParticleTarget
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow output x (n, 3P) and n (n,) -> particles (n, P, 3) pt-sorted, zero-padded, mask."""
    P = target.num_particles
    mask = torch.arange(P, device=x.device)[None] < multiplicity[:, None]
    x = x.reshape(len(x), P, 3)  # (n, P, 3)
    feats = target.features.inverse(x)
    particles = torch.stack([feats[..., ETA], feats[..., PHI], feats[..., PT].exp()], -1)
    particles = particles * mask[..., None]
    if target.centroid is not None:
        particles = _solve_leading(particles, target.centroid.inverse(x[:, 0, :PT]))
    order = particles[..., PT].argsort(dim=1, descending=True)  # padding (pt 0) sorts last
    return particles.gather(1, order[..., None].expand_as(particles)), mask


ANGLE_LIMIT = 1.0  # |eta_rel|, |phi_rel| of a solved leading particle (jets have R = 0.8)


def _solve_leading(particles: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """Leading particle's angles such that the pt-weighted centroid is ``axis`` (n, 2).

    particles: (n, P, 3) zero-padded, slot 0 the leading particle (its angles are overwritten).
    """
    pt = particles[..., PT]  # (n, P), 0 on padding
    rest = (pt[:, 1:, None] * particles[:, 1:, :PT]).sum(1)  # (n, 2)
    lead = (axis * pt.sum(1, keepdim=True) - rest) / pt[:, :1].clamp_min(1e-12)
    particles = particles.clone()
    particles[:, 0, :PT] = lead.clamp(-ANGLE_LIMIT, ANGLE_LIMIT)
    return particles


RATIO_LIMIT = 3.0  # a scaling beyond 3x (or 1/3x) is not a correction but a new jet
REACH = 1.0  # farthest particle from the axis a dilation may make (99% of real jets: 0.8-1.3)


def project_to_context(
    particles: torch.Tensor,
    mask: torch.Tensor,
    mass: torch.Tensor,
    pt_sum: torch.Tensor | None = None,
    *,
    iterations: int = 2,
) -> torch.Tensor:
    """Scale each jet's pts to ``pt_sum``, then dilate its angles about its pt-weighted axis so
    that its mass is ``mass``.

    particles: (n, P, 3), mask (n, P); mass, pt_sum (n,) relative (m / pt_jet, sum pt_rel).
    The axis and the pt ordering stay; each factor is limited to [1/3, 3], and a dilation stops
    where the farthest particle reaches `REACH` from the axis. Mass is linear in
    the angular size only for small angles, so the dilation is applied twice (the second pass
    corrects ~1e-3).
    """
    if pt_sum is not None:
        now = JET_QUANTITIES["pt_sum"](particles, mask).clamp_min(1e-6)
        scale = (pt_sum / now).clamp(1 / RATIO_LIMIT, RATIO_LIMIT)[:, None]
        particles = torch.cat([particles[..., :PT], particles[..., PT:] * scale[..., None]], -1)
    axis = centroid(particles, mask)[:, None]  # (n, 1, 2)
    offsets, total = particles[..., :PT] - axis, torch.ones_like(mass)  # total dilation so far
    # never widen a jet beyond REACH (its farthest particle from the axis), unless it already
    # was: a dilated wide-angle particle is a jet no detector saw (gluons: EFP outliers)
    reach = (offsets.norm(dim=-1) * mask).amax(1).clamp_min(1e-6)  # (n,)
    widest = (REACH / reach).clamp(1.0, RATIO_LIMIT)
    for _ in range(iterations):
        now = jet_observables(particles, mask)["mass"].clamp_min(1e-6)
        total = torch.minimum((total * mass / now).clamp_min(1 / RATIO_LIMIT), widest)
        angles = axis + offsets * total[:, None, None]  # (n, P, 2)
        particles = torch.cat([angles, particles[..., PT:]], -1) * mask[..., None]
    return particles


def sample_jet_rows(
    jet_flow: Flow,
    n: int,
    target: ParticleTarget,
    *,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    kinematics: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The jet flow's n rows, raw (n, len(jet_names)) with integer multiplicities, and the
    particle-level context (n, C) they give (standardized); see `generate`."""
    raw = target.jet.inverse(jet_flow.sample(n, kinematics, labels, generator=generator))
    # undo the dequantization: the particle flow was trained on the integer n
    raw[:, N_COLUMN] = raw[:, N_COLUMN].floor().clamp(1, target.num_particles)
    return raw, target.jet.transform(raw)[:, _columns(target)]


def finish(
    x: torch.Tensor, raw: torch.Tensor, target: ParticleTarget, *, project: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Particle-level output x (n, 3P) of jets whose jet rows are ``raw`` -> (particles
    (n, P, 3), mask (n, P)), projected onto the rows' mass and sum pt when ``project`` (None:
    as the target says)."""
    particles, mask = decode(x, raw[:, N_COLUMN].long(), target)
    if target.project if project is None else project:
        names = target.jet_names
        mass = raw[:, names.index("mass")].exp()  # the context is log(m / pt_jet)
        pt_sum = raw[:, names.index("pt_sum")] if "pt_sum" in names else None
        particles = project_to_context(particles, mask, mass, pt_sum)
    return particles, mask


@torch.no_grad()
def generate(
    particle_flow: Flow,
    jet_flow: Flow,
    n: int,
    target: ParticleTarget,
    *,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    project: bool | None = None,
    kinematics: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """n jets: jet flow -> (mass, n) -> particle flow -> (particles (n, P, 3), mask (n, P)).

    ``kinematics`` (n, C): for a jet flow conditioned on each jet's kinematics (its pt, eta).

    ``labels`` (n,): class indices, for flows built with ``num_classes`` > 0.
    ``project``: onto the sampled mass and sum pt (`project_to_context`); None: as the target
    says.
    """
    raw, context = sample_jet_rows(
        jet_flow, n, target, labels=labels, generator=generator, kinematics=kinematics
    )
    x = particle_flow.sample(n, context, labels, generator=generator)
    return finish(x, raw, target, project=project)
