"""Evaluation outputs people look at: histograms with ratio panels (PNG) and report.md."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.evaluation.metrics import EMD_OBSERVABLES, observables, w1efp_selection
from pipelines.io import atomic_path, markdown_table, write_text

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
    header = ["metric", "generated", "±", "truth floor", "±", "ratio"]
    lines = markdown_table(
        header,
        (
            [
                name,
                fmt(r["value"]),
                fmt(r["std"], uncertainty=True),
                fmt(r["floor"]),
                fmt(r["floor_std"], uncertainty=True),
                fmt(r["ratio"]),
            ]
            for name, r in ((n, rows[n]) for n in names if n in rows)
        ),
    )
    notes = [
        f"- {name} {field}: n/a, {reason}"
        for name in names
        for field, reason in rows.get(name, {}).get("undefined", {}).items()
    ]
    return lines + (["", *notes] if notes else [])


#: the stable figures' names as the tables print them
STABLE_NAMES = {
    "w1m": "W1M",
    "w1p": "W1P",
    "w1efp": "W1EFP",
    "tau21": "tau21",
    "tau32": "tau32",
    "d2": "D2",
    "multiplicity": "multiplicity",
    "cov": "COV",
}


def stable_cell(entry: dict[str, Any] | None, *, band: bool = True) -> str:
    """``ratio [p10-p90]`` of one stable figure; "-" where there is none (a floor of 0)."""
    if not entry or entry.get("stable_ratio") is None:
        return "-"
    text = f"{entry['stable_ratio']:.2f}"
    if band and entry.get("band"):
        text += f" [{entry['band'][0]:.2f}-{entry['band'][1]:.2f}]"
    return text


def stable_table(stable: dict[str, Any]) -> list[str]:
    """report.md's headline: every stable ratio with its band, and how it was drawn."""
    sizes = stable["sizes"]
    names = [k for k in STABLE_NAMES if k in stable]
    return [
        "## Stable ratios to the truth floor (decide by these)",
        "",
        f"Mean W1(generated, real A) / mean W1(real A, real B) over {sizes['draws']} random "
        f"splits (A, B) of {sizes['real']} real jets into halves of {sizes['n']}, and "
        f"{sizes['samples']} generated sample(s) of {sizes['n']}; in brackets the 10-90% band "
        "of single-draw ratios (where one draw lands). COV: generated over real, COV(G, A) / "
        "COV(B, A). W1M on the jet mass in GeV; W1P and W1EFP averaged as jetnet's.",
        "",
        *markdown_table(
            [STABLE_NAMES[k] for k in names], [[stable_cell(stable[k]) for k in names]]
        ),
    ]


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
    if results.get("stable"):
        lines += ["", *stable_table(results["stable"])]
        lines += [
            "",
            "The sections below are one draw each (the floor from one other real sample).",
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
    return write_text(path, "\n".join(lines) + "\n")


def pyplot() -> Any:
    """matplotlib.pyplot with the Agg backend and the mplhep ROOT style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    plt.style.use(mplhep.style.ROOT)
    return plt


#: The ratio panel's range; ratios outside it are drawn as arrows at its edge.
RATIO_RANGE = (0.0, 2.0)


def _ratio_axes(
    ax_top: Any,
    ax_ratio: Any,
    real: np.ndarray,
    gen: np.ndarray,
    bins: np.ndarray,
    xlabel: str,
    logx: bool,
) -> None:
    """Histograms of real and generated values with Poisson error bars, and gen/real underneath
    with the real sample's statistical band; out-of-range ratios are arrows at the panel's edge.

    Densities per unit of x, or (``logx``) the fraction of entries per log-spaced bin, so a
    distribution spanning decades is not squashed by the widest bins; log-y when the populated
    bins span more than three decades.
    """
    import mplhep

    h_real, _ = np.histogram(real, bins=bins)
    h_gen, _ = np.histogram(gen, bins=bins)
    norm = (lambda h: max(h.sum(), 1)) if logx else (lambda h: max(h.sum(), 1) * np.diff(bins))
    d_real, d_gen = h_real / norm(h_real), h_gen / norm(h_gen)
    e_real, e_gen = np.sqrt(h_real) / norm(h_real), np.sqrt(h_gen) / norm(h_gen)
    mplhep.histplot(d_real, bins, ax=ax_top, label="real", histtype="fill", alpha=0.35)
    mplhep.histplot(d_real, bins, ax=ax_top, yerr=e_real, histtype="errorbar", color="C0")
    mplhep.histplot(
        d_gen, bins, ax=ax_top, yerr=e_gen, label="generated", histtype="step", linewidth=1.5
    )
    ax_top.set_ylabel("fraction per bin" if logx else "density")
    _y_scale(ax_top, np.concatenate([d_real, d_gen]))
    ax_top.legend(loc="upper right", frameon=False)
    _ratio_panel(ax_ratio, h_real, h_gen, d_real, d_gen, bins)
    ax_ratio.set_xlabel(xlabel)
    if logx:
        ax_top.set_xscale("log")
        ax_ratio.set_xscale("log")


def _y_scale(ax: Any, heights: np.ndarray) -> None:
    """Log-y when the non-empty bins span more than three decades; headroom for the legend."""
    positive = heights[heights > 0]
    if len(positive) and positive.max() / positive.min() > 1e3:
        ax.set_yscale("log")
        ax.set_ylim(positive.min() / 3, positive.max() * 30)
    else:
        ax.set_ylim(0, max(heights.max(), 1e-12) * 1.35)


def _ratio_panel(
    ax: Any,
    h_real: np.ndarray,
    h_gen: np.ndarray,
    d_real: np.ndarray,
    d_gen: np.ndarray,
    bins: np.ndarray,
) -> None:
    """gen/real with Poisson error bars, the real sample's relative uncertainty as a grey band
    around 1, and arrows where the ratio leaves `RATIO_RANGE` (up where only generated jets
    fall; nothing where neither sample has entries)."""
    lo, hi = RATIO_RANGE
    centres = 0.5 * (bins[1:] + bins[:-1])
    with np.errstate(divide="ignore", invalid="ignore"):
        # generated jets where the real sample has none: an arrow up (infinite ratio)
        ratio = np.where(h_real > 0, d_gen / d_real, np.where(h_gen > 0, np.inf, np.nan))
        error = np.where(np.isfinite(ratio), ratio, 0) / np.sqrt(np.maximum(h_gen, 1))
        band = np.where(h_real > 0, 1 / np.sqrt(np.maximum(h_real, 1)), np.nan)
    ax.fill_between(
        bins,
        np.append(1 - band, 1 - band[-1]),
        np.append(1 + band, 1 + band[-1]),
        step="post",
        color="grey",
        alpha=0.3,
        linewidth=0,
        label="real stat. unc.",
    )
    inside = (ratio >= lo) & (ratio <= hi)
    ax.errorbar(centres[inside], ratio[inside], yerr=error[inside], fmt="o", ms=3, color="black")
    margin = 0.06 * (hi - lo)
    ax.plot(centres[ratio > hi], np.full((ratio > hi).sum(), hi - margin), "^", color="C3", ms=6)
    ax.plot(centres[ratio < lo], np.full((ratio < lo).sum(), lo + margin), "v", color="C3", ms=6)
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_ylim(lo, hi)
    ax.set_ylabel("gen / real")


def _bins(real: np.ndarray, gen: np.ndarray, logx: bool, integer: bool) -> np.ndarray:
    both = np.concatenate([real, gen])
    if integer:  # one bin per count, at least 10 counts wide, at most ~60 bins
        lo, hi = np.floor(both.min()), np.ceil(both.max())
        lo = min(lo, hi - 10)
        step = max(1, int(np.ceil((hi - lo + 1) / 60)))
        return np.arange(lo - 0.5, hi + step + 0.5, step)
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


def training_curves(histories: dict[str, list[dict[str, float]]], out_dir: Path) -> list[Path]:
    """One PNG per training stage (history.json): every train_*/valid_* term against the epoch,
    log-y when a term spans more than a decade or goes negative-free across decades.

    Arguments:
        histories: {stage: [{"epoch", "train_loss", "valid_loss", ...}, ...]}.

    Returns:
        The written paths, ``out_dir/training_<stage>.png``.
    """
    plt = pyplot()
    paths = []
    for stage, rows in histories.items():
        terms = sorted({k.split("_", 1)[1] for r in rows for k in r if k.startswith("train_")})
        if not rows or not terms:
            continue
        fig, axes = plt.subplots(1, len(terms), figsize=(5 * len(terms), 4.5), squeeze=False)
        epochs = [r["epoch"] for r in rows]
        for ax, term in zip(axes[0], terms, strict=True):
            for split, style in (("train", "-"), ("valid", "--")):
                values = np.array([r.get(f"{split}_{term}", np.nan) for r in rows], float)
                ax.plot(epochs, values, style, label=split)
            both = np.array(
                [r.get(f"{s}_{term}", np.nan) for r in rows for s in ("train", "valid")]
            )
            both = both[np.isfinite(both)]
            if len(both) and both.min() > 0 and both.max() / both.min() > 10:
                ax.set_yscale("log")
            ax.set_xlabel("epoch")
            ax.set_ylabel(term)
            ax.legend(frameon=False)
        fig.suptitle(stage)
        paths.append(save_figure(fig, out_dir / f"training_{stage}.png"))
    return paths


def summary_figure(results: dict[str, dict[str, Any]], names: tuple[str, ...], path: Path) -> Path:
    """One figure per run: each metric's ratio to its truth floor, one marker per class (log
    scale, 1 = as close as another real sample); undefined ratios are left out.

    Arguments:
        results: {class: metrics.json contents}.
        names: the metrics to show, in order.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(9, 0.9 * len(names)), 7))
    x = np.arange(len(names))
    for k, (jet_class, result) in enumerate(results.items()):
        rows = result["metrics"]
        ratios = np.array([rows.get(n, {}).get("ratio", np.nan) for n in names], float)
        ratios = np.where(np.isfinite(ratios) & (ratios > 0), ratios, np.nan)
        offset = (k - (len(results) - 1) / 2) * 0.12
        ax.plot(x + offset, ratios, "o", label=jet_class)
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylabel("gen / truth floor")
    ax.set_title("1: as close as real data; COV: higher is better", fontsize=14, pad=62)
    # above the axes, so it never covers a marker
    ax.legend(frameon=False, ncol=len(results), loc="lower center", bbox_to_anchor=(0.5, 1.0))
    return save_figure(fig, path)
