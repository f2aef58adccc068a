"""`SetFlow`: a continuous normalizing flow on sets of particles, composed of its parts: a
velocity network (`flows.setflow.networks`), the straight path and its loss
(`flows.setflow.path`), autoguidance (`flows.setflow.guidance`) and the ODE
(`flows.setflow.sampling`)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from flows.setflow import guidance, path, sampling
from flows.setflow.config import DATA_PREDICTION_TMIN, DIVERGENCES, TIME_FEATURES, SetFlowConfig
from flows.setflow.networks import NETWORKS, TIME_EMBEDDINGS
from jetflows.errors import UserError


def jet_context(
    context: torch.Tensor | None, n: int, width: int, like: torch.Tensor, who: str
) -> torch.Tensor:
    """The jet-level context (n, ``width``) in ``like``'s dtype ((n, 0) when ``width`` is 0),
    or ValueError naming ``who`` needs it in that shape."""
    if width == 0:
        return like.new_zeros(n, 0)
    if context is None or context.shape != (n, width):
        raise UserError(f"{who} needs context of shape ({n}, {width})")
    return context.to(like.dtype)


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
        self.path = path.straight_path()  # x_t = t x1 + (1 - t) x0

    def _context(self, context: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
        return jet_context(context, n, self.context, like, "the set flow")

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
        """The conditional flow-matching loss of particles x (B, P, F) (`path.flow_matching_loss`):
        noise and t from torch's global stream while training, from a fixed seed in eval mode."""
        return path.flow_matching_loss(
            lambda x_t, t, real: self._output(x_t, t, real, context),
            self.config,
            x,
            mask,
            path=self.path,
            training=self.training,
            cut=getattr(self.net, "cuts_padding", False),
        )

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
        guided = guidance.guided_jets(self.config, t.to(x.dtype).reshape(-1).expand(len(x)))
        if not guided.any():  # outside the interval: the guide is not asked
            return v
        cast = (
            contextlib.nullcontext()
            if guide_bf16 is None
            else torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=guide_bf16)
        )
        with cast:
            v_guide = guide.velocity(x, t, mask, context)
        return guidance.combine(self.config, v, v_guide, guided)

    def _flat_velocity(
        self,
        shape: torch.Size,
        mask: torch.Tensor,
        context: torch.Tensor | None,
        guide: SetFlow | None = None,
        guide_bf16: bool | None = None,
    ) -> sampling.FlatField:
        # flow_matching's exact divergence loops over dim 1 of a flat (B, D) state
        def field(x: torch.Tensor, t: torch.Tensor, **_: Any) -> torch.Tensor:
            v = self.guided_velocity(
                x.reshape(shape), t, mask, context, guide, guide_bf16=guide_bf16
            )
            return v.flatten(1)

        return field

    def precisions(self, mask: torch.Tensor, guide: SetFlow | None) -> tuple[bool, bool | None]:
        """Whether the flow's network, and the guide's (None: no guide), sample in bf16 for
        jets of ``mask`` (B, P): as ``config.precision`` says, "auto" timed on each network."""
        precision, device, slots = self.config.precision, mask.device, mask.shape[1]
        bf16 = sampling.uses_bf16(precision, device, timed=self._timed(slots))
        # the guide follows the flow's precision, "auto" timed on its own network
        guided = (
            None
            if guide is None
            else sampling.uses_bf16(precision, device, timed=guide._timed(slots))
        )
        return bf16, guided

    def _timed(self, slots: int) -> Callable[[], bool]:
        """Whether this network runs faster in bf16 here (`sampling.bf16_faster`), on asking."""
        width = self.context + TIME_FEATURES
        return functools.partial(
            sampling.bf16_faster, self.net, slots=slots, features=self.features, context=width
        )

    def _cuts_padding(self, guide: SetFlow | None) -> bool:
        """Whether padding slots may be cut away: only for networks that say so, the guide's
        too (EPiC's pool divides by every slot)."""
        nets = [self.net] + ([guide.net] if guide is not None else [])
        return all(getattr(net, "cuts_padding", False) for net in nets)

    def _check_guide(self, guide: SetFlow | None) -> None:
        guidance.check_guide(self.config, self.features, self.context, guide)

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

        The noise is drawn for the whole batch, then integrated in chunks
        (`flows.setflow.sampling.chunked`), so the jets do not depend on the chunking. The
        chunks take the jets in order of multiplicity and, for the transformer, drop the slots
        past their last real particle: padding takes no part in a real particle's velocity,
        so the jets are those of the whole padded batch, while a chunk of full jets runs
        without an attention mask and a chunk of short jets runs on fewer slots.
        """
        self._check_guide(guide)
        x0 = torch.randn((*mask.shape, self.features), generator=generator, device=mask.device)
        bf16, guide_bf16 = self.precisions(mask, guide)
        # only networks that say so, the guide's too (EPiC's pool divides by every slot)
        cut = self._cuts_padding(guide)

        def solve(x0: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            c = None if context is None else context[rows]
            return self._integrate(x0, mask, c, guide, guide_bf16)

        # the network's matmuls in bf16; the ODE's state and updates stay fp32 (the velocity
        # comes out fp32: it is multiplied by the fp32 mask)
        with torch.autocast(mask.device.type, dtype=torch.bfloat16, enabled=bf16):
            return sampling.chunked(solve, x0, mask, cut=cut)

    def _integrate(
        self,
        x0: torch.Tensor,
        mask: torch.Tensor,
        context: torch.Tensor | None,
        guide: SetFlow | None,
        guide_bf16: bool | None = None,
    ) -> torch.Tensor:
        """x(1) (B, P, F) of the (guided) ODE from x(0) = x0 (B, P, F)."""
        field = self._flat_velocity(x0.shape, mask, context, guide, guide_bf16)
        return sampling.integrate(field, x0, self.config)

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
        if self._cuts_padding(guide) and mask.any():
            # padded coordinates move with zero velocity and add nothing to log p0: dropping
            # the slots past the longest jet changes no density, and at 150 slots spares the
            # exact divergence most of its 450 backward passes
            slots = path.occupied_slots(mask)
            x, mask = x[:, :slots], mask[:, :slots]
        field = self._flat_velocity(x.shape, mask, context, guide)
        return sampling.log_likelihood(field, x, mask, self.config, exact=divergence == "exact")
