"""Evaluate generated jets against real ones, with a truth floor, plots and a report.

The truth floor: the real set is split in two disjoint halves A and B of the generated sample's
size. The model's figures compare generated jets with A; the floor compares B with A, the same
way, with the same number of jets. A model cannot beat the floor except by chance, so the ratio
model / floor states quality honestly: ~1 is as good as real data of that size.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from jetflows import __version__
from jetflows.checks import require
from jetflows.classes import JET_TYPES, canonical_class
from jetflows.errors import UserError
from jetflows.spread import spread_ratio
from pipelines.data.jetnet import Jets, read_jetnet_file
from pipelines.evaluation import metrics as m
from pipelines.evaluation.fpnd import fpnd, fpnd_unavailable
from pipelines.evaluation.rows import MetricRow
from pipelines.io import read_json, write_json

MIN_JETS = 100  # fewest jets per sample that the metrics (FPD covariances, COV/MMD) can use


@dataclass(frozen=True)
class EvalConfig:
    """How to evaluate.

    Arguments:
        n_jets: jets per sample (jetnet's convention: 50,000); shrunk to what the files hold.
        num_batches: bootstrap batches of jetnet's W1 metrics.
        seed: seeds the sample split and every bootstrap draw.
        fpnd: compute FPND where defined (g, q, t at 30 particles).
        cov_mmd: compute COV and MMD (EMD-based, 10 batches of 100 jets).
        fpnd_batch: ParticleNet batch size.
        efp_batch: jets per EFP batch.
        stable_draws: real pairs behind the stable ratios (`pipelines.evaluation.stable`),
            each a fresh split of the real jets; 0: none. Their COV is the one draw's below
            (COV saturates near 1: a check, at 5-10 s a pair on 2 cores).
    """

    n_jets: int = 50_000
    num_batches: int = 5
    seed: int = 42
    fpnd: bool = True
    cov_mmd: bool = True
    fpnd_batch: int = 1000
    efp_batch: int = 1000  # 1000 ran ~1.7x faster than 5000 here (cache-sized batches)
    stable_draws: int = 16

    def __post_init__(self) -> None:
        require(self, ("n_jets", "num_batches", "fpnd_batch", "efp_batch"), low=1)
        require(self, ("seed", "stable_draws"))
        if self.n_jets < MIN_JETS:  # said here, not later as "too few jets" in the files
            raise UserError(
                f"n_jets (evaluate --n) must be >= {MIN_JETS} jets per sample, got {self.n_jets}"
            )


@dataclass(frozen=True)
class Samples:
    """The three samples an evaluation compares: reference A, floor B (both real), and gen."""

    reference: Jets
    floor: Jets
    gen: Jets


#: What a particle of a jet in the relative frame can hold, with room for a poor generator:
#: (eta_rel, phi_rel) within +-PARTICLE_RANGE rad of the axis and pt_rel in [0, PARTICLE_RANGE].
#: Beyond it the values are not a jet (1e30 once failed in the plots after every metric).
PARTICLE_RANGE = 10.0


#: the largest jet pt [GeV] a file may state: 100 TeV, seven times the LHC's collision energy
MAX_JET_PT = 1e5


def _check_ranges(name: str, jets: Jets) -> None:
    """ValueError naming the feature and its extreme if a real particle is outside the range,
    a jet pt is not in (0, `MAX_JET_PT`], or no jet holds a particle."""
    if not jets.mask.any():
        raise UserError(f"the {name} jets hold no particles at all: nothing to evaluate")
    pt = jets.jet_features[:, 0]
    if len(pt) and (pt.max() > MAX_JET_PT or pt.min() <= 0):
        worst = pt.max() if pt.max() > MAX_JET_PT else pt.min()
        raise UserError(
            f"{name} jets have pt {worst:.3g} GeV, outside (0, {MAX_JET_PT:g}]: not LHC jets"
        )
    x = jets.particles[jets.mask]
    for k, feature in enumerate(("eta_rel", "phi_rel", "pt_rel")):
        low = 0.0 if feature == "pt_rel" else -PARTICLE_RANGE
        values = x[:, k] if len(x) else np.zeros(1)
        worst = values[np.argmax(np.abs(values))]
        if values.min() < low or values.max() > PARTICLE_RANGE:
            raise UserError(
                f"{name} particles have {feature} {worst:.3g}, outside [{low:g}, "
                f"{PARTICLE_RANGE:g}]: not jets in the relative frame"
            )


def _check(real: Jets, gen: Jets, n_jets: int) -> int:
    """Validate the inputs; the number of jets per sample."""
    if real.particles.shape[1:] != gen.particles.shape[1:]:
        raise UserError(
            f"real jets have shape {real.particles.shape[1:]} per jet, generated "
            f"{gen.particles.shape[1:]}: compare jets with the same particle count"
        )
    for name, jets in (("real", real), ("generated", gen)):
        for what in ("particles", "jet_features"):
            if not np.isfinite(getattr(jets, what)).all():
                raise UserError(f"{name} {what} contain NaN or inf")
        _check_ranges(name, jets)
    n = min(n_jets, len(gen), len(real) // 2)
    if n < MIN_JETS:
        raise UserError(
            f"too few jets: need >= {2 * MIN_JETS} real and >= {MIN_JETS} generated "
            f"(the floor uses two disjoint real halves), got {len(real)} real and "
            f"{len(gen)} generated"
        )
    return n


def draw_samples(real: Jets, gen: Jets, n_jets: int, seed: int) -> Samples:
    """Disjoint real halves A, B and a generated sample, each of the same size (seeded)."""
    n = _check(real, gen, n_jets)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(real))
    return Samples(
        real.take(order[:n]), real.take(order[n : 2 * n]), gen.take(rng.permutation(len(gen))[:n])
    )


def _compare(
    ref: Jets,
    test: Jets,
    ref_efps: np.ndarray,
    test_efps: np.ndarray,
    cfg: EvalConfig,
    obs: tuple[dict[str, np.ndarray], dict[str, np.ndarray]],
) -> tuple[dict[str, tuple[float, float]], dict[str, float]]:
    """Every metric of ``test`` against ``ref``: {name: (value, std)}, and the EMD scales;
    ``obs``: both samples' `metrics.observables`."""
    ref_obs, test_obs = obs
    emds, scales = m.observable_emds(ref_obs, test_obs)
    spread = spread_ratio(test.particles, test.mask, ref.particles, ref.mask)
    plain = {
        **emds,
        **{f"spread_{k}": v for k, v in spread.items()},
        **m.legacy_emd_sum(ref_obs, test_obs),
        **m.divergences(ref_obs, test_obs, ref.particles.shape[1]),
    }
    out = {name: (value, 0.0) for name, value in plain.items()}
    out.update(
        m.jetnet_metrics(
            ref.particles,
            test.particles,
            ref.mask,
            test.mask,
            ref_efps,
            test_efps,
            num_batches=cfg.num_batches,
            seed=cfg.seed,
            cov_mmd=cfg.cov_mmd,
        )
    )
    return out, scales


def sample_efps(samples: Samples, cfg: EvalConfig, progress: bool) -> list[np.ndarray]:
    """jetnet's 36 EFPs of the reference, floor and generated samples (each (n, 36))."""
    total = 3 * len(samples.gen)
    with tqdm(total=total, desc="EFPs", unit="jet", disable=not progress) as bar:
        return [
            m.efps(s.particles, batch_size=cfg.efp_batch, progress=bar.update)
            for s in (samples.reference, samples.floor, samples.gen)
        ]


def _fpnd_pair(
    samples: Samples, jet_class: str | None, cfg: EvalConfig, progress: bool
) -> tuple[dict[str, tuple[float, float]], dict, str | None]:
    """FPND of the generated and of the floor sample (both against jetnet's real statistics)."""
    reason = (
        "switched off"
        if not cfg.fpnd
        else fpnd_unavailable(jet_class, samples.gen.particles.shape[1])
    )
    if reason:
        return {}, {}, reason
    values = [
        fpnd(s.particles, jet_class, batch_size=cfg.fpnd_batch, progress=progress)
        for s in (samples.gen, samples.floor)
    ]
    return {"fpnd": (values[0], 0.0)}, {"fpnd": (values[1], 0.0)}, None


def evaluate(
    real: Jets,
    gen: Jets,
    *,
    jet_class: str | None = None,
    cfg: EvalConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Every metric of generated against real jets, beside the truth floor.

    Arguments:
        real: real jets (at least 2 x 100; the floor needs two disjoint halves).
        gen: generated jets, same particles per jet.
        jet_class: g, q, t, w, z (or alias); FPND needs g, q or t. None: no FPND.
        cfg: `EvalConfig`.

    Returns:
        {"n_jets", "jet_class", "config", "version", "emd_scales", "skipped": {metric: reason},
         "metrics": {name: {"value", "std", "floor", "floor_std", "ratio"}}}.
    """
    cfg = cfg or EvalConfig()
    samples = draw_samples(real, gen, cfg.n_jets, cfg.seed)
    efps = sample_efps(samples, cfg, progress)
    return evaluate_samples(samples, efps, jet_class=jet_class, cfg=cfg, progress=progress)


def sample_observables(samples: Samples) -> list[dict[str, np.ndarray]]:
    """`metrics.observables` of the reference, floor and generated samples, computed once each
    (substructure costs a few seconds per 50,000 jets)."""
    return [m.observables(s) for s in (samples.reference, samples.floor, samples.gen)]


def evaluate_samples(
    samples: Samples,
    efps: list[np.ndarray],
    *,
    jet_class: str | None,
    cfg: EvalConfig,
    progress: bool = True,
    obs: list[dict[str, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """`evaluate` on drawn samples with their EFPs (reference, floor, gen), each (n, 36), and
    optionally their `metrics.observables` in the same order (computed here otherwise)."""
    jet_class = canonical_class(jet_class) if jet_class else None
    ref_efps, floor_efps, gen_efps = efps
    ref_obs, floor_obs, gen_obs = obs or sample_observables(samples)
    model, scales = _compare(
        samples.reference, samples.gen, ref_efps, gen_efps, cfg, (ref_obs, gen_obs)
    )
    floor, _ = _compare(
        samples.reference, samples.floor, ref_efps, floor_efps, cfg, (ref_obs, floor_obs)
    )
    fpnd_model, fpnd_floor, reason = _fpnd_pair(samples, jet_class, cfg, progress)
    model.update(fpnd_model)
    floor.update(fpnd_floor)
    skipped = {"fpnd": reason} if reason else {}
    if not cfg.cov_mmd:
        skipped.update({"cov": "switched off", "mmd": "switched off"})
    return {
        "n_jets": len(samples.gen),
        "jet_class": jet_class,
        "config": asdict(cfg),
        "version": __version__,
        "metrics": {name: _row(model[name], floor[name]) for name in model},
        "emd_scales": scales,
        "skipped": skipped,
    }


def _row(model: tuple[float, float], floor: tuple[float, float]) -> dict[str, Any]:
    """One metric: value, std, floor, floor_std, ratio, and why a number is undefined."""
    return MetricRow(model[0], floor[0], std=model[1], floor_std=floor[1]).to_dict()


def read_metrics(path: str | Path) -> dict[str, Any]:
    """metrics.json as `evaluate` returns it: the nulls of undefined numbers back to NaN."""
    results = read_json(path)
    for row in results.get("metrics", {}).values():
        row.update({k: math.nan for k, v in row.items() if v is None})
    return results


def _file_class(real: Jets, gen_path: str | Path) -> str | None:
    """The class the files name: the generated file's ``jet_class`` attribute, else the real
    file's JetNet name; None if neither says.

    Raises:
        ValueError: the two name different classes.
    """
    import h5py

    with h5py.File(gen_path, "r") as f:
        stored = f.attrs.get("jet_class")
    try:
        gen_class = canonical_class(str(stored)) if stored is not None else None
    except ValueError as err:  # say where the name came from: the user never typed it
        raise UserError(f"{gen_path}: its jet_class attribute: {err}") from None
    real_class = JET_TYPES[int(real.labels[0])] if len(real) and real.labels[0] >= 0 else None
    if gen_class and real_class and gen_class != real_class:
        raise UserError(
            f"the generated file holds {gen_class} jets, the real file {real_class} jets: "
            "pass --class to compare them anyway"
        )
    return gen_class or real_class


def evaluate_to_dir(
    real: Jets,
    gen: Jets,
    out_dir: str | Path,
    *,
    jet_class: str | None = None,
    cfg: EvalConfig | None = None,
    progress: bool = True,
    inputs: dict[str, str | Path] | None = None,
    extra: dict[str, Any] | None = None,
    extra_report: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """`evaluate`, then write metrics.json, report.md and plots/*.png into ``out_dir``.

    ``inputs`` (e.g. the files the jets came from) and ``extra`` are recorded in metrics.json
    and ``extra_report`` (Markdown lines) appended to report.md, e.g. the pipeline's ConVAE
    reconstruction figures.
    """
    from pipelines.evaluation.report import write_plots, write_report

    cfg = cfg or EvalConfig()
    samples = draw_samples(real, gen, cfg.n_jets, cfg.seed)
    if len(samples.gen) < cfg.n_jets and progress:
        tqdm.write(
            f"evaluating {len(samples.gen)} jets per sample, not {cfg.n_jets}: the files hold "
            f"{len(gen)} generated and {len(real)} real jets (the floor needs two disjoint real "
            "halves)",
            file=sys.stderr,
        )
    efps = sample_efps(samples, cfg, progress)
    obs = sample_observables(samples)
    results = evaluate_samples(
        samples, efps, jet_class=jet_class, cfg=cfg, progress=progress, obs=obs
    )
    if inputs:
        results["inputs"] = {k: str(v) for k, v in inputs.items()}
    add_stable(results, real, gen, cfg)
    results.update(extra or {})
    out_dir = Path(out_dir)
    plots = write_plots(samples, efps[0], efps[2], out_dir / "plots", obs=(obs[0], obs[2]))
    write_report(results, plots, out_dir / "report.md", extra=extra_report)
    write_json(out_dir / "metrics.json", results)
    return results


#: the most real jets the stable ratios draw their pairs from, in units of n: enough for many
#: distinct pairs, while the EFPs of a 28,000-jet file are not all computed for 2,500-jet pairs
STABLE_POOL = 8


def add_stable(results: dict[str, Any], real: Jets, gen: Jets, cfg: EvalConfig) -> None:
    """Put the stable ratios (`stable_section`) into ``results`` (what `evaluate` returned for
    these jets), at its ``n_jets``, with the one draw's COV(G, A) / COV(B, A) beside them;
    nothing when ``cfg.stable_draws`` is 0."""
    if not cfg.stable_draws:
        return
    results["stable"] = stable_section(real, gen, results["n_jets"], cfg)
    cov = results["metrics"].get("cov", {}).get("ratio")
    if cov is not None and np.isfinite(cov):
        results["stable"]["cov"] = {"stable_ratio": float(cov)}


def stable_section(real: Jets, gen: Jets, n: int, cfg: EvalConfig) -> dict[str, Any]:
    """metrics.json's "stable": `stable.stable_ratios` at the report's ``n`` over
    ``cfg.stable_draws`` real pairs and every generated sample of n jets (at most 8); COV is
    added by the caller from the one draw."""
    from pipelines.evaluation.stable import stable_ratios

    rng = np.random.default_rng(cfg.seed)
    rows = np.sort(rng.permutation(len(real))[: STABLE_POOL * n])
    pool = Jets(*(x[rows] for x in (real.particles, real.mask, real.jet_features, real.labels)))
    arrays = (gen.particles, gen.mask, gen.jet_features, gen.labels)
    gen = Jets(*(x[: STABLE_POOL * n] for x in arrays))
    return stable_ratios(pool, gen, n=n, draws=cfg.stable_draws, cov_draws=0, seed=cfg.seed)


def _warn_if_compressed_phi(path: str | Path) -> None:
    """Warn when a file says its phi_rel is delta phi / pi (the `fpnd-matched` recipe): the
    masses, tau_N and EFPs computed from its particles are then not the jet's."""
    import h5py

    with h5py.File(path, "r") as f:
        unit = str(f.attrs.get("phi_rel", ""))
    if unit.startswith("delta phi / pi"):
        warnings.warn(
            f"{path}: phi_rel is stored as delta phi / pi ({unit}), not radians: observables "
            "from its particles (mass, tau_N, D2, EFPs) are not the jet's",
            stacklevel=2,
        )


def evaluate_files(
    real_path: str | Path,
    gen_path: str | Path,
    out_dir: str | Path,
    *,
    jet_class: str | None = None,
    cfg: EvalConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Read two JetNet-layout files and `evaluate_to_dir` them.

    Without ``jet_class``, the class is the generated file's ``jet_class`` attribute (what
    `jetflows sample` writes), else the real file's JetNet name (t.hdf5 -> t).
    """
    real, gen = read_jetnet_file(real_path), read_jetnet_file(gen_path)
    for path in (real_path, gen_path):
        _warn_if_compressed_phi(path)
    return evaluate_to_dir(
        real,
        gen,
        out_dir,
        jet_class=jet_class or _file_class(real, gen_path),
        cfg=cfg,
        progress=progress,
        inputs={"real": real_path, "gen": gen_path},
    )
