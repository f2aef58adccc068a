"""Latent (two-stage) and particle flows trained on small real Pythia8 top samples."""

import pytest
import torch

from convae.model import ConVAE, ConVAEConfig
from convae.train import fit as fit_convae
from flows import latent, particle
from flows.models import FlowConfig, build_flow
from flows.train import fit, nll
from jetflows.normalize import fit_normalization
from jetflows.training import TrainConfig
from pipelines.data.jetnet import read_jetnet_file

CFG = TrainConfig(epochs=3, batch_size=64, lr=2e-3, seed=0, patience=0)
FLOW = FlowConfig(kind="zuko_nsf_coupling", transforms=3, hidden_features=32)


@pytest.fixture(scope="module")
def top(pythia_top_files):
    jets = [read_jetnet_file(path) for path in pythia_top_files]
    return [(torch.tensor(j.particles), torch.tensor(j.mask)) for j in jets]


def _valid_nll(flow, data) -> float:
    with torch.no_grad():
        return nll(flow.eval(), *data)[0].item()


def _check_jets(particles, mask, n, num_particles=30):
    assert particles.shape == (n, num_particles, 3) and mask.shape == (n, num_particles)
    assert torch.isfinite(particles).all()
    assert (particles[~mask] == 0).all()  # padding exactly zero
    assert (particles[..., 2][mask] > 0).all()
    pt = particles[..., 2]
    assert (pt[:, :-1] >= pt[:, 1:]).all()  # pt-sorted
    assert torch.equal(mask, pt > 0) or (mask[:, :-1] >= mask[:, 1:]).all()  # a prefix


