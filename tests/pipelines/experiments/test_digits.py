"""The pipeline on sparse digits (embedded drawn digits): per loss of the research code's
eq. 1/2/3, reconstructions resemble their own inputs more than other digits (a collapsed
ConVAE does not), images and metrics are written, and a rerun resumes."""

import json

import numpy as np
import pytest
import yaml

from pipelines.cli import main
from pipelines.data.jetnet import Jets
from pipelines.experiments.digits import reconstruction_figures
from tests.conftest import assert_one_line_error

TINY = {
    "name": "tiny_digits",
    "digits": [8],
    "pixels": 25,
    "n_images": 800,
    "overrides": [
        "convae.n_filter=8",
        "convae.dense_width=64",
        "convae.latent_dim=8",
        "convae_train.epochs=60",
        "convae_train.batch_size=32",
        "convae_train.lr=1e-3",
        "loss.weighting=beta_vae",
        "loss.beta=1e-4",
        "flow.transforms=2",
        "flow.hidden_features=16",
        "flow_train.epochs=5",
    ],
}


def _config(tmp_path, **changes):
    path = tmp_path / "digits.yaml"
    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return path


@pytest.mark.parametrize("loss", ["chamfer_positions", "nearest_position", "intensity_axis"])
def test_sparse_digits_reconstruct_their_own_input(tmp_path, capsys, monkeypatch, loss):
    config = _config(tmp_path, losses=[loss])
    argv = ["digits", "--config", str(config), "--runs", str(tmp_path), "--quiet"]
    assert main(argv) == 0
    cell = tmp_path / "tiny_digits" / "8" / loss
    metrics = json.loads((cell / "metrics.json").read_text())
    # nearer its own input than another digit's: a collapsed ConVAE scores ~1
    assert metrics["reconstruction"]["chamfer_ratio"] < 0.8, metrics["reconstruction"]
    for row in metrics["generation"].values():
        assert np.isfinite(row["value"]) and row["floor"] > 0
    for name in ("reconstructions", "generated", "mean_images"):
        assert (cell / "plots" / f"{name}.png").stat().st_size > 3000
    assert "reconstructions.png" in (cell / "report.md").read_text()
    assert f"8/{loss}" in capsys.readouterr().out

    def no_training(*args, **kwargs):
        raise AssertionError("a finished model was trained again")

    monkeypatch.setattr("pipelines.experiments.digits.run_cell", no_training)
    assert main(argv) == 0  # read back


def test_a_collapsed_reconstruction_scores_about_one():
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 1, (200, 25, 3)).astype(np.float32)
    mask = np.ones((200, 25), bool)
    test = Jets(points, mask, np.zeros((200, 4), np.float32), np.zeros(200))
    collapsed = Jets(np.repeat(points[:1], 200, 0), mask, test.jet_features, test.labels)
    assert reconstruction_figures(test, collapsed)["chamfer_ratio"] > 0.9
    assert reconstruction_figures(test, test)["chamfer_ratio"] < 1e-5


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"digits": [10]}, "digit must be 0-9"),
        ({"source": "emnist"}, "unknown source 'emnist'"),
        ({"source": "mnist"}, "source mnist needs mnist_dir"),
        ({"pixels": 0}, "pixels must be in 1..784"),
        ({"losses": ["l1"]}, "losses must name losses"),
        ({"overrides": ["convae.filterz=3"]}, "unknown config key convae.filterz"),
        ({"n_images": 50}, ">= 20 test images"),
        ({"name": "../escaped"}, "name '../escaped' must be a plain folder name"),
        ({"name": "/tmp/escaped"}, "must be a plain folder name"),
    ],
)
def test_bad_digits_config_is_one_line_and_exit_2(tmp_path, capsys, changes, match):
    argv = ["digits", "--config", str(_config(tmp_path, **changes)), "--runs", str(tmp_path / "r")]
    assert_one_line_error(capsys, argv, match)
    assert not (tmp_path / "r").exists()


def test_a_digits_name_equal_to_a_pipeline_run_is_refused(tmp_path, capsys):
    """digits with the name of an existing run replaced that run's summary.md and
    summary.json without a word (issue 25 #4)."""
    name = yaml.safe_load(_config(tmp_path).read_text()).get("name", "sparse_digits")
    run = tmp_path / "r" / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("name: x\n")
    (run / "summary.md").write_text("the run's summary")
    argv = ["digits", "--config", str(_config(tmp_path)), "--runs", str(tmp_path / "r")]
    assert_one_line_error(capsys, argv, "holds something else than a digits run")
    assert (run / "summary.md").read_text() == "the run's summary"
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "summary.md"]
