"""The ConVAE's reconstruction check as run outputs: figures, plots and a report section.

A physicist must see a collapsed autoencoder at once: the figures of
`convae.diagnostics.reconstruction_diagnostics` (EMD to the input vs to another jet, input vs
reconstruction correlations, spread ratios) on held-out jets, a picture of a few jets beside
their reconstructions in (eta, phi) with marker area proportional to pt (as the research slides
show them) and each jet's three exclusive-kT axes (the prongs tau32 measures), and 2-D histograms
of input vs reconstructed jet mass, sum of pt_rel, tau21, tau32 and D2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from convae.diagnostics import jet_quantities, reconstruct, reconstruction_diagnostics
from convae.model import ConVAE
from jetflows.normalize import Normalization
from jetflows.physics import kt_axes, tau_ratios
from pipelines.data.jetnet import Jets
from pipelines.evaluation.report import pyplot, save_figure
from pipelines.io import markdown_table

SHOWN_JETS = 6
#: Targets of the reconstruction figures (the ConVAE issue): a healthy model meets them.
TARGETS: dict[str, str] = {
    "emd_ratio": "< 0.33",
    "correlation.mass": ">= 0.9",
    "correlation.tau21": ">= 0.8",
    "correlation.tau32": ">= 0.8",
    "correlation.d2": ">= 0.8",
    "w1.tau21": "<= 3",
    "w1.tau32": "<= 3",
    "w1.d2": "<= 3",
    "spread.*": ">= 0.8",
}
LABELS = {
    "mass": r"$m_{jet} / p_{T,jet}$",
    "pt_sum": r"$\sum p_{T,rel}$",
    "tau21": r"$\tau_{21}$",
    "tau32": r"$\tau_{32}$",
    "d2": "$D_2$",
}


def plot_jets(
    inputs: np.ndarray, in_mask: np.ndarray, recon: np.ndarray, rec_mask: np.ndarray, path: Path
) -> Path:
    """Input jets (top row) above their reconstructions (bottom row) in (eta_rel, phi_rel);
    marker area proportional to pt_rel, red crosses at the three exclusive-kT axes, tau32 in
    the title. inputs, recon: (n, P, 3); masks (n, P)."""
    plt = pyplot()
    n = len(inputs)
    axes_of = {}
    for name, x, m in (("input", inputs, in_mask), ("reconstruction", recon, rec_mask)):
        t, mm = torch.from_numpy(np.asarray(x, np.float64)), torch.from_numpy(np.asarray(m))
        axes_of[name] = (kt_axes(t, mm, n=3).numpy(), tau_ratios(t, mm)[:, 1].numpy())
    fig, axes = plt.subplots(2, n, figsize=(3 * n, 6.4), sharex=True, sharey=True, squeeze=False)
    for k in range(n):
        for row, (x, m, label) in enumerate(
            ((inputs[k], in_mask[k], "input"), (recon[k], rec_mask[k], "reconstruction"))
        ):
            ax = axes[row, k]
            ax.scatter(x[m, 0], x[m, 1], s=3000 * x[m, 2], alpha=0.6, edgecolors="k")
            prongs, tau32 = axes_of[label][0][k], axes_of[label][1][k]
            ax.scatter(prongs[:, 0], prongs[:, 1], marker="x", s=120, color="red", zorder=3)
            ax.set_title(f"jet {k}: {label}\n" + rf"$\tau_{{32}}$ = {tau32:.2f}", fontsize=11)
            ax.set_xlim(-0.8, 0.8)
            ax.set_ylim(-0.8, 0.8)
    for ax in axes[1]:
        ax.set_xlabel(r"$\eta_{rel}$")
    for ax in axes[:, 0]:
        ax.set_ylabel(r"$\phi_{rel}$")
    return save_figure(fig, path)


def plot_correlations(
    inputs: dict[str, np.ndarray], recon: dict[str, np.ndarray], path: Path
) -> Path:
    """2-D histograms of input vs reconstructed jet quantities (`LABELS`)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(LABELS), figsize=(6.5 * len(LABELS), 6.5))
    for ax, (name, label) in zip(axes, LABELS.items(), strict=True):
        a, b = inputs[name], recon[name]
        both = np.concatenate([a, b])
        log = name == "d2"  # long-tailed: most jets sit near 1, some at 10+
        lo, hi = np.quantile(both[both > 0] if log else both, [0.005, 0.995])
        bins = np.geomspace(lo, hi, 41) if log else np.linspace(lo, hi, 41)
        ax.hist2d(a, b, bins=[bins, bins], cmin=1)
        ax.plot([lo, hi], [lo, hi], color="red", linewidth=1)
        if log:
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlabel(f"input {label}")
        ax.set_ylabel(f"reconstructed {label}")
    return save_figure(fig, path)


