import dataclasses
from pathlib import Path

import pytest

from convae.train import LossConfig
from pipelines.run.config import PipelineConfig, digest, load_config, to_yaml
from tests.conftest import assert_one_line_error

CONFIGS = sorted((Path(__file__).parents[3] / "configs").glob("*.yaml"))
#: file-name prefix -> the config kind; any other config is a pipeline config
KINDS = ("tune_", "study_", "sparse_")
PIPELINES = [p for p in CONFIGS if not p.name.startswith(KINDS)]


@pytest.mark.parametrize("path", PIPELINES, ids=str)
def test_every_shipped_config_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    again = tmp_path / "again.yaml"
    again.write_text(to_yaml(cfg))
    assert load_config(again) == cfg


def _tune(path):
    from pipelines.experiments.tune import load_tune_config

    cfg, base = load_tune_config(path)
    assert cfg.space and base


def _study(path):
    from pipelines.experiments.study import load_study_config

    cfg, base = load_study_config(path)
    assert cfg.losses and base


def _digits(path):
    from pipelines.experiments.digits import load_digits_config

    assert load_digits_config(path).losses


LOADERS = {"tune_": _tune, "study_": _study, "sparse_": _digits}


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name.startswith(KINDS)], ids=str)
def test_every_other_shipped_config_loads_from_any_directory(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a base config resolves relative to its config file
    LOADERS[next(k for k in KINDS if path.name.startswith(k))](path.resolve())


def test_duplicate_yaml_keys_are_refused(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("n_generate: 100\nflow:\n  transforms: 3\nn_generate: 200\n")
    with pytest.raises(ValueError, match=r"dup.yaml: duplicate key 'n_generate' \(line 4\)"):
        load_config(path)
    path.write_text("flow:\n  transforms: 3\n  transforms: 4\n")
    with pytest.raises(ValueError, match="duplicate key 'transforms'"):
        load_config(path)


def test_overrides_are_typed_and_nested():
    cfg = load_config(
        None,
        [
            "flow.transforms=8",
            "classes=[top, W]",
            "convae_train.lr=1e-3",
            "flow_train.clip_norm=5",
            "particle.jet_flow.bins=4",
        ],
    )
    assert cfg.flow.transforms == 8 and cfg.classes == ("t", "w")
    assert cfg.convae_train.lr == 1e-3 and cfg.flow_train.clip_norm == 5.0
    assert isinstance(cfg.flow_train.clip_norm, float) and cfg.particle.jet_flow.bins == 4
    assert load_config(None) == PipelineConfig()


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["flow.transformz=3"], "unknown config key flow.transformz"),
        (["colour=red"], "unknown config key colour"),
        (["flow.transforms=x"], r"flow\.transforms: expected int, got 'x'"),
        (["flow.transforms=2.5"], "expected int, got 2.5"),
        (["flow.transforms=true"], "expected int, got True"),
        (["convae_train.lr=fast"], "expected float"),
        (["data.split=[0.5, 0.5]"], "3 positive fractions"),
        (["data.recipe=delphes"], "unknown data.recipe 'delphes'"),
        (["classes=[top, muon]"], "unknown jet class 'muon'"),
        (["flow=3"], "flow: expected a mapping"),
        (["flow.kind=glow"], "unknown flow 'glow'"),
        (["target=pixels"], "unknown target"),
        (["data.n_jets=100"], "the evaluation needs >= 200"),
        (["flow.transforms"], "expects section.key=value"),
        (["loss.space=latent"], "unknown loss space 'latent'"),
        (["loss.feature_weights=[1, 1]"], "feature_weights must be 3 positive numbers"),
        (["loss.feature_weights=[1, 1, x]"], "expected float"),
        (["loss.reflect=maybe"], "expected bool"),
        (["latent.masking=topk"], "unknown latent.masking 'topk'"),
        (["latent.encoding=median"], "unknown latent.encoding 'median'"),
        (["latent.project=true"], "latent.project needs latent.masking: joint"),
        (["particle.context=[mass, multiplicity, width]"], "context must include"),
        (["particle.project=sometimes"], "expected bool"),
        # values checked when the config is loaded, naming the key (issue 14 #9)
        (["convae_train.lr=.nan"], r"convae_train\.lr: expected a finite number, got nan"),
        (["flow_train.lr=.inf"], r"flow_train\.lr: expected a finite number"),
        (["flow_train.lr=0"], r"flow_train: lr must be a finite number > 0"),
        (["loss.feature_weights=[1, .nan, 1]"], r"feature_weights\[1\]: expected a finite"),
        (["loss.beta=-1"], "loss: beta must be a finite number >= 0"),
        (["loss.gamma_d2=-1"], "loss: gamma_d2 must be a finite number >= 0"),
        (["convae_train.patience=-1"], "patience must be a finite number >= 0"),
        (["flow_train.clip_norm=0"], "clip_norm must be a finite number > 0"),
        (["flow.tail_bound=0"], "tail_bound must be a finite number > 0"),
        (["latent.pt_threshold=-0.1"], "pt_threshold must be a finite number >= 0"),
        (["data.num_particles=0"], "num_particles must be a finite number >= 1"),
        (["data.seed=-1"], "data: seed must be a finite number >= 0"),
        (["evaluate.n_jets=0"], "n_jets must be a finite number >= 1"),
        (["flow.num_classes=2"], "flow.num_classes must be 0"),
        (["particle.jet_flow.num_classes=5"], "particle.jet_flow.num_classes must be 0"),
        (["normalization=robust"], "unknown normalization 'robust'"),
        (["name=../elsewhere"], "must be a plain folder name"),
        (["convae.num_particles=150"], r"convae\.num_particles \(150\) must equal"),
        (["convae.num_features=4"], "convae.num_features must be 3"),
        (["convae.condition=[tau32, width]"], "convae.condition must name distinct jet quan"),
        (["set_flow.steps=0"], "set_flow: steps must be a finite number >= 1"),
        (["set_flow.solver=dopri9"], "unknown set_flow.solver 'dopri9'"),
        (["set_flow.width=0"], "set_flow: width must be a finite number >= 1"),
        (["set_flow.network=mlp"], "unknown set_flow.network 'mlp'"),
        (["set_flow.divergence=guess"], "unknown set_flow.divergence 'guess'"),
        (["set_flow.stepz=3"], "unknown config key set_flow.stepz"),
        (["flow.transforms=["], r"--set flow.transforms: the value '\[' is not valid YAML"),
        (["name=!!python/object/apply:os.system [true]"], "--set name: the value"),
        (["target=cloud", "particle.centroid=true"], "centroid must be false for target cloud"),
        (["target=cloud", "set_flow.guidance=2"], "needs a guide"),
        (
            ["target=cloud", "student.steps=[2]", "student.teacher_guidance=3"],
            "student.teacher_guidance 3.0 needs a guide: set set_flow.guide_epochs",
        ),
        (["target=cloud", "student.teacher_guidance=0.5"], "teacher_guidance must be 0"),
        (["set_flow.guidance_from=0.5", "set_flow.guidance_until=0.5"], "guidance_until must"),
        (["target=cloud", "calibrate.settings=[{steps: 4}]"], "each entry sets some of"),
        (["target=cloud", "calibrate.settings=[{}]"], "each entry sets some of"),
        (["calibrate.settings=[{guidance: 1}]"], "target latent has none"),
        (["target=cloud", "calibrate.settings=[{guidance: 2}]"], "guides: set set_flow.guide"),
        (
            ["target=cloud", "calibrate.settings=[{guidance_from: 1.5}]"],
            "settings .*guidance_from must lie",
        ),
        (["target=cloud", "calibrate.settings=[{guidance: x}]"], r"settings\[0\]\.guidance"),
        (["calibrate.observables=[mass, width]"], "calibrate.observables: use some of"),
        (["calibrate.n_jets=10"], "calibrate.n_jets must be 0"),
        (["target=cloud", "calibrate.settings=[{guidance: 1}, {guidance: 1}]"], "twice"),
        (
            ["target=cloud", "data.n_jets=400", "calibrate.settings=[{guidance: 1}]"],
            r"data.split\[1\] = \d+, needs >= 100",
        ),
        (["per_class={x: {loss.gamma_tau: 1}}"], "per_class: unknown jet class 'x'"),
        (["per_class={t: {loss.gamma_tu: 1}}"], "unknown config key per_class.t.loss.gamma_tu"),
        (["per_class={t: {loss.gamma_tau: -1}}"], "per_class.t.loss: gamma_tau must be"),
        (["per_class={t: {loss.gamma_tau: x}}"], "per_class.t.loss.gamma_tau: expected float"),
        (["per_class={t: {name: other}}"], "'name' cannot be set per class"),
        (["per_class={t: {classes: [g]}}"], "'classes' cannot be set per class"),
        (["per_class={t: {device: cpu}}"], "'device' cannot be set per class"),
        (["per_class={t: {loss.gamma_tau.x: 1}}"], r"per_class.t: loss.gamma_tau.x: gamma_tau is"),
        (["n_generate=5", "per_class={t: {loss.gamma_tau: 1}}"], "config: n_generate must be"),
        (
            ["per_class={t: {flow_train.epochs: 3}, top: {flow_train.epochs: 4}}"],
            r"per_class.t.flow_train.epochs and per_class.top.flow_train.epochs set",
        ),
        (
            ["per_class={t: {flow_train.epochs: 3, flow_train: {epochs: 5}}}"],
            r"per_class.t: flow_train.epochs is set twice \(as a dotted key and in a section\)",
        ),
        (["per_class={t: 3}"], r"per_class\.t: expected a mapping"),
        (["per_class={t: {convae.num_particles: 20}}"], r"per_class.t: convae.num_particles"),
    ],
)
def test_bad_configs_are_one_clear_error(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, overrides)


