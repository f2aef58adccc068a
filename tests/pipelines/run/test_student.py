"""The few-step student in the pipeline: distilled from the run's calibrated, guided set flow,
checkpointed with its provenance, resumed, retrained only when its teacher or settings change,
and what `jetflows sample` draws from unless told --teacher."""

import json
import shutil

import h5py
import numpy as np
import pytest
import torch

from pipelines.cli import main
from pipelines.data.jetnet import write_jetnet_file
from pipelines.run.checkpoints import save_checkpoint
from pipelines.run.config import load_config
from pipelines.run.generators import SamplerRecord, TrainedSampler, load_sampler
from pipelines.run.pipeline import run_pipeline
from pipelines.run.sample import sample_jets, sampled_jets
from tests.conftest import assert_one_line_error, random_jets
from tests.pipelines.run.test_generators import TINY

STUDENT = [
    "target=cloud",
    "set_flow.steps=4",
    "set_flow.guide_epochs=1",
    "set_flow.guide_width=8",
    "set_flow.guidance=2",
    "student.steps=[2, 1]",
    "student_train.epochs=3",
    "student_train.batch_size=32",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("jetnet")
    write_jetnet_file(root / "g.hdf5", random_jets(600, seed=5))
    return root


def _config(data_dir, *more):
    return load_config("configs/quickstart.yaml", [*TINY, f"data.data_dir={data_dir}", *more])


@pytest.fixture(scope="module")
def student_run(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("student")
    return run_pipeline(_config(data_dir, *STUDENT), root=root, progress=False)


def _sample(run, out, *extra) -> np.ndarray:
    seed = str(load_config(run / "config.yaml").data.seed)  # the evaluation's jets' seed
    args = ["sample", "--run", str(run), "--class", "g", "--n", "200", "--seed", seed]
    assert main([*args, "--out", str(out), "--quiet", *extra]) == 0
    with h5py.File(out) as f:
        return f["particle_features"][:]


def test_the_pipeline_distils_a_student_and_samples_it(student_run, tmp_path):
    g = student_run / "g"
    log = (student_run / "pipeline.log").read_text()
    assert "g: student done" in log and (g / "student.pt").is_file()
    assert "g: generated with the few-step student, 2 network calls a jet" in log
    state = torch.load(g / "student.pt", weights_only=False)
    assert state["kind"] == "jetflows.setflow.student" and len(state["history"]) == 3
    assert set(state["provenance"]["fitted_on"]) == {"flow.pt", "jet_flow.pt", "guide.pt"}
    assert tuple(state["student_config"]["steps"]) == (2, 1)
    history = json.loads((g / "history.json").read_text())
    assert len(history["student"]) == 3
    # the evaluation's jets are the student's: jetflows sample draws the same by default
    student = _sample(student_run, tmp_path / "s.hdf5")
    with h5py.File(g / "generated.hdf5") as f:
        assert np.array_equal(student, f["particle_features"][:])
    with h5py.File(tmp_path / "s.hdf5") as f:
        assert f.attrs["model"] == "few-step student, 2 network calls a jet"
    teacher = _sample(student_run, tmp_path / "t.hdf5", "--teacher")
    with h5py.File(tmp_path / "t.hdf5") as f:
        assert f.attrs["model"].startswith("set flow, 4 midpoint steps, guided (w 2")
    one = _sample(student_run, tmp_path / "one.hdf5", "--steps", "1")
    assert not np.allclose(student, teacher) and not np.allclose(student, one)
    seed = load_config(student_run / "config.yaml").data.seed
    jets = sampled_jets(load_sampler(student_run, "g", options={"steps": 1}), 200, seed=seed)
    assert np.array_equal(jets.particles, one[..., :3])
    assert (jets.particles[..., 2][jets.mask] > 0).all() and len(np.unique(jets.mask.sum(1))) > 5


def test_a_student_is_asked_only_for_what_it_was_trained_for(student_run, tmp_path, capsys):
    out = tmp_path / "x.hdf5"
    args = ["sample", "--run", str(student_run), "--class", "g", "--n", "20", "--out", str(out)]
    assert_one_line_error(capsys, [*args, "--steps", "4"], "samples in 2, 1 steps")
    assert_one_line_error(capsys, [*args, "--guidance", "1"], "--teacher")
    assert_one_line_error(capsys, [*args, "--solver", "euler"], "--teacher")
    assert not out.exists()
    assert main([*args, "--teacher", "--steps", "2", "--guidance", "1", "--quiet"]) == 0


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s["provenance"].update(jet_class="t"), "class 't'"),
        (lambda s: s["extra"].pop("particle_target"), "normalization"),
        (lambda s: s["provenance"]["fitted_on"].update({"flow.pt": "0" * 16}), "flow.pt"),
    ],
    ids=["another class", "no normalization", "another teacher"],
)
def test_a_student_that_is_not_its_teachers_is_refused(student_run, tmp_path, capsys, edit, match):
    run = tmp_path / "run"
    shutil.copytree(student_run, run)
    state = torch.load(run / "g" / "student.pt", weights_only=False)
    state.pop("content_sha256")
    edit(state)
    save_checkpoint(run / "g" / "student.pt", state)
    out = tmp_path / "x.hdf5"
    args = ["sample", "--run", str(run), "--class", "g", "--n", "20", "--out", str(out)]
    assert_one_line_error(capsys, args, match)
    assert not out.exists()
    assert main([*args, "--teacher", "--quiet"]) == 0  # the teacher needs no student


