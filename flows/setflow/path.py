"""The probability path a set flow is trained on and its loss: straight (optimal-transport)
paths x_t = t x1 + (1 - t) x0 from noise x0 to the jet x1 (Meta's ``flow_matching``
``AffineProbPath`` with ``CondOTScheduler``), the noise optionally paired with the particles
inside each jet, and the conditional flow-matching regression over the real particles."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from flows.setflow.config import SetFlowConfig


def straight_path() -> Any:
    """flow_matching's straight path x_t = t x1 + (1 - t) x0 (imported here: see
    `flows.setflow.sampling.ode_solver`)."""
    from flow_matching.path import AffineProbPath
    from flow_matching.path.scheduler import CondOTScheduler

    return AffineProbPath(scheduler=CondOTScheduler())


def pair_noise(x0: torch.Tensor, x1: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x0 with each jet's real noise particles permuted onto its real particles by the assignment
    of least total squared distance: x0, x1 (B, P, F), mask (B, P) -> (B, P, F); padded slots
    stay where they are.

    scipy's Hungarian solver runs per jet (~7 ms for 256 jets of 30): torchcfm's and POT's
    optimal-transport samplers pair whole samples of a batch, not the particles inside each.
    """
    from scipy.optimize import linear_sum_assignment

    cost = (torch.cdist(x1.detach().double(), x0.detach().double()) ** 2).cpu().numpy()
    order = torch.arange(x0.shape[1]).repeat(len(x0), 1)  # (B, P): padding keeps its noise
    for b, real in enumerate(mask.cpu().numpy()):
        slots = real.nonzero()[0]  # the real particles alone: no large costs fencing off padding
        columns = linear_sum_assignment(cost[b][np.ix_(slots, slots)])[1]
        order[b, slots] = torch.from_numpy(slots[columns])
    # particle i of x1 takes noise particle order[b, i]
    order = order.to(x0.device)
    return x0.gather(1, order[..., None].expand_as(x0))


def occupied_slots(mask: torch.Tensor) -> int:
    """P' such that every slot from P' on is padding in every jet of ``mask`` (B, P) (jets are
    pt-sorted, so their particles fill the first slots); 0 when no jet has a particle."""
    real = mask.any(0)
    return int(real.nonzero()[-1]) + 1 if real.any() else 0


def loss_weights(config: SetFlowConfig, features: int, like: torch.Tensor) -> torch.Tensor:
    """(F,) loss weights, mean 1: ``position_weight`` on (eta, phi), 1 on the rest."""
    w = torch.ones(features, dtype=like.dtype, device=like.device)
    w[:2] = config.position_weight
    return w * features / w.sum()


def flow_matching_loss(
    output: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    config: SetFlowConfig,
    x: torch.Tensor,
    mask: torch.Tensor,
    *,
    path: Any,
    training: bool,
    cut: bool = False,
) -> torch.Tensor:
    """The conditional flow-matching loss: mean squared error of the network's ``output``
    (x_t (B, P', F), t (B,), mask (B, P') -> (B, P', F)) against the straight path's velocity
    x1 - x0 (``config.predict`` data: against x1), over the real particles' coordinates only.

    x: (B, P, F) data (x1), mask (B, P); noise x0 (paired with x1 as ``config.coupling``
    says) and t (density (1 + a) t^a, a = ``config.time_power``) from torch's global stream
    while ``training``, else from a fixed seed (a validation loss that does not jitter with
    the draw, nor consume the training stream). ``cut``: the network sees only the slots up to
    the batch's longest jet (P' <= P; pt-sorted jets fill their first slots), which changes
    nothing for a network whose padding reaches no real particle and saves most of a 150-slot
    batch's attention; the noise is drawn for every slot first, so the random stream is that
    of the uncut batch.
    """
    g = None if training else torch.Generator(device=x.device).manual_seed(0)
    x0 = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
    u = torch.rand(len(x), generator=g, device=x.device, dtype=x.dtype)
    if cut and mask.any():
        slots = occupied_slots(mask)
        x, mask, x0 = x[:, :slots], mask[:, :slots], x0[:, :slots]
    t = u ** (1.0 / (1.0 + config.time_power))  # density (1 + a) t^a
    if config.coupling == "particles":
        x0 = pair_noise(x0, x, mask)
    sample = path.sample(x_0=x0, x_1=x, t=t)
    want = sample.dx_t if config.predict == "velocity" else x
    squared = (output(sample.x_t, t, mask) - want) ** 2  # (B, P, F)
    features = x.shape[-1]
    error = (squared * loss_weights(config, features, x)).sum(-1)  # (B, P)
    real = mask.to(x.dtype)
    return (error * real).sum() / (real.sum() * features)
