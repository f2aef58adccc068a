"""A stop request survives being swallowed: safe points raise it again."""

import pytest
import torch

from jetflows import interrupt
from jetflows.training import TrainConfig, fit_loop


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = ((x - self.w) ** 2).mean()
        return loss, {"mse": loss}


def test_a_pending_request_stops_training_at_the_next_batch():
    data = (torch.randn(64, 1),)
    interrupt.request()
    try:
        with pytest.raises(interrupt.Terminated):
            fit_loop(
                _Tiny(),
                lambda model, x: model(x),
                data,
                data,
                config=TrainConfig(epochs=2, batch_size=8),
                kind="test",
                describe={},
                progress=False,
            )
    finally:
        interrupt.clear()
    assert interrupt.requested() is None
    interrupt.check()  # nothing pending: no exception
