import numpy as np
import pytest
import torch

from convae.diagnostics import CORRELATED, keep_hardest, reconstruct, reconstruction_diagnostics
from convae.model import ConVAE, ConVAEConfig
from jetflows.normalize import fit_normalization
from tests.conftest import prong_jets, random_jets


def _jets(n=200, seed=0):
    jets = random_jets(n, 30, seed=seed)
    return torch.tensor(jets.particles), torch.tensor(jets.mask)


def test_a_perfect_reconstruction_scores_perfectly():
    x, m = _jets()
    d = reconstruction_diagnostics(x, m, x.clone(), m.clone())
    assert d.emd_reconstruction == pytest.approx(0, abs=1e-9) and d.emd_other > 0.1
    assert d.emd_ratio == pytest.approx(0, abs=1e-8)
    assert all(v == pytest.approx(1) for v in d.correlation.values())
    assert all(v == pytest.approx(1) for v in d.rank_correlation.values())
    assert all(v == pytest.approx(1) for v in d.spread.values())


def test_a_collapsed_reconstruction_is_caught():
    """Every jet decoded to the same full jet: what the first ConVAE did."""
    x, m = _jets(1000)
    x, m = x[m.all(1)], m[m.all(1)]  # jets of 30 particles, as most real jets at P = 30 are
    one = x[:1].expand_as(x).clone()
    d = reconstruction_diagnostics(x, m, *keep_hardest(one, m.sum(1)))
    assert d.n_jets > 10 and d.emd_ratio > 0.8
    assert d.correlation == dict.fromkeys(CORRELATED, 0.0) == d.rank_correlation
    assert max(d.spread.values()) < 1e-6


def test_a_noisy_reconstruction_sits_in_between():
    x, m = _jets()
    g = torch.Generator().manual_seed(1)
    noisy = x + 0.03 * torch.randn(x.shape, generator=g) * torch.tensor([1.0, 1.0, 0.0])
    d = reconstruction_diagnostics(x, m, noisy * m[..., None], m)
    assert 0.05 < d.emd_ratio < 0.5
    assert d.correlation["pt_sum"] == pytest.approx(1)
    assert 0.9 < d.spread["eta"] < 1.2


def test_lost_prongs_show_in_tau32_while_a_faithful_reconstruction_meets_its_floor():
    """Two- and three-prong toy jets. Reconstructed as they are: r(tau32) = 1, W1 at the floor.
    Reconstructed as rings (each particle keeps its distance from the jet axis and its pt but
    takes a random azimuth: the prongs are lost, the jet's size is kept): tau32's correlation
    drops near 0 and its W1 goes far above the floor."""
    x2, _ = prong_jets(300, seed=1, prongs=2, per_prong=5)
    x3, _ = prong_jets(300, seed=2, prongs=3, per_prong=5)
    x = torch.cat([torch.cat([x2, torch.zeros(300, 5, 3)], 1), x3])  # 10 or 15 particles
    x, m = keep_hardest(x, (x[..., 2] > 0).sum(1))
    good = reconstruction_diagnostics(x, m, x.clone(), m)
    assert good.correlation["tau32"] == pytest.approx(1)
    assert all(w["ratio"] == pytest.approx(1) for w in good.w1.values())
    assert good.median["tau32"]["input"] == good.median["tau32"]["reconstruction"]
    g = torch.Generator().manual_seed(0)
    radius = x[..., :2].norm(dim=-1)
    turn = 2 * torch.pi * torch.rand(radius.shape, generator=g)
    ring = torch.stack([radius * turn.cos(), radius * turn.sin(), x[..., 2]], -1) * m[..., None]
    # the halves are drawn from a seeded stream: from torch's global one, the ratio moved with
    # whatever ran before (4.4 to 25 over splits: a floor between two 300-jet halves is noisy)
    lost = reconstruction_diagnostics(x, m, ring, m, generator=torch.Generator().manual_seed(0))
    assert lost.correlation["tau32"] < 0.5 and lost.w1["tau32"]["ratio"] > 5
    assert lost.median["tau32"]["reconstruction"] > 1.5 * lost.median["tau32"]["input"]


def test_reconstruct_keeps_the_input_multiplicity_in_physical_units():
    x, m = _jets(50)
    norm = fit_normalization(x, m, kind="standard")
    torch.manual_seed(0)
    vae = ConVAE(ConVAEConfig(n_filter=4, dense_width=32, latent_dim=4, output="identity"))
    rec, rec_mask = reconstruct(vae, x, m, normalization=norm, batch_size=16)
    assert (rec_mask.sum(1) <= m.sum(1)).all() and rec_mask.sum() > 0.5 * m.sum()
    assert (rec[..., 2][rec_mask] > 0).all() and (rec[~rec_mask] == 0).all()
    pt = rec[..., 2].numpy()
    assert (np.diff(pt, axis=1) <= 0).all()  # pt-sorted


def test_bad_input():
    x, m = _jets(10)
    with pytest.raises(ValueError, match="same shape"):
        reconstruction_diagnostics(x, m, x[:, :20], m[:, :20])
    with pytest.raises(ValueError, match=">= 2 jets"):
        reconstruction_diagnostics(x[:1], m[:1], x[:1], m[:1])
