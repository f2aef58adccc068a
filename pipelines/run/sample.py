"""Sampling jets from a trained run: `jetflows sample --n 10000 --class top`.

A run directory ``runs/<name>/<class>/`` holds ``flow.pt`` and the checkpoints it was fitted on
(`pipelines.run.generators`: ``convae.pt`` for two-stage models, ``jet_flow.pt`` for particle and
set flows); the generator is rebuilt from those checkpoints alone. Jets are generated in
batches and streamed into a JetNet-layout HDF5 file, so n = 10^7 needs one batch in memory, not
10^7 jets; the file appears only when complete (atomic rename).

jet_features: (pt, eta) are drawn from the training jets' (pt, eta) pairs stored in the flow
checkpoint (the models generate relative coordinates only); mass = (m / pT from the generated
particles) x pt; n = number of generated particles.

This module stays light (torch, h5py, the model libraries): no jetnet, no metrics, so that the
command starts fast.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from tqdm import tqdm

from jetflows import __version__, interrupt
from jetflows.classes import canonical_class
from jetflows.errors import UserError
from jetflows.physics import jet_observables
from pipelines.data.jetnet import Jets
from pipelines.io import (
    atomic_path,
    check_disk_space,
    check_writable,
    default_cache_dir,
    output_claim,
    write_json,
)
from pipelines.run.generators import TrainedSampler, class_dir, load_sampler
from pipelines.run.shipped import open_sampler

#: the ways to a sampler: `load` (a shipped model or a run's, with its `sample` call), a
#: run's checkpoints alone (`load_sampler`), either without the call (`open_sampler`)
__all__ = [
    "JetSampler",
    "load",
    "load_sampler",
    "open_sampler",
    "sample_jets",
    "sample_to_file",
    "sampled_jets",
]


def jet_features(
    particles: torch.Tensor, mask: torch.Tensor, kinematics: torch.Tensor
) -> torch.Tensor:
    """(n, 4) JetNet jet_features (pt, eta, mass, n) for generated jets and drawn (pt, eta)."""
    rel_mass = jet_observables(particles, mask)["mass"]  # m / pT_jet (pt_rel units)
    pt, eta = kinematics[:, 0], kinematics[:, 1]
    return torch.stack([pt, eta, rel_mass * pt, mask.sum(1).float()], 1)


#: what a pipeline writes at a run's top level (beside one folder per class)
RUN_FILES = ("config.yaml", "summary.md", "summary.json", "summary.png", "pipeline.log")


def _refuse_run_files(out: Path, run: Path) -> None:
    """Refuse an output that would replace a file the run owns: anything inside a class
    folder (models, its data, real_test.hdf5, metrics) or the run's own top-level files. New
    files beside them (runs/<name>/top_generated.hdf5) are fine.

    Raises:
        ValueError: naming the file.
    """
    target, root = out.resolve(), run.resolve()
    owned = target.parent != root and root in target.parents  # inside a class folder
    if owned or (target.parent == root and target.name in RUN_FILES):
        raise UserError(
            f"{out} belongs to the run {run} (its models, data or results): write the jets "
            "somewhere else"
        )


def check_kinematics(gen: TrainedSampler, kinematics: Any, n: int) -> torch.Tensor:
    """Requested (pt, eta) per jet as an (n, 2) float32 tensor, checked.

    Raises:
        ValueError: the generator is not conditioned on kinematics, a wrong shape or count,
            a pt <= 0 or a non-finite value.
    """
    if not gen.conditional:
        raise UserError(
            "this run's generator is not conditioned on jet kinematics: train it with "
            "latent.kinematics: true (or particle.kinematics: true) to ask for a pt"
        )
    kin = torch.as_tensor(np.asarray(kinematics, dtype=np.float32))
    if kin.shape != (n, 2):
        raise UserError(f"kinematics must be (n, 2) = ({n}, 2) (pt, eta), got {tuple(kin.shape)}")
    if not torch.isfinite(kin).all() or (kin[:, 0] <= 0).any():
        raise UserError("kinematics must be finite with pt > 0")
    _check_range(kin, gen.kinematics)
    return kin


def _check_range(kin: torch.Tensor, pool: torch.Tensor) -> None:
    """Refuse (pt, eta) more than one standard deviation (of log pt, of eta) beyond the
    training jets' range, where the flows' context is extrapolated blindly; warn, with the
    range, for anything outside the range but within that margin. kin, pool: (n, 2), (M, 2)."""
    asked = torch.stack([kin[:, 0].log(), kin[:, 1]], 1).double()
    seen = torch.stack([pool[:, 0].log(), pool[:, 1]], 1).double()
    lo, hi, margin = seen.min(0).values, seen.max(0).values, seen.std(0).nan_to_num(0.0)
    for col, (name, show) in enumerate((("pt", math.exp), ("eta", float))):
        low, high = float(asked[:, col].min()), float(asked[:, col].max())
        span = f"{show(float(lo[col])):.4g}..{show(float(hi[col])):.4g}"
        if low < lo[col] - margin[col] or high > hi[col] + margin[col]:
            raise UserError(
                f"{name} {show(low):.4g}..{show(high):.4g} asked, but this generator was trained "
                f"on jets of {name} {span}: it cannot say what such jets look like"
            )
        if low < lo[col] or high > hi[col]:
            warnings.warn(
                f"{name} {show(low):.4g}..{show(high):.4g} reaches beyond the training jets' "
                f"{span}: an extrapolation",
                stacklevel=2,  # one place for every caller: shown once
            )


BATCH_SIZE = 10_000  # jets per generator call (and per streamed write)


def generated_attributes(jet_class: str) -> dict[str, str]:
    """The attributes every file of generated jets carries (`evaluate` reads the class)."""
    return {"generator": "jetflows", "version": __version__, "jet_class": jet_class}


def sampled_jets(
    gen: TrainedSampler,
    n: int,
    *,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
    kinematics: Any = None,
    progress: bool = False,
    finite: bool = True,
) -> Jets:
    """``n`` generated jets in memory, the same jets `sample_to_file` writes for these
    arguments: particles (n, P, 3), mask (n, P), jet_features (n, 4), labels -1.
    ``finite=False``: hand out non-finite jets too (a candidate scored by calibration or a
    tuning trial, where a diverged draw ranks last), else ValueError."""
    parts, jets = [], []
    with tqdm(total=n, desc="sampling", unit="jet", disable=not progress) as bar:
        batches = sample_jets(
            gen, n, seed=seed, batch_size=batch_size, kinematics=kinematics, finite=finite
        )
        for pf, jf in batches:
            parts.append(pf)
            jets.append(jf)
            bar.update(len(pf))
    pf = np.concatenate(parts)
    return Jets(pf[..., :3], pf[..., 3] > 0, np.concatenate(jets), np.full(n, -1))


@dataclass
class JetSampler(TrainedSampler):
    """A trained generator with its sampling call, as `load` returns it."""

    def sample(
        self, n: int, *, seed: int = 0, kinematics: Any = None, progress: bool = False
    ) -> Jets:
        """``n`` jets: particles (n, P, 3), mask (n, P), jet_features (n, 4) (`sampled_jets`)."""
        return sampled_jets(self, n, seed=seed, kinematics=kinematics, progress=progress)


def load(
    jet_class: str,
    *,
    run: str | Path | None = None,
    device: str = "cpu",
    options: dict[str, Any] | None = None,
) -> JetSampler:
    """The generator of ``jet_class``: the model shipped with jetflows, or ``run``'s.

    Arguments:
        jet_class: g, q, t, w, z or an alias.
        run: a pipeline run directory; None: the shipped model (`pipelines.run.shipped`).
        device: cpu, cuda or auto.
        options: sampling options (a student's ``steps``; a run's set flow: ``teacher``...).

    Example:
        >>> import jetflows  # doctest: +SKIP
        >>> jets = jetflows.load("top").sample(10_000, seed=0)  # doctest: +SKIP
        >>> jets.particles.shape  # doctest: +SKIP
        (10000, 30, 3)
    """
    gen = open_sampler(run, jet_class, device=device, options=options)
    return JetSampler(**{f.name: getattr(gen, f.name) for f in fields(gen)})


#: the set flows' precision timings (`flows.setflow.sampling.BF16_FASTER`), kept per machine
PRECISION_TIMINGS = "precision_timings.json"


@contextlib.contextmanager
def kept_precision_timings() -> Iterator[None]:
    """Load the precision timings this machine made before (`PRECISION_TIMINGS` in the cache
    folder), and keep any new ones: "auto" times each network once per machine, not once per
    command. An unreadable or unwritable cache is only timed again."""
    from flows.setflow import sampling

    path = default_cache_dir() / PRECISION_TIMINGS
    try:
        known = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict):
        sampling.BF16_FASTER.update({k: v for k, v in known.items() if isinstance(v, bool)})
    before = dict(sampling.BF16_FASTER)
    try:
        yield
    finally:
        if sampling.BF16_FASTER != before:
            with contextlib.suppress(OSError):
                path.parent.mkdir(parents=True, exist_ok=True)
                write_json(path, sampling.BF16_FASTER)


def sample_jets(
    gen: TrainedSampler,
    n: int,
    *,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
    kinematics: Any = None,
    finite: bool = True,
) -> Any:
    """Yield batches (particle_features (b, P, 4), jet_features (b, 4)) as float32 numpy;
    ValueError at a batch with a non-finite feature unless ``finite`` is off.

    ``kinematics`` (n, 2) (pt [GeV], eta): generate each jet for these (a conditional
    generator only); None: draw them from the training jets' pool (a conditional generator
    then generates each jet for its draw).
    """
    check_call(n=n, batch_size=batch_size, seed=seed)  # here, not at the first batch
    given = None if kinematics is None else check_kinematics(gen, kinematics, n)
    g = torch.Generator(device=gen.device).manual_seed(seed)
    picks = torch.Generator().manual_seed(seed + 1)  # kinematics draws: a stream of their own
    return _kept(_batches(gen, n, g, picks, given, batch_size, finite))


def _kept(batches: Iterator[Any]) -> Iterator[Any]:
    """``batches`` with this machine's precision timings kept (`kept_precision_timings`)."""
    with kept_precision_timings():
        yield from batches


