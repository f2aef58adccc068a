"""Train a two-stage generator from scratch and return what the studies score: the study of
losses (`pipelines.experiments.study`) and the sparse digits (`pipelines.experiments.digits`)
both train a ConVAE and its latent flow, sample, and reconstruct held-out inputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from convae.diagnostics import reconstruct
from pipelines.data.jetnet import Jets
from pipelines.run import stages
from pipelines.run.config import TwoStageConfig
from pipelines.run.generators import build_sampler, direct_trainer, train_latent_stages
from pipelines.run.sample import sampled_jets


@dataclass(frozen=True)
class TwoStage:
    """A trained two-stage model's outputs.

    Arguments:
        generated: ``n`` sampled jets.
        reconstructed: the test jets encoded (posterior mean) and decoded, in their order, with
            the inputs' jet features and labels.
        states: the checkpoints' states by file name (convae.pt, flow.pt).
    """

    generated: Jets
    reconstructed: Jets
    states: dict[str, dict[str, Any]]


def train_two_stage(
    cfg: TwoStageConfig,
    name: str,
    parts: tuple[Jets, Jets, Jets],
    *,
    n: int,
    seed: int,
    progress: bool = False,
) -> TwoStage:
    """Train ``cfg``'s ConVAE and latent flow on (train, valid) of ``parts`` (the pipeline's
    stages, nothing kept on disk), sample ``n`` jets with ``seed`` and reconstruct the test
    part."""
    train, valid, test = parts
    trained = train_latent_stages(cfg, name, (train, valid), "", direct_trainer(progress))
    generated = sampled_jets(build_sampler(trained.states, device=cfg.device), n, seed=seed)
    vae, norm = stages.convae_of(trained.states["convae.pt"], torch.device("cpu"))
    x, m = torch.from_numpy(test.particles.copy()), torch.from_numpy(test.mask.copy())
    rec, rec_mask = reconstruct(vae.cpu(), x, m, normalization=norm)
    particles = rec.numpy().astype(np.float32)
    reconstructed = Jets(particles, rec_mask.numpy(), test.jet_features, test.labels)
    return TwoStage(generated, reconstructed, trained.states)
