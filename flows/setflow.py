"""A continuous normalizing flow over the particle set, trained by conditional flow matching.

A jet is a set: a velocity field v(t, x, mask, context) acts on every particle with shared
weights and lets particles talk only through pooled (permutation-invariant) summaries, so
permuting the particles permutes the velocity and a padded particle changes nothing. Two
networks: `EPiCNet` (EPiC layers, Buhmann et al. arXiv:2301.08128, as in EPiC-FM
arXiv:2310.00049: per-particle MLPs exchanging one pooled global vector) and `TransformerNet`
(a small masked transformer without positions). The flow x(0) ~ N(0, I) -> x(1) = data follows
dx/dt = v; it is trained by conditional flow matching on straight (optimal-transport) paths
(Lipman et al. arXiv:2210.02747), sampled with a fixed-step ODE solver, and its exact
log-likelihood comes from integrating the divergence of v backwards.

Libraries: Meta's ``flow_matching`` supplies the path (``AffineProbPath`` with
``CondOTScheduler``: x_t and its target velocity), the ODE solver (``ODESolver``, on
torchdiffeq's fixed-grid Euler / midpoint / RK4) and the likelihood (``compute_likelihood``,
exact divergence or Hutchinson). We chose it over zuko's ``FreeFormJacobianTransform`` (an
adaptive solver only: no fixed, configurable step count) and torchcfm (no likelihood). What is
ours: the networks, the masking (padded particles take no part in the loss, the velocity or the
density) and the (N, P, F) <-> (N, P * F) reshapes the library's divergence loop needs.

Example:
    >>> flow = SetFlow(SetFlowConfig(width=16, layers=2, steps=4), context=2)
    >>> x = torch.randn(5, 7, 3)
    >>> mask = torch.arange(7)[None] < torch.tensor([[3], [7], [1], [5], [2]])  # n = 3, 7, ...
    >>> flow.loss(x, mask, torch.randn(5, 2)).shape
    torch.Size([])
    >>> flow.sample(mask, torch.randn(5, 2)).shape, flow.log_prob(x, mask, torch.randn(5, 2)).shape
    (torch.Size([5, 7, 3]), torch.Size([5]))
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from flows.models import Flow
from flows.particle import N_COLUMN, ParticleTarget, finish, sample_jet_rows
from jetflows.checks import require
from jetflows.errors import UserError
from jetflows.training import FitResult, TrainConfig, check_kind, fit_loop

CHECKPOINT_KIND = "jetflows.setflow"
SOLVERS = ("euler", "midpoint", "rk4")  # torchdiffeq's fixed-grid methods
DIVERGENCES = ("exact", "hutchinson")
PRECISIONS = ("fp32", "bf16", "auto")
COUPLINGS = ("independent", "particles")
PREDICTIONS = ("velocity", "data")
CONDITIONINGS = ("input", "blocks")
#: a data-predicting flow's velocity is (D - x) / (1 - t); 1 - t is held >= this, so RK4's
#: stage at t = 1 (and log_prob's start there) stays finite
DATA_PREDICTION_TMIN = 0.05
#: `SetFlowConfig` fields that only sample (the ODE): changing them needs no retraining
SAMPLING_FIELDS = ("solver", "steps", "precision", "guidance", "guidance_from", "guidance_until")
#: sampling fields added after runs were sampled, with their defaults (at which the pipeline
#: leaves them out of its generate stage's key, so that those runs' jets stay up to date)
ADDED_SAMPLING_FIELDS = {"guidance": 1.0, "guidance_from": 0.0, "guidance_until": 1.0}
#: `SetFlowConfig` fields that shape only the guide's training, never the flow's own
GUIDE_FIELDS = ("guide_epochs", "guide_width", "guide_layers")
#: jets integrated at once when sampling: on 2 CPU cores 500 ran 1.7x faster than 10,000 in
#: one batch (the attention's working set stays in cache); on a GPU larger chunks may pay
SAMPLE_CHUNK = 512
TIME_FEATURES = 8  # t as cos/sin of 4 frequencies: smooth in t, spread over [0, 1]


@dataclass(frozen=True)
class SetFlowConfig:
    """A set flow's velocity network and ODE.

    Arguments:
        network: a name in `NETWORKS`: "epic" or "transformer".
        width: per-particle hidden width.
        layers: EPiC layers or transformer blocks.
        global_width: width of the pooled global vector (epic) or feed-forward factor x width
            (transformer: ``global_width`` is unused).
        heads: attention heads (transformer).
        solver: fixed-step ODE method for sampling and log_prob: one of `SOLVERS`.
        steps: ODE steps from noise to jet (network calls: x1 euler, x2 midpoint, x4 rk4).
        divergence: log_prob's trace of dv/dx: "exact" (P x F backward passes per call; fine at
            30 x 3) or "hutchinson" (one, unbiased; for 150 particles).
        time_power: training draws t with density (1 + a) t^a (a = ``time_power``; 0:
            uniform). a > 0 spends more of the training near the data end (t -> 1), where the
            last, sub-0.01-rad placement of particles inside a prong is decided: tau32 of real top
            jets moves from 0.39 to 0.44 under 0.01 rad of position noise. Any a keeps the
            flow-matching minimizer (the loss is a regression at every t); it moves capacity.
        coupling: how training pairs each jet's noise with its particles. "independent": noise
            particle i goes to particle i. "particles": within every jet, the noise particles
            are assigned to the real ones by the assignment of least total squared distance
            (equivariant flow matching, Klein et al. arXiv:2306.15030). Permuting i.i.d. noise
            leaves its distribution as a set unchanged, so the flow's target is the same; the
            paths get shorter and cross less, so the regression target varies less.
        predict: what the network outputs. "velocity": v itself, trained on x1 - x0. "data":
            the jet D(x_t) it expects at t = 1, trained on x1 (the flow-matching minimizer
            again: E[x1 | x_t] gives E[x1 - x0 | x_t]); the ODE follows v = (D - x) / (1 - t),
            which pulls particles onto where the network places them as t -> 1, the regime
            where the prongs' sub-0.01-rad width is set.
        conditioning: where the transformer sees the time and the jet context. "input": added
            to every particle's embedding once; "blocks": also a scale and shift of the
            particles' features before every block (FiLM, as DiT's adaptive norms), so that
            each block can act differently near t = 1 (EPiC layers always take the context in
            every layer).
        pair_bias: the transformer's attention adds, per head, a learnt function of each pair
            of particles' distance ln(d_eta^2 + d_phi^2) and log pt_rel (min and difference),
            as ParT's interaction features (arXiv:2202.03772): dot products of embedded
            absolute positions may resolve small distances poorly, and tau3 is set by how
            tightly particles sit around their prong (zero-init: starts as no bias).
        time_embedding: how the network sees t: "fourier" (cos/sin of pi t, 2 pi t, ...) or
            "log_sigma" (t and the log noise-to-signal ratio log((1 - t) / t) with its cos/sin:
            resolves the last percent of the path, where a prong's width is set).
            These two and ``conditioning: blocks`` did not move top's tau32 when measured
            (docs/benchmarks.md); they stay off.
        position_weight: the loss weight of the (eta, phi) coordinates relative to log pt_rel.
            The loss is a separate regression per coordinate, so any positive weight keeps the
            flow-matching minimizer; > 1 moves capacity to where the particles sit, which sets
            tau3 far more than log pt_rel does (docs/benchmarks.md).
        precision: the velocity network's arithmetic while sampling: "fp32", "bf16"
            (bfloat16 autocast; the ODE state stays fp32): faster on CPUs with native bf16
            (AVX512-BF16, AMX) and on GPUs, slower on other CPUs; or "auto": bf16 where it is
            native, else fp32, and on a CPU fp32 for a network narrower than
            `AUTO_BF16_MIN_WIDTH` (a small guide). ``log_prob`` and training stay fp32.
        guidance: autoguidance (Karras et al. arXiv:2406.02507): sampling follows
            v_guide + w (v - v_guide), w = ``guidance``, where the guide is a worse version of
            the same flow (the same network trained for ``guide_epochs``). An under-trained
            flow places particles around their prongs too loosely; the guide errs the same way,
            more, so stepping away from it sharpens the prongs. 1: off (the flow alone).
        guidance_from, guidance_until: guidance acts for guidance_from <= t < guidance_until
            only (outside, the flow alone; ``guidance_until`` 1: to the end): the jet's overall
            spread is set early in the path, the prongs later, and guiding the last steps
            over-sharpens the finest structure (a limited interval, as Kynkaanniemi et al.,
            arXiv:2404.07724, found for images). Both are read at every evaluation of the
            velocity, so they act at the solver's grid: at 8 midpoint steps (evaluations at
            multiples of 1/16) ``guidance_until`` 0.8 ends guidance after t = 0.75.
        guide_epochs: epochs the pipeline trains the guide for (0: no guide).
        guide_width, guide_layers: the guide's network (0: the flow's): a smaller guide costs
            less at every guided step; its other settings are the flow's own.
    """

    network: str = "epic"
    width: int = 128
    layers: int = 6
    global_width: int = 16
    heads: int = 4
    solver: str = "midpoint"
    steps: int = 20
    divergence: str = "exact"
    time_power: float = 0.0
    coupling: str = "independent"
    predict: str = "velocity"
    conditioning: str = "input"
    pair_bias: bool = False
    time_embedding: str = "fourier"
    position_weight: float = 1.0
    precision: str = "fp32"
    guidance: float = 1.0
    guidance_from: float = 0.0
    guidance_until: float = 1.0
    guide_epochs: int = 0
    guide_width: int = 0
    guide_layers: int = 0

    def __post_init__(self) -> None:
        if self.network not in NETWORKS:
            raise UserError(f"unknown set_flow.network {self.network!r}: use {sorted(NETWORKS)}")
        if self.solver not in SOLVERS:
            raise UserError(f"unknown set_flow.solver {self.solver!r}: use one of {SOLVERS}")
        if self.predict not in PREDICTIONS:
            raise UserError(f"unknown set_flow.predict {self.predict!r}: use one of {PREDICTIONS}")
        if self.conditioning not in CONDITIONINGS:
            raise UserError(
                f"unknown set_flow.conditioning {self.conditioning!r}: use one of {CONDITIONINGS}"
            )
        if self.coupling not in COUPLINGS:
            raise UserError(f"unknown set_flow.coupling {self.coupling!r}: use one of {COUPLINGS}")
        if self.precision not in PRECISIONS:
            raise UserError(
                f"unknown set_flow.precision {self.precision!r}: use one of {PRECISIONS}"
            )
        if self.divergence not in DIVERGENCES:
            raise UserError(
                f"unknown set_flow.divergence {self.divergence!r}: use one of {DIVERGENCES}"
            )
        require(self, ("width", "layers", "global_width", "heads", "steps"), low=1)
        if self.time_embedding not in TIME_EMBEDDINGS:
            raise UserError(
                f"unknown set_flow.time_embedding {self.time_embedding!r}: use one of "
                f"{sorted(TIME_EMBEDDINGS)}"
            )
        if not 0.0 < self.position_weight <= 100.0:
            raise UserError(
                f"set_flow.position_weight must lie in (0, 100], got {self.position_weight}"
            )
        if not 0.0 <= self.time_power <= 10.0:
            raise UserError(f"set_flow.time_power must lie in [0, 10], got {self.time_power}")
        if not 1.0 <= self.guidance <= 20.0:
            raise UserError(f"set_flow.guidance must lie in [1, 20], got {self.guidance}")
        if not 0.0 <= self.guidance_from < 1.0:
            raise UserError(f"set_flow.guidance_from must lie in [0, 1), got {self.guidance_from}")
        if not self.guidance_from < self.guidance_until <= 1.0:
            raise UserError(
                f"set_flow.guidance_until must lie in (guidance_from, 1] = "
                f"({self.guidance_from}, 1], got {self.guidance_until}"
            )
        require(self, GUIDE_FIELDS, low=0)
        if self.pair_bias and self.network != "transformer":
            raise UserError("set_flow.pair_bias needs network: transformer (EPiC has no attention)")
        for name in ("width", "guide_width"):
            width = getattr(self, name)
            if self.network == "transformer" and width % self.heads:
                raise UserError(f"set_flow.{name} {width} must divide by heads {self.heads}")

    def guide(self) -> SetFlowConfig:
        """The guide's config: the flow's, with ``guide_width`` and ``guide_layers`` where set,
        sampled unguided."""
        return replace(
            self,
            width=self.guide_width or self.width,
            layers=self.guide_layers or self.layers,
            guidance=1.0,
            guidance_from=0.0,
            guidance_until=1.0,
        )


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
    """Per-head additive attention bias from particle pairs: (B, P, F) -> (B * heads, P, P),
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
        return bias.permute(0, 3, 1, 2).flatten(0, 1)  # (B * heads, P, P)


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
        keys = None if bool(mask.all()) or self.pairs is not None else ~mask
        bias = None if self.pairs is None else self.pairs(x, mask)
        films = self.films or [None] * len(self.blocks.layers)
        for block, film in zip(self.blocks.layers, films, strict=True):
            if film is not None:
                scale, shift = film(c)[:, None].chunk(2, -1)  # (B, 1, w) each
                h = h * (1 + scale) + shift
            h = block(h, src_key_padding_mask=keys) if bias is None else _biased(block, h, bias)
        return self.out(h) * mask[..., None].to(x.dtype)