def test_the_student_stage_resumes_and_retrains_alone(student_run, data_dir, tmp_path, monkeypatch):
    shutil.copytree(student_run, tmp_path / "tiny")
    cfg = _config(data_dir, *STUDENT, "student.method=reflow")
    saves = []

    def killed(path, state):  # dies after the student's second epoch is written
        save_checkpoint(path, state)
        saves.append(path.name)
        if saves.count("student.last.pt") == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr("pipelines.run.pipeline.save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, root=tmp_path, progress=False, overwrite=True)
    monkeypatch.undo()
    run = run_pipeline(cfg, root=tmp_path, progress=False, overwrite=True)
    log = (run / "pipeline.log").read_text().split("class g")[-1]
    assert "g: flow up to date" in log and "g: guide up to date" in log
    assert "g: resuming student after epoch 2" in log and "g: student done" in log
    state = torch.load(run / "g" / "student.pt", weights_only=False)
    assert state["student_config"]["method"] == "reflow" and len(state["history"]) == 3
    # a config without a student removes it, and samples the teacher again
    plain = [s for s in STUDENT if not s.startswith("student")]
    run_pipeline(_config(data_dir, *plain), root=tmp_path, progress=False, overwrite=True)
    assert not (run / "g" / "student.pt").exists()
    assert load_sampler(run, "g").sampler is not None


def test_precision_timings_are_kept_per_machine(tmp_path, monkeypatch):
    """'auto' precision times a network once per machine: the timings live in the cache
    folder; an unreadable cache is timed again, never an error."""
    from flows.setflow import sampling
    from pipelines.run.sample import PRECISION_TIMINGS, kept_precision_timings

    monkeypatch.setenv("JETFLOWS_CACHE", str(tmp_path))
    monkeypatch.setattr(sampling, "BF16_FASTER", {})
    with kept_precision_timings():
        sampling.BF16_FASTER["cpu|net"] = True
    assert json.loads((tmp_path / PRECISION_TIMINGS).read_text()) == {"cpu|net": True}
    monkeypatch.setattr(sampling, "BF16_FASTER", {})
    with kept_precision_timings():
        assert sampling.BF16_FASTER == {"cpu|net": True}
    (tmp_path / PRECISION_TIMINGS).write_text("{not json")
    monkeypatch.setattr(sampling, "BF16_FASTER", {})
    with kept_precision_timings():
        assert sampling.BF16_FASTER == {}


def test_a_million_ode_steps_is_one_line_not_a_hang(student_run, tmp_path, capsys):
    """`sample --steps 1000000` grew memory until killed (issue 39 #6): bounded, one line."""
    out = tmp_path / "x.hdf5"
    args = ["sample", "--run", str(student_run), "--class", "g", "--n", "20", "--out", str(out)]
    assert_one_line_error(capsys, [*args, "--teacher", "--steps", "1000000"], "at most 1000")
    assert not out.exists()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n": 0}, ValueError, "n must be >= 1, got 0"),
        ({"n": -5}, ValueError, "n must be >= 1, got -5"),
        ({"n": 2.5}, TypeError, "n must be an integer, got 2.5"),
        ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
        ({"seed": None}, TypeError, "seed must be an integer, got None"),
        ({"seed": 1.5}, TypeError, "seed must be an integer"),
        ({"seed": "a"}, TypeError, "seed must be an integer"),
        ({"seed": 2**64}, ValueError, r"seed must be in 0\.\.9223372036854775807"),
        ({"seed": True}, TypeError, "seed must be an integer, got True"),
    ],
)
def test_sampling_arguments_are_checked_at_the_call(student_run, kwargs, error, match):
    """Issue 39 #10: these were torch's RuntimeError, an overflow, "need at least one array to
    concatenate", "range() arg 3 must not be zero", or (n = -5) nothing at all."""
    gen = load_sampler(student_run, "g")
    call = {"n": 10, "seed": 0, "batch_size": 10, **kwargs}
    with pytest.raises(error, match=match):
        sample_jets(gen, call.pop("n"), **call)  # raised at the call, before any batch
    with pytest.raises(error, match=match):
        sampled_jets(gen, {"n": 10, **kwargs}["n"], **{k: v for k, v in kwargs.items() if k != "n"})


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"teacher": True, "steps": 2.5}, TypeError, "sampling option steps must be an integer"),
        ({"teacher": True, "steps": True}, TypeError, "steps must be an integer, got True"),
        ({"teacher": True, "guidance": "2"}, TypeError, "guidance must be a number, got '2'"),
        ({"teacher": "yes"}, TypeError, "teacher must be true or false"),
        ({"steps": 3}, ValueError, r"samples in 2, 1 steps, not 3.*\(--steps\)$"),
        (
            {"teacher": True, "guidance": -1},
            ValueError,
            r"^sampling option guidance \(--guidance\): guidance must lie in \[1, 20\], got -1$",
        ),
    ],
)
def test_sampling_options_are_named_as_options(student_run, options, error, match):
    """Issue 39 #10, #16: a steps of 2.5 failed 12 frames deep when sampling; --guidance -1 was
    "runs/.../flow.pt: set_flow.guidance must lie in [1, 20]", blaming the checkpoint."""
    with pytest.raises(error, match=match):
        load_sampler(student_run, "g", options=options)


