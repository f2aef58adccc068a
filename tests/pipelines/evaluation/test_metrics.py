"""Metrics with answers known in advance."""

import math

import numpy as np
import pytest

from pipelines.evaluation import metrics as m
from tests.conftest import random_jets


def _obs(seed=0, n=4000, shift=0.0):
    rng = np.random.default_rng(seed)
    return {
        "mass": rng.normal(175, 15, n) + shift,
        "pt": rng.normal(1000, 30, n),
        "energy": rng.normal(1500, 200, n),
        "eta": rng.normal(0, 1, n),
        "phi": rng.normal(0, 0.01, n),
        "multiplicity": rng.integers(10, 31, n).astype(float),
        "tau21": rng.uniform(0.2, 0.9, n),
        "tau32": rng.uniform(0.3, 0.9, n),
        "d2": rng.gamma(2.0, 1.0, n),
    }


def test_identical_samples_have_zero_distance():
    obs = _obs()
    emds, _ = m.observable_emds(obs, obs)
    assert all(v == 0 for v in emds.values())
    assert all(v == pytest.approx(0, abs=1e-12) for v in m.divergences(obs, obs, 30).values())
    assert m.legacy_emd_sum(obs, obs)["legacy_emd_sum"] == pytest.approx(0, abs=1e-15)


def test_known_shift_gives_known_w1_and_scale():
    real, gen = _obs(), _obs(shift=7.0)
    emds, scales = m.observable_emds(real, gen)
    assert emds["emd_mass"] == pytest.approx(7.0)
    assert scales["mass"] == pytest.approx(np.std(real["mass"]))
    assert emds["emd_mass_scaled"] == pytest.approx(7.0 / scales["mass"])
    assert emds["emd_pt"] == 0 and emds["emd_sum"] == pytest.approx(emds["emd_mass_scaled"])


def test_scaled_sum_is_not_dominated_by_range():
    # the same relative shift (half a standard deviation) in GeV-sized and radian-sized
    # observables contributes the same scaled amount
    real = _obs()
    gen = {**real, "energy": real["energy"] + 100.0, "phi": real["phi"] + 0.005}
    emds, _ = m.observable_emds(real, gen)
    assert emds["emd_energy"] / emds["emd_phi"] > 1e4
    assert emds["emd_energy_scaled"] == pytest.approx(emds["emd_phi_scaled"], rel=0.02)


def test_legacy_figure_is_blind_to_where_the_mass_sits():
    real = _obs()
    small, large = _obs(shift=5.0), _obs(shift=80.0)
    true_small = m.observable_emds(real, small)[0]["emd_mass"]
    true_large = m.observable_emds(real, large)[0]["emd_mass"]
    legacy_small = m.legacy_emd_sum(real, small)["legacy_emd_mass"]
    legacy_large = m.legacy_emd_sum(real, large)["legacy_emd_mass"]
    assert true_large / true_small == pytest.approx(16.0, rel=0.02)  # true W1 follows the shift
    assert legacy_large < 2 * legacy_small  # the bin-height "EMD" barely notices a 16x shift
    assert legacy_large != pytest.approx(true_large)


def test_jsd_bounds_and_kl_treatment_of_empty_bins():
    real = _obs()
    disjoint = {**real, "mass": real["mass"] * 0 + 10.0}  # all mass in one bin real lacks
    div = m.divergences(real, disjoint, 30)
    assert div["jsd_mass"] == pytest.approx(math.log(2), rel=1e-9)
    assert 0 <= m.divergences(real, _obs(seed=1), 30)["jsd_mass"] < 0.01
    assert math.isfinite(div["kl_mass"]) and div["kl_mass"] > 20  # ~ -ln(1e-12) per empty bin
    for key, value in m.divergences(real, _obs(seed=2, shift=20), 30).items():
        assert value >= 0, key
        if key.startswith("jsd"):
            assert value <= math.log(2) + 1e-12, key


def test_batched_efps_equal_energyflow_via_jetnet():
    from jetnet.utils import efps as jetnet_efps

    jets = random_jets(60, 30, seed=3)
    jets.particles[:3, :, 1] += 3.0  # phi near the wrap-around exercises periodicity
    ours = m.efps(jets.particles, batch_size=17)
    theirs = jetnet_efps(jets.particles.astype(np.float64), efpset_args=[("d<=", 4)], efp_jobs=1)
    assert ours.shape == (60, 36)
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-15)


@pytest.mark.filterwarnings("ignore:Recommended number of jets")
def test_w1efp_matches_jetnet_draw_for_draw():
    from jetnet.evaluation import gen_metrics

    a, b = random_jets(80, 30, seed=4), random_jets(80, 30, seed=5)
    gen_metrics.rng = np.random.default_rng(11)
    ref_mean, ref_std = gen_metrics.w1efp(
        a.particles, b.particles, num_eval_samples=80, num_batches=5, efp_jobs=1
    )
    sel = m.w1efp_selection()
    assert sel.sum() == 5
    mean, std = m._w1_batches(
        m.efps(a.particles)[:, sel], m.efps(b.particles)[:, sel], 80, 5, np.random.default_rng(11)
    )
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-6)  # jetnet computes EFPs in float32
    np.testing.assert_allclose(std, ref_std, rtol=1e-5)


@pytest.fixture(scope="module")
def jet_sets():
    real, same, other = random_jets(400, 30, seed=6), random_jets(400, 30, seed=7), None
    other = random_jets(400, 30, seed=8)
    other.particles[..., 2] *= 1.5  # harder particles: a clearly different sample
    return real, same, other, [m.efps(j.particles) for j in (real, same, other)]


