"""The wavelet EMD against the exact EMD: time per pair and error, on random blob images and on
real jet images (single jets, and means of 25 jets as the study compares).

    python benchmarks/wavelet_emd.py [--pairs 60] [--jets data.hdf5]

Blob images: 2-4 Gaussian blobs of random width and weight, small values cut (sparse, as jet
images are). Jet images: pt-weighted (eta_rel, phi_rel) images of single jets (`--jets`, a
JetNet-layout file; default: 2,000 embedded Pythia8 top jets from the chunk cache). Prints, per
image size, the mean ratio wavelet / exact and its relative spread (the approximation equals
the EMD up to a constant factor), the Pearson and Kendall correlations, and milliseconds per
pair for both.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import machine_line
from scipy.stats import kendalltau, pearsonr

from pipelines.data.jetnet import read_jetnet_file
from pipelines.evaluation.wavelet import exact_image_emd, jet_images, wavelet_emd


def blobs(rng: np.random.Generator, n: int) -> np.ndarray:
    """An n x n image of 2-4 Gaussian blobs."""
    ys, xs = np.mgrid[:n, :n]
    image = np.zeros((n, n))
    for _ in range(rng.integers(2, 5)):
        cy, cx = rng.uniform(1, n - 1, 2)
        width, weight = rng.uniform(0.05, 0.15) * n, rng.uniform(0.2, 1)
        image += weight * np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * width**2))
    image[image < 1e-3 * image.max()] = 0
    return image


def compare(pairs: list[tuple[np.ndarray, np.ndarray]]) -> str:
    """One line: ratio, correlations and the time of each method per pair."""
    start = time.perf_counter()
    exact = np.array([exact_image_emd(p, q) for p, q in pairs])
    t_exact = (time.perf_counter() - start) / len(pairs)
    start = time.perf_counter()
    approx = np.array([wavelet_emd(p, q) for p, q in pairs])
    t_wavelet = (time.perf_counter() - start) / len(pairs)
    ratio = approx / exact
    return (
        f"ratio {ratio.mean():.2f} +- {ratio.std() / ratio.mean():.0%}, "
        f"pearson {pearsonr(approx, exact)[0]:.3f}, kendall {kendalltau(approx, exact)[0]:.3f}; "
        f"exact {t_exact * 1e3:.2f} ms, wavelet {t_wavelet * 1e3:.3f} ms per pair "
        f"({t_exact / t_wavelet:.0f}x)"
    )


def jets_file(path: str | None) -> str:
    """The jets to draw images from: ``path``, else embedded Pythia8 top jets."""
    if path:
        return path
    from pathlib import Path
    from tempfile import mkdtemp

    from pipelines.data.production import generate_file
    from pipelines.data.pythia import PythiaConfig

    out = Path(mkdtemp()) / "t.hdf5"
    generate_file(PythiaConfig("t"), 2000, out, progress=False)
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=60, help="image pairs per size")
    parser.add_argument("--jets", help="JetNet-layout file of real jets")
    args = parser.parse_args()
    print(machine_line())
    rng = np.random.default_rng(0)
    for n in (16, 32):
        pairs = [(blobs(rng, n), blobs(rng, n)) for _ in range(args.pairs)]
        print(f"blobs {n} x {n}: {compare(pairs)}")
    jets = read_jetnet_file(jets_file(args.jets))
    for bins in (16, 32):
        images = jet_images(jets.particles, jets.mask, bins=bins)
        images = images[images.sum((1, 2)) > 0]
        pairs = [(images[2 * i], images[2 * i + 1]) for i in range(args.pairs)]
        print(f"single top jets, {bins} x {bins}: {compare(pairs)}")
        # what the study compares: mean images (dense), here of 25 jets each
        groups = images[: len(images) // 25 * 25].reshape(-1, 25, bins, bins).mean(1)
        pairs = [(groups[2 * i], groups[2 * i + 1]) for i in range(len(groups) // 2)]
        print(f"  mean images of 25 top jets: {compare(pairs)}")


if __name__ == "__main__":
    main()
