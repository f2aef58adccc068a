"""Integrating a set flow's ODE: fixed-step solving from noise to jets in chunks, the exact
log-likelihood, and the arithmetic (fp32 or bf16) the network runs in while sampling.

Meta's ``flow_matching`` supplies the ODE solver (``ODESolver``, on torchdiffeq's fixed-grid
Euler / midpoint / RK4) and the likelihood (``compute_likelihood``, exact divergence or
Hutchinson); what is ours is the masking and the (N, P, F) <-> (N, P * F) reshapes the
library's divergence loop needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from flows.setflow.config import SAMPLE_CHUNK, SetFlowConfig

#: a velocity on a flat state: (x (B, P * F), t) -> (B, P * F), as flow_matching calls it
FlatField = Callable[..., torch.Tensor]


def ode_solver(field: FlatField) -> Any:
    """flow_matching's ODE solver of ``field``."""
    # imported here: torchdiffeq imports scipy.integrate (~0.5 s), which `jetflows sample` of
    # the other generators must not pay at start-up
    from flow_matching.solver import ODESolver

    return ODESolver(velocity_model=field)


def time_grid(steps: int, device: torch.device, *, backwards: bool = False) -> torch.Tensor:
    """The (steps + 1,) grid from 0 to 1 (``backwards``: 1 to 0)."""
    # an explicit grid, not step_size=1/steps: torchdiffeq's ceil() of a rounded 1/steps can
    # add a step
    grid = torch.linspace(0.0, 1.0, steps + 1, device=device)
    return grid.flip(0) if backwards else grid


def integrate(field: FlatField, x0: torch.Tensor, config: SetFlowConfig) -> torch.Tensor:
    """x(1) from x(0) = x0 (B, P, F) along ``field`` with ``config``'s solver and steps."""
    x1 = ode_solver(field).sample(
        x_init=x0.flatten(1),
        step_size=None,
        method=config.solver,
        time_grid=time_grid(config.steps, x0.device),
    )
    return x1.reshape(x0.shape)


def real_log_normal(z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the real particles' coordinates: z (B, P, F) -> (B,)."""
    per = -0.5 * (z**2 + math.log(2 * math.pi))
    return (per * mask[..., None]).sum((1, 2))


def log_likelihood(
    field: FlatField, x: torch.Tensor, mask: torch.Tensor, config: SetFlowConfig, *, exact: bool
) -> torch.Tensor:
    """log p(x) (B,) of particles x (B, P, F) under the flow of ``field``: the ODE back to
    noise with the divergence of the field (``exact`` or Hutchinson's estimate)."""
    _, logp = ode_solver(field).compute_likelihood(
        x_1=(x * mask[..., None]).flatten(1),
        log_p0=lambda z: real_log_normal(z.reshape(x.shape), mask),
        step_size=None,
        method=config.solver,
        time_grid=time_grid(config.steps, x.device, backwards=True),
        exact_divergence=exact,
    )
    return logp


def chunked(
    solve: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    mask: torch.Tensor,
    *,
    cut: bool,
) -> torch.Tensor:
    """``solve(x0, mask, rows)`` over chunks of `SAMPLE_CHUNK` jets of x0 (B, P, F), mask
    (B, P), taken in order of multiplicity; ``cut``: each chunk drops the slots past its last
    real particle (for networks where padding reaches no real particle). Returns (B, P, F),
    zero on padding. The jets do not depend on the chunking."""
    x = torch.zeros_like(x0)
    order = mask.sum(1).argsort(stable=True)
    for rows in order.split(SAMPLE_CHUNK):
        real = mask[rows].any(0)  # (P,) slots real in some jet of the chunk
        if not real.any():  # jets without particles: nothing to integrate
            continue
        slots = int(real.nonzero()[-1]) + 1 if cut else mask.shape[1]
        x[rows, :slots] = solve(x0[rows, :slots], mask[rows, :slots], rows).to(x.dtype)
    return x * mask[..., None]


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
