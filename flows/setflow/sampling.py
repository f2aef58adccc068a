"""Integrating a set flow's ODE: fixed-step solving from noise to jets in chunks, the exact
log-likelihood, and the arithmetic (fp32 or bf16) the network runs in while sampling.

Meta's ``flow_matching`` supplies the ODE solver (``ODESolver``, on torchdiffeq's fixed-grid
Euler / midpoint / RK4) and the likelihood (``compute_likelihood``, exact divergence or
Hutchinson); what is ours is the masking and the (N, P, F) <-> (N, P * F) reshapes the
library's divergence loop needs.
"""

from __future__ import annotations

import hashlib
import math
import platform
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from flows.setflow.config import SAMPLE_CHUNK, SetFlowConfig
from flows.setflow.path import occupied_slots

#: a velocity on a flat state: (x (B, P * F), t) -> (B, P * F), as flow_matching calls it
FlatField = Callable[..., torch.Tensor]


def ode_solver(field: FlatField) -> Any:
    """flow_matching's ODE solver of ``field``."""
    # imported here: torchdiffeq imports scipy.integrate (~0.5 s), which `jetflows sample` of
    # the other generators must not pay at start-up
    from flow_matching.solver import ODESolver

    return ODESolver(velocity_model=field)


def time_grid(
    steps: int, device: torch.device, *, backwards: bool = False, start: float = 0.0
) -> torch.Tensor:
    """The (steps + 1,) grid from ``start`` to 1 (``backwards``: 1 to ``start``)."""
    # an explicit grid, not step_size=1/steps: torchdiffeq's ceil() of a rounded 1/steps can
    # add a step
    grid = torch.linspace(start, 1.0, steps + 1, device=device)
    return grid.flip(0) if backwards else grid


def integrate(
    field: FlatField,
    x0: torch.Tensor,
    config: SetFlowConfig,
    *,
    path: bool = False,
    start: float = 0.0,
) -> torch.Tensor:
    """x(1) from x(``start``) = x0 (B, P, F) along ``field`` with ``config``'s solver and
    steps (over [start, 1]); ``path``: every state of the grid instead, (steps + 1, B, P, F),
    x0 first."""
    states = ode_solver(field).sample(
        x_init=x0.flatten(1),
        step_size=None,
        method=config.solver,
        time_grid=time_grid(config.steps, x0.device, start=start),
        return_intermediates=path,
    )
    return states.reshape(*states.shape[:-1], *x0.shape[1:])


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
        occupied = occupied_slots(mask[rows])
        if not occupied:  # jets without particles: nothing to integrate
            continue
        slots = occupied if cut else mask.shape[1]
        x[rows, :slots] = solve(x0[rows, :slots], mask[rows, :slots], rows).to(x.dtype)
    return x * mask[..., None]


#: without a network to time, "auto" runs a CPU network this narrow in fp32 even with native
#: bf16: the casts outweigh the smaller matmuls (AMD EPYC with AVX512-BF16, one thread, 512 jets
#: of 30 particles: width 96 x 3 blocks 180 us a jet in bf16 against 286 in fp32; the guide's
#: width 48 x 2 blocks 86 against 58)
AUTO_BF16_MIN_WIDTH = 64
#: "auto" on a CPU with native bf16: whether bf16 ran a network faster, by `timing_key`, timed
#: once in this process (`bf16_faster`); a caller may preload and keep it (the pipelines keep
#: it on disk), so a machine times each network shape once
BF16_FASTER: dict[str, bool] = {}
TIMING_REPEATS = 3


def native_bf16() -> bool:
    """Whether this CPU has native bfloat16 (AVX512-BF16 or AMX); without it autocast emulates
    bf16 and runs slower than fp32."""
    # torch's own CPU probes (private, hence the fallbacks)
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, p, lambda: False)() for p in probes)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next(
                (line.split(":", 1)[1].strip() for line in handle if "model name" in line), ""
            )
    except OSError:
        return platform.processor()


def timing_key(net: nn.Module, slots: int) -> str:
    """What a precision timing holds for: the CPU model, torch's threads, the network's class
    and parameter shapes, and the particle slots it runs on."""
    shapes = ";".join(f"{n}{tuple(p.shape)}" for n, p in net.named_parameters())
    digest = hashlib.sha256(shapes.encode()).hexdigest()[:16]
    return (
        f"{_cpu_name()}|threads {torch.get_num_threads()}|{type(net).__name__} {digest}|P {slots}"
    )


def _seconds(net: nn.Module, inputs: tuple[torch.Tensor, ...], bf16: bool) -> float:
    """Best of `TIMING_REPEATS` forward passes (after one warm-up)."""
    best = math.inf
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(TIMING_REPEATS + 1):
            start = time.perf_counter()
            net(*inputs)
            if i:
                best = min(best, time.perf_counter() - start)
    return best


def bf16_faster(net: nn.Module, *, slots: int, features: int, context: int) -> bool:
    """Whether ``net`` (a velocity network taking x (B, P, F), mask (B, P), c (B, C)) runs a
    chunk of `SAMPLE_CHUNK` jets of ``slots`` particles faster in bf16 than in fp32 on this CPU:
    timed once (`BF16_FASTER`). The flag that a CPU has bf16 says what it can do, not what is
    faster: on an Intel Xeon with AVX512-BF16 the guided set flow sampled slower in bf16."""
    key = timing_key(net, slots)
    if key not in BF16_FASTER:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(SAMPLE_CHUNK, slots, features, generator=g)
        c = torch.randn(SAMPLE_CHUNK, context, generator=g)
        inputs = (x, torch.ones(SAMPLE_CHUNK, slots, dtype=torch.bool), c)
        BF16_FASTER[key] = _seconds(net, inputs, True) < _seconds(net, inputs, False)
    return BF16_FASTER[key]


def uses_bf16(
    precision: str,
    device: torch.device,
    width: int | None = None,
    *,
    timed: Callable[[], bool] | None = None,
) -> bool:
    """Whether ``precision`` ("fp32", "bf16", "auto") samples in bfloat16 on ``device``.

    "auto": on a GPU, where it supports bf16; on a CPU, never without native bf16, else as
    ``timed()`` says (`bf16_faster` of the network), or without it by ``width`` (a network
    narrower than `AUTO_BF16_MIN_WIDTH` stays fp32; None: any).
    """
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu" or not native_bf16():
        return False
    if timed is not None:
        return timed()
    return width is None or width >= AUTO_BF16_MIN_WIDTH