#: the largest seed, as the command line takes it: an HDF5 attribute holds it as int64 (torch
#: takes seed + 1, for the kinematics draws, up to 2**64 - 1)
SEED_MAX = 2**63 - 1


def check_call(*, n: Any, batch_size: Any, seed: Any) -> None:
    """TypeError or ValueError naming the argument: n and batch_size integers >= 1, seed an
    integer in 0..2**63-1 (torch said "RuntimeError" or "overflow", n = 0 "need at least one
    array to concatenate", n = -5 nothing at all)."""
    for name, value, low, high in (
        ("n", n, 1, None),
        ("batch_size", batch_size, 1, None),
        ("seed", seed, 0, SEED_MAX),
    ):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an integer, got {value!r}")
        if value < low or (high is not None and value > high):
            span = f">= {low}" if high is None else f"in {low}..{high}"
            raise UserError(f"{name} must be {span}, got {value}")


@torch.no_grad()
def _batches(
    gen: TrainedSampler,
    n: int,
    g: torch.Generator,
    picks: torch.Generator,
    given: torch.Tensor | None,
    batch_size: int,
    finite: bool = True,
) -> Any:
    """`sample_jets`'s batches."""
    for start in range(0, n, batch_size):
        interrupt.check()  # between batches: where a swallowed SIGTERM is raised again
        b = min(batch_size, n - start)
        if given is not None:
            kin = given[start : start + b]
        else:
            kin = gen.kinematics[torch.randint(len(gen.kinematics), (b,), generator=picks)]
        context = kin.to(gen.device) if gen.conditional else None
        particles, mask = gen.sampler(b, g, context)
        particles, mask = particles.float().cpu(), mask.cpu()
        if finite:
            _check_finite(particles, mask, kin)
        pf = torch.cat([particles * mask[..., None], mask[..., None].float()], -1)
        yield pf.numpy(), jet_features(particles, mask, kin).numpy()


