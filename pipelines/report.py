"""Evaluation outputs people look at: histograms with ratio panels (PNG) and report.md."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.io import atomic_path
from pipelines.metrics import EMD_OBSERVABLES, observables, w1efp_selection

#: Report sections: (title, metric names, note).
SECTIONS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (
        "Observable EMDs (true 1-D Wasserstein distances on samples)",
        tuple(f"emd_{n}" for n in EMD_OBSERVABLES)
        + tuple(f"emd_{n}_scaled" for n in EMD_OBSERVABLES)
        + ("emd_sum",),
        "emd_<x> in the observable's unit (GeV for mass, pt, energy; tau21, tau32 and D2 are "
        "dimensionless substructure: N-subjettiness ratios with exclusive-kT axes, and the "
        "energy-correlation ratio); emd_<x>_scaled divides by the real sample's standard "
        "deviation; emd_sum adds the scaled terms.",
    ),
    (
        "JetNet metrics (jetnet library)",
        ("w1m", "w1p", "w1p_eta", "w1p_phi", "w1p_pt", "w1efp", "fpd", "kpd", "fpnd", "cov", "mmd"),
        "W1M on the relative mass m/pt_jet; W1P per particle feature and mean; W1EFP mean over the "
        "5 EFPs n=4, d=4, prime; FPD/KPD on the 36 EFPs of degree <= 4; COV: higher is better. "
        "FPND compares with jetnet's statistics of the real JetNet jets: its truth floor (real "
        "held-out jets) is how far the data themselves are from JetNet (JetNet's own jets: ~0), "
        "so read a model's FPND as its ratio to that floor.",
    ),
    (
        "Spread of the jets (a collapsed generator emits nearly one jet)",
        ("spread_eta", "spread_phi", "spread_pt"),
        "Std across jets of each pt-ordered particle slot, generated over real, averaged over "
        "slots, per feature: ~1 when generated jets vary as real ones do, ~0 for a collapse.",
    ),
    (
        "Divergences on histograms (natural log)",
        tuple(f"jsd_{n}" for n in EMD_OBSERVABLES) + tuple(f"kl_{n}" for n in EMD_OBSERVABLES),
        "JSD exact, in [0, ln 2]; KL(real || gen) with 1e-12 added to empty bins.",
    ),
    (
        "Legacy (research code; NOT a distance between observables)",
        (
            "legacy_emd_mass",
            "legacy_emd_pt",
            "legacy_emd_energy",
            "legacy_emd_eta",
            "legacy_emd_phi",
            "legacy_emd_sum",
        ),
        "W1 between histogram bin heights, as the research code computed it; for comparison with "
        "old numbers only.",
    ),
)


def fmt(x: float | None, *, spec: str = ".4g", uncertainty: bool = False) -> str:
    """A number for people: "n/a" where it is undefined (None, NaN) or, for an ``uncertainty``,
    where none was measured (0: FPND, the divergences and the EMDs come without one)."""
    if x is None or not math.isfinite(x) or (uncertainty and x == 0):
        return "n/a"
    return format(x, spec)


def _table(rows: dict[str, dict[str, float]], names: tuple[str, ...]) -> list[str]:
    lines = ["| metric | generated | ± | truth floor | ± | ratio |", "|---|---|---|---|---|---|"]
    for name in names:
        if name in rows:
            r = rows[name]
            lines.append(
                f"| {name} | {fmt(r['value'])} | {fmt(r['std'], uncertainty=True)} | "
                f"{fmt(r['floor'])} | {fmt(r['floor_std'], uncertainty=True)} | {fmt(r['ratio'])} |"
            )
    notes = [
        f"- {name} {field}: n/a, {reason}"
        for name in names
        for field, reason in rows.get(name, {}).get("undefined", {}).items()
    ]
    return lines + (["", *notes] if notes else [])


def write_report(
    results: dict[str, Any],
    plots: list[Path],
    path: Path,
    *,
    extra: list[str] | tuple[str, ...] = (),
) -> Path:
    """report.md: every metric with its truth floor and the ratio, ``extra`` Markdown lines,
    then the plots."""
    lines = [
        f"# Evaluation: {results.get('inputs', {}).get('gen', 'generated')} vs "
        f"{results.get('inputs', {}).get('real', 'real')}",
        "",
        f"{results['n_jets']} jets per sample, class {results['jet_class'] or 'unknown'}, "
        f"seed {results['config']['seed']}. Truth floor: the same metric between two disjoint "
        "real samples of the same size; ratio = generated / floor (about 1: as close to the real "
        "jets as another real sample is; nan where the floor is <= 0, as KPD's can be).",
    ]
    if results["n_jets"] < 50_000:
        lines += [
            "",
            f"Note: jetnet's metrics are defined on 50,000 jets; with "
            f"{results['n_jets']} they are noisier and biased upwards (FPD, FPND most). "
            "Compare with the floor, which has the same size.",
        ]
    for title, names, note in SECTIONS:
        lines += ["", f"## {title}", "", note, "", *_table(results["metrics"], names)]
    if results["skipped"]:
        lines += ["", "## Skipped", ""]
        lines += [f"- {name}: {reason}" for name, reason in results["skipped"].items()]
    if extra:
        lines += ["", *extra]
    lines += ["", "## Plots", ""]
    lines += [f"![{p.stem}](plots/{p.name})" for p in plots]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path


def pyplot() -> Any:
    """matplotlib.pyplot with the Agg backend and the mplhep ROOT style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    plt.style.use(mplhep.style.ROOT)
    return plt


