"""Issue 39: one protocol for the model families (`jetflows.family.ModelFamily`). Each family
fits through it, rebuilds from its checkpoint alone to the same outputs, and refuses bad data,
another family's checkpoint, weights edited apart from their config, and a record it keeps none
of, all the same way."""

import pytest
import torch

from convae import train as convae_train
from convae.model import ConVAE, ConVAEConfig
from flows import train as flow_train
from flows.models import FlowConfig, build_flow
from flows.setflow import train as set_train
from flows.setflow.config import SetFlowConfig
from flows.setflow.flow import SetFlow
from flows.setflow.student import FAMILY as STUDENT_FAMILY
from flows.setflow.student import Student, StudentConfig, teacher_trajectories
from flows.setflow.student import fit as student_fit
from jetflows.errors import UserError
from jetflows.training import TrainConfig

N, P = 24, 30
CONFIG = TrainConfig(epochs=2, batch_size=8, patience=0)
SET_FLOW = SetFlowConfig(width=16, layers=1, global_width=8, heads=2, steps=2)


def _particles(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, P, 3, generator=g) * 0.1
    mask = torch.arange(P)[None] < torch.randint(5, P, (N, 1), generator=g)
    x[..., 2] = x[..., 2].abs()
    return x * mask[..., None], mask


def _convae():
    model = ConVAE(ConVAEConfig(n_filter=4, dense_width=16, latent_dim=4))
    data = [_particles(s) for s in (0, 1)]
    return convae_train.FAMILY, convae_train.fit, model, data, lambda m: m.encode(data[1][0])[0]


def _flow():
    model = build_flow(FlowConfig(transforms=2, hidden_features=8), features=4, context=2)
    data = [(torch.randn(N, 4), torch.randn(N, 2), None) for _ in range(2)]
    return flow_train.FAMILY, flow_train.fit, model, data, lambda m: m.log_prob(*data[1][:2])


def _set_flow():
    model = SetFlow(SET_FLOW, context=2)
    data = [(*_particles(s), torch.randn(N, 2)) for s in (0, 1)]
    x, mask, context = data[1]
    t = torch.tensor(0.5)
    return set_train.FAMILY, set_train.fit, model, data, lambda m: m.velocity(x, t, mask, context)


def _student():
    teacher = SetFlow(SET_FLOW, context=2)
    data = []
    for seed in (0, 1):
        _, mask = _particles(seed)
        context = torch.randn(N, 2)
        data.append((teacher_trajectories(teacher, mask, context), mask, context))
    model = Student.from_teacher(teacher, StudentConfig(steps=(1, 2)))
    traj, mask, context = data[1]
    return STUDENT_FAMILY, student_fit, model, data, lambda m: m.jumps(traj[:, 0], mask, context, 2)


FAMILIES = {"convae": _convae, "flow": _flow, "set_flow": _set_flow, "student": _student}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_family_fits_and_rebuilds_from_its_checkpoint_alone(name):
    family, fit, model, (train, valid), output = FAMILIES[name]()
    torch.manual_seed(0)
    result = fit(model, train, valid, config=CONFIG, progress=False)
    assert result.state["kind"] == family.kind and len(result.history) == 2
    rebuilt = family.from_state(result.state)
    assert not rebuilt.training
    with torch.no_grad():
        torch.manual_seed(1)
        want = output(model.eval())
        torch.manual_seed(1)
        assert torch.allclose(output(rebuilt), want)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_family_refuses_bad_data_and_foreign_checkpoints_alike(name):
    family, fit, model, (train, valid), _ = FAMILIES[name]()
    bad = list(train)
    bad[0] = bad[0].clone()
    bad[0][0, 0] = float("nan")
    with pytest.raises(UserError, match=r"train: .*NaN"):
        fit(model, tuple(bad), valid, config=CONFIG, progress=False)
    state = fit(model, train, valid, config=CONFIG, progress=False).state
    other = next(f for f in (convae_train.FAMILY, flow_train.FAMILY) if f.kind != family.kind)
    with pytest.raises(UserError, match=f"not a {other.kind} checkpoint"):
        other.from_state(state)
    edited = {**state, "best_state_dict": dict(list(state["best_state_dict"].items())[1:])}
    with pytest.raises(UserError, match="weights do not fit its config"):
        family.from_state(edited)
    if not family.extra:
        with pytest.raises(UserError, match="records no generator extra"):
            fit(model, train, valid, config=CONFIG, progress=False, extra={"target": "x"})
