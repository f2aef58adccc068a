"""What every benchmark prints beside its figures: the CPU model and the torch thread count.

Benchmarks run as scripts (``python benchmarks/x.py``), so their directory is on ``sys.path``
and they import this module as ``common``.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.is_file() else ():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_line() -> str:
    """ "CPU: <model>, torch threads: <n>", for the first line of a benchmark's output."""
    return f"CPU: {cpu_model()}, torch threads: {torch.get_num_threads()}"
