"""How many torch threads a command uses, chosen on purpose.

torch's default (one thread per core) collapses when anything else runs: on a 2-core machine
with one core held by another process, a quickstart ConVAE epoch went from 0.28 s to 19 s
(its two threads share one core and wait on each other at every barrier). So every command
chooses: an explicit ``--threads``, else the environment (`ENV`, then ``OMP_NUM_THREADS``),
else the cores this process may use (its affinity) that are idle now (read from
``/proc/stat`` over `IDLE_WINDOW` seconds), capped by the work's own size. The choice is a
`ThreadChoice` whose `describe` goes into each command's log.

Example:
    >>> choice = choose_threads(3, usable=4, idle=1.0)
    >>> choice.threads, choice.source
    (3, '--threads')
    >>> choose_threads(None, usable=2, idle=1.1, env={}).threads  # one core busy: one thread
    1
    >>> choose_threads(None, usable=8, idle=8.0, cap=2, env={}).threads  # small work
    2
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

from jetflows.errors import UserError

ENV = "JETFLOWS_THREADS"
IDLE_WINDOW = 0.05  # seconds of /proc/stat between two reads: start-up cost vs a stable read
#: a core counts as free when at least this fraction of it is idle
IDLE_SHARE = 0.6
MAX_THREADS = 1024


@dataclass(frozen=True)
class ThreadChoice:
    """A command's torch thread count and why.

    Arguments:
        threads: torch's intra-op threads.
        usable: cores this process may run on (its CPU affinity).
        idle: cores idle while it was chosen (None: not measured).
        source: what decided: "--threads", `ENV`, "OMP_NUM_THREADS" or "idle cores".
    """

    threads: int
    usable: int
    idle: float | None
    source: str

    def describe(self) -> str:
        """One line for a log: 'torch threads: 1 (idle cores: 1.0 of 2 usable; ...)'."""
        idle = "" if self.idle is None else f", {self.idle:.1f} idle"
        how = f"{self.source}: {self.usable} usable cores{idle}"
        return f"torch threads: {self.threads} ({how}; --threads or {ENV} to choose)"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; all cores where that is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _proc_stat() -> str | None:
    try:
        with open("/proc/stat") as handle:
            return handle.read()
    except OSError:
        return None


def cpu_times(cores: set[int], stat: str | None) -> tuple[float, float] | None:
    """(idle, total) jiffies summed over ``cores`` from the text of /proc/stat (``stat``);
    None where it tells nothing of them."""
    if not stat:
        return None
    idle = total = 0.0
    for line in stat.splitlines():
        name, *values = line.split() or [""]
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores):
            continue
        ticks = [float(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
        idle += ticks[3] + ticks[4]
        total += sum(ticks)
    return (idle, total) if total else None


def idle_cores(window: float = IDLE_WINDOW) -> float | None:
    """How many of this process's usable cores were idle over the last ``window`` seconds
    (None where /proc/stat cannot tell: not Linux)."""
    try:
        cores = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    before = cpu_times(cores, _proc_stat())
    if before is None:
        return None
    time.sleep(window)
    after = cpu_times(cores, _proc_stat())
    if after is None or after[1] <= before[1]:
        return None
    share = (after[0] - before[0]) / (after[1] - before[1])
    return share * len(cores)


def _parsed(value: str, where: str) -> int:
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if not 1 <= threads <= MAX_THREADS:
        raise UserError(f"{where} must be a whole number of threads in [1, {MAX_THREADS}]: {value}")
    return threads


def choose_threads(
    requested: int | None = None,
    *,
    cap: int | None = None,
    usable: int | None = None,
    idle: float | None = None,
    env: Mapping[str, str] | None = None,
) -> ThreadChoice:
    """The thread count for a command: ``requested`` (``--threads``) wins, then `ENV`, then
    ``OMP_NUM_THREADS``; otherwise the usable cores idle now (at least one), at most ``cap``
    (the work's own limit: a few jets gain nothing from more threads).

    ``usable`` and ``idle`` are measured when not given (`usable_cores`, `idle_cores`).

    Raises:
        ValueError: a requested or environment value that is not a positive whole number.
    """
    env = os.environ if env is None else env
    usable = usable_cores() if usable is None else usable
    if requested is not None:
        return ThreadChoice(_parsed(str(requested), "--threads"), usable, idle, "--threads")
    for name in (ENV, "OMP_NUM_THREADS"):
        if env.get(name, "").strip():
            return ThreadChoice(_parsed(env[name].strip(), name), usable, idle, name)
    idle = idle_cores() if idle is None else idle
    # a core counts when mostly idle: two threads on one free core wait on each other
    free = usable if idle is None else int(idle + (1 - IDLE_SHARE))
    threads = max(1, min(usable, free, cap or usable))
    return ThreadChoice(threads, usable, idle, "idle cores")


#: the choice last applied in this process (torch's thread count is process-wide too)
_APPLIED: list[ThreadChoice] = []


def apply_threads(choice: ThreadChoice) -> None:
    """Set torch's intra-op threads to ``choice.threads`` (what `applied` then returns)."""
    import torch

    torch.set_num_threads(choice.threads)
    _APPLIED[:] = [choice]


def applied() -> ThreadChoice | None:
    """The `ThreadChoice` this process applied last (None: none; torch's own default)."""
    return _APPLIED[0] if _APPLIED else None


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), printed beside every timing and
    score: CPUs differ (bf16 was faster on one Xeon and slower on another)."""
    import platform
    from pathlib import Path

    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.is_file() else ():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def peak_memory_gb() -> float:
    """This process's peak resident memory so far, in GB (it only grows; children apart)."""
    import resource  # Unix only: kept off the import path of other platforms
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**30 if sys.platform == "darwin" else 2**20)  # bytes on macOS, else KB
