"""Distances between a real and a generated set of jets: arrays in, numbers out.

- Observable EMDs: 1-D Wasserstein distances between the real and generated distributions of jet
  mass, pt, energy, eta, phi and multiplicity, computed on the samples (exact), each alone and as
  a sum of scaled terms. The scale of each observable is the standard deviation of the real
  sample, so every term reads "shift in units of the real spread" and none dominates the sum
  because of its range (GeV for mass vs radians for phi).
- `legacy_emd_sum`: the research code's figure, reproduced on purpose (see its docstring). It is
  not a distance between the observables.
- Divergences: Jensen-Shannon and Kullback-Leibler on the same histograms as the legacy figure.
- The JetNet metrics (W1M, W1P, W1EFP, FPD, KPD, COV/MMD) through the jetnet library.

Conventions: particles (N, P, 3) = (eta_rel, phi_rel, pt_rel) with mask (N, P); EFPs are the
36 energy flow polynomials of degree <= 4 that jetnet uses for FPD/KPD.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from scipy.stats import wasserstein_distance

from jetflows import interrupt
from jetflows.physics import d2, jet_observables, tau_ratios
from pipelines.data.jetnet import Jets

#: Jet kinematics from the particles, in the frame of the file's jet (pt, eta).
KINEMATICS: tuple[str, ...] = ("mass", "pt", "energy", "eta", "phi", "multiplicity")
#: Substructure: N-subjettiness ratios (exclusive-kT axes, beta 1) and D2 (beta 1).
SUBSTRUCTURE: tuple[str, ...] = ("tau21", "tau32", "d2")
#: Jet observables compared by the observable EMDs, in report order.
EMD_OBSERVABLES: tuple[str, ...] = (*KINEMATICS, *SUBSTRUCTURE)
#: The research code's histogram ranges (GeV for mass, pt, energy); 100 bins each.
LEGACY_RANGES: dict[str, tuple[float, float]] = {
    "mass": (0.0, 400.0),
    "pt": (0.0, 3000.0),
    "energy": (200.0, 4000.0),
    "eta": (-3.0, 3.0),
    "phi": (-3.0, 3.0),
}
#: Histogram ranges of the substructure observables for the divergences (not in the legacy sum).
SUBSTRUCTURE_RANGES: dict[str, tuple[float, float]] = {
    "tau21": (0.0, 1.2),
    "tau32": (0.0, 1.2),
    "d2": (0.0, 12.0),
}
#: Every histogram range (divergences); the legacy sum uses `LEGACY_RANGES` only.
HIST_RANGES = {**LEGACY_RANGES, **SUBSTRUCTURE_RANGES}
LEGACY_BINS = 100
HIST_EPS = 1e-12  # added to every bin by the research code; also our KL's treatment of empty bins
#: jetnet's W1EFP set, as a selection of the 36 FPD/KPD EFPs (same graphs, same order).
W1EFP_SELECTION: tuple[tuple[str, int], ...] = (("n==", 4), ("d==", 4), ("p==", 1))


def observables(jets: Jets) -> dict[str, np.ndarray]:
    """Jet observables from the particles, in each jet's frame (float64).

    Kinematics in GeV (`kinematics`); substructure (`SUBSTRUCTURE`) is dimensionless: tau21 =
    tau2/tau1 and tau32 = tau3/tau2 (0 where the denominator is, i.e. a jet with too few
    particles), D2.

    Returns:
        {name: (N,)} for every name in `EMD_OBSERVABLES`.
    """
    return kinematics(jets) | substructure(jets.particles, jets.mask)


def kinematics(jets: Jets) -> dict[str, np.ndarray]:
    """`KINEMATICS` of each jet (N,) from its particles, float64, in GeV: the frame is the
    file's jet_features (pt, eta); phi stays relative to the jet. The same definition for
    every file, real or generated."""
    obs = jet_observables(
        jets.particles.astype(np.float64),
        jets.mask,
        jet_pt=jets.jet_features[:, 0].astype(np.float64),
        jet_eta=jets.jet_features[:, 1].astype(np.float64),
    )
    return {name: np.asarray(obs[name], dtype=np.float64) for name in KINEMATICS}


def substructure(particles: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """tau21, tau32 and D2 of each jet (N,), float64; see `SUBSTRUCTURE`.

    Arguments:
        particles: (N, P, 3) (eta_rel, phi_rel, pt_rel); mask (N, P).
    """
    import torch  # batched in torch: several times faster than numpy here

    x, m = torch.from_numpy(np.asarray(particles, np.float64)), torch.from_numpy(mask)
    ratios = tau_ratios(x, m).numpy()
    return {"tau21": ratios[:, 0], "tau32": ratios[:, 1], "d2": d2(x, m).numpy()}


def observable_emds(
    real: dict[str, np.ndarray], gen: dict[str, np.ndarray]
) -> tuple[dict[str, float], dict[str, float]]:
    """True 1-D Wasserstein distances between samples of each observable, and their scaled sum.

    Returns:
        (metrics, scales): metrics holds ``emd_<name>`` (in the observable's unit),
        ``emd_<name>_scaled`` (divided by the real sample's standard deviation) and ``emd_sum``
        (the sum of the scaled terms); scales holds each standard deviation.
    """
    metrics, scales = {}, {}
    for name in EMD_OBSERVABLES:
        scales[name] = float(np.std(real[name])) or 1.0  # a constant observable: unscaled
        metrics[f"emd_{name}"] = float(wasserstein_distance(real[name], gen[name]))
        metrics[f"emd_{name}_scaled"] = metrics[f"emd_{name}"] / scales[name]
    metrics["emd_sum"] = sum(metrics[f"emd_{n}_scaled"] for n in EMD_OBSERVABLES)
    return metrics, scales


def _histogram(values: np.ndarray, name: str, num_particles: int) -> np.ndarray:
    """Bin heights normalised to sum 1: the research code's ranges, or a bin per count."""
    if name == "multiplicity":
        edges = np.arange(-0.5, num_particles + 1.5)
    else:
        edges = np.linspace(*HIST_RANGES[name], LEGACY_BINS + 1)
    heights = np.histogram(values, bins=edges)[0].astype(np.float64)
    return heights / max(heights.sum(), 1.0)


def legacy_emd_sum(real: dict[str, np.ndarray], gen: dict[str, np.ndarray]) -> dict[str, float]:
    """The research code's "sum(EMD)", reproduced for comparison with old results. NOT a distance.

    Seed protocol: histogram each of mass, pt, energy, eta, phi (100 bins, `LEGACY_RANGES`),
    normalise to sum 1, add 1e-12, then ``scipy.stats.wasserstein_distance(hist_gen, hist_real)``
    with the bin HEIGHTS passed as samples. That compares the distributions of bin heights, so it
    is blind to where the mass sits: shift every jet by 50 GeV inside the range and it barely
    moves. Use `observable_emds` for a distance between the observables.

    Returns:
        {"legacy_emd_<name>": ..., "legacy_emd_sum": ...}.
    """
    out = {}
    for name in LEGACY_RANGES:
        h_real = _histogram(real[name], name, 0) + HIST_EPS
        h_gen = _histogram(gen[name], name, 0) + HIST_EPS
        out[f"legacy_emd_{name}"] = float(wasserstein_distance(h_gen, h_real))
    out["legacy_emd_sum"] = sum(out.values())
    return out


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * np.log(p / q)))


