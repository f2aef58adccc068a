import math

import numpy as np
import pytest
import torch

from jetflows.physics import (
    OBSERVABLES,
    cartesian_to_relative,
    d2,
    jet_observables,
    kt_axes,
    nsubjettiness,
    particle_mask,
    relative_to_cartesian,
    tau_ratios,
    wrap_phi,
)
from tests.conftest import random_jets


def _back_to_back(pt: float = 0.5) -> np.ndarray:
    return np.array([[[0.0, 0.0, pt], [0.0, math.pi, pt], [0.0, 0.0, 0.0]]])


def test_two_massless_back_to_back_particles():
    obs = jet_observables(_back_to_back(), jet_pt=200.0)
    # each particle: E = |p| = 100 GeV, momenta cancel -> m = E_total = 200 GeV, pt = 0
    assert obs["mass"][0] == pytest.approx(200.0)
    assert obs["energy"][0] == pytest.approx(200.0)
    assert obs["pt"][0] == pytest.approx(0.0, abs=1e-5)
    assert obs["multiplicity"][0] == 2


def test_collinear_particles_are_massless_and_add_up():
    two = np.array([[[0.3, 0.1, 0.4], [0.3, 0.1, 0.6]]])
    obs = jet_observables(two, jet_pt=1000.0, jet_eta=0.2, jet_phi=1.0)
    assert obs["mass"][0] == pytest.approx(0.0, abs=1e-3)
    assert obs["pt"][0] == pytest.approx(1000.0)
    assert obs["eta"][0] == pytest.approx(0.5)
    assert obs["phi"][0] == pytest.approx(1.1)
    assert obs["energy"][0] == pytest.approx(1000.0 * math.cosh(0.5))


def test_opening_angle_mass_formula():
    # m^2 = 2 pt1 pt2 (cosh(d_eta) - cos(d_phi)) for two massless particles
    x = np.array([[[0.1, -0.2, 0.3], [-0.2, 0.1, 0.7]]])
    expected = math.sqrt(2 * 0.3 * 0.7 * (math.cosh(0.3) - math.cos(0.3)))
    assert jet_observables(x)["mass"][0] == pytest.approx(expected)


def test_padding_never_counts(jets):
    junk = jets.particles.copy()
    junk[~jets.mask] = 5.0  # garbage where the mask says padding
    clean, dirty = jet_observables(jets.particles, jets.mask), jet_observables(junk, jets.mask)
    for name in OBSERVABLES:
        np.testing.assert_allclose(dirty[name], clean[name], err_msg=name)
    np.testing.assert_array_equal(clean["multiplicity"], jets.mask.sum(1))


def test_matches_jetnet_jet_features(jets):
    from jetnet.utils import jet_features

    ours = jet_observables(jets.particles.astype(np.float64), jets.mask)
    theirs = jet_features(jets.particles.astype(np.float64))
    for name in ("mass", "pt", "eta"):
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-6, atol=2e-6, err_msg=name)


