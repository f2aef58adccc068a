"""Jet physics from particle clouds: observables and coordinate conversions.

The one home for these formulas: losses (torch, with gradients), metrics and plots (numpy) call
the same functions. Each function takes numpy arrays or torch tensors and answers in kind.

Conventions (see DESIGN.md): particles (N, P, 3) ordered (eta_rel, phi_rel, pt_rel), relative to
the jet axis (eta_rel = eta - eta_jet, phi_rel wrapped to (-pi, pi], pt_rel = pt / pt_jet); a
boolean mask (N, P) marks real particles; padding is zero. Particles are treated as massless, as
JetNet's three features carry no mass. Pass the jet's (pt, eta, phi) to get absolute quantities
in GeV; with the defaults (1, 0, 0) every quantity is in the jet's relative frame (pt ~ 1,
mass ~ m_jet / pt_jet), which is what JetNet's W1M compares.

jetnet.utils.jet_features does the observables in numpy only; losses need gradients through the
same formulas, hence this module.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

#: Jet-level observables returned by `jet_observables`, in this order.
OBSERVABLES: tuple[str, ...] = ("mass", "pt", "eta", "phi", "energy", "multiplicity")

#: Index of each particle feature in the last axis.
ETA, PHI, PT = 0, 1, 2

Array = Any  # numpy.ndarray or torch.Tensor; the functions answer in the type they are given


def _xp(x: Array) -> Any:
    """The array namespace of ``x``: torch for tensors (imported lazily), numpy otherwise."""
    if type(x).__module__.startswith("torch"):
        import torch

        return torch
    return np


def _per_jet(value: Array | float) -> Array | float:
    """Broadcast a per-jet quantity (N,) against particles (N, P); scalars pass through."""
    return value if isinstance(value, (int, float)) else value[..., None]


def _safe(x: Array, eps: float = 1e-12) -> Array:
    """``x`` floored at ``eps``, so sqrt/division stay finite and differentiable at zero."""
    return _xp(x).where(x > eps, x, eps)


def particle_mask(particles: Array) -> Array:
    """Mask of real particles, from pt_rel > 0. particles: (N, P, 3) -> (N, P) bool."""
    return particles[..., PT] > 0


def wrap_phi(phi: Array) -> Array:
    """Wrap angles to (-pi, pi]."""
    xp = _xp(phi)
    return phi - 2 * math.pi * xp.ceil((phi - math.pi) / (2 * math.pi))


def relative_to_cartesian(
    particles: Array,
    mask: Array | None = None,
    *,
    jet_pt: Array | float = 1.0,
    jet_eta: Array | float = 0.0,
    jet_phi: Array | float = 0.0,
) -> Array:
    """(eta_rel, phi_rel, pt_rel) -> massless (px, py, pz).

    Arguments:
        particles: (N, P, 3) relative coordinates.
        mask: (N, P) real particles; defaults to pt_rel > 0. Padding stays zero.
        jet_pt, jet_eta, jet_phi: scalars or (N,) jet kinematics; defaults give the jet frame.

    Returns:
        (N, P, 3) momenta (px, py, pz), in units of jet_pt.
    """
    xp = _xp(particles)
    mask = particle_mask(particles) if mask is None else mask
    pt = particles[..., PT] * _per_jet(jet_pt)
    eta = particles[..., ETA] + _per_jet(jet_eta)
    phi = particles[..., PHI] + _per_jet(jet_phi)
    momenta = xp.stack([pt * xp.cos(phi), pt * xp.sin(phi), pt * xp.sinh(eta)], -1)
    return momenta * mask[..., None]


def cartesian_to_relative(
    momenta: Array,
    mask: Array | None = None,
    *,
    jet_pt: Array | float = 1.0,
    jet_eta: Array | float = 0.0,
    jet_phi: Array | float = 0.0,
) -> Array:
    """Massless (px, py, pz) -> (eta_rel, phi_rel, pt_rel); the inverse of `relative_to_cartesian`.

    Arguments:
        momenta: (N, P, 3) momenta.
        mask: (N, P) real particles; defaults to px^2 + py^2 > 0. Padding comes back zero.
        jet_pt, jet_eta, jet_phi: scalars or (N,) jet kinematics the result is relative to.

    Returns:
        (N, P, 3) relative coordinates, phi_rel wrapped to (-pi, pi].
    """
    xp = _xp(momenta)
    px, py, pz = momenta[..., 0], momenta[..., 1], momenta[..., 2]
    pt2 = px**2 + py**2
    mask = pt2 > 0 if mask is None else mask
    # padding has pt = 0: substitute 1 before sqrt/division so values and gradients stay finite
    pt = xp.sqrt(xp.where(mask, pt2, xp.ones_like(pt2)))
    eta = xp.arcsinh(pz / pt) - _per_jet(jet_eta)
    phi = wrap_phi(xp.arctan2(py, px) - _per_jet(jet_phi))
    relative = xp.stack([eta, phi, pt / _per_jet(jet_pt)], -1)
    return relative * mask[..., None]


def jet_observables(
    particles: Array,
    mask: Array | None = None,
    *,
    jet_pt: Array | float = 1.0,
    jet_eta: Array | float = 0.0,
    jet_phi: Array | float = 0.0,
) -> dict[str, Array]:
    """Jet mass, pt, eta, phi, energy and multiplicity from its particles (massless sum).

    Arguments:
        particles: (N, P, 3) (eta_rel, phi_rel, pt_rel).
        mask: (N, P) real particles; defaults to pt_rel > 0. Padding never counts.
        jet_pt, jet_eta, jet_phi: scalars or (N,) jet kinematics; give them for GeV values.

    Returns:
        A dict keyed by `OBSERVABLES`, each (N,). Differentiable for torch input.

    Example:
        >>> two = np.array([[[0.0, 0.0, 0.5], [0.0, np.pi, 0.5]]])  # back to back, pt 0.5 each
        >>> round(float(jet_observables(two, jet_pt=100.0)["mass"][0]), 6)
        100.0
    """
    xp = _xp(particles)
    mask = particle_mask(particles) if mask is None else mask
    momenta = relative_to_cartesian(
        particles, mask, jet_pt=jet_pt, jet_eta=jet_eta, jet_phi=jet_phi
    )
    pt = particles[..., PT] * _per_jet(jet_pt) * mask
    energy = (pt * xp.cosh(particles[..., ETA] + _per_jet(jet_eta))).sum(-1)  # (N,)
    px, py, pz = (momenta[..., i].sum(-1) for i in range(3))  # (N,) each
    jet_pt2 = px**2 + py**2
    mass2 = energy**2 - jet_pt2 - pz**2
    return {
        "mass": xp.sqrt(_safe(mass2)),
        "pt": xp.sqrt(_safe(jet_pt2)),
        "eta": xp.arcsinh(pz / xp.sqrt(_safe(jet_pt2))),
        "phi": xp.arctan2(py, px),
        "energy": energy,
        "multiplicity": mask.sum(-1),
    }


def d2(particles: Array, mask: Array | None = None, *, beta: float = 1.0) -> Array:
    """The energy-correlation ratio D2 = e3 / e2^3 (Larkoski, Moult, Neill, arXiv:1409.6298).

    Low for two-prong jets (W, Z, and tops resolved as two prongs), high for one-prong QCD jets.
    e2 = sum_{i<j} z_i z_j R_ij^beta, e3 = sum_{i<j<k} z_i z_j z_k (R_ij R_ik R_jk)^beta with
    z = pt / sum(pt). energyflow has these as EFPs but evaluates them jet by jet in numpy only;
    this is the same sum over a batch axis, for numpy and torch, its three-particle sum written
    as a batched matrix product (P^3 multiply-adds per jet, in BLAS).

    Arguments:
        particles: (N, P, 3) (eta_rel, phi_rel, pt_rel); mask (N, P), default pt_rel > 0.
        beta: angular exponent.

    Returns:
        (N,) D2; a jet with fewer than 2 particles gets 0.
    """
    xp = _xp(particles)
    mask = particle_mask(particles) if mask is None else mask
    pt = particles[..., PT] * mask
    z = pt / _safe(pt.sum(-1))[..., None]  # (N, P)
    deta = particles[..., :, None, ETA] - particles[..., None, :, ETA]  # (N, P, P)
    dphi = wrap_phi(particles[..., :, None, PHI] - particles[..., None, :, PHI])
    squared = deta**2 + dphi**2
    # zero on the diagonal, where R^beta's derivative is infinite: kept out of the power so
    # a gradient through D2 (a loss term, `convae.losses.d2_terms`) stays finite
    r = xp.where(squared > 0, squared.clip(min=1e-30) ** (0.5 * beta), 0.0)  # (N, P, P)
    # full sums over ordered pairs / triples: 2 e2 and 6 e3 (repeated indices carry R_ii = 0)
    pairs = z[..., :, None] * z[..., None, :] * r  # (N, P, P): z_i z_j R_ij
    e2 = pairs.sum((-2, -1)) / 2
    # sum_k z_k R_ik R_jk = (R diag(z) R)_ij: one batched matrix product instead of P^3 terms
    e3 = (pairs * ((r * z[..., None, :]) @ r)).sum((-2, -1)) / 6
    return xp.where(e2 > 0, e3 / _safe(e2) ** 3, xp.zeros_like(e2))


def sort_by_pt(particles: Array) -> Array:
    """Particles (N, P, F) of each jet reordered by decreasing pt_rel (torch)."""
    order = particles[..., PT].argsort(dim=1, descending=True)
    return particles.gather(1, order[..., None].expand_as(particles))


def nsubjettiness(
    particles: Array, mask: Array | None = None, *, n_max: int = 3, chunk: int = 8192
) -> Array:
    """N-subjettiness tau_1 .. tau_n_max (Thaler, Van Tilburg, arXiv:1011.2268), beta = 1, with
    exclusive-kT axes (E-scheme, no beam distance), normalised by sum(pt) (R0 = 1).

    tau_N = sum_i pt_i min_k dR(i, axis_k) / sum_i pt_i, the axes being the N pseudojets left
    when every jet's particles are merged pairwise by the kT distance min(pt_i^2, pt_j^2) dR_ij^2.
    That is fastjet-contrib's ``KT_Axes`` (kT with R = max_allowable_R, so no particle ever merges
    with the beam); a test checks it against FastJet's own exclusive kT clustering. Written here
    because fastjet-contrib's Nsubjettiness is not in the Python wheels, and a jet-by-jet
    FastJet loop is far slower than this batch, in which every jet merges one pair per step
    and only the merged pseudojet's distances are recomputed.

    Arguments:
        particles: (N, P, 3) (eta_rel, phi_rel, pt_rel), numpy or torch; mask (N, P), default
            pt_rel > 0.
        n_max: the largest N.
        chunk: jets clustered at once (memory: chunk * P^2 float64).

    Returns:
        (N, n_max) float64 (same library as ``particles``): tau_N; 0 where a jet has <= N
        particles (its axes are its particles).
    """
    import torch

    as_numpy = not isinstance(particles, torch.Tensor)
    x = torch.as_tensor(np.asarray(particles)).double() if as_numpy else particles.double()
    if mask is None:
        m = x[..., PT] > 0
    else:
        m = torch.as_tensor(np.asarray(mask)) if as_numpy else mask
    m = m.bool().to(x.device)
    tau = torch.cat(
        [_nsub_chunk(x[k : k + chunk], m[k : k + chunk], n_max) for k in range(0, len(x), chunk)]
        or [torch.zeros(0, n_max, dtype=torch.float64)]
    )
    return tau.numpy() if as_numpy else tau


def tau_ratios(particles: Any, mask: Any | None = None) -> Any:
    """tau21 = tau2/tau1 and tau32 = tau3/tau2 of each jet (`nsubjettiness`), torch float64.

    Arguments:
        particles: (N, P, 3) torch (eta_rel, phi_rel, pt_rel); mask (N, P), default pt_rel > 0.

    Returns:
        (N, 2): tau21, tau32; 0 where the denominator is 0 (a jet with too few particles).
    """
    return _ratios(nsubjettiness(particles, mask, n_max=3))


def _ratios(tau: Any) -> Any:
    """tau (N, n) torch -> (N, n - 1): tau_k / tau_(k-1), 0 where the denominator is 0."""
    import torch

    return torch.where(tau[:, :-1] > 0, tau[:, 1:] / tau[:, :-1].clamp_min(1e-300), 0.0)


def kt_axes(particles: Any, mask: Any | None = None, *, n: int = 3) -> Any:
    """The ``n`` exclusive-kT axes of each jet, the ones `nsubjettiness` measures tau_n from.

    Arguments:
        particles: (N, P, 3) torch (eta_rel, phi_rel, pt_rel); mask (N, P), default pt_rel > 0.
        n: axes per jet.

    Returns:
        (N, n, 2) float64 (rapidity, phi) of the axes (massless particles: rapidity = eta_rel);
        NaN for a jet with fewer than n particles.
    """
    import torch

    x = particles.double()
    members = kt_members(x, mask, ns=(n,))[0]
    rap, phi, empty = _member_axes(x, members, n)
    return torch.stack([rap, phi], -1).masked_fill(empty[..., None], math.nan)


def kt_members(particles: Any, mask: Any | None = None, *, ns: tuple[int, ...] = (3,)) -> Any:
    """Which of the n exclusive-kT subjets each particle belongs to, for each n in ``ns``, from
    one clustering (no gradient).

    Arguments:
        particles: (N, P, 3) torch; mask (N, P), default pt_rel > 0.
        ns: the numbers of subjets.

    Returns:
        (len(ns), N, P) long: 0..n-1 for real particles of jets with >= n of them; -1 for
        padding and for every particle of a jet with fewer than n particles.
    """
    import torch

    with torch.no_grad():
        x = particles.detach().double()
        m = (x[..., PT] > 0 if mask is None else mask).bool()
        members = torch.full((len(ns), *m.shape), -1, dtype=torch.long, device=x.device)
        for count, _, alive, owner in _kt_merges(x, m):
            for k, n in enumerate(ns):
                rows = (count == n).nonzero().squeeze(-1)
                if len(rows):
                    slots = alive[rows].to(x.dtype).topk(n, dim=1).indices  # (R, n)
                    which = (owner[rows, :, None] == slots[:, None, :]).long().argmax(-1)
                    members[k, rows] = torch.where(m[rows], which, -1)
        return members


def tau_given_members(particles: Any, members: Any, n: int) -> Any:
    """tau_n (N,) with the axes rebuilt from ``members`` (`kt_members`): differentiable in the
    particles, so a loss can ask for a jet's prongs. Equals `nsubjettiness`'s tau_n when the
    members come from the same particles; 0 for a jet without members.

    Written beside `nsubjettiness` because its clustering is a sequence of discrete choices:
    they are made once without gradient, and only the axes and distances carry it.

    Arguments:
        particles: (N, P, 3) torch (eta_rel, phi_rel, pt_rel); members: (N, P) long.
    """
    eta, phi = particles[..., ETA], particles[..., PHI]
    pt = particles[..., PT].clamp_min(0) * (members >= 0)
    rap, axis_phi, _ = _member_axes(particles, members, n)
    dr2 = (eta[:, :, None] - rap[:, None, :]) ** 2 + wrap_phi(
        phi[:, :, None] - axis_phi[:, None, :]
    ) ** 2
    dr = (dr2 + 1e-12).sqrt()  # the epsilon keeps the gradient finite on an axis particle
    return (pt * dr.min(-1).values).sum(-1) / pt.sum(-1).clamp_min(1e-12)


def _member_axes(particles: Any, members: Any, n: int) -> tuple[Any, Any, Any]:
    """(rapidity, phi) (N, n) of the E-scheme axes of ``members``' subjets, differentiable in
    the particles, and which axes are empty (N, n) bool (a jet with fewer than n particles).

    The particles are summed in light-cone components (px, py, E + pz, E - pz) = pt (cos phi,
    sin phi, e^eta, e^-eta): the axis rapidity then needs no E - pz that cancels in float32.
    An empty axis gets a finite dummy direction: its (rapidity, phi) would be 0/0, and NaN
    would leak into every gradient that passes a min or a where over it.
    """
    import torch

    real = members >= 0
    eta, phi = particles[..., ETA], particles[..., PHI]
    pt = particles[..., PT].clamp_min(0) * real
    onehot = torch.nn.functional.one_hot(members.clamp_min(0), n).to(particles.dtype)
    weights = onehot * real[..., None]  # (N, P, n)
    cone = torch.stack([phi.cos(), phi.sin(), eta.exp(), (-eta).exp()], -1)
    axes = torch.einsum("bpn,bpk->bnk", weights, pt[..., None] * cone)  # (N, n, 4)
    empty = weights.sum(1) == 0
    axes = axes + empty[..., None] * axes.new_tensor([1.0, 0.0, 1.0, 1.0])
    rap = 0.5 * (axes[..., 2].log() - axes[..., 3].log())
    return rap, axes[..., 1].atan2(axes[..., 0]), empty


def _kt_merges(x: Any, m: Any) -> Any:
    """Exclusive-kT clustering of a chunk of jets (B, P, 3), one merge per jet and step.

    Yields (alive pseudojets per jet (B,), four-vectors (B, P, 4), alive (B, P), owner (B, P):
    the slot of the pseudojet each particle is in) before every step, until each jet is one
    pseudojet; the tensors are updated in place between yields.
    """
    import torch

    eta, phi, pt = x[..., ETA], x[..., PHI], x[..., PT] * m
    p4 = pt[..., None] * _directions(eta, phi)
    alive, size = m.clone(), m.shape[1]
    owner = torch.arange(size, device=x.device).expand(len(x), size).clone()
    d = _kt_distances(p4, alive)  # (B, P, P), inf off the alive pairs
    while True:
        count = alive.sum(-1)
        yield count, p4, alive, owner
        rows = (count > 1).nonzero().squeeze(-1)
        if not len(rows):
            return
        flat = d.flatten(1).argmin(-1)[rows]
        i, j = flat // size, flat % size
        p4[rows, i] += p4[rows, j]
        alive[rows, j] = False
        owner[rows] = torch.where(owner[rows] == j[:, None], i[:, None], owner[rows])
        d[rows, j, :] = math.inf
        d[rows, :, j] = math.inf
        row = _kt_row(p4[rows], alive[rows], i)  # the merged pseudojet's new distances
        d[rows, i, :] = row
        d[rows, :, i] = row


def _directions(eta: Any, phi: Any) -> Any:
    """Massless four-vectors per unit pt: (..., 4) = (cos phi, sin phi, sinh eta, cosh eta)."""
    import torch

    return torch.stack([phi.cos(), phi.sin(), eta.sinh(), eta.cosh()], -1)


def _nsub_chunk(x: Any, m: Any, n_max: int) -> Any:
    """`nsubjettiness` of one chunk of jets: (B, n_max)."""
    import torch

    eta, phi, pt = x[..., ETA], x[..., PHI], x[..., PT] * m
    tau = torch.zeros(len(x), n_max, dtype=torch.float64)
    total = pt.sum(-1).clamp_min(1e-300)
    for count, p4, alive, _ in _kt_merges(x, m):
        for n in range(1, n_max + 1):
            rows = (count == n).nonzero().squeeze(-1)
            if len(rows):
                tau[rows, n - 1] = _tau(eta[rows], phi[rows], pt[rows], p4[rows], alive[rows], n)
                tau[rows, n - 1] /= total[rows]
    return tau


def _rap_phi_pt(p4: Any) -> tuple[Any, Any, Any]:
    """(rapidity, phi, pt) of four-vectors (..., 4) = (px, py, pz, E)."""
    px, py, pz, e = p4.unbind(-1)
    rap = 0.5 * ((e + pz).clamp_min(1e-300) / (e - pz).clamp_min(1e-300)).log()
    return rap, py.atan2(px), px.hypot(py)


def _kt_distances(p4: Any, alive: Any) -> Any:
    """min(pt_i^2, pt_j^2) dR_ij^2 between alive pseudojets (B, P, P); inf elsewhere."""
    import torch

    rap, phi, pt = _rap_phi_pt(p4)
    dr2 = (rap[:, :, None] - rap[:, None, :]) ** 2 + wrap_phi(
        phi[:, :, None] - phi[:, None, :]
    ) ** 2
    d = torch.minimum(pt[:, :, None], pt[:, None, :]) ** 2 * dr2
    pair = alive[:, :, None] & alive[:, None, :] & ~torch.eye(alive.shape[1], dtype=torch.bool)
    return d.masked_fill(~pair, math.inf)


def _kt_row(p4: Any, alive: Any, i: Any) -> Any:
    """Distances (B, P) of pseudojet ``i`` (B,) of each jet to the others; inf off the alive."""
    import torch

    rap, phi, pt = _rap_phi_pt(p4)
    rows = torch.arange(len(p4))
    dr2 = (rap - rap[rows, i, None]) ** 2 + wrap_phi(phi - phi[rows, i, None]) ** 2
    d = torch.minimum(pt, pt[rows, i, None]) ** 2 * dr2
    keep = alive.clone()
    keep[rows, i] = False
    return d.masked_fill(~keep, math.inf)


def _tau(eta: Any, phi: Any, pt: Any, p4: Any, alive: Any, n: int) -> Any:
    """Unnormalised tau (B,): each particle's pt times its distance to the nearest of the ``n``
    alive pseudojets (the axes)."""
    axes = alive.to(p4.dtype).topk(n, dim=1).indices  # (B, n): where the alive ones are
    rap, axis_phi, _ = _rap_phi_pt(p4.gather(1, axes[..., None].expand(-1, -1, 4)))
    deta = eta[:, :, None] - rap[:, None, :]
    dr = (deta**2 + wrap_phi(phi[:, :, None] - axis_phi[:, None, :]) ** 2).sqrt()
    return (pt * dr.min(-1).values).sum(-1)


# ------------------------------------------------- jet-level quantities (torch), by name


def _log_mass(particles: Any, mask: Any) -> Any:
    # relative mass m / pT_jet from the particles (massless), logged: it spans decades
    mass = jet_observables(particles, mask)["mass"]
    return mass.clamp_min(1e-4).log()


def _multiplicity(particles: Any, mask: Any) -> Any:
    return mask.sum(1).float()


def _pt_sum(particles: Any, mask: Any) -> Any:
    # sum(pt_rel) of the kept particles: < 1 when a jet has more than P constituents
    return (particles[..., PT] * mask).sum(1)


def _tau_ratio(n: int, particles: Any, mask: Any) -> Any:
    # tau_n / tau_(n-1) with exclusive-kT axes, 0 for a jet with too few particles (as the
    # evaluation's `tau_ratios`), clustering only up to n
    tau = nsubjettiness(particles.double(), mask, n_max=n)
    return _ratios(tau)[:, n - 2].to(particles.dtype)


def _d2(particles: Any, mask: Any) -> Any:
    return d2(particles.double(), mask).to(particles.dtype)


#: name -> jet-level observable (N,) from torch particles (N, P, 3) and mask (N, P): what the
#: particle flows are conditioned on (`flows.particle.CONTEXTS`) and the ConVAE decoder is told
#: (`convae.model.ConVAEConfig.condition`).
JET_QUANTITIES: dict[str, Callable[[Any, Any], Any]] = {
    "mass": _log_mass,
    "multiplicity": _multiplicity,
    "pt_sum": _pt_sum,
    "tau21": functools.partial(_tau_ratio, 2),
    "tau32": functools.partial(_tau_ratio, 3),
    "d2": _d2,
}


def jet_quantities(particles: Any, mask: Any, names: tuple[str, ...]) -> Any:
    """Jet-level rows (N, len(names)) of torch particles (N, P, 3), mask (N, P): the
    `JET_QUANTITIES` named, as columns in that order."""
    import torch

    return torch.stack([JET_QUANTITIES[name](particles, mask) for name in names], 1)