def divergences(
    real: dict[str, np.ndarray], gen: dict[str, np.ndarray], num_particles: int
) -> dict[str, float]:
    """Jensen-Shannon and Kullback-Leibler divergences (natural log) per observable.

    Histograms as `legacy_emd_sum` (multiplicity: one bin per count). Empty bins: JSD needs no
    regularisation (its mixture is non-zero wherever either histogram is), so it is exact and
    lies in [0, ln 2]. KL(real || gen) is infinite where gen is empty and real is not; we add
    1e-12 to every bin of both histograms and renormalise (as the research code did), which keeps it
    finite but large (~ p * 27.6 per such bin): read a large KL as "gen misses a region".

    Returns:
        {"jsd_<name>": ..., "kl_<name>": ...} for every name in `EMD_OBSERVABLES`.
    """
    out = {}
    for name in EMD_OBSERVABLES:
        p, q = (_histogram(x[name], name, num_particles) for x in (real, gen))
        m = 0.5 * (p + q)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p > 0, p * np.log(p / m), 0) + np.where(q > 0, q * np.log(q / m), 0)
        out[f"jsd_{name}"] = float(0.5 * terms.sum())
        p_eps, q_eps = (h + HIST_EPS for h in (p, q))
        out[f"kl_{name}"] = _kl(p_eps / p_eps.sum(), q_eps / q_eps.sum())
    return out


def _jetnet_rng(seed: int) -> Any:
    """jetnet draws its bootstrap batches from an unseeded module-level generator; seed it so
    that every metric is reproducible, and return jetnet's metrics module."""
    from jetnet.evaluation import gen_metrics

    gen_metrics.rng = np.random.default_rng(seed)
    return gen_metrics


