"""The loss x metric study (a tiny one, end to end and resumed) and the wavelet EMD against the
exact EMD."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import pearsonr

from pipelines.cli import main
from pipelines.data.jetnet import write_jetnet_file
from pipelines.evaluation.wavelet import exact_image_emd, jet_images, wavelet_emd
from pipelines.experiments.study import METRICS
from tests.conftest import TINY_MODELS, assert_one_line_error, random_jets

ROOT = Path(__file__).parents[3]


def _blobs(rng, n=16, k=3):
    """An image of k Gaussian blobs, small values cut (sparse, like a jet image)."""
    ys, xs = np.mgrid[:n, :n]
    image = np.zeros((n, n))
    for _ in range(k):
        cy, cx = rng.uniform(2, n - 2, 2)
        width, weight = rng.uniform(0.7, 2.5), rng.uniform(0.2, 1)
        image += weight * np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * width**2))
    image[image < 1e-3 * image.max()] = 0
    return image


def test_wavelet_emd_tracks_the_exact_emd():
    rng = np.random.default_rng(0)
    pairs = [(_blobs(rng), _blobs(rng)) for _ in range(40)]
    exact = np.array([exact_image_emd(p, q) for p, q in pairs])
    approx = np.array([wavelet_emd(p, q) for p, q in pairs])
    ratio = approx / exact
    assert pearsonr(approx, exact)[0] > 0.75  # a shuffled pairing gives ~0
    assert ratio.std() / ratio.mean() < 0.3  # equal to the EMD up to a constant factor
    # a point moved further costs more, and nothing costs nothing
    point = np.zeros((16, 16))
    point[8, 2] = 1
    moved = [np.roll(point, d, axis=1) for d in (1, 3, 7, 12)]
    costs = [wavelet_emd(point, m) for m in moved]
    assert costs == sorted(costs) and wavelet_emd(point, point) == 0
    with pytest.raises(ValueError, match="one shape"):
        wavelet_emd(point, point[:8])


def test_jet_images_are_pt_weighted_and_normalized():
    jets = random_jets(50, seed=1)
    images = jet_images(jets.particles, jets.mask, bins=8, extent=2.0)
    assert images.shape == (50, 8, 8)
    np.testing.assert_allclose(images.sum((1, 2)), 1.0, rtol=1e-6)
    # the hardest particle's pixel holds its share of the jet's pt
    eta, phi, pt = jets.particles[0, 0]
    edges = np.linspace(-2, 2, 9)
    i, j = np.digitize(eta, edges) - 1, np.digitize(phi, edges) - 1
    share = pt / jets.particles[0, jets.mask[0], 2].sum()
    assert images[0, i, j] >= share * (1 - 1e-6)


@pytest.fixture(scope="module")
def study_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    write_jetnet_file(root / "g.hdf5", random_jets(600, seed=7))
    config = {
        "study": "tiny",
        "base": str(ROOT / "configs/quickstart.yaml"),
        "overrides": [
            *TINY_MODELS,
            "data.source=jetnet",
            f"data.data_dir={root}",
            "data.n_jets=600",
            "data.split=[0.3, 0.1, 0.6]",
            "convae_train.epochs=2",
        ],
        "classes": ["g"],
        "losses": ["chamfer", "chamfer_positions"],
        "n_jets": 150,
        "image_bins": 8,
    }
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_tiny_study_end_to_end_and_resumed(study_config, tmp_path, capsys, monkeypatch):
    argv = ["study", "--config", str(study_config), "--root", str(tmp_path), "--quiet"]
    assert main(argv) == 0
    out = tmp_path / "tiny"
    results = json.loads((out / "results.json").read_text())
    cells = results["cells"]["g"]
    assert set(cells) == {"chamfer", "chamfer_positions"}
    for rows in cells.values():
        assert set(rows) == {*METRICS, "n_jets"} and rows["n_jets"]["value"] == 150
        assert all(np.isfinite(rows[m]["value"]) for m in METRICS)
        assert rows["recon_emd"]["floor"] is None and rows["w1m"]["floor"] > 0
    # two different losses train two different models
    assert cells["chamfer"]["recon_emd"] != cells["chamfer_positions"]["recon_emd"]
    tau = results["kendall_tau"]
    assert tau["w1m"]["w1m"] == pytest.approx(1.0)  # a metric agrees with itself
    assert {-1.0, 1.0} >= {round(tau["w1m"]["fpd"], 6)}  # two losses: agree or disagree
    md = (out / "results.md").read_text()
    assert "| chamfer |" in md and "Kendall" in md and "Best loss per metric" in md
    assert (out / "heatmap.png").stat().st_size > 5000 and (out / "kendall.png").is_file()
    assert "results.json, results.md" in capsys.readouterr().out

    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr("pipelines.experiments.study.score_cell", no_training)
    assert main(argv) == 0  # every cell read back
    assert json.loads((out / "results.json").read_text())["cells"] == results["cells"]
    (out / "g" / "chamfer_positions.json").unlink()
    monkeypatch.undo()
    assert main(argv) == 0  # only the missing cell again
    assert (
        json.loads((out / "results.json").read_text())["cells"]["g"]["chamfer"] == cells["chamfer"]
    )


def test_a_study_says_how_many_jets_it_scored(study_config, tmp_path, capsys):
    """n_jets 400 asked of a test split of 360 jets: 180 per sample (two real halves for the
    floor). It said 400 in results.md (issue 25 #7); now it warns and says what was used."""
    config = {**yaml.safe_load(study_config.read_text()), "n_jets": 400, "losses": ["chamfer"]}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["study", "--config", str(path), "--root", str(tmp_path), "--quiet"]) == 0
    assert "warning: g: n_jets 400 asked, 180 used" in capsys.readouterr().err
    md = (tmp_path / "tiny" / "results.md").read_text()
    assert "two disjoint real samples of 180 jets (asked: 400" in md


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"losses": ["chamfer", "l2"]}, "losses must name particle losses"),
        ({"image_bins": 12}, "image_bins must be a power of 2"),
        ({"classes": ["muon"]}, "unknown jet class"),
        ({"n_jets": 10}, "n_jets must be >= 100"),
        ({"colour": "red"}, "unknown config key colour"),
        ({"base": "missing.yaml"}, "base config missing.yaml not found"),
        ({"overrides": ["flow.transformz=2"]}, "unknown config key flow.transformz"),
        ({"study": "../escaped"}, "study '../escaped' must be a plain folder name"),
    ],
)
def test_bad_study_input_is_one_line_and_exit_2(study_config, tmp_path, capsys, change, match):
    config = {**yaml.safe_load(study_config.read_text()), **change}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = ["study", "--config", str(path), "--root", str(tmp_path / "out"), "--quiet"]
    assert_one_line_error(capsys, argv, match)
    assert not (tmp_path / "out").exists()


