"""What every benchmark prints beside its figures (the CPU model and the torch thread count),
and a trained run's checkpoints as the registry lists them.

Benchmarks run as scripts (``python benchmarks/x.py``), so their directory is on ``sys.path``
and they import this module as ``common``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from jetflows.threads import cpu_model

__all__ = ["cpu_model", "machine_line", "run_states"]


def machine_line() -> str:
    """ "CPU: <model>, torch threads: <n>", for the first line of a benchmark's output."""
    return f"CPU: {cpu_model()}, torch threads: {torch.get_num_threads()}"


def run_states(class_dir: Path, *, student: bool = False) -> dict[str, dict[str, Any]]:
    """A run class folder's checkpoints by file name, as `load_sampler` reads them: flow.pt,
    what it was fitted on and the companions present (a set flow's guide.pt); ``student``:
    also its few-step student.pt when there (sampled in the teacher's place)."""
    from flows.setflow.student import CHECKPOINT_KIND as STUDENT_KIND  # only when asked for
    from pipelines.run.checkpoints import load_checkpoint
    from pipelines.run.generators import GENERATORS, STUDENT, sampled_kinds

    states = {"flow.pt": load_checkpoint(class_dir / "flow.pt", sampled_kinds())}
    gen = GENERATORS[states["flow.pt"]["extra"]["target"]]
    for name, kind in gen.inputs:
        states[name] = load_checkpoint(class_dir / name, kind)
    beside = [*gen.companions, *([(STUDENT, STUDENT_KIND)] if student else [])]
    for name, kind in beside:
        if (class_dir / name).is_file():
            states[name] = load_checkpoint(class_dir / name, kind)
    return states
