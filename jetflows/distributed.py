"""torch.distributed glue for data-parallel training launched by `torchrun`.

`torchrun --nproc_per_node=N ...` starts N processes with RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT set; `init_from_env` joins them (gloo on CPU, nccl on GPU). Everything else asks
`rank_world()`: a process that was not launched that way is rank 0 of 1, so every code path is
the same with and without torchrun.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from jetflows.errors import UserError


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (the process that writes files and reports)."""
    return rank_world()[0] == 0


def default_backend() -> str:
    """nccl when this process has a GPU, else gloo."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def _env_int(name: str, default: int) -> int:
    """An integer environment variable torchrun sets (ValueError naming it otherwise)."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise UserError(
            f"environment variable {name}={text!r} is not an integer (torchrun sets it; unset "
            "it to run one process)"
        ) from None


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group torchrun describes in the environment; False when not launched
    by torchrun (WORLD_SIZE unset or 1) or already joined."""
    if _env_int("WORLD_SIZE", 1) <= 1 or dist.is_initialized():
        return False
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise UserError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} without {', '.join(missing)}: start the "
            "processes with torchrun --nproc_per_node=N (it sets them), or unset WORLD_SIZE"
        )
    _env_int("RANK", 0)
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
    dist.init_process_group(backend)
    return True


def barrier() -> None:
    """Wait for every rank (no-op outside torch.distributed)."""
    if rank_world()[1] > 1:
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. generates a file); the others run it after (and find
    the file there)."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over the ranks (a copy; the input itself outside torch.distributed)."""
    if rank_world()[1] == 1:
        return values
    total = values.detach().clone()
    dist.all_reduce(total)
    return total


DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """ "auto" (a GPU when there is one), "cpu" or "cuda"; under torchrun the GPU of this
    process's LOCAL_RANK. ValueError for an unknown name or cuda without a GPU."""
    if name not in DEVICES:
        raise UserError(f"unknown device {name!r}: use one of {DEVICES}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("device cuda: no CUDA device is available here")
    return torch.device("cuda", _env_int("LOCAL_RANK", 0))
