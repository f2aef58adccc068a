import pytest
import torch

from convae.model import ACTIVATIONS, DECODERS, ConVAE, ConVAEConfig
from tests.conftest import prong_jets


def _seed_parameter_count(n=50, latent=30, p=30, f=3, k=5, dense=1500):
    """The research code's architecture counted by hand: weights + biases of every layer."""
    conv = (1 * n * f * k + n) + (n * 2 * n * k + 2 * n) + (2 * n * 4 * n * k + 4 * n)
    flat = 4 * n * (p - 3 * (k - 1))
    enc_dense = (flat * dense + dense) + (dense * 2 * latent + 2 * latent)
    dec_dense = (latent * dense + dense) + (dense * flat + flat)
    deconv = (4 * n * 2 * n * k + 2 * n) + (2 * n * n * k + n) + (n * 1 * f * k + 1)
    return conv + enc_dense + dec_dense + deconv


def test_default_is_the_seed_architecture():
    model = ConVAE()
    assert sum(p.numel() for p in model.parameters()) == _seed_parameter_count() == 11_193_661
    convs = [m for m in model.encoder_conv if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 5), (1, 5), (1, 5)]
    assert [c.out_channels for c in convs] == [50, 100, 200]
    # the research code's sigmoid output (min-max features) is an option; the default: identity
    assert isinstance(model.decoder_conv[-1], torch.nn.Identity)
    assert isinstance(ConVAE(ConVAEConfig(output="sigmoid")).decoder_conv[-1], torch.nn.Sigmoid)


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("num_particles", [30, 150])
@pytest.mark.parametrize("batch", [1, 7, 100])
def test_shapes_any_batch_size(num_particles, batch, decoder):
    model = ConVAE(
        ConVAEConfig(
            num_particles=num_particles,
            n_filter=4,
            dense_width=32,
            output="sigmoid",
            decoder=decoder,
        )
    )
    x = torch.rand(batch, num_particles, 3)
    recon, mean, logvar = model(x)
    assert recon.shape == x.shape and mean.shape == logvar.shape == (batch, 30)
    assert model.reconstruct(x).shape == x.shape
    assert model.sample(5).shape == (5, num_particles, 3)
    assert ((recon >= 0) & (recon <= 1)).all()


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_configurable_architecture(activation):
    cfg = ConVAEConfig(
        n_filter=3,
        conv_layers=2,
        kernel_width=3,
        dense_width=16,
        latent_dim=7,
        activation=activation,
        output="identity",
    )
    model = ConVAE(cfg)
    recon, mean, _ = model(torch.rand(4, 30, 3))
    assert recon.shape == (4, 30, 3) and mean.shape == (4, 7)
    assert any(isinstance(m, ACTIVATIONS[activation]) for m in model.modules())


@pytest.mark.parametrize("decoder", DECODERS)
def test_gradients_reach_every_parameter(decoder):
    model = ConVAE(ConVAEConfig(n_filter=4, dense_width=32, decoder=decoder))
    recon, mean, logvar = model(torch.rand(3, 30, 3))
    (recon.sum() + mean.sum() + logvar.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_sampling_is_reproducible_with_a_generator():
    model = ConVAE(ConVAEConfig(n_filter=4, dense_width=32))
    a = model.sample(3, generator=torch.Generator().manual_seed(1))
    b = model.sample(3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"activation": "tanh"}, "unknown activation"),
        ({"output": "softmax"}, "unknown output"),
        ({"num_particles": 10}, "do not fit 10 particles"),
        ({"latent_dim": 0}, "latent_dim must be >= 1"),
        ({"decoder": "sets"}, "unknown decoder .sets."),
        ({"condition": ["width"]}, "convae.condition must name distinct jet quantities"),
        ({"condition": ["tau32", "tau32"]}, "convae.condition must name distinct"),
    ],
)
def test_bad_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConVAEConfig(**kwargs)


def test_wrong_input_shape():
    with pytest.raises(ValueError, match=r"shape \(B, 30, 3\)"):
        ConVAE(ConVAEConfig(n_filter=4, dense_width=32)).encode(torch.rand(2, 3, 30))


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_conditional_decoder_reads_its_condition_and_refuses_to_go_without(decoder):
    small = {"n_filter": 4, "dense_width": 32, "latent_dim": 5, "decoder": decoder}
    model = ConVAE(ConVAEConfig(**small, condition=("tau21", "tau32")))
    x, mask = prong_jets(6, seed=0)  # physical units, as the condition is computed
    told = model.condition_of(x, mask)
    assert told.shape == (6, 2) and ((told > 0) & (told < 1)).all()
    assert ConVAE(ConVAEConfig(**small)).condition_of(x, mask) is None
    z = torch.randn(6, 5)
    assert not torch.allclose(model.decode(z, told), model.decode(z, told.flip(0)))
    for bad in (None, told[:, :1]):
        with pytest.raises(ValueError, match=r"told \['tau21', 'tau32'\]: a condition of shape"):
            model.decode(z, bad)
    with pytest.raises(ValueError, match="is told nothing"):
        ConVAE(ConVAEConfig(**small)).decode(z, told)
    recon, _, _ = model(torch.rand(6, 30, 3), told)
    assert recon.shape == (6, 30, 3)
    model.set_condition_scale(told)
    torch.testing.assert_close(model.condition_mean, told.mean(0))
    assert set(model.state_dict()) >= {"condition_mean", "condition_std"}
    assert not {"condition_mean", "condition_std"} & set(ConVAE(ConVAEConfig(**small)).state_dict())