def _check_finite(particles: torch.Tensor, mask: torch.Tensor, kin: torch.Tensor) -> None:
    """Never hand out a jet with a non-finite feature: the model is damaged (a file's writing
    stops, and it never appears)."""
    real = particles[mask]
    if not (torch.isfinite(real).all() and torch.isfinite(kin).all()):
        raise UserError(
            "the model generated jets with non-finite (NaN or infinite) features: its weights "
            "are damaged; train it again (nothing was written)"
        )


def sample_to_file(
    run: str | Path | None,
    jet_class: str,
    n: int,
    out: str | Path,
    *,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
    kinematics: Any = None,
    options: dict[str, Any] | None = None,
) -> Path:
    """Write n generated jets of ``jet_class`` from ``run`` (None: the shipped model,
    `pipelines.run.shipped`) to ``out`` (JetNet layout); ``options``: the generator's sampling
    options (a set flow's solver and steps).

    Reproducible: the same run, class, n, seed and batch size give the same file.
    ``kinematics`` (n, 2) (pt [GeV], eta): each jet generated for these (`sample_jets`).
    """
    check_call(n=n, batch_size=batch_size, seed=seed)  # before the output is claimed
    jet_class = canonical_class(jet_class)
    if run is not None:
        class_dir(run, jet_class)  # checked before the output: it names what is missing
        _refuse_run_files(Path(out), Path(run))
    out = check_writable(Path(out), overwrite=overwrite)
    with output_claim(out):
        # again under the claim: another command may have written it since the first check
        check_writable(out, overwrite=overwrite)
        return _write_samples(
            run, jet_class, n, out, seed=seed, batch_size=batch_size, device=device,
            progress=progress, kinematics=kinematics, options=options,
        )  # fmt: skip


