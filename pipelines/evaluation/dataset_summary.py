"""Summaries of jet datasets: numbers (JSON, Markdown) and histograms (PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.data.jetnet import Jets
from pipelines.evaluation.report import pyplot
from pipelines.io import atomic_path, markdown_table, write_json, write_text

MASS_RANGE = (0.0, 400.0)  # GeV; covers every class at 1 TeV


def mass_peak(masses: np.ndarray, *, bandwidth: float = 0.05) -> float:
    """Most probable jet mass [GeV]: the maximum of a Gaussian KDE on a 0.25 GeV grid.

    A KDE rather than a histogram's fullest bin, so the answer does not hinge on bin edges.
    """
    from scipy.stats import gaussian_kde

    masses = np.asarray(masses, dtype=np.float64)
    grid = np.arange(*MASS_RANGE, 0.25)
    return float(grid[np.argmax(gaussian_kde(masses, bw_method=bandwidth)(grid))])


def particle_level(jets: Jets) -> tuple[np.ndarray, np.ndarray]:
    """Mass [GeV] and multiplicity of each jet from its stored particles, in the frame of the
    file's jet pt and eta (`pipelines.evaluation.metrics.kinematics`): the same definition for
    every file.

    (A Pythia or JetNet file's jet_features hold the clustered jet: hadron masses and every
    constituent, not only the stored ones; a generated file's come from its particles.)
    """
    from pipelines.evaluation.metrics import kinematics

    obs = kinematics(jets)
    return obs["mass"], obs["multiplicity"]


def summarize(jets: Jets) -> dict[str, float]:
    """Per-dataset figures. ``particle_*``: from the stored particles (compare these between
    files); ``file_*``: the file's own jet_features (the clustered jet in Pythia and JetNet
    files, the particles in generated ones: not comparable between the two kinds)."""
    mass, multiplicity = particle_level(jets)
    return {
        "jets": len(jets),
        "particle_mass_peak": mass_peak(mass),
        "particle_mass_median": float(np.median(mass)),
        "particle_multiplicity_median": float(np.median(multiplicity)),
        "file_mass_peak": mass_peak(jets.jet_features[:, 2]),
        "file_multiplicity_median": float(np.median(jets.jet_features[:, 3])),
        "pt_mean": float(jets.jet_features[:, 0].mean()),
    }


def summary_table(rows: dict[str, dict[str, float]]) -> str:
    """A Markdown table, one row per dataset name, one column per figure."""
    columns = list(next(iter(rows.values())))
    cells = ([name, *(f"{row[c]:.4g}" for c in columns)] for name, row in rows.items())
    return "\n".join(markdown_table(["dataset", *columns], cells)) + "\n"


def _histogram_png(path: Path, data: dict[str, np.ndarray], xlabel: str, bins: np.ndarray) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 6))
    for name, values in data.items():
        ax.hist(values, bins=bins, histtype="step", density=True, label=name, linewidth=1.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_summary(datasets: dict[str, Jets], out_dir: str | Path) -> dict[str, dict]:
    """Write summary.json, summary.md, mass.png and multiplicity.png for named datasets."""
    out_dir = Path(out_dir)
    rows = {name: summarize(jets) for name, jets in datasets.items()}
    write_json(out_dir / "summary.json", rows)
    write_text(
        out_dir / "summary.md",
        "# Jet datasets\n\nMass in GeV. `particle_*`: from the stored particles, the same "
        "definition for every file: compare these. `file_*`: the file's jet_features, i.e. "
        "the clustered jet (hadron masses, every constituent) in Pythia and JetNet files "
        "but the stored particles in generated ones: not comparable between the two.\n\n"
        + summary_table(rows)
        + "\n![mass](mass.png)\n![n](multiplicity.png)\n",
    )
    levels = {k: particle_level(v) for k, v in datasets.items()}
    size = max(v.particles.shape[1] for v in datasets.values())
    _histogram_png(
        out_dir / "mass.png",
        {k: mass for k, (mass, _) in levels.items()},
        "jet mass from the stored particles [GeV]",
        np.linspace(*MASS_RANGE, 81),
    )
    _histogram_png(
        out_dir / "multiplicity.png",
        {k: n for k, (_, n) in levels.items()},
        "stored particles per jet",
        np.arange(-0.5, size + 1.5),
    )
    return rows
