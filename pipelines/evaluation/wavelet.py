"""Jet images and the wavelet EMD between them (Shirdhonkar & Jacobs, "Approximate earth mover's
distance in linear time", CVPR 2008).

The EMD between two images normalized to unit mass is approximated by the weighted L1 norm of
the wavelet coefficients of their difference: sum over detail levels l (1 = finest) of
2^(l (1 + n/2)) |coefficients at l|, n = 2 dimensions, in pixel units. It is linear in the
pixels; the exact EMD (`exact_image_emd`, POT's network simplex) is cubic-ish in the occupied
pixels. PyWavelets provides the transform, POT the exact distance; neither has the
approximation, so it is written here (a few lines over `pywt.wavedec2`).

Equal to the EMD up to a constant factor where images are smooth (blobs); on jet images, a
few hard pixels, it tracks the exact EMD only loosely and is hardly faster, so the study
reports both. Haar wavelets with zero padding tracked the exact EMD best on smooth images, so
they are the default. The measurements (`benchmarks/wavelet_emd.py`): docs/studies.md.
"""

from __future__ import annotations

import warnings

import numpy as np

from jetflows.errors import UserError

#: the image of a jet: pt_rel-weighted (eta_rel, phi_rel) histogram on [-EXTENT, EXTENT]^2
BINS, EXTENT = 32, 0.8


def jet_images(
    particles: np.ndarray, mask: np.ndarray, *, bins: int = BINS, extent: float = EXTENT
) -> np.ndarray:
    """pt_rel-weighted (eta_rel, phi_rel) images, each normalized to unit sum.

    particles: (N, P, 3) (eta_rel, phi_rel, pt_rel); mask: (N, P). Returns (N, bins, bins);
    particles outside [-extent, extent]^2 are left out.
    """
    n = len(particles)
    edges = np.linspace(-extent, extent, bins + 1)
    eta, phi, pt = (np.where(mask, particles[..., i], np.nan) for i in range(3))
    i = np.digitize(eta, edges) - 1
    j = np.digitize(phi, edges) - 1
    inside = mask & (i >= 0) & (i < bins) & (j >= 0) & (j < bins)
    images = np.zeros((n, bins * bins))
    rows = np.broadcast_to(np.arange(n)[:, None], mask.shape)[inside]
    np.add.at(images, (rows, i[inside] * bins + j[inside]), pt[inside])
    total = images.sum(1, keepdims=True)
    return (images / np.where(total > 0, total, 1)).reshape(n, bins, bins)


def wavelet_emd(p: np.ndarray, q: np.ndarray, *, wavelet: str = "haar") -> float:
    """The wavelet EMD between two images (H, W) of any positive mass, in pixel units.

    Example:
        >>> a = np.zeros((8, 8)); a[2, 2] = 1
        >>> b = np.zeros((8, 8)); b[2, 6] = 1
        >>> c = np.zeros((8, 8)); c[2, 3] = 1
        >>> wavelet_emd(a, b) > wavelet_emd(a, c) > 0 == wavelet_emd(a, a)
        True
    """
    import pywt  # imported on use: only the study needs it

    if p.shape != q.shape or p.ndim != 2:
        raise UserError(f"two images of one shape (H, W) are needed, got {p.shape}, {q.shape}")
    difference = p / p.sum() - q / q.sum()
    levels = int(np.log2(min(p.shape)))
    with warnings.catch_warnings():  # every level down to one pixel: boundary effects noted
        warnings.simplefilter("ignore", UserWarning)
        coefficients = pywt.wavedec2(difference, wavelet, mode="zero", level=levels)
    dimension = 2
    return float(
        sum(
            2.0 ** ((levels - k) * (1 + dimension / 2)) * sum(np.abs(c).sum() for c in details)
            for k, details in enumerate(coefficients[1:])  # coarsest (level ``levels``) first
        )
    )


def exact_image_emd(p: np.ndarray, q: np.ndarray) -> float:
    """The exact EMD between two images (H, W), normalized to unit mass, with the Euclidean
    distance between pixel centres (pixel units): POT's network simplex."""
    import ot

    ys, xs = np.mgrid[: p.shape[0], : p.shape[1]]
    centres = np.stack([ys.ravel(), xs.ravel()], 1).astype(float)
    a, b = p.ravel() / p.sum(), q.ravel() / q.sum()
    ia, ib = a > 0, b > 0
    return float(ot.emd2(a[ia], b[ib], ot.dist(centres[ia], centres[ib], metric="euclidean")))
