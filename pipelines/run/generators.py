"""The generators a run can train, registered once: what each trains, what its checkpoints
are, how its sampler is built from them, and what tuning searches.

A `Generator` record is all the pipeline, ``jetflows sample``, ``jetflows tune``, the study and
``benchmarks/quality.py`` know of a target: they look it up in `GENERATORS` by the config's
``target`` (or the ``target`` recorded in a checkpoint) and call its ``train`` and ``sampler``.
Adding a generator means writing those two functions, its config side (a
`pipelines.run.targets.Target`: its checks and options) and one `register` call, in a module of
its own if it likes (the tests register a toy generator that way).

- ``latent``: the ConVAE (convae.pt), then a flow on its latent space (flow.pt); sampling
  decodes the flow's samples (two-stage, the paper's model).
- ``particles``: a jet-level flow of (mass, n, ...) (jet_flow.pt), then a flow on the 30 x 3
  particle features (flow.pt), conditioned on the jet-level rows.
- ``cloud``: the same jet-level flow, then a continuous normalizing flow on the particle set
  (`flows.setflow`, flow.pt), conditioned on the jet-level rows.

Training goes through a `Trainer`: the pipeline's checkpoints and resumes each stage
(`pipelines.run.pipeline.ClassRun.trained`), a tuning trial reports and prunes
(`pipelines.experiments.tune`).
This module stays light (no metrics, no Optuna, no stages until a model is trained), so that
``jetflows sample`` starts fast.
"""

from __future__ import annotations

import functools
import logging
import numbers
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from convae.train import CHECKPOINT_KIND as CONVAE_KIND
from convae.train import model_from_state
from flows import latent, particle, setflow
from flows.setflow import student as student_lib
from flows.train import CHECKPOINT_KIND as FLOW_KIND
from flows.train import flow_from_state
from jetflows.classes import canonical_class
from jetflows.distributed import resolve_device
from jetflows.errors import MissingFileError, UserError
from jetflows.normalize import Normalization
from pipelines.run.checkpoints import check_provenance, fingerprint, load_checkpoint
from pipelines.run.records import (
    Sampler,
    SamplerRecord,
    TrainedSampler,
    kinematics_context,
)
from pipelines.run.targets import CLOUD, LATENT, PARTICLES, TARGETS, Target
from pipelines.run.targets import register as register_target

if TYPE_CHECKING:
    from pipelines.data.jetnet import Jets
    from pipelines.run.config import PipelineConfig, TwoStageConfig

LOG = logging.getLogger("jetflows.pipeline")


def _kinematics(record: SamplerRecord, kin: torch.Tensor | None) -> torch.Tensor | None:
    """The flows' context for requested (pt, eta), if the generator is conditioned on them."""
    scale = record.kinematics_norm
    return kinematics_context(kin, scale) if scale and kin is not None else None


# ----------------------------------------------------------------------------------- samplers


def _latent_sampler(
    record: SamplerRecord, states: Mapping[str, dict[str, Any]], device: torch.device
) -> Sampler:
    flow = flow_from_state(states["flow.pt"]).to(device)
    vae_state = states["convae.pt"]
    vae = model_from_state(vae_state).to(device).eval()
    norm = Normalization.from_dict(vae_state["normalization"])
    options = record.latent or {}
    probs = torch.tensor(record.multiplicity_probs, device=device)
    masking = latent.Masking(options["masking"], options["pt_threshold"], probs)
    project = bool(options["project"])

    def sample(n: int, g: torch.Generator, kin: torch.Tensor | None) -> Any:
        return latent.generate(
            flow,
            vae,
            n,
            masking=masking,
            normalization=norm,
            generator=g,
            project=project,
            context=_kinematics(record, kin),
        )

    return sample


def jet_level_sampler(
    generate: Callable[..., Any],
    build: Callable[[dict[str, Any]], torch.nn.Module],
    record: SamplerRecord,
    states: Mapping[str, dict[str, Any]],
    device: torch.device,
    model_file: str = "flow.pt",
) -> Sampler:
    """A jet flow (jet_flow.pt) feeding a particle-level model (``model_file``, rebuilt by
    ``build``) through ``generate`` (`flows.particle.generate` or `flows.setflow.generate`)."""
    model = build(states[model_file]).to(device)
    jet_flow = flow_from_state(states["jet_flow.pt"]).to(device)
    target = particle.ParticleTarget.from_dict(record.particle_target)

    def sample(n: int, g: torch.Generator, kin: torch.Tensor | None) -> Any:
        return generate(
            model, jet_flow, n, target, generator=g, kinematics=_kinematics(record, kin)
        )

    return sample


