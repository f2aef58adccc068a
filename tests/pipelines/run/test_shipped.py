"""Shipped models: a run's student cut into package data that samples the run's own jets, a
manifest that records where it came from, files refused when damaged, edited or missing, and
the package's own files checked against their manifest and their class's physics."""

import hashlib
import json

import h5py
import numpy as np
import pytest
import torch

import jetflows
from jetflows.classes import JET_TYPES
from jetflows.errors import MissingFileError, UserError
from pipelines.cli import main
from pipelines.run import shipped, showcase
from pipelines.run.config import load_config, to_dict
from pipelines.run.generators import load_sampler
from pipelines.run.sample import sampled_jets
from tests.conftest import assert_one_line_error
from tests.pipelines.run.test_student import data_dir, student_run  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def packed_dir(student_run, tmp_path_factory):  # noqa: F811
    where = tmp_path_factory.mktemp("shipped")
    packed = shipped.pack(student_run, "g", config=student_run / "config.yaml")
    shipped.write_shipped(packed, {"w1m": {"stable_ratio": 1.5}}, where, commit="abc", model="m")
    return where


@pytest.fixture
def installed(packed_dir, monkeypatch, tmp_path):
    """A copy of the packed folder standing in for the package's."""
    where = tmp_path / "shipped"
    where.mkdir()
    for f in packed_dir.iterdir():
        (where / f.name).write_bytes(f.read_bytes())
    monkeypatch.setattr(shipped, "folder", lambda: where)
    return where


def test_a_shipped_file_samples_the_runs_own_jets(student_run, packed_dir):  # noqa: F811
    gen = shipped.load("gluon", where=packed_dir)
    assert gen.model == "shipped g model, few-step student, 2 network calls a jet"
    ours, theirs = (
        sampled_jets(gen, 300, seed=4),
        sampled_jets(load_sampler(student_run, "g"), 300, seed=4),
    )
    assert np.array_equal(ours.particles, theirs.particles)
    assert np.array_equal(ours.jet_features, theirs.jet_features)
    one = sampled_jets(shipped.load("g", where=packed_dir, options={"steps": 1}), 300, seed=4)
    assert not np.array_equal(one.particles, ours.particles)
    # cut to what sampling needs: no optimizer, no history, no teacher
    assert (packed_dir / "g.pt").stat().st_size < (
        student_run / "g" / "student.pt"
    ).stat().st_size / 2


def test_the_manifest_records_where_the_model_came_from(student_run, packed_dir):  # noqa: F811
    entry = json.loads((packed_dir / "manifest.json").read_text())["models"]["g"]
    assert entry["sha256"] == hashlib.sha256((packed_dir / "g.pt").read_bytes()).hexdigest()
    cfg = load_config(student_run / "config.yaml")
    assert entry["config_digest"] == shipped.config_digest(cfg)
    assert entry["data"]["seed"] == cfg.data.seed and entry["commit"] == "abc"
    assert entry["scores"] == {"w1m": {"stable_ratio": 1.5}}
    assert "g: m (g.pt" in shipped.listing(packed_dir) and "w1m 1.50" in shipped.listing(packed_dir)


def test_a_run_from_another_config_is_not_packed(student_run):  # noqa: F811
    with pytest.raises(UserError, match=r"was not trained from configs/quickstart\.yaml"):
        shipped.pack(student_run, "g", config="configs/quickstart.yaml")


@pytest.mark.parametrize(
    ("damage", "error", "match"),
    [
        ("flip", UserError, "does not match the SHA-256 recorded in manifest.json"),
        (
            "remove",
            MissingFileError,
            "missing; reinstall jetflows or rebuild it with python scripts",
        ),
        ("manifest", UserError, "not readable JSON"),
    ],
)
def test_damaged_or_missing_files_are_refused(installed, damage, error, match):
    path = installed / "g.pt"
    if damage == "flip":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    elif damage == "remove":
        path.unlink()
    else:
        (installed / "manifest.json").write_text("{")
    with pytest.raises(error, match=match):
        shipped.load("g")


def test_what_a_shipped_model_cannot_do_is_one_clear_error(installed):
    with pytest.raises(UserError, match=r"no shipped model for class 't' \(shipped: g\)"):
        shipped.load("top")
    with pytest.raises(UserError, match="the few-step student alone"):
        shipped.load("g", options={"teacher": True})
    with pytest.raises(UserError, match="samples in 2, 1 steps, not 3"):
        shipped.load("g", options={"steps": 3})


