"""A few-step student of a (guided) set flow: the teacher's jets in 1, 2 or 4 network calls.

The teacher integrates its ODE in many calls (8 midpoint steps: 16 calls, plus 8 of its guide).
The student learns the teacher's own map from noise to jet, guidance folded in, so that it
needs no guide and no ODE solver: from the same noise x0 it jumps along the teacher's path in
k steps of size d = 1 / k,

    x_{t + d} = x_t + d u(x_t, t, d),

u being the average velocity over the jump (the "mean flow" of Geng et al. arXiv:2505.13447
and the shortcut of Frans et al. arXiv:2410.12557; here regressed directly on the teacher's
recorded trajectory rather than on a self-consistency target). Two ways to train it
(`METHODS`), both on trajectories the teacher draws once (`teacher_trajectories`):

- ``trajectory``: direct trajectory distillation. u(x_t, t, d) regresses (x_{t+d} - x_t) / d
  with t on the student's grid and both ends taken from the teacher's trajectory, for every
  step count the student is trained for. One network serves 1, 2 and 4 steps; at d = 1 it is
  the one-shot map noise -> teacher jet of knowledge distillation (Luhman & Luhman
  arXiv:2101.02388).
- ``reflow``: rectified flow (Liu et al. arXiv:2209.03003): the pairs (x0, teacher jet) are
  joined by straight lines and u regresses their constant velocity at uniform t, so the new
  flow's paths are nearly straight and a few Euler steps follow them.

The student is the teacher's network (same equivariant blocks, same masking), told the step
size besides t, and starts from the teacher's weights (the step size's inputs at zero: the
first student is the teacher sampled by Euler steps), which is why a few epochs suffice.
Exact likelihoods stay with the teacher (`flows.setflow.SetFlow.log_prob`): the student's map
has no tractable Jacobian at one step.

Example:
    >>> import torch
    >>> from flows.setflow import SetFlow, SetFlowConfig
    >>> teacher = SetFlow(SetFlowConfig(network="transformer", width=16, layers=1, heads=2,
    ...                                 steps=4), context=2).eval()
    >>> mask = torch.ones(6, 5, dtype=torch.bool)
    >>> student = Student.from_teacher(teacher, StudentConfig(steps=(1, 2)))
    >>> student.sample(mask, torch.randn(6, 2), steps=2).shape
    torch.Size([6, 5, 3])
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from flows.setflow import sampling
from flows.setflow.config import SOLVERS, TIME_FEATURES, SetFlowConfig
from flows.setflow.flow import SetFlow, jet_context
from flows.setflow.networks import NETWORKS, TIME_EMBEDDINGS
from jetflows.errors import UserError
from jetflows.family import FitOptions, ModelFamily, check_context, widths
from jetflows.training import FitResult

if TYPE_CHECKING:
    from typing_extensions import Unpack

CHECKPOINT_KIND = "jetflows.setflow.student"
STEP_FEATURES = 2  # log2(1/d) / 4 and d: which jump the network is asked for
#: the most steps a student may be trained for (its teacher's grid must hold each jump)
MAX_STEPS = 64
MAX_TEACHER_STEPS = 256
#: the (standardized) angular distance over which `structure_error` weighs particle pairs
STRUCTURE_SCALE = 0.3


def _by_count(steps: torch.Tensor, n: int, g: torch.Generator | None) -> torch.Tensor:
    """n indices into ``steps`` (the trained step counts), each count equally likely."""
    return torch.randint(len(steps), (n,), generator=g, device=steps.device)


def _by_jump(steps: torch.Tensor, n: int, g: torch.Generator | None) -> torch.Tensor:
    """n indices into ``steps``, a count k drawn with probability proportional to k: every
    jump of every count equally likely."""
    return torch.multinomial(steps.float(), n, replacement=True, generator=g)


#: student.balance -> (trained step counts (S,), n, generator) -> n indices into them
BALANCES: dict[str, Callable[[torch.Tensor, int, torch.Generator | None], torch.Tensor]] = {
    "counts": _by_count,
    "jumps": _by_jump,
}


@dataclass(frozen=True)
class StudentConfig:
    """How a few-step student is distilled from its teacher.

    Arguments:
        method: a key of `METHODS`: "trajectory" (regress the teacher's jumps) or "reflow"
            (straighten the teacher's noise-to-jet pairs, sample by Euler steps).
        steps: the step counts it samples with (network calls per jet), the first its
            default; each must divide the teacher's own step count (its trajectory's grid
            holds every jump). Empty: no student (what a pipeline config says to train none).
        draws: noise draws per training jet, each a teacher trajectory to learn from.
        init: "teacher" (start from the teacher's weights) or "scratch".
        teacher_solver, teacher_steps: the teacher's ODE as the student learns it (""/0: as
            the teacher samples). The student pays nothing at sampling time for a finer
            teacher: top jets' generated mass was 2.4x the floor at the teacher's 8 midpoint
            steps, 1.6x at 8 RK4 steps (docs/benchmarks.md); ``steps`` must divide
            ``teacher_steps``.
        structure_weight: the weight of `structure_error` (the relative angles of nearby
            particles where each jump lands) beside the jumps' own error (0: none).
        balance: how often each jump is trained (a key of `BALANCES`): "counts", every step
            count equally often (a 1-step student's one jump as often as all four of the
            4-step grid together); "jumps", every jump of every step count equally often
            (a step count k drawn with probability proportional to k).
        teacher_guidance: the guidance weight w of the teacher's path as the student learns
            it (0: the teacher's as it samples; its ``guidance_from`` and ``until`` kept). A
            few-step student keeps only part of its teacher's sharpening (top: tau32 4.9x the
            floor at 4 calls from a teacher at 1.8x guided, 6.3x unguided), so a student may
            learn from a more strongly guided path than its teacher samples.
    """

    method: str = "trajectory"
    steps: tuple[int, ...] = ()
    draws: int = 1
    init: str = "teacher"
    teacher_solver: str = ""
    teacher_steps: int = 0
    structure_weight: float = 0.0
    balance: str = "counts"
    teacher_guidance: float = 0.0

    def __post_init__(self) -> None:
        if not (self.teacher_guidance == 0.0 or 1.0 <= self.teacher_guidance <= 10.0):
            raise UserError(
                "student.teacher_guidance must be 0 (the teacher's) or lie in [1, 10], "
                f"got {self.teacher_guidance}"
            )
        if self.balance not in BALANCES:
            raise UserError(f"unknown student.balance {self.balance!r}: use {sorted(BALANCES)}")
        if self.method not in METHODS:
            raise UserError(f"unknown student.method {self.method!r}: use {sorted(METHODS)}")
        if self.init not in ("teacher", "scratch"):
            raise UserError(f"student.init must be teacher or scratch, got {self.init!r}")
        steps = self.steps
        if any(not isinstance(s, int) or isinstance(s, bool) for s in steps):
            raise UserError(f"student.steps must be whole step counts, got {steps}")
        if len(set(steps)) != len(steps) or not all(1 <= s <= MAX_STEPS for s in steps):
            raise UserError(f"student.steps must be distinct, in [1, {MAX_STEPS}]: {steps}")
        if not 0.0 <= self.structure_weight <= 1000.0:
            raise UserError(
                f"student.structure_weight must lie in [0, 1000], got {self.structure_weight}"
            )
        if not 1 <= self.draws <= 100:
            raise UserError(f"student.draws must lie in [1, 100], got {self.draws}")
        if self.teacher_solver not in ("", *SOLVERS):
            raise UserError(
                f"student.teacher_solver must be one of {SOLVERS} (or empty: the teacher's), "
                f"got {self.teacher_solver!r}"
            )
        if not 0 <= self.teacher_steps <= MAX_TEACHER_STEPS:
            raise UserError(
                f"student.teacher_steps must lie in [0, {MAX_TEACHER_STEPS}] (0: the "
                f"teacher's), got {self.teacher_steps}"
            )
        if self.teacher_steps:
            self.check_teacher_steps(self.teacher_steps, "student.teacher_steps")

    def teacher(self, config: SetFlowConfig) -> SetFlowConfig:
        """The teacher's config as the student learns it: its solver, steps and guidance
        weight replaced where these say, in fp32 (its exact map, whatever precision it
        samples with)."""
        return replace(
            config,
            solver=self.teacher_solver or config.solver,
            steps=self.teacher_steps or config.steps,
            guidance=self.teacher_guidance or config.guidance,
            precision="fp32",
        )

    def check_steps(self, steps: int | None) -> int:
        """``steps`` if the student is trained for it (None: its default, the first), else
        ValueError."""
        if steps is None:
            return self.steps[0]
        if steps not in self.steps:
            raise UserError(
                f"this student samples in {', '.join(map(str, self.steps))} steps, "
                f"not {steps}: choose one of those, or the teacher (--teacher)"
            )
        return steps

    def check_teacher_steps(self, teacher_steps: int, what: str = "the teacher's steps") -> None:
        """Raise ValueError unless every step count divides ``teacher_steps``."""
        bad = [s for s in self.steps if teacher_steps % s]
        if bad:
            raise UserError(
                f"student.steps {bad} do not divide {what} ({teacher_steps}): the student "
                "learns jumps between the points of the teacher's grid"
            )


def step_features(d: torch.Tensor) -> torch.Tensor:
    """Jump sizes d (B,) in (0, 1] -> (B, STEP_FEATURES): -log2(d) / 4 and d."""
    return torch.stack([-torch.log2(d) / 4, d], -1)


class Student(nn.Module):
    """A few-step sampler of a set flow's jets: x_{t+d} = x_t + d u(x_t, t, d).

    Arguments:
        config: the teacher's `SetFlowConfig` (its network; sampling fields unused).
        student: `StudentConfig`.
        features, context: as the teacher's (F per particle, C of the jet-level condition).

    ``sample(mask (B, P), context (B, C), steps=k)`` -> particles (B, P, F), zero on padding;
    the same call signature as `SetFlow.sample`, so it drops into `flows.setflow.generate`.
    """

    def __init__(
        self,
        config: SetFlowConfig,
        student: StudentConfig,
        *,
        features: int = 3,
        context: int = 0,
    ) -> None:
        super().__init__()
        if not student.steps:
            raise UserError("a student needs the step counts it samples with (student.steps)")
        self.config, self.student = config, student
        self.features, self.context = features, context
        width = context + TIME_FEATURES + STEP_FEATURES
        self.net = NETWORKS[config.network](features=features, context=width, config=config)

    @classmethod
    def from_teacher(cls, teacher: SetFlow, student: StudentConfig) -> Student:
        """A student of ``teacher``'s shape; with ``init`` "teacher", its weights: the input
        columns of the step size start at zero, so it starts as the teacher's velocity."""
        made = cls(teacher.config, student, features=teacher.features, context=teacher.context)
        if student.init == "teacher":
            made.load_teacher(teacher)
        return made

    def load_teacher(self, teacher: SetFlow) -> None:
        """Copy ``teacher.net``'s weights; a weight the step size widened (the first layer
        reading the context) keeps the teacher's columns and zeros for the new ones."""
        own = self.net.state_dict()
        for name, value in teacher.net.state_dict().items():
            mine = own[name]
            if mine.shape == value.shape:
                own[name] = value.clone()
            else:  # (out, in + STEP_FEATURES): the step size's columns come last
                assert mine.shape[:-1] == value.shape[:-1], name
                own[name] = torch.cat(
                    [value, value.new_zeros(*value.shape[:-1], STEP_FEATURES)], -1
                )
        self.net.load_state_dict(own)

    @property
    def cuts_padding(self) -> bool:
        return bool(getattr(self.net, "cuts_padding", False))

    def mean_velocity(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        d: torch.Tensor,
        mask: torch.Tensor,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """u(x_t, t, d): x (B, P, F), t and d scalars or (B,), mask (B, P) -> (B, P, F), 0 on
        padding."""
        t = t.to(x.dtype).reshape(-1).expand(len(x))
        d = d.to(x.dtype).reshape(-1).expand(len(x))
        times = TIME_EMBEDDINGS[self.config.time_embedding](t)
        extra = jet_context(context, len(x), self.context, x, "the student")
        c = torch.cat([times, extra, step_features(d)], -1)
        return self.net(x, mask, c)

    def check_steps(self, steps: int | None) -> int:
        """``steps`` if the student was trained for it (None: its default), else ValueError."""
        return self.student.check_steps(steps)

    def jumps(
        self,
        x0: torch.Tensor,
        mask: torch.Tensor,
        context: torch.Tensor | None,
        steps: int,
        *,
        first: int = 0,
    ) -> torch.Tensor:
        """x(1) (B, P, F) from x0 (B, P, F) in ``steps`` jumps of size 1 / steps; ``first``:
        x0 is the state at t = first / steps, and the jumps from there are made."""
        x, d = x0, torch.tensor(1.0 / steps, device=x0.device)
        for k in range(first, steps):
            t = torch.tensor(k / steps, device=x0.device)
            x = x + d * self.mean_velocity(x, t, d, mask, context).to(x.dtype)
        return x * mask[..., None].to(x.dtype)

    @torch.no_grad()
    def sample(
        self,
        mask: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        guide: Any = None,
        steps: int | None = None,
    ) -> torch.Tensor:
        """Particles (B, P, F) for a mask (B, P) in ``steps`` network calls (None: the
        default, the first of ``student.steps``), chunked as `SetFlow.sample` (the same jets
        whatever the chunking). ``guide`` must be None: the guidance is folded in.

        Raises:
            ValueError: a step count it was not trained for, or a guide.
        """
        if guide is not None:
            raise UserError("a student has its teacher's guidance folded in: it takes no guide")
        steps = self.check_steps(steps)
        x0 = torch.randn((*mask.shape, self.features), generator=generator, device=mask.device)
        width = self.context + TIME_FEATURES + STEP_FEATURES
        timed = functools.partial(
            sampling.bf16_faster,
            self.net,
            slots=mask.shape[1],
            features=self.features,
            context=width,
        )
        bf16 = sampling.uses_bf16(self.config.precision, mask.device, timed=timed)

        def solve(x0: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            c = None if context is None else context[rows]
            return self.jumps(x0, mask, c, steps)

        with torch.autocast(mask.device.type, dtype=torch.bfloat16, enabled=bf16):
            return sampling.chunked(solve, x0, mask, cut=self.cuts_padding)


# ------------------------------------------------------------------------------ the teacher


def learnt_teacher(teacher: SetFlow, student: StudentConfig) -> SetFlow:
    """``teacher``'s weights with the ODE, guidance and arithmetic a student of ``student``
    learns it with (`StudentConfig.teacher`), in eval mode."""
    config = student.teacher(teacher.config)
    exact = SetFlow(config, features=teacher.features, context=teacher.context)
    exact.load_state_dict(teacher.state_dict())
    return exact.eval()


@torch.no_grad()
def teacher_trajectories(
    teacher: SetFlow,
    mask: torch.Tensor,
    context: torch.Tensor | None,
    *,
    guide: SetFlow | None = None,
    generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """The teacher's (guided) ODE from fresh noise, recorded on its grid (its
    ``config.steps``): (B, steps + 1, P, F), [:, 0] the noise and [:, -1] the jets, zero on
    padding; mask (B, P), context (B, C).

    The teacher samples as configured (solver, steps, guidance, precision); the states are
    those of its whole-path integration, so the last is `SetFlow.sample`'s jet for the same
    noise. ``progress(jets)`` is called after every chunk.
    """
    teacher._check_guide(guide)
    x0 = torch.randn((*mask.shape, teacher.features), generator=generator, device=mask.device)
    bf16, guide_bf16 = teacher.precisions(mask, guide)
    out = x0.new_zeros(len(x0), teacher.config.steps + 1, *x0.shape[1:])
    with torch.autocast(mask.device.type, dtype=torch.bfloat16, enabled=bf16):
        for rows in torch.arange(len(x0)).split(sampling.SAMPLE_CHUNK):
            c = None if context is None else context[rows]
            field = teacher._flat_velocity(x0[rows].shape, mask[rows], c, guide, guide_bf16)
            states = sampling.integrate(field, x0[rows], teacher.config, path=True)
            out[rows] = states.transpose(0, 1).to(out.dtype)  # (b, steps + 1, P, F)
            if progress is not None:
                progress(len(rows))
    return out * mask[:, None, :, None]


# ------------------------------------------------------------------------------ the losses


def _masked_mse(got: torch.Tensor, want: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real particles' coordinates: (B, P, F) x2, mask (B, P)."""
    real = mask.to(got.dtype)
    return (((got - want) ** 2).sum(-1) * real).sum() / (real.sum() * got.shape[-1])


def _draws(student: Student, n: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Per jet: a trained step count k (B,), drawn as ``student.balance`` weighs them, and a
    uniform u (B,), from torch's global stream while training, a fixed seed in eval mode (a
    steady validation loss)."""
    g = None if student.training else torch.Generator(device=device).manual_seed(0)
    steps = torch.tensor(student.student.steps, device=device)
    pick = BALANCES[student.student.balance](steps, n, g)
    u = torch.rand(n, generator=g, device=device)
    return steps[pick], u


def trajectory_loss(
    student: Student, traj: torch.Tensor, mask: torch.Tensor, context: torch.Tensor | None
) -> torch.Tensor:
    """Direct trajectory distillation: per jet a trained step count k and a step j < k of it;
    u(x_{j/k}, j/k, 1/k) regresses the teacher's (x_{(j+1)/k} - x_{j/k}) k. traj (B, K+1, P, F)
    on the teacher's K-step grid, mask (B, P), context (B, C) or None."""
    k, u = _draws(student, len(traj), traj.device)
    grid = traj.shape[1] - 1
    j = (u * k).long().clamp_max(k - 1)  # the jump j of k
    stride = grid // k
    rows = torch.arange(len(traj), device=traj.device)
    start, end = traj[rows, j * stride], traj[rows, (j + 1) * stride]
    d = 1.0 / k.to(traj.dtype)
    got = student.mean_velocity(start, j.to(traj.dtype) * d, d, mask, context)
    loss = _masked_mse(got, (end - start) / d[:, None, None], mask)
    weight = student.student.structure_weight
    if weight:
        # the jumps' landing points: their relative angles, where a prong's width is set
        landed = start + d[:, None, None] * got
        loss = loss + weight * structure_error(landed, end, mask)
    return loss


def structure_error(got: torch.Tensor, want: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the (eta, phi) differences between particle pairs, weighted by
    how close the pair sits in ``want`` (exp(-d^2 / 2 `STRUCTURE_SCALE`^2)): a prong blurred
    by errors of its particles' own counts here, a prong moved as a whole does not.
    got, want (B, P, F), mask (B, P)."""
    rel_got = got[:, :, None, :2] - got[:, None, :, :2]  # (B, P, P, 2)
    rel_want = want[:, :, None, :2] - want[:, None, :, :2]
    near = (-(rel_want**2).sum(-1) / (2 * STRUCTURE_SCALE**2)).exp()  # (B, P, P)
    pairs = (mask[:, :, None] & mask[:, None, :]).to(got.dtype) * near
    error = ((rel_got - rel_want) ** 2).sum(-1)
    return (error * pairs).sum() / pairs.sum().clamp_min(1e-12) / 2


def reflow_loss(
    student: Student, traj: torch.Tensor, mask: torch.Tensor, context: torch.Tensor | None
) -> torch.Tensor:
    """Rectified flow on the teacher's pairs: x_t = (1 - t) x0 + t x1 at uniform t, u
    regresses x1 - x0 (whatever the jump asked: the straightened field is the same)."""
    k, t = _draws(student, len(traj), traj.device)
    x0, x1 = traj[:, 0], traj[:, -1]
    x_t = x0 + t[:, None, None] * (x1 - x0)
    d = 1.0 / k.to(traj.dtype)
    return _masked_mse(student.mean_velocity(x_t, t, d, mask, context), x1 - x0, mask)


#: name -> (student, trajectories (B, K+1, P, F), mask, context) -> loss
METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "trajectory": trajectory_loss,
    "reflow": reflow_loss,
}


def _objective(
    student: Student, traj: torch.Tensor, mask: torch.Tensor, context: torch.Tensor | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return METHODS[student.student.method](student, traj, mask, context), {}


#: (trajectories (N, K+1, P, F), mask (N, P), context (N, C) or None)
StudentData = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


def check_data(student: Student, data: StudentData, name: str) -> None:
    """Raise ValueError for trajectories the student cannot learn from: shapes, grid, NaN."""
    traj, mask, context = data
    if traj.dim() != 4 or traj.shape[1] < 2 or traj.shape[3] != student.features:
        raise UserError(
            f"{name}: trajectories must be (N, K + 1, P, {student.features}) on the teacher's "
            f"K-step grid, got {tuple(traj.shape)}"
        )
    student.student.check_teacher_steps(traj.shape[1] - 1, f"{name}'s grid")
    if mask.shape != (traj.shape[0], traj.shape[2]) or len(traj) == 0:
        raise UserError(f"{name}: a mask (N, P) per trajectory is needed, got {tuple(mask.shape)}")
    if not torch.isfinite(traj).all():
        raise UserError(f"{name}: trajectories contain NaN or inf")
    check_context(student.context, context, len(traj), name, "the student")


#: the few-step students as `jetflows.family` trains and rebuilds them
FAMILY = ModelFamily(
    kind=CHECKPOINT_KIND,
    what="student",
    check_data=check_data,
    describe=lambda student: {
        "set_flow_config": student.config,
        "student_config": student.student,
        **widths(student),
    },
    build=lambda state: Student(
        SetFlowConfig(**state["set_flow_config"]), student_config(state), **widths(state)
    ),
    objective=_objective,
    desc=lambda student: f"student ({student.student.method})",
)


def fit(
    student: Student, train: StudentData, valid: StudentData, **options: Unpack[FitOptions]
) -> FitResult:
    """Distil: train ``student`` on the teacher's trajectories (`teacher_trajectories`) with
    its ``student.method``; early stopping on the validation trajectories' loss.

    Arguments:
        student: a `Student` (updated in place; ends with its best weights).
        train, valid: (trajectories (N, K+1, P, F), mask (N, P), context (N, C) or None).
        options: `jetflows.family.FitOptions` (config, extra, resume, on_epoch, progress).

    Raises:
        ValueError: bad data, or a resume state of another student.
    """
    return FAMILY.fit(student, train, valid, **options)


def student_from_state(state: dict[str, Any], *, best: bool = True) -> Student:
    """Rebuild a `Student` from its checkpoint state alone, in eval mode.

    Raises:
        ValueError: not a student checkpoint, or one whose weights do not fit its config.
    """
    return FAMILY.from_state(state, best=best)


def student_config(state: dict[str, Any]) -> StudentConfig:
    """The `StudentConfig` a student checkpoint state records (its steps stored as a list)."""
    return StudentConfig(
        **{**state["student_config"], "steps": tuple(state["student_config"]["steps"])}
    )


def jump_error(student: Student, data: StudentData, steps: int) -> float:
    """RMS per coordinate of the student's ``steps``-step jets against the teacher's jets
    from the same noise (data as `fit` takes it): how closely it follows its teacher."""
    traj, mask, context = data
    with torch.no_grad():
        got = student.jumps(traj[:, 0], mask, context, steps)
    return math.sqrt(float(_masked_mse(got, traj[:, -1], mask)))