#: where a set flow's few-step student (`flows.setflow.student`) is kept, beside its teacher
STUDENT = "student.pt"
#: the sampling option that asks a run with a student for its teacher instead
TEACHER = "teacher"


class OptionError(UserError):
    """A sampling option a user asked for is wrong: said as the option (`jetflows sample`'s
    flag), not as the checkpoint it would be applied to."""


#: sampling option -> (the types it takes, in words); bool is an int to Python: refused apart
OPTION_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "steps": ((numbers.Integral,), "an integer"),
    "solver": ((str,), "a string"),
    "precision": ((str,), "a string"),
    "guidance": ((numbers.Real,), "a number"),
    "guidance_from": ((numbers.Real,), "a number"),
    "guidance_until": ((numbers.Real,), "a number"),
    TEACHER: ((bool,), "true or false"),
}


def check_option_types(options: Mapping[str, Any]) -> None:
    """TypeError naming the option whose value is of the wrong type (a steps of 2.5 failed 12
    frames deep at sampling time, a guidance of "2" as a comparison naming nothing)."""
    for key, value in options.items():
        if key not in OPTION_TYPES:
            continue  # an unknown option: the generator's own check names it
        types, words = OPTION_TYPES[key]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise TypeError(f"sampling option {key} must be {words}, got {value!r}")


def _student(state: dict[str, Any]) -> torch.nn.Module:
    """The student of a student.pt state, sampling by default with the steps its
    ``sampling_steps`` names (set by `_cloud_options`), else its first."""
    model = student_lib.student_from_state(state)
    steps = model.check_steps(state.get("sampling_steps"))
    rest = tuple(s for s in model.student.steps if s != steps)
    model.student = replace(model.student, steps=(steps, *rest))
    return model


def _cloud_sampler(
    record: SamplerRecord, states: Mapping[str, dict[str, Any]], device: torch.device
) -> Sampler:
    """The jet flow feeding the few-step student when there is one (student.pt), else the set
    flow, which guide.pt guides when its config's ``guidance`` asks for it
    (`flows.setflow.SetFlow.guided_velocity`)."""
    if STUDENT in states:
        return jet_level_sampler(setflow.generate, _student, record, states, device, STUDENT)
    guidance = setflow.SetFlowConfig(**states["flow.pt"]["set_flow_config"]).guidance
    guide = None
    if guidance != 1.0:
        if "guide.pt" not in states:
            raise MissingFileError(
                f"set_flow.guidance {guidance} needs the run's guide.pt, which is missing or not "
                "fitted with this run's models: train one with jetflows pipeline and "
                "set_flow.guide_epochs > 0, or sample unguided (guidance 1)"
            )
        guide = setflow.set_flow_from_state(states["guide.pt"]).to(device)
    generate = functools.partial(setflow.generate, guide=guide)
    return jet_level_sampler(generate, setflow.set_flow_from_state, record, states, device)