def test_jetnet_metrics_run_and_separate_good_from_bad(jet_sets):
    real, same, other, (e_real, e_same, e_other) = jet_sets
    good = m.jetnet_metrics(
        real.particles, same.particles, real.mask, same.mask, e_real, e_same, seed=1
    )
    bad = m.jetnet_metrics(
        real.particles, other.particles, real.mask, other.mask, e_real, e_other, seed=1
    )
    expected = {"w1m", "w1p", "w1p_eta", "w1p_phi", "w1p_pt", "w1efp", "fpd", "kpd", "cov", "mmd"}
    assert set(good) == expected
    assert all(np.isfinite(v).all() for v in good.values())
    for name in ("w1m", "w1p_pt", "w1efp", "fpd", "kpd", "mmd"):
        assert bad[name][0] > good[name][0], name


def test_jetnet_metrics_are_reproducible_for_a_seed(jet_sets):
    real, same, _, (e_real, e_same, _) = jet_sets
    args = (real.particles, same.particles, real.mask, same.mask, e_real, e_same)
    first = m.jetnet_metrics(*args, seed=3, cov_mmd=False)
    assert first == m.jetnet_metrics(*args, seed=3, cov_mmd=False)


def test_identical_samples_are_near_zero_on_jetnet_metrics(jet_sets):
    real, _, other, (e_real, _, e_other) = jet_sets
    same = m.jetnet_metrics(
        real.particles, real.particles, real.mask, real.mask, e_real, e_real, cov_mmd=False
    )
    bad = m.jetnet_metrics(
        real.particles, other.particles, real.mask, other.mask, e_real, e_other, cov_mmd=False
    )
    # only jetnet's bootstrap resampling separates a sample from itself
    for name in ("w1m", "w1p_pt", "w1efp", "fpd"):
        assert same[name][0] < 0.2 * bad[name][0], (name, same[name], bad[name])
    assert abs(same["kpd"][0]) < 0.01 * bad["kpd"][0]


@pytest.mark.parametrize(("n", "k"), [(1, 1), (7, 3), (1000, 1500)])
def test_fast_w1_equals_scipy(n, k):
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(n)
    u, v = rng.normal(0, 1, n), rng.exponential(1, k)
    u[: n // 2] = np.round(u[: n // 2], 1)  # ties
    assert m.wasserstein_1d(u, v) == pytest.approx(wasserstein_distance(u, v), rel=1e-12)
    assert m.wasserstein_1d(u, u) == 0


@pytest.mark.filterwarnings("ignore:Recommended number of jets")
def test_w1p_matches_jetnet_draw_for_draw():
    from jetnet.evaluation import gen_metrics

    a, b = random_jets(120, 30, seed=9), random_jets(100, 30, seed=10)
    gen_metrics.rng = np.random.default_rng(5)
    ref_mean, ref_std = gen_metrics.w1p(
        a.particles, b.particles, a.mask, b.mask, num_eval_samples=100, num_batches=5
    )
    masks = (m._particle_masks(a.particles, a.mask), m._particle_masks(b.particles, b.mask))
    mean, std = m._w1_batches(a.particles, b.particles, 100, 5, np.random.default_rng(5), masks)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-9)
    np.testing.assert_allclose(std, ref_std, rtol=1e-7)


def test_substructure_separates_one_prong_from_three_prong_jets():
    """Known answers: two narrow, well-separated prongs have tau21 ~ 0 (two axes see
    everything), three have tau32 ~ 0 but not tau21, a featureless blob has neither; collapse
    every generated jet onto one real jet and the tau32 EMD stands far above its floor."""
    rng = np.random.default_rng(1)

    def prongs(centres, n_jets=400, per=10, width=1e-3):
        p = np.zeros((n_jets, 30, 3))
        for k, (eta, phi) in enumerate(centres):
            rows = slice(k * per, (k + 1) * per)
            p[:, rows, 0] = eta + rng.normal(0, width, (n_jets, per))
            p[:, rows, 1] = phi + rng.normal(0, width, (n_jets, per))
            p[:, rows, 2] = rng.uniform(0.01, 0.05, (n_jets, per))
        return p, p[..., 2] > 0

    blob = m.substructure(*prongs([(0.0, 0.0)], width=0.1, per=30))
    two = m.substructure(*prongs([(0.0, 0.0), (0.3, 0.1)], per=15))
    three = m.substructure(*prongs([(0.0, 0.0), (0.3, 0.1), (-0.2, 0.25)]))
    assert np.median(two["tau21"]) < 0.05 and np.median(three["tau32"]) < 0.05
    assert np.median(three["tau21"]) > 0.2  # two axes cannot describe three prongs
    assert np.median(blob["tau21"]) > 0.4 and np.median(blob["tau32"]) > 0.4
    real = m.substructure(*prongs([(0.0, 0.0), (0.3, 0.1)], per=15, width=0.05))
    floor = m.substructure(*prongs([(0.0, 0.0), (0.3, 0.1)], per=15, width=0.05))
    collapsed = {k: np.full_like(v, v[0]) for k, v in real.items()}
    w1 = {
        name: m.observable_emds({**_obs(), **real}, {**_obs(), **other})[0]["emd_tau32_scaled"]
        for name, other in (("floor", floor), ("collapsed", collapsed))
    }
    assert w1["collapsed"] > 5 * w1["floor"]


def test_observables_carry_the_substructure(tmp_path):
    jets = random_jets(50, 30)
    obs = m.observables(jets)
    assert set(m.SUBSTRUCTURE) <= set(obs) and all(len(obs[k]) == 50 for k in m.SUBSTRUCTURE)
    assert all(np.isfinite(obs[k]).all() for k in m.SUBSTRUCTURE)
