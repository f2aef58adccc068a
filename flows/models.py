"""One registry of normalizing flows, backed by zuko and nflows, behind one interface.

Every entry of `FLOWS` builds a stack of ``transforms`` layers from the libraries' own parts
(coupling or autoregressive, affine or rational-quadratic spline), with optional ActNorm or
BatchNorm and permutations between layers, and a standard-normal base. `Flow` wraps it with the
same methods for both backends: ``log_prob(x, context, labels)``, ``sample(n, context, labels)``,
``forward`` (x -> z) and ``inverse`` (z -> x); ``labels`` are class indices fed through a learnt
embedding, so one flow can serve all jet classes.

Example:
    >>> flow = build_flow(FlowConfig(kind="zuko_nsf_coupling", transforms=2), features=4)
    >>> flow.log_prob(torch.randn(5, 4)).shape, flow.sample(3).shape
    (torch.Size([5]), torch.Size([3, 4]))
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import zuko
from torch import nn
from zuko.flows import GeneralCouplingTransform, MaskedAutoregressiveTransform
from zuko.transforms import MonotonicAffineTransform, MonotonicRQSTransform, PermutationTransform

from jetflows.checks import require
from jetflows.errors import UserError


def _broadcast(*tensors: torch.Tensor, ignore: int | list[int] = 0) -> list[torch.Tensor]:
    """`zuko.utils.broadcast` (the coupling flows broadcast x with their context), with the
    common shape worked out in Python: zuko's goes through torch.broadcast_shapes, whose first
    call in torch 2.13 imports torch._refs' symbolic shapes and sympy, 0.5 s of the 2.4 s
    `jetflows sample` start-up (benchmarks/startup.py)."""
    ignore = [ignore] * len(tensors) if isinstance(ignore, int) else list(ignore)
    dims = [t.dim() - i for t, i in zip(tensors, ignore, strict=True)]
    common: list[int] = []
    for sizes in itertools.zip_longest(
        *(reversed(t.shape[:d]) for t, d in zip(tensors, dims, strict=True)), fillvalue=1
    ):
        wide = {n for n in sizes if n != 1}
        if len(wide) > 1:
            raise RuntimeError(f"shapes {[tuple(t.shape) for t in tensors]} do not broadcast")
        common.append(wide.pop() if wide else 1)
    shape = torch.Size(reversed(common))
    return [torch.broadcast_to(t, shape + t.shape[d:]) for t, d in zip(tensors, dims, strict=True)]


# the names zuko's coupling and autoregressive flows and its spline transforms call
for _module in (zuko.flows.coupling, zuko.flows.autoregressive, zuko.transforms):
    _module.broadcast = _broadcast

PERMUTATIONS = ("alternate", "random", "none")
NORMS = ("none", "actnorm", "batchnorm")


@dataclass(frozen=True)
class FlowConfig:
    """A flow's architecture.

    Arguments:
        kind: a name in `FLOWS`, e.g. "zuko_nsf_coupling" or "nflows_realnvp".
        transforms: number of coupling / autoregressive layers.
        hidden_features: width of each layer's conditioner network.
        hidden_layers: depth of that network (hidden layers in zuko; residual blocks in nflows).
        bins: spline bins (spline flows only).
        tail_bound: splines act on [-B, B] (identity outside); inputs are standardized first.
        permutation: between layers: "alternate" (odd/even coupling masks, reversed
            autoregressive order, as the seed), "random" (a fixed random permutation layer after
            every layer, from ``seed``) or "none".
        norm: "none", "actnorm" or "batchnorm" after every layer (batchnorm: nflows only;
            zuko's actnorm is a learnt per-feature affine map without data-dependent init).
        num_classes: > 0: condition on a class label through an embedding (one flow for all
            classes); 0: no class input (one flow per class).
        class_embedding: size of that embedding.
        seed: seeds the random permutations (the weights are seeded by the training seed).
    """

    kind: str = "zuko_nsf_coupling"
    transforms: int = 6
    hidden_features: int = 128
    hidden_layers: int = 2
    bins: int = 8
    tail_bound: float = 5.0
    permutation: str = "alternate"
    norm: str = "none"
    num_classes: int = 0
    class_embedding: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FLOWS:
            raise UserError(f"unknown flow {self.kind!r}: use one of {sorted(FLOWS)}")
        if self.permutation not in PERMUTATIONS:
            raise UserError(f"unknown permutation {self.permutation!r}: use one of {PERMUTATIONS}")
        if self.norm not in NORMS:
            raise UserError(f"unknown norm {self.norm!r}: use one of {NORMS}")
        if self.norm == "batchnorm" and self.kind.startswith("zuko"):
            raise UserError("zuko has no BatchNorm transform: use an nflows flow or actnorm")
        counts = (self.transforms, self.hidden_features, self.hidden_layers, self.bins)
        if min(counts) < 1 or self.num_classes < 0 or self.class_embedding < 1:
            raise UserError("transforms, hidden sizes, bins and class_embedding must be >= 1")
        require(self, ("tail_bound",), strict=True)
        require(self, ("seed",))


class Backend(Protocol):
    """What `Flow` needs from a library flow: its log-density, x -> z with log|det|, and
    z -> x."""

    def log_prob(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor: ...

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> tuple[torch.Tensor, Any]: ...

    def inverse(self, z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor: ...


# ------------------------------------------------------------------------------------- zuko


def _checkered(features: int, i: int) -> torch.Tensor:
    return torch.arange(features) % 2 == i % 2


def _zuko_coupling(features: int, context: int, i: int, cfg: FlowConfig, **kw: Any) -> nn.Module:
    mask = _checkered(features, i if cfg.permutation == "alternate" else 0)
    return GeneralCouplingTransform(features, context, mask=mask, **kw)


def _zuko_autoregressive(
    features: int, context: int, i: int, cfg: FlowConfig, **kw: Any
) -> nn.Module:
    order = torch.arange(features)
    if cfg.permutation == "alternate" and i % 2:
        order = order.flip(0)
    return MaskedAutoregressiveTransform(features, context, order=order, **kw)


def _zuko_univariate(cfg: FlowConfig, spline: bool) -> dict[str, Any]:
    if not spline:
        return {"univariate": MonotonicAffineTransform, "shapes": ((), ())}
    return {
        "univariate": functools.partial(MonotonicRQSTransform, bound=cfg.tail_bound),
        "shapes": ((cfg.bins,), (cfg.bins,), (cfg.bins - 1,)),  # widths, heights, derivatives
    }


class _Zuko(nn.Module):
    """zuko.flows.Flow composed from zuko's layers, norms and permutations."""

    def __init__(
        self, features: int, context: int, cfg: FlowConfig, layer: Callable, spline: bool
    ) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(cfg.seed)
        hidden = (cfg.hidden_features,) * cfg.hidden_layers
        parts: list[nn.Module] = []
        for i in range(cfg.transforms):
            parts.append(
                layer(
                    features,
                    context,
                    i,
                    cfg,
                    hidden_features=hidden,
                    **_zuko_univariate(cfg, spline),
                )
            )
            if cfg.norm == "actnorm":
                zeros = torch.zeros(features)
                parts.append(
                    zuko.flows.UnconditionalTransform(
                        MonotonicAffineTransform, zeros, zeros.clone()
                    )
                )
            if cfg.permutation == "random":
                order = torch.randperm(features, generator=generator)
                parts.append(
                    zuko.flows.UnconditionalTransform(PermutationTransform, order, buffer=True)
                )
        base = zuko.flows.UnconditionalDistribution(
            zuko.distributions.DiagNormal, torch.zeros(features), torch.ones(features), buffer=True
        )
        self.flow = zuko.flows.Flow(parts, base)

    def log_prob(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        return self.flow(c).log_prob(x)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        return self.flow.transform(c).call_and_ladj(x)

    def inverse(self, z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        return self.flow.transform(c).inv(z)


# ----------------------------------------------------------------------------------- nflows
# nflows is imported where it is used: its import pulls in matplotlib.pyplot (~0.35 s here),
# which `jetflows sample` of a zuko model should not pay.


def _nft() -> Any:
    import nflows.transforms

    return nflows.transforms


def _nflows_net(cfg: FlowConfig, context: int) -> Callable[[int, int], nn.Module]:
    import nflows.nn.nets

    return functools.partial(
        nflows.nn.nets.ResidualNet,
        hidden_features=cfg.hidden_features,
        context_features=context or None,
        num_blocks=cfg.hidden_layers,
    )


def _nflows_affine_coupling(features: int, context: int, i: int, cfg: FlowConfig) -> nn.Module:
    mask = _checkered(features, i if cfg.permutation == "alternate" else 0).int()
    return _nft().AffineCouplingTransform(mask, _nflows_net(cfg, context))


def _nflows_rqs_coupling(features: int, context: int, i: int, cfg: FlowConfig) -> nn.Module:
    mask = _checkered(features, i if cfg.permutation == "alternate" else 0).int()
    return _nft().PiecewiseRationalQuadraticCouplingTransform(
        mask,
        _nflows_net(cfg, context),
        num_bins=cfg.bins,
        tails="linear",
        tail_bound=cfg.tail_bound,
    )


def _nflows_maf(features: int, context: int, i: int, cfg: FlowConfig) -> nn.Module:
    nft = _nft()
    layer = nft.MaskedAffineAutoregressiveTransform(
        features,
        cfg.hidden_features,
        context_features=context or None,
        num_blocks=cfg.hidden_layers,
    )
    if cfg.permutation == "alternate" and i % 2:  # nflows' MAF recipe: reverse every other
        return nft.CompositeTransform([nft.ReversePermutation(features), layer])
    return layer


#: norm name -> the nflows.transforms class
NFLOWS_NORMS: dict[str, str] = {"actnorm": "ActNorm", "batchnorm": "BatchNorm"}


class _Nflows(nn.Module):
    """nflows.flows.Flow composed from nflows' layers, norms and permutations."""

    def __init__(self, features: int, context: int, cfg: FlowConfig, layer: Callable) -> None:
        import nflows.distributions
        import nflows.flows

        super().__init__()
        nft = _nft()
        generator = torch.Generator().manual_seed(cfg.seed)
        parts: list[nn.Module] = []
        for i in range(cfg.transforms):
            parts.append(layer(features, context, i, cfg))
            if cfg.norm in NFLOWS_NORMS:
                parts.append(getattr(nft, NFLOWS_NORMS[cfg.norm])(features))
            if cfg.permutation == "random":
                order = torch.randperm(features, generator=generator)
                parts.append(nft.Permutation(order))
        self.flow = nflows.flows.Flow(
            nft.CompositeTransform(parts), nflows.distributions.StandardNormal([features])
        )

    def log_prob(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        return self.flow.log_prob(x, context=c)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        return self.flow._transform(x, context=c)

    def inverse(self, z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        return self.flow._transform.inverse(z, context=c)[0]


#: name -> builder(features, context, config) of a backend flow.
FLOWS: dict[str, Callable[[int, int, FlowConfig], nn.Module]] = {
    "zuko_realnvp": functools.partial(_Zuko, layer=_zuko_coupling, spline=False),
    "zuko_nsf_coupling": functools.partial(_Zuko, layer=_zuko_coupling, spline=True),
    "zuko_maf": functools.partial(_Zuko, layer=_zuko_autoregressive, spline=False),
    "zuko_nsf": functools.partial(_Zuko, layer=_zuko_autoregressive, spline=True),
    "nflows_realnvp": functools.partial(_Nflows, layer=_nflows_affine_coupling),
    "nflows_rqs_coupling": functools.partial(_Nflows, layer=_nflows_rqs_coupling),
    "nflows_maf": functools.partial(_Nflows, layer=_nflows_maf),
}


class Flow(nn.Module):
    """A density on (N, D) vectors, optionally conditioned on (N, C) context and class labels.

    Inputs are standardized with stored per-feature ``loc``/``scale`` buffers (set them with
    `standardize_`) before the library flow sees them; the log-density includes that Jacobian,
    so it is the density of the raw x.

    Arguments:
        config: a `FlowConfig`.
        features: D.
        context: C, continuous context features (0: none).
    """

    def __init__(self, config: FlowConfig, *, features: int, context: int = 0) -> None:
        super().__init__()
        if features < 2:
            raise UserError(f"a flow needs at least 2 features, got {features}")
        if context < 0:
            raise UserError(f"context must be >= 0, got {context}")
        self.config, self.features, self.context = config, features, context
        classes = config.num_classes
        self.embedding = nn.Embedding(classes, config.class_embedding) if classes else None
        total = context + (config.class_embedding if classes else 0)
        self.backend: Backend = FLOWS[config.kind](features, total, config)
        self.register_buffer("loc", torch.zeros(features))
        self.register_buffer("scale", torch.ones(features))

    @torch.no_grad()
    def standardize_(self, x: torch.Tensor) -> Flow:
        """Set loc/scale from data x: (N, D) (mean and std per feature; std floored)."""
        self._check_x(x)
        self.loc.copy_(x.mean(0))
        self.scale.copy_(x.std(0).clamp_min(1e-6))
        return self

    def _check_x(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.features:
            raise UserError(f"x must be (N, {self.features}), got {tuple(x.shape)}")

    def _condition(
        self, n: int, context: torch.Tensor | None, labels: torch.Tensor | None
    ) -> torch.Tensor | None:
        """The backend's context (n, C + E), or None; checks what the flow was built for."""
        if self.context and (context is None or context.shape != (n, self.context)):
            shape = None if context is None else tuple(context.shape)
            raise UserError(f"this flow needs context of shape ({n}, {self.context}), got {shape}")
        if not self.context and context is not None:
            raise UserError("this flow takes no context")
        parts = [context] if self.context else []
        if self.embedding is not None:
            if labels is None or labels.shape != (n,):
                raise UserError(f"this flow is class-conditional: give labels of shape ({n},)")
            if labels.min() < 0 or labels.max() >= self.config.num_classes:
                raise UserError(f"labels must lie in [0, {self.config.num_classes})")
            parts.append(self.embedding(labels.long()))
        elif labels is not None:
            raise UserError("this flow is not class-conditional (num_classes = 0)")
        return torch.cat(parts, 1) if parts else None

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (N, D) -> z: (N, D) and log|det dz/dx|: (N,)."""
        self._check_x(x)
        c = self._condition(len(x), context, labels)
        z, ladj = self.backend.forward((x - self.loc) / self.scale, c)
        return z, ladj - self.scale.log().sum()

    def inverse(
        self,
        z: torch.Tensor,
        context: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """z: (N, D) -> x: (N, D)."""
        self._check_x(z)
        c = self._condition(len(z), context, labels)
        return self.backend.inverse(z, c) * self.scale + self.loc

    def log_prob(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """log p(x | context, labels): (N,) for x: (N, D), by the library flow (its base
        density and its transforms), plus the standardization's Jacobian."""
        self._check_x(x)
        c = self._condition(len(x), context, labels)
        return self.backend.log_prob((x - self.loc) / self.scale, c) - self.scale.log().sum()

    @torch.no_grad()
    def sample(
        self,
        n: int,
        context: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """n draws (n, D); row i conditioned on context[i] and labels[i] when given.

        Evaluation mode is used while sampling (BatchNorm's running statistics) and restored
        after; noise comes from ``generator`` so a seed fixes the sample.
        """
        if n < 1:
            raise UserError(f"n must be >= 1, got {n}")
        # By hand, not the libraries' sample(): zuko and nflows draw the base noise from
        # torch's global random stream, with no generator argument. Drawing z from the same
        # standard-normal base with ``generator`` and inverting keeps a seed's sample fixed,
        # whatever else used the global stream.
        device = self.loc.device
        z = torch.randn(n, self.features, generator=generator, device=device)
        training = self.training
        self.eval()
        try:
            return self.inverse(z, context, labels)
        finally:
            self.train(training)


def build_flow(config: FlowConfig, *, features: int, context: int = 0) -> Flow:
    """A `Flow` of ``config`` on D = ``features`` with C = ``context`` context features."""
    return Flow(config, features=features, context=context)