def test_sample_without_a_run_draws_from_the_shipped_model(installed, tmp_path, capsys):
    out = tmp_path / "g.hdf5"
    assert main(["sample", "--n", "50", "--class", "g", "--out", str(out), "--quiet"]) == 0
    assert "(50 g jets from jetflows: shipped g model, few-step student" in capsys.readouterr().out
    with h5py.File(out) as f:
        assert f.attrs["run"] == "shipped" and f.attrs["jet_class"] == "g"
        assert f["particle_features"].shape == (50, 30, 4)
    jets = jetflows.load("g").sample(50, seed=0)
    with h5py.File(out) as f:
        assert np.array_equal(jets.particles, f["particle_features"][..., :3])
    assert main(["models"]) == 0 and "g: m (g.pt" in capsys.readouterr().out
    (installed / "g.pt").write_bytes(b"junk")
    assert_one_line_error(
        capsys, ["sample", "--n", "5", "--class", "g", "--out", str(tmp_path / "x.hdf5")], "SHA-256"
    )
    assert not (tmp_path / "x.hdf5").exists()
    assert_one_line_error(capsys, ["sample", "--n", "5", "--class", "w"], "shipped: g")


def test_the_main_job_scores_the_shipped_models_on_fresh_jets(installed, tmp_path):
    out = tmp_path / "scored"
    results = showcase.score_to_dir(
        out, ("g",), n_real=200, n_generated=200, n=100, jobs=1, cache_dir=tmp_path / "cache",
        cov_mmd=False, progress=False,
    )  # fmt: skip
    stable = results["g"]["stable"]
    assert stable["sizes"] == {"n": 100, "draws": 16, "samples": 2, "real": 200}
    assert results["g"]["shipped"]["model"] == "m"
    summary = (out / "summary.md").read_text()
    assert "| g | now |" in summary and "| g | shipped | 1.50 |" in summary
    assert (out / "g" / "report.md").is_file() and (out / "g" / "plots" / "jet_mass.png").is_file()
    with h5py.File(out / "real" / "g.hdf5") as f:
        assert f["particle_features"].shape[0] == 200
    with pytest.raises(UserError, match="made the g model's training jets"):
        trained_on = shipped.manifest(installed)["models"]["g"]["data"]["seed"]
        showcase.score_to_dir(out, ("g",), seed=trained_on)


def test_scoring_into_a_run_is_refused(student_run, capsys):  # noqa: F811
    """`jetflows models --score RUN` would replace the run's generated jets and reports."""
    before = (student_run / "g" / "report.md").read_text()
    assert_one_line_error(capsys, ["models", "--score", str(student_run)], "is a pipeline run")
    assert (student_run / "g" / "report.md").read_text() == before


# ------------------------------------------------------------------- the package's own files

SHIPPED = shipped.manifest()["models"]
#: what each class's jets look like: the median and interquartile range (GeV) of the jet mass
#: from the 30 particles of 5,000 real Pythia jets of seed 7 (the main job's fresh jets).
#: 1,000 generated jets must land within 15% (median) and 30% (IQR) of them: a model of
#: another class, or a broken one, lands outside (W: narrow; gluon: as light, but wide)
REAL_MASS = {
    "g": (81.8, 87.5),
    "q": (64.4, 57.8),
    "t": (146.5, 26.1),
    "w": (78.2, 14.0),
    "z": (86.5, 14.4),
}


def test_every_class_ships_a_model():
    assert sorted(SHIPPED) == sorted(JET_TYPES)


@pytest.mark.parametrize("jet_class", sorted(SHIPPED))
def test_a_shipped_file_matches_its_record_and_makes_jets_of_its_class(jet_class):
    entry = SHIPPED[jet_class]
    path = shipped.folder() / entry["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    assert path.stat().st_size == entry["bytes"]
    cfg = load_config(entry["config"])
    assert shipped.config_digest(cfg) == entry["config_digest"], "config changed since it shipped"
    state = shipped.read_shipped(jet_class)
    student = state["states"]["student.pt"]["state"]
    assert student["set_flow_config"] == {**to_dict(cfg.set_flow), **entry["guidance_chosen"]}
    assert list(student["student_config"]["steps"]) == list(cfg.student.steps)
    assert student["extra"]["jet_class"] == jet_class
    jets = jetflows.load(jet_class).sample(1000, seed=1)
    assert np.isfinite(jets.particles).all() and np.isfinite(jets.jet_features).all()
    assert (jets.particles[..., 2][jets.mask] > 0).all()
    assert np.array_equal(jets.jet_features[:, 3], jets.mask.sum(1))
    mass = jets.jet_features[:, 2]
    median, iqr = REAL_MASS[jet_class]
    low, high = np.percentile(mass, [25, 75])
    assert abs(np.median(mass) / median - 1) < 0.15, (np.median(mass), median)
    assert abs((high - low) / iqr - 1) < 0.30, (high - low, iqr)


def test_shipped_models_stay_small():
    total = sum(e["bytes"] for e in SHIPPED.values())
    assert total <= 15 * 2**20, total
    assert (
        torch.load(shipped.folder() / SHIPPED["t"]["file"], weights_only=True)["kind"]
        == shipped.KIND
    )
