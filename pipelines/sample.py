"""Sampling jets from a trained run: `jetflows sample --n 10000 --class top`.

A run directory ``runs/<name>/<class>/`` holds ``flow.pt`` (and ``convae.pt`` for two-stage
models, ``jet_flow.pt`` for particle flows); the generator is rebuilt from those checkpoints
alone. Jets are generated in batches and streamed into a JetNet-layout HDF5 file, so n = 10^7
needs one batch in memory, not 10^7 jets; the file appears only when complete (atomic rename).

jet_features: (pt, eta) are drawn from the training jets' (pt, eta) pairs stored in the flow
checkpoint (the models generate relative coordinates only); mass = (m / pT from the generated
particles) x pt; n = number of generated particles.

This module stays light (torch, h5py, the model libraries): no jetnet, no metrics, so that the
command starts fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from tqdm import tqdm

from convae.train import CHECKPOINT_KIND as CONVAE_KIND
from convae.train import model_from_state
from flows import latent, particle
from flows.models import Flow
from flows.train import CHECKPOINT_KIND as FLOW_KIND
from flows.train import flow_from_state
from jetflows import __version__
from jetflows.classes import canonical_class
from jetflows.distributed import resolve_device
from jetflows.normalize import Normalization
from jetflows.physics import jet_observables
from pipelines.checkpoints import check_provenance, load_checkpoint
from pipelines.data import Jets
from pipelines.io import atomic_path, check_disk_space, check_writable

#: (n, torch.Generator, kinematics (n, 2) (pt, eta) or None) -> (particles (n, P, 3), mask)
Sampler = Callable[[int, torch.Generator, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class SamplerRecord:
    """What a trained generator is besides its weights, stored in its flow checkpoint
    (``state["extra"]``): how the flows' samples become jets, and for which jets.

    Arguments:
        target: "latent" (latent flow -> ConVAE decoder) or "particles" (jet flow -> particle
            flow); a key of `BUILDERS`.
        jet_class: the class it was trained on.
        num_particles: P of the jets it makes.
        jet_kinematics: (M, 2) training jets' (pt [GeV], eta): the pool each generated jet's
            kinematics are drawn from.
        kinematics_norm: the mean and std of (log pt, eta) the flows' context was standardized
            with; None: not conditioned on kinematics.
        latent: `pipelines.config.LatentOptions` as a dict (masking, pt_threshold, project);
            latent target only.
        multiplicity_probs: (P + 1,) training multiplicity distribution; latent target only.
        particle_target: `flows.particle.ParticleTarget.to_dict()`; particles target only.
    """

    target: str
    jet_class: str
    num_particles: int
    jet_kinematics: list[list[float]]
    kinematics_norm: list[list[float]] | None = None
    latent: dict[str, Any] | None = None
    multiplicity_probs: list[float] | None = None
    particle_target: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's ``extra`` (fields left None are left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, extra: dict[str, Any], where: str | Path = "flow.pt") -> SamplerRecord:
        """Read it back from a checkpoint's ``extra``.

        Raises:
            ValueError: not a pipeline flow (no known target, unknown or missing keys).
        """
        if extra.get("target") not in BUILDERS:
            raise ValueError(f"{where}: not a pipeline flow (no known target recorded)")
        unknown = sorted(set(extra) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"{where}: an unknown generator record (keys {unknown})")
        try:
            return cls(**extra)
        except TypeError as err:
            raise ValueError(f"{where}: an incomplete generator record: {err}") from err


@dataclass
class TrainedSampler:
    """A trained generator of one class, ready to sample: its record, the ``sampler`` built
    from its models, the jet (pt, eta) pool, and the device its models live on."""

    record: SamplerRecord
    sampler: Sampler
    kinematics: torch.Tensor  # (M, 2) training jets' (pt [GeV], eta), on the CPU
    device: torch.device  # where the models and their random stream live

    @property
    def num_particles(self) -> int:
        return self.record.num_particles

    @property
    def conditional(self) -> bool:
        """Whether each jet is generated for the (pt, eta) it is given."""
        return self.record.kinematics_norm is not None


def kinematics_norm(jet_features: np.ndarray) -> list[list[float]]:
    """Mean and std of the training jets' (log pt, eta): the flows' context scale.

    jet_features: (N, 4) JetNet jet features (pt, eta, mass, n).
    """
    x = np.stack([np.log(jet_features[:, 0]), jet_features[:, 1]], 1).astype(np.float64)
    return [x.mean(0).tolist(), np.maximum(x.std(0), 1e-6).tolist()]


def kinematics_context(kinematics: torch.Tensor, norm: list[list[float]]) -> torch.Tensor:
    """(n, 2) (pt [GeV], eta) -> the flows' standardized (log pt, eta) context (n, 2)."""
    x = torch.stack([kinematics[:, 0].log(), kinematics[:, 1]], 1)
    mean, std = (torch.tensor(v, dtype=x.dtype, device=x.device) for v in norm)
    return (x - mean) / std