def test_torch_matches_numpy_and_has_gradients(jets):
    x = torch.tensor(jets.particles, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor(jets.mask)
    jet_pt = torch.tensor(jets.jet_features[:, 0], dtype=torch.float64)
    obs_t = jet_observables(x, mask, jet_pt=jet_pt)
    obs_n = jet_observables(
        jets.particles.astype(np.float64),
        jets.mask,
        jet_pt=jets.jet_features[:, 0].astype(np.float64),
    )
    for name in OBSERVABLES:
        np.testing.assert_allclose(obs_t[name].detach().numpy(), obs_n[name], rtol=1e-9)
    (obs_t["mass"].sum() + obs_t["pt"].sum()).backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad[mask].abs().sum() > 0
    assert (x.grad[~mask] == 0).all()


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_relative_cartesian_round_trip(jets, backend):
    x, mask = jets.particles.astype(np.float64), jets.mask
    kin = {"jet_pt": 1000.0, "jet_eta": 0.7, "jet_phi": 3.0}
    if backend == "torch":
        x, mask = torch.tensor(x), torch.tensor(mask)
    back = cartesian_to_relative(relative_to_cartesian(x, mask, **kin), mask, **kin)
    np.testing.assert_allclose(np.asarray(back), np.asarray(x), atol=1e-9)
    assert (np.asarray(back)[~np.asarray(mask)] == 0).all()


def test_cartesian_values_by_hand():
    x = np.array([[[0.0, math.pi / 2, 0.5]]])
    np.testing.assert_allclose(
        relative_to_cartesian(x, jet_pt=100.0)[0, 0], [0.0, 50.0, 0.0], atol=1e-12
    )


def test_wrap_phi_range():
    phi = np.array([math.pi, -math.pi, 3 * math.pi, -0.5, 7.0, -7.0])
    wrapped = wrap_phi(phi)
    assert ((wrapped > -math.pi) & (wrapped <= math.pi)).all()
    np.testing.assert_allclose(np.cos(wrapped), np.cos(phi), atol=1e-12)
    assert wrapped[1] == pytest.approx(math.pi)


def test_default_mask_from_pt():
    jets = random_jets(5, 10)
    np.testing.assert_array_equal(particle_mask(jets.particles), jets.mask)


def test_d2_matches_energyflow_energy_correlators(jets):
    """D2 = e3 / e2^3 from energyflow's EFPs (line and triangle graphs, hadronic measure)."""
    import energyflow as ef

    kw = {"measure": "hadr", "beta": 1, "normed": True, "coords": "ptyphim"}
    e2, e3 = ef.EFP([(0, 1)], **kw), ef.EFP([(0, 1), (1, 2), (0, 2)], **kw)
    many = jets.mask.sum(1) >= 3
    expected = []
    for x, m in zip(jets.particles[many], jets.mask[many], strict=True):
        event = x[m][:, [2, 0, 1]].astype(np.float64)  # (pt, y, phi)
        # EFPs sum over all ordered index tuples: 2 e2 and 6 e3
        expected.append((e3.compute(event) / 6) / (e2.compute(event) / 2) ** 3)
    values = d2(jets.particles.astype(np.float64), jets.mask)
    assert many.sum() >= 15
    np.testing.assert_allclose(values[many], expected, rtol=1e-9)
    torch.testing.assert_close(
        d2(torch.tensor(jets.particles, dtype=torch.float64), torch.tensor(jets.mask)),
        torch.tensor(values),
    )


def test_d2_separates_two_prongs_from_one():
    two = np.array([[[-0.2, 0.0, 0.5], [0.2, 0.0, 0.5], [0.0, 0.01, 1e-3]]])  # two hard prongs
    one = np.array([[[0.0, 0.0, 0.9], [0.05, 0.0, 0.05], [0.0, 0.3, 0.05]]])  # a core + spray
    assert d2(two)[0] < 0.1 < d2(one)[0]
    assert d2(np.zeros((1, 3, 3)))[0] == 0  # no particles: 0, not NaN


def test_nsubjettiness_two_particles_by_hand():
    """Two particles pt 0.3 and 0.1, 0.4 apart: tau2 = tau3 = 0 (each is its own axis); tau1's
    axis is their sum, near the pt-weighted centroid, so tau1 = sum_i pt_i dR_i / sum pt with
    dR = 0.1 and 0.3."""
    jet = np.array([[[0.0, 0.0, 0.3], [0.4, 0.0, 0.1], [0.0, 0.0, 0.0]]])
    tau = nsubjettiness(jet)
    axis = 0.4 * 0.1 / 0.4  # the E-scheme axis sits near the pt-weighted centroid
    expected = (0.3 * axis + 0.1 * (0.4 - axis)) / 0.4
    assert tau[0, 0] == pytest.approx(expected, rel=2e-2)
    assert tau[0, 1] == pytest.approx(0, abs=1e-12) and tau[0, 2] == 0


def test_nsubjettiness_matches_fastjet_exclusive_kt_axes():
    fastjet = pytest.importorskip("fastjet")
    rng = np.random.default_rng(3)
    p = np.zeros((40, 30, 3))
    for k in range(40):
        n = rng.integers(1, 31)
        p[k, :n, :2] = rng.normal(0, 0.2, (n, 2))
        p[k, :n, 2] = rng.exponential(0.05, n)
    mask = p[..., 2] > 0
    ours = nsubjettiness(p, mask)
    torch_version = nsubjettiness(torch.from_numpy(p), torch.from_numpy(mask))
    np.testing.assert_allclose(torch_version.numpy(), ours)
    definition = fastjet.JetDefinition(fastjet.kt_algorithm, 1000.0)  # FastJet's max R
    for k in range(40):
        parts = [
            fastjet.PseudoJet(pt * np.cos(f), pt * np.sin(f), pt * np.sinh(e), pt * np.cosh(e))
            for e, f, pt in p[k][mask[k]]
        ]
        sequence = fastjet.ClusterSequence(parts, definition)
        total = sum(q.pt() for q in parts)
        for n in (1, 2, 3):
            axes = sequence.exclusive_jets(n) if len(parts) > n else parts
            ref = sum(q.pt() * min(q.delta_R(a) for a in axes) for q in parts) / total
            assert ours[k, n - 1] == pytest.approx(ref, abs=1e-12)
        if len(parts) >= 3:  # the axes themselves: FastJet's three exclusive jets
            found = kt_axes(torch.from_numpy(p[k : k + 1]), torch.from_numpy(mask[k : k + 1]))
            ref_axes = sorted((a.rap(), a.phi_std()) for a in sequence.exclusive_jets(3))
            np.testing.assert_allclose(sorted(map(tuple, found[0].numpy())), ref_axes, atol=1e-9)


def test_kt_axes_find_three_prongs_and_tau_ratios_follow():
    """Three tight prongs of four particles at known centres: the three axes are the prong
    centres, and tau32 is far below tau21."""
    centres = torch.tensor([[0.3, 0.0], [-0.15, 0.26], [-0.15, -0.26]], dtype=torch.float64)
    offsets = 0.01 * torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1]], dtype=torch.float64)
    pos = (centres[:, None] + offsets[None]).reshape(12, 2)
    jet = torch.cat([pos, torch.full((12, 1), 1 / 12, dtype=torch.float64)], -1)[None]
    padded = torch.cat([jet, torch.zeros(1, 3, 3, dtype=torch.float64)], 1)  # 3 padding slots
    axes = kt_axes(padded)[0]
    got = sorted(map(tuple, axes.numpy()))
    np.testing.assert_allclose(got, sorted(map(tuple, centres.numpy())), atol=2e-3)
    tau21, tau32 = tau_ratios(padded)[0].tolist()
    assert tau32 < 0.1 < tau21  # three prongs: tau3 << tau2
    assert kt_axes(padded[:, :2]).isnan().all()  # two particles have no three axes
