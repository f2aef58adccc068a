from dataclasses import replace

import pytest
import torch

from convae.diagnostics import keep_hardest, reconstruct, reconstruction_diagnostics
from convae.losses import chamfer
from convae.model import ConVAE, ConVAEConfig, decoded_particles
from convae.train import (
    ConVAELoss,
    LossConfig,
    TrainConfig,
    check_state,
    fit,
    model_from_state,
)
from jetflows.normalize import fit_normalization
from jetflows.physics import tau_ratios
from pipelines.run.checkpoints import load_checkpoint, save_checkpoint
from tests.conftest import prong_jets, random_jets, without_times

SMALL = ConVAEConfig(n_filter=4, dense_width=64, latent_dim=8)


def _data(n, seed):
    jets = random_jets(n, 30, seed=seed)
    x, mask = torch.tensor(jets.particles), torch.tensor(jets.mask)
    return x, mask


@pytest.fixture(scope="module")
def data():
    train, valid = _data(256, 1), _data(64, 2)
    norm = fit_normalization(train[0], train[1], kind="minmax")
    return train, valid, norm  # physical particles: fit normalizes at the network's edge


def _fit(data, epochs=4, loss=None, **kwargs):
    train, valid, norm = data
    torch.manual_seed(0)
    model = ConVAE(SMALL)
    cfg = TrainConfig(epochs=epochs, batch_size=32, lr=1e-3, seed=3, patience=0)
    loss = loss or LossConfig(beta=0.5, weighting="beta_vae")
    return model, fit(
        model, train, valid, loss=loss, config=cfg, normalization=norm, progress=False, **kwargs
    )


def test_training_on_generated_top_jets_lowers_the_validation_loss(pythia_top_files):
    from pipelines.data.jetnet import read_jetnet_file

    jets = read_jetnet_file(pythia_top_files[0], 30)
    x, mask = torch.tensor(jets.particles), torch.tensor(jets.mask)
    norm = fit_normalization(x[:500], mask[:500], kind="minmax")
    train, valid = ((x[s], mask[s]) for s in (slice(500), slice(500, None)))
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=5, batch_size=50, lr=1e-3, patience=0, seed=1)
    result = fit(
        ConVAE(SMALL),
        train,
        valid,
        config=cfg,
        normalization=norm,
        progress=False,
        loss=LossConfig(weighting="beta_vae", beta=0.01),
    )
    losses = [row["valid_loss"] for row in result.history]
    assert len(losses) == 5 and min(losses[1:]) < 0.9 * losses[0], losses
    assert {"train_particle", "train_jet", "train_kl", "valid_particle"} <= set(result.history[0])


@pytest.mark.parametrize("reflect", [False, True])
def test_resume_after_a_crash_continues_exactly(data, tmp_path, reflect):
    loss = LossConfig(beta=0.5, weighting="beta_vae", reflect=reflect)
    _, straight = _fit(data, epochs=4, loss=loss)

    class Crash(Exception):
        pass

    def crash_after_two(epoch, row, state):
        save_checkpoint(tmp_path / "convae.pt", state)
        if epoch == 1:
            raise Crash

    with pytest.raises(Crash):
        _fit(data, epochs=4, loss=loss, on_epoch=crash_after_two)
    state = load_checkpoint(tmp_path / "convae.pt", "jetflows.convae")
    assert state["epoch"] == 2 and len(state["history"]) == 2
    _, resumed = _fit(data, epochs=4, loss=loss, resume=state)
    assert [r["epoch"] for r in resumed.history] == [0, 1, 2, 3]
    assert without_times(resumed.history) == without_times(straight.history)
    for key, value in straight.state["state_dict"].items():
        torch.testing.assert_close(resumed.state["state_dict"][key], value, rtol=0, atol=0)
    assert (
        resumed.state["optimizer"]["state"][0]["step"]
        == straight.state["optimizer"]["state"][0]["step"]
    )


