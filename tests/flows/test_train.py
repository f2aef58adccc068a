import dataclasses

import pytest
import torch

from flows.models import FlowConfig, build_flow
from flows.train import fit, flow_from_state, nll
from jetflows.training import TrainConfig
from tests.conftest import without_times


def _data(n: int = 400, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, 1, generator=g)
    x = torch.cat(
        [u, u**2 + 0.1 * torch.randn(n, 1, generator=g), torch.randn(n, 1, generator=g)], 1
    )
    return (x, None, None)


def _flow():
    torch.manual_seed(0)
    return build_flow(
        FlowConfig(kind="zuko_nsf_coupling", transforms=2, hidden_features=16), features=3
    )


CFG = TrainConfig(epochs=4, batch_size=50, lr=3e-3, seed=0, patience=0)


def test_fit_lowers_validation_nll_and_keeps_the_best():
    flow, train, valid = _flow(), _data(), _data(seed=1)
    flow.standardize_(train[0])
    with torch.no_grad():
        start = nll(flow, *valid)[0].item()
    result = fit(flow, train, valid, config=CFG, progress=False)
    losses = [row["valid_loss"] for row in result.history]
    assert all(row["seconds"] > 0 for row in result.history)  # epoch wall times, for benchmarks
    assert len(losses) == CFG.epochs and losses[-1] < start
    with torch.no_grad():
        assert nll(flow.eval(), *valid)[0].item() == pytest.approx(min(losses), rel=1e-5)


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_is_exact(ema: float):
    config = dataclasses.replace(CFG, ema=ema)
    train, valid = _data(), _data(seed=1)
    full = fit(_flow(), train, valid, config=config, progress=False)
    states = []
    first = fit(
        _flow(),
        train,
        valid,
        config=config,
        progress=False,
        on_epoch=lambda e, row, state: states.append(state),
    )
    assert without_times(first.history) == without_times(full.history)
    resumed = fit(_flow(), train, valid, config=config, resume=states[1], progress=False)
    assert [r["valid_loss"] for r in resumed.history] == [r["valid_loss"] for r in full.history]
    assert resumed.history[2]["epoch"] == 2
    for name, tensor in resumed.state["best_state_dict"].items():
        assert torch.equal(tensor, full.state["best_state_dict"][name]), name


def test_nan_is_reported_with_the_epoch():
    flow, train, valid = _flow(), _data(), _data(seed=1)
    with torch.no_grad():
        next(flow.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"epoch 0: the loss term became nan"):
        fit(flow, train, valid, config=CFG, progress=False)


@pytest.mark.parametrize(
    ("train", "match"),
    [
        ((torch.randn(10, 4), None, None), r"x must be \(N, 3\)"),
        ((torch.full((10, 3), float("nan")), None, None), "NaN"),
        ((torch.randn(0, 3), None, None), "no data"),
        ((torch.randn(10, 3), torch.randn(10, 2), None), None),
    ],
)
def test_bad_data(train, match):
    if match is None:  # context given to a flow without context: the flow itself refuses it
        with pytest.raises(ValueError, match="takes no context"):
            fit(_flow(), train, train, config=CFG, progress=False)
        return
    with pytest.raises(ValueError, match=match):
        fit(_flow(), train, train, config=CFG, progress=False)


def test_checkpoints_of_other_models_are_refused():
    train = _data()
    state = fit(_flow(), train, train, config=TrainConfig(epochs=1), progress=False).state
    other = build_flow(FlowConfig(kind="zuko_maf", transforms=2), features=3)
    with pytest.raises(ValueError, match="another flow"):
        fit(other, train, train, config=TrainConfig(epochs=1), resume=state, progress=False)
    with pytest.raises(ValueError, match="another train_config"):
        fit(_flow(), train, train, config=TrainConfig(epochs=2), resume=state, progress=False)
    with pytest.raises(ValueError, match=r"not a jetflows\.flow checkpoint"):
        flow_from_state({**state, "kind": "jetflows.convae"})
    with pytest.raises(ValueError, match="fp32 only"):
        fit(_flow(), train, train, config=TrainConfig(precision="bf16"), progress=False)
