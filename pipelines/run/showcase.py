"""The shipped models scored as the main job shows them: `jetflows models --score runs/shipped`.

Per class, jets from the shipped model (`pipelines.run.shipped`) against fresh Pythia jets of a
seed the training never used, evaluated as `jetflows evaluate` does with stable ratios first;
`score` is the same figures for a sampler in memory (what `scripts/ship_models.py` records).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from jetflows.classes import JET_TYPES, canonical_class
from jetflows.errors import UserError
from jetflows.threads import cpu_model
from pipelines.data.jetnet import read_jetnet_file
from pipelines.data.production import request_jets
from pipelines.data.pythia import PythiaConfig
from pipelines.evaluation.evaluate import EvalConfig, add_stable, evaluate, evaluate_to_dir
from pipelines.evaluation.report import STABLE_NAMES, stable_cell
from pipelines.io import markdown_table, write_json, write_text
from pipelines.run import shipped
from pipelines.run.generators import TrainedSampler
from pipelines.run.sample import sample_to_file, sampled_jets


def score(
    gen: TrainedSampler,
    real: Any,
    *,
    n: int = 2500,
    n_generated: int = 10_000,
    draws: int = 16,
    seed: int = 7,
) -> dict[str, Any]:
    """The stable ratios of ``n_generated`` jets of ``gen`` against the real jets ``real``
    (`Jets`, >= 2n), in samples of ``n``, computed exactly as `score_to_dir` computes them
    (`jetflows sample`'s jets of seed 0; `evaluate` and `add_stable` at ``seed``, COV
    included), so the figures a model ships with are the main job's."""
    jets = sampled_jets(gen, n_generated, seed=0)  # as `jetflows sample` and the main job draw
    cfg = EvalConfig(n_jets=n, seed=seed, fpnd=False, stable_draws=draws)
    results = evaluate(real, jets, cfg=cfg, progress=False)
    add_stable(results, real, jets, cfg)
    return results["stable"]


def score_to_dir(
    out: str | Path,
    classes: tuple[str, ...] | None = None,
    *,
    n_real: int = 5000,
    n_generated: int = 10_000,
    n: int = 2500,
    seed: int = 7,
    jobs: int | None = None,
    cache_dir: str | Path | None = None,
    cov_mmd: bool = True,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Score every shipped model against fresh real jets: per class, ``n_real`` Pythia8 +
    FastJet jets of a ``seed`` the training never used (42) with the model's own recipe,
    ``n_generated`` jets from the model (``out/<class>/generated.hdf5``), evaluated as
    `jetflows evaluate` does at ``n`` jets per sample, with stable ratios over 16 splits of
    the real jets (``out/<class>/report.md``, plots, metrics.json; ``cov_mmd``: with COV, 5-10 s
    a pair on 2 cores); then ``out/summary.md``
    and ``summary.json``: each class's stable ratios now beside those it shipped with.

    Raises:
        ValueError: no shipped model of a class, or a seed the shipped models trained on.
    """

    out = Path(out)
    _refuse_a_run(out)
    models = shipped.manifest()["models"]
    classes = tuple(canonical_class(c) for c in classes) if classes else tuple(models)
    for c in classes:
        shipped.require_entry(c, shipped.folder())
        if models[c]["data"]["seed"] == seed:
            raise UserError(f"seed {seed} made the {c} model's training jets: score on another")
    results = {}
    for c in classes:
        data = models[c]["data"]
        pythia = PythiaConfig(c, seed=seed, recipe=data["recipe"])
        real = request_jets(
            pythia, n_real, out / "real" / f"{c}.hdf5", num_particles=data["num_particles"],
            jobs=jobs, cache_dir=cache_dir, progress=progress,
        )  # fmt: skip
        gen_path = sample_to_file(
            None, c, n_generated, out / c / "generated.hdf5", overwrite=True, progress=progress
        )
        results[c] = evaluate_to_dir(
            real,
            read_jetnet_file(gen_path),
            out / c,
            jet_class=c,
            # FPND (ParticleNet, g q t only) left out: a third of the time, not a stable figure
            cfg=EvalConfig(n_jets=n, seed=seed, cov_mmd=cov_mmd, fpnd=False),
            progress=progress,
            inputs={"real": out / "real" / f"{c}.hdf5", "gen": gen_path},
            extra={"shipped": {k: models[c][k] for k in ("model", "sha256", "scores")}},
        )
    write_json(out / "summary.json", results)
    _write_summary(out / "summary.md", results, models)
    return results


def _refuse_a_run(out: Path) -> None:
    """ValueError where ``out`` is a pipeline run: its class folders' generated.hdf5, report.md
    and metrics.json would be replaced by the shipped models' (`jetflows models --score
    runs/standard_cloud` overwrote that run's results)."""
    owned = [out / "config.yaml", *(out / c / "flow.pt" for c in JET_TYPES)]
    if any(path.exists() for path in owned):
        raise UserError(
            f"{out} is a pipeline run (its models and results would be replaced): score the "
            "shipped models into a folder of their own, e.g. runs/shipped"
        )


def _write_summary(path: Path, results: dict[str, dict[str, Any]], models: dict) -> Path:
    """summary.md: per class, the stable ratios measured now and those shipped."""

    names = [k for k in STABLE_NAMES if k != "multiplicity"]
    rows = []
    for c, r in results.items():
        rows.append([c, "now", *(stable_cell(r["stable"].get(k)) for k in names)])
        shipped = models[c]["scores"]
        rows.append([c, "shipped", *(stable_cell(shipped.get(k), band=False) for k in names)])
    sizes = next(iter(results.values()))["stable"]["sizes"]
    lines = [
        "# The shipped models, scored on fresh real jets",
        "",
        f"Per class: {sizes['samples'] * sizes['n']} jets from the shipped model "
        f"(`jetflows sample`, no --run) against {sizes['real']} fresh Pythia8 + FastJet jets "
        "of a seed the training never used. Stable ratios to the truth floor: mean W1 over "
        f"{sizes['draws']} random splits of the real jets into halves of {sizes['n']} and "
        f"{sizes['samples']} generated samples of {sizes['n']}; in brackets the 10-90% band of "
        "single-draw ratios. 'shipped': the figures recorded when the model shipped "
        "(`jetflows models`). Lower is better; 1 is as close as another real sample; COV: "
        "higher is better, 1 is real.",
        "",
        *markdown_table(["class", "scored", *(STABLE_NAMES[k] for k in names)], rows),
        "",
        "Models: "
        + "; ".join(f"{c}: {models[c]['model']}" for c in results)
        + ". Each class's report.md and plots/ are in its folder.",
        "",
        f"Scored on: {cpu_model()}, torch threads {torch.get_num_threads()}.",
    ]
    return write_text(path, "\n".join(lines) + "\n")
