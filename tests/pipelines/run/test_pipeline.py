"""A tiny two-stage pipeline end to end (g from a JetNet file, t from Pythia8), its resumption,
the direct particle-flow pipeline, and `jetflows sample`."""

import json
import shutil

import h5py
import numpy as np
import pytest
import torch

from jetflows.errors import UserError
from pipelines.cli import main
from pipelines.data.jetnet import read_jetnet_file, write_jetnet_file
from pipelines.run.checkpoints import HASH_KEY, save_checkpoint
from pipelines.run.config import load_config
from pipelines.run.pipeline import run_pipeline
from tests.conftest import TINY_MODELS, assert_one_line_error, random_jets

TINY = [
    *TINY_MODELS,
    "name=tiny",
    "data.split=[0.3, 0.1, 0.6]",
    "data.jobs=2",
    "convae_train.epochs=2",
    "n_generate=200",
    "particle.jet_flow.transforms=2",
    "particle.jet_flow.hidden_features=8",
]
CLASS_FILES = [
    "convae.pt",
    "reconstruction.json",
    "plots/reconstruction_jets.png",
    "plots/reconstruction_correlations.png",
    "flow.pt",
    "history.json",
    "generated.hdf5",
    "real_test.hdf5",
    "metrics.json",
    "report.md",
    "stages.json",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A JetNet-layout g.hdf5 (random jets; the pipeline must take it instead of Pythia)."""
    root = tmp_path_factory.mktemp("jetnet")
    jets = random_jets(600, seed=3)
    write_jetnet_file(root / "g.hdf5", jets)
    return root


def _config(data_dir, *more):
    return load_config("configs/quickstart.yaml", [*TINY, f"data.data_dir={data_dir}", *more])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("runs")
    return run_pipeline(_config(data_dir), root=root, classes=("g", "top"), progress=False)


def test_tiny_pipeline_writes_every_output(tiny_run, data_dir):
    assert (tiny_run / "config.yaml").is_file() and (tiny_run / "summary.md").is_file()
    log = (tiny_run / "pipeline.log").read_text()
    assert "g: convae done in" in log and "t: evaluate done in" in log
    assert f"torch threads: {torch.get_num_threads()}" in log  # the choice, in the log
    assert load_config(tiny_run / "config.yaml") == _config(data_dir)
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert set(summary) == {"g", "t"}
    md = (tiny_run / "summary.md").read_text()
    assert "| g | 120 |" in md and "| t | 120 |" in md and "emd_sum" in md  # 240 test jets / 2
    assert "![summary](summary.png)" in md and (tiny_run / "summary.png").stat().st_size > 5000
    prongs = md.split("are the prongs kept?")[1]  # the ConVAE's reconstruction, per class
    assert "| g |" in prongs and "| t |" in prongs and "r(tau32)" in prongs
    for jet_class in ("g", "t"):
        directory = tiny_run / jet_class
        for name in CLASS_FILES:
            assert (directory / name).is_file(), name
        assert len(list((directory / "plots").glob("*.png"))) >= 10
        results = json.loads((directory / "metrics.json").read_text())
        metrics = results["metrics"]
        assert np.isfinite(metrics["emd_sum"]["value"]) and metrics["emd_sum"]["floor"] > 0
        assert 0 <= metrics["spread_pt"]["value"] and 0.5 < metrics["spread_pt"]["floor"] < 2
        reconstruction = json.loads((directory / "reconstruction.json").read_text())
        assert results["reconstruction"] == reconstruction and reconstruction["n_jets"] == 240
        report = (directory / "report.md").read_text()
        assert "## ConVAE reconstruction" in report and "reconstruction_jets.png" in report
        assert "tau32: W1(reconstructions, other inputs) / W1 floor" in report
        assert set(reconstruction["w1"]) == {"mass", "pt_sum", "tau21", "tau32", "d2"}
        history = json.loads((directory / "history.json").read_text())
        assert [len(history[k]) for k in ("convae", "flow")] == [2, 2]
        for stage in ("convae", "flow"):  # a training curve per stage, linked from the report
            assert (directory / "plots" / f"training_{stage}.png").stat().st_size > 5000
            assert f"plots/training_{stage}.png" in report
        assert {"emd_tau21", "emd_tau32", "emd_d2"} <= set(metrics)
        generated = read_jetnet_file(directory / "generated.hdf5")
        assert generated.particles.shape == (200, 30, 3)
    # g came from the JetNet file (no generation), t from Pythia8
    assert not (tiny_run / "g" / "data.hdf5").exists() and (tiny_run / "t" / "data.hdf5").is_file()


def test_a_rerun_skips_every_finished_stage(tiny_run, data_dir, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    stages = ("run.stages.fit_convae", "run.stages.fit_flow", "evaluation.evaluate.evaluate_to_dir")
    for name in stages:
        monkeypatch.setattr(f"pipelines.{name}", boom)
    monkeypatch.setattr("pipelines.run.pipeline.sampled_jets", boom)
    run_pipeline(_config(data_dir), root=tiny_run.parent, classes=("g",), progress=False)
    log = (tiny_run / "pipeline.log").read_text()
    assert "g: convae up to date" in log and "g: evaluate up to date" in log
    # a class subset keeps every class of the folder in the summary (it kept only g)
    assert set(json.loads((tiny_run / "summary.json").read_text())) == {"g", "t"}
    assert "| t | 120 |" in (tiny_run / "summary.md").read_text()


def test_a_run_with_other_settings_needs_overwrite(tiny_run, tmp_path, capsys):
    """Rerunning a run's name with other settings retrained and replaced its models, config
    and metrics without a word (issue 25 #2): now one line naming the keys, exit 2, nothing
    touched; --overwrite goes ahead."""
    import shutil

    run = shutil.copytree(tiny_run, tmp_path / "tiny")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    config = str(run / "config.yaml")
    argv = ["pipeline", "--config", config, "--runs", str(tmp_path), "--classes", "g", "--quiet"]
    err = assert_one_line_error(
        capsys, [*argv, "--set", "flow_train.epochs=3"], "flow_train.epochs 2 -> 3"
    )
    assert "--overwrite" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert not (run / ".lock").exists()
    assert main([*argv, "--set", "flow_train.epochs=3", "--overwrite"]) == 0
    assert load_config(run / "config.yaml").flow_train.epochs == 3
    assert len(json.loads((run / "g" / "history.json").read_text())["flow"]) == 3


def test_a_per_class_setting_reaches_that_class_only(tiny_run, tmp_path):
    """per_class: t trains its flow for 3 epochs, g keeps the run's 2; only t's flow is
    trained again (its ConVAE and every stage of g stay finished) and the summary says so."""
    run = shutil.copytree(tiny_run, tmp_path / "tiny")
    argv = ["pipeline", "--config", str(run / "config.yaml"), "--runs", str(tmp_path), "--quiet"]
    sets = ["--set", "per_class={top: {flow_train.epochs: 3}}", "--overwrite"]
    assert main([*argv, "--classes", "g,t", *sets]) == 0
    flows = {c: json.loads((run / c / "history.json").read_text())["flow"] for c in "gt"}
    assert (len(flows["g"]), len(flows["t"])) == (2, 3)
    log = (run / "pipeline.log").read_text().rsplit("class g", 1)[1]  # this call's lines
    assert "g: flow up to date" in log and "t: convae up to date" in log
    assert "t: flow done" in log and "g: flow done" not in log
    assert "class t ran with flow_train.epochs=3" in (run / "summary.md").read_text()
    assert load_config(run / "config.yaml").per_class == {"t": {"flow_train.epochs": 3}}


def test_a_run_in_use_is_refused_and_a_stale_lock_is_taken_over(tiny_run, tmp_path, capsys):
    """Two pipelines on one run folder both ran and the last writer won (issue 25 #6)."""
    import os
    import socket
    import subprocess
    import sys

    run = shutil.copytree(tiny_run, tmp_path / "tiny")
    config = str(run / "config.yaml")
    argv = ["pipeline", "--config", config, "--runs", str(tmp_path), "--classes", "g", "--quiet"]
    host = socket.gethostname()
    holder = {"pid": os.getpid(), "host": host, "started": "2026-12-02 10:00:00"}
    (run / ".lock").write_text(json.dumps(holder))  # a live process holds it
    assert_one_line_error(capsys, argv, f"in use by process {os.getpid()} on {host}")
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    (run / ".lock").write_text(json.dumps({**holder, "pid": int(gone.stdout)}))
    assert main(argv) == 0 and not (run / ".lock").exists()  # stale: taken over, released


def test_redrawn_jets_are_scored_again(tiny_run, data_dir, monkeypatch):
    """A deleted generated.hdf5 is drawn again, and then the evaluation must not be skipped
    (its config is unchanged, but the jets it scored are gone)."""
    import pipelines.evaluation.evaluate as ev

    scored = []
    real_evaluate = ev.evaluate_to_dir
    monkeypatch.setattr(
        ev, "evaluate_to_dir", lambda *a, **k: scored.append(1) or real_evaluate(*a, **k)
    )
    (tiny_run / "t" / "generated.hdf5").unlink()
    run_pipeline(_config(data_dir), root=tiny_run.parent, classes=("t",), progress=False)
    assert scored == [1] and (tiny_run / "t" / "generated.hdf5").is_file()


def test_killed_after_convae_resumes_without_retraining(tmp_path, data_dir, monkeypatch):
    import pipelines.run.stages as st

    real_fit_flow = st.fit_flow

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    cfg = _config(data_dir)
    monkeypatch.setattr(st, "fit_flow", killed)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, root=tmp_path, classes=("g",), progress=False)
    directory = tmp_path / "tiny" / "g"
    assert (directory / "convae.pt").is_file() and not (directory / "flow.pt").exists()
    stamp = (directory / "convae.pt").stat().st_mtime_ns

    def no_convae(*args, **kwargs):
        raise AssertionError("the ConVAE was retrained")

    monkeypatch.setattr(st, "fit_convae", no_convae)
    monkeypatch.setattr(st, "fit_flow", real_fit_flow)
    run_pipeline(cfg, root=tmp_path, classes=("g",), progress=False)
    assert (directory / "convae.pt").stat().st_mtime_ns == stamp
    assert (directory / "metrics.json").is_file()


def test_killed_mid_training_resumes_from_the_last_epoch(tmp_path, data_dir, monkeypatch):
    import pipelines.run.pipeline as pl
    import pipelines.run.stages as st

    cfg = _config(data_dir, "convae_train.epochs=3")
    real_save = pl.save_checkpoint
    calls = []

    def die_after_two_epochs(path, state):
        real_save(path, state)
        calls.append(path.name)
        if path.name == "convae.last.pt" and state["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(pl, "save_checkpoint", die_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, root=tmp_path, classes=("g",), progress=False)
    monkeypatch.setattr(pl, "save_checkpoint", real_save)
    directory = tmp_path / "tiny" / "g"
    assert (directory / "convae.last.pt").is_file() and not (directory / "convae.pt").exists()
    epochs = []
    real_fit = st.fit_convae

    def spy(*args, **kwargs):
        epochs.append(kwargs["resume"]["epoch"])
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(st, "fit_convae", spy)
    run_pipeline(cfg, root=tmp_path, classes=("g",), progress=False)
    assert epochs == [2]  # resumed after epoch 2 of 3, not from scratch
    assert "g: resuming convae after epoch 2" in (tmp_path / "tiny" / "pipeline.log").read_text()
    history = json.loads((directory / "history.json").read_text())["convae"]
    assert [row["epoch"] for row in history] == [0, 1, 2]
    assert not (directory / "convae.last.pt").exists()


def test_particle_flow_pipeline(tmp_path, data_dir, capsys):
    cfg = _config(data_dir, "target=particles", "name=direct")
    run = run_pipeline(cfg, root=tmp_path, classes=("g",), progress=False)
    directory = run / "g"
    assert (directory / "jet_flow.pt").is_file() and not (directory / "convae.pt").exists()
    generated = read_jetnet_file(directory / "generated.hdf5")
    assert generated.particles.shape == (200, 30, 3)
    assert (generated.jet_features[:, 3] == generated.mask.sum(1)).all()
    out = tmp_path / "direct_g.hdf5"
    assert (
        main(
            [
                "sample",
                "--n",
                "50",
                "--class",
                "gluon",
                "--run",
                str(run),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert read_jetnet_file(out).particles.shape == (50, 30, 3)
    # not conditioned on kinematics (particle.kinematics is off): a pt cannot be asked for
    argv = ["sample", "--n", "5", "--class", "g", "--run", str(run), "--quiet", "--pt", "900"]
    assert_one_line_error(capsys, [*argv, "--out", str(tmp_path / "x.hdf5")], "not conditioned")
    assert not (tmp_path / "x.hdf5").exists()
    _assert_models_belong_together(run, "jet_flow.pt", tmp_path, capsys)


def _retrained(path):
    """Stand-in for a retrained model: the same checkpoint with other weights."""
    state = torch.load(path, weights_only=False)
    name = next(iter(state["best_state_dict"]))
    state["best_state_dict"][name] = state["best_state_dict"][name] + 0.01
    save_checkpoint(path, state)  # as a retraining writes it (a content hash of its own)


def _assert_models_belong_together(run, first_stage, tmp_path, capsys):
    """A model copied in from another class, or beside another first stage (ConVAE or jet
    flow) than it was fitted on, is refused by `jetflows sample` (issue 14 #1)."""
    copy = tmp_path / "copied"
    shutil.copytree(run / "g", copy / "t")  # g's models in t's folder
    argv = ["sample", "--n", "5", "--run", str(copy), "--quiet", "--out", str(tmp_path / "x.h5")]
    assert_one_line_error(capsys, [*argv, "--class", "t"], "is a model of class 'g', not 't'")
    shutil.copytree(run / "g", copy / "g")
    _retrained(copy / "g" / first_stage)
    assert_one_line_error(capsys, [*argv, "--class", "g"], f"fitted on another {first_stage}")
    assert not (tmp_path / "x.h5").exists()
    assert (
        main([*argv[:-2], "--class", "g", "--run", str(run), "--out", str(tmp_path / "y.h5")]) == 0
    )


def test_a_convae_from_elsewhere_is_refused(tiny_run, tmp_path, capsys):
    _assert_models_belong_together(tiny_run, "convae.pt", tmp_path, capsys)


@pytest.mark.parametrize("name", ["convae.pt", "flow.pt"])
def test_a_checkpoint_without_provenance_is_refused_in_one_line(tiny_run, tmp_path, capsys, name):
    """Checkpoints from before provenance was recorded were sampled with a warning; no release
    wrote them, and a model whose class and inputs cannot be checked is refused (issue 26 #5)."""
    run = tmp_path / "runs" / "tiny"
    shutil.copytree(tiny_run, run)
    state = torch.load(run / "g" / name, weights_only=False)
    del state["provenance"], state[HASH_KEY]
    save_checkpoint(run / "g" / name, state)
    argv = ["sample", "--n", "5", "--class", "g", "--run", str(run), "--quiet"]
    assert_one_line_error(capsys, [*argv, "--out", str(tmp_path / "a.h5")], "records no class")
    assert not (tmp_path / "a.h5").exists()


def test_a_failed_write_is_one_line_and_leaves_nothing(tiny_run, tmp_path):
    """A file size limit (ulimit -f) stops the write: h5py's RuntimeError traceback before
    (issue 25 #23); now one line naming the file and the reason, exit 2, no file left."""
    import subprocess
    import sys

    out = tmp_path / "top.h5"
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000)); "
        "from pipelines.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    argv = ["sample", "--n", "5000", "--class", "t", "--run", str(tiny_run), "--out", str(out)]
    argv.append("--quiet")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"jetflows: error: cannot write {out}: File too large"
    assert list(tmp_path.iterdir()) == []


def test_sample_cli_writes_a_reproducible_jetnet_file(tiny_run, tmp_path):
    outs = [tmp_path / f"top{i}.h5" for i in range(3)]
    for out, seed in zip(outs, (5, 5, 6), strict=True):
        argv = [
            "sample",
            "--n",
            "250",
            "--class",
            "top",
            "--run",
            str(tiny_run),
            "--out",
            str(out),
            "--seed",
            str(seed),
            "--batch-size",
            "100",
            "--quiet",
        ]
        assert main(argv) == 0
    with h5py.File(outs[0]) as f:
        pf, jf = f["particle_features"][:], f["jet_features"][:]
        assert pf.shape == (250, 30, 4) and jf.shape == (250, 4) and f.attrs["jet_class"] == "t"
    jets = read_jetnet_file(outs[0])
    assert np.isfinite(jets.particles).all() and (jets.particles[~jets.mask] == 0).all()
    assert (jf[:, 3] == jets.mask.sum(1)).all() and (jf[:, 0] > 500).all()
    with h5py.File(outs[1]) as f:
        assert np.array_equal(f["particle_features"][:], pf)
    with h5py.File(outs[2]) as f:
        assert not np.array_equal(f["particle_features"][:], pf)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--class", "muon"], "unknown jet class"),
        (["--n", "0"], "--n must be >= 1"),
        (["--class", "w"], "has no model for class 'w'"),
        (["--run", "missing-run"], "no such run directory"),
        (["--device", "tpu"], "unknown device"),
        (["--n", "1000000000000"], "GB free: ask for fewer jets"),
        pytest.param(
            ["--device", "cuda"],
            "no CUDA device",
            marks=pytest.mark.skipif(
                __import__("torch").cuda.is_available(), reason="a GPU is here"
            ),
        ),
    ],
)
def test_sample_bad_input_is_one_line_and_exit_2(tiny_run, tmp_path, capsys, argv, match):
    base = {"--n": "10", "--class": "t", "--run": str(tiny_run), "--out": str(tmp_path / "x.h5")}
    for flag, value in zip(argv[::2], argv[1::2], strict=True):
        base[flag] = value if flag != "--run" else str(tmp_path / value)
    args = ["sample", *[item for pair in base.items() for item in pair], "--quiet"]
    assert_one_line_error(capsys, args, match)
    assert not (tmp_path / "x.h5").exists() and not list(tmp_path.glob(".x.h5*"))


@pytest.mark.parametrize(
    "owned", ["t/flow.pt", "t/real_test.hdf5", "t/metrics.json", "g/new.hdf5", "config.yaml"]
)
def test_sample_never_writes_over_what_the_run_owns(tiny_run, capsys, owned):
    """Only *.pt files were protected: `--out R/t/real_test.hdf5 --overwrite` replaced the
    run's test jets, and the pipeline then called every stage up to date."""
    path = tiny_run / owned
    before = path.read_bytes() if path.exists() else None
    args = ["sample", "--n", "5", "--class", "t", "--run", str(tiny_run), "--out", str(path)]
    assert_one_line_error(capsys, [*args, "--overwrite", "--quiet"], "belongs to the run")
    assert (path.read_bytes() if path.exists() else None) == before


def test_sample_may_write_a_new_file_beside_the_run_s_folders(tiny_run, tmp_path):
    out = tiny_run / "top_generated.hdf5"  # what the main job does
    args = ["sample", "--n", "5", "--class", "t", "--run", str(tiny_run), "--out", str(out)]
    assert main([*args, "--quiet"]) == 0 and read_jetnet_file(out).particles.shape[0] == 5
    out.unlink()


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--config", "missing.yaml"], "no such config file"),
        (["--set", "flow.transformz=3"], "unknown config key flow.transformz"),
        (["--set", "flow.transforms=many"], "expected int"),
        (["--classes", "g,muon"], "unknown jet class"),
        (["--classes", ","], "names no class"),
        (["--set", "device=tpu"], "unknown device 'tpu'"),
        (["--set", "loss.space=latent"], "unknown loss space"),
        (["--set", "loss.feature_weights=[1, -1, 5]"], "3 positive numbers"),
        (["--set", "loss.gamma_tau=-0.5"], "gamma_tau must be a finite number >= 0"),
        pytest.param(
            ["--set", "device=cuda"],
            "no CUDA device",
            marks=pytest.mark.skipif(
                __import__("torch").cuda.is_available(), reason="a GPU is here"
            ),
        ),
    ],
)
def test_pipeline_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, match):
    assert_one_line_error(capsys, ["pipeline", "--runs", str(tmp_path), *argv], match)
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def short_dir(tmp_path_factory):
    """A JetNet-layout g.hdf5 of 50 jets: too few for any pipeline."""
    root = tmp_path_factory.mktemp("short")
    write_jetnet_file(root / "g.hdf5", random_jets(50, seed=5))
    return root


