"""What a trained generator is besides its weights (`SamplerRecord`, kept in its flow
checkpoint) and what it becomes once built (`TrainedSampler`), with the jet-kinematics context
both sides of training share. Below the registry (`pipelines.run.generators`) and the stages
(`pipelines.run.stages`), which both use it: neither imports the other for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jetflows.errors import UserError

#: (n, torch.Generator, kinematics (n, 2) (pt, eta) or None) -> (particles (n, P, 3), mask)
Sampler = Callable[[int, torch.Generator, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class SamplerRecord:
    """What a trained generator is besides its weights, stored in its flow checkpoint
    (``state["extra"]``): how the flows' samples become jets, and for which jets.

    Arguments:
        target: the generator's name, a key of `GENERATORS`: "latent" (latent flow -> ConVAE
            decoder), "particles" (jet flow -> particle flow) or "cloud" (jet flow -> set flow).
        jet_class: the class it was trained on.
        num_particles: P of the jets it makes.
        jet_kinematics: (M, 2) training jets' (pt [GeV], eta): the pool each generated jet's
            kinematics are drawn from.
        kinematics_norm: the mean and std of (log pt, eta) the flows' context was standardized
            with; None: not conditioned on kinematics.
        latent: `pipelines.run.config.LatentOptions` as a dict (masking, pt_threshold, project);
            latent target only.
        multiplicity_probs: (P + 1,) training multiplicity distribution; latent target only.
        particle_target: `flows.particle.ParticleTarget.to_dict()`; particles and cloud
            targets.
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
        if not isinstance(extra.get("target"), str):
            raise UserError(f"{where}: not a pipeline flow (no target recorded)")
        unknown = sorted(set(extra) - {f.name for f in fields(cls)})
        if unknown:
            raise UserError(f"{where}: an unknown generator record (keys {unknown})")
        try:
            record = cls(**extra)
        except TypeError as err:
            raise UserError(f"{where}: an incomplete generator record: {err}") from err
        record.check(where)
        return record

    def check(self, where: str | Path) -> None:
        """ValueError naming ``where`` unless the jets it describes can exist: a kinematics
        pool of finite (pt > 0, eta) pairs, a finite context scale with std > 0, P >= 1."""
        pool = np.asarray(self.jet_kinematics, dtype=np.float64)
        bad = (
            pool.ndim != 2
            or pool.shape[1:] != (2,)
            or len(pool) == 0
            or not np.isfinite(pool).all()
            or (pool[:, 0] <= 0).any()
        )
        if self.kinematics_norm is not None:
            norm = np.asarray(self.kinematics_norm, dtype=np.float64)
            bad = bad or norm.shape != (2, 2) or not np.isfinite(norm).all() or (norm[1] <= 0).any()
        if bad or not isinstance(self.num_particles, int) or self.num_particles < 1:
            raise UserError(
                f"{where}: its generator record holds jets that cannot exist (a kinematics pool "
                "or scale that is not finite, a pt <= 0, no particles): damaged; train it again"
            )


@dataclass
class TrainedSampler:
    """A trained generator of one class, ready to sample: its record, the ``sampler`` built
    from its models, the jet (pt, eta) pool, and the device its models live on."""

    record: SamplerRecord
    sampler: Sampler
    kinematics: torch.Tensor  # (M, 2) training jets' (pt [GeV], eta), on the CPU
    device: torch.device  # where the models and their random stream live
    model: str = ""  # what draws the jets, in words (the generated file's "model" attribute)

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