def test_latent_flow_two_stage(top):
    (train_x, train_m), (valid_x, valid_m) = top
    norm = fit_normalization(train_x, train_m, kind="minmax")
    inputs = [norm.transform(x, m) for x, m in ((train_x, train_m), (valid_x, valid_m))]
    torch.manual_seed(0)
    # min-max into a sigmoid: every decoded pt > 0, so multiplicity masking keeps its count
    vae = ConVAE(ConVAEConfig(n_filter=8, dense_width=64, latent_dim=8, output="sigmoid"))
    vae_cfg = TrainConfig(epochs=2, batch_size=64, lr=1e-3)
    fit_convae(
        vae,
        (train_x, train_m),  # physical: fit normalizes at the network's edge
        (valid_x, valid_m),
        config=vae_cfg,
        normalization=norm,
        progress=False,
    )
    z_train, z_valid = (latent.encode_latents(vae, x) for x in inputs)
    drawn = latent.encode_latents(
        vae, inputs[1], mode="sample", generator=torch.Generator().manual_seed(0)
    )
    assert z_train.shape == (600, 8) and drawn.shape == z_valid.shape
    assert not torch.equal(drawn, z_valid)  # q(z|x) draws scatter around the means
    torch.manual_seed(0)
    flow = build_flow(FLOW, features=8)
    flow.standardize_(z_train)
    start = _valid_nll(flow, (z_valid, None, None))
    result = fit(flow, (z_train, None, None), (z_valid, None, None), config=CFG, progress=False)
    assert min(r["valid_loss"] for r in result.history) < start
    probs = latent.multiplicity_probs(train_m)

    def draw_with(model, masking):
        g = torch.Generator().manual_seed(1)
        return latent.generate(model, vae, 50, masking=masking, normalization=norm, generator=g)

    def draw(masking):
        return draw_with(flow, masking)

    for masking in (latent.Masking("threshold", 1e-3), latent.Masking("multiplicity", probs=probs)):
        particles, mask = draw(masking)
        _check_jets(particles, mask, 50)
    assert torch.equal(draw(masking)[0], particles)
    # multiplicity masking follows the training distribution's support
    assert set(mask.sum(1).tolist()) <= set(torch.nonzero(probs).flatten().tolist())
    # joint masking: the flow samples (z, n + u); each jet keeps floor(n) particles
    g = torch.Generator().manual_seed(0)
    joint_train = latent.with_multiplicity(z_train, train_m, generator=g)
    assert torch.equal(joint_train[:, -1].floor(), train_m.sum(1).float())
    joint_valid = (latent.with_multiplicity(z_valid, valid_m, generator=g), None, None)
    torch.manual_seed(0)
    joint = build_flow(FLOW, features=9)
    joint.standardize_(joint_train)
    fit(joint, (joint_train, None, None), joint_valid, config=CFG, progress=False)
    particles, mask = draw_with(joint, latent.Masking("joint"))
    _check_jets(particles, mask, 50)
    with torch.no_grad():
        sampled = joint.sample(50, generator=torch.Generator().manual_seed(1))[:, -1]
    assert torch.equal(mask.sum(1), sampled.floor().clamp(1, 30).long())
    # the flow learnt the multiplicities: their mean within 15% of the real jets'
    real_n = train_m.sum(1).float().mean()
    assert abs(mask.sum(1).float().mean() - real_n) < 0.15 * real_n
    # projecting: the flow samples (z, n + u, log mass, sum pt); each jet is moved onto them
    from jetflows.physics import jet_observables

    rows = latent.with_jet_observables(z_train, train_x, train_m, generator=g)
    obs = jet_observables(train_x, train_m)
    assert torch.allclose(rows[:, -2].exp(), obs["mass"].clamp_min(1e-4), rtol=1e-5)
    assert torch.allclose(rows[:, -1], (train_x[..., 2] * train_m).sum(1), rtol=1e-5)
    projecting = build_flow(FLOW, features=11)
    projecting.standardize_(rows)
    vrows = latent.with_jet_observables(z_valid, valid_x, valid_m, generator=g)
    fit(projecting, (rows, None, None), (vrows, None, None), config=CFG, progress=False)
    g1 = torch.Generator().manual_seed(1)
    particles, mask = latent.generate(
        projecting,
        vae,
        50,
        masking=latent.Masking("joint"),
        normalization=norm,
        generator=g1,
        project=True,
    )
    _check_jets(particles, mask, 50)
    with torch.no_grad():
        sampled = projecting.sample(50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(mask.sum(1), sampled[:, 8].floor().clamp(1, 30).long())
    got = jet_observables(particles, mask)["mass"]
    close = (got / sampled[:, 9].exp() - 1).abs() < 0.02
    assert close.float().mean() > 0.8  # the rest hit the 3x limit of an untrained-ish flow
    assert torch.allclose((particles[..., 2] * mask).sum(1), sampled[:, 10], rtol=1e-4)
    with pytest.raises(ValueError, match="needs masking 'joint'"):
        latent.generate(projecting, vae, 5, masking=latent.Masking("threshold"), project=True)
    with pytest.raises(ValueError, match=r"\+1 for the jet"):
        draw_with(flow, latent.Masking("joint"))
    with pytest.raises(ValueError, match="from the latent flow's sample"):
        latent.to_jets(particles, normalization=None, masking=latent.Masking("joint"))


def test_multiplicity_probs_and_masking_errors():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 0]], dtype=torch.bool)
    assert latent.multiplicity_probs(mask).tolist() == pytest.approx([0, 1 / 3, 2 / 3, 0])
    with pytest.raises(ValueError, match="unknown masking"):
        latent.Masking("topk")
    with pytest.raises(ValueError, match="needs the training multiplicity"):
        latent.to_jets(
            torch.rand(2, 3, 3), normalization=None, masking=latent.Masking("multiplicity")
        )
    vae = ConVAE(ConVAEConfig(n_filter=4, dense_width=16, latent_dim=5))
    with pytest.raises(ValueError, match="latent space has 5"):
        latent.generate(build_flow(FLOW, features=6), vae, 3, masking=latent.Masking())
    with pytest.raises(ValueError, match="unknown encoding"):
        latent.encode_latents(vae, torch.rand(2, 30, 3), mode="mode")