def test_an_interrupted_training_from_before_added_fields_still_resumes(data):
    """A last.pt written before `ConVAEConfig.condition`, `LossConfig.gamma_d2` and
    `TrainConfig.ema` existed: the fields had their defaults then, so its training resumes (it
    restarted from scratch), while a training that sets one of them otherwise does not."""
    states = []
    _fit(data, epochs=2, on_epoch=lambda epoch, row, state: states.append(state))
    dropped = {"model_config": "condition", "loss_config": "gamma_d2", "train_config": "ema"}
    older = {
        **states[0],
        **{key: {k: v for k, v in states[0][key].items() if k != field}
           for key, field in dropped.items()},
    }  # fmt: skip
    _, resumed = _fit(data, epochs=2, resume=older)
    assert [r["epoch"] for r in resumed.history] == [0, 1]
    other = LossConfig(beta=0.5, weighting="beta_vae", gamma_d2=0.5)
    with pytest.raises(ValueError, match="another loss_config"):
        _fit(data, epochs=2, loss=other, resume=older)


def test_checkpoint_rebuilds_the_model_alone(data, tmp_path):
    model, result = _fit(data, epochs=2)
    path = save_checkpoint(tmp_path / "c.pt", result.state)
    rebuilt = model_from_state(load_checkpoint(path, "jetflows.convae"))
    x = data[1][0][:5]
    torch.testing.assert_close(rebuilt.reconstruct(x), model.reconstruct(x))
    assert result.state["normalization"]["kind"] == "minmax"
    # a checkpoint from before the decoder option: the field's default, resumable as it was
    older = {**result.state, "model_config": dict(result.state["model_config"])}
    del older["model_config"]["decoder"]
    check_state(older, SMALL)
    with pytest.raises(ValueError, match="another ConVAE architecture"):
        check_state(older, replace(SMALL, decoder="dense"))


def test_early_stopping(data):
    train, valid, _ = data
    cfg = TrainConfig(epochs=50, batch_size=64, lr=1e-12, patience=2, seed=0)
    result = fit(ConVAE(SMALL), train, valid, config=cfg, progress=False)
    assert result.stopped_early and len(result.history) < 50
    # every epoch ran: not early, even though the loop also stops there
    full = fit(ConVAE(SMALL), train, valid, config=replace(cfg, epochs=2), progress=False)
    assert len(full.history) == 2 and not full.stopped_early


def test_nan_input_and_nan_training(data):
    train, valid, _ = data
    bad = train[0].clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="train: particles contain NaN"):
        fit(ConVAE(SMALL), (bad, train[1]), valid, progress=False)
    cfg = TrainConfig(epochs=3, batch_size=64, lr=1e30, seed=0)
    with pytest.raises(FloatingPointError, match=r"epoch \d+: the \w+ term became"):
        fit(
            ConVAE(SMALL),
            train,
            valid,
            config=cfg,
            loss=LossConfig(weighting="beta_vae", beta=1.0),
            progress=False,
        )


def test_bad_checkpoints(tmp_path, data):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt", "jetflows.convae")
    torch.save({"kind": "jetflows.flow"}, tmp_path / "flow.pt")
    with pytest.raises(ValueError, match=r"expected 'jetflows\.convae'"):
        load_checkpoint(tmp_path / "flow.pt", "jetflows.convae")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt", "jetflows.convae")
    _, result = _fit(data, epochs=1)
    other = ConVAE(ConVAEConfig(n_filter=5, dense_width=64, latent_dim=8))
    with pytest.raises(ValueError, match="another ConVAE architecture"):
        fit(other, data[0], data[1], resume=result.state, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"particle": "l2"}, "unknown particle loss"),
        ({"weighting": "x"}, "unknown weighting"),
        ({"space": "latent"}, "unknown loss space"),
        ({"particle": "chamfer_pt", "space": "normalized"}, "chamfer_pt weights by pt_rel"),
        ({"particle": "emd", "space": "normalized"}, "emd weights by pt_rel"),
        ({"feature_weights": (1.0, 1.0)}, "3 positive numbers"),
        ({"feature_weights": (1.0, 0.0, 1.0)}, "3 positive numbers"),
        ({"gamma_tau": -1.0}, "gamma_tau must be a finite number >= 0"),
        ({"gamma_tau": float("nan")}, "gamma_tau must be a finite number >= 0"),
    ],
)
def test_bad_loss_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LossConfig(**kwargs)