def _ratio_axes(
    ax_top: Any,
    ax_ratio: Any,
    real: np.ndarray,
    gen: np.ndarray,
    bins: np.ndarray,
    xlabel: str,
    logx: bool,
) -> None:
    """Normalised histograms of real and generated values, with gen/real underneath."""
    import mplhep

    h_real, _ = np.histogram(real, bins=bins)
    h_gen, _ = np.histogram(gen, bins=bins)
    widths = np.diff(bins)
    d_real, d_gen = (h / max(h.sum(), 1) / widths for h in (h_real, h_gen))
    mplhep.histplot(d_real, bins, ax=ax_top, label="real", histtype="fill", alpha=0.35)
    mplhep.histplot(d_gen, bins, ax=ax_top, label="generated", histtype="step", linewidth=1.5)
    ax_top.set_ylabel("density")
    ax_top.legend()
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(h_real > 0, d_gen / d_real, np.nan)
    mplhep.histplot(ratio, bins, ax=ax_ratio, histtype="step", color="black")
    ax_ratio.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax_ratio.set_ylim(0, 2)
    ax_ratio.set_ylabel("gen / real")
    ax_ratio.set_xlabel(xlabel)
    if logx:
        ax_top.set_xscale("log")
        ax_ratio.set_xscale("log")


def _bins(real: np.ndarray, gen: np.ndarray, logx: bool, integer: bool) -> np.ndarray:
    both = np.concatenate([real, gen])
    if integer:
        return np.arange(both.min() - 0.5, both.max() + 1.5)
    lo, hi = np.quantile(both[both > 0] if logx else both, [0.001, 0.999])
    lo, hi = (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)
    return np.geomspace(lo, hi, 51) if logx else np.linspace(lo, hi, 51)


def _figure(
    path: Path,
    real: np.ndarray,
    gen: np.ndarray,
    xlabel: str,
    *,
    logx: bool = False,
    integer: bool = False,
) -> Path:
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(8, 8), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    _ratio_axes(top, bottom, real, gen, _bins(real, gen, logx, integer), xlabel, logx)
    return save_figure(fig, path)


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out ``fig``, write it atomically as PNG to ``path`` and close it."""
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=90)
    finally:
        plt.close(fig)
    return path


#: Axis names of observables whose key is not their name.
LABELS = {"tau21": "tau21 = tau2/tau1", "tau32": "tau32 = tau3/tau2", "d2": "D2 (beta = 1)"}


def write_plots(
    samples: Any,
    ref_efps: np.ndarray,
    gen_efps: np.ndarray,
    out_dir: Path,
    *,
    obs: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None,
) -> list[Path]:
    """PNG histograms with ratio panels: jet observables (``obs``: the reference's and the
    generated sample's `observables`, computed here if absent), particle features, EFPs."""
    ref, gen = samples.reference, samples.gen
    obs_ref, obs_gen = obs or (observables(ref), observables(gen))
    units = {"mass": " [GeV]", "pt": " [GeV]", "energy": " [GeV]"}
    paths = [
        _figure(
            out_dir / f"jet_{name}.png",
            obs_ref[name],
            obs_gen[name],
            f"jet {LABELS.get(name, name)} from its particles{units.get(name, '')}",
            integer=name == "multiplicity",
        )
        for name in EMD_OBSERVABLES
    ]
    for i, (feature, logx) in enumerate((("eta_rel", False), ("phi_rel", False), ("pt_rel", True))):
        paths.append(
            _figure(
                out_dir / f"particle_{feature}.png",
                ref.particles[..., i][ref.mask],
                gen.particles[..., i][gen.mask],
                f"particle {feature}",
                logx=logx,
            )
        )
    for k, column in enumerate(np.flatnonzero(w1efp_selection())):
        paths.append(
            _figure(
                out_dir / f"efp_{k}.png",
                ref_efps[:, column],
                gen_efps[:, column],
                f"EFP {column} (n=4, d=4)",
                logx=True,
            )
        )
    return paths