@pytest.mark.parametrize("value", ["set_flow.steps=0", "set_flow.solver=dopri9"])
def test_bad_set_flow_values_are_one_line_from_the_cli(capsys, value):
    assert_one_line_error(capsys, ["pipeline", "--set", value], value.split("=")[0].split(".")[0])


def test_per_class_settings_apply_to_their_class_only():
    """A class's entry (by any alias) changes that class's config and no other; the config a
    class runs with holds no per_class, so another class's entry is not part of its keys."""
    cfg = load_config(
        "configs/standard.yaml",
        ["per_class={top: {loss.gamma_tau: 20, convae.condition: [tau21, tau32]}, W: {}}"],
    )
    assert cfg.per_class == {
        "t": {"loss.gamma_tau": 20, "convae.condition": ["tau21", "tau32"]},
        "w": {},
    }
    top, gluon = cfg.for_class("t"), cfg.for_class("g")
    assert (top.loss.gamma_tau, top.convae.condition) == (20.0, ("tau21", "tau32"))
    assert top.loss.gamma == cfg.loss.gamma and top.per_class == {}  # the rest kept
    plain = load_config("configs/standard.yaml", ["per_class={}"])
    assert gluon == plain and cfg.for_class("w") == plain
    assert digest(gluon.convae, gluon.loss) == digest(plain.convae, plain.loss)
    assert load_config(None).for_class("t") == load_config(None)