@pytest.mark.parametrize(
    ("sets", "match"),
    [
        (["data.source=jetnet"], "holds 50 jets but data.n_jets asks for 400"),
        (["data.source=jetnet", "classes=[t]"], "t.hdf5: no such file"),
        (["convae_train.lr=.nan"], "convae_train.lr: expected a finite number"),
        (["flow.num_classes=5"], "flow.num_classes must be 0"),
    ],
)
def test_data_and_config_fail_before_anything_is_written(tmp_path, capsys, short_dir, sets, match):
    # TINY's n_jets is 400: the 50-jet file must fail at once, not after training
    sets = [*TINY, f"data.data_dir={short_dir}", *sets]
    argv = ["pipeline", "--runs", str(tmp_path), *(a for s in sets for a in ("--set", s))]
    assert_one_line_error(capsys, argv, match)
    assert not any(tmp_path.iterdir())


def test_a_failed_run_leaves_no_empty_folders(tmp_path, capsys, data_dir, monkeypatch):
    def broken(*args, **kwargs):
        raise UserError("the generator broke")

    monkeypatch.setattr("pipelines.run.pipeline.class_jets", broken)
    sets = [*TINY, f"data.data_dir={data_dir}"]
    argv = ["pipeline", "--runs", str(tmp_path), *(a for s in sets for a in ("--set", s))]
    assert_one_line_error(capsys, argv, "the generator broke")
    assert not any(tmp_path.iterdir())  # no run folder, no config.yaml, no empty class folder
    # a run that already holds work keeps it; only the empty class folder goes
    (tmp_path / "tiny" / "g").mkdir(parents=True)
    (tmp_path / "tiny" / "g" / "convae.pt").write_bytes(b"trained")
    argv += ["--classes", "g,t"]
    monkeypatch.setattr("pipelines.run.pipeline.class_jets", broken)
    assert_one_line_error(capsys, argv, "the generator broke")
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == [
        "config.yaml",
        "g",
        "pipeline.log",
    ]


