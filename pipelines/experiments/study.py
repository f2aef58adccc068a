"""The loss x metric study: `jetflows study --config configs/study_losses.yaml`.

The research plan asked what the choice of reconstruction loss does to the generated jets, and
whether the metrics agree on it. Per class and per ConVAE loss (by default the research code's
eq. 1 positions-only Chamfer, eq. 2 nearest position, eq. 4 Chamfer, the exact and the Sinkhorn
EMD; eq. 3, `intensity_axis`, is eq. 4 at unit intensity weight, so its cell would repeat
Chamfer's), one cell trains the ConVAE and its latent flow at the same budget (the base
pipeline config), samples as `jetflows sample` would, and scores the jets with every metric
beside its truth floor (two disjoint real samples of the same size):

- ``recon_emd``: median per-jet EMD between held-out jets and their reconstructions (a ConVAE
  figure, no floor);
- ``emd_sum`` and the separate scaled EMDs of mass, multiplicity and tau32;
- ``log_emd_sum``: the scaled EMDs of log(x) of the positive observables, which weigh small
  values as much as large ones;
- ``jsd_sum``, ``kl_sum``: Jensen-Shannon and Kullback-Leibler divergences summed over the
  observables' histograms;
- ``wavelet_emd``: the wavelet EMD between the mean jet images (`pipelines.evaluation.wavelet`), and
  ``image_emd``: the exact EMD between the same images, to see whether the two agree;
- jetnet's ``w1m``, ``w1p``, ``w1efp``, ``fpd`` and ``cov``.

Each metric is read as its ratio to the floor (``recon_emd`` as its value), and the metrics'
rankings of the losses are compared by Kendall's tau: do they agree on which loss is best?
A cell is written to ``<root>/<study>/<class>/<loss>.json`` with its config's hash when
complete, so an interrupted study resumes at the first missing cell.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import kendalltau, wasserstein_distance
from tqdm import tqdm

from convae.diagnostics import reconstruction_diagnostics
from convae.losses import PARTICLE_LOSSES
from jetflows.classes import canonical_class
from jetflows.errors import UserError
from pipelines.data.jetnet import Jets
from pipelines.evaluation.evaluate import (
    EvalConfig,
    Samples,
    draw_samples,
    evaluate_samples,
    sample_efps,
    sample_observables,
)
from pipelines.evaluation.report import fmt, pyplot, save_figure
from pipelines.evaluation.rows import MetricRow
from pipelines.evaluation.wavelet import BINS, exact_image_emd, jet_images, wavelet_emd
from pipelines.io import keyed_json, markdown_table, write_json, write_text
from pipelines.run import stages
from pipelines.run.config import (
    PipelineConfig,
    TwoStageConfig,
    based_config,
    check_name,
    class_tree,
    digest,
    pipeline_config,
)
from pipelines.run.twostage import train_two_stage

#: the study's metrics, as columns; all lower-is-better except those in HIGHER_IS_BETTER
METRICS = (
    "recon_emd",
    "emd_sum",
    "emd_mass_scaled",
    "emd_multiplicity_scaled",
    "emd_tau32_scaled",
    "log_emd_sum",
    "jsd_sum",
    "kl_sum",
    "wavelet_emd",
    "image_emd",
    "w1m",
    "w1p",
    "w1efp",
    "fpd",
    "cov",
)
HIGHER_IS_BETTER = ("cov",)
#: observables with positive values whose log-EMDs add up to ``log_emd_sum``
LOG_OBSERVABLES = ("mass", "pt", "energy", "multiplicity", "d2")


@dataclass(frozen=True)
class StudyConfig:
    """A loss x metric study; ``configs/study_losses.yaml`` mirrors it.

    Arguments:
        study: the name; results go to ``<root>/<study>/``.
        base: the pipeline YAML every cell starts from (relative to the study config);
            ``overrides`` then apply (``--set`` form). Its budget is every cell's budget.
        classes: jet classes, one row of cells each.
        losses: ConVAE particle losses (names in `convae.losses.PARTICLE_LOSSES`).
        n_jets: jets per sample for the metrics (the test split must hold twice as many).
        image_bins: pixels per side of the jet images of the wavelet EMD (a power of 2).
    """

    study: str = "losses"
    base: str = "quickstart.yaml"
    overrides: tuple[str, ...] = ()
    classes: tuple[str, ...] = ("t", "g")
    losses: tuple[str, ...] = (
        "chamfer",
        "chamfer_positions",
        "nearest_position",
        "emd",
        "emd_sinkhorn",
    )
    n_jets: int = 2500
    image_bins: int = BINS

    def __post_init__(self) -> None:
        check_name(self.study, "study")
        unknown = sorted(set(self.losses) - set(PARTICLE_LOSSES))
        if unknown or not self.losses:
            raise UserError(
                f"losses must name particle losses in {sorted(PARTICLE_LOSSES)}, got {unknown}"
            )
        if not self.classes:
            raise UserError("classes must name at least one jet class")
        object.__setattr__(self, "classes", tuple(canonical_class(c) for c in self.classes))
        if self.n_jets < 100:
            raise UserError(f"n_jets must be >= 100, got {self.n_jets}")
        if self.image_bins < 4 or self.image_bins & (self.image_bins - 1):
            raise UserError(f"image_bins must be a power of 2 >= 4, got {self.image_bins}")


def load_study_config(path: str | Path) -> tuple[StudyConfig, dict[str, Any]]:
    """The study config and its base pipeline tree (overrides applied), checked to build.

    Raises:
        FileNotFoundError: no such file (the study's or its base).
        ValueError: unknown key, bad value, or a base config that does not build.
    """
    cfg, base = based_config(path, StudyConfig, "study config")
    for loss in cfg.losses:  # every cell's config must build: fail before any training
        cell_config(base, loss)
    return cfg, base


def cell_config(base: dict[str, Any], loss: str) -> PipelineConfig:
    """The pipeline config of one cell: the base with its ConVAE's particle loss set."""
    return pipeline_config(base, {"loss.particle": loss, "target": "latent"})


# ----------------------------------------------------------------------------------- a cell


def _log_emds(real: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> float:
    """Sum over `LOG_OBSERVABLES` of W1(log real, log other) / std(log real), positive values
    only: an EMD that weighs a factor 2 at small values like one at large values."""
    total = 0.0
    for name in LOG_OBSERVABLES:
        a, b = (np.log(x[name][x[name] > 0]) for x in (real, other))
        if len(a) < 2 or len(b) == 0:
            return float("nan")
        total += wasserstein_distance(a, b) / max(float(a.std()), 1e-12)
    return total


def _mean_image(jets: Jets, bins: int) -> np.ndarray:
    return jet_images(jets.particles, jets.mask, bins=bins).mean(0)


def _extra_rows(samples: Samples, obs: list[dict], bins: int) -> dict[str, dict[str, float]]:
    """log_emd_sum, wavelet_emd and image_emd of the generated and of the floor sample."""
    ref, floor, gen = obs
    images = [_mean_image(s, bins) for s in (samples.reference, samples.floor, samples.gen)]
    return {
        "log_emd_sum": {"value": _log_emds(ref, gen), "floor": _log_emds(ref, floor)},
        **{
            name: {"value": emd(images[0], images[2]), "floor": emd(images[0], images[1])}
            for name, emd in (("wavelet_emd", wavelet_emd), ("image_emd", exact_image_emd))
        },
    }


def _summed(rows: dict[str, dict[str, float]], prefix: str) -> dict[str, float]:
    names = [k for k in rows if k.startswith(prefix)]
    return {
        "value": float(sum(rows[k]["value"] for k in names)),
        "floor": float(sum(rows[k]["floor"] for k in names)),
    }


def _with_ratio(row: dict[str, float]) -> dict[str, Any]:
    return MetricRow(float(row["value"]), row.get("floor")).to_dict(errors=False)


def score_cell(
    cfg: PipelineConfig,
    jet_class: str,
    parts: tuple[Jets, Jets, Jets],
    study: StudyConfig,
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Train one cell's ConVAE and latent flow on (train, valid), sample, and score against the
    test jets: {metric: {"value", "floor", "ratio"}} for every name in `METRICS`."""
    test = parts[2]
    models = TwoStageConfig.of(cfg)
    trained = train_two_stage(
        models, jet_class, parts, n=study.n_jets, seed=cfg.data.seed, progress=progress
    )
    generated, rec = trained.generated, trained.reconstructed
    recon = reconstruction_diagnostics(
        *(torch.from_numpy(a.copy()) for a in (test.particles, test.mask, rec.particles, rec.mask))
    ).emd_reconstruction
    eval_cfg = EvalConfig(n_jets=study.n_jets, fpnd=False, seed=cfg.data.seed)
    samples = draw_samples(test, generated, eval_cfg.n_jets, eval_cfg.seed)
    used = len(samples.reference)
    if used < study.n_jets:  # the floor needs two disjoint real halves of the test split
        warnings.warn(
            f"{jet_class}: n_jets {study.n_jets} asked, {used} used: the test split holds "
            f"{len(test)} jets (two halves for the floor); raise data.n_jets for more",
            stacklevel=2,
        )
    obs = sample_observables(samples)
    efps = sample_efps(samples, eval_cfg, progress=False)
    rows = evaluate_samples(samples, efps, jet_class=jet_class, cfg=eval_cfg, obs=obs)["metrics"]
    rows = {
        **rows,
        **_extra_rows(samples, obs, study.image_bins),
        "jsd_sum": _summed(rows, "jsd_"),
        "kl_sum": _summed(rows, "kl_"),
        "recon_emd": {"value": recon, "floor": None},
    }
    return {
        **{name: _with_ratio(rows[name]) for name in METRICS},
        "n_jets": {"value": float(used), "floor": None, "ratio": None},
    }


# --------------------------------------------------------------------------------- a study


def _score(row: dict[str, float], metric: str) -> float:
    """What ranks the losses on ``metric``: the ratio to the floor (the value where there is no
    floor), negated where higher is better, so that lower is always better; NaN where it is
    undefined (a floor of 0; null once read back from JSON)."""
    x = row["ratio"] if row.get("floor") is not None else row["value"]
    if x is None:
        return math.nan
    return -x if metric in HIGHER_IS_BETTER else x


def _best(losses: dict[str, dict], metric: str) -> str:
    """The loss that ``metric`` ranks first (undefined scores last)."""
    scores = {loss: _score(rows[metric], metric) for loss, rows in losses.items()}
    return min(scores, key=lambda loss: scores[loss] if math.isfinite(scores[loss]) else math.inf)


def kendall_matrix(cells: dict[str, dict[str, dict[str, dict[str, float]]]]) -> np.ndarray:
    """Kendall's tau between every two metrics' rankings of the losses, per class, averaged
    over the classes: (M, M) over `METRICS` (NaN where a ranking is constant or undefined)."""
    taus = []
    for losses in cells.values():
        scores = np.array([[_score(losses[loss][m], m) for m in METRICS] for loss in losses])
        tau = np.full((len(METRICS), len(METRICS)), np.nan)
        for i, j in itertools.product(range(len(METRICS)), repeat=2):
            a, b = scores[:, i], scores[:, j]
            if np.isfinite(a).all() and np.isfinite(b).all() and len(a) > 1:
                tau[i, j] = kendalltau(a, b).statistic
        taus.append(tau)
    with warnings.catch_warnings():  # "mean of empty slice": a pair with no defined tau
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.stack(taus), 0)


def run_study(
    config_path: str | Path,
    *,
    root: str | Path = "runs/study",
    classes: tuple[str, ...] | None = None,
    progress: bool = True,
) -> Path:
    """Run (or resume) the study of ``config_path``; returns ``<root>/<study>`` holding
    results.json, results.md, heatmap.png and kendall.png, and one JSON per cell."""
    study, base = load_study_config(config_path)
    if classes:
        study = dataclasses.replace(study, classes=tuple(canonical_class(c) for c in classes))
    out = Path(root) / study.study
    cells: dict[str, dict[str, dict]] = {}
    todo = [(c, loss) for c in study.classes for loss in study.losses]
    with tqdm(
        total=len(todo), desc=f"study {study.study}", unit="cell", disable=not progress
    ) as bar:
        for jet_class in study.classes:
            cells[jet_class] = _class_cells(study, base, jet_class, out / jet_class, progress, bar)
    write_results(study, cells, out)
    return out


def _class_cells(
    study: StudyConfig,
    base: dict[str, Any],
    jet_class: str,
    directory: Path,
    progress: bool,
    bar: tqdm,
) -> dict[str, dict]:
    """Every loss's cell of one class: read when complete, else trained and scored."""
    parts = None
    cells = {}
    for loss in study.losses:
        cfg = cell_config(class_tree(base, jet_class), loss)
        # what makes this cell: its data and its model (not the other losses)
        models = TwoStageConfig.of(cfg)
        key = digest(cfg.data, models, jet_class, study.n_jets, study.image_bins)

        def scored(cfg: PipelineConfig = cfg) -> dict[str, Any]:
            nonlocal parts
            if parts is None:  # the class's jets, once: every loss sees the same split
                jets = stages.class_jets(cfg, jet_class, directory, progress)
                parts = stages.split_jets(jets, cfg)
            return {"metrics": score_cell(cfg, jet_class, parts, study, progress)}

        cells[loss] = keyed_json(directory / f"{loss}.json", key, scored)["metrics"]
        bar.update()
    return cells


def write_results(study: StudyConfig, cells: dict[str, dict], out: Path) -> None:
    """results.json, results.md (one loss x metric table per class, Kendall's tau, the best
    loss per metric), heatmap.png and kendall.png."""
    tau = kendall_matrix(cells)
    write_json(
        out / "results.json",
        {
            "config": dataclasses.asdict(study),
            "metrics": list(METRICS),
            "cells": cells,
            "kendall_tau": {
                a: dict(zip(METRICS, row.tolist(), strict=True))
                for a, row in zip(METRICS, tau, strict=True)
            },
        },
    )
    heatmap = _heatmap(cells, out / "heatmap.png")
    kendall = _kendall_png(tau, out / "kendall.png")
    write_text(out / "results.md", _markdown(study, cells, tau, heatmap, kendall))


def _cell_text(row: dict[str, float]) -> str:
    return (
        fmt(row["value"], spec=".3g") if row.get("floor") is None else fmt(row["ratio"], spec=".3g")
    )


def _markdown(
    study: StudyConfig, cells: dict, tau: np.ndarray, heatmap: Path, kendall: Path
) -> str:
    used = sorted(
        {
            int(rows["n_jets"]["value"])
            for losses in cells.values()
            for rows in losses.values()
            if "n_jets" in rows
        }
    )
    size = "/".join(map(str, used)) or str(study.n_jets)  # cells written before: as asked
    asked = (
        f" (asked: {study.n_jets}; the test split holds fewer)"
        if used and used[0] < study.n_jets
        else ""
    )
    lines = [
        f"# Study {study.study}: ConVAE loss x metric",
        "",
        "Each cell: the metric's ratio to its truth floor (two disjoint real samples of "
        f"{size} jets{asked}); recon_emd is the median EMD between held-out jets and their "
        "reconstructions (no floor). Lower is better, except cov (higher).",
        "",
    ]
    for jet_class, losses in cells.items():
        lines += [f"## {jet_class}", ""]
        lines += markdown_table(
            ["loss", *METRICS],
            ([loss, *(_cell_text(rows[m]) for m in METRICS)] for loss, rows in losses.items()),
        )
        best = {m: _best(losses, m) for m in METRICS}
        lines += [
            "",
            "Best loss per metric: " + ", ".join(f"{m}: {b}" for m, b in best.items()),
            "",
        ]
    lines += [
        "## Do the metrics agree?",
        "",
        "Kendall's tau between two metrics' rankings of the losses (1: the same order, -1: "
        "reversed), averaged over the classes:",
        "",
        *markdown_table(
            ["", *METRICS],
            ([a, *(fmt(t, spec=".2f") for t in row)] for a, row in zip(METRICS, tau, strict=True)),
        ),
        "",
        f"![ratios]({heatmap.name})",
        f"![kendall]({kendall.name})",
    ]
    return "\n".join(lines) + "\n"


def _heatmap(cells: dict, path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(
        len(cells),
        1,
        figsize=(14, 2.5 + 1.1 * len(next(iter(cells.values()))) * len(cells)),
        squeeze=False,
    )
    for ax, (jet_class, losses) in zip(axes[:, 0], cells.items(), strict=True):
        values = np.array([[_score(rows[m], m) for m in METRICS] for rows in losses.values()])
        # colour: each metric's losses ranked (0 best); the text: the number itself
        ranks = np.argsort(np.argsort(np.where(np.isfinite(values), values, np.inf), 0), 0)
        ax.imshow(ranks, cmap="RdYlGn_r", aspect="auto")
        for (i, j), _ in np.ndenumerate(values):
            ax.text(
                j,
                i,
                _cell_text(list(losses.values())[i][METRICS[j]]),
                ha="center",
                va="center",
                fontsize=9,
            )
        ax.set_xticks(range(len(METRICS)), METRICS, rotation=45, ha="right", fontsize=10)
        ax.set_yticks(range(len(losses)), list(losses), fontsize=10)
        ax.set_title(
            f"{jet_class}: ratio to the truth floor (colour: rank per metric, green best)",
            fontsize=12,
        )
    fig.tight_layout()
    save_figure(fig, path)
    return path


def _kendall_png(tau: np.ndarray, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11, 9.5))
    image = ax.imshow(tau, cmap="coolwarm", vmin=-1, vmax=1)
    for (i, j), t in np.ndenumerate(tau):
        ax.text(j, i, fmt(t, spec=".1f"), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(METRICS)), METRICS, rotation=45, ha="right", fontsize=10)
    ax.set_yticks(range(len(METRICS)), METRICS, fontsize=10)
    ax.set_title("Kendall's tau between the metrics' rankings of the losses", fontsize=12)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    save_figure(fig, path)
    return path
