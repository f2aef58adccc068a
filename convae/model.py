"""The convolutional VAE of the research code, configurable, for any batch size and P.

Layout: a jet enters as particles (B, P, F); the network sees it as a one-channel image
(B, 1, F, P) with the F features as rows and the P particles as columns. The first convolution
spans all F rows (kernel (F, k)), the next ones run along the particles (kernel (1, k)), each
doubling the channels; a dense bottleneck gives the mean and log-variance of the latent Gaussian.
The decoder mirrors it with transposed convolutions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from jetflows.errors import UserError
from jetflows.normalize import Normalization
from jetflows.physics import JET_QUANTITIES, PT, jet_quantities, sort_by_pt

#: Activations the research code's tuning searched over.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "leakyrelu": nn.LeakyReLU,
    "selu": nn.SELU,
    "elu": nn.ELU,
}
#: Output layers: identity for standardized features (the default), sigmoid for features
#: min-max scaled into [0, 1] as the research code did (that collapsed the ConVAE: docs/models.md).
OUTPUTS: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "identity": nn.Identity}
DECODERS = ("deconv", "dense", "set")
#: the set decoder's per-slot width and heads: fixed rather than dense_width (1,500 in the
#: research architecture would make 30 slots of attention cost more than the rest of the model)
SET_WIDTH, SET_HEADS = 64, 4


@dataclass(frozen=True)
class ConVAEConfig:
    """ConVAE hyperparameters; defaults: the research code's architecture, identity output.

    Arguments:
        num_particles: P, particles per jet (30 or 150).
        num_features: F, features per particle (3).
        n_filter: channels of the first convolution; layer i has n_filter * 2**i.
        conv_layers: number of convolutions (and transposed convolutions).
        kernel_width: k, width of every kernel along the particles.
        dense_width: width of the dense layer on each side of the latent space.
        latent_dim: size of the latent vector.
        activation: a name in `ACTIVATIONS`.
        output: a name in `OUTPUTS`.
        decoder: "deconv" (the paper's: transposed convolutions mirroring the encoder) or
            "dense" (two dense layers of dense_width, then every particle's features at once:
            each slot may go anywhere, where a transposed convolution ties neighbouring slots),
            or "set" (P learnt slots, each told the latent's dense features before each of
            ``conv_layers`` transformer blocks, in which the slots attend to each other: a
            particle is placed knowing where the others go, as a prong's members must be).
        condition: jet quantities (names in `jetflows.physics.JET_QUANTITIES`: tau21, tau32,
            d2, mass ...) the decoder is told beside the latent vector, computed from the input
            jet (`ConVAE.condition_of`): a conditional VAE. Empty (default): the paper's model.
            A latent of 16 holds a jet's tau32 only to r 0.74 (an MLP probe on the shipped
            top ConVAE, `benchmarks/latent_probe.py`), so the decoder cannot place three
            prongs it is not told of; told, it can, and the two-stage flow samples these
            quantities with the latent.
    """

    num_particles: int = 30
    num_features: int = 3
    n_filter: int = 50
    conv_layers: int = 3
    kernel_width: int = 5
    dense_width: int = 1500
    latent_dim: int = 30
    activation: str = "relu"
    output: str = "identity"
    decoder: str = "deconv"
    condition: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        sizes = (
            "num_particles",
            "num_features",
            "n_filter",
            "conv_layers",
            "kernel_width",
            "dense_width",
            "latent_dim",
        )
        for name in sizes:
            if int(getattr(self, name)) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.activation not in ACTIVATIONS:
            raise UserError(
                f"unknown activation {self.activation!r}: use one of {sorted(ACTIVATIONS)}"
            )
        if self.output not in OUTPUTS:
            raise UserError(f"unknown output {self.output!r}: use one of {sorted(OUTPUTS)}")
        if self.decoder not in DECODERS:
            raise UserError(f"unknown decoder {self.decoder!r}: use one of {DECODERS}")
        object.__setattr__(self, "condition", tuple(self.condition))  # YAML gives a list
        unknown = sorted(set(self.condition) - set(JET_QUANTITIES))
        if unknown or len(set(self.condition)) != len(self.condition):
            raise UserError(
                f"convae.condition must name distinct jet quantities in "
                f"{sorted(JET_QUANTITIES)}, got {list(self.condition)}"
            )
        if self.conv_width < 1:
            raise UserError(
                f"{self.conv_layers} convolutions of width {self.kernel_width} do not "
                f"fit {self.num_particles} particles: use fewer or narrower kernels"
            )

    @property
    def conv_width(self) -> int:
        """Particle columns left after the convolutions (valid padding, stride 1)."""
        return self.num_particles - self.conv_layers * (self.kernel_width - 1)

    @property
    def channels(self) -> list[int]:
        """Channels through the convolutions: [1, n, 2n, 4n, ...]."""
        return [1] + [self.n_filter * 2**i for i in range(self.conv_layers)]

    @property
    def flat_size(self) -> int:
        """Size of the flattened convolution output."""
        return self.channels[-1] * self.conv_width


def _conv_stack(cfg: ConVAEConfig, transpose: bool) -> nn.Sequential:
    """Convolutions (encoder) or their mirror (decoder), an activation between layers."""
    conv = nn.ConvTranspose2d if transpose else nn.Conv2d
    pairs = list(zip(cfg.channels[:-1], cfg.channels[1:], strict=True))
    kernels = [(cfg.num_features, cfg.kernel_width)] + [(1, cfg.kernel_width)] * (len(pairs) - 1)
    layers = [(c_in, c_out, k) for (c_in, c_out), k in zip(pairs, kernels, strict=True)]
    if transpose:
        layers = [(c_out, c_in, k) for c_in, c_out, k in reversed(layers)]
    modules: list[nn.Module] = []
    for i, (c_in, c_out, kernel) in enumerate(layers):
        modules.append(conv(c_in, c_out, kernel))
        if not transpose or i < len(layers) - 1:  # the decoder ends in the output layer instead
            modules.append(ACTIVATIONS[cfg.activation]())
    if transpose:
        modules.append(OUTPUTS[cfg.output]())
    return nn.Sequential(*modules)


class ConVAE(nn.Module):
    """Convolutional VAE on particle clouds.

    Arguments:
        config: a `ConVAEConfig` (default: the research architecture, 30 particles, latent 30).

    Example:
        >>> model = ConVAE(ConVAEConfig())
        >>> recon, mean, logvar = model(torch.rand(7, 30, 3))
        >>> recon.shape, mean.shape
        (torch.Size([7, 30, 3]), torch.Size([7, 30]))
    """

    def __init__(self, config: ConVAEConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or ConVAEConfig()
        act = ACTIVATIONS[cfg.activation]
        self.encoder_conv = _conv_stack(cfg, transpose=False)
        self.encoder_dense = nn.Sequential(
            nn.Linear(cfg.flat_size, cfg.dense_width),
            act(),
            nn.Linear(cfg.dense_width, 2 * cfg.latent_dim),
        )
        width = cfg.latent_dim + len(cfg.condition)  # the decoder reads (z, condition)
        head: list[nn.Module] = [nn.Linear(width, cfg.dense_width), act()]
        if cfg.decoder == "set":  # the slots read the dense features
            self.decoder_set = SetDecoder(cfg)
        elif cfg.decoder == "dense":  # every particle's features from one more dense layer
            out = cfg.num_particles * cfg.num_features
            head += [nn.Linear(cfg.dense_width, cfg.dense_width), act()]
            head += [nn.Linear(cfg.dense_width, out), OUTPUTS[cfg.output]()]
        else:  # the convolutions' input, then the transposed convolutions
            head += [nn.Linear(cfg.dense_width, cfg.flat_size), act()]
            self.decoder_conv = _conv_stack(cfg, transpose=True)
        self.decoder_dense = nn.Sequential(*head)
        if cfg.condition:  # its scale (training jets, `set_condition_scale`), saved with the
            # weights; only then, so an unconditional model's checkpoints stay as they were
            self.register_buffer("condition_mean", torch.zeros(len(cfg.condition)))
            self.register_buffer("condition_std", torch.ones(len(cfg.condition)))

    def _check(self, x: torch.Tensor) -> None:
        cfg = self.config
        if x.dim() != 3 or x.shape[1:] != (cfg.num_particles, cfg.num_features):
            raise UserError(
                f"particles must have shape (B, {cfg.num_particles}, "
                f"{cfg.num_features}), got {tuple(x.shape)}"
            )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """particles (B, P, F) -> mean, log-variance, each (B, latent_dim)."""
        self._check(x)
        h = self.encoder_conv(x.transpose(1, 2).unsqueeze(1))  # (B, 1, F, P) -> (B, C, 1, W)
        mean, logvar = self.encoder_dense(h.flatten(1)).chunk(2, dim=1)
        return mean, logvar

    def condition_of(self, particles: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """The decoder's condition of jets: particles (B, P, 3) in physical units, mask (B, P)
        -> (B, len(condition)) raw quantities (float32), or None for an unconditional model."""
        if not self.config.condition:
            return None
        return jet_quantities(particles, mask, self.config.condition).float()

    def set_condition_scale(self, condition: torch.Tensor) -> None:
        """Standardize the decoder's condition by that of the training jets (N, C)."""
        if not self.config.condition:
            raise UserError("this ConVAE's decoder is told nothing: it has no condition scale")
        self.condition_mean.copy_(condition.mean(0))
        std = condition.std(0) if len(condition) > 1 else torch.ones_like(condition[0])
        self.condition_std.copy_(std.clamp_min(1e-6))

    def _told(self, z: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        """(z, standardized condition) (B, latent_dim + C): what the decoder reads."""
        want = len(self.config.condition)
        expected = (len(z), want) if want else None
        got = None if condition is None else tuple(condition.shape)
        if got != expected:
            raise UserError(
                f"this ConVAE's decoder is told {list(self.config.condition) or 'nothing'}: "
                f"a condition of shape {expected} is needed, got {got}"
            )
        if condition is None:
            return z
        # standardized in the scale's float32 (z may be bf16 under autocast), then cast
        told = condition.to(device=z.device, dtype=self.condition_mean.dtype)
        scaled = ((told - self.condition_mean) / self.condition_std).to(z.dtype)
        return torch.cat([z, scaled], 1)

    def decode(self, z: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """latent (B, latent_dim) (and condition (B, C), raw, for a conditional model) ->
        particles (B, P, F)."""
        cfg = self.config
        h = self.decoder_dense(self._told(z, condition))
        if cfg.decoder == "set":
            return self.decoder_set(h)
        if cfg.decoder == "dense":
            return h.view(-1, cfg.num_particles, cfg.num_features)
        h = h.view(-1, cfg.channels[-1], 1, cfg.conv_width)  # (B, C, 1, W)
        return self.decoder_conv(h).squeeze(1).transpose(1, 2)  # (B, 1, F, P) -> (B, P, F)

    def forward(
        self, x: torch.Tensor, condition: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """particles (B, P, F) (condition (B, C) if conditional) -> reconstruction (B, P, F),
        mean and log-variance (B, latent)."""
        mean, logvar = self.encode(x)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)  # reparameterisation
        return self.decode(z, condition), mean, logvar

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Decode the posterior mean: particles (B, P, F) -> (B, P, F)."""
        return self.decode(self.encode(x)[0], condition)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        condition: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``n`` jets (n, P, F) decoded from the standard-normal prior (told ``condition``
        (n, C) if conditional)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=device)
        return self.decode(z, condition)


class SetDecoder(nn.Module):
    """The "set" decoder: from the latent's dense features h (B, dense_width), P learnt slots
    of width `SET_WIDTH` are given a projection of h before each pre-norm transformer block
    (self-attention among the slots), then each slot's features -> particles (B, P, F).

    A slot is a particle the decoder is free to put anywhere (the Chamfer loss does not care
    which slot lands where); attention lets the slots of one prong share its position.
    """

    def __init__(self, cfg: ConVAEConfig) -> None:
        super().__init__()
        w = SET_WIDTH
        # unit-scale slots: distinct enough to take distinct particles from the start
        self.slots = nn.Parameter(torch.randn(cfg.num_particles, w))
        self.tell = nn.ModuleList(nn.Linear(cfg.dense_width, w) for _ in range(cfg.conv_layers))
        block = nn.TransformerEncoderLayer(
            w, SET_HEADS, 2 * w, dropout=0.0, activation="gelu", batch_first=True,
            norm_first=True,
        )  # fmt: skip
        self.blocks = nn.TransformerEncoder(block, cfg.conv_layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, cfg.num_features))
        self.output = OUTPUTS[cfg.output]()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h: (B, dense_width) -> particles (B, P, F)."""
        x = self.slots.expand(len(h), -1, -1)
        for tell, block in zip(self.tell, self.blocks.layers, strict=True):
            x = block(x + tell(h)[:, None])
        return self.output(self.out(x))


def decoded_particles(decoded: torch.Tensor, normalization: Normalization | None) -> torch.Tensor:
    """Decoder output (B, P, 3) -> particles (B, P, 3) in physical units, sorted by decreasing
    pt_rel; pt_rel clamped at 0 (an identity output layer can go below). Which of the P are
    real is the caller's choice (a multiplicity, a pt threshold)."""
    x = normalization.inverse(decoded) if normalization is not None else decoded
    return sort_by_pt(torch.cat([x[..., :PT], x[..., PT:].clamp_min(0)], -1))
