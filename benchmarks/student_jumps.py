"""Which of a few-step student's jumps loses the substructure: the student's jumps spliced
into its teacher's path, one at a time.

For the validation jets of a run's class (their masks and jet-level context), the teacher
draws its path as the student learnt it (its guided ODE, ``student.teacher_solver`` and
``teacher_steps``, recorded on its grid). For a k-call student and each jump j of it, the
jets are then made three ways from the same noise:

- ``only j``: the teacher's path to t = j / k, the student's jump j, then the teacher's ODE
  to t = 1 (what jump j alone costs, if the teacher could repair nothing after it);
- ``from j``: the teacher's path to t = j / k, then the student's jumps to the end;
- the student alone (``from 0``) and the teacher alone, for reference.

Each is scored by the W1 of its tau32, tau21 and log mass/pt: its first half of jets against
the second half of the teacher's own jets and of the real jets, as ratios to the W1 between
the two halves of the real jets (one draw: a diagnostic, not a stable ratio); and by the RMS
of its particles against the teacher's from the same noise.

    python benchmarks/student_jumps.py --run runs/fast_t --class t --steps 4 [--n 2000]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch
from common import machine_line

from flows.particle import ParticleTarget, decode
from flows.setflow import set_flow_from_state
from flows.setflow import student as student_lib
from flows.setflow.sampling import integrate
from jetflows.physics import jet_quantities
from pipelines.evaluation.metrics import wasserstein_1d
from pipelines.run import stages
from pipelines.run.checkpoints import load_checkpoint
from pipelines.run.config import load_config
from pipelines.run.generators import STUDENT

NAMES = ("mass", "tau21", "tau32")


def observables(
    x: torch.Tensor, mask: torch.Tensor, target: ParticleTarget
) -> dict[str, np.ndarray]:
    """Per jet: log mass/pt, tau21, tau32 of the set flow's particles x (B, P, 3), decoded
    as the run decodes them (the mask's jets fill their first slots)."""
    particles, real = decode(x.flatten(1), mask.sum(1), target)
    q = jet_quantities(particles.double(), real, NAMES).numpy()
    return {name: q[:, i] for i, name in enumerate(NAMES)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/fast_t")
    parser.add_argument("--class", dest="jet_class", default="t")
    parser.add_argument("--steps", type=int, default=4, help="the student's step count")
    parser.add_argument("--n", type=int, default=2000, help="validation jets")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(), flush=True)
    run, c = Path(args.run), args.jet_class
    cfg = load_config(run / "config.yaml").for_class(c)
    train, valid, _ = stages.split_jets(stages.class_jets(cfg, c, run / c, False), cfg)
    record, _, (_, (real_x, mask, context)) = stages.set_flow_data(cfg, c, (train, valid))
    rows = slice(0, args.n)
    real_x, mask, context = real_x[rows], mask[rows], context[rows]
    target = ParticleTarget.from_dict(record.particle_target)

    state = torch.load(run / c / STUDENT, weights_only=False)
    student = student_lib.student_from_state(state)
    flow = load_checkpoint(run / c / "flow.pt", "jetflows.setflow")
    # the teacher as it sampled for its student (the run's chosen guidance), as learnt
    sampled = set_flow_from_state({**flow, "set_flow_config": state["set_flow_config"]})
    teacher = student_lib.learnt_teacher(sampled, student.student)
    exact_cfg = teacher.config
    guide = None
    if exact_cfg.guidance != 1.0:
        guide = set_flow_from_state(load_checkpoint(run / c / "guide.pt", "jetflows.setflow"))
    print(
        f"{c}: {args.n} validation jets; teacher {exact_cfg.solver} x {exact_cfg.steps}, "
        f"guidance {exact_cfg.guidance:g} from t = {exact_cfg.guidance_from:g}; "
        f"student {args.steps} calls ({student.student.balance} balance)",
        flush=True,
    )
    traj = student_lib.teacher_trajectories(
        teacher, mask, context, guide=guide, generator=torch.Generator().manual_seed(5)
    )
    field = teacher._flat_velocity(traj[:, 0].shape, mask, context, guide, False)
    k, grid = args.steps, exact_cfg.steps
    stride, d = grid // k, torch.tensor(1.0 / k)

    with torch.no_grad():
        made = {"teacher": traj[:, -1], "student": student.jumps(traj[:, 0], mask, context, k)}
        for j in range(k):
            start = traj[:, j * stride]
            x = start + d * student.mean_velocity(start, torch.tensor(j / k), d, mask, context)
            left = grid - (j + 1) * stride  # the teacher's steps after jump j
            if left:
                rest = dataclasses.replace(exact_cfg, steps=left)
                x = integrate(field, x, rest, start=(j + 1) / k)
            made[f"only {j}"] = x
            made[f"from {j}"] = student.jumps(start, mask, context, k, first=j)
    real = observables(real_x, mask, target)
    half = args.n // 2
    floor = {n: wasserstein_1d(real[n][:half], real[n][half:]) for n in NAMES}
    ref = observables(made["teacher"], mask, target)
    print("| jets | rms vs teacher | " + " | ".join(f"{n}: vs teacher, vs real" for n in NAMES))
    print("|---" * (len(NAMES) + 2) + "|")
    for name, x in made.items():
        obs = observables(x, mask, target)
        rms = float(student_lib._masked_mse(x, made["teacher"], mask).sqrt())
        cells = [
            f"{wasserstein_1d(obs[n][:half], ref[n][half:]) / floor[n]:.2f}, "
            f"{wasserstein_1d(obs[n][:half], real[n][half:]) / floor[n]:.2f}"
            for n in NAMES
        ]
        print(f"| {name} | {rms:.3f} | " + " | ".join(cells) + " |", flush=True)
    print(
        f"W1 of the first {half} jets against the second {half} real (or teacher's) jets, as "
        "ratios to the real halves' W1; the same noise for every row"
    )


if __name__ == "__main__":
    main()