def _cloud_options(
    states: Mapping[str, dict[str, Any]], options: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """The checkpoints with sampling ``options`` applied. With a student (student.pt) and
    without ``teacher``: its ``steps`` (one it was trained for); else the set flow's ODE
    options (`_ode_options`), the student left out.

    Raises:
        ValueError: a step count the student was not trained for, or teacher options asked
            of a student.
    """
    check_option_types(options)
    options = dict(options)
    teacher = options.pop(TEACHER, False)
    if STUDENT in states and not teacher:
        unknown = sorted(set(options) - {"steps"})
        if unknown:
            raise OptionError(
                f"{', '.join(unknown)} sample the teacher (the set flow), not its few-step "
                "student: add --teacher (or sampling option teacher: true)"
            )
        if options.get("steps") is None:
            return dict(states)
        try:
            steps = student_lib.student_config(states[STUDENT]).check_steps(options["steps"])
        except ValueError as err:
            raise OptionError(f"{err} (--steps)") from err
        return {**states, STUDENT: {**states[STUDENT], "sampling_steps": steps}}
    states = {k: v for k, v in states.items() if k != STUDENT}
    return _ode_options(states, options) if options else states


def _cloud_model(states: Mapping[str, dict[str, Any]]) -> str:
    """What a cloud generator's states sample with: its student's calls, or the set flow's ODE
    and guidance."""
    if STUDENT in states:
        state = states[STUDENT]
        steps = student_lib.student_config(state).check_steps(state.get("sampling_steps"))
        return f"few-step student, {steps} network call{'s' * (steps > 1)} a jet"
    c = setflow.SetFlowConfig(**states["flow.pt"]["set_flow_config"])
    guided = (
        f", guided (w {c.guidance:g} for {c.guidance_from:g} <= t < {c.guidance_until:g})"
        if c.guidance != 1.0
        else ""
    )
    return f"set flow, {c.steps} {c.solver} steps{guided}"


def _ode_options(
    states: Mapping[str, dict[str, Any]], options: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """The checkpoints with the set flow's ODE ``options`` (solver, steps) replaced, checked
    as a config would be (OptionError: an unknown solver, steps < 1, another key), each
    error naming the option, not the checkpoint it is applied to."""
    unknown = sorted(set(options) - set(setflow.SAMPLING_FIELDS))
    if unknown:
        raise OptionError(
            f"a set flow takes sampling options {', '.join(setflow.SAMPLING_FIELDS)}, not {unknown}"
        )
    config = {**states["flow.pt"]["set_flow_config"], **options}
    try:
        setflow.SetFlowConfig(**config)  # validates
    except ValueError as err:
        named = [k for k in options if f"set_flow.{k} " in f"{err} "]
        which = ", ".join(f"{k} (--{k.replace('_', '-')})" for k in named) or "options"
        text = str(err).replace("set_flow.", "")
        raise OptionError(f"sampling {'option ' * bool(named)}{which}: {text}") from err
    return {**states, "flow.pt": {**states["flow.pt"], "set_flow_config": config}}


# ----------------------------------------------------------------------------------- training


class Trainer(Protocol):
    """Trains (or restores) one stage: checkpoint file ``name`` of ``kind`` with identity
    ``key``, by ``train(resume=, on_epoch=, progress=)``; ``inputs``: file name -> the state
    of each model it is fitted on. Returns the stage's state."""

    def __call__(
        self,
        name: str,
        kind: str,
        key: str,
        train: Callable[..., dict[str, Any]],
        **inputs: dict[str, Any],
    ) -> dict[str, Any]: ...


def direct_trainer(progress: bool = False) -> Trainer:
    """A `Trainer` that trains every stage from scratch, keeping nothing (studies, digits)."""

    def trained(
        name: str, kind: str, key: str, train: Callable[..., dict[str, Any]], **inputs: Any
    ) -> dict[str, Any]:
        return train(resume=None, on_epoch=None, progress=progress)

    return trained


@dataclass(frozen=True)
class Trained:
    """A trained generator: every checkpoint's state and identity, by file name."""

    states: dict[str, dict[str, Any]]
    keys: dict[str, str]


def _train_latent(
    cfg: PipelineConfig, jet_class: str, parts: tuple[Jets, Jets], data_key: str, trained: Trainer
) -> Trained:
    """The ConVAE, then the latent flow on its latents."""
    from pipelines.run.config import TwoStageConfig

    return train_latent_stages(TwoStageConfig.of(cfg), jet_class, parts, data_key, trained)


def train_latent_stages(
    cfg: TwoStageConfig, name: str, parts: tuple[Jets, Jets], data_key: str, trained: Trainer
) -> Trained:
    """The two-stage generator's stages on (train, valid) ``parts``: the ConVAE, then the
    latent flow on its latents (``name``: the class, or what the jets are)."""
    from pipelines.run import stages
    from pipelines.run.config import digest

    vae_key = digest(data_key, cfg.normalization, cfg.convae, cfg.loss, cfg.convae_train)
    vae = trained(
        "convae.pt", CONVAE_KIND, vae_key, functools.partial(stages.train_convae, cfg, parts)
    )
    key = digest(vae_key, cfg.flow, cfg.flow_train, cfg.latent)
    train = functools.partial(stages.train_latent_flow, cfg, name, parts, vae)
    flow = trained("flow.pt", FLOW_KIND, key, train, **{"convae.pt": vae})
    return Trained({"flow.pt": flow, "convae.pt": vae}, {"flow.pt": key, "convae.pt": vae_key})


def _train_particles(
    cfg: PipelineConfig, jet_class: str, parts: tuple[Jets, Jets], data_key: str, trained: Trainer
) -> Trained:
    """The jet flow, then the particle flow."""
    from pipelines.run import stages
    from pipelines.run.config import digest

    key = digest(data_key, cfg.flow, cfg.flow_train, cfg.particle)
    record, jet_data, particle_data = stages.particle_flows_data(cfg, jet_class, parts)
    jet = trained(
        "jet_flow.pt", FLOW_KIND, key, functools.partial(stages.train_jet_flow, cfg, jet_data)
    )
    train = functools.partial(stages.train_particle_flow, cfg, particle_data, record)
    flow = trained("flow.pt", FLOW_KIND, key, train, **{"jet_flow.pt": jet})
    return Trained({"flow.pt": flow, "jet_flow.pt": jet}, {"flow.pt": key, "jet_flow.pt": key})


def _trained_fields(config: setflow.SetFlowConfig) -> dict[str, Any]:
    """The set flow config's fields that its training depends on: a stage key's part."""
    skip = (*setflow.SAMPLING_FIELDS, *setflow.GUIDE_FIELDS)
    return {k: v for k, v in asdict(config).items() if k not in skip}


def _train_cloud(
    cfg: PipelineConfig, jet_class: str, parts: tuple[Jets, Jets], data_key: str, trained: Trainer
) -> Trained:
    """The jet flow (as the particles target's), then the set flow."""
    from pipelines.run import stages
    from pipelines.run.config import digest

    jet_key = digest(data_key, cfg.flow_train, cfg.particle)
    record, jet_data, set_data = stages.set_flow_data(cfg, jet_class, parts)
    jet = trained(
        "jet_flow.pt", FLOW_KIND, jet_key, functools.partial(stages.train_jet_flow, cfg, jet_data)
    )
    # the ODE's solver, steps and guidance only sample: changing them re-samples, never
    # retrains; the guide's epochs train the guide alone
    key = digest(jet_key, _trained_fields(cfg.set_flow), cfg.flow_train)
    train = functools.partial(stages.train_set_flow, cfg, set_data, record)
    flow = trained("flow.pt", setflow.CHECKPOINT_KIND, key, train, **{"jet_flow.pt": jet})
    states = {"flow.pt": flow, "jet_flow.pt": jet}
    keys = {"flow.pt": key, "jet_flow.pt": jet_key}
    if cfg.set_flow.guide_epochs:
        # the guide: the same flow trained for fewer epochs (its schedule annealed over them)
        epochs = cfg.set_flow.guide_epochs
        guide_flow = cfg.set_flow.guide()
        guide_cfg = replace(
            cfg, set_flow=guide_flow, flow_train=replace(cfg.flow_train, epochs=epochs)
        )
        network = _trained_fields(guide_flow)
        keys["guide.pt"] = digest(jet_key, network, guide_cfg.flow_train, "guide")
        train = functools.partial(stages.train_set_flow, guide_cfg, set_data, record)
        states["guide.pt"] = trained(
            "guide.pt", setflow.CHECKPOINT_KIND, keys["guide.pt"], train, **{"jet_flow.pt": jet}
        )
    return Trained(states, keys)


def _distil_cloud(
    cfg: PipelineConfig,
    jet_class: str,
    parts: tuple[Jets, Jets],
    states: dict[str, dict[str, Any]],
    key: str,
    trained: Trainer,
) -> Trained | None:
    """The few-step student of the set flow as sampled (``states``: its checkpoints with the
    chosen sampling options), when ``cfg.student.steps`` asks for one; None: no student.
    ``key``: the teacher's sampled identity (weights, guide, options)."""
    if not cfg.student.steps:
        return None
    from pipelines.run import stages
    from pipelines.run.config import digest

    record, _, set_data = stages.set_flow_data(cfg, jet_class, parts)
    inputs = {
        name: states[name] for name in ("flow.pt", "jet_flow.pt", "guide.pt") if name in states
    }
    key = digest(key, cfg.student, cfg.student_train)
    train = functools.partial(stages.train_student, cfg, set_data, record, inputs)
    state = trained(STUDENT, student_lib.CHECKPOINT_KIND, key, train, **inputs)
    return Trained({STUDENT: state}, {STUDENT: key})


# ----------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Generator:
    """One target: what it trains, what its checkpoints are, how it samples, what to tune.

    Arguments:
        target: its config side (`pipelines.run.targets.Target`: name, the options it owns,
            its checks of a config, its kinematics option); ``name`` is the target's.
        checkpoints: (file, kind) of each model; the first (flow.pt) is the one sampled from,
            whose record (`SamplerRecord`) names the generator; the others are what it was
            fitted on.
        train: (cfg, class, (train, valid) jets, data stage key, `Trainer`) -> `Trained`.
        sampler: (record, states by file name, device) -> `Sampler`.
        reconstructs: it has a ConVAE whose reconstructions the pipeline checks.
        companions: (file, kind) of models sampled beside flow.pt when present, fitted on
            the same inputs (a set flow's guide); a missing one is the sampler's to refuse.
        options: (states, {option: value}) -> states: sampling options a user may change
            without retraining (``jetflows sample --solver --steps``); None: none.
        sampling: the config's values of those options (cfg -> {option: value}).
        describe: states -> what samples, in words (a generated file's "model" attribute).
        distil: (cfg, class, (train, valid) jets, the sampled states, their key, `Trainer`)
            -> `Trained` or None: a model distilled from the sampled one once its sampling
            options are chosen (a set flow's few-step student), sampled in its place.
        added_sampling: options added after runs were sampled, with their defaults: left out
            of the generate stage's key at their default (those runs' jets stay up to date).
        reported: the stages whose epochs a tuning trial reports to the pruner, in order.
        space: the default tuning search space ({config key:
            `pipelines.experiments.tune.Param` fields}), used when a tuning config names none.
    """

    target: Target
    checkpoints: tuple[tuple[str, str], ...]
    train: Callable[..., Trained]
    sampler: Callable[..., Sampler]
    reconstructs: bool = False
    companions: tuple[tuple[str, str], ...] = ()
    options: Callable[..., dict[str, dict[str, Any]]] | None = None
    sampling: Callable[[PipelineConfig], dict[str, Any]] = lambda cfg: {}
    distil: Callable[..., Trained | None] | None = None
    describe: Callable[[Mapping[str, dict[str, Any]]], str] = lambda states: ""
    added_sampling: Mapping[str, Any] = field(default_factory=dict)
    reported: tuple[str, ...] = ("flow.pt",)
    space: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The config's ``target``, and the ``target`` its checkpoints record."""
        return self.target.name

    @property
    def inputs(self) -> tuple[tuple[str, str], ...]:
        """(file, kind) of the models the sampled one was fitted on."""
        return self.checkpoints[1:]


_FLOW_SPACE = {
    "flow.transforms": {"low": 2, "high": 12, "integer": True},
    "flow.hidden_features": {"low": 32, "high": 512, "log": True, "integer": True},
    "flow_train.lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
}

#: every generator by name: filled by `register`
GENERATORS: dict[str, Generator] = {}


def register(generator: Generator) -> Generator:
    """Make ``generator`` one a config may name as its ``target``: files its `Target` (the
    config's checks) and the generator itself, by name. Adding a generator is this call and
    the functions it names.

    Raises:
        ValueError: a generator of that name is registered already.
    """
    if generator.name in GENERATORS:
        raise ValueError(f"a generator named {generator.name!r} is registered already")
    register_target(generator.target)
    GENERATORS[generator.name] = generator
    return generator


def unregister(name: str) -> None:
    """Remove generator ``name`` and its target (a test's toy generator, once it is done)."""
    GENERATORS.pop(name, None)
    TARGETS.pop(name, None)


register(
    Generator(
        LATENT,
        (("flow.pt", FLOW_KIND), ("convae.pt", CONVAE_KIND)),
        _train_latent,
        _latent_sampler,
        reconstructs=True,
        reported=("convae.pt", "flow.pt"),
        space=_FLOW_SPACE,
    )
)
register(
    Generator(
        PARTICLES,
        (("flow.pt", FLOW_KIND), ("jet_flow.pt", FLOW_KIND)),
        _train_particles,
        functools.partial(jet_level_sampler, particle.generate, flow_from_state),
        space=_FLOW_SPACE,
    )
)
register(
    Generator(
        CLOUD,
        (("flow.pt", setflow.CHECKPOINT_KIND), ("jet_flow.pt", FLOW_KIND)),
        _train_cloud,
        _cloud_sampler,
        companions=(("guide.pt", setflow.CHECKPOINT_KIND),),
        options=_cloud_options,
        sampling=lambda cfg: {k: getattr(cfg.set_flow, k) for k in setflow.SAMPLING_FIELDS},
        distil=_distil_cloud,
        describe=_cloud_model,
        added_sampling=setflow.ADDED_SAMPLING_FIELDS,
        space={
            "set_flow.width": {"low": 32, "high": 192, "step": 32, "integer": True},
            "set_flow.layers": {"low": 2, "high": 6, "integer": True},
            "set_flow.steps": {"low": 4, "high": 40, "log": True, "integer": True},
            "set_flow.solver": {"choices": ["euler", "midpoint", "rk4"]},
            "set_flow.time_power": {"low": 0.0, "high": 2.0},
            "set_flow.coupling": {"choices": list(setflow.COUPLINGS)},
            "flow_train.batch_size": {"choices": [32, 64, 256]},
        },
    )
)


def sampled_kinds() -> tuple[str, ...]:
    """Every kind a flow.pt may hold (the registered generators' sampled checkpoints)."""
    return tuple(sorted({g.checkpoints[0][1] for g in GENERATORS.values()}))


def build_sampler(
    states: Mapping[str, dict[str, Any]],
    *,
    device: str = "cpu",
    options: Mapping[str, Any] | None = None,
) -> TrainedSampler:
    """The generator of trained states by file name (flow.pt, with its record inside, and the
    models it was fitted on): the one builder behind `load_sampler`, the pipeline's
    evaluation and every tuning trial, so all sample the same way. ``options``: sampling
    options the generator takes (`Generator.options`; a set flow's solver and steps).

    Raises:
        ValueError: not a pipeline flow, or options the generator does not take.
    """
    device = resolve_device(device)
    # a shipped model keeps its student alone (pipelines.run.shipped): its record is the teacher's
    sampled = states["flow.pt"] if "flow.pt" in states else states[STUDENT]
    record = record_of(sampled.get("extra", {}))
    gen = GENERATORS[record.target]
    if options:
        if gen.options is None:
            raise OptionError(
                f"a {gen.name} generator takes no sampling options ({', '.join(options)}); "
                "they apply to set flows (target cloud)"
            )
        states = gen.options(states, options)
    sampler = gen.sampler(record, states, device)
    kinematics = torch.tensor(record.jet_kinematics, dtype=torch.float32)
    return TrainedSampler(record, sampler, kinematics, device, gen.describe(states))


def record_of(extra: dict[str, Any], where: str | Path = "flow.pt") -> SamplerRecord:
    """`SamplerRecord.from_dict`, its target checked against the registry (ValueError)."""
    record = SamplerRecord.from_dict(extra, where)
    if record.target not in GENERATORS:
        raise UserError(f"{where}: not a pipeline flow (target {record.target!r} is unknown)")
    return record


def class_dir(run: str | Path, jet_class: str) -> Path:
    """``run/<class>``, checked to hold a model (ValueError naming what is missing)."""
    run, jet_class = Path(run), canonical_class(jet_class)
    if not run.is_dir():
        where = "" if run.is_absolute() else f" (relative to {Path.cwd()}: {run.resolve()})"
        raise MissingFileError(
            f"{run}: no such run directory{where}; train one with jetflows pipeline"
        )
    path = run / jet_class
    if (path / "flow.pt").is_dir():
        raise UserError(f"{path / 'flow.pt'} is a directory, not a model checkpoint")
    if not (path / "flow.pt").is_file():
        have = sorted(p.parent.name for p in run.glob("*/flow.pt") if p.is_file())
        raise UserError(
            f"run {run} has no model for class {jet_class!r} (no {path / 'flow.pt'}); "
            f"it has {have or 'none'}"
        )
    return path


def _load_student(path: Path, jet_class: str, states: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A student.pt distilled from the models in ``states`` (flow.pt and what it was fitted
    on), with its teacher's record (class, normalization, kinematics): else ValueError naming
    the file (sampling the teacher instead, ``teacher``, needs no student)."""
    state = load_checkpoint(path, student_lib.CHECKPOINT_KIND)
    check_provenance(state, path, jet_class, **states)
    teacher = record_of(states["flow.pt"].get("extra", {}), path.parent / "flow.pt")
    if state.get("extra") != teacher.to_dict():
        raise UserError(
            f"{path}: a student without its teacher's normalization and record (particle "
            "scaling, kinematics): distil it again with jetflows pipeline, or sample with --teacher"
        )
    return state


def _check_window(state: dict[str, Any], options: Mapping[str, Any]) -> None:
    """OptionError where a user asks for a guidance window (from, until) of a set flow that
    samples unguided: it was ignored without a word. (The pipeline's own options carry the
    config's window beside guidance 1 on purpose: only a user's request is checked.)"""
    window = sorted({"guidance_from", "guidance_until"} & set(options))
    stored = state.get("set_flow_config", {}).get("guidance", 1.0)
    if window and options.get("guidance", stored) == 1.0:
        flags = " and ".join(f"--{k.replace('_', '-')}" for k in window)
        raise OptionError(
            f"{flags} set when guidance acts, but this model samples unguided (guidance 1): "
            "add --guidance w > 1, or leave them out"
        )


def load_sampler(
    run: str | Path,
    jet_class: str,
    *,
    device: str = "cpu",
    options: Mapping[str, Any] | None = None,
) -> TrainedSampler:
    """Rebuild the generator of ``jet_class`` from the checkpoints in ``run/<class>/``, each
    checked to belong to the class and to each other; ``device`` as
    `jetflows.distributed.resolve_device` takes it (auto, cpu, cuda); ``options``: sampling
    options the generator takes (`Generator.options`; a set flow's solver and steps).

    Raises:
        FileNotFoundError: no run directory or a missing checkpoint.
        ValueError: no model of the class, a corrupt checkpoint, models that do not belong
            together (`pipelines.run.checkpoints.check_provenance`), or options it does not take.
    """
    path = class_dir(run, jet_class)
    state = load_checkpoint(path / "flow.pt", sampled_kinds())
    record = record_of(state.get("extra", {}), path / "flow.pt")
    gen = GENERATORS[record.target]
    if state["kind"] != gen.checkpoints[0][1]:
        raise UserError(f"{path / 'flow.pt'}: a {state['kind']} checkpoint in a {gen.name} record")
    states = {"flow.pt": state}
    for name, kind in gen.inputs:
        states[name] = load_checkpoint(path / name, kind)
        check_provenance(states[name], path / name, path.name)
    inputs = {name: states[name] for name, _ in gen.inputs}
    check_provenance(state, path / "flow.pt", path.name, **inputs)
    left_out: dict[str, str] = {}
    for name, kind in gen.companions:
        # a companion that is not this run's (or not readable) is left out: only a sampler
        # that needs it refuses, so unguided sampling never fails on a stale guide.pt
        try:
            companion = load_checkpoint(path / name, kind)
            check_provenance(companion, path / name, path.name, **inputs)
            if fingerprint(companion) == fingerprint(state):  # cp flow.pt guide.pt
                raise UserError(f"{path / name}: the same model as flow.pt, not its companion")
        except ValueError as err:
            LOG.info("%s: left out (%s)", path / name, err)
            left_out[name] = str(err)
            continue
        states[name] = companion
    _check_window(state, options or {})
    if gen.distil is not None and (path / STUDENT).is_file() and not (options or {}).get(TEACHER):
        states[STUDENT] = _load_student(path / STUDENT, path.name, states)
    try:
        return build_sampler(states, device=device, options=options)
    except OptionError:  # the user's option, not the checkpoint: said as such
        raise
    except MissingFileError as err:  # a companion it needs: say why it was left out
        why = "; ".join(f"{reason}" for name, reason in left_out.items() if name in str(err))
        raise type(err)(f"{err}{f' ({why})' if why else ''}") from err
    except ValueError as err:  # the same kind of error, naming the run's flow
        raise type(err)(f"{path / 'flow.pt'}: {err}") from err
