"""The config side of each generator (its `Target`): the options it owns, its checks of a
pipeline config, and which option conditions it on the jets' kinematics.

A generator is one record of `pipelines.run.generators.Generator`; its ``target`` field is its
`Target` here, and `pipelines.run.generators.register` files both at once. The target lives in
this module, below `pipelines.run.config`, because `PipelineConfig` checks itself through it
while the generators' training and sampling (above the config) build on the config: the
config never imports the generators.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flows.setflow import SetFlowConfig
from jetflows.errors import UserError

if TYPE_CHECKING:
    from pipelines.run.config import PipelineConfig

#: below this many validation jets a calibration's W1 floor is noise
MIN_CALIBRATION_JETS = 100


def option(cfg: Any, key: str) -> Any:
    """The value of dotted config key ``key`` ("particle.kinematics") in ``cfg``."""
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


@dataclass(frozen=True)
class Target:
    """What a generator asks of a pipeline config.

    Arguments:
        name: the config's ``target`` (and the ``target`` its checkpoints record).
        kinematics: the boolean option that conditions it on each jet's (log pt, eta)
            (``jetflows sample --pt``); "": never conditioned.
        project: the boolean option that projects its jets onto the mass and sum pt_rel it
            sampled; "": it never projects.
        owns: options only this generator reads that add a stage when set (not empty): set
            with another target, the config is refused, naming this one.
        check: (config) -> None: what else it needs of a config (UserError).
    """

    name: str
    kinematics: str = ""
    project: str = ""
    owns: tuple[str, ...] = ()
    check: Callable[[PipelineConfig], None] = lambda cfg: None

    def conditioned(self, cfg: PipelineConfig) -> bool:
        """Whether ``cfg`` conditions this generator on the jets' kinematics."""
        return bool(self.kinematics) and bool(option(cfg, self.kinematics))

    def projected(self, cfg: PipelineConfig) -> bool:
        """Whether ``cfg`` projects this generator's jets."""
        return bool(self.project) and bool(option(cfg, self.project))


#: every generator's target by name; filled by `register` (the built-in ones below, then any
#: `pipelines.run.generators.register` adds)
TARGETS: dict[str, Target] = {}


def register(target: Target) -> Target:
    """File ``target`` under its name (a ValueError if another target has the name)."""
    if TARGETS.get(target.name, target) is not target:
        raise ValueError(f"a generator named {target.name!r} is registered already")
    TARGETS[target.name] = target
    return target


def target_of(cfg: PipelineConfig) -> Target:
    """The `Target` ``cfg.target`` names (UserError listing the known ones)."""
    if cfg.target not in TARGETS:
        raise UserError(f"unknown target {cfg.target!r}: use one of {tuple(TARGETS)}")
    return TARGETS[cfg.target]


def check(cfg: PipelineConfig) -> None:
    """Refuse options another generator owns, then run the config's own target's checks."""
    own = target_of(cfg)
    for other in TARGETS.values():
        for key in other.owns:
            if key not in own.owns and option(cfg, key):
                raise UserError(
                    f"{key} belongs to target {other.name}: target {own.name} has none "
                    f"(use target {other.name}, or {key}: [])"
                )
    own.check(cfg)


# ------------------------------------------------------------------------- built-in targets


def _check_latent(cfg: PipelineConfig) -> None:
    """The ConVAE reads the jets' P particles."""
    if cfg.convae.num_particles != cfg.data.num_particles:
        raise UserError(
            f"convae.num_particles ({cfg.convae.num_particles}) must equal "
            f"data.num_particles ({cfg.data.num_particles})"
        )


def check_guided(flow: SetFlowConfig, what: str) -> None:
    """Raise UserError (``what``, then the fix) if ``flow`` guides but the pipeline trains no
    guide for it."""
    if flow.guidance != 1.0 and not flow.guide_epochs:
        raise UserError(f"{what}: set set_flow.guide_epochs > 0 (the epochs the guide trains for)")


def _check_cloud(cfg: PipelineConfig) -> None:
    """A set has no leading slot; a guided flow needs its guide; calibration candidates and
    the student must fit the set flow."""
    if cfg.particle.centroid:
        raise UserError("particle.centroid must be false for target cloud (a set has no lead)")
    check_guided(cfg.set_flow, f"set_flow.guidance {cfg.set_flow.guidance} needs a guide")
    _check_calibration(cfg)
    _check_student(cfg)


def _check_calibration(cfg: PipelineConfig) -> None:
    """Calibrated options must each set a valid set flow config, on enough validation jets."""
    if not cfg.calibrate.settings:
        return
    valid = round(cfg.data.n_jets * cfg.data.split[1])
    if valid < MIN_CALIBRATION_JETS:
        raise UserError(
            f"calibrate.settings score the validation jets: data.n_jets x data.split[1] = "
            f"{valid}, needs >= {MIN_CALIBRATION_JETS} (or calibrate.settings: [])"
        )
    for setting in cfg.calibrate.settings:
        try:
            flow = dataclasses.replace(cfg.set_flow, **setting)  # its own checks
        except ValueError as err:
            raise UserError(f"calibrate.settings {setting}: {err}") from None
        check_guided(flow, f"calibrate.settings {setting} guides")


def _check_student(cfg: PipelineConfig) -> None:
    """A student's steps must divide every step count the teacher may be sampled with (the
    config's, and each calibration candidate's), unless it learns the teacher on a grid of
    its own; a student taught a guided path needs the guide."""
    if cfg.student.steps:
        check_guided(
            cfg.student.teacher(cfg.set_flow),
            f"student.teacher_guidance {cfg.student.teacher_guidance} needs a guide",
        )
    if not cfg.student.steps or cfg.student.teacher_steps:
        return
    cfg.student.check_teacher_steps(cfg.set_flow.steps, "set_flow.steps")
    for setting in cfg.calibrate.settings:
        if "steps" in setting:
            cfg.student.check_teacher_steps(setting["steps"], f"calibrate.settings {setting}")


LATENT = register(
    Target("latent", kinematics="latent.kinematics", project="latent.project", check=_check_latent)
)
PARTICLES = register(
    Target("particles", kinematics="particle.kinematics", project="particle.project")
)
CLOUD = register(
    Target(
        "cloud",
        kinematics="particle.kinematics",
        project="particle.project",
        owns=("calibrate.settings", "student.steps"),
        check=_check_cloud,
    )
)
