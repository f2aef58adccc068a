"""The pipeline on sparse digits: `jetflows digits --config configs/sparse_digits.yaml`.

The research code developed the ConVAE on sparse MNIST before jets: each digit kept as its k
most intense pixels, (x, y, I) rows shaped like a jet's (eta, phi, pt). Per digit and per
reconstruction loss (eq. 1 `chamfer_positions`, eq. 2 `nearest_position`, eq. 3
`intensity_axis`), this trains the ConVAE and its latent flow with the jets' own stages
(`pipelines.run.stages`), samples with the jets' sampler, and writes into
``runs/<name>/<digit>/<loss>/``:

- ``metrics.json`` and ``report.md``: the reconstruction's Chamfer distance to its own input
  against its distance to other digits' inputs (a collapsed ConVAE scores a ratio near 1), and
  the generated digits' W1 of pixel intensity and of the pixel positions (x, y) and the exact
  EMD between the mean images, each beside its truth floor (two disjoint real halves);
- ``plots/reconstructions.png`` (inputs above their reconstructions), ``plots/generated.png``
  and ``plots/mean_images.png``.

A cell whose metrics.json holds the same config hash is skipped, so a rerun resumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import wasserstein_distance
from tqdm import tqdm

from convae.losses import PARTICLE_LOSSES, chamfer
from jetflows.errors import UserError
from pipelines.data import images
from pipelines.data.jetnet import Jets
from pipelines.evaluation.report import fmt, pyplot, save_figure
from pipelines.evaluation.rows import MetricRow
from pipelines.evaluation.wavelet import exact_image_emd
from pipelines.io import keyed_json, markdown_table, write_json, write_text
from pipelines.run import stages
from pipelines.run.config import (
    TwoStageConfig,
    build,
    check_name,
    check_split,
    digest,
    pipeline_config,
    read_yaml,
    set_value,
)
from pipelines.run.twostage import train_two_stage


@dataclass(frozen=True)
class DigitsConfig:
    """Sparse digits through the pipeline; ``configs/sparse_digits.yaml`` mirrors it.

    Arguments:
        name: results go to ``runs/<name>/``.
        digits: one model per digit and loss (the 8s first, as the research code did).
        source: "digits" (drawn here) or "mnist" (IDX files in ``mnist_dir``).
        mnist_dir: the folder of MNIST's IDX files (source "mnist").
        pixels: k, the pixels kept per image.
        n_images: images per digit (train, validation and test by ``split``).
        split: train, validation and test fractions.
        seed: seeds the drawn digits and the split.
        losses: ConVAE particle losses, one model each.
        overrides: pipeline config values for the models (``--set`` form: convae.*,
            convae_train.*, flow.*, flow_train.*, latent.*); the data, the ConVAE's size and
            the loss are set from the fields above, and the jet terms are off (gamma 0).
    """

    name: str = "sparse_digits"
    digits: tuple[int, ...] = (8,)
    source: str = "digits"
    mnist_dir: str | None = None
    pixels: int = 100
    n_images: int = 3000
    split: tuple[float, ...] = (0.7, 0.15, 0.15)
    seed: int = 0
    losses: tuple[str, ...] = ("chamfer_positions", "nearest_position", "intensity_axis")
    overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_name(self.name, "name")
        for digit in self.digits:
            images.check_digit(digit)
        if not self.digits:
            raise UserError("digits must name at least one digit")
        if self.source not in images.SOURCES:
            raise UserError(f"unknown source {self.source!r}: use one of {images.SOURCES}")
        if self.source == "mnist" and not self.mnist_dir:
            raise UserError("source mnist needs mnist_dir: the folder of MNIST's IDX files")
        images.check_pixels(self.pixels)
        unknown = sorted(set(self.losses) - set(PARTICLE_LOSSES))
        if unknown or not self.losses:
            raise UserError(f"losses must name losses in {sorted(PARTICLE_LOSSES)}: {unknown}")
        check_split(self.split, "split")
        train, valid = (round(f * self.n_images) for f in self.split[:2])
        if self.n_images - train - valid < 20:
            raise UserError("n_images x split[2] must leave >= 20 test images (two halves)")


def load_digits_config(path: str | Path) -> DigitsConfig:
    """The config, with every loss's model config checked to build.

    Raises:
        FileNotFoundError: no such file. ValueError: unknown key or bad value (named).
    """
    cfg = build(DigitsConfig, read_yaml(path, "digits config"))
    for loss in cfg.losses:
        model_config(cfg, loss)
    return cfg


def model_config(cfg: DigitsConfig, loss: str) -> TwoStageConfig:
    """The two-stage model of one digit and loss: ``overrides`` (keys of a two-stage model:
    convae, loss, convae_train, flow, flow_train, latent, normalization, device), then the
    fields the data fix."""
    tree: dict[str, Any] = {}
    for assignment in cfg.overrides:
        set_value(tree, assignment)
    fixed = {
        "convae.num_particles": cfg.pixels,
        "loss.particle": loss,
        "loss.gamma": 0.0,  # the jet terms (pT, mass) mean nothing for an image
        "latent.kinematics": False,
    }
    return pipeline_config(tree, fixed, TwoStageConfig)


# -------------------------------------------------------------------------------- images


def to_images(jets: Jets) -> np.ndarray:
    """Point clouds (x, y, I) back to (N, 28, 28) images: each point's intensity added to the
    pixel it falls in (clipped to [0, 1])."""
    n = len(jets)
    cols = np.clip((jets.particles[..., 0] * images.SIDE).astype(int), 0, images.SIDE - 1)
    rows = np.clip((jets.particles[..., 1] * images.SIDE).astype(int), 0, images.SIDE - 1)
    out = np.zeros((n, images.SIDE * images.SIDE))
    index = np.broadcast_to(np.arange(n)[:, None], jets.mask.shape)
    flat = rows * images.SIDE + cols
    np.add.at(
        out, (index[jets.mask], flat[jets.mask]), np.clip(jets.particles[..., 2], 0, 1)[jets.mask]
    )
    return np.clip(out, 0, 1).reshape(n, images.SIDE, images.SIDE)


def digit_jets(cfg: DigitsConfig, digit: int) -> Jets:
    """``n_images`` sparse clouds of ``digit`` from the configured source."""
    if cfg.source == "mnist":
        drawn = images.mnist_digits(cfg.mnist_dir, digit)[: cfg.n_images]
        if len(drawn) < cfg.n_images:
            raise UserError(
                f"MNIST holds {len(drawn)} images of {digit}, n_images asks {cfg.n_images}"
            )
    else:
        drawn = images.render_digits(digit, cfg.n_images, seed=cfg.seed)
    return images.image_jets(drawn, cfg.pixels, digit, seed=cfg.seed)


# ------------------------------------------------------------------------------- metrics


def reconstruction_figures(test: Jets, recon: Jets) -> dict[str, float]:
    """Median Chamfer distance of each reconstruction's pixel positions (x, y) to its own
    input's, to another input's (the next one), and their ratio: < 1 when reconstructions look
    like their own inputs more than like other digits; ~1 for a collapsed ConVAE. Positions:
    the shape, which every loss of eq. 1-3 fits (eq. 1 leaves the intensities free)."""
    x, m = torch.from_numpy(test.particles[..., :2]), torch.from_numpy(test.mask)
    r, rm = torch.from_numpy(recon.particles[..., :2]), torch.from_numpy(recon.mask)
    own = chamfer(x, r, m, rm).median().item()
    other = chamfer(x.roll(1, 0), r, m.roll(1, 0), rm).median().item()
    return {"chamfer_own": own, "chamfer_other": other, "chamfer_ratio": own / other}


def _pixels(jets: Jets) -> dict[str, np.ndarray]:
    return {
        name: jets.particles[..., i][jets.mask] for i, name in enumerate(("x", "y", "intensity"))
    }


def _distances(a: Jets, b: Jets) -> dict[str, float]:
    pa, pb = _pixels(a), _pixels(b)
    out = {f"w1_{k}": float(wasserstein_distance(pa[k], pb[k])) for k in pa}
    out["mean_image_emd"] = exact_image_emd(to_images(a).mean(0), to_images(b).mean(0))
    return out


def generation_figures(test: Jets, generated: Jets, seed: int) -> dict[str, dict[str, float]]:
    """W1 of pixel positions and intensities and the EMD of the mean images, generated against
    one half of the test images, beside the floor: that half against the other half."""
    order = np.random.default_rng(seed).permutation(len(test))
    half = len(test) // 2
    reference, floor = test.take(order[:half]), test.take(order[half : 2 * half])
    gen = generated.take(np.arange(min(half, len(generated))))
    value, base = _distances(reference, gen), _distances(reference, floor)
    return {k: MetricRow(value[k], base[k]).to_dict(errors=False) for k in value}


# ----------------------------------------------------------------------------------- plots


def _grid(rows: list[np.ndarray], labels: list[str], path: Path) -> Path:
    plt = pyplot()
    n = len(rows[0])
    size = max(1.2, 4.0 / n)  # two mean images are drawn as large as ten digits together
    fig, axes = plt.subplots(
        len(rows), n, figsize=(size * n, 1.1 * size * len(rows)), squeeze=False
    )
    for r, (row, label) in enumerate(zip(rows, labels, strict=True)):
        for c in range(n):
            axes[r, c].imshow(row[c], cmap="gray_r", vmin=0, vmax=1)
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def write_plots(test: Jets, recon: Jets, generated: Jets, out: Path) -> list[Path]:
    """Inputs above their reconstructions, generated digits, the mean images."""
    shown = np.arange(min(10, len(test)))
    return [
        _grid(
            [to_images(test.take(shown)), to_images(recon.take(shown))],
            ["input", "reconstruction"],
            out / "reconstructions.png",
        ),
        _grid(
            [to_images(generated.take(np.arange(i, i + 10))) for i in (0, 10)],
            ["generated", "generated"],
            out / "generated.png",
        ),
        _grid(
            [np.stack([to_images(test).mean(0), to_images(generated).mean(0)])],
            ["real | generated"],
            out / "mean_images.png",
        ),
    ]


# ------------------------------------------------------------------------------------ runs


def run_cell(
    cfg: DigitsConfig, digit: int, loss: str, jets: Jets, out: Path, progress: bool
) -> dict:
    """Train, sample, score and plot one digit and loss into ``out``; its metrics."""
    model = model_config(cfg, loss)
    train, valid, test = stages.split_parts(jets, cfg.split, cfg.seed)
    trained = train_two_stage(
        model, str(digit), (train, valid, test), n=len(test), seed=cfg.seed, progress=progress
    )
    generated, recon = trained.generated, trained.reconstructed
    results = {
        "digit": digit,
        "loss": loss,
        "n_test": len(test),
        "reconstruction": reconstruction_figures(test, recon),
        "generation": generation_figures(test, generated, cfg.seed),
    }
    plots = write_plots(test, recon, generated, out / "plots")
    write_text(out / "report.md", _report(results, plots))
    return results


def _report(results: dict, plots: list[Path]) -> str:
    rec, gen = results["reconstruction"], results["generation"]
    lines = [
        f"# Sparse digit {results['digit']}, loss {results['loss']}",
        "",
        f"{results['n_test']} held-out images. Reconstruction: median Chamfer distance to its own "
        f"input {rec['chamfer_own']:.4g}, to another input {rec['chamfer_other']:.4g}, ratio "
        f"{rec['chamfer_ratio']:.3f} (a collapsed ConVAE: ~1).",
        "",
        *markdown_table(
            ["generated vs real", "value", "truth floor", "ratio"],
            (
                [k, fmt(r["value"]), fmt(r["floor"]), fmt(r["ratio"], spec=".3g")]
                for k, r in gen.items()
            ),
        ),
        "",
        *(f"![{p.stem}](plots/{p.name})" for p in plots),
    ]
    return "\n".join(lines) + "\n"


#: The file that marks a folder as a digits run (a copy of its config).
MARKER = "digits.yaml"


def _check_own_folder(out: Path) -> None:
    """ValueError if ``out`` holds anything but a digits run (a pipeline run of the same name:
    its summary.md and summary.json would be replaced)."""
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise UserError(
            f"{out} holds something else than a digits run (a pipeline run?): choose another "
            "name in the digits config"
        )


def run_digits(
    config_path: str | Path, *, root: str | Path = "runs", progress: bool = True
) -> Path:
    """Every digit and loss of the config into ``root/<name>``; returns that path (with
    summary.md and summary.json over the cells)."""
    cfg = load_digits_config(config_path)
    out = Path(root) / cfg.name
    _check_own_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / MARKER, Path(config_path).read_text())
    summary: dict[str, dict] = {}
    for digit in cfg.digits:
        jets = digit_jets(cfg, digit)
        for loss in tqdm(cfg.losses, desc=f"digit {digit}", unit="model", disable=not progress):
            cell = out / str(digit) / loss
            # what makes this cell: its data and its model (not the other digits and losses)
            data = (cfg.source, cfg.mnist_dir, cfg.pixels, cfg.n_images, list(cfg.split), cfg.seed)
            key = digest(model_config(cfg, loss), digit, *data)
            summary[f"{digit}/{loss}"] = keyed_json(
                cell / "metrics.json", key, partial(run_cell, cfg, digit, loss, jets, cell, False)
            )
    write_json(out / "summary.json", summary)
    write_text(out / "summary.md", _summary(summary))
    return out


def _summary(summary: dict[str, dict]) -> str:
    names = list(next(iter(summary.values()))["generation"])
    rows = (
        [
            cell,
            fmt(r["reconstruction"]["chamfer_ratio"], spec=".3f"),
            *(fmt(r["generation"][k]["ratio"], spec=".3g") for k in names),
        ]
        for cell, r in summary.items()
    )
    return (
        "\n".join(
            [
                "# Sparse digits: reconstruction (Chamfer own / other) and generation "
                "(ratio to the floor)",
                "",
                *markdown_table(["digit/loss", "chamfer ratio", *names], rows),
            ]
        )
        + "\n"
    )
