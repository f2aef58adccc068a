"""The few-step student: equivariant and blind to padding like its teacher, seeded, started
from the teacher's weights, and on the three-prong toy a 2-call student draws the guided
teacher's tau32 where its noise, or the teacher at one Euler step, do not."""

import dataclasses

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from flows.setflow import SetFlow, SetFlowConfig
from flows.setflow import student as student_lib
from flows.setflow.student import (
    Student,
    StudentConfig,
    jump_error,
    student_from_state,
    teacher_trajectories,
)
from jetflows.physics import nsubjettiness
from jetflows.training import TrainConfig
from tests.flows.test_setflow import TINY, _batch, _from_flow, guided_toy


def _teacher(network: str = "transformer", **options) -> SetFlow:
    torch.manual_seed(0)
    return SetFlow(SetFlowConfig(network=network, **{**TINY, **options}), context=2).eval()


@pytest.mark.parametrize("network", ["epic", "transformer"])
def test_the_student_is_equivariant_and_blind_to_padding(network):
    student = Student.from_teacher(_teacher(network), StudentConfig(steps=(1, 2)))
    for p in student.parameters():  # act on the step size too (zero at the teacher's start)
        torch.nn.init.normal_(p, std=0.3)
    x, mask, c = _batch()
    t, d = torch.rand(len(x)), torch.full((len(x),), 0.5)
    u = student.mean_velocity(x, t, d, mask, c)
    perm = torch.randperm(x.shape[1])
    assert torch.allclose(
        student.mean_velocity(x[:, perm], t, d, mask[:, perm], c), u[:, perm], atol=1e-5
    )
    padding = torch.where(mask[..., None], x, 100 * torch.randn_like(x))
    assert torch.allclose(student.mean_velocity(padding, t, d, mask, c)[mask], u[mask], atol=1e-5)
    assert (u[~mask] == 0).all()
    assert not torch.allclose(student.mean_velocity(x, t, d / 2, mask, c), u)  # told the jump
    # sampling: seeded, zero on padding, the same jets whatever the chunking
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    jets = student.sample(mask, c, generator=g(), steps=2)
    assert torch.equal(jets, student.sample(mask, c, generator=g(), steps=2))
    assert (jets[~mask] == 0).all() and not torch.equal(jets, student.sample(mask, c, steps=2))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("flows.setflow.sampling.SAMPLE_CHUNK", 2)
        assert torch.allclose(student.sample(mask, c, generator=g(), steps=2), jets, atol=1e-5)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_a_student_starts_as_its_teacher_sampled_by_euler_steps(steps):
    teacher = _teacher()
    student = Student.from_teacher(teacher, StudentConfig(steps=(steps,)))
    euler = SetFlow(dataclasses.replace(teacher.config, solver="euler", steps=steps), context=2)
    euler.load_state_dict(teacher.state_dict())
    x0, mask, c = _batch(seed=2)
    want = euler.eval()._integrate(x0, mask, c, None) * mask[..., None]
    assert torch.allclose(student.jumps(x0, mask, c, steps), want, atol=1e-5)
    scratch = Student.from_teacher(teacher, StudentConfig(steps=(steps,), init="scratch"))
    assert not torch.allclose(scratch.jumps(x0, mask, c, steps), want, atol=1e-3)


def test_a_path_resumed_midway_ends_where_the_whole_one_does():
    """`Student.jumps` from its state at t = first / steps, and the ODE from t = start
    (`sampling.integrate`), end at the jets of the whole path (student_jumps.py splices
    them)."""
    from flows.setflow import sampling

    teacher = _teacher()
    student = Student.from_teacher(teacher, StudentConfig(steps=(4,), init="scratch"))
    x0, mask, c = _batch(seed=3)
    with torch.no_grad():
        whole = student.jumps(x0, mask, c, 4)
        d = torch.tensor(0.25)
        x = x0
        for j in range(2):
            x = x + d * student.mean_velocity(x, torch.tensor(j / 4), d, mask, c)
        assert torch.allclose(student.jumps(x, mask, c, 4, first=2), whole, atol=1e-6)
        field = teacher._flat_velocity(x0.shape, mask, c)
        states = sampling.integrate(field, x0, teacher.config, path=True)  # 4 steps
        half = dataclasses.replace(teacher.config, steps=2)
        resumed = sampling.integrate(field, states[2], half, start=0.5)
    assert torch.allclose(resumed, states[-1], atol=1e-6)
    assert not torch.allclose(states[2], states[-1], atol=1e-3)


def test_trajectories_end_at_the_guided_teachers_jets():
    teacher = _teacher(guidance=2.0, guidance_from=0.25)
    torch.manual_seed(1)
    guide = SetFlow(dataclasses.replace(teacher.config, guidance=1.0), context=2).eval()
    _, mask, c = _batch(seed=4)
    traj = teacher_trajectories(
        teacher, mask, c, guide=guide, generator=torch.Generator().manual_seed(5)
    )
    assert traj.shape == (len(mask), 5, mask.shape[1], 3)
    jets = teacher.sample(mask, c, generator=torch.Generator().manual_seed(5), guide=guide)
    assert torch.allclose(traj[:, -1], jets, atol=1e-5)
    assert (traj.transpose(1, 2)[~mask] == 0).all()  # padding stays zero all the way
    with pytest.raises(ValueError, match="guide"):
        teacher_trajectories(teacher, mask, c)  # guidance 2 without its guide


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"method": "magic"}, "student.method"),
        ({"steps": (2, 2)}, "distinct"),
        ({"steps": (0,)}, "distinct"),
        ({"steps": (True,)}, "whole"),
        ({"draws": 0}, "draws"),
        ({"init": "random"}, "init"),
        ({"steps": (4,), "teacher_steps": 6}, "divide"),
        ({"teacher_solver": "heun"}, "teacher_solver"),
        ({"teacher_steps": -1}, "teacher_steps"),
        ({"balance": "even"}, "student.balance"),
        ({"teacher_guidance": 0.5}, "teacher_guidance"),
        ({"teacher_guidance": 11.0}, "teacher_guidance"),
    ],
)
def test_bad_student_configs_are_refused(values, match):
    with pytest.raises(ValueError, match=match):
        StudentConfig(**values)


