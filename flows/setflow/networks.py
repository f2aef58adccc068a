"""The velocity networks of a set flow and how they see the time t.

Both are permutation-equivariant: every particle goes through the same weights and particles
meet only through pooled summaries (EPiC) or attention without positions (transformer), so
permuting the particles permutes the output, and a padded particle changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from flows.setflow.config import NETWORK_NAMES, TIME_EMBEDDING_NAMES, TIME_FEATURES, SetFlowConfig


def _mlp(n_in: int, width: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, width), nn.SiLU(), nn.Linear(width, n_out))


def _masked_pools(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean and (sum / P) of the real particles' rows: (B, 2W) from h (B, P, W), mask (B, P, 1)."""
    total = (h * mask).sum(1)  # (B, W)
    return torch.cat([total / mask.sum(1).clamp_min(1), total / h.shape[1]], -1)


class EPiCLayer(nn.Module):
    """One EPiC layer: the global vector reads the pooled particles, then every particle reads
    the global vector (residual updates; SiLU: a smooth field for the ODE)."""

    def __init__(self, width: int, global_width: int, context: int) -> None:
        super().__init__()
        self.to_global = _mlp(2 * width + global_width + context, width, global_width)
        self.to_local = _mlp(width + global_width + context, width, width)

    def forward(
        self, h: torch.Tensor, g: torch.Tensor, mask: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """h: (B, P, W), g: (B, G), mask: (B, P, 1) float, c: (B, C) -> (h, g)."""
        g = g + self.to_global(torch.cat([_masked_pools(h, mask), g, c], -1))
        shared = torch.cat([g, c], -1)[:, None].expand(-1, h.shape[1], -1)  # (B, P, G + C)
        return h + self.to_local(torch.cat([h, shared], -1)) * mask, g


class EPiCNet(nn.Module):
    """Permutation-equivariant velocity network of EPiC layers.

    Arguments:
        features: F per particle; context: C of the jet-level condition (time features
        included); config: `SetFlowConfig`.
    """

    #: its second pool divides by the number of slots P: padding slots cannot be cut away
    cuts_padding = False

    def __init__(self, *, features: int, context: int, config: SetFlowConfig) -> None:
        super().__init__()
        w, gw = config.width, config.global_width
        self.embed = _mlp(features + context, w, w)
        self.start = nn.Linear(context, gw)
        self.blocks = nn.ModuleList(EPiCLayer(w, gw, context) for _ in range(config.layers))
        self.out = nn.Linear(w, features)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x: (B, P, F), mask: (B, P) bool, c: (B, C) -> velocity (B, P, F), 0 on padding."""
        m = mask[..., None].to(x.dtype)  # (B, P, 1)
        h = self.embed(torch.cat([x, c[:, None].expand(-1, x.shape[1], -1)], -1)) * m
        g = self.start(c)
        for block in self.blocks:
            h, g = block(h, g, m, c)
        return self.out(h) * m


PAIR_EPS = 1e-4  # ln(d^2 + eps) in standardized units: finite for a particle and itself


class PairBias(nn.Module):
    """Per-head additive attention bias from particle pairs: (B, P, F) -> (B, heads, P, P),
    -inf on padded keys (so padding reaches no particle)."""

    def __init__(self, heads: int, hidden: int = 32) -> None:
        super().__init__()
        self.mlp = _mlp(3, hidden, heads)
        nn.init.zeros_(self.mlp[-1].weight), nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, P, F>=3) (eta, phi, log pt first), mask (B, P) bool."""
        delta = x[:, :, None, :2] - x[:, None, :, :2]  # (B, P, P, 2)
        lpt_i, lpt_j = x[:, :, None, 2].expand_as(delta[..., 0]), x[:, None, :, 2]
        pairs = torch.stack(
            [(delta**2).sum(-1).add(PAIR_EPS).log(), torch.minimum(lpt_i, lpt_j), lpt_i - lpt_j],
            -1,
        )  # (B, P, P, 3)
        bias = self.mlp(pairs).masked_fill(~mask[:, None, :, None], float("-inf"))
        return bias.permute(0, 3, 1, 2)  # (B, heads, P, P)


class TransformerNet(nn.Module):
    """Permutation-equivariant velocity network: pre-norm transformer blocks over the real
    particles (padding excluded as keys), no positional encoding, the context added to every
    particle's embedding."""

    #: padding slots reach no real particle: sampling may cut them away
    cuts_padding = True

    def __init__(self, *, features: int, context: int, config: SetFlowConfig) -> None:
        super().__init__()
        w = config.width
        self.embed = _mlp(features + context, w, w)
        block = nn.TransformerEncoderLayer(
            w, config.heads, 2 * w, dropout=0.0, activation="gelu", batch_first=True,
            norm_first=True,
        )  # fmt: skip
        self.blocks = nn.TransformerEncoder(block, config.layers, enable_nested_tensor=False)
        self.films = None
        if config.conditioning == "blocks":
            self.films = nn.ModuleList(nn.Linear(context, 2 * w) for _ in range(config.layers))
            for film in self.films:  # start as the "input" network: scale 1, shift 0
                nn.init.zeros_(film.weight), nn.init.zeros_(film.bias)
        self.pairs = PairBias(config.heads) if config.pair_bias else None
        self.out = nn.Linear(w, features)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x: (B, P, F), mask: (B, P) bool, c: (B, C) -> velocity (B, P, F), 0 on padding."""
        h = self.embed(torch.cat([x, c[:, None].expand(-1, x.shape[1], -1)], -1))
        # no key mask when every slot is real (top, W, Z jets at 30 particles): the same
        # attention without the masked softmax; the pair bias carries the padding itself
        if self.pairs is not None:
            keys: torch.Tensor | None = self.pairs(x, mask)
        else:
            keys = None if bool(mask.all()) else _real_keys(mask)
        films = self.films or [None] * len(self.blocks.layers)
        for block, film in zip(self.blocks.layers, films, strict=True):
            if film is not None:
                scale, shift = film(c)[:, None].chunk(2, -1)  # (B, 1, w) each
                h = h * (1 + scale) + shift
            h = _block(block, h, keys)
        return self.out(h) * mask[..., None].to(x.dtype)


def _real_keys(mask: torch.Tensor) -> torch.Tensor:
    """The keys a particle attends to: (B, 1, 1, P) bool from mask (B, P). A jet without
    particles attends to its padding (its output is masked anyway): a row of no keys is NaN."""
    return (mask | ~mask.any(1, keepdim=True))[:, None, None, :]


def _block(
    block: nn.TransformerEncoderLayer, h: torch.Tensor, keys: torch.Tensor | None
) -> torch.Tensor:
    """``block`` (pre-norm, no dropout) on h (B, P, W); ``keys``: None (every slot real), the
    real keys (B, 1, 1, P) bool, or an additive bias (B, heads, P, P).

    Written out on `F.scaled_dot_product_attention` with the layer's own weights (checkpoints
    are unchanged) because the layer's key-padding path is slow on a CPU: 512 jets of 90
    slots, 10 padded, one thread, Intel Xeon: 0.73 s in bf16 through the layer, 0.26 s here
    (0.86 against 0.51 in fp32), the same jets to 1e-6; and its inference fast path gives NaN
    for a per-head float mask in torch 2.13."""
    attn = block.self_attn
    b, p, w = h.shape
    heads = attn.num_heads
    y = block.norm1(h)
    qkv = F.linear(y, attn.in_proj_weight, attn.in_proj_bias)  # (B, P, 3W)
    q, k, v = qkv.view(b, p, 3, heads, w // heads).permute(2, 0, 3, 1, 4)  # (B, heads, P, W/h)
    if keys is not None and keys.is_floating_point():
        keys = keys.to(q.dtype)  # under autocast q is bf16; SDPA wants the bias alike
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=keys)
    h = h + attn.out_proj(o.transpose(1, 2).reshape(b, p, w))
    return h + block.linear2(block.activation(block.linear1(block.norm2(h))))


#: name -> velocity network class (keyword arguments features, context, config)
NETWORKS: dict[str, Callable[..., nn.Module]] = {"epic": EPiCNet, "transformer": TransformerNet}


def time_features(t: torch.Tensor) -> torch.Tensor:
    """t (B,) in [0, 1] -> (B, TIME_FEATURES) cos/sin features."""
    freqs = math.pi * torch.arange(1, TIME_FEATURES // 2 + 1, device=t.device, dtype=t.dtype)
    angles = t[:, None] * freqs  # (B, 4)
    return torch.cat([angles.cos(), angles.sin()], -1)


LOG_SIGMA_LIMIT = 8.0  # |log((1 - t) / t)| clipped: t from 3e-4 to 1 - 3e-4


def log_sigma_features(t: torch.Tensor) -> torch.Tensor:
    """t (B,) -> (B, TIME_FEATURES): t, s = log((1 - t) / t) / 8 (clipped to [-1, 1]) and
    cos/sin(k pi s) for k = 1..3. The noise level on a log scale (as EDM's c_noise): t = 0.99
    and 0.999 are far apart here, while cos/sin of pi t barely tell them apart, and near t = 1
    is where the velocity changes fastest."""
    t = t.clamp(1e-6, 1 - 1e-6)
    s = ((1 - t) / t).log().div(LOG_SIGMA_LIMIT).clamp(-1, 1)[:, None]  # (B, 1)
    angles = s * math.pi * torch.arange(1, 4, device=t.device, dtype=t.dtype)  # (B, 3)
    return torch.cat([t[:, None], s, angles.cos(), angles.sin()], -1)


#: name -> t (B,) -> (B, TIME_FEATURES)
TIME_EMBEDDINGS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "fourier": time_features,
    "log_sigma": log_sigma_features,
}

assert tuple(NETWORKS) == NETWORK_NAMES and tuple(TIME_EMBEDDINGS) == TIME_EMBEDDING_NAMES
