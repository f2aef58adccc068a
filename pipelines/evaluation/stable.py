"""Stable ratios to the truth floor: many real pairs x several generated samples.

One ratio W1(generated, real) / W1(real, real') at 2,500 jets is noisy: the substructure floor
moves 26-53% between real draws (`benchmarks/floor_spread.py`), so one draw can be off 2x.
The stable ratio of a figure averages both sides over many draws:

    stable = mean over (d, s) of W1(G_s, A_d)  /  mean over d of W1(A_d, B_d)

where (A_d, B_d) are ``draws`` disjoint pairs of ``n`` real jets drawn from the real pool and
G_s are the generated samples of ``n`` jets. Beside it, the 10-90% band of the single-draw
ratios W1(G_s, A_d) / W1(A_d, B_d): where one 2,500-jet figure would have landed.

Figures: W1M (jet mass, GeV), W1P (the real particles' eta, phi, pt pooled, as jetnet's W1P,
averaged over the three), W1EFP (jetnet's EFP selection, averaged), tau21, tau32, D2, and the
multiplicity; COV (jetnet's, 10 x 100 jets) as mean COV(G_0, A) / COV(B, A) over ``cov_draws``
pairs and the first generated sample (1 is as good as real jets; it saturates, so it is a check,
not a score, and at 5-10 s a call on 2 cores it is not worth every sample).

Example:
    >>> from pipelines.data.jetnet import Jets
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> def jets(n, shift=0.0):
    ...     p = np.abs(rng.normal(size=(n, 4, 3))) * 0.1 + shift
    ...     return Jets(p, np.ones((n, 4), bool), np.tile([500.0, 0, 50, 4], (n, 1)), -np.ones(n))
    >>> out = stable_ratios(jets(400), jets(400, 0.05), n=100, draws=4, cov_draws=0)
    >>> out["w1p"]["stable_ratio"] > 2
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipelines.data.jetnet import Jets
from pipelines.evaluation.metrics import (
    _particle_masks,
    efps,
    observables,
    w1efp_selection,
    wasserstein_1d,
)

#: the figures, in report order (COV is added beside them)
FIGURES: tuple[str, ...] = ("w1m", "w1p", "w1efp", "tau21", "tau32", "d2", "multiplicity")
#: figure -> the jet observable it is the W1 of
_OBSERVABLE = {
    "w1m": "mass",
    "tau21": "tau21",
    "tau32": "tau32",
    "d2": "d2",
    "multiplicity": "multiplicity",
}
#: the fewest real pairs and generated jets that make a ratio worth the name "stable"
MIN_DRAWS = 2


class Scored:
    """One sample's per-jet quantities, computed once: the observables, the real particles
    (jetnet's W1P exclusion) and the W1EFP selection of EFPs.

    Arguments:
        jets: particles (N, P, 3), mask (N, P), jet_features (N, 4).
    """

    def __init__(self, jets: Jets) -> None:
        self.n = len(jets.particles)
        self.obs = observables(jets)
        self.particles = jets.particles
        self.real = _particle_masks(jets.particles, jets.mask)
        self.efps = efps(jets.particles)[:, w1efp_selection()]  # (N, 5)

    def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The quantities of jets ``rows``: per observable, per particle feature (pooled over
        jets), per EFP."""
        parts = self.particles[rows][self.real[rows]]  # (particles, 3)
        out = {k: v[rows] for k, v in self.obs.items()}
        out.update({f"p{f}": parts[:, f] for f in range(3)})
        out.update({f"e{i}": self.efps[rows, i] for i in range(self.efps.shape[1])})
        return out


def w1s(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    """W1 of every figure in `FIGURES` between two samples' quantities (`Scored.take`)."""
    out = {k: wasserstein_1d(a[v], b[v]) for k, v in _OBSERVABLE.items()}
    out["w1p"] = float(np.mean([wasserstein_1d(a[f"p{f}"], b[f"p{f}"]) for f in range(3)]))
    efp = [k for k in a if k.startswith("e") and k[1:].isdigit()]
    out["w1efp"] = float(np.mean([wasserstein_1d(a[k], b[k]) for k in efp]))
    return out


def cov(real: np.ndarray, gen: np.ndarray, seed: int) -> float:
    """jetnet's COV (10 batches of 100 jets) of ``gen`` (N, P, 3) against ``real`` (M, P, 3)."""
    import jetnet

    np.random.seed(seed)  # jetnet draws its batches from numpy's global stream
    return float(jetnet.evaluation.cov_mmd(real, gen, use_tqdm=False)[0])


def split_samples(gen: Jets, n: int) -> list[Jets]:
    """``gen`` cut into consecutive samples of ``n`` jets (the remainder left out)."""
    arrays = (gen.particles, gen.mask, gen.jet_features, gen.labels)
    return [Jets(*(x[i * n : (i + 1) * n] for x in arrays)) for i in range(len(gen.particles) // n)]


def check_sizes(n_real: int, n_gen: int, n: int) -> None:
    """Refuse a real pool of under 2n jets or fewer than n generated ones (ValueError)."""
    if n < 1 or n_real < 2 * n or n_gen < n:
        raise ValueError(
            f"stable ratios at n = {n} need >= {2 * n} real jets (two disjoint halves) and >= "
            f"{n} generated ones; got {n_real} real and {n_gen} generated"
        )


def stable_ratios(
    real: Jets | Scored,
    generated: Jets | Sequence[Scored],
    *,
    n: int,
    draws: int = 16,
    cov_draws: int = 2,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Per figure: the stable ratio, its 10-90% single-draw band, and the mean W1s behind it.

    Arguments:
        real: the real pool (>= 2n jets), or its `Scored` quantities.
        generated: generated jets (cut into samples of ``n``, `split_samples`) or already
            scored samples of ``n`` jets each.
        n: jets per real half and per generated sample (state it beside the figures).
        draws: disjoint real pairs (A, B), each a fresh random split of the pool.
        cov_draws: of those pairs, how many score COV (0: no COV; it costs seconds a pair).
        seed: the real pairs' draws.

    Returns:
        {figure: {"stable_ratio", "band" [p10, p90], "model" mean W1(G, A), "floor" mean
        W1(A, B)}} for every figure in `FIGURES`, plus {"cov": {"stable_ratio"}} when
        ``cov_draws`` > 0, and {"n", "draws", "samples"}.
    """
    real = real if isinstance(real, Scored) else Scored(real)
    samples = (
        [Scored(g) for g in split_samples(generated, n)]
        if isinstance(generated, Jets)
        else list(generated)
    )
    check_sizes(real.n, sum(s.n for s in samples), n)
    rng = np.random.default_rng(seed)
    floors = {k: [] for k in FIGURES}
    model = {k: [] for k in FIGURES}  # (draws, samples)
    covs = []
    for d in range(draws):
        order = rng.permutation(real.n)
        a_rows, b_rows = order[:n], order[n : 2 * n]
        a = real.take(a_rows)
        for k, v in w1s(a, real.take(b_rows)).items():
            floors[k].append(v)
        per = [w1s(a, s.take(np.arange(n))) for s in samples]
        for k in FIGURES:
            model[k].append([p[k] for p in per])
        if d < cov_draws:
            floor = cov(real.particles[a_rows], real.particles[b_rows], seed + d)
            got = cov(real.particles[a_rows], samples[0].particles[:n], seed + d)
            covs.append(got / floor if floor > 0 else float("nan"))
    out: dict[str, dict[str, Any]] = {
        k: _figure(np.array(model[k]), np.array(floors[k])) for k in FIGURES
    }
    if covs:
        out["cov"] = {"stable_ratio": float(np.mean(covs))}
    out["sizes"] = {"n": n, "draws": draws, "samples": len(samples), "real": real.n}
    return out


def _figure(model: np.ndarray, floors: np.ndarray) -> dict[str, Any]:
    """One figure's entry from its W1s: model (draws, samples), floors (draws,). No ratio
    where the floor is 0 (a figure real jets never vary in, e.g. a fixed multiplicity)."""
    floor = float(floors.mean())
    if not floor > 0:
        return {"stable_ratio": None, "band": None, "model": float(model.mean()), "floor": floor}
    with np.errstate(divide="ignore", invalid="ignore"):
        single = (model / floors[:, None]).ravel()
    single = single[np.isfinite(single)]
    band = np.quantile(single, [0.1, 0.9]).tolist() if len(single) else None
    return {
        "stable_ratio": float(model.mean() / floor),
        "band": band,
        "model": float(model.mean()),
        "floor": floor,
    }