def _latent_sampler(
    record: SamplerRecord, flow: Flow, vae_state: dict[str, Any], device: torch.device
) -> Sampler:
    vae = model_from_state(vae_state).to(device).eval()
    norm = Normalization.from_dict(vae_state["normalization"])
    options = record.latent or {}
    probs = torch.tensor(record.multiplicity_probs, device=device)
    masking = latent.Masking(options["masking"], options["pt_threshold"], probs)
    project = bool(options.get("project", False))  # absent in checkpoints before the option
    scale = record.kinematics_norm

    def sample(n: int, g: torch.Generator, kin: torch.Tensor | None) -> Any:
        context = kinematics_context(kin, scale) if scale and kin is not None else None
        return latent.generate(
            flow,
            vae,
            n,
            masking=masking,
            normalization=norm,
            generator=g,
            project=project,
            context=context,
        )

    return sample


def _particle_sampler(
    record: SamplerRecord, flow: Flow, jet_state: dict[str, Any], device: torch.device
) -> Sampler:
    jet_flow = flow_from_state(jet_state).to(device)
    target = particle.ParticleTarget.from_dict(record.particle_target)
    scale = record.kinematics_norm

    def sample(n: int, g: torch.Generator, kin: torch.Tensor | None) -> Any:
        context = kinematics_context(kin, scale) if scale and kin is not None else None
        return particle.generate(flow, jet_flow, n, target, generator=g, jet_context=context)

    return sample


#: target -> (its first stage's checkpoint file and kind, the builder of its sampler from the
#: record, the flow and that first stage's state)
BUILDERS: dict[str, tuple[str, str, Callable[..., Sampler]]] = {
    "latent": ("convae.pt", CONVAE_KIND, _latent_sampler),
    "particles": ("jet_flow.pt", FLOW_KIND, _particle_sampler),
}


def build_sampler(
    flow_state: dict[str, Any], first_state: dict[str, Any], *, device: str = "cpu"
) -> TrainedSampler:
    """The generator of a flow state (its record inside) and the state of the model it was
    fitted on (the ConVAE, or the jet flow): the one builder behind `load_sampler`, the
    pipeline's evaluation and every tuning trial, so all three sample the same way."""
    device = resolve_device(device)
    record = SamplerRecord.from_dict(flow_state.get("extra", {}))
    flow = flow_from_state(flow_state).to(device)
    sampler = BUILDERS[record.target][2](record, flow, first_state, device)
    kinematics = torch.tensor(record.jet_kinematics, dtype=torch.float32)
    return TrainedSampler(record, sampler, kinematics, device)


def class_dir(run: str | Path, jet_class: str) -> Path:
    """``run/<class>``, checked to hold a model (ValueError naming what is missing)."""
    run, jet_class = Path(run), canonical_class(jet_class)
    if not run.is_dir():
        where = "" if run.is_absolute() else f" (relative to {Path.cwd()}: {run.resolve()})"
        raise FileNotFoundError(
            f"{run}: no such run directory{where}; train one with jetflows pipeline"
        )
    path = run / jet_class
    if not (path / "flow.pt").is_file():
        have = sorted(p.parent.name for p in run.glob("*/flow.pt"))
        raise ValueError(
            f"run {run} has no model for class {jet_class!r} (no {path / 'flow.pt'}); "
            f"it has {have or 'none'}"
        )
    return path


def load_sampler(run: str | Path, jet_class: str, *, device: str = "cpu") -> TrainedSampler:
    """Rebuild the generator of ``jet_class`` from the checkpoints in ``run/<class>/``, each
    checked to belong to the class and to each other; ``device`` as
    `jetflows.distributed.resolve_device` takes it (auto, cpu, cuda).

    Raises:
        FileNotFoundError: no run directory or a missing checkpoint.
        ValueError: no model of the class, a corrupt checkpoint, or models that do not belong
            together (`pipelines.checkpoints.check_provenance`).
    """
    path = class_dir(run, jet_class)
    state = load_checkpoint(path / "flow.pt", FLOW_KIND)
    record = SamplerRecord.from_dict(state.get("extra", {}), path / "flow.pt")
    first, kind, _ = BUILDERS[record.target]
    first_state = load_checkpoint(path / first, kind)
    check_provenance(first_state, path / first, path.name)
    check_provenance(state, path / "flow.pt", path.name, **{first: first_state})
    return build_sampler(state, first_state, device=device)