def _biased(block: nn.TransformerEncoderLayer, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``block`` (pre-norm, no dropout) on h (B, P, W) with an additive attention bias
    (B * heads, P, P). Written out because the layer's own inference fast path (eval, no grad)
    gives NaN for such a per-head float mask in torch 2.13 (MultiheadAttention alone is right)."""
    y = block.norm1(h)
    h = h + block.self_attn(y, y, y, attn_mask=bias, need_weights=False)[0]
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


def _ode_solver(field: Callable[..., torch.Tensor]) -> Any:
    # imported here: torchdiffeq imports scipy.integrate (~0.5 s), which `jetflows sample` of
    # the other generators must not pay at start-up
    from flow_matching.solver import ODESolver

    return ODESolver(velocity_model=field)


def pair_noise(x0: torch.Tensor, x1: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x0 with each jet's real noise particles permuted onto its real particles by the assignment
    of least total squared distance: x0, x1 (B, P, F), mask (B, P) -> (B, P, F); padded slots
    stay where they are.

    scipy's Hungarian solver runs per jet (~7 ms for 256 jets of 30): torchcfm's and POT's
    optimal-transport samplers pair whole samples of a batch, not the particles inside each.
    """
    from scipy.optimize import linear_sum_assignment

    cost = (torch.cdist(x1.detach().double(), x0.detach().double()) ** 2).cpu().numpy()
    order = torch.arange(x0.shape[1]).repeat(len(x0), 1)  # (B, P): padding keeps its noise
    for b, real in enumerate(mask.cpu().numpy()):
        slots = real.nonzero()[0]  # the real particles alone: no large costs fencing off padding
        columns = linear_sum_assignment(cost[b][np.ix_(slots, slots)])[1]
        order[b, slots] = torch.from_numpy(slots[columns])
    # particle i of x1 takes noise particle order[b, i]
    order = order.to(x0.device)
    return x0.gather(1, order[..., None].expand_as(x0))


#: "auto" precision on a CPU runs a network this narrow in fp32 even with native bf16: the
#: casts outweigh the smaller matmuls (AMD EPYC with AVX512-BF16, one thread, 512 jets of 30
#: particles: width 96 x 3 blocks 180 us a jet in bf16 against 286 in fp32; the guide's width
#: 48 x 2 blocks 86 against 58)
AUTO_BF16_MIN_WIDTH = 64


def uses_bf16(precision: str, device: torch.device, width: int | None = None) -> bool:
    """Whether ``precision`` ("fp32", "bf16", "auto") samples in bfloat16 on ``device``, for
    a network of ``width`` (None: any; "auto" keeps a CPU network narrower than
    `AUTO_BF16_MIN_WIDTH` in fp32)."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if width is not None and width < AUTO_BF16_MIN_WIDTH:
        return False
    # torch's own CPU probes (private, hence the fallbacks): without native bf16 the autocast
    # emulates it and runs slower than fp32
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return device.type == "cpu" and any(getattr(torch.cpu, p, lambda: False)() for p in probes)


def _real_log_normal(z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the real particles' coordinates: z (B, P, F) -> (B,)."""
    per = -0.5 * (z**2 + math.log(2 * math.pi))
    return (per * mask[..., None]).sum((1, 2))


class SetFlow(nn.Module):
    """A continuous normalizing flow on sets of particles, conditioned on jet-level context.

    Arguments:
        config: `SetFlowConfig`.
        features: F per particle (3: standardized eta_rel, phi_rel, log pt_rel).
        context: C of the jet-level condition (0: none).

    Every method takes particles (B, P, F) or a mask (B, P) (True: a real particle) and a
    context (B, C) or None. The density and samples are those of the real particles given the
    mask; padded slots are returned as zeros.
    """

    def __init__(self, config: SetFlowConfig, *, features: int = 3, context: int = 0) -> None:
        super().__init__()
        self.config, self.features, self.context = config, features, context
        make = NETWORKS[config.network]
        self.net = make(features=features, context=context + TIME_FEATURES, config=config)
        from flow_matching.path import AffineProbPath  # not at import: see _ode_solver
        from flow_matching.path.scheduler import CondOTScheduler

        self.path = AffineProbPath(scheduler=CondOTScheduler())  # x_t = t x1 + (1 - t) x0

    def _context(self, context: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
        if self.context == 0:
            return like.new_zeros(n, 0)
        if context is None or context.shape != (n, self.context):
            raise UserError(f"the set flow needs context of shape ({n}, {self.context})")
        return context.to(like.dtype)

    def velocity(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        mask: torch.Tensor,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """v(t, x): x (B, P, F), t scalar or (B,), mask (B, P) -> (B, P, F), 0 on padding."""
        t = t.to(x.dtype).reshape(-1).expand(len(x))
        out = self._output(x, t, mask, context)
        if self.config.predict == "velocity":
            return out
        rest = (1 - t).clamp_min(DATA_PREDICTION_TMIN)[:, None, None]
        return (out - x) * mask[..., None].to(x.dtype) / rest

    def _output(
        self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, context: torch.Tensor | None
    ) -> torch.Tensor:
        """The network's output (B, P, F) (``config.predict``) at times t (B,)."""
        times = TIME_EMBEDDINGS[self.config.time_embedding](t)
        c = torch.cat([times, self._context(context, len(x), x)], -1)
        return self.net(x, mask, c)

    def loss(
        self, x: torch.Tensor, mask: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The conditional flow-matching loss: mean squared error of v(t, x_t) against the
        straight path's velocity x1 - x0 (``predict: data``: of D(t, x_t) against x1), over
        the real particles' coordinates only.

        x: (B, P, F) data (x1); noise x0 (paired with x1 as ``config.coupling`` says) and t
        (density (1 + a) t^a, a = ``config.time_power``) from torch's global stream while
        training, from a fixed seed in eval mode (a validation loss that does not jitter with
        the draw, nor consume the training stream).
        """
        g = None if self.training else torch.Generator(device=x.device).manual_seed(0)
        x0 = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
        u = torch.rand(len(x), generator=g, device=x.device, dtype=x.dtype)
        t = u ** (1.0 / (1.0 + self.config.time_power))  # density (1 + a) t^a
        if self.config.coupling == "particles":
            x0 = pair_noise(x0, x, mask)
        path = self.path.sample(x_0=x0, x_1=x, t=t)
        want = path.dx_t if self.config.predict == "velocity" else x
        squared = (self._output(path.x_t, t, mask, context) - want) ** 2  # (B, P, F)
        error = (squared * self._weights(x)).sum(-1)  # (B, P)
        real = mask.to(x.dtype)
        return (error * real).sum() / (real.sum() * self.features)

    def _weights(self, like: torch.Tensor) -> torch.Tensor:
        """(F,) loss weights, mean 1: ``position_weight`` on (eta, phi), 1 on the rest."""
        w = torch.ones(self.features, dtype=like.dtype, device=like.device)
        w[:2] = self.config.position_weight
        return w * self.features / w.sum()

    def guided_velocity(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        mask: torch.Tensor,
        context: torch.Tensor | None = None,
        guide: SetFlow | None = None,
        *,
        guide_bf16: bool | None = None,
    ) -> torch.Tensor:
        """The velocity the ODE follows: v, or with ``config.guidance`` w > 1, for the jets
        whose t lies in [``guidance_from``, ``guidance_until``), v_guide + w (v - v_guide) (to
        the end when ``guidance_until`` is 1, t = 1 included), the guide a `SetFlow`
        of the same features and context. x (B, P, F), t scalar or (B,), mask (B, P) ->
        (B, P, F). ``guide_bf16``: the guide's network in bfloat16 or not (None: as the
        surrounding autocast says)."""
        v = self.velocity(x, t, mask, context)
        if self.config.guidance == 1.0:
            return v
        self._check_guide(guide)
        t_jet = t.to(x.dtype).reshape(-1).expand(len(x))
        guided = t_jet >= self.config.guidance_from
        if self.config.guidance_until < 1.0:
            guided &= t_jet < self.config.guidance_until
        if not guided.any():  # before guidance_from: the guide is not asked
            return v
        cast = (
            contextlib.nullcontext()
            if guide_bf16 is None
            else torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=guide_bf16)
        )
        with cast:
            v_guide = guide.velocity(x, t, mask, context)
        w = torch.where(guided, self.config.guidance, 1.0)[:, None, None].to(v.dtype)
        return v_guide + w * (v - v_guide)

    def _flat_velocity(
        self,
        shape: torch.Size,
        mask: torch.Tensor,
        context: torch.Tensor | None,
        guide: SetFlow | None = None,
        guide_bf16: bool | None = None,
    ) -> Callable[..., torch.Tensor]:
        # flow_matching's exact divergence loops over dim 1 of a flat (B, D) state
        def field(x: torch.Tensor, t: torch.Tensor, **_: Any) -> torch.Tensor:
            v = self.guided_velocity(
                x.reshape(shape), t, mask, context, guide, guide_bf16=guide_bf16
            )
            return v.flatten(1)

        return field

    def _check_guide(self, guide: SetFlow | None) -> None:
        """Refuse a missing guide when guidance is asked for, or one of another shape."""
        if guide is None and self.config.guidance != 1.0:
            raise UserError(
                f"set_flow.guidance {self.config.guidance} needs a guide flow "
                "(set_flow.guide_epochs > 0 trains one)"
            )
        if guide is not None and (guide.features, guide.context) != (self.features, self.context):
            raise UserError(
                f"the guide flow takes {guide.features} features and context {guide.context}, "
                f"the flow {self.features} and {self.context}: not a version of this flow"
            )

    def _grid(self, start: float, device: torch.device) -> torch.Tensor:
        # an explicit grid, not step_size=1/steps: torchdiffeq's ceil() of a rounded 1/steps
        # can add a step
        grid = torch.linspace(0.0, 1.0, self.config.steps + 1, device=device)
        return grid if start == 0.0 else grid.flip(0)

    @torch.no_grad()
    def sample(
        self,
        mask: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        guide: SetFlow | None = None,
    ) -> torch.Tensor:
        """Particles (B, P, F) for a mask (B, P): noise -> ODE (``config.solver``, ``steps``),
        guided by ``guide`` as ``config.guidance`` says (`guided_velocity`).

        The noise is drawn for the whole batch, then integrated in chunks of `SAMPLE_CHUNK`
        jets, so the jets do not depend on the chunking. The chunks take the jets in order of
        multiplicity and, for the transformer, drop the slots past their last real particle:
        padding takes no part in a real particle's velocity, so the jets are those of the whole
        padded batch, while a chunk of full jets runs without an attention mask (one short jet
        in a chunk made the whole chunk pay for the mask) and a chunk of short jets runs on
        fewer slots.
        """
        self._check_guide(guide)
        x0 = torch.randn((*mask.shape, self.features), generator=generator, device=mask.device)
        x = torch.zeros_like(x0)
        precision, device = self.config.precision, mask.device
        bf16 = uses_bf16(precision, device, self.config.width)
        # the guide follows the flow's precision, "auto" judged by its own width
        guide_bf16 = None if guide is None else uses_bf16(precision, device, guide.config.width)
        order = mask.sum(1).argsort(stable=True)
        # only networks that say so, the guide's too (EPiC's pool divides by every slot)
        nets = [self.net] + ([guide.net] if guide is not None else [])
        cut = all(getattr(net, "cuts_padding", False) for net in nets)
        # the network's matmuls in bf16; the ODE's state and updates stay fp32 (the velocity
        # comes out fp32: it is multiplied by the fp32 mask)
        with torch.autocast(mask.device.type, dtype=torch.bfloat16, enabled=bf16):
            for rows in order.split(SAMPLE_CHUNK):
                real = mask[rows].any(0)  # (P,) slots real in some jet of the chunk
                if not real.any():  # jets without particles: nothing to integrate
                    continue
                slots = int(real.nonzero()[-1]) + 1 if cut else mask.shape[1]
                c = None if context is None else context[rows]
                out = self._integrate(x0[rows, :slots], mask[rows, :slots], c, guide, guide_bf16)
                x[rows, :slots] = out.to(x.dtype)
        return x * mask[..., None]

    def _integrate(
        self,
        x0: torch.Tensor,
        mask: torch.Tensor,
        context: torch.Tensor | None,
        guide: SetFlow | None,
        guide_bf16: bool | None = None,
    ) -> torch.Tensor:
        solver = _ode_solver(self._flat_velocity(x0.shape, mask, context, guide, guide_bf16))
        x1 = solver.sample(
            x_init=x0.flatten(1),
            step_size=None,
            method=self.config.solver,
            time_grid=self._grid(0.0, mask.device),
        )
        return x1.reshape(x0.shape)

    def log_prob(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        divergence: str | None = None,
        guide: SetFlow | None = None,
    ) -> torch.Tensor:
        """log p(x | mask, context) of the real particles' coordinates (nats): x (B, P, F) ->
        (B,), by integrating the ODE back to noise with the divergence of v
        (``divergence``: "exact" or "hutchinson"; None: ``config.divergence``). With guidance
        (``guide``, as `sample` takes it) it is the density of the guided flow, the one
        `sample` draws from."""
        divergence = divergence or self.config.divergence
        if divergence not in DIVERGENCES:
            raise UserError(f"unknown divergence {divergence!r}: use one of {DIVERGENCES}")
        self._check_guide(guide)
        solver = _ode_solver(self._flat_velocity(x.shape, mask, context, guide))
        _, logp = solver.compute_likelihood(
            x_1=(x * mask[..., None]).flatten(1),
            log_p0=lambda z: _real_log_normal(z.reshape(x.shape), mask),
            step_size=None,
            method=self.config.solver,
            time_grid=self._grid(1.0, x.device),
            exact_divergence=divergence == "exact",
        )
        return logp


def flow_matching_objective(
    flow: SetFlow, x: torch.Tensor, mask: torch.Tensor, context: torch.Tensor | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`jetflows.training.fit_loop`'s objective: the flow-matching loss of a batch."""
    return flow.loss(x, mask, context), {}


#: (particles (N, P, F), mask (N, P), context (N, C) or None)
SetData = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


def check_data(flow: SetFlow, data: SetData, name: str) -> None:
    """Raise ValueError for data the flow cannot take: shapes, NaN/inf, empty jets."""
    x, mask, context = data
    if x.dim() != 3 or x.shape[2] != flow.features or mask.shape != x.shape[:2]:
        raise UserError(
            f"{name}: particles must be (N, P, {flow.features}) with a mask (N, P), got "
            f"{tuple(x.shape)} and {tuple(mask.shape)}"
        )
    if len(x) == 0 or (mask.sum(1) == 0).any():
        raise UserError(f"{name}: no jets, or a jet without particles")
    if not torch.isfinite(x[mask]).all():
        raise UserError(f"{name}: particles contain NaN or inf")
    if flow.context and (context is None or context.shape != (len(x), flow.context)):
        raise UserError(f"{name}: the set flow needs context of shape ({len(x)}, {flow.context})")
    if context is not None and not torch.isfinite(context).all():
        raise UserError(f"{name}: context contains NaN or inf")


def fit(
    flow: SetFlow,
    train: SetData,
    valid: SetData,
    *,
    config: TrainConfig | None = None,
    extra: dict[str, Any] | None = None,
    resume: dict[str, Any] | None = None,
    on_epoch: Callable[[int, dict[str, float], dict[str, Any]], None] | None = None,
    progress: bool = True,
) -> FitResult:
    """Train ``flow`` by conditional flow matching; early stopping on the validation loss.

    Arguments:
        flow: a `SetFlow` (updated in place; ends with its best weights).
        train, valid: (particles (N, P, F) standardized, mask (N, P), context (N, C) or None).
        config: `TrainConfig`; extra: what else rebuilds the generator (stored in the state).
        resume, on_epoch, progress: as in `jetflows.training.fit_loop`.

    Raises:
        ValueError: bad data, or a resume state of another flow or config.
        FloatingPointError: the loss became NaN/inf (the message names the epoch).
    """
    for name, data in (("train", train), ("valid", valid)):
        check_data(flow, data, name)
    describe = {
        "set_flow_config": flow.config,
        "features": flow.features,
        "context": flow.context,
        "extra": extra or {},
    }
    return fit_loop(
        flow,
        flow_matching_objective,
        train,
        valid,
        config=config or TrainConfig(),
        kind=CHECKPOINT_KIND,
        describe=describe,
        resume=resume,
        on_epoch=on_epoch,
        progress=progress,
        desc=f"set flow {flow.config.network}",
    )


def set_flow_from_state(state: dict[str, Any], *, best: bool = True) -> SetFlow:
    """Rebuild a `SetFlow` from a checkpoint state alone (best or last weights), in eval mode.

    Raises:
        ValueError: not a set-flow checkpoint.
    """
    check_kind(state, CHECKPOINT_KIND)
    config = SetFlowConfig(**state["set_flow_config"])
    flow = SetFlow(config, features=state["features"], context=state["context"])
    flow.load_state_dict(state["best_state_dict" if best else "state_dict"])
    return flow.eval()


@torch.no_grad()
def generate(
    set_flow: SetFlow,
    jet_flow: Flow,
    n: int,
    target: ParticleTarget,
    *,
    generator: torch.Generator | None = None,
    project: bool | None = None,
    kinematics: torch.Tensor | None = None,
    guide: SetFlow | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """n jets: the jet flow samples each jet's (mass, n, ...) rows (``kinematics`` (n, C): its
    kinematics, if conditioned), the set flow its n particles given them; (particles (n, P, 3)
    pt-sorted and zero-padded, mask (n, P)). ``target``: the `flows.particle.ParticleTarget`
    (no centroid) the set flow's data were standardized with; ``project`` as there;
    ``guide``: the set flow's guide (`SetFlow.sample`)."""
    if target.centroid is not None:
        raise UserError("a set flow has no leading slot: fit its target without the centroid")
    raw, context = sample_jet_rows(jet_flow, n, target, generator=generator, kinematics=kinematics)
    P = target.num_particles
    mask = torch.arange(P, device=raw.device)[None] < raw[:, N_COLUMN, None]
    c = context if set_flow.context else None
    x = set_flow.sample(mask, c, generator=generator, guide=guide)
    return finish(x.flatten(1), raw, target, project=project)
