"""Fitting a set flow (flow matching through `jetflows.training.fit_loop`), rebuilding one
from its checkpoint state, and generating jets with the jet-level flow that feeds it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from flows.models import Flow
from flows.particle import N_COLUMN, ParticleTarget, finish, sample_jet_rows
from flows.setflow.config import CHECKPOINT_KIND, SetFlowConfig
from flows.setflow.flow import SetFlow
from jetflows.errors import UserError
from jetflows.family import FitOptions, ModelFamily, check_context, widths
from jetflows.training import FitResult

if TYPE_CHECKING:
    from typing_extensions import Unpack


def flow_matching_objective(
    flow: SetFlow, x: torch.Tensor, mask: torch.Tensor, context: torch.Tensor | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`jetflows.training.fit_loop`'s objective: the flow-matching loss of a batch."""
    return flow.loss(x, mask, context), {}


#: (particles (N, P, F), mask (N, P), context (N, C) or None)
SetData = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


def check_data(flow: SetFlow, data: SetData, name: str) -> None:
    """Raise ValueError for data the flow cannot take: shapes, NaN/inf, empty jets."""
    x, mask, context = data
    if x.dim() != 3 or x.shape[2] != flow.features or mask.shape != x.shape[:2]:
        raise UserError(
            f"{name}: particles must be (N, P, {flow.features}) with a mask (N, P), got "
            f"{tuple(x.shape)} and {tuple(mask.shape)}"
        )
    if len(x) == 0 or (mask.sum(1) == 0).any():
        raise UserError(f"{name}: no jets, or a jet without particles")
    if not torch.isfinite(x[mask]).all():
        raise UserError(f"{name}: particles contain NaN or inf")
    check_context(flow.context, context, len(x), name, "the set flow")


#: the set flows as `jetflows.family` trains and rebuilds them
FAMILY = ModelFamily(
    kind=CHECKPOINT_KIND,
    what="set flow",
    check_data=check_data,
    describe=lambda flow: {"set_flow_config": flow.config, **widths(flow)},
    build=lambda state: SetFlow(SetFlowConfig(**state["set_flow_config"]), **widths(state)),
    objective=flow_matching_objective,
    desc=lambda flow: f"set flow {flow.config.network}",
)


def fit(flow: SetFlow, train: SetData, valid: SetData, **options: Unpack[FitOptions]) -> FitResult:
    """Train ``flow`` by conditional flow matching; early stopping on the validation loss.

    Arguments:
        flow: a `SetFlow` (updated in place; ends with its best weights).
        train, valid: (particles (N, P, F) standardized, mask (N, P), context (N, C) or None).
        options: `jetflows.family.FitOptions` (config, extra, resume, on_epoch, progress).

    Raises:
        ValueError: bad data, or a resume state of another flow or config.
        FloatingPointError: the loss became NaN/inf (the message names the epoch).
    """
    return FAMILY.fit(flow, train, valid, **options)


def set_flow_from_state(state: dict[str, Any], *, best: bool = True) -> SetFlow:
    """Rebuild a `SetFlow` from a checkpoint state alone (best or last weights), in eval mode.

    Raises:
        ValueError: not a set-flow checkpoint.
    """
    return FAMILY.from_state(state, best=best)


@torch.no_grad()
def generate(
    set_flow: SetFlow,
    jet_flow: Flow,
    n: int,
    target: ParticleTarget,
    *,
    generator: torch.Generator | None = None,
    project: bool | None = None,
    kinematics: torch.Tensor | None = None,
    guide: SetFlow | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """n jets: the jet flow samples each jet's (mass, n, ...) rows (``kinematics`` (n, C): its
    kinematics, if conditioned), the set flow its n particles given them; (particles (n, P, 3)
    pt-sorted and zero-padded, mask (n, P)). ``target``: the `flows.particle.ParticleTarget`
    (no centroid) the set flow's data were standardized with; ``project`` as there;
    ``guide``: the set flow's guide (`SetFlow.sample`)."""
    if target.centroid is not None:
        raise UserError("a set flow has no leading slot: fit its target without the centroid")
    raw, context = sample_jet_rows(jet_flow, n, target, generator=generator, kinematics=kinematics)
    P = target.num_particles
    mask = torch.arange(P, device=raw.device)[None] < raw[:, N_COLUMN, None]
    c = context if set_flow.context else None
    x = set_flow.sample(mask, c, generator=generator, guide=guide)
    return finish(x.flatten(1), raw, target, project=project)
