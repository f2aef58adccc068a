import pytest
import torch

from convae import losses as L
from jetflows.physics import tau_ratios
from tests.conftest import prong_jets, random_jets


def _clouds(seed=0, n=6, p=30):
    jets = random_jets(n, p, seed=seed)
    x = torch.tensor(jets.particles, dtype=torch.float64)
    mask = torch.tensor(jets.mask)
    gen = torch.Generator().manual_seed(seed)
    y = (x + 0.02 * torch.rand(x.shape, generator=gen, dtype=torch.float64)) * mask[..., None]
    return x, y, mask


@pytest.mark.parametrize("name", sorted(L.PARTICLE_LOSSES))
def test_particle_losses_zero_symmetric_padding_blind_with_gradients(name):
    loss = L.PARTICLE_LOSSES[name]
    x, y, mask = _clouds()
    assert loss(x, x, mask).abs().max() < 1e-9
    value = loss(x, y, mask)
    assert value.shape == (6,) and (value > 0).all()
    # Sinkhorn's iterations are symmetric only up to convergence; chamfer_pt's weights are
    # the input's (its first argument's) pt shares
    if name not in ("emd_sinkhorn", "chamfer_pt"):
        torch.testing.assert_close(loss(y, x, mask), value)
    junk = torch.where(mask[..., None], y, torch.full_like(y, 7.0))  # garbage in the padding
    torch.testing.assert_close(loss(x, junk, mask), value)
    y = y.clone().requires_grad_(True)
    loss(x, y, mask).sum().backward()
    assert torch.isfinite(y.grad).all() and y.grad[mask].abs().sum() > 0
    assert (y.grad[~mask] == 0).all()


def test_chamfer_by_hand():
    x = torch.tensor([[[0.0, 0.0, 1.0], [1.0, 0.0, 1.0]]])
    y = torch.tensor([[[0.0, 0.5, 1.0]]])
    # x->y: 0.25 + (1 + 0.25); y->x: 0.25
    assert L.chamfer(x, y).item() == pytest.approx(1.75)


def test_pt_weighted_chamfer_by_hand():
    """x: a hard (pt 0.9) and a soft (0.1) particle; y: one particle of pt 1 at the soft one's
    place. Plain Chamfer counts the misplaced hard particle once; chamfer_pt 2 x 0.9 times, and
    y's own term takes the share of its nearest input particle, the soft one (2 x 0.1)."""
    x = torch.tensor([[[0.0, 0.0, 0.9], [1.0, 0.0, 0.1]]])
    y = torch.tensor([[[1.0, 0.0, 1.0]]])
    # x -> y: hard 1 + 0.1^2, weight 1.8; soft 0.9^2, weight 0.2; y -> x: 0.81, weight 0.2
    assert L.chamfer_pt(x, y).item() == pytest.approx(1.8 * 1.01 + 0.2 * 0.81 + 0.2 * 0.81)
    assert L.chamfer(x, y).item() == pytest.approx(1.01 + 0.81 + 0.81)


def test_pt_weighted_chamfer_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(2, 5, 3, generator=gen, dtype=torch.float64)
    y = torch.rand(2, 5, 3, generator=gen, dtype=torch.float64).requires_grad_(True)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    torch.autograd.gradcheck(lambda y: L.chamfer_pt(x, y, mask, mask), (y,))


def test_exact_emd_agrees_with_an_exact_solver():
    from energyflow.emd import emd as energyflow_emd

    x, _, mask = _clouds(seed=3)
    a = x[0][mask[0]].numpy()
    b = a.copy()
    b[:, :2] += 0.05
    b[:, 2] = b[::-1, 2]  # same total pt, moved around
    reference = energyflow_emd(a[:, [2, 0, 1]], b[:, [2, 0, 1]], R=0.8)
    ours = L.emd(torch.tensor(a[None]), torch.tensor(b[None]))
    # ours normalises the pt flow; energyflow moves absolute pt
    assert ours.item() * a[:, 2].sum() == pytest.approx(reference, rel=1e-9)
    sinkhorn = L.emd(torch.tensor(a[None]), torch.tensor(b[None]), method="sinkhorn", blur=1e-3)
    assert sinkhorn.item() == pytest.approx(ours.item(), rel=0.05)


def test_emd_counts_missing_pt():
    x = torch.tensor([[[0.0, 0.0, 1.0]]], dtype=torch.float64)
    assert L.emd(x, x * torch.tensor([1.0, 1.0, 0.5])).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown EMD method"):
        L.emd(x, x, method="hungarian")


def test_jet_terms_and_gamma_2():
    x, y, mask = _clouds(seed=4)
    assert L.jet_terms(x, x, mask).abs().max() < 1e-12
    assert (L.jet_terms(x, y, mask, gamma=2.0) == 2 * L.jet_terms(x, y, mask)).all()
    assert L.default_gamma_2(x, mask) > 1  # pt ~ 1 >> m/pt_jet


def test_kl_and_weightings():
    mean, logvar = torch.zeros(3, 5), torch.zeros(3, 5)
    assert (L.kl_divergence(mean, logvar) == 0).all()
    assert L.kl_divergence(torch.ones(1, 5), torch.zeros(1, 5)).item() == pytest.approx(2.5)
    p, j, k = torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([4.0])
    seed = L.WEIGHTINGS["seed"](p, j, k, alpha=0.5, beta=0.9)
    assert seed.item() == pytest.approx(0.1 * (0.5 * 2 + 1) + 0.9 * 4)
    assert L.WEIGHTINGS["beta_vae"](p, j, k, alpha=0.5, beta=0.9).item() == pytest.approx(5.6)