def test_particle_flow_with_jet_context(top):
    (train_x, train_m), (valid_x, valid_m) = top
    target = particle.fit_target(train_x, train_m)
    g = torch.Generator().manual_seed(0)
    x, ctx, jet_rows = particle.encode(train_x, train_m, target, generator=g)
    vx, vctx, vjet = particle.encode(valid_x, valid_m, target, generator=g)
    assert x.shape == (600, 90) and ctx.shape == (600, 2) and jet_rows.shape == (600, 2)
    # real slots decode back to the jets exactly (up to float error); padding is noise
    back, back_mask = particle.decode(x, train_m.sum(1), target)
    assert torch.equal(back_mask, train_m)
    assert torch.allclose(back, train_x, atol=1e-5)
    torch.manual_seed(0)
    flows = {
        "particles": (build_flow(FLOW, features=90, context=2), (x, ctx, None), (vx, vctx, None)),
        "jet": (build_flow(FLOW, features=2), (jet_rows, None, None), (vjet, None, None)),
    }
    for flow, train, valid in flows.values():
        start = _valid_nll(flow, valid)
        result = fit(flow, train, valid, config=CFG, standardize=False, progress=False)
        assert min(r["valid_loss"] for r in result.history) < start
    particles, mask = particle.generate(
        flows["particles"][0],
        flows["jet"][0],
        64,
        target,
        generator=torch.Generator().manual_seed(2),
    )
    _check_jets(particles, mask, 64)
    assert (mask.sum(1) >= 1).all() and (mask[:, :-1] >= mask[:, 1:]).all()


@pytest.mark.parametrize("centroid", [False, True])
def test_particle_encoding_round_trip_and_axis(top, centroid):
    """Encoding then decoding returns the jets; with ``centroid`` the flow's slot-0 angles are
    the jet axis, and any flow output decodes to jets whose axis is exactly that value."""
    x, m = top[0]
    target = particle.fit_target(
        x, m, context=("mass", "multiplicity", "pt_sum"), use_centroid=centroid
    )
    assert target.jet_names == ("mass", "multiplicity", "pt_sum")
    data, ctx, rows = particle.encode(x, m, target, generator=torch.Generator().manual_seed(0))
    assert ctx.shape == (600, 3) and rows.shape == (600, 3)
    back, back_mask = particle.decode(data, m.sum(1), target)
    assert torch.equal(back_mask, m) and torch.allclose(back, x, atol=1e-4)
    assert particle.ParticleTarget.from_dict(target.to_dict()) == target
    axis = particle.centroid(x, m)
    if not centroid:
        assert torch.allclose(data[:, :2], target.features.transform(x[:, 0], None)[:, :2])
        return
    assert torch.allclose(target.centroid.inverse(data[:, :2]), axis, atol=1e-6)
    # perturb every other coordinate: the decoded axis still is what slot 0 says
    noisy = data + 0.3 * torch.randn(data.shape, generator=torch.Generator().manual_seed(1))
    noisy[:, :2] = data[:, :2]
    jets, jets_mask = particle.decode(noisy, m.sum(1), target)
    inside = (jets[..., :2].abs() < particle.ANGLE_LIMIT).all((1, 2))  # no clamped leader
    assert inside.float().mean() > 0.95
    assert torch.allclose(particle.centroid(jets, jets_mask)[inside], axis[inside], atol=1e-5)


def test_centroid_flow_centres_the_generated_jet_axis(top):
    """Trained briefly on the same jets, the flow that models the axis (centroid) generates
    jets whose axis spreads as the real jets' does; the flow on every particle's own angles
    spreads it far wider (the first particle flow's defect)."""
    (x, m), (vx, vm) = top
    real = particle.centroid(vx, vm).std(0)
    ratios = {}
    for use_centroid in (False, True):
        target = particle.fit_target(x, m, use_centroid=use_centroid)
        g = torch.Generator().manual_seed(0)
        data, ctx, rows = particle.encode(x, m, target, generator=g)
        vdata, vctx, vrows = particle.encode(vx, vm, target, generator=g)
        torch.manual_seed(0)
        flows = (build_flow(FLOW, features=90, context=2), build_flow(FLOW, features=2))
        cfg = TrainConfig(epochs=8, batch_size=64, lr=2e-3, seed=0, patience=0)
        for flow, train, valid in zip(
            flows,
            ((data, ctx, None), (rows, None, None)),
            ((vdata, vctx, None), (vrows, None, None)),
            strict=True,
        ):
            fit(flow, train, valid, config=cfg, standardize=False, progress=False)
        jets, mask = particle.generate(
            *flows, 600, target, generator=torch.Generator().manual_seed(1)
        )
        ratios[use_centroid] = particle.centroid(jets, mask).std(0) / real
    assert ((ratios[True] > 0.6) & (ratios[True] < 1.5)).all(), ratios
    assert ratios[False].max() > 1.5 * ratios[True].max(), ratios