def test_undefined_ratios_rank_last_and_leave_tau_undefined():
    from pipelines.experiments.study import _best, kendall_matrix

    def rows(ratio):  # every metric with this ratio (None: a floor of 0, read back from JSON)
        return {
            m: {"value": 1.0, "floor": 1.0 if ratio is not None else 0.0, "ratio": ratio}
            for m in METRICS
        }

    losses = {"a": rows(None), "b": rows(2.0), "c": rows(1.0)}
    assert _best(losses, "w1m") == "c" and _best(losses, "cov") == "b"  # cov: higher is better
    tau = kendall_matrix({"t": losses})
    assert np.isnan(tau).all()  # a ranking with an undefined entry says nothing
    tau = kendall_matrix({"t": {"b": rows(2.0), "c": rows(1.0)}})
    i, j = METRICS.index("w1m"), METRICS.index("cov")
    assert tau[i, i] == 1 and tau[i, j] == -1  # cov ranks the other way round


def test_each_class_s_cells_use_its_own_settings(study_config, tmp_path, monkeypatch):
    """per_class in the base: the gluon cells train with gluon's entry, the study's loss on top."""
    from pipelines.experiments import study

    config = yaml.safe_load(study_config.read_text())
    config["overrides"].append("per_class={gluon: {flow.bins: 3, loss.particle: emd}}")
    config["losses"] = ["chamfer"]
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    seen = []
    real = study.score_cell
    monkeypatch.setattr(
        study, "score_cell", lambda cfg, *a, **k: seen.append(cfg) or real(cfg, *a, **k)
    )
    assert main(["study", "--config", str(path), "--root", str(tmp_path), "--quiet"]) == 0
    assert [(c.flow.bins, c.loss.particle, c.per_class) for c in seen] == [(3, "chamfer", {})]
