"""Maximum-likelihood training of a `Flow`: the shared loop of `jetflows.training`.

`fit` works on tensors and never touches the disk: validation NLL, early stopping, LR schedule,
gradient clipping, a tqdm bar, NaN detection naming the epoch, and a self-describing state after
every epoch (``on_epoch``: checkpoints and Optuna pruning live there) that `flow_from_state`
rebuilds the flow from and ``resume`` continues from exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch

from flows.models import Flow, FlowConfig, build_flow
from jetflows.errors import UserError
from jetflows.training import FitResult, TrainConfig, check_kind, fit_loop

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
    for part, tensor in (("x", x), ("context", context)):
        if tensor is not None and not torch.isfinite(tensor).all():
            raise UserError(f"{name}: {part} contains NaN or inf")
    if flow.context and (context is None or context.shape != (len(x), flow.context)):
        raise UserError(f"{name}: the flow needs context of shape ({len(x)}, {flow.context})")
    if flow.embedding is not None and (labels is None or labels.shape != (len(x),)):
        raise UserError(f"{name}: the flow is class-conditional: give labels of shape (N,)")


def fit(
    flow: Flow,
    train: FlowData,
    valid: FlowData,
    *,
    config: TrainConfig | None = None,
    standardize: bool = True,
    extra: dict[str, Any] | None = None,
    resume: dict[str, Any] | None = None,
    on_epoch: Callable[[int, dict[str, float], dict[str, Any]], None] | None = None,
    progress: bool = True,
) -> FitResult:
    """Fit ``flow`` by maximum likelihood; early stopping on the validation NLL.

    Arguments:
        flow: a `Flow` (updated in place; ends with its best weights).
        train, valid: (x (N, D), context (N, C) or None, labels (N,) or None).
        config: `TrainConfig` (bf16 is refused: spline bin searches need float32).
        standardize: set the flow's loc/scale from the training x first (not on resume).
        extra: what else rebuilds the generator around the flow (e.g. the target's
            preprocessing); stored in the state and checked on resume.
        resume, on_epoch, progress: as in `jetflows.training.fit_loop`.

    Returns:
        `FitResult`; history rows carry train/valid ``loss`` (NLL) and ``nll_per_dim``.

    Raises:
        ValueError: bad data, a bf16 config, or a resume state of another flow or config.
        FloatingPointError: the NLL became NaN/inf (the message names the epoch).
    """
    config = config or TrainConfig()
    if config.precision != "fp32":
        raise UserError("flows train in fp32 only (precision='fp32')")
    for name, data in (("train", train), ("valid", valid)):
        check_data(flow, data, name)
    if resume is not None:
        check_state(resume, flow)
    elif standardize:
        flow.standardize_(train[0])
    describe = {
        "flow_config": flow.config,
        "features": flow.features,
        "context": flow.context,
        "extra": extra or {},
    }
    return fit_loop(
        flow,
        nll,
        train,
        valid,
        config=config,
        kind=CHECKPOINT_KIND,
        describe=describe,
        resume=resume,
        on_epoch=on_epoch,
        progress=progress,
        desc=f"flow {flow.config.kind}",
    )


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
    check_state(state)
    flow = build_flow(
        FlowConfig(**state["flow_config"]), features=state["features"], context=state["context"]
    )
    flow.load_state_dict(state["best_state_dict" if best else "state_dict"])
    return flow.eval()
