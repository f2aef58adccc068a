"""Per-class sampling options chosen on validation jets: how hard a set flow is guided.

Autoguidance (`flows.setflow.SetFlow.guided_velocity`) trades sharper prongs against spread,
and the best weight differs by class: top jets want more than quark jets (docs/benchmarks.md).
`calibrate` samples a class's validation jets with each candidate setting and keeps the one
whose worst W1 ratio to the floor, over a few jet observables, is lowest. The floor is the W1
between the validation jets and as many training jets (two disjoint real samples of the same
size), averaged over `FLOOR_DRAWS` draws of the training jets. The held-out test jets, which
the pipeline's evaluation scores, take no part, so the choice carries no optimism into the
reported numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from jetflows.errors import UserError
from pipelines.evaluation.metrics import observables, wasserstein_1d
from pipelines.io import markdown_table
from pipelines.run.generators import build_sampler
from pipelines.run.sample import sampled_jets
from pipelines.run.targets import MIN_CALIBRATION_JETS

if TYPE_CHECKING:
    from pipelines.data.jetnet import Jets
    from pipelines.run.config import CalibrateConfig

CRITERION = "the largest W1 ratio to the floor over the observables"
FLOOR_DRAWS = 5  # training-jet samples whose W1 to the validation jets make the floor
#: added to the run's seed: the calibration's jets share no random stream with the jets the
#: evaluation draws from the same seed (nor with its kinematics draws, seed + 1)
SEED_OFFSET = 7919


def _worst(row: dict[str, Any]) -> float:
    """A candidate's score; a non-finite one (a diverged draw: JSON null) ranks last."""
    value = row["worst"]
    return value if value is not None and math.isfinite(value) else math.inf


def cell(value: float | None) -> str:
    """A ratio for a table: two decimals, "-" for a non-finite one (JSON null)."""
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}"


def _w1s(reference: dict[str, np.ndarray], other: Jets, names: tuple[str, ...]) -> dict:
    """W1 of each observable named between ``reference`` (observables) and ``other`` (jets)."""
    values = observables(other)
    return {name: wasserstein_1d(reference[name], values[name]) for name in names}


def calibrate(
    states: Mapping[str, dict[str, Any]],
    sampling: Mapping[str, Any],
    cfg: CalibrateConfig,
    *,
    valid: Jets,
    train: Jets,
    seed: int,
    device: str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Score every setting of ``cfg.settings`` on the validation jets and choose one.

    Arguments:
        states: the trained generator's checkpoints by file name (`build_sampler`'s).
        sampling: the config's sampling options; each setting replaces some of them.
        cfg: the candidates, the observables and how many jets.
        valid, train: the class's validation jets (the reference) and training jets (the
            floor sample, disjoint from them).
        seed: the run's seed: with `SEED_OFFSET`, draws the jets compared and the generated
            jets (the same noise for every setting, so settings differ by the setting alone).

    Returns:
        A JSON-ready dict: ``n_jets``, ``observables``, ``criterion``, ``floor`` ({name: W1}),
        ``settings`` (per candidate: its options, ``ratios`` {name: W1 / floor} and ``worst``)
        and ``chosen`` (the options of the lowest ``worst``; the first of equals).

    Raises:
        ValueError: fewer validation jets than the floor needs, or no candidate scored.
    """
    n = min(cfg.n_jets or len(valid), len(valid), len(train))
    if n < MIN_CALIBRATION_JETS:
        raise UserError(
            f"calibration needs >= {MIN_CALIBRATION_JETS} validation jets, has {n}: raise "
            "data.n_jets or the validation fraction, or set calibrate.settings: []"
        )
    seed += SEED_OFFSET
    rng = np.random.default_rng(seed)
    reference = observables(valid.take(rng.permutation(len(valid))[:n]))
    names = cfg.observables
    # the floor averaged over several training draws: one draw's W1 is as noisy as the
    # generated jets' own, and the criterion divides every candidate by it
    draws = [
        _w1s(reference, train.take(rng.permutation(len(train))[:n]), names)
        for _ in range(FLOOR_DRAWS)
    ]
    floor = {k: float(np.mean([d[k] for d in draws])) for k in names}
    rows = []
    for setting in tqdm(cfg.settings, desc="calibrating", unit="setting", disable=not progress):
        sampler = build_sampler(states, device=device, options={**sampling, **setting})
        w1 = _w1s(reference, sampled_jets(sampler, n, seed=seed, finite=False), names)
        # a floor of exactly 0 (a constant observable) makes any difference infinitely worse
        ratios = {k: w1[k] / floor[k] if floor[k] else (math.inf if w1[k] else 0.0) for k in names}
        worst = max(v if math.isfinite(v) else math.inf for v in ratios.values())
        rows.append({"setting": dict(setting), "ratios": ratios, "worst": worst})
    best = min(range(len(rows)), key=lambda i: _worst(rows[i]))
    if not math.isfinite(_worst(rows[best])):
        raise UserError("calibration: no candidate's jets scored a finite W1 against the floor")
    return {
        "n_jets": n,
        "observables": list(names),
        "criterion": CRITERION,
        "floor": floor,
        "settings": rows,
        "chosen": rows[best]["setting"],
    }


def markdown(result: dict[str, Any]) -> list[str]:
    """The report.md section: every candidate's ratios, the chosen one marked."""
    names = result["observables"]
    options = sorted({k for row in result["settings"] for k in row["setting"]})
    chosen = result["chosen"]
    return [
        "",
        "## Sampling options chosen on the validation jets",
        "",
        f"Each setting sampled {result['n_jets']} jets, scored against as many validation jets "
        "(W1 over the floor: validation against training jets); the chosen one has "
        f"{CRITERION} lowest. The test jets above were drawn with it.",
        "",
        *markdown_table(
            [*options, *(f"{k} (x floor)" for k in names), "worst", "chosen"],
            (
                [
                    *(row["setting"].get(k, "config") for k in options),
                    *(cell(row["ratios"][k]) for k in names),
                    cell(row["worst"]),
                    "**yes**" if row["setting"] == chosen else "",
                ]
                for row in result["settings"]
            ),
        ),
    ]