def wasserstein_1d(u: np.ndarray, v: np.ndarray) -> float:
    """Exact W1 between the empirical distributions of samples u and v (scipy's formula).

    scipy.stats.wasserstein_distance argsorts both samples and sorts their union; sorting each
    sample and merging the two sorted runs (a linear stable sort) gives the same number about
    twice as fast, which matters for W1P's millions of particles.
    """
    u, v = np.sort(u), np.sort(v)
    values = np.sort(np.concatenate([u, v]), kind="stable")  # timsort merges two runs
    cdf_u = np.searchsorted(u, values[:-1], side="right") / len(u)
    cdf_v = np.searchsorted(v, values[:-1], side="right") / len(v)
    return float(np.sum(np.abs(cdf_u - cdf_v) * np.diff(values)))


def _w1_batches(
    real: np.ndarray,
    gen: np.ndarray,
    n: int,
    num_batches: int,
    rng: np.random.Generator,
    masks: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """jetnet's W1 protocol: mean and std over bootstrap batches, per feature.

    Arguments:
        real, gen: (N, F) jet features, or (N, P, F) particles with ``masks`` (N, P) each
            (then the particles of the drawn jets are pooled, as jetnet's w1p does).

    jetnet's w1efp recomputes the EFPs on every call and its w1p runs scipy's W1 serially; we
    reuse EFPs computed once and run the same draws (tests check equality draw for draw) with a
    faster exact W1 on a thread per feature (numpy's sort releases the GIL).
    """
    pairs = []
    for _ in range(num_batches):
        i, j = rng.choice(len(real), size=n), rng.choice(len(gen), size=n)
        a, b = (real[i], gen[j]) if masks is None else (real[i][masks[0][i]], gen[j][masks[1][j]])
        pairs += [(a[:, f], b[:, f]) for f in range(real.shape[-1])]
    if any(len(a) == 0 or len(b) == 0 for a, b in pairs):  # jetnet: no particles -> inf
        return np.full(real.shape[-1], np.inf), np.full(real.shape[-1], np.inf)
    with ThreadPoolExecutor(min(len(pairs), os.cpu_count() or 1)) as pool:
        w1s = np.reshape(list(pool.map(lambda p: wasserstein_1d(*p), pairs)), (num_batches, -1))
    return w1s.mean(0), w1s.std(0)


def _particle_masks(particles: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """jetnet's w1p exclusion: masked particles and those whose features are all exactly 0."""
    return mask.astype(bool) & (np.linalg.norm(particles, axis=-1) != 0)


def w1efp_selection() -> np.ndarray:
    """Boolean mask (36,) of jetnet's W1EFP graphs among the 36 FPD/KPD EFPs."""
    return _efpset().sel(*W1EFP_SELECTION)


def _efpset() -> Any:
    from energyflow import EFPSet

    # exactly jetnet.utils.efps with get_fpd_kpd_jet_features' arguments
    return EFPSet(("d<=", 4), measure="hadr", beta=1, normed=None, coords="ptyphim")


def _quiet(func: Callable) -> Callable:
    """Silence jetnet's warning on every call below 50,000 jets: the report states the count."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return func(*args, **kwargs)

    return wrapper


@_quiet
def jetnet_metrics(
    real: np.ndarray,
    gen: np.ndarray,
    real_mask: np.ndarray,
    gen_mask: np.ndarray,
    real_efps: np.ndarray,
    gen_efps: np.ndarray,
    *,
    num_batches: int = 5,
    seed: int = 42,
    cov_mmd: bool = True,
) -> dict[str, tuple[float, float]]:
    """The JetNet metrics, each as (mean, std) over jetnet's bootstrap batches.

    Arguments:
        real, gen: (N, P, 3) particles; the number of jets compared is min(len(real), len(gen)).
        real_mask, gen_mask: (N, P) masks (W1P ignores padding).
        real_efps, gen_efps: (N, 36) from `efps`.
        num_batches: jetnet's bootstrap batches (5).
        seed: seeds jetnet's otherwise unseeded batch draws.
        cov_mmd: also compute COV and MMD (EMD-based, 10 batches of 100 jets).

    Returns:
        {"w1m", "w1p", "w1p_eta", "w1p_phi", "w1p_pt", "w1efp", "fpd", "kpd"[, "cov", "mmd"]}
        -> (value, std or error). FPD/KPD errors are jetnet's (fit error, half 16-84 IQR).
    """
    n = min(len(real), len(gen))
    gm = _jetnet_rng(seed)
    out: dict[str, tuple[float, float]] = {}
    w1m = gm.w1m(real, gen, num_eval_samples=n, num_batches=num_batches)
    out["w1m"] = (float(w1m[0]), float(w1m[1]))
    masks = (_particle_masks(real, real_mask), _particle_masks(gen, gen_mask))
    means, stds = _w1_batches(real, gen, n, num_batches, gm.rng, masks)
    out["w1p"] = (float(np.mean(means)), float(np.mean(stds)))
    out.update(
        {
            f"w1p_{f}": (float(m), float(s))
            for f, m, s in zip(("eta", "phi", "pt"), means, stds, strict=True)
        }
    )
    sel = w1efp_selection()
    means, stds = _w1_batches(real_efps[:, sel], gen_efps[:, sel], n, num_batches, gm.rng)
    out["w1efp"] = (float(np.mean(means)), float(np.mean(stds)))
    out.update(_fpd_kpd(gm, real_efps, gen_efps, seed))
    if cov_mmd:
        cov, mmd = gm.cov_mmd(
            real, gen, num_eval_samples=min(100, n), num_batches=10, use_tqdm=False
        )
        out["cov"], out["mmd"] = (float(cov), 0.0), (float(mmd), 0.0)
    return out


def _fpd_kpd(gm: Any, real_efps: np.ndarray, gen_efps: np.ndarray, seed: int) -> dict:
    """jetnet's FPD (fit over batch sizes 20k..50k, shrunk to the sample) and KPD."""
    n = min(len(real_efps), len(gen_efps))
    with warnings.catch_warnings():
        # jetnet calls scipy's sqrtm(disp=False), deprecated in SciPy 1.16: one warning per
        # batch size, nothing the user can act on
        warnings.filterwarnings("ignore", "The `disp` argument is deprecated", DeprecationWarning)
        fpd = gm.fpd(
            real_efps,
            gen_efps,
            min_samples=min(20_000, n // 2),
            max_samples=min(50_000, n),
            seed=seed,
        )
    # serial: numba's parallel KPD was no faster on 2 cores and OpenBLAS warns it may hang
    kpd = gm.kpd(real_efps, gen_efps, batch_size=min(5_000, n), seed=seed)
    return {"fpd": (float(fpd[0]), float(fpd[1])), "kpd": (float(kpd[0]), float(kpd[1]))}


def efps(
    particles: np.ndarray,
    *,
    batch_size: int = 1_000,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The 36 EFPs (degree <= 4) of jetnet's FPD/KPD, for every jet, batched in torch.

    energyflow evaluates each EFP's einsum jet by jet; this evaluates the same
    einsums (energyflow's graphs, contraction strings and hadronic measure: z_i = pt_i,
    theta_ij = sqrt(d_eta^2 + d_phi^2) with phi periodic) over a batch axis, several times faster.
    Tests check equality with `jetnet.utils.efps` to float64 precision.

    Arguments:
        particles: (N, P, 3) (eta_rel, phi_rel, pt_rel), zero padding (pt 0 contributes 0).
        batch_size: jets per einsum batch (memory ~ batch * P^2 * 8 bytes * a few).
        progress: called with the number of jets done after each batch (e.g. tqdm.update).

    Returns:
        (N, 36) float64, columns in energyflow's EFPSet(("d<=", 4)) order.
    """
    import torch

    efpset = _efpset()
    out = []
    for start in range(0, len(particles), batch_size):
        interrupt.check()  # between batches: where a swallowed stop request is raised again
        batch = torch.as_tensor(particles[start : start + batch_size], dtype=torch.float64)
        out.append(efpset.calc_disc(_connected_efps(efpset, batch)).reshape(len(batch), -1))
        if progress is not None:
            progress(len(batch))
    return np.concatenate(out) if out else np.zeros((0, 36))


def _connected_efps(efpset: Any, batch: Any) -> np.ndarray:
    """(B, n_connected) EFPs of the connected graphs; `calc_disc` adds the products."""
    import torch

    eta, phi, zs = batch[..., 0], batch[..., 1], batch[..., 2]  # (B, P) each
    dphi = (phi[:, :, None] - phi[:, None, :]).abs()  # (B, P, P)
    dphi = torch.pi - (dphi - torch.pi).abs()  # energyflow's periodic phi distance
    theta = torch.sqrt((eta[:, :, None] - eta[:, None, :]) ** 2 + dphi**2)
    thetas = {w: theta**w for w in efpset.weight_set}
    columns = []
    for efp in efpset.efps:
        inputs, _, output = efp.einstr.partition("->")
        batched = ",".join("Z" + op for op in inputs.split(",")) + "->Z" + output
        columns.append(torch.einsum(batched, *[thetas[w] for w in efp.weights], *[zs] * efp.n))
    return torch.stack(columns, 1).numpy()