def reconstruction_plots(
    vae: ConVAE, norm: Normalization, jets: Jets, directory: Path, *, seed: int = 0
) -> dict[str, Any]:
    """Reconstruct held-out ``jets``; write plots/reconstruction_*.png under ``directory``.

    Returns:
        The reconstruction.json contents: the diagnostics, the targets and the plot names.
    """
    x, m = torch.from_numpy(jets.particles.copy()), torch.from_numpy(jets.mask.copy())
    rec, rec_mask = reconstruct(vae, x, m, normalization=norm)
    quantities = jet_quantities(x, m), jet_quantities(rec, rec_mask)  # once: plots and figures
    diag = reconstruction_diagnostics(
        x, m, rec, rec_mask, generator=torch.Generator().manual_seed(seed), quantities=quantities
    )
    q_in, q_rec = ({k: v.numpy() for k, v in q.items()} for q in quantities)
    shown = np.random.default_rng(seed).choice(len(x), size=min(SHOWN_JETS, len(x)), replace=False)
    plots = directory / "plots"
    paths = [
        plot_jets(
            x[shown].numpy(),
            m[shown].numpy(),
            rec[shown].numpy(),
            rec_mask[shown].numpy(),
            plots / "reconstruction_jets.png",
        ),
        plot_correlations(q_in, q_rec, plots / "reconstruction_correlations.png"),
    ]
    return {**diag.to_dict(), "targets": TARGETS, "plots": [f"plots/{p.name}" for p in paths]}


def markdown(result: dict[str, Any]) -> list[str]:
    """The report.md section of a reconstruction.json."""
    corr, ranks, spread = result["correlation"], result["rank_correlation"], result["spread"]
    medians, w1 = result["median"], result["w1"]
    return [
        "## ConVAE reconstruction (held-out real jets)",
        "",
        f"{result['n_jets']} test jets encoded (posterior mean) and decoded; each reconstruction "
        "keeps as many of its hardest particles as its input has. A collapsed ConVAE (every jet "
        "decoded to one jet) shows an EMD ratio near 1, correlations near 0 and spreads near 0; "
        "one that keeps the mass but loses the prongs shows r(mass) near 1 with r(tau32) low, "
        "a reconstructed tau32 median above the input's and a tau32 W1 far above its floor "
        "(the floor: W1 between two halves of the inputs; the value: one half's "
        "reconstructions against the other half's inputs).",
        "",
        *markdown_table(
            ["figure", "value", "target"],
            [
                ["median EMD(input, reconstruction)", f"{result['emd_reconstruction']:.4g}", ""],
                ["median EMD(input, another real jet)", f"{result['emd_other']:.4g}", ""],
                ["EMD ratio", f"{result['emd_ratio']:.3f}", TARGETS["emd_ratio"]],
                *(
                    [
                        f"correlation of {k}, input vs reconstruction (rank correlation)",
                        f"{v:.3f} ({ranks[k]:.3f})",
                        TARGETS.get(f"correlation.{k}", ""),
                    ]
                    for k, v in corr.items()
                ),
                *(
                    [
                        f"{k}: median input / reconstruction",
                        f"{v['input']:.3g} / {v['reconstruction']:.3g}",
                        "",
                    ]
                    for k, v in medians.items()
                ),
                *(
                    [
                        f"{k}: W1(reconstructions, other inputs) / W1 floor",
                        f"{v['ratio']:.2f} ({v['value']:.3g} / {v['floor']:.3g})",
                        TARGETS.get(f"w1.{k}", ""),
                    ]
                    for k, v in w1.items()
                ),
                *(
                    [f"spread ratio {k}", f"{v:.3f}", TARGETS["spread.*"]]
                    for k, v in spread.items()
                ),
            ],
        ),
        "",
        *(f"![{Path(p).stem}]({p})" for p in result["plots"]),
    ]