@pytest.mark.parametrize("name", ["emd", "emd_sinkhorn"])
def test_emd_loss_moves_convae_parameters(name):
    from convae.model import ConVAE, ConVAEConfig

    torch.manual_seed(0)
    model = ConVAE(ConVAEConfig(n_filter=4, dense_width=32, latent_dim=4))
    x, _, mask = _clouds(seed=5)
    x = x.float()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    recon = model.decode(model.encode(x)[0])
    L.PARTICLE_LOSSES[name](x, recon, mask).mean().backward()
    opt.step()
    moved = [not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True)]
    assert all(moved)


def test_exact_emd_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(1, 5, 3, generator=gen, dtype=torch.float64)
    y = torch.rand(1, 6, 3, generator=gen, dtype=torch.float64).requires_grad_(True)
    L.emd(x, y).sum().backward()
    numeric = torch.zeros_like(y)
    eps = 1e-7
    for idx in [(0, i, f) for i in range(6) for f in range(3)]:
        up, down = y.detach().clone(), y.detach().clone()
        up[idx] += eps
        down[idx] -= eps
        numeric[idx] = (L.emd(x, up) - L.emd(x, down)).item() / (2 * eps)
    torch.testing.assert_close(y.grad, numeric, rtol=1e-4, atol=1e-6)


def test_substructure_terms_are_zero_on_the_input_and_follow_the_prongs():
    x, y, mask = _clouds(n=40)
    ratios = L.differentiable_tau_ratios(x, mask)
    torch.testing.assert_close(ratios, tau_ratios(x, mask), rtol=1e-3, atol=1e-4)
    assert L.substructure_terms(x, x, mask, mask).max() < 1e-6
    assert (L.substructure_terms(x, y, mask, mask) > 0).any()
    two, _ = prong_jets(20, seed=0, prongs=2, per_prong=4)
    three, _ = prong_jets(20, seed=1, prongs=3, per_prong=4)
    far = L.substructure_terms(three[:, :8].double(), two.double())
    near = L.substructure_terms(two.double(), two.flip(1).double())  # the same jets, reordered
    assert near.max() < 1e-6 < far.min()


def test_substructure_gradient_matches_finite_differences():
    x, _, mask = _clouds(seed=3, n=4, p=8)
    gen = torch.Generator().manual_seed(3)
    y = (x + 0.05 * torch.randn(x.shape, generator=gen, dtype=torch.float64)) * mask[..., None]
    y = y.abs().requires_grad_(True)  # positive pts, as the loss's particles have
    L.substructure_terms(x, y, mask, mask).sum().backward()
    numeric = torch.zeros_like(y)
    eps = 1e-7
    for idx in zip(*mask.nonzero(as_tuple=True), strict=True):
        for f in range(3):
            up, down = y.detach().clone(), y.detach().clone()
            up[(*idx, f)] += eps
            down[(*idx, f)] -= eps
            terms = [L.substructure_terms(x, z, mask, mask).sum() for z in (up, down)]
            numeric[(*idx, f)] = (terms[0] - terms[1]).item() / (2 * eps)
    assert y.grad.abs().max() > 1e-3  # the terms do reach the particles
    torch.testing.assert_close(y.grad, numeric, rtol=1e-4, atol=1e-6)


def test_d2_terms_are_zero_on_the_input_and_see_the_radiation_between_prongs():
    x, y, mask = _clouds(n=40)
    assert L.d2_terms(x, x, mask, mask).max() < 1e-12
    assert L.d2_terms(x, x.flip(1), mask, mask.flip(1)).max() < 1e-12  # a set function
    assert (L.d2_terms(x, y, mask, mask)[mask.sum(1) >= 3] > 0).all()
    two, _ = prong_jets(20, seed=0, prongs=2, per_prong=4)
    # the same two-prong jets with a soft particle between the prongs: D2 grows
    soft = torch.cat([two, torch.tensor([[0.0, 0.0, 0.05]]).expand(20, 1, 3)], 1)
    assert (L.d2_terms(two.double(), soft.double()) > 1e-3).all()


def test_d2_terms_gradient_matches_finite_differences():
    """Also on the diagonal of the pair distances, where R^beta's own derivative is
    infinite (`jetflows.physics.d2` keeps it out of the power)."""
    x, _, mask = _clouds(seed=5, n=3, p=6)
    gen = torch.Generator().manual_seed(5)
    y = (x + 0.05 * torch.randn(x.shape, generator=gen, dtype=torch.float64)) * mask[..., None]
    y = y.abs().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda y: L.d2_terms(x, y, mask, mask), (y,))
    L.d2_terms(x, y, mask, mask).sum().backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().max() > 1e-3


def test_substructure_gradients_stay_finite_on_float32_outliers():
    """A decoder early in training emits wide jets, negative pts and jets of one or two
    particles: the terms and their gradients stay finite (float32 once lost E - pz at
    eta ~ 10 and divided 0 by 0 on an axis without particles)."""
    x, _, mask = _clouds(n=40)
    for factor in ([1.0, 1.0, 1.0], [60.0, 60.0, 1.0], [1.0, 1.0, -1.0], [1.0, 1.0, 1e-20]):
        y = (x.float() * torch.tensor(factor)).requires_grad_(True)
        for term in (L.substructure_terms, L.d2_terms):
            y.grad = None
            terms = term(x.float(), y, mask, mask)
            terms.sum().backward()
            assert torch.isfinite(terms).all() and torch.isfinite(y.grad).all(), (term, factor)
    assert (mask.sum(1) < 3).any()  # jets without three axes are among them
