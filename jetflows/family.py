"""One protocol for the model families (the ConVAE, the latent and particle flows, the set flow
and its few-step student): how a family checks its data, what its checkpoint records to rebuild
it, how it is fitted (`jetflows.training.fit_loop`) and how it is rebuilt from a checkpoint
alone. Each family declares a `ModelFamily` beside its model; the shared steps live here once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

import torch
from torch import nn

from jetflows.errors import UserError
from jetflows.training import Batch, FitResult, ObjectiveFn, TrainConfig, check_kind, fit_loop

if TYPE_CHECKING:  # annotations only: Python 3.10's typing has no Unpack
    from typing_extensions import Unpack

OnEpoch = Callable[[int, dict[str, float], dict[str, Any]], None] | None


class FitOptions(TypedDict, total=False):
    """The keyword arguments every family's ``fit`` takes (``**options``).

    Arguments:
        config: `TrainConfig` (None: its defaults).
        extra: what else rebuilds the generator around the model (the pipeline's record),
            stored in its state and checked on resume; families that record none refuse it.
        resume: a state from ``on_epoch`` or a previous `FitResult`: continue from there.
        on_epoch: called after every epoch with (epoch, history row, state).
        progress: a tqdm bar with the validation terms.
    """

    config: TrainConfig | None
    extra: dict[str, Any] | None
    resume: dict[str, Any] | None
    on_epoch: OnEpoch
    progress: bool


@dataclass(frozen=True)
class ModelFamily:
    """A family of models as training and loading see it.

    Arguments:
        kind: its checkpoint kind ("jetflows.flow", ...).
        what: its name in words, for messages and the progress bar ("flow", "set flow").
        check_data: (model, data, "train" or "valid") -> None: UserError for data the model
            cannot take (shapes, NaN or inf, an empty set, a missing context).
        describe: model -> what rebuilds it, stored at the top level of its checkpoint
            (its configs, feature and context widths) and checked on resume.
        build: checkpoint state -> an untrained model of the configuration it records.
        objective: ``objective(model, *batch)`` -> (mean loss, {term: value}), as `fit_loop`
            takes it; None: each fit passes its own (the ConVAE's depends on its loss config).
        desc: model -> the progress bar's name; None: ``what``.
        extra: its checkpoints record the generator's ``extra`` (the flows do; the ConVAE,
            a first stage, does not).
    """

    kind: str
    what: str
    check_data: Callable[[Any, Any, str], None]
    describe: Callable[[Any], dict[str, Any]]
    build: Callable[[dict[str, Any]], nn.Module]
    objective: ObjectiveFn | None = None
    desc: Callable[[Any], str] | None = None
    extra: bool = True

    def check(self, model: nn.Module, train: Batch, valid: Batch) -> None:
        """`check_data` on the training and the validation data."""
        for name, data in (("train", train), ("valid", valid)):
            self.check_data(model, data, name)

    def fit(
        self,
        model: nn.Module,
        train: Batch,
        valid: Batch,
        *,
        objective: ObjectiveFn | None = None,
        describe: dict[str, Any] | None = None,
        checked: bool = False,
        **options: Unpack[FitOptions],
    ) -> FitResult:
        """`fit_loop` on (train, valid), checked by `check` unless ``checked`` (the caller
        has), with the family's objective (or ``objective``), storing `describe` of the
        model, ``describe`` (what else rebuilds it: a loss config) and, for a family that
        records one, ``options["extra"]`` in its state.

        Raises:
            ValueError: bad data, a resume state of another model or config, or an
                ``extra`` given to a family that records none.
        """
        objective = objective or self.objective
        if objective is None:
            raise ValueError(f"fitting a {self.what} needs its objective (the family has none)")
        if not checked:
            self.check(model, train, valid)
        described = {**self.describe(model), **(describe or {})}
        extra = options.pop("extra", None)
        if self.extra:
            described["extra"] = extra or {}
        elif extra is not None:
            raise UserError(f"a {self.what} records no generator extra")
        return fit_loop(
            model,
            objective,
            train,
            valid,
            config=options.pop("config", None) or TrainConfig(),
            kind=self.kind,
            describe=described,
            desc=self.desc(model) if self.desc else self.what,
            **options,
        )

    def from_state(self, state: dict[str, Any], *, best: bool = True) -> nn.Module:
        """Rebuild the model from a checkpoint state alone (best or last weights), in eval
        mode.

        Raises:
            ValueError: a checkpoint of another kind, or weights that do not fit the
                configuration it records (edited apart from it).
        """
        check_kind(state, self.kind)
        model = self.build(state)
        try:
            model.load_state_dict(state["best_state_dict" if best else "state_dict"])
        except RuntimeError as err:
            raise UserError(f"a {self.what} whose weights do not fit its config: {err}") from err
        return model.eval()


def widths(model_or_state: Any) -> dict[str, int]:
    """The feature and context widths of a model, or as its checkpoint state records them
    (the keyword arguments a family's model takes)."""
    if isinstance(model_or_state, dict):
        return {"features": model_or_state["features"], "context": model_or_state["context"]}
    return {"features": model_or_state.features, "context": model_or_state.context}


def check_context(
    width: int, context: torch.Tensor | None, n: int, name: str, what: str = "the model"
) -> None:
    """UserError unless ``context`` is what a model conditioned on ``width`` numbers needs for
    ``n`` inputs: (n, width) when ``width`` > 0, and finite whenever one is given."""
    if width and (context is None or context.shape != (n, width)):
        raise UserError(f"{name}: {what} needs context of shape ({n}, {width})")
    if context is not None and not torch.isfinite(context).all():
        raise UserError(f"{name}: context contains NaN or inf")