@pytest.mark.slow
def test_quickstart_full(tmp_path):
    """The README's main job at full size (about 8-9 minutes on 2 cores without a cache)."""
    run = run_pipeline(load_config("configs/quickstart.yaml"), root=tmp_path, progress=False)
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary) == {"g", "q", "t", "w", "z"}
    for c, metrics in summary.items():
        assert np.isfinite(metrics["emd_sum"]["value"]) and metrics["emd_sum"]["floor"] > 0
        # scored at a size where the floor is not noise: >= 1,000 generated vs 1,000 real
        assert json.loads((run / c / "metrics.json").read_text())["n_jets"] >= 1000
    out = tmp_path / "top.h5"
    assert (
        main(
            [
                "sample",
                "--n",
                "10000",
                "--class",
                "top",
                "--run",
                str(run),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert read_jetnet_file(out).particles.shape == (10000, 30, 3)


@pytest.mark.parametrize("target", ["latent", "particles"])
def test_a_kinematics_conditioned_generator_makes_jets_for_the_pt_asked(
    tmp_path, data_dir, capsys, target
):
    """latent.kinematics / particle.kinematics: the flow is conditioned on (log pt, eta);
    `sample --pt` (or a CSV) gives every jet that pt, and the pt changes the jets."""
    option = "latent.kinematics=true" if target == "latent" else "particle.kinematics=true"
    cfg = _config(data_dir, f"target={target}", option, f"name=kin_{target}")
    run = run_pipeline(cfg, root=tmp_path, classes=("g",), progress=False)
    outs = {}
    for pt in (920.0, 1080.0):  # within the fixture jets' 900-1100 GeV
        outs[pt] = tmp_path / f"g_{int(pt)}.hdf5"
        argv = ["sample", "--n", "64", "--class", "g", "--run", str(run), "--quiet"]
        assert main([*argv, "--out", str(outs[pt]), "--pt", str(pt), "--eta", "0.5"]) == 0
        jets = read_jetnet_file(outs[pt])
        assert np.allclose(jets.jet_features[:, 0], pt) and np.allclose(
            jets.jet_features[:, 1], 0.5
        )
    low, high = (read_jetnet_file(outs[pt]).particles for pt in (920.0, 1080.0))
    assert not np.allclose(low, high)  # same seed, other condition: other jets
    table = tmp_path / "kin.csv"
    table.write_text("900,0.1\n1100,-0.2\n1000,0.0\n")
    out = tmp_path / "g_table.hdf5"
    argv = ["sample", "--n", "3", "--class", "g", "--run", str(run), "--quiet", "--out", str(out)]
    capsys.readouterr()
    assert main([*argv, "--kinematics", str(table)]) == 0
    np.testing.assert_allclose(read_jetnet_file(out).jet_features[:, 0], [900, 1100, 1000])
    # 900 and 1100 lie just beyond the fixture's training range: one warning line, with it
    warned = capsys.readouterr().err.strip().splitlines()
    assert len(warned) == 1 and "an extrapolation" in warned[0], warned
    other = ["sample", "--n", "4", "--class", "g", "--run", str(run), "--out", str(out) + "4"]
    assert_one_line_error(capsys, [*other, "--kinematics", str(table)], "has 3 rows, --n is 4")
    # far outside the training jets' (pt, eta): refused, naming the range; no file
    for asked in (["--pt", "1e30"], ["--pt", "1e-30"], ["--pt", "1000", "--eta", "1e30"]):
        bad = [*argv[:-1], str(tmp_path / "far.hdf5"), *asked]
        assert_one_line_error(capsys, bad, "this generator was trained on jets of")
        assert not (tmp_path / "far.hdf5").exists()
    bad = [*argv[:-1], str(tmp_path / "far.hdf5"), "--eta", "0.5"]
    assert_one_line_error(capsys, bad, "--eta needs --pt")


def test_a_conditional_convae_runs_through_the_pipeline_and_sample(tmp_path, data_dir):
    """convae.condition: the flow samples the decoder's (tau21, tau32) with the latent, the
    checkpoint keeps their scale, and `jetflows sample` draws from the stored models; in log
    pt_rel (standard_log_pt, the Chamfer on those features) every sampled particle is real."""
    sets = ["normalization=standard_log_pt", "loss.space=normalized", "loss.alpha=0.03"]
    cfg = _config(data_dir, "convae.condition=[tau21, tau32]", "name=told", *sets)
    run = run_pipeline(cfg, root=tmp_path, classes=("g",), progress=False)
    vae = torch.load(run / "g" / "convae.pt", weights_only=False)
    assert vae["normalization"]["log"] == [2]
    assert vae["model_config"]["condition"] in (["tau21", "tau32"], ("tau21", "tau32"))
    scale = vae["best_state_dict"]["condition_mean"]
    assert scale.shape == (2,) and ((scale > 0.1) & (scale < 1)).all()  # real jets' ratios
    flow = torch.load(run / "g" / "flow.pt", weights_only=False)
    latent_dim = cfg.convae.latent_dim
    assert flow["features"] == latent_dim + 3 + 2  # z, n, mass, sum pt, tau21, tau32
    out = tmp_path / "told.hdf5"
    argv = ["sample", "--n", "64", "--class", "g", "--run", str(run), "--quiet", "--out", str(out)]
    assert main(argv) == 0
    jets = read_jetnet_file(out)
    assert jets.particles.shape == (64, 30, 3) and np.isfinite(jets.particles).all()
    assert (jets.particles[..., 2][jets.mask] > 0).all()


def test_sigterm_to_sample_cleans_up_and_exits_143(tiny_run, tmp_path):
    """What a batch scheduler sends: the temporary file goes, one line, status 143."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).parents[3]
    out = tmp_path / "big.hdf5"
    command = [sys.executable, "-m", "pipelines.cli", "sample", "--n", "2000000", "--class"]
    command += ["t", "--run", str(tiny_run), "--out", str(out), "--batch-size", "1000"]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, cwd=root, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".big.hdf5.tmp-*")) and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    lines = [line for line in err.splitlines() if "jetflows:" in line]
    assert proc.returncode == 143 and lines == [
        "jetflows: terminated (SIGTERM); no partial output was written"
    ], err[-500:]
    assert not out.exists() and not list(tmp_path.glob(".big.hdf5*"))


def test_a_flow_fitted_on_a_lost_convae_is_fitted_again(tiny_run, data_dir, tmp_path):
    """convae.pt retrained after its file was lost (same config, other weights): the complete
    flow.pt was fitted on the old one, so it is fitted again, and sample accepts the pair."""
    run = tmp_path / "runs" / "tiny"
    shutil.copytree(tiny_run, run)
    _retrained(run / "g" / "convae.pt")
    run_pipeline(_config(data_dir), root=run.parent, classes=("g",), progress=False)
    assert (
        "g: flow was fitted on other inputs, training it again"
        in (run / "pipeline.log").read_text()
    )
    argv = ["sample", "--n", "5", "--class", "g", "--run", str(run), "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "x.h5")]) == 0


def test_a_partial_checkpoint_that_cannot_resume_trains_from_scratch(tiny_run, data_dir, tmp_path):
    run = tmp_path / "runs" / "tiny"
    shutil.copytree(tiny_run, run)
    stages = json.loads((run / "g" / "stages.json").read_text())
    state = torch.load(run / "g" / "convae.pt", weights_only=False)
    state["gamma_2"] += 1.0  # its settings differ from what it would resume with
    del state[HASH_KEY]
    save_checkpoint(run / "g" / "convae.last.pt", state)
    (run / "g" / "convae.pt").unlink()
    assert state["stage_key"] == stages["convae"]
    run_pipeline(_config(data_dir), root=run.parent, classes=("g",), progress=False)
    assert "g: cannot resume convae" in (run / "pipeline.log").read_text()
    assert (run / "g" / "convae.pt").is_file() and not (run / "g" / "convae.last.pt").exists()


@pytest.mark.parametrize("size", ["convae.latent_dim=100000000", "flow.hidden_features=10000000"])
def test_an_impossible_model_size_is_one_line_before_any_allocation(
    tmp_path, capsys, data_dir, size
):
    """A 10^8-wide latent or flow layer: a torch out-of-memory traceback before (issue 25
    #17); now one line naming the model and the memory, exit 2, no checkpoint of it."""
    sets = [*TINY, f"data.data_dir={data_dir}", size]
    argv = ["pipeline", "--runs", str(tmp_path), "--classes", "g", "--quiet"]
    argv += [a for s in sets for a in ("--set", s)]
    assert_one_line_error(capsys, argv, "make its sizes smaller")
    assert not list(tmp_path.rglob("flow*.pt"))  # (the ConVAE before a too-large flow trains)


def test_a_diverged_training_is_one_line_naming_the_model_epoch_and_cure(
    tmp_path, capsys, data_dir
):
    """A learning rate of 1e30 makes the ConVAE's loss inf in its first epoch: one line, exit
    2, that names the model, the epoch and what to change (it was a FloatingPointError
    traceback)."""
    sets = [
        *TINY,
        f"data.data_dir={data_dir}",
        "convae_train.lr=1e30",
        "convae_train.clip_norm=null",
    ]
    argv = ["pipeline", "--runs", str(tmp_path), "--classes", "g", "--quiet"]
    argv += [a for s in sets for a in ("--set", s)]
    err = assert_one_line_error(capsys, argv, "lower the learning rate")
    assert "ConVAE" in err or "convae" in err
    assert "epoch" in err


def test_a_damaged_stage_record_is_one_line_naming_it(tiny_run, data_dir, tmp_path, capsys):
    """A truncated stages.json: one line naming the file (it was json's bare "Expecting
    value: line 1 column 1"), exit 2. (A damaged metrics.json is simply scored again.)"""
    import shutil

    run = shutil.copytree(tiny_run, tmp_path / "tiny")
    (run / "g" / "stages.json").write_text("{")
    config = str(run / "config.yaml")  # the run's own settings
    argv = ["pipeline", "--config", config, "--runs", str(tmp_path), "--classes", "g", "--quiet"]
    assert_one_line_error(capsys, argv, "stages.json: not valid JSON")