def test_a_bad_flag_is_one_line_naming_the_flag(student_run, tmp_path, capsys):
    argv = ["sample", "--run", str(student_run), "--class", "g", "--n", "5"]
    argv += ["--out", str(tmp_path / "x.hdf5"), "--teacher", "--guidance", "-1"]
    line = assert_one_line_error(capsys, argv, "sampling option guidance (--guidance): guidance")
    assert "flow.pt" not in line


def test_a_record_of_jets_that_cannot_exist_is_refused(student_run):
    """Issue 39 #1: NaN in the kinematics pool gave jets of pt NaN and n = 0, exit 0."""
    extra = torch.load(student_run / "g" / "flow.pt", weights_only=False)["extra"]
    assert SamplerRecord.from_dict(extra).jet_class == "g"
    for value in (float("nan"), -982.0, 0.0):
        pool = [list(row) for row in extra["jet_kinematics"]]
        pool[3][0] = value
        with pytest.raises(ValueError, match=r"flow\.pt: its generator record holds jets that"):
            SamplerRecord.from_dict({**extra, "jet_kinematics": pool}, "x/flow.pt")


def test_non_finite_jets_are_never_handed_out(student_run, tmp_path):
    gen = load_sampler(student_run, "g")

    def broken(n, g, context):
        particles, mask = gen.sampler(n, g, context)
        return particles.index_fill(1, torch.tensor([0]), float("nan")), mask

    damaged = TrainedSampler(gen.record, broken, gen.kinematics, gen.device, gen.model)
    with pytest.raises(ValueError, match=r"non-finite .* \(nothing was written\)"):
        sampled_jets(damaged, 20)
    assert np.isfinite(sampled_jets(gen, 20).particles).all()