def test_a_per_class_section_sets_its_keys_only_and_values_are_kept_as_built():
    """``--set per_class.t.loss.gamma_tau=3`` (a nested section) overrides that key of the
    YAML's entry and keeps the entry's others and the section's other fields; 20 is kept as
    the 20.0 it builds to, so a rerun is not mistaken for other settings."""
    cfg = load_config("configs/standard.yaml", ["per_class.t.loss.gamma_tau=3"])
    assert cfg.per_class["t"] == {"loss.gamma_tau": 3.0, "loss.gamma_d2": 0.5}
    top = cfg.for_class("t")
    assert (top.loss.gamma_tau, top.loss.gamma_d2, top.loss.gamma) == (3.0, 0.5, cfg.loss.gamma)
    nested = load_config(None, ["per_class={top: {loss: {gamma_tau: 20}}}"])
    assert nested.per_class == {"t": {"loss.gamma_tau": 20.0}}
    assert nested.for_class("t").loss == dataclasses.replace(LossConfig(), gamma_tau=20.0)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("flow: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("# nothing but a comment\n")
    with pytest.raises(ValueError, match="file is empty"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        load_config(bad)


def test_digest_changes_with_what_a_stage_depends_on():
    a, b = PipelineConfig(), load_config(None, ["flow.bins=4"])
    assert digest(a.convae, a.loss) == digest(b.convae, b.loss)
    assert digest(a.flow) != digest(b.flow)


@pytest.mark.parametrize(
    ("part", "field", "value"),
    [
        ("flow_train", "ema", 0.999),
        ("convae", "condition", ("tau21", "tau32")),
        ("loss", "gamma_d2", 1.0),
        ("student", "balance", "jumps"),
        ("student", "teacher_guidance", 3.0),
    ],
)
def test_a_field_added_later_keeps_old_stage_digests_while_at_its_default(part, field, value):
    """Runs made before `TrainConfig.ema`, `ConVAEConfig.condition` or
    `StudentConfig.balance` existed keep their finished stages; setting it makes a new stage."""
    from dataclasses import replace

    from pipelines.io import stable_hash
    from pipelines.run.config import ADDED_FIELDS, to_dict

    config = getattr(PipelineConfig(), part)
    added = ADDED_FIELDS[type(config)]
    assert field in added
    before = {k: v for k, v in to_dict(config).items() if k not in added}  # as such runs hashed it
    assert digest(config) == stable_hash([before])
    assert digest(replace(config, **{field: value})) != digest(config)


def test_added_fields_leave_a_whole_two_stage_configs_digest_as_it_was():
    """A study's or a digits cell's key digests a whole `TwoStageConfig`: its nested configs'
    added fields at their defaults stay out too."""
    from pipelines.io import stable_hash
    from pipelines.run.config import TwoStageConfig, to_dict

    whole = TwoStageConfig.of(PipelineConfig())
    before = to_dict(whole)
    for part, field in [
        ("convae_train", "ema"),
        ("flow_train", "ema"),
        ("convae", "condition"),
        ("loss", "gamma_d2"),
    ]:
        del before[part][field]
    assert digest(whole) == stable_hash([before])


def test_a_number_key_beside_an_unknown_key_is_one_clear_error(tmp_path):
    """It was a TypeError from sorting 1 beside "colour"."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("1: x\ncolour: red\n")
    with pytest.raises(ValueError, match="unknown config key 1"):
        load_config(bad)


def test_a_section_given_in_part_keeps_the_fields_own_defaults():
    """`--set student_train.batch_size=64` on a config without that section changes the batch
    only: the rest is the field's default (STUDENT_TRAIN: 20 epochs), not TrainConfig()'s 300;
    the same for flow_train (FLOW_TRAIN's lr, not TrainConfig()'s)."""
    from pipelines.run.config import FLOW_TRAIN, STUDENT_TRAIN, PipelineConfig, build

    cfg = build(PipelineConfig, {"student_train": {"batch_size": 64}, "flow_train": {"epochs": 3}})
    assert cfg.student_train == dataclasses.replace(STUDENT_TRAIN, batch_size=64)
    assert cfg.flow_train == dataclasses.replace(FLOW_TRAIN, epochs=3)
    assert build(PipelineConfig, {}).student_train == STUDENT_TRAIN


BOMB = """name: x
per_class:
  t:
    a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]
    b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
    d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
    e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
    f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
    g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
    h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
    i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (BOMB, r"YAML aliases \(\*name\) are not allowed in config files \(line 5\)"),
        ("name: " + "x" * 200 + "\n", "name 'xxxx.*'... is 200 characters: at most 100"),
        ("name: x\n#" + "y" * 2**20 + "\n", "bytes, not a config file"),
    ],
    ids=["alias bomb", "long name", "huge file"],
)
def test_configs_that_would_explode_are_refused_at_once(tmp_path, text, match):
    """Issue 39 #5, #15: a 659-byte alias bomb hung; a 16 MB name parsed for 239 s, then
    printed a 16 MB error line."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as err:
        load_config(path)
    assert len(str(err.value)) < 300


def test_two_spellings_of_one_class_are_merged(tmp_path):
    """Issue 39 #13: per_class: {top: ...} in the YAML and --set per_class.t.x=... was refused
    as naming class t twice; each spelling's keys now add up (a key set to two values is one
    error naming both, above)."""
    path = tmp_path / "c.yaml"
    path.write_text("per_class:\n  top:\n    flow_train: {epochs: 5}\n")
    cfg = load_config(path, ["per_class.t.flow_train.lr=0.01"])
    assert cfg.per_class == {"t": {"flow_train.epochs": 5, "flow_train.lr": 0.01}}
    assert load_config(path, ["per_class.t.flow_train.epochs=5"]).per_class["t"] == {
        "flow_train.epochs": 5
    }
