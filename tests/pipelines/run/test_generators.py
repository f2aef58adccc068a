"""The generator registry: every registered generator trains, samples and resumes at tiny size
through the one pipeline, and `jetflows sample` rebuilds it from its checkpoints alone."""

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
from pipelines.run.generators import GENERATORS, load_sampler
from pipelines.run.pipeline import run_pipeline
from pipelines.run.sample import sampled_jets
from pipelines.run.targets import TARGETS
from tests.conftest import TINY_MODELS, assert_one_line_error, random_jets

TINY = [
    *TINY_MODELS,
    "name=tiny",
    "classes=[g]",
    "data.split=[0.3, 0.1, 0.6]",
    "convae_train.epochs=2",
    "flow_train.epochs=3",
    "n_generate=200",
    "evaluate.n_jets=100",
    "particle.jet_flow.transforms=2",
    "particle.jet_flow.hidden_features=8",
    "particle.centroid=false",
    "particle.kinematics=true",
    "set_flow.network=transformer",
    "set_flow.width=16",
    "set_flow.layers=1",
    "set_flow.heads=2",
    "set_flow.steps=3",
]


def test_the_config_targets_are_the_registry():
    assert set(TARGETS) == set(GENERATORS)
    for gen in GENERATORS.values():
        assert gen.checkpoints[0][0] == "flow.pt" and gen.space


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("jetnet")
    write_jetnet_file(root / "g.hdf5", random_jets(600, seed=4))
    return root


@pytest.mark.parametrize("target", sorted(GENERATORS))
def test_every_generator_trains_samples_and_resumes(target, data_dir, tmp_path, monkeypatch):
    cfg = load_config(
        "configs/quickstart.yaml", [*TINY, f"data.data_dir={data_dir}", f"target={target}"]
    )
    saves = []

    def killed_after_an_epoch(path, state):  # the final stage dies after writing epoch 2
        save_checkpoint(path, state)
        saves.append(path.name)
        if saves.count("flow.last.pt") == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr("pipelines.run.pipeline.save_checkpoint", killed_after_an_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, root=tmp_path, progress=False)
    assert (tmp_path / "tiny" / "g" / "flow.last.pt").is_file()
    monkeypatch.undo()
    run = run_pipeline(cfg, root=tmp_path, progress=False)
    log = (run / "pipeline.log").read_text()
    assert "g: resuming flow after epoch 2" in log
    history = json.loads((run / "g" / "history.json").read_text())
    assert len(history["flow"]) == 3 and not (run / "g" / "flow.last.pt").exists()
    for name, _ in GENERATORS[target].checkpoints:
        assert (run / "g" / name).is_file()

    jets = sampled_jets(load_sampler(run, "g"), 300, seed=1)
    assert jets.particles.shape == (300, 30, 3) and np.isfinite(jets.particles).all()
    assert (jets.particles[~jets.mask] == 0).all() and (jets.particles[..., 2][jets.mask] > 0).all()
    n = jets.mask.sum(1)
    mass = jets.jet_features[:, 2]
    # generated jets vary (a generator collapsed onto one jet fails): many multiplicities
    # and masses spread like the training jets' (random jets: std/mean ~0.5)
    assert len(np.unique(n)) >= 5 and mass.std() / mass.mean() > 0.1
    metrics = json.loads((run / "g" / "metrics.json").read_text())["metrics"]
    assert np.isfinite(metrics["w1m"]["value"])


@pytest.fixture(scope="module")
def cloud_run(data_dir, tmp_path_factory):
    cfg = load_config(
        "configs/quickstart.yaml", [*TINY, f"data.data_dir={data_dir}", "target=cloud"]
    )
    return run_pipeline(cfg, root=tmp_path_factory.mktemp("cloud"), progress=False)


