"""Maximum-likelihood training of a `Flow`: the shared loop of `jetflows.training`.

`fit` works on tensors and never touches the disk: validation NLL, early stopping, LR schedule,
gradient clipping, a tqdm bar, NaN detection naming the epoch, and a self-describing state after
every epoch (``on_epoch``: checkpoints and Optuna pruning live there) that `flow_from_state`
rebuilds the flow from and ``resume`` continues from exactly.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch

from flows.models import Flow, FlowConfig, build_flow
from jetflows.errors import UserError
from jetflows.family import FitOptions, ModelFamily, check_context, widths
from jetflows.training import FitResult, TrainConfig, check_kind

if TYPE_CHECKING:
    from typing_extensions import Unpack

CHECKPOINT_KIND = "jetflows.flow"
#: (x (N, D), context (N, C) or None, labels (N,) or None)
FlowData = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]


def nll(
    flow: Flow,
    x: torch.Tensor,
    context: torch.Tensor | None,
    labels: torch.Tensor | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean negative log-likelihood of a batch (nats per vector) and its per-dimension value."""
    loss = -flow.log_prob(x, context, labels).mean()
    return loss, {"nll_per_dim": loss / flow.features}


def check_data(flow: Flow, data: FlowData, name: str) -> None:
    """Raise ValueError for data the flow cannot take: shapes, NaN/inf, empty, labels."""
    x, context, labels = data
    if x.dim() != 2 or x.shape[1] != flow.features:
        raise UserError(f"{name}: x must be (N, {flow.features}), got {tuple(x.shape)}")
    if len(x) == 0:
        raise UserError(f"{name}: no data")
    if not torch.isfinite(x).all():
        raise UserError(f"{name}: x contains NaN or inf")
    check_context(flow.context, context, len(x), name, "the flow")
    if flow.embedding is not None and (labels is None or labels.shape != (len(x),)):
        raise UserError(f"{name}: the flow is class-conditional: give labels of shape (N,)")


def _built(state: dict[str, Any]) -> Flow:
    """An untrained flow of the configuration a checkpoint records."""
    return build_flow(FlowConfig(**state["flow_config"]), **widths(state))


#: the flows as `jetflows.family` trains and rebuilds them
FAMILY = ModelFamily(
    kind=CHECKPOINT_KIND,
    what="flow",
    check_data=check_data,
    describe=lambda flow: {"flow_config": flow.config, **widths(flow)},
    build=_built,
    objective=nll,
    desc=lambda flow: f"flow {flow.config.kind}",
)


def fit(
    flow: Flow,
    train: FlowData,
    valid: FlowData,
    *,
    standardize: bool = True,
    **options: Unpack[FitOptions],
) -> FitResult:
    """Fit ``flow`` by maximum likelihood; early stopping on the validation NLL.

    Arguments:
        flow: a `Flow` (updated in place; ends with its best weights).
        train, valid: (x (N, D), context (N, C) or None, labels (N,) or None).
        standardize: set the flow's loc/scale from the training x first (not on resume).
        options: `jetflows.family.FitOptions`: config (bf16 is refused: spline bin searches
            need float32), extra (what else rebuilds the generator around the flow, e.g. the
            target's preprocessing), resume, on_epoch, progress.

    Returns:
        `FitResult`; history rows carry train/valid ``loss`` (NLL) and ``nll_per_dim``.

    Raises:
        ValueError: bad data, a bf16 config, or a resume state of another flow or config.
        FloatingPointError: the NLL became NaN/inf (the message names the epoch).
    """
    config = options.get("config") or TrainConfig()
    if config.precision != "fp32":
        raise UserError("flows train in fp32 only (precision='fp32')")
    FAMILY.check(flow, train, valid)
    if options.get("resume") is not None:
        check_state(options["resume"], flow)
    elif standardize:
        flow.standardize_(train[0])
    return FAMILY.fit(flow, train, valid, checked=True, **options)


def check_state(state: dict[str, Any], flow: Flow | None = None) -> None:
    """Raise ValueError unless ``state`` is a flow checkpoint (for ``flow``'s shape, if given)."""
    check_kind(state, CHECKPOINT_KIND)
    if flow is not None and (
        state["flow_config"] != asdict(flow.config)
        or (state["features"], state["context"]) != (flow.features, flow.context)
    ):
        raise UserError(
            f"the checkpoint is for another flow: {state['flow_config']}, "
            f"{state['features']} features, {state['context']} context"
        )


def flow_from_state(state: dict[str, Any], *, best: bool = True) -> Flow:
    """Rebuild a `Flow` from a checkpoint state alone (best or last weights), in eval mode."""
    return FAMILY.from_state(state, best=best)
