"""Issue 38: jets of 150 particles through the whole package at tiny size: the set-flow
pipeline trains and scores them (multiplicity beside its floor; FPND said to be undefined),
``jetflows sample`` writes 150-slot jets whose multiplicity varies past 30, and asking for more
particles than the data hold, or comparing a run's jets with real jets of another size, is one
line and exit 2."""

import json
import re

import h5py
import numpy as np
import pytest

from pipelines.cli import main
from pipelines.data.jetnet import write_jetnet_file
from tests.conftest import assert_one_line_error, random_jets

P150 = [
    "--set", "target=cloud",
    "--set", "name=p150",
    "--set", "classes=[g]",
    "--set", "data.source=jetnet",
    "--set", "data.num_particles=150",
    "--set", "data.n_jets=400",
    "--set", "data.split=[0.4, 0.1, 0.5]",
    "--set", "n_generate=200",
    "--set", "evaluate.n_jets=100",
    "--set", "evaluate.cov_mmd=false",
    "--set", "evaluate.fpnd=true",
    "--set", "evaluate.stable_draws=4",
    "--set", "flow_train.epochs=2",
    "--set", "flow_train.batch_size=64",
    "--set", "particle.centroid=false",
    "--set", "particle.jet_flow.transforms=2",
    "--set", "particle.jet_flow.hidden_features=8",
    "--set", "set_flow.network=transformer",
    "--set", "set_flow.width=16",
    "--set", "set_flow.layers=1",
    "--set", "set_flow.heads=2",
    "--set", "set_flow.steps=2",
    "--set", "student.steps=[2]",
    "--set", "student_train.epochs=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("jetnet150")
    write_jetnet_file(root / "g150.hdf5", random_jets(400, num_particles=150, seed=5))
    write_jetnet_file(root / "g.hdf5", random_jets(400, num_particles=30, seed=6))
    return root


def _pipeline(data_dir, runs, *more):
    argv = ["pipeline", "--config", "configs/quickstart.yaml", "--runs", str(runs), "--quiet"]
    return [*argv, *P150, "--set", f"data.data_dir={data_dir}", *more]


def test_a_set_flow_pipeline_and_sampling_at_150_particles(data_dir, tmp_path, capsys):
    assert main(_pipeline(data_dir, tmp_path / "runs")) == 0
    run = tmp_path / "runs" / "p150"
    metrics = json.loads((run / "g" / "metrics.json").read_text())
    assert metrics["metrics"]["w1p"]["value"] > 0
    multiplicity = metrics["stable"]["multiplicity"]
    assert multiplicity["stable_ratio"] > 0 and np.isfinite(multiplicity["stable_ratio"])
    assert multiplicity["floor"] > 0  # beside its floor
    assert "150" in metrics["skipped"]["fpnd"]  # not defined there: said, not computed
    assert (run / "g" / "plots" / "jet_multiplicity.png").is_file()
    memory = re.findall(
        r"flow done in .* peak memory so far ([0-9.]+) GB", (run / "pipeline.log").read_text()
    )
    assert memory and 0.05 < float(memory[0]) < 8  # printed with every stage
    out = tmp_path / "g150_generated.hdf5"
    argv = ["sample", "--run", str(run), "--class", "g", "--n", "300", "--out", str(out)]
    assert main([*argv, "--quiet"]) == 0
    capsys.readouterr()
    with h5py.File(out) as f:
        particles = f["particle_features"][:]
        assert "few-step student" in f.attrs["model"]  # the student at 150 slots too
    n = particles[..., 3].sum(1)
    assert particles.shape == (300, 150, 4) and np.isfinite(particles).all()
    assert n.max() > 30 and n.std() > 5  # jets past the 30 slots, of varied size
    real30 = data_dir / "g.hdf5"
    argv = ["evaluate", "--real", str(real30), "--gen", str(out), "--out", str(tmp_path / "ev")]
    assert_one_line_error(capsys, [*argv, "--no-fpnd"], "same particle count")
    assert not (tmp_path / "ev").exists()


def test_asking_for_more_particles_than_the_data_hold_is_one_line(data_dir, tmp_path, capsys):
    (tmp_path / "small").mkdir()
    write_jetnet_file(tmp_path / "small" / "g150.hdf5", random_jets(400, num_particles=30))
    argv = _pipeline(tmp_path / "small", tmp_path / "runs")
    assert_one_line_error(capsys, argv, "holds 30 particles per jet, 150 were asked")
