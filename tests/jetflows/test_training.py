import math

import pytest
import torch
from torch import nn

from jetflows.errors import UserError
from jetflows.training import TrainConfig, fit_loop


def _fit(ema: float, seen: list[torch.Tensor]):
    """A one-weight model fit by Adam; ``seen`` gets the raw weight at every training call."""
    torch.manual_seed(0)
    model = nn.Linear(1, 1, bias=False)

    def objective(m: nn.Module, x: torch.Tensor):
        if torch.is_grad_enabled():  # a training step, not validation
            seen.append(m.weight.detach().clone())
        loss = ((m(x) - 3 * x) ** 2).mean()
        return loss, {}

    x = torch.linspace(-1, 1, 40)[:, None]
    config = TrainConfig(epochs=3, batch_size=10, lr=0.1, patience=0, ema=ema)
    result = fit_loop(model, objective, (x,), (x,), config=config, kind="test", describe={})
    return model, result


def test_ema_keeps_the_moving_average_of_the_raw_weights():
    decay, seen = 0.8, []
    model, result = _fit(decay, seen)
    raw = [*seen[1:], result.state["state_dict"]["weight"]]  # the weight after each step
    average = raw[0]
    for n, weight in enumerate(raw[1:], start=1):
        d = min(decay, (1 + n) / (10 + n))  # warmed up: 0.18, 0.25, ... then 0.8
        average = d * average + (1 - d) * weight
    assert len(raw) == 12
    # the loss falls monotonically here, so the last epoch's average is the best and is kept
    assert torch.allclose(model.weight.detach(), average, atol=1e-6)
    assert not torch.allclose(average, raw[-1], atol=1e-3)  # the average lags the raw weight
    x = torch.linspace(-1, 1, 40)
    assert math.isclose(
        result.history[-1]["valid_loss"], ((average - 3) ** 2 * x**2).mean().item(), rel_tol=1e-5
    )


def test_without_ema_the_raw_weights_are_kept():
    seen = []
    model, result = _fit(0.0, seen)
    assert torch.equal(model.weight.detach(), result.state["state_dict"]["weight"])
    assert result.state["ema"] is None


def test_the_model_keeps_its_best_weights_and_the_state_its_last():
    """An objective whose validation loss rises after the first epoch: the model ends with the
    first epoch's weights, in eval mode; the state resumes from the last ones."""
    torch.manual_seed(0)
    model = nn.Linear(1, 1, bias=False)

    def objective(m: nn.Module, x: torch.Tensor):
        target = 3 if torch.is_grad_enabled() else 0.5  # training moves away from validation
        return ((m(x) - target * x) ** 2).mean(), {}

    x = torch.linspace(-1, 1, 40)[:, None]
    config = TrainConfig(epochs=3, batch_size=10, lr=0.1, patience=0)
    states = []
    result = fit_loop(
        model, objective, (x,), (x,), config=config, kind="test", describe={},
        on_epoch=lambda e, row, state: states.append(state),
    )  # fmt: skip
    losses = [row["valid_loss"] for row in result.history]
    assert losses[0] < losses[1] < losses[2]
    assert torch.equal(model.weight.detach(), states[0]["state_dict"]["weight"])
    assert torch.equal(result.state["state_dict"]["weight"], states[2]["state_dict"]["weight"])
    assert not model.training


@pytest.mark.parametrize("ema", [-0.1, 1.0, 1.5])
def test_ema_outside_0_1_is_refused(ema: float):
    with pytest.raises(UserError, match="ema"):
        TrainConfig(ema=ema)