def test_sample_takes_a_set_flows_solver_steps_and_precision(cloud_run, tmp_path, capsys):
    calls = []
    base = ["sample", "--run", str(cloud_run), "--class", "g", "--n", "50", "--quiet"]
    for extra in ([], ["--steps", "1", "--solver", "euler"], ["--precision", "bf16"]):
        out = tmp_path / f"{len(extra)}.hdf5"
        assert main([*base, "--out", str(out), *extra]) == 0
        with h5py.File(out) as f:
            calls.append((f["particle_features"][:], dict(f.attrs)))
    assert calls[1][1]["sampling_steps"] == 1 and calls[1][1]["sampling_solver"] == "euler"
    assert not np.allclose(calls[0][0], calls[1][0])  # another integration, other jets
    # the same integration in bfloat16: the same jets up to rounding
    assert calls[2][1]["sampling_precision"] == "bf16" and calls[2][0].dtype == np.float32
    assert not np.array_equal(calls[0][0], calls[2][0])
    totals = [c[0][..., :3].sum(1) for c in (calls[0], calls[2])]  # (N, 3): order-free
    assert np.allclose(*totals, atol=0.05)
    out = tmp_path / "pt.hdf5"
    assert main([*base, "--out", str(out), "--pt", "1100", "--eta", "0.3"]) == 0
    with h5py.File(out) as f:  # jets generated for the kinematics asked for
        assert np.allclose(f["jet_features"][:, :2], [1100, 0.3])
    capsys.readouterr()
    bad_options = (
        (["--solver", "dopri9"], "sampling option solver (--solver): unknown solver 'dopri9'"),
        (["--precision", "fp8"], "sampling option precision (--precision): unknown precision"),
    )
    for bad, match in bad_options:
        assert_one_line_error(capsys, [*base, "--out", str(tmp_path / "x.hdf5"), *bad], match)
    assert not (tmp_path / "x.hdf5").exists()