def test_the_teacher_is_learnt_as_the_student_config_says():
    sampled = SetFlowConfig(**TINY, solver="midpoint", guidance=2.0, guidance_from=0.5)
    same = StudentConfig(steps=(2,)).teacher(sampled)
    assert (same.solver, same.steps, same.guidance, same.precision) == ("midpoint", 4, 2.0, "fp32")
    other = StudentConfig(steps=(2,), teacher_solver="rk4", teacher_steps=8, teacher_guidance=3.0)
    got = other.teacher(sampled)
    assert (got.solver, got.steps, got.guidance, got.guidance_from) == ("rk4", 8, 3.0, 0.5)


@pytest.mark.parametrize(
    ("balance", "want"), [("counts", [1 / 3, 1 / 3, 1 / 3]), ("jumps", [4 / 7, 2 / 7, 1 / 7])]
)
def test_the_step_counts_are_drawn_as_the_balance_says(balance, want):
    student = Student.from_teacher(_teacher(), StudentConfig(steps=(4, 2, 1), balance=balance))
    torch.manual_seed(0)
    k, u = student_lib._draws(student.train(), 20_000, torch.device("cpu"))
    got = [(k == s).float().mean().item() for s in (4, 2, 1)]
    assert got == pytest.approx(want, abs=0.015)
    assert 0 <= u.min() and u.max() < 1


def test_a_student_refuses_steps_it_was_not_trained_for_and_a_guide():
    student = Student.from_teacher(_teacher(), StudentConfig(steps=(2, 4)))
    _, mask, c = _batch()
    with pytest.raises(ValueError, match="samples in 2, 4 steps, not 3"):
        student.sample(mask, c, steps=3)
    with pytest.raises(ValueError, match="guide"):
        student.sample(mask, c, guide=_teacher())
    with pytest.raises(ValueError, match=r"student\.steps"):
        Student(_teacher().config, StudentConfig())
    with pytest.raises(ValueError, match="divide"):
        StudentConfig(steps=(3,)).check_teacher_steps(8)
    bad = torch.zeros(len(mask), 4, mask.shape[1], 3)  # a 3-step grid holds no 2-step jump
    with pytest.raises(ValueError, match="divide"):
        student_lib.check_data(student, (bad, mask, c), "train")


def _tau32(x: torch.Tensor, mask: torch.Tensor, stats) -> np.ndarray:
    tau = nsubjettiness(_from_flow(x, stats).double(), mask, n_max=3)
    return (tau[:, 2] / tau[:, 1]).numpy()


def test_a_two_call_student_draws_its_guided_teachers_three_prongs():
    """The guided toy teacher (tests/flows/test_setflow.py: tau32 median 0.15 against the toy's
    0.125) distilled into 2 calls (3 trajectories per jet, 20 epochs, ~25 s on one thread):
    its tau32 median within 60% of the teacher's (0.21 measured; reflow gives 0.29 and
    fails), its W1 to the teacher's tau32 under 0.35x what the teacher at one Euler step
    (0.69) or the student's own noise (0.64) are off by; and it follows its teacher's jets
    from the same noise more closely than it did at the start."""
    teacher, guide, mask, stats = guided_toy(steps=8)
    teacher.config = dataclasses.replace(teacher.config, guidance=1.2, guidance_from=0.3)
    g = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731
    many = mask.repeat(3, 1)
    traj = teacher_trajectories(teacher, many, None, guide=guide, generator=g(5))
    valid = teacher_trajectories(teacher, mask[:256], None, guide=guide, generator=g(6))
    student = Student.from_teacher(teacher, StudentConfig(method="trajectory", steps=(2,)))
    cfg = TrainConfig(epochs=20, batch_size=32, lr=2e-3, patience=0, schedule="cosine")
    result = student_lib.fit(
        student, (traj, many, None), (valid, mask[:256], None), config=cfg, progress=False
    )
    assert student_from_state(result.state).student == student.student

    m = mask[:1000]
    want = _tau32(teacher.sample(m, generator=g(1), guide=guide), m, stats)
    got = _tau32(student.sample(m, generator=g(1)), m, stats)
    euler = SetFlow(dataclasses.replace(teacher.config, solver="euler", steps=1))
    euler.load_state_dict(teacher.state_dict())
    broken = {
        "teacher at 1 Euler step": _tau32(
            euler.eval().sample(m, generator=g(1), guide=guide), m, stats
        ),
        "its noise": _tau32(torch.randn(*m.shape, 3, generator=g(1)), m, stats),
    }
    scale = min(wasserstein_distance(b, want) for b in broken.values())
    for name, tau in {"student": got, **broken}.items():
        close = abs(np.median(tau) / np.median(want) - 1) <= 0.6
        near = wasserstein_distance(tau, want) <= 0.35 * scale
        assert (close and near) == (name == "student"), (name, np.median(tau), np.median(want))
    assert jump_error(student, (valid, mask[:256], None), 2) < jump_error(
        Student.from_teacher(teacher, StudentConfig(steps=(2,))), (valid, mask[:256], None), 2
    )
