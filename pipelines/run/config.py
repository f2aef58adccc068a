"""Pipeline configs: YAML that mirrors the frozen dataclasses one to one.

`load_config` reads a YAML file, applies ``--set section.key=value`` overrides and builds a
`PipelineConfig`; every key must name a dataclass field (an unknown key is a ValueError naming
its path) and every value must have the field's type (ints are accepted for floats, lists for
tuples). `to_yaml` writes the fully resolved config back, so a run directory holds exactly what
ran and `jetflows pipeline --config runs/<name>/config.yaml` repeats it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from convae.model import ConVAEConfig
from convae.train import LossConfig
from flows.latent import ENCODINGS, JOINT, MASKINGS
from flows.models import FlowConfig
from flows.particle import check_context
from flows.setflow import SetFlowConfig
from flows.setflow.student import StudentConfig
from jetflows.checks import require
from jetflows.classes import canonical_class
from jetflows.distributed import DEVICES
from jetflows.errors import MissingFileError, UserError
from jetflows.normalize import STATISTICS
from jetflows.training import TrainConfig
from pipelines.evaluation.evaluate import EvalConfig
from pipelines.evaluation.metrics import EMD_OBSERVABLES
from pipelines.io import require_file, stable_hash
from pipelines.run import targets
from pipelines.run.targets import MIN_CALIBRATION_JETS

SOURCES = ("auto", "jetnet", "pythia")


_NAME = re.compile(r"[A-Za-z0-9._-]+")


#: the longest run or study name: a folder name (file systems allow 255 bytes; a run's files
#: add their own names below it)
MAX_NAME = 100


def check_name(value: str, what: str) -> str:
    """``value`` if it is a plain directory name (letters, digits, . _ -; not . or ..), the
    only kind of name that becomes a folder or file under --root/--runs: a slash, .. or an
    absolute path would write outside it.

    Raises:
        ValueError: anything else; the message names ``what`` (the key or option).
    """
    if isinstance(value, str) and len(value) > MAX_NAME:  # said without echoing all of it
        raise UserError(f"{what} {value[:40]!r}... is {len(value)} characters: at most {MAX_NAME}")
    if not isinstance(value, str) or not _NAME.fullmatch(value) or value in (".", ".."):
        raise UserError(f"{what} {value!r} must be a plain folder name (letters, digits, . _ -)")
    return value


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def check_split(split: tuple[float, ...], what: str) -> None:
    """Raise UserError unless ``split`` is (train, validation, test) fractions summing to 1."""
    if len(split) != 3 or min(split) <= 0 or abs(sum(split) - 1) > 1e-6:
        raise UserError(f"{what} must be 3 positive fractions summing to 1: {split}")


@dataclass(frozen=True)
class DataConfig:
    """Where the jets of each class come from.

    Arguments:
        source: "jetnet" (files in ``data_dir``), "pythia" (the embedded generator, cached),
            or "auto" (JetNet files when present, else Pythia).
        data_dir: directory with g.hdf5 ... (JetNet layout).
        num_particles: P, 30 or 150.
        n_jets: jets per class (generated, or the first of the JetNet file's seeded order).
        split: train, validation, test fractions; the test part is the evaluation's real set.
        seed: Pythia seed and split seed.
        jobs: Pythia processes.
        recipe: Pythia jets: a key of `pipelines.data.pythia.RECIPES` (particle, the default:
            radians; fpnd-matched: phi_rel compressed to delta phi / pi).
    """

    source: str = "auto"
    data_dir: str = "data/jetnet"
    num_particles: int = 30
    n_jets: int = 2000
    split: tuple[float, ...] = (0.7, 0.15, 0.15)
    seed: int = 0
    jobs: int = 2
    recipe: str = "particle"

    def __post_init__(self) -> None:
        from pipelines.data.pythia import check_recipe  # numpy + h5py only

        check_recipe(self.recipe, "data.recipe")
        if self.source not in SOURCES:
            raise UserError(f"unknown data source {self.source!r}: use one of {SOURCES}")
        check_split(self.split, "data.split")
        if self.n_jets < 10 or self.jobs < 1:
            raise UserError("data.n_jets must be >= 10 and data.jobs >= 1")
        require(self, ("num_particles",), low=1)
        require(self, ("seed",))


@dataclass(frozen=True)
class LatentOptions:
    """Two-stage options: how latents are taken and how decoded particles are masked.

    Arguments:
        encoding: "mean" (posterior mean) or "sample" (a draw of q(z|x)).
        masking: "threshold", "multiplicity" (n drawn from the training jets, independent of
            the rest) or "joint" (the latent flow samples n with z), see `flows.latent.Masking`.
        pt_threshold: pt_rel below which a decoded particle is dropped (threshold masking).
        project: the latent flow also samples each jet's (log mass, sum pt_rel) and the decoded
            jet is projected onto them (`flows.latent.generate`); needs masking "joint".
        kinematics: the latent flow is conditioned on each jet's (log pt, eta), so generated
            jets carry the kinematics they were sampled for (`jetflows sample --pt`).
    """

    encoding: str = "mean"
    masking: str = "multiplicity"
    pt_threshold: float = 1e-3
    project: bool = False
    kinematics: bool = False

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise UserError(f"unknown latent.encoding {self.encoding!r}: use one of {ENCODINGS}")
        if self.masking not in MASKINGS:
            raise UserError(
                f"unknown latent.masking {self.masking!r}: use one of {sorted(MASKINGS)}"
            )
        require(self, ("pt_threshold",))
        if self.project and self.masking not in JOINT:
            raise UserError("latent.project needs latent.masking: joint (n is sampled with z)")


@dataclass(frozen=True)
class ParticleOptions:
    """Direct particle-flow options.

    Arguments:
        context: what the particle flow (or set flow) is conditioned on (names in
            `flows.particle.CONTEXTS`: mass, multiplicity, pt_sum, tau21, tau32, d2).
        jet_flow: the flow that samples (log mass, n and any other context) per jet.
        centroid: the flow models the jet axis (pt-weighted centroid) in place of the leading
            particle's angles (`flows.particle`); False: every particle's own angles.
        project: generated jets are projected onto the mass and sum(pt_rel) the jet flow
            sampled (pts scaled, angles dilated about the axis; `flows.particle`).
        kinematics: the jet flow is conditioned on each jet's (log pt, eta), so generated jets
            carry the kinematics they were sampled for (`jetflows sample --pt`).
    """

    context: tuple[str, ...] = ("mass", "multiplicity")
    centroid: bool = False
    project: bool = False
    kinematics: bool = False
    jet_flow: FlowConfig = FlowConfig(kind="zuko_nsf_coupling", transforms=4, hidden_features=64)

    def __post_init__(self) -> None:
        try:
            check_context(self.context)
        except ValueError as err:
            raise UserError(f"particle.{err}") from None


def _check_device(device: str, normalization: str) -> None:
    """Raise UserError unless the device and the ConVAE input scaling are known names."""
    if device not in DEVICES:
        raise UserError(f"unknown device {device!r}: use one of {DEVICES}")
    if normalization not in STATISTICS:
        raise UserError(f"unknown normalization {normalization!r}: use one of {sorted(STATISTICS)}")


#: set flow sampling options a calibration may choose: each trades one figure against another
#: (sharper prongs against spread), while more steps or a higher-order solver only score better
#: at more time, which a quality criterion cannot weigh
CALIBRATED = ("guidance", "guidance_from", "guidance_until")


@dataclass(frozen=True)
class CalibrateConfig:
    """Sampling options chosen per class on the validation jets (`pipelines.run.calibrate`).

    Each class samples its validation jets once with every entry of ``settings`` and keeps
    the one whose worst W1 ratio to the floor over ``observables`` is lowest; the test jets
    the pipeline scores take no part. The choice is stored in the class's flow.pt, so
    ``jetflows sample`` draws as the evaluation did.

    Arguments:
        settings: sampling options to compare ({option: value}, options in `CALIBRATED`; an
            option left out keeps the config's ``set_flow`` value); empty: no calibration,
            every class samples with the config's options.
        observables: jet observables the criterion reads (`pipelines.evaluation.metrics`
            ``EMD_OBSERVABLES``).
        n_jets: validation jets scored (and as many generated, and training jets as the
            floor); 0: every validation jet.
    """

    settings: tuple[dict[str, float], ...] = ()
    observables: tuple[str, ...] = ("mass", "tau21", "tau32", "d2")
    n_jets: int = 0

    def __post_init__(self) -> None:
        for i, setting in enumerate(self.settings):
            unknown = sorted(set(setting) - set(CALIBRATED))
            if unknown or not setting:
                raise UserError(
                    f"calibrate.settings: each entry sets some of {CALIBRATED}, got {setting}"
                )
            numbers = all(type(v) in (int, float) and math.isfinite(v) for v in setting.values())
            if not numbers:  # YAML is converted; a config built in Python is not
                raise UserError(f"calibrate.settings {setting}: each value must be a number")
            if setting in self.settings[:i]:
                raise UserError(f"calibrate.settings lists {setting} twice")
        unknown = sorted(set(self.observables) - set(EMD_OBSERVABLES))
        if unknown or not self.observables:
            raise UserError(
                f"calibrate.observables: use some of {EMD_OBSERVABLES}, got {self.observables}"
            )
        if self.n_jets and self.n_jets < MIN_CALIBRATION_JETS:
            raise UserError(
                f"calibrate.n_jets must be 0 (every validation jet) or >= "
                f"{MIN_CALIBRATION_JETS}, got {self.n_jets}"
            )


#: the flows' training defaults (a flow learns at a higher rate than the ConVAE)
FLOW_TRAIN = TrainConfig(lr=1e-3, batch_size=256, patience=10)
#: a few-step student's distillation defaults (it starts from its teacher's weights); batch 32:
#: on the three-prong toy it beat 128 at the same time (tau32 0.21 against 0.24 at 2 calls)
STUDENT_TRAIN = TrainConfig(
    epochs=20, lr=1e-3, batch_size=32, patience=0, schedule="cosine", clip_norm=1.0
)


@dataclass(frozen=True)
class TwoStageConfig:
    """What a two-stage generator (ConVAE, then a flow on its latents) is made of, and nothing
    else: the part of `PipelineConfig` its stages read, with the same keys, so the studies
    (digits: no jets, no evaluation) build it on its own. `PipelineConfig` extends it, so the
    fields and their defaults are declared here once.

    Arguments: as the fields of the same name in `PipelineConfig`.
    """

    normalization: str = "standard"
    device: str = "auto"
    convae: ConVAEConfig = ConVAEConfig()
    loss: LossConfig = LossConfig()
    convae_train: TrainConfig = TrainConfig()
    flow: FlowConfig = FlowConfig()
    flow_train: TrainConfig = FLOW_TRAIN
    latent: LatentOptions = LatentOptions()

    def __post_init__(self) -> None:
        _check_device(self.device, self.normalization)
        if self.flow.num_classes:  # the class-conditional flow is a library feature only
            raise UserError("flow.num_classes must be 0: the pipeline trains one model per class")
        if self.convae.num_features != 3:
            raise UserError(
                f"convae.num_features must be 3 (eta_rel, phi_rel, pt_rel), "
                f"got {self.convae.num_features}"
            )

    @classmethod
    def of(cls, cfg: PipelineConfig) -> TwoStageConfig:
        """The two-stage part of a pipeline config."""
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})


#: the keys a written pipeline config starts with (a run's config.yaml is read by people)
_FIRST_KEYS = ("name", "classes", "target")


@dataclass(frozen=True)
class PipelineConfig(TwoStageConfig):
    """Everything a pipeline run needs; ``configs/*.yaml`` mirror it.

    Arguments:
        name: the run directory is ``runs/<name>``.
        classes: jet classes (g, q, t, w, z or aliases), one model per class.
        target: the generator, a registered `pipelines.run.targets.Target`: "latent" (ConVAE
            + latent flow, two-stage), "particles" (a flow on the 30 x 3 particle features) or
            "cloud" (a continuous flow on the particle set, `flows.setflow`); the jet-level
            side of the last two is ``particle``.
        normalization: ConVAE input scaling: "standard" (zero mean, unit variance per feature),
            "standard_log_pt" (the same on eta, phi and log pt_rel; decoded pts are exp of the
            output) or "minmax" (into [0, 1], for a sigmoid output; it collapsed the ConVAE:
            docs/models.md).
        set_flow: the cloud target's set flow (`flows.setflow.SetFlowConfig`); it trains with
            ``flow_train``.
        n_generate: jets generated per class for the evaluation.
        calibrate: sampling options chosen per class on the validation jets (cloud target).
        student: a few-step student distilled from the calibrated set flow (cloud target;
            `flows.setflow.student.StudentConfig`; ``steps`` empty: none); it trains with
            ``student_train``, and ``jetflows sample`` draws from it when the run has one.
        device: "auto" (a GPU when there is one), "cpu" or "cuda" for training and
            generation; not part of any stage's identity, so a run may continue elsewhere.
        per_class: settings of one class only, {class: {dotted key: value}} with the keys of
            ``--set`` (``{t: {loss.gamma_tau: 20}}``); `for_class` applies them. A class's
            stages are keyed on its own settings, so another class's entry retrains nothing.
        The two-stage fields (convae, loss, convae_train, flow, flow_train, latent) are
        `TwoStageConfig`'s.
    """

    name: str = "quickstart"
    classes: tuple[str, ...] = ("g", "q", "t", "w", "z")
    target: str = "latent"
    n_generate: int = 1000
    data: DataConfig = DataConfig()
    particle: ParticleOptions = ParticleOptions()
    set_flow: SetFlowConfig = SetFlowConfig()
    evaluate: EvalConfig = EvalConfig(fpnd=False)
    calibrate: CalibrateConfig = CalibrateConfig()
    student: StudentConfig = StudentConfig()
    student_train: TrainConfig = STUDENT_TRAIN
    per_class: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        targets.target_of(self)  # first: an unknown target is the news, not its options
        super().__post_init__()
        if not self.classes:
            raise UserError("classes must name at least one jet class")
        check_name(self.name, "name")
        # one model per class: a class-conditional flow (num_classes > 0) is a library feature
        # the pipeline never feeds labels to
        if self.particle.jet_flow.num_classes:
            raise UserError(
                "particle.jet_flow.num_classes must be 0: the pipeline trains one model per class"
            )
        targets.check(self)
        object.__setattr__(self, "classes", tuple(canonical_class(c) for c in self.classes))
        if self.n_generate < 100:
            raise UserError("n_generate must be >= 100 (the evaluation's minimum sample)")
        if round(self.data.n_jets * self.data.split[2]) < 200:  # two real halves of >= 100
            raise UserError(
                f"data.n_jets x data.split[2] = {self.data.n_jets * self.data.split[2]:.0f} test "
                "jets: the evaluation needs >= 200 (raise n_jets or the test fraction)"
            )
        # last: an error of the config itself is not to be blamed on a class's entry
        object.__setattr__(self, "per_class", _checked_per_class(self))

    def for_class(self, jet_class: str) -> PipelineConfig:
        """The settings class ``jet_class`` runs with: this config with its ``per_class``
        entry applied, and ``per_class`` emptied (another class's entry is not part of it)."""
        if not self.per_class:
            return self
        return build(PipelineConfig, class_tree(to_dict(self), jet_class))

    @property
    def kinematics(self) -> bool:
        """Whether the target's generator is conditioned on each jet's (log pt, eta)."""
        return targets.target_of(self).conditioned(self)


#: top-level keys a class cannot set for itself: they name the run, not a class's model (the
#: device is where the run goes, never part of a stage's identity)
_RUN_KEYS = ("name", "classes", "per_class", "device")


def flat_keys(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1} (a `to_dict` tree: its tuples are lists already)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat_keys(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _checked_per_class(cfg: PipelineConfig) -> dict[str, dict[str, Any]]:
    """``cfg.per_class`` keyed by canonical class names, each entry as dotted keys (a nested
    section, as ``--set per_class.t.loss.gamma_tau=3`` writes it, sets those keys only, never
    the whole section) holding the values as built (20 -> 20.0), once each class's config is
    known to build (an unknown class, key or value is one UserError naming it)."""
    out: dict[str, dict[str, Any]] = {}
    spelled: dict[str, str] = {}
    for name, settings in cfg.per_class.items():
        try:
            jet_class = canonical_class(name)
        except ValueError as err:
            raise UserError(f"per_class: {err}") from None
        flat = _strict_flat_keys(settings, f"per_class.{name}")
        # two spellings of one class (top in the YAML, --set per_class.t.x=1) are merged;
        # only a key the two set differently is a conflict
        for key, value in flat.items():
            known = out.get(jet_class, {})
            if key in known and known[key] != value:
                raise UserError(
                    f"per_class.{spelled[jet_class]}.{key} and per_class.{name}.{key} set "
                    f"{key} of class {jet_class} to {known[key]!r} and {value!r}: keep one"
                )
        out[jet_class] = {**out.get(jet_class, {}), **flat}
        spelled.setdefault(jet_class, name)
        for key in out[jet_class]:
            if not key or key.split(".")[0] in _RUN_KEYS or "=" in key:
                raise UserError(f"per_class.{name}: {key!r} cannot be set per class")
    tree = {**to_dict(cfg), "per_class": out}
    for jet_class, settings in out.items():
        try:
            built = build(PipelineConfig, class_tree(tree, jet_class), f"per_class.{jet_class}")
        except ValueError as err:  # set_value's "--set" wording named the wrong place
            raise UserError(f"per_class.{jet_class}: {str(err).removeprefix('--set ')}") from None
        plain = flat_keys(to_dict(built))
        out[jet_class] = {key: plain.get(key, value) for key, value in settings.items()}
    return out


def _strict_flat_keys(settings: Any, where: str) -> dict[str, Any]:
    """`flat_keys` of a per-class entry, refusing a key reached twice ({"a.b": 3, "a": {"b":
    5}} silently kept the last)."""
    if not isinstance(settings, dict):
        raise UserError(f"{where} must be a mapping of config keys, got {settings!r}")
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            inner = _strict_flat_keys(value, f"{where}.{key}")
            items = {f"{key}.{name}": v for name, v in inner.items()}
        else:
            items = {str(key): value}
        for full, v in items.items():
            if full in out:
                raise UserError(f"{where}: {full} is set twice (as a dotted key and in a section)")
            out[full] = v
    return out


def class_tree(tree: dict[str, Any], jet_class: str) -> dict[str, Any]:
    """A pipeline config tree with its ``per_class`` entries for ``jet_class`` applied (an
    entry may name the class by an alias; two spellings are merged) and ``per_class``
    removed."""
    per_class = tree.get("per_class") or {}
    values = {}
    for k, v in per_class.items():
        if canonical_class(k) == jet_class:
            values.update(flat_keys(v))
    tree = {k: v for k, v in tree.items() if k != "per_class"}
    return with_values(tree, values)


# --------------------------------------------------------------------------------- building


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str) -> Any:
    """``value`` as type ``tp`` (a field annotation), or ValueError naming ``path``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{path}: expected a mapping, got {value!r}")
        return {str(k): _convert(v, args[1], f"{path}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, path)
            except ValueError:
                continue
        raise UserError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise UserError(f"{path}: expected a list, got {value!r}")
        return tuple(_convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if tp is float and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        # PyYAML follows YAML 1.1, where 1e-4 (no dot) is a string, not a float
        value = float(value)
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):  # no config value means NaN or infinity
            raise UserError(f"{path}: expected a finite number, got {value!r}")
        return float(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    raise UserError(f"{path}: expected {_type_name(tp)}, got {value!r}")


def _with_field_default(cls: type, name: str, value: Any) -> Any:
    """A section given in part (``student_train: {epochs: 5}``) starts from the field's own
    default (`STUDENT_TRAIN`), not from its class's (`TrainConfig()`: 300 epochs): what a
    key left out means is what the field says, whether the section is named or not."""
    default = next(f.default for f in dataclasses.fields(cls) if f.name == name)
    if isinstance(value, dict) and dataclasses.is_dataclass(default):
        return {**to_dict(default), **value}
    return value


def build(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from a dict, strictly (unknown keys and wrong types: ValueError)."""
    if not isinstance(data, dict):
        raise UserError(f"{path or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names, key=str)  # a YAML key may be a number: 1: x
    if unknown:
        where = f"{path}." if path else ""
        raise UserError(
            f"unknown config key {where}{unknown[0]}: {cls.__name__} has {sorted(names)}"
        )
    data = {k: _with_field_default(cls, k, v) for k, v in data.items()}
    kwargs = {k: _convert(v, hints[k], f"{path}.{k}" if path else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(f"{path or 'config'}: {err}") from err


def set_value(tree: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a nested dict."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise UserError(f"--set expects section.key=value, got {assignment!r}")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:  # a traceback before; safe_load also refuses !!python tags
        why = str(err).splitlines()[0]
        raise UserError(f"--set {key}: the value {text!r} is not valid YAML ({why})") from None
    parts = key.strip().split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        dotted = ".".join(parts[i:])
        if dotted in node:  # a dotted key (per_class: {t: {loss.gamma_tau: 20}}): replaced, not
            node[dotted] = value  # shadowed by a section set beside it
            return
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {key}: {part} is not a section")
    node[parts[-1]] = value


class _StrictLoader(yaml.SafeLoader):
    """yaml's safe loader, refusing a key repeated in one mapping (yaml keeps the last value
    silently, so a duplicated ``n_generate`` would quietly override the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise UserError(f"duplicate key {key!r} (line {line})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def compose_node(self, parent: Any, index: Any) -> Any:
        # an alias repeats a whole subtree: nine nested ones make 10^9 leaves from 600 bytes
        # (a "billion laughs"), expanded before any key is checked; no config needs one
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise UserError(
                f"YAML aliases (*name) are not allowed in config files (line {mark.line + 1}): "
                "write the values out"
            )
        return super().compose_node(parent, index)


#: the largest config file read: ours are a few KB, and yaml's pure-Python reader takes
#: minutes for tens of MB
MAX_CONFIG_BYTES = 2**20


def read_yaml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML mapping from ``path``, strictly: duplicate keys and syntax errors are one-line
    ValueErrors naming the file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not YAML, not a mapping, or a duplicate key.
    """
    path = require_file(path, f"{what} file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(
            f"{path}: {path.stat().st_size} bytes, not a {what} file (at most {MAX_CONFIG_BYTES})"
        )
    try:
        tree = yaml.load(path.read_text(), Loader=_StrictLoader)
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from err
    except ValueError as err:
        raise UserError(f"{path}: {err}") from err
    if tree is None:  # it silently meant every built-in default
        raise UserError(
            f"{path}: the {what} file is empty; for the built-in defaults give no --config"
        )
    if not isinstance(tree, dict):
        raise UserError(f"{path}: expected a mapping of config keys, got {type(tree).__name__}")
    return tree


def load_config(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()
) -> PipelineConfig:
    """Read a pipeline YAML (None: the defaults) and apply ``--set`` overrides.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not YAML, unknown key, wrong type or invalid value (one line, naming it).
    """
    tree: dict[str, Any] = read_yaml(path) if path is not None else {}
    for assignment in overrides:
        set_value(tree, assignment)
    return build(PipelineConfig, tree)


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass as plain lists/dicts (tuples become lists), for YAML and JSON."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def to_yaml(config: Any) -> str:
    """The resolved config as YAML that `load_config` reads back to an equal config (a
    pipeline's name, classes and target first)."""
    tree = to_dict(config)
    tree = {**{k: tree[k] for k in _FIRST_KEYS if k in tree}, **tree}
    return yaml.safe_dump(tree, sort_keys=False)


#: fields a config gained after runs were made with it: left out of a stage's digest while
#: they hold their default, so that those runs' finished stages stay finished
ADDED_FIELDS: dict[type, tuple[str, ...]] = {
    TrainConfig: ("ema",),
    ConVAEConfig: ("condition",),
    LossConfig: ("gamma_d2",),
    StudentConfig: ("balance", "teacher_guidance"),
}


def digest(*parts: Any) -> str:
    """A short stable hash of config parts (dataclasses or plain data): a stage's identity."""
    return stable_hash([_digested(p) for p in parts])


def _digested(part: Any) -> Any:
    """``part`` as `to_dict` writes it, less every field added later (`ADDED_FIELDS`) that holds
    its default, in nested configs too (a study's cell digests a whole `TwoStageConfig`)."""
    if not dataclasses.is_dataclass(part):
        return part
    plain = to_dict(part)
    added = ADDED_FIELDS.get(type(part), ())
    for f in dataclasses.fields(part):
        value = getattr(part, f.name)
        if f.name in added and value == f.default:  # compared as built (a tuple stays a tuple)
            del plain[f.name]
        elif dataclasses.is_dataclass(value):
            plain[f.name] = _digested(value)
    return plain


# ------------------------------------------------------- configs built on a base pipeline


def base_config_path(config: Path, base: str) -> Path:
    """Where a tuning or study config's ``base`` is: relative to that config's own directory (so a
    config works from any working directory), else, as written before, to the working
    directory; absolute paths as they are.

    Raises:
        FileNotFoundError: neither exists (both places named).
    """
    candidates = [Path(base)] if Path(base).is_absolute() else [config.parent / base, Path(base)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = " or ".join(str(c.resolve()) for c in candidates)
    raise MissingFileError(f"{config}: base config {base} not found (looked for {tried})")


def based_config(path: str | Path, cls: type, what: str) -> tuple[Any, dict[str, Any]]:
    """A config of dataclass ``cls`` that names a base pipeline YAML (``base``, relative to
    itself) and ``overrides``: the config, and the base tree with the overrides applied."""
    path = Path(path)
    cfg = build(cls, read_yaml(path, what))
    base = read_yaml(base_config_path(path, cfg.base), "base config")
    for assignment in cfg.overrides:
        set_value(base, assignment)
    return cfg, base


def pipeline_config(
    base: dict[str, Any], values: dict[str, Any], cls: type = PipelineConfig
) -> Any:
    """The base tree with ``values`` ({dotted key: value}) applied, built strictly as ``cls``
    (`PipelineConfig`, or a part of it such as `TwoStageConfig`)."""
    return build(cls, with_values(base, values))


def with_values(tree: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of config tree ``tree`` with ``values`` ({dotted key: value}) set."""
    tree = json.loads(json.dumps(tree))
    for key, value in values.items():
        set_value(tree, f"{key}={json.dumps(value)}")
    return tree
