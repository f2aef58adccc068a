"""ConVAE losses: particle reconstruction (Chamfer variants, EMD), jet terms, KL, ELBO weights.

Every loss is mask-aware (padding never counts as a particle) and vectorised over the batch:
it takes particles (B, P, F) with masks (B, P) and returns one value per jet (B,), so callers
choose the reduction. Features are (eta_rel, phi_rel, pt_rel): positions are the first two,
the intensity (pt) the third.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable

import numpy as np
import torch

from jetflows.errors import UserError
from jetflows.physics import d2, jet_observables, kt_members, tau_given_members

Loss = Callable[..., torch.Tensor]


def _sq_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (B, P, Q) between x (B, P, D) and y (B, Q, D).

    |x|^2 + |y|^2 - 2 x.y as one batched matrix product: the research code built a (B, B, P, P)
    tensor and took its diagonal, ~20x slower. Clamped at 0 against rounding.
    """
    cross = torch.bmm(x, y.transpose(1, 2))  # (B, P, Q)
    return ((x * x).sum(-1)[:, :, None] + (y * y).sum(-1)[:, None, :] - 2 * cross).clamp_min(0)


def _masks(
    x: torch.Tensor, y: torch.Tensor, mask_x: torch.Tensor | None, mask_y: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks default to all-real; y's defaults to x's when both clouds have P particles."""
    if mask_x is None:
        mask_x = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if mask_y is None:
        mask_y = (
            mask_x
            if y.shape[1] == x.shape[1]
            else torch.ones(y.shape[:2], dtype=torch.bool, device=y.device)
        )
    return mask_x.bool(), mask_y.bool()


def _nearest(
    dist: torch.Tensor, mask_x: torch.Tensor, mask_y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest real partner in each direction: (min over y, argmin) per x, and per y."""
    inf = torch.finfo(dist.dtype).max
    to_y = dist.masked_fill(~mask_y[:, None, :], inf).min(2)  # (B, P) for each x
    to_x = dist.masked_fill(~mask_x[:, :, None], inf).min(1)  # (B, Q) for each y
    return to_y.values, to_y.indices, to_x.values, to_x.indices


def chamfer(
    x: torch.Tensor,
    y: torch.Tensor,
    mask_x: torch.Tensor | None = None,
    mask_y: torch.Tensor | None = None,
) -> torch.Tensor:
    """The research code's eq. 4: sum_i min_j |x_i - y_j|^2 + sum_j min_i |x_i - y_j|^2 per jet.

    Arguments:
        x: (B, P, F) input particles; y: (B, Q, F) reconstruction.
        mask_x, mask_y: (B, P), (B, Q) real particles (default: y uses x's mask when Q == P).

    Returns:
        (B,) losses; symmetric in (x, y); zero for identical clouds.
    """
    term_x, term_y, _ = _chamfer_terms(x, y, *_masks(x, y, mask_x, mask_y))
    return term_x.sum(1) + term_y.sum(1)


def _chamfer_terms(
    x: torch.Tensor, y: torch.Tensor, mask_x: torch.Tensor, mask_y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each real particle's squared distance to its nearest real partner in the other cloud,
    0 on padding: (B, P) for x, (B, Q) for y, and the index in x of each y's partner (B, Q)."""
    d_xy, _, d_yx, i_of_j = _nearest(_sq_distances(x, y), mask_x, mask_y)
    return torch.where(mask_x, d_xy, 0), torch.where(mask_y, d_yx, 0), i_of_j


def chamfer_pt(
    x: torch.Tensor,
    y: torch.Tensor,
    mask_x: torch.Tensor | None = None,
    mask_y: torch.Tensor | None = None,
) -> torch.Tensor:
    """`chamfer` with every nearest-partner distance weighted by the pt share of the input
    particle it involves (its share of the input's pt x the input's multiplicity: mean 1).

    tau_N, the mass and every EFP are pt-weighted sums over the particles; the plain Chamfer
    counts a soft particle's misplacement as much as a hard one's, so a decoder may spread a
    prong's hard core as long as the many soft particles sit right. Each input particle's
    term takes its own share, each reconstructed particle's term the share of the input
    particle nearest to it: the weights come from the input alone, so the decoder cannot
    lower the loss by moving pt off its misplaced particles.

    Arguments:
        x: (B, P, F) input particles, pt_rel >= 0 in feature 2 (physical units);
            y: (B, Q, F) reconstruction.
        mask_x, mask_y: (B, P), (B, Q) real particles (default: y uses x's mask when Q == P).

    Returns:
        (B,) losses; zero for identical clouds.
    """
    mask_x, mask_y = _masks(x, y, mask_x, mask_y)
    term_x, term_y, i_of_j = _chamfer_terms(x, y, mask_x, mask_y)
    share = _pt_fractions(x, mask_x)[0] * mask_x.sum(1, keepdim=True)  # (B, P), mean 1
    return (term_x * share).sum(1) + (term_y * share.gather(1, i_of_j)).sum(1)


def _pt_fractions(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each real particle's share of its cloud's pt (B, P), 0 on padding, and the cloud's sum
    pt (B,). Negative pt (an identity output layer can produce it) carries none: clamped at 0."""
    pt = torch.where(mask, x[..., 2], 0).clamp_min(0)
    total = pt.sum(1)
    return pt / total.clamp_min(1e-12)[:, None], total


def chamfer_positions(
    x: torch.Tensor,
    y: torch.Tensor,
    mask_x: torch.Tensor | None = None,
    mask_y: torch.Tensor | None = None,
) -> torch.Tensor:
    """The research code's eq. 1 (sparse MNIST): Chamfer on the positions (eta, phi) only, as if
    every intensity were 1: where the particles are, not how hard. Returns (B,)."""
    return chamfer(x[..., :2], y[..., :2], mask_x, mask_y)


def nearest_position(
    x: torch.Tensor,
    y: torch.Tensor,
    mask_x: torch.Tensor | None = None,
    mask_y: torch.Tensor | None = None,
) -> torch.Tensor:
    """The research code's eq. 2: match by position (eta, phi), then add the intensity difference.

    sum_i [|pos_i - pos_j(i)|^2 + (pt_i - pt_j(i))^2] with j(i) the nearest y in position,
    plus the same from y to x. Returns (B,).
    """
    mask_x, mask_y = _masks(x, y, mask_x, mask_y)
    d_xy, j_of_i, d_yx, i_of_j = _nearest(_sq_distances(x[..., :2], y[..., :2]), mask_x, mask_y)
    pt_x, pt_y = x[..., 2], y[..., 2]
    term_x = d_xy + (pt_x - pt_y.gather(1, j_of_i)) ** 2
    term_y = d_yx + (pt_y - pt_x.gather(1, i_of_j)) ** 2
    return torch.where(mask_x, term_x, 0).sum(1) + torch.where(mask_y, term_y, 0).sum(1)


def intensity_axis(
    x: torch.Tensor,
    y: torch.Tensor,
    mask_x: torch.Tensor | None = None,
    mask_y: torch.Tensor | None = None,
    *,
    intensity_weight: float = 1.0,
) -> torch.Tensor:
    """The research code's eq. 3: Chamfer in (eta, phi, w * pt), the intensity as a third axis.

    With ``intensity_weight`` 1 it equals `chamfer` on (eta, phi, pt); the weight sets how many
    units of angle one unit of pt_rel is worth. Returns (B,).
    """
    scale = torch.tensor([1.0, 1.0, intensity_weight], dtype=x.dtype, device=x.device)
    return chamfer(x[..., :3] * scale, y[..., :3] * scale, mask_x, mask_y)


def emd(
    x: torch.Tensor,
    y: torch.Tensor,
    mask_x: torch.Tensor | None = None,
    mask_y: torch.Tensor | None = None,
    *,
    method: str = "exact",
    radius: float = 0.8,
    blur: float = 0.01,
    scaling: float = 0.9,
) -> torch.Tensor:
    """Energy mover's distance between two clouds, differentiable: W1 + |pt difference|.

    EMD = min_f sum_ij f_ij * dR_ij / R over pt fractions (each cloud's pt normalised to 1) +
    |sum pt_x - sum pt_y|: the cost of moving the pt flow in (eta, phi) plus the cost of creating
    or destroying the pt the clouds do not share.

    Arguments:
        x: (B, P, 3), y: (B, Q, 3) particles (eta, phi, pt >= 0); masks as `chamfer`.
        method: "exact" (optimal transport per jet, POT's network simplex; the gradient flows
            through the optimal plan) or "sinkhorn" (entropic, batched, geomloss; blur sets the
            entropic length scale in units of dR, scaling the annealing ratio: lower is faster
            and coarser).
        radius: R of the EMD.

    Returns:
        (B,) distances with gradients.
    """
    if method not in EMD_METHODS:
        raise UserError(f"unknown EMD method {method!r}: use one of {sorted(EMD_METHODS)}")
    mask_x, mask_y = _masks(x, y, mask_x, mask_y)
    (a, total_x), (b, total_y) = _pt_fractions(x, mask_x), _pt_fractions(y, mask_y)
    # padding positions to 0: they carry no weight, but Sinkhorn's annealing sees every point
    pos_x, pos_y = x[..., :2] * mask_x[..., None], y[..., :2] * mask_y[..., None]
    flow = EMD_METHODS[method](pos_x, pos_y, a, b, blur=blur, scaling=scaling) / radius
    return flow + (total_x - total_y).abs()


def _emd_exact(
    pos_x: torch.Tensor, pos_y: torch.Tensor, a: torch.Tensor, b: torch.Tensor, **_: float
) -> torch.Tensor:
    """Exact W1 in (eta, phi) per jet: POT's network simplex on detached numpy copies.

    The LP gives the optimal plan T and dual potentials (u, v); by the envelope theorem
    d EMD / d cost = T, d EMD / d a = u, d EMD / d b = v. So the value is sum(T * cost) with the
    cost rebuilt in torch (gradients to positions), plus u.(a - a) + v.(b - b) terms that are 0
    in value but carry the weight gradients. We call POT's C solver `emd_c` directly: ot.emd
    through the torch backend spent ~4x the solve time per jet on conversions and checks, and
    emd_c already drops zero-weight (padded) particles.
    """
    from ot.lp.emd_wrap import emd_c

    cost = torch.cdist(pos_x, pos_y, compute_mode="donot_use_mm_for_euclid_dist")  # (B, P, Q)
    c_np, a_np, b_np = (t.detach().cpu().double().numpy() for t in (cost, a, b))
    plan, u, v = np.zeros_like(c_np), np.zeros_like(a_np), np.zeros_like(b_np)
    for k in range(len(c_np)):
        wa, wb = a_np[k] / a_np[k].sum(), b_np[k] / b_np[k].sum()  # exact equal mass for the LP
        plan[k], _, u_k, v_k, _ = emd_c(wa, wb, np.ascontiguousarray(c_np[k]), 100_000, 1)
        u[k], v[k] = (u_k - u_k.mean()) * (wa > 0), (v_k - v_k.mean()) * (wb > 0)
    plan, u, v = (torch.as_tensor(t, dtype=cost.dtype, device=cost.device) for t in (plan, u, v))
    return (plan * cost).sum((1, 2)) + (u * (a - a.detach())).sum(1) + (v * (b - b.detach())).sum(1)


def _emd_sinkhorn(
    pos_x: torch.Tensor,
    pos_y: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    blur: float,
    scaling: float,
) -> torch.Tensor:
    """Debiased Sinkhorn divergence with cost dR (p = 1), batched (geomloss)."""
    from geomloss import SamplesLoss

    loss = SamplesLoss("sinkhorn", p=1, blur=blur, scaling=scaling, backend="tensorized")
    return loss(a, pos_x.contiguous(), b, pos_y.contiguous())


EMD_METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "exact": _emd_exact,
    "sinkhorn": _emd_sinkhorn,
}

#: the particle losses that read pt_rel as a weight: they need physical units (pt_rel >= 0)
PT_WEIGHTED = ("chamfer_pt", "emd", "emd_sinkhorn")
#: Particle-level reconstruction losses by name, each (x, y, mask_x, mask_y) -> (B,).
PARTICLE_LOSSES: dict[str, Loss] = {
    "chamfer": chamfer,
    "chamfer_pt": chamfer_pt,
    "chamfer_positions": chamfer_positions,
    "nearest_position": nearest_position,
    "intensity_axis": intensity_axis,
    "emd": functools.partial(emd, method="exact"),
    "emd_sinkhorn": functools.partial(emd, method="sinkhorn"),
}


def jet_terms(
    x: torch.Tensor,
    y: torch.Tensor,
    mask_x: torch.Tensor | None = None,
    mask_y: torch.Tensor | None = None,
    *,
    gamma: float = 1.0,
    gamma_1: float = 1.0,
    gamma_2: float = 1.0,
) -> torch.Tensor:
    """The research code's jet terms: gamma * (gamma_1 (pT - pT^)^2 + gamma_2 (m - m^)^2), (B,).

    pT and m are computed from the particles (relative frame: pT ~ 1, m ~ m/pT_jet) with the
    one function the metrics use. gamma_2 = mean(pT)/mean(m) of the training set balances the
    two; see `default_gamma_2`.
    """
    mask_x, mask_y = _masks(x, y, mask_x, mask_y)
    obs_x, obs_y = jet_observables(x, mask_x), jet_observables(y, mask_y)
    return gamma * (
        gamma_1 * (obs_x["pt"] - obs_y["pt"]) ** 2 + gamma_2 * (obs_x["mass"] - obs_y["mass"]) ** 2
    )


def differentiable_tau_ratios(particles: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """tau21 and tau32 (N, 2) with gradients to the particles (N, P, 3): the exclusive-kT
    memberships are found once without gradient (`kt_members`), then the axes and distances
    are recomputed from them; 0 where a ratio is undefined, as `tau_ratios`."""
    # float64: in float32 an axis's rapidity loses its E - pz to rounding at moderate eta
    x, real = particles.double(), mask.bool() & (particles[..., 2] > 0)
    members = kt_members(x, real, ns=(2, 3))
    one = torch.where(real, 0, -1)[None]  # tau1's single axis: the whole jet
    taus = [
        tau_given_members(x, m, n)
        for m, n in zip(torch.cat([one, members]), (1, 2, 3), strict=True)
    ]
    ratios = [
        torch.where(low > 0, high / low.clamp_min(1e-12), 0.0)
        for low, high in itertools.pairwise(taus)
    ]
    return torch.stack(ratios, -1).to(particles.dtype)


def substructure_terms(
    x: torch.Tensor,
    y: torch.Tensor,
    mask_x: torch.Tensor | None = None,
    mask_y: torch.Tensor | None = None,
) -> torch.Tensor:
    """(tau21 - tau21^)^2 + (tau32 - tau32^)^2 per jet (B,): the prong count as a jet term.

    The mass term keeps a jet's size; these ask the reconstruction y (B, Q, 3) to keep how many
    hard subjets the input x (B, P, 3) has. The gradient flows through y's subjet axes and
    distances (`differentiable_tau_ratios`); the input's ratios are constants.
    """
    mask_x, mask_y = _masks(x, y, mask_x, mask_y)
    # both clouds clustered as one batch: the clustering is a Python loop over merge steps,
    # so one loop over 2B jets costs about half of two over B
    size = max(x.shape[1], y.shape[1])
    pad = torch.nn.functional.pad
    clouds = torch.cat([pad(a, (0, 0, 0, size - a.shape[1])) for a in (x.detach(), y)])
    masks = torch.cat([pad(m, (0, size - m.shape[1])) for m in (mask_x, mask_y)])
    ratios = differentiable_tau_ratios(clouds, masks)  # in float64
    target, got = ratios[: len(x)].detach(), ratios[len(x) :]
    return ((got - target) ** 2).sum(1).to(y.dtype)


def d2_terms(
    x: torch.Tensor,
    y: torch.Tensor,
    mask_x: torch.Tensor | None = None,
    mask_y: torch.Tensor | None = None,
) -> torch.Tensor:
    """(log D2 - log D2^)^2 per jet (B,): how spread the radiation between the prongs is.

    The tau ratios count a jet's hard subjets; D2 = e3 / e2^3 (`jetflows.physics.d2`) also
    weighs the soft radiation around them, which a reconstruction pulled onto clean prongs
    loses (generated top D2 too low). D2 is a smooth sum over particle pairs and triples, so
    its gradient reaches every particle of y (B, Q, 3) directly; logged because its tail
    spans decades. A jet whose D2 is undefined (< 2 particles) counts as D2 = 1e-3.
    """
    mask_x, mask_y = _masks(x, y, mask_x, mask_y)
    target = d2(x.detach().double(), mask_x).clamp_min(1e-3).log()
    got = d2(y.double(), mask_y).clamp_min(1e-3).log()
    return ((got - target) ** 2).to(y.dtype)


def default_gamma_2(x: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """mean(pT_jet) / mean(m_jet) over a training set of particles (N, P, 3)."""
    obs = jet_observables(x, mask)
    return float(obs["pt"].mean() / obs["mass"].mean().clamp_min(1e-12))


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, 1)) per jet: mean, logvar (B, D) -> (B,)."""
    return -0.5 * (1 + logvar - mean**2 - logvar.exp()).sum(1)


def _seed_weighting(
    particle: torch.Tensor, jet: torch.Tensor, kl: torch.Tensor, *, alpha: float, beta: float
) -> torch.Tensor:
    return (1 - beta) * (alpha * particle + jet) + beta * kl


def _beta_vae_weighting(
    particle: torch.Tensor, jet: torch.Tensor, kl: torch.Tensor, *, alpha: float, beta: float
) -> torch.Tensor:
    return alpha * particle + jet + beta * kl


#: How the ELBO's terms are combined: the research code's (1 - beta)(alpha L_p + L_jet) + beta KL
#: (beta 0.9998 in the seed) or a plain beta-VAE, alpha L_p + L_jet + beta KL.
WEIGHTINGS: dict[str, Callable[..., torch.Tensor]] = {
    "seed": _seed_weighting,
    "beta_vae": _beta_vae_weighting,
}
