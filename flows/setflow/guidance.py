"""Autoguidance (Karras et al. arXiv:2406.02507): the velocity a guided set flow follows,
v_guide + w (v - v_guide), where the guide is a worse version of the same flow (smaller,
trained shorter), for the jets whose t lies in the config's guidance interval."""

from __future__ import annotations

from typing import Any

import torch

from flows.setflow.config import SetFlowConfig
from jetflows.errors import UserError


def guided_jets(config: SetFlowConfig, t: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the jets at times t (B,) that guidance acts on (guidance_from <= t <
    guidance_until; t = 1 included when guidance_until is 1)."""
    guided = t >= config.guidance_from
    if config.guidance_until < 1.0:
        guided &= t < config.guidance_until
    return guided


def combine(
    config: SetFlowConfig, v: torch.Tensor, v_guide: torch.Tensor, guided: torch.Tensor
) -> torch.Tensor:
    """v_guide + w (v - v_guide) where ``guided`` (B,), v elsewhere: v, v_guide (B, P, F)."""
    w = torch.where(guided, config.guidance, 1.0)[:, None, None].to(v.dtype)
    return v_guide + w * (v - v_guide)


def check_guide(config: SetFlowConfig, features: int, context: int, guide: Any) -> None:
    """Refuse a missing guide when guidance is asked for, or one of another shape (``guide``:
    a `flows.setflow.SetFlow` or None)."""
    if guide is None and config.guidance != 1.0:
        raise UserError(
            f"set_flow.guidance {config.guidance} needs a guide flow "
            "(set_flow.guide_epochs > 0 trains one)"
        )
    if guide is not None and (guide.features, guide.context) != (features, context):
        raise UserError(
            f"the guide flow takes {guide.features} features and context {guide.context}, "
            f"the flow {features} and {context}: not a version of this flow"
        )
