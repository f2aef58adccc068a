"""Stable ratios: ~1 for a generator that is another real sample, far above for a wrong one,
their band around them, every generated sample used, and refusals of sizes they cannot use."""

import json

import numpy as np
import pytest

from pipelines.cli import main
from pipelines.data.jetnet import Jets, concat_jets, write_jetnet_file
from pipelines.evaluation.stable import FIGURES, Scored, split_samples, stable_ratios
from tests.conftest import random_jets


def _widened(jets: Jets, factor: float) -> Jets:
    particles = jets.particles.copy()
    particles[..., 0] *= factor  # eta spread: W1P, mass, substructure all move
    return Jets(particles, jets.mask, jets.jet_features, jets.labels)


@pytest.fixture(scope="module")
def real():
    return Scored(random_jets(800, 30, seed=1))


def test_a_real_sample_scores_about_one_and_a_wrong_one_far_above(real):
    good = stable_ratios(real, random_jets(400, 30, seed=2), n=200, draws=8, cov_draws=0)
    bad = stable_ratios(
        real, _widened(random_jets(400, 30, seed=2), 2.0), n=200, draws=8, cov_draws=0
    )
    assert good["sizes"] == {"n": 200, "draws": 8, "samples": 2, "real": 800}
    for name in ("w1p", "w1m", "w1efp"):
        assert 0.5 < good[name]["stable_ratio"] < 1.6, (name, good[name])
        assert bad[name]["stable_ratio"] > 2 * good[name]["stable_ratio"], name
    for name in FIGURES:
        row = good[name]
        assert row["stable_ratio"] == pytest.approx(row["model"] / row["floor"])
        lo, hi = row["band"]
        assert lo <= hi and lo < row["stable_ratio"] * 1.5 and hi > row["stable_ratio"] / 1.5


def test_every_generated_sample_counts(real):
    """Two samples, one real-like and one wrong: the stable ratio sits between the two
    single-sample ones (it is their mean over the same real pairs)."""
    good, bad = random_jets(200, 30, seed=3), _widened(random_jets(200, 30, seed=4), 2.0)
    both = concat_jets([good, bad])
    assert len(split_samples(both, 200)) == 2
    scores = {
        name: stable_ratios(real, jets, n=200, draws=4, cov_draws=0)["w1p"]["stable_ratio"]
        for name, jets in (("good", good), ("bad", bad), ("both", both))
    }
    assert scores["both"] == pytest.approx((scores["good"] + scores["bad"]) / 2)


def test_cov_is_about_one_for_real_jets(real):
    out = stable_ratios(real, random_jets(200, 30, seed=5), n=200, draws=1, cov_draws=1)
    assert 0.7 < out["cov"]["stable_ratio"] < 1.3


def test_a_figure_real_jets_never_vary_in_has_no_ratio():
    jets = random_jets(300, 30, seed=6)
    full = Jets(jets.particles, np.ones_like(jets.mask), jets.jet_features, jets.labels)
    full.particles[..., 2] += 1e-3  # every slot a real particle: multiplicity always 30
    out = stable_ratios(full, full, n=100, draws=2, cov_draws=0)
    assert out["multiplicity"]["stable_ratio"] is None and out["multiplicity"]["floor"] == 0


@pytest.mark.parametrize(("n_real", "n_gen"), [(399, 300), (400, 199)])
def test_too_few_jets_are_refused(n_real, n_gen):
    with pytest.raises(ValueError, match="need >= 400 real jets"):
        stable_ratios(random_jets(n_real, 30), random_jets(n_gen, 30), n=200, cov_draws=0)


def test_evaluate_reports_stable_ratios_first(tmp_path, capsys):
    write_jetnet_file(tmp_path / "real.hdf5", random_jets(600, 30, seed=7))
    write_jetnet_file(tmp_path / "gen.hdf5", _widened(random_jets(400, 30, seed=8), 2.0))
    args = ["evaluate", "--real", str(tmp_path / "real.hdf5"), "--gen", str(tmp_path / "gen.hdf5")]
    out = tmp_path / "ev"
    assert main([*args, "--out", str(out), "--n", "200", "--no-fpnd", "--no-cov-mmd"]) == 0
    printed = capsys.readouterr().out
    assert "stable ratios (16 real pairs x 2 generated samples of 200" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stable"]["sizes"]["samples"] == 2 and "cov" not in metrics["stable"]
    assert metrics["stable"]["w1p"]["stable_ratio"] > 2
    report = (out / "report.md").read_text()
    assert report.index("## Stable ratios") < report.index("## Observable EMDs")
