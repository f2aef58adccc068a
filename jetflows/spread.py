"""How much jets vary: the spread of each pt-ordered particle slot across jets.

A generator or an autoencoder that has collapsed emits nearly the same jet every time; its
per-slot standard deviation across jets is then far below that of real jets. The spread ratio
(std of the jets under test over std of reference jets, per feature, averaged over slots) reads
0 for a collapse and ~1 for jets that vary as real ones do. Used by the ConVAE's reconstruction
diagnostics (reconstruction vs its input) and by the evaluation (generated vs real).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> real = rng.normal(size=(500, 30, 3))
    >>> mask = np.ones((500, 30), dtype=bool)
    >>> {k: round(v, 1) for k, v in spread_ratio(0.5 * real, mask, real, mask).items()}
    {'eta': 0.5, 'phi': 0.5, 'pt': 0.5}
"""

from __future__ import annotations

import numpy as np

from jetflows.physics import ETA, PHI, PT, Array

#: Particle features, in order, with the names the spread ratio uses.
FEATURES: tuple[str, ...] = ("eta", "phi", "pt")


def _numpy(x: Array) -> np.ndarray:
    return np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)


def slot_std(particles: Array, mask: Array) -> np.ndarray:
    """Std across jets of each particle slot, real particles only: (N, P, F) -> (P, F).

    Slots with fewer than two real particles give NaN (`spread_ratio` skips them).
    """
    x, w = _numpy(particles), _numpy(mask)[..., None]  # (N, P, F), (N, P, 1)
    count = w.sum(0)  # (P, 1)
    mean = (x * w).sum(0) / np.maximum(count, 1)
    var = (((x - mean) ** 2) * w).sum(0) / np.maximum(count - 1, 1)
    return np.where(count >= 2, np.sqrt(var), np.nan)


def spread_ratio(
    particles: Array, mask: Array, reference: Array, ref_mask: Array
) -> dict[str, float]:
    """Per feature: mean over slots of std(particles) / std(reference), stds across jets.

    Arguments:
        particles, mask: (N, P, 3), (N, P): reconstructed or generated jets.
        reference, ref_mask: (M, P, 3), (M, P): real jets (the same jets for a reconstruction,
            another sample of the class for a generator).

    Returns:
        {eta, phi, pt}: 1 when the jets vary as much as the reference, 0 when all are equal.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = slot_std(particles, mask) / slot_std(reference, ref_mask)  # (P, F)
    out = {}
    for i, name in zip((ETA, PHI, PT), FEATURES, strict=True):
        finite = ratio[:, i][np.isfinite(ratio[:, i])]
        out[name] = float(finite.mean()) if len(finite) else float("nan")
    return out