def test_bf16_mixed_precision_trains(data):
    train, valid, norm = data
    cfg = TrainConfig(epochs=2, batch_size=64, lr=1e-3, seed=0, precision="bf16")
    result = fit(ConVAE(SMALL), train, valid, config=cfg, normalization=norm, progress=False)
    assert all(torch.isfinite(torch.tensor(r["valid_loss"])) for r in result.history)
    with pytest.raises(ValueError, match="unknown precision"):
        TrainConfig(precision="fp16")


def test_torch_compile_option_trains(data):
    train, valid, norm = data
    cfg = TrainConfig(epochs=1, batch_size=64, lr=1e-3, seed=0, compile="eager")
    result = fit(ConVAE(SMALL), train, valid, config=cfg, normalization=norm, progress=False)
    assert torch.isfinite(torch.tensor(result.history[0]["valid_loss"]))
    assert result.state["train_config"]["compile"] == "eager"


class _Fixed(torch.nn.Module):
    """A stand-in ConVAE whose reconstruction is given: to check what the ConVAELoss computes."""

    def __init__(self, recon):
        super().__init__()
        self.recon = recon

    def condition_of(self, particles, mask):
        return None  # unconditional, as the default ConVAE

    def forward(self, x, condition=None):
        self.seen = x
        zeros = torch.zeros(len(x), 2)
        return self.recon, zeros, zeros


def _objective(recon, norm, **loss):
    cfg = LossConfig(weighting="beta_vae", beta=0.0, gamma=0.0, **loss)
    return ConVAELoss(cfg, 1.0, norm), _Fixed(recon)


def test_feature_weights_and_loss_space(data):
    _, (phys_x, mask), norm = data
    phys_x, mask = phys_x[:16], mask[:16]
    x = norm.transform(phys_x, mask)  # what the network sees
    recon = x.clone()
    recon[..., 2] += 0.1 * mask  # reconstruction off in pt only (normalized units)
    phys_recon = norm.inverse(recon, mask)
    objective, model = _objective(recon, norm)
    base = objective(model, phys_x, mask)[1]["particle"]
    torch.testing.assert_close(base, chamfer(phys_x, phys_recon, mask, mask).mean())
    objective, model = _objective(recon, norm, feature_weights=(1.0, 1.0, 3.0))
    w = torch.tensor([1.0, 1.0, 3.0])
    weighted = chamfer(phys_x * w, phys_recon * w, mask, mask).mean()
    torch.testing.assert_close(objective(model, phys_x, mask)[1]["particle"], weighted)
    assert weighted > 2 * base  # the pt mismatch now counts more
    objective, model = _objective(recon, norm, space="normalized")
    expected = chamfer(x * mask[..., None], recon * mask[..., None], mask, mask).mean()
    torch.testing.assert_close(objective(model, phys_x, mask)[1]["particle"], expected)
    assert not torch.isclose(expected, base)  # physical units differ: pt_rel scale != 1


def test_reflections_are_a_symmetry_applied_in_training_only(data):
    (phys, mask), _, norm = data
    phys, mask = phys[:200], mask[:200]
    x = norm.transform(phys, mask)  # what the network sees
    objective, model = _objective(x.clone(), norm, reflect=True)
    model.train()
    objective(model, phys, mask)
    seen = norm.inverse(model.seen, mask)
    torch.testing.assert_close(seen.abs(), phys.abs())  # each coordinate kept or negated
    torch.testing.assert_close(seen[..., 2], phys[..., 2])  # pt untouched
    assert (model.seen[~mask] == 0).all()  # padding stays padding
    flipped = (seen[..., :2] * phys[..., :2] < 0).any(1).float().mean(0)  # per jet, eta / phi
    assert ((flipped > 0.35) & (flipped < 0.65)).all(), flipped
    model.eval()
    objective(model, phys, mask)
    assert torch.equal(model.seen, x)