def jet_features(
    particles: torch.Tensor, mask: torch.Tensor, kinematics: torch.Tensor
) -> torch.Tensor:
    """(n, 4) JetNet jet_features (pt, eta, mass, n) for generated jets and drawn (pt, eta)."""
    rel_mass = jet_observables(particles, mask)["mass"]  # m / pT_jet (pt_rel units)
    pt, eta = kinematics[:, 0], kinematics[:, 1]
    return torch.stack([pt, eta, rel_mass * pt, mask.sum(1).float()], 1)


def check_kinematics(gen: TrainedSampler, kinematics: Any, n: int) -> torch.Tensor:
    """Requested (pt, eta) per jet as an (n, 2) float32 tensor, checked.

    Raises:
        ValueError: the generator is not conditioned on kinematics, a wrong shape or count,
            a pt <= 0 or a non-finite value.
    """
    if not gen.conditional:
        raise ValueError(
            "this run's generator is not conditioned on jet kinematics: train it with "
            "latent.kinematics: true (or particle.kinematics: true) to ask for a pt"
        )
    kin = torch.as_tensor(np.asarray(kinematics, dtype=np.float32))
    if kin.shape != (n, 2):
        raise ValueError(f"kinematics must be (n, 2) = ({n}, 2) (pt, eta), got {tuple(kin.shape)}")
    if not torch.isfinite(kin).all() or (kin[:, 0] <= 0).any():
        raise ValueError("kinematics must be finite with pt > 0")
    return kin


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
) -> Jets:
    """``n`` generated jets in memory, the same jets `sample_to_file` writes for these
    arguments: particles (n, P, 3), mask (n, P), jet_features (n, 4), labels -1."""
    parts, jets = [], []
    with tqdm(total=n, desc="sampling", unit="jet", disable=not progress) as bar:
        for pf, jf in sample_jets(gen, n, seed=seed, batch_size=batch_size, kinematics=kinematics):
            parts.append(pf)
            jets.append(jf)
            bar.update(len(pf))
    pf = np.concatenate(parts)
    return Jets(pf[..., :3], pf[..., 3] > 0, np.concatenate(jets), np.full(n, -1))


@torch.no_grad()
def sample_jets(
    gen: TrainedSampler,
    n: int,
    *,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
    kinematics: Any = None,
) -> Any:
    """Yield batches (particle_features (b, P, 4), jet_features (b, 4)) as float32 numpy.

    ``kinematics`` (n, 2) (pt [GeV], eta): generate each jet for these (a conditional
    generator only); None: draw them from the training jets' pool (a conditional generator
    then generates each jet for its draw).
    """
    given = None if kinematics is None else check_kinematics(gen, kinematics, n)
    g = torch.Generator(device=gen.device).manual_seed(seed)
    picks = torch.Generator().manual_seed(seed + 1)  # kinematics draws: a stream of their own
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        if given is not None:
            kin = given[start : start + b]
        else:
            kin = gen.kinematics[torch.randint(len(gen.kinematics), (b,), generator=picks)]
        context = kin.to(gen.device) if gen.conditional else None
        particles, mask = gen.sampler(b, g, context)
        particles, mask = particles.float().cpu(), mask.cpu()
        pf = torch.cat([particles * mask[..., None], mask[..., None].float()], -1)
        yield pf.numpy(), jet_features(particles, mask, kin).numpy()


def sample_to_file(
    run: str | Path,
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
) -> Path:
    """Write n generated jets of ``jet_class`` from ``run`` to ``out`` (JetNet layout).

    Reproducible: the same run, class, n, seed and batch size give the same file.
    ``kinematics`` (n, 2) (pt [GeV], eta): each jet generated for these (`sample_jets`).
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and the batch size must be >= 1, got {n} and {batch_size}")
    jet_class = canonical_class(jet_class)
    out = check_writable(Path(out), overwrite=overwrite)
    inputs = sorted(class_dir(run, jet_class).glob("*.pt"))
    if any(out.resolve() == path.resolve() for path in inputs):
        raise ValueError(f"{out} is one of the run's models: write the jets somewhere else")
    gen = load_sampler(run, jet_class, device=device)
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
                "run": str(run),
                "seed": seed,
                "batch_size": batch_size,
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