def _write_samples(
    run: str | Path | None,
    jet_class: str,
    n: int,
    out: Path,
    *,
    seed: int,
    batch_size: int,
    device: str,
    progress: bool,
    kinematics: Any,
    options: dict[str, Any] | None,
) -> Path:
    """`sample_to_file`'s work once the output is claimed."""
    gen = open_sampler(run, jet_class, device=device, options=options)
    if kinematics is not None:
        kinematics = check_kinematics(gen, kinematics, n)
    P = gen.num_particles
    check_disk_space(out, n * (P * 4 + 4) * 4)  # float32 particle and jet features
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        pf = f.create_dataset("particle_features", (n, P, 4), dtype=np.float32)
        jf = f.create_dataset("jet_features", (n, 4), dtype=np.float32)
        f.attrs.update(
            {
                **generated_attributes(jet_class),
                "run": "shipped" if run is None else str(run),
                "seed": seed,
                "batch_size": batch_size,
                **({"model": gen.model} if gen.model else {}),
                **{f"sampling_{k}": v for k, v in (options or {}).items()},
            }
        )
        start = 0
        with tqdm(total=n, desc=f"sampling {jet_class}", unit="jet", disable=not progress) as bar:
            for parts, jets in sample_jets(
                gen, n, seed=seed, batch_size=batch_size, kinematics=kinematics
            ):
                pf[start : start + len(parts)], jf[start : start + len(parts)] = parts, jets
                start += len(parts)
                bar.update(len(parts))
    return out
