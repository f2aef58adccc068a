import numpy as np
import pytest
import torch

from jetflows.normalize import STATISTICS, Normalization, fit_normalization


@pytest.mark.parametrize("kind", sorted(STATISTICS))
def test_inverse_round_trip_keeps_padding_zero(jets, kind):
    norm = fit_normalization(jets.particles, jets.mask, kind=kind)
    y = norm.transform(jets.particles, jets.mask)
    assert (y[~jets.mask] == 0).all()
    np.testing.assert_allclose(norm.inverse(y, jets.mask), jets.particles, atol=1e-6)


def test_statistics_ignore_padding(jets):
    norm = fit_normalization(jets.particles, jets.mask, kind="standard")
    real = jets.particles[jets.mask].astype(np.float64)
    np.testing.assert_allclose(norm.shift, real.mean(0), rtol=1e-9)
    np.testing.assert_allclose(norm.scale, real.std(0), rtol=1e-9)
    y = norm.transform(jets.particles, jets.mask)[jets.mask]
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(0), 1, atol=1e-5)


def test_minmax_maps_real_particles_onto_unit_interval(jets):
    y = fit_normalization(jets.particles, jets.mask, kind="minmax").transform(
        jets.particles, jets.mask
    )[jets.mask]
    np.testing.assert_allclose(y.min(0), 0, atol=1e-6)
    np.testing.assert_allclose(y.max(0), 1, atol=1e-6)


def test_torch_tensors_and_dict_round_trip(jets):
    norm = fit_normalization(torch.tensor(jets.particles), torch.tensor(jets.mask))
    again = Normalization.from_dict(norm.to_dict())
    assert again == norm
    x = torch.tensor(jets.particles, requires_grad=True)
    y = again.transform(x, torch.tensor(jets.mask))
    assert isinstance(y, torch.Tensor)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_bad_input():
    x = np.ones((2, 3, 3))
    with pytest.raises(ValueError, match="unknown normalization"):
        fit_normalization(x, kind="zscore")
    with pytest.raises(ValueError, match="no real particles"):
        fit_normalization(x, np.zeros((2, 3), bool))
    with pytest.raises(ValueError, match="NaN"):
        fit_normalization(np.full((2, 3, 3), np.nan))
    with pytest.raises(ValueError, match="mask shape"):
        fit_normalization(x, np.ones((2, 4), bool))
    with pytest.raises(ValueError, match="3 features"):
        fit_normalization(x).transform(np.ones((2, 3, 2)))
    with pytest.raises(ValueError, match="exactly the keys"):
        Normalization.from_dict({"kind": "standard", "shift": [0.0]})


def test_constant_feature_does_not_divide_by_zero():
    x = np.ones((4, 2, 3))
    y = fit_normalization(x).transform(x)
    assert np.isfinite(y).all()


def test_log_pt_standardizes_log_pt_and_inverts_to_positive_pts(jets):
    """standard_log_pt: the real particles' log pt_rel has zero mean and unit variance, eta and
    phi are as in standard, and any network output maps back to a positive pt_rel."""
    norm = fit_normalization(jets.particles, jets.mask, kind="standard_log_pt")
    plain = fit_normalization(jets.particles, jets.mask, kind="standard")
    y = norm.transform(jets.particles, jets.mask)[jets.mask]
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(0), 1, atol=1e-5)
    log_pt = np.log(jets.particles[jets.mask][:, 2].astype(np.float64))
    np.testing.assert_allclose(y[:, 2], (log_pt - log_pt.mean()) / log_pt.std(), atol=1e-4)
    assert norm.shift[:2] == plain.shift[:2] and norm.log == (2,)
    out = (torch.randn(4, 30, 3, dtype=torch.float64) * 3).requires_grad_()
    back = norm.inverse(out)
    assert (back[..., 2] > 0).all() and torch.equal(back[..., :2], plain.inverse(out)[..., :2])
    back.sum().backward()
    assert torch.isfinite(out.grad).all()
    wild = norm.inverse(torch.full((1, 1, 3), 1e4))  # an untrained decoder's: no inf pt
    assert torch.isfinite(wild).all() and wild[..., 2] < 1e3
    assert Normalization.from_dict(norm.to_dict()) == norm
    old = {"kind": "standard", "shift": [0.0] * 3, "scale": [1.0] * 3}  # a state before `log`
    assert Normalization.from_dict(old).log == () and "log" not in plain.to_dict()