def test_projection_onto_mass_and_pt_sum(top):
    """`project_to_context` hits the asked mass and sum(pt_rel), keeps the axis, the pt order
    and the padding, and leaves a jet alone when it already has them."""
    from jetflows.physics import jet_observables

    x, m = top[0]
    mass = jet_observables(x, m)["mass"]
    pt_sum = (x[..., 2] * m).sum(1)
    same = particle.project_to_context(x, m, mass, pt_sum)
    assert torch.allclose(same, x, atol=1e-5)
    want_mass, want_pt = mass * torch.linspace(0.7, 1.4, len(x)), pt_sum * 0.9

    def reach(jets):
        offsets = jets[..., :2] - particle.centroid(jets, m)[:, None]
        return (offsets.norm(dim=-1) * m).amax(1)

    moved = particle.project_to_context(x, m, want_mass, want_pt)
    free = reach(x) * want_mass / mass < 0.9 * particle.REACH  # not stopped by the reach limit
    assert free.float().mean() > 0.8
    got = jet_observables(moved, m)["mass"]
    assert torch.allclose(got[free], want_mass[free], rtol=1e-2)
    assert torch.allclose((moved[..., 2] * m).sum(1), want_pt, rtol=1e-5)
    assert torch.allclose(particle.centroid(moved, m), particle.centroid(x, m), atol=1e-5)
    assert (moved[~m] == 0).all() and torch.equal(moved[..., 2].argsort(1), x[..., 2].argsort(1))

    # a target beyond 3x is not followed: the dilation stops at 3x, or where the farthest
    # particle reaches REACH from the axis (a jet already wider is not widened)
    far = particle.project_to_context(x, m, mass * 10)
    dilation = reach(far) / reach(x)
    limit = (particle.REACH / reach(x)).clamp(1, particle.RATIO_LIMIT)
    assert torch.allclose(dilation, limit, rtol=1e-4)
    assert (jet_observables(far, m)["mass"] < 4 * mass).all()


def test_particle_flow_class_conditional_and_errors():
    from tests.conftest import random_jets

    jets = random_jets(40)
    x, m = torch.tensor(jets.particles), torch.tensor(jets.mask)
    target = particle.fit_target(x, m, context=("multiplicity",))
    data, ctx, rows = particle.encode(x, m, target)
    labels = torch.arange(40) % 2
    flow = build_flow(
        FlowConfig(transforms=2, hidden_features=8, num_classes=2), features=90, context=1
    )
    jet_flow = build_flow(FlowConfig(transforms=2, hidden_features=8, num_classes=2), features=2)
    with torch.no_grad():
        assert flow.log_prob(data, ctx, labels).shape == (40,)
        assert torch.isfinite(jet_flow.log_prob(rows, labels=labels)).all()
    particles, mask = particle.generate(
        flow, jet_flow, 40, target, labels=labels, generator=torch.Generator().manual_seed(0)
    )
    assert particles.shape == (40, 30, 3) and (particles[~mask] == 0).all()
    with pytest.raises(ValueError, match="must include 'multiplicity'"):
        particle.fit_target(x, m, context=("mass",))
    with pytest.raises(ValueError, match="NaN"):
        particle.fit_target(torch.full_like(x, float("nan")), m)
    with pytest.raises(ValueError, match="at least one particle"):
        particle.fit_target(x, torch.zeros_like(m))
    with pytest.raises(ValueError, match="fitted for P = 30"):
        particle.encode(x[:, :20], m[:, :20], target)


