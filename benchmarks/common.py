"""What every benchmark prints beside its figures: the CPU model and the torch thread count.

Benchmarks run as scripts (``python benchmarks/x.py``), so their directory is on ``sys.path``
and they import this module as ``common``.
"""

from __future__ import annotations

import torch

from jetflows.threads import cpu_model

__all__ = ["cpu_model", "machine_line"]


def machine_line() -> str:
    """ "CPU: <model>, torch threads: <n>", for the first line of a benchmark's output."""
    return f"CPU: {cpu_model()}, torch threads: {torch.get_num_threads()}"