def test_a_set_flow_checkpoint_beside_another_jet_flow_is_refused(cloud_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(cloud_run, run)
    state = torch.load(run / "g" / "jet_flow.pt", weights_only=False)
    state["best_state_dict"] = {k: v + 1 for k, v in state["best_state_dict"].items()}
    save_checkpoint(run / "g" / "jet_flow.pt", state)
    with pytest.raises(ValueError, match=r"was fitted on another jet_flow\.pt"):
        load_sampler(run, "g")


def test_new_ode_steps_sample_again_without_retraining(cloud_run, data_dir):
    cfg = load_config(
        "configs/quickstart.yaml",
        [*TINY, f"data.data_dir={data_dir}", "target=cloud", "set_flow.steps=2"],
    )
    run = run_pipeline(cfg, root=cloud_run.parent, progress=False, overwrite=True)
    log = (run / "pipeline.log").read_text().split("class g")[-1]
    assert "g: flow up to date" in log and "g: generate done" in log
    # and `jetflows sample` now integrates as the evaluation did
    assert torch.load(run / "g" / "flow.pt", weights_only=False)["set_flow_config"]["steps"] == 2


def test_a_guide_is_trained_beside_a_finished_set_flow_and_guides_sampling(
    cloud_run, data_dir, tmp_path, capsys
):
    shutil.copytree(cloud_run, tmp_path / "tiny")
    more = [
        "target=cloud",
        "set_flow.guide_epochs=1",
        "set_flow.guide_width=8",
        "set_flow.guidance=3",
    ]
    cfg = load_config("configs/quickstart.yaml", [*TINY, f"data.data_dir={data_dir}", *more])
    run = run_pipeline(cfg, root=tmp_path, progress=False, overwrite=True)
    log = (run / "pipeline.log").read_text().split("class g")[-1]
    assert "g: flow up to date" in log  # the guide's epochs do not retrain the flow
    guide = torch.load(run / "g" / "guide.pt", weights_only=False)
    assert len(guide["history"]) == 1 and guide["provenance"]["jet_class"] == "g"
    assert guide["set_flow_config"]["width"] == 8 and guide["set_flow_config"]["guidance"] == 1
    # another guide: the guide alone is trained again, and the jets are drawn again
    cfg = load_config(
        "configs/quickstart.yaml",
        [*TINY, f"data.data_dir={data_dir}", *more, "set_flow.guide_width=4"],
    )
    again = run_pipeline(cfg, root=tmp_path, progress=False, overwrite=True)
    log = (again / "pipeline.log").read_text().split("class g")[-1]
    assert "g: flow up to date" in log and "g: guide done" in log and "g: generate done" in log
    files = {}
    for name, run_dir, extra in (
        ("guided", run, []),  # the config's guidance 3
        ("unguided", run, ["--guidance", "1"]),
        ("before", cloud_run, ["--steps", "3"]),  # TINY's (another test may change it)
    ):
        files[name] = tmp_path / f"{name}.hdf5"
        args = ["sample", "--run", str(run_dir), "--class", "g", "--n", "50", "--quiet"]
        assert main([*args, "--out", str(files[name]), *extra]) == 0
    jets = {}
    for name, path in files.items():
        with h5py.File(path) as f:
            jets[name] = f["particle_features"][:]
    assert np.array_equal(jets["unguided"], jets["before"])  # the same flow, unguided
    assert not np.allclose(jets["guided"], jets["unguided"])
    # a run without a guide refuses guidance in one line, and writes nothing
    out = tmp_path / "x.hdf5"
    args = ["sample", "--run", str(cloud_run), "--class", "g", "--n", "50", "--out", str(out)]
    assert_one_line_error(capsys, [*args, "--guidance", "2"], "guide.pt")
    assert_one_line_error(capsys, [*args, "--guidance-from", "1.5"], "--guidance-from")
    assert_one_line_error(capsys, [*args, "--guidance-until", "1.5"], "--guidance-until")
    assert not out.exists()
    # a damaged guide blocks only guided sampling
    (run / "g" / "guide.pt").write_bytes(b"not a checkpoint")
    args = ["sample", "--run", str(run), "--class", "g", "--n", "50", "--out", str(out)]
    line = assert_one_line_error(capsys, args, "guide.pt")  # the run's config guides
    assert "not a readable checkpoint" in line  # why it is left out, not only "missing"
    assert main([*args, "--guidance", "1", "--quiet"]) == 0 and out.is_file()
    # issue 39 #14: a copy of flow.pt is not a guide (guided sampling equalled unguided), and a
    # guidance window on an unguided model is said, not ignored
    shutil.copy(run / "g" / "flow.pt", run / "g" / "guide.pt")
    assert_one_line_error(capsys, [*args, "--overwrite"], "the same model as flow.pt")
    window = ["--guidance", "1", "--guidance-from", "0.5", "--overwrite"]
    line = assert_one_line_error(capsys, [*args, *window], "")
    assert "--guidance-from set when guidance acts, but this model samples unguided" in line
    # a config that trains no guide removes the run's old one
    cfg = load_config(
        "configs/quickstart.yaml", [*TINY, f"data.data_dir={data_dir}", "target=cloud"]
    )
    run_pipeline(cfg, root=tmp_path, progress=False, overwrite=True)
    assert not (run / "g" / "guide.pt").exists()


def test_guidance_is_chosen_per_class_on_validation_jets_and_kept_for_sampling(data_dir, tmp_path):
    settings = "calibrate.settings=[{guidance: 1.0}, {guidance: 4.0, guidance_from: 0.2}]"
    more = [
        "target=cloud",
        "data.n_jets=600",
        "data.split=[0.3, 0.3, 0.4]",  # 180 validation jets: the calibration needs >= 100
        "set_flow.guide_epochs=1",
        "set_flow.guide_width=8",
    ]
    base = [*TINY, f"data.data_dir={data_dir}", *more]
    cfg = load_config("configs/quickstart.yaml", [*base, settings])
    run = run_pipeline(cfg, root=tmp_path, progress=False)
    log = (run / "pipeline.log").read_text()
    assert "g: calibrate done" in log
    result = json.loads((run / "g" / "calibration.json").read_text())
    rows = result["settings"]
    assert [r["setting"] for r in rows] == [dict(s) for s in cfg.calibrate.settings]
    assert result["chosen"] == min(rows, key=lambda r: r["worst"])["setting"]
    assert rows[0]["ratios"] != rows[1]["ratios"]  # each setting drew its own jets
    assert result["n_jets"] == 180
    # the evaluation drew its jets with the choice, and jetflows sample draws with it too
    stored = torch.load(run / "g" / "flow.pt", weights_only=False)["set_flow_config"]
    assert {k: stored[k] for k in result["chosen"]} == result["chosen"]
    out = tmp_path / "sampled.hdf5"
    args = ["sample", "--run", str(run), "--class", "g", "--n", str(cfg.n_generate)]
    assert main([*args, "--seed", str(cfg.data.seed), "--out", str(out), "--quiet"]) == 0
    with h5py.File(out) as f, h5py.File(run / "g" / "generated.hdf5") as g:
        assert np.array_equal(f["particle_features"][:], g["particle_features"][:])
    metrics = json.loads((run / "g" / "metrics.json").read_text())
    assert metrics["calibration"]["chosen"] == result["chosen"]
    assert "chosen on the validation jets" in (run / "g" / "report.md").read_text()
    assert "chosen on the validation jets" in (run / "summary.md").read_text()
    # the same config again: nothing is calibrated, drawn or scored again
    again = run_pipeline(cfg, root=tmp_path, progress=False)
    log = (again / "pipeline.log").read_text().split("class g")[-1]
    assert "g: calibrate up to date" in log and "g: generate up to date" in log
    assert "g: evaluate done" not in log
    # a calibration.json edited by hand is refused, naming it (issue 39 #9: a string was exit
    # 1; a setting never tried was written into flow.pt, then the summary crashed)
    path, kept = run / "g" / "calibration.json", (run / "g" / "calibration.json").read_text()
    flow_before = (run / "g" / "flow.pt").read_bytes()
    for chosen in ("x", ["guidance", 1.0], None, {"guidance": 5, "steps": 1}):
        path.write_text(json.dumps({**result, "chosen": chosen}))
        with pytest.raises(
            ValueError, match=r"calibration\.json: its chosen setting .* is not one"
        ):
            run_pipeline(cfg, root=tmp_path, progress=False)
    assert (run / "g" / "flow.pt").read_bytes() == flow_before
    path.write_text(kept)
    # another criterion: calibrated and reported again, whatever it chooses
    observables = "calibrate.observables=[mass, tau32]"
    cfg = load_config("configs/quickstart.yaml", [*base, settings, observables])
    again = run_pipeline(cfg, root=tmp_path, progress=False, overwrite=True)
    log = (again / "pipeline.log").read_text().split("class g")[-1]
    assert "g: calibrate done" in log and "g: evaluate done" in log
    metrics = json.loads((run / "g" / "metrics.json").read_text())
    assert metrics["calibration"]["observables"] == ["mass", "tau32"]
    # no calibration: the old choice is removed with its file
    cfg = load_config("configs/quickstart.yaml", base)
    run_pipeline(cfg, root=tmp_path, progress=False, overwrite=True)
    assert not (run / "g" / "calibration.json").exists()
    assert "calibration" not in json.loads((run / "g" / "metrics.json").read_text())


def test_a_partial_checkpoint_of_another_target_is_not_resumed(data_dir, tmp_path, monkeypatch):
    def killed(path, state):  # the particle flow dies after its first epoch
        save_checkpoint(path, state)
        if path.name == "flow.last.pt":
            raise KeyboardInterrupt

    base = [*TINY, f"data.data_dir={data_dir}"]
    monkeypatch.setattr("pipelines.run.pipeline.save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(
            load_config("configs/quickstart.yaml", [*base, "target=particles"]),
            root=tmp_path,
            progress=False,
        )
    monkeypatch.undo()
    cfg = load_config("configs/quickstart.yaml", [*base, "target=cloud"])
    run = run_pipeline(cfg, root=tmp_path, progress=False, overwrite=True)
    assert "g: not resuming flow" in (run / "pipeline.log").read_text()
    assert load_sampler(run, "g").record.target == "cloud"


def test_a_directory_where_a_class_model_belongs_is_named(tmp_path):
    """It said "no model for class 't' ... it has ['t']"."""
    from pipelines.run.generators import class_dir

    (tmp_path / "t" / "flow.pt").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"t/flow\.pt is a directory, not a model checkpoint"):
        class_dir(tmp_path, "t")