def test_decoded_particles_without_pt_are_never_real():
    """An identity output can decode pt_rel <= 0: multiplicity masking must not keep those."""
    decoded = torch.zeros(4, 30, 3)
    decoded[:, :10, 2] = torch.linspace(0.5, 0.01, 10)  # 10 particles with pt, 20 with pt <= 0
    decoded[:, 10:, 2] = -0.1
    probs = torch.zeros(31)
    probs[25] = 1.0  # every jet asks for 25 particles
    particles, mask = latent.to_jets(
        decoded, normalization=None, masking=latent.Masking("multiplicity", probs=probs)
    )
    assert (mask.sum(1) == 10).all()
    _check_jets(particles, mask, 4)


def test_substructure_contexts_are_the_evaluations_observables():
    """tau21, tau32 and D2 as jet-level context (a set flow conditioned on them) are the same
    numbers the evaluation scores."""
    from pipelines.evaluation.metrics import substructure
    from tests.conftest import random_jets

    jets = random_jets(50, seed=5)
    rows = particle.jet_context(
        torch.tensor(jets.particles), torch.tensor(jets.mask), ("tau21", "tau32", "d2")
    )
    expected = substructure(jets.particles, jets.mask)
    for i, name in enumerate(("tau21", "tau32", "d2")):
        assert torch.allclose(rows[:, i].double(), torch.tensor(expected[name]), atol=1e-5)
    assert rows[:, 1].std() > 0.05  # not a constant


def test_a_conditional_convae_is_told_the_ratios_the_flow_samples(top):
    """The flow samples (z, n + u, log mass, sum pt, tau21, tau32); the decoder is told the
    last two columns of each jet's own sample (a decoder told other values would draw other
    prongs: `tests/convae/test_train.py`)."""
    (x, m), _ = top
    small = {"n_filter": 4, "dense_width": 16, "latent_dim": 5}
    vae = ConVAE(ConVAEConfig(**small, condition=("tau21", "tau32")))
    rows = latent.with_jet_observables(torch.zeros(len(x), 5), x, m)
    rows = latent.with_condition(rows, vae, x, m)
    assert rows.shape == (len(x), 10)
    torch.testing.assert_close(rows[:, -2:], vae.condition_of(x, m))
    assert torch.equal(latent.with_condition(rows, ConVAE(ConVAEConfig(**small)), x, m), rows)
    flow = build_flow(FLOW, features=10)
    told, decode = [], vae.decode
    vae.decode = lambda z, condition=None: told.append(condition) or decode(z, condition)
    joint = latent.Masking("joint")
    g = torch.Generator().manual_seed(0)
    particles, mask = latent.generate(flow, vae, 40, masking=joint, generator=g, project=True)
    _check_jets(particles, mask, 40)
    with torch.no_grad():
        sampled = flow.sample(40, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(told[0], sampled[:, -2:])
    with pytest.raises(ValueError, match=r"\+2 for its decoder's condition"):
        latent.generate(build_flow(FLOW, features=8), vae, 3, masking=joint, project=True)


def test_a_jet_has_the_multiplicity_its_model_sampled():
    """Issue 39 #17: with joint masking the latent flow samples n, but decoded particles with
    pt_rel <= 0 were then dropped: the shipped two-stage top model's multiplicity was 274x its
    floor. The chosen particles stay, the soft ones at their jet's softest decoded pt."""
    decoded = torch.tensor(
        [
            [[0.1, 0.0, 0.5], [0.2, 0.1, 0.2], [0.0, 0.3, -0.1], [0.3, 0.2, -0.2]],
            [[0.1, 0.0, -0.5], [0.2, 0.1, -0.2], [0.0, 0.3, -0.1], [0.3, 0.2, -0.2]],
        ]
    )
    counts = torch.tensor([3, 2])
    x, mask = latent.to_jets(
        decoded, normalization=None, masking=latent.Masking("joint"), counts=counts
    )
    assert mask.sum(1).tolist() == [3, 2]
    assert (x[..., 2][mask] > 0).all() and (x[~mask] == 0).all()
    assert x[0, :, 2].tolist() == pytest.approx([0.5, 0.2, 0.2, 0.0])  # the softest: 0.2
    assert x[1, :2, 2].tolist() == pytest.approx([latent.SOFTEST_PT] * 2)  # none positive
    assert x[0, 2, :2].tolist() == pytest.approx([0.0, 0.3])  # its direction is kept