def _prong_toys(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Half two-prong jets of 10 particles, half three-prong jets of 15, pt-sorted, (n, 15, 3)."""
    two, _ = prong_jets(n // 2, seed=seed, prongs=2, per_prong=5)
    three, _ = prong_jets(n - n // 2, seed=seed + 100, prongs=3, per_prong=5)
    x = torch.cat([torch.cat([two, torch.zeros(len(two), 5, 3)], 1), three])
    x = x[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]
    return keep_hardest(x, (x[..., 2] > 0).sum(1))


@pytest.mark.parametrize(("gamma_tau", "keeps_prongs"), [(0.0, False), (1.0, True)])
def test_substructure_terms_make_the_convae_keep_the_prongs(gamma_tau, keeps_prongs):
    """The standard config's ConVAE (Chamfer with pt x5, mass terms, reflections; latent 8) on
    toy two- and three-prong jets, 40 epochs of 4,000 jets (~10 s alone on one thread without
    the substructure terms, ~25 s with them). Without them it decodes prongs it cannot count:
    r(tau32) -0.20, reconstructed tau32 median 0.64 against the inputs' 0.35. With
    gamma_tau = 1: r(tau32) 0.86, r(tau21) 0.95."""
    train, valid, test = _prong_toys(4000, 0), _prong_toys(500, 1), _prong_toys(1000, 2)
    torch.manual_seed(0)
    model = ConVAE(
        ConVAEConfig(num_particles=15, n_filter=16, conv_layers=2, dense_width=128, latent_dim=8)
    )
    norm = fit_normalization(*train, kind="standard")
    loss = LossConfig(
        beta=1e-4, gamma=20.0, gamma_tau=gamma_tau, feature_weights=(1.0, 1.0, 5.0), reflect=True
    )
    cfg = TrainConfig(epochs=40, batch_size=128, lr=1e-3, schedule="cosine", patience=0)
    fit(model, train, valid, loss=loss, config=cfg, normalization=norm, progress=False)
    rec = reconstruct(model, *test, normalization=norm)
    d = reconstruction_diagnostics(*test, *rec, generator=torch.Generator().manual_seed(0))
    assert (d.correlation["tau32"] >= 0.8) is keeps_prongs, d.correlation


def test_a_conditional_decoder_draws_the_prongs_it_is_told():
    """A ConVAE whose decoder is told (tau21, tau32) (`ConVAEConfig.condition`), latent 2, on
    the toy two- and three-prong jets (20 epochs of 4,000, ~15 s alone on one thread). Each
    held-out jet's latent is decoded told another held-out jet's ratios, as the two-stage flow
    will tell it sampled ones: the decoded tau32 follows the told one (r 0.92; a decoder that
    ignores the condition keeps the jet's own prongs: r 0.01), and the checkpoint keeps the
    condition's scale."""
    train, valid, (x, mask) = _prong_toys(4000, 0), _prong_toys(500, 1), _prong_toys(1000, 2)
    torch.manual_seed(0)
    config = ConVAEConfig(
        num_particles=15, n_filter=16, conv_layers=2, dense_width=128, latent_dim=2,
        condition=("tau21", "tau32"),
    )  # fmt: skip
    model = ConVAE(config)
    norm = fit_normalization(*train, kind="standard")
    loss = LossConfig(beta=1e-4, gamma=20.0, gamma_tau=1.0, feature_weights=(1.0, 1.0, 5.0))
    cfg = TrainConfig(epochs=20, batch_size=128, lr=1e-3, schedule="cosine", patience=0)
    result = fit(model, train, valid, loss=loss, config=cfg, normalization=norm, progress=False)
    model = model_from_state(result.state).eval()
    told = model.condition_of(x, mask)
    other = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = model.encode(norm.transform(x, mask))[0]
        decoded = decoded_particles(model.decode(z, told[other]), norm)
    decoded = keep_hardest(decoded, mask.sum(1))
    got = tau_ratios(*decoded)[:, 1].float()
    assert torch.corrcoef(torch.stack([got, told[other, 1]]))[0, 1] >= 0.8
    assert torch.corrcoef(torch.stack([told[:, 1], told[other, 1]]))[0, 1].abs() < 0.2
