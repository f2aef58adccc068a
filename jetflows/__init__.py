"""jetflows core: constants, jet physics and training glue shared by `convae`, `flows` and
`pipelines`.

`jetflows`, `classes`, `physics` and `normalize` import only numpy at start-up (torch is
imported lazily where a tensor is passed), so every layer, the command line included, can use
them without paying for heavy imports; `training` (the shared fit loop) and `distributed`
(torch.distributed glue) import torch.

`jetflows.load("top")` is the one name here from a layer above: the shipped model of a class
(`pipelines.run.sample.load`), imported only when asked for, because ``import jetflows`` is
what a user types first:

    >>> import jetflows  # doctest: +SKIP
    >>> jets = jetflows.load("top").sample(10_000, seed=0)  # doctest: +SKIP
"""

from typing import Any

from jetflows.classes import ALIASES, JET_TYPES, canonical_class

__version__ = "0.1.0"

__all__ = ["ALIASES", "JET_TYPES", "__version__", "canonical_class", "load"]


def __getattr__(name: str) -> Any:
    """`load`, imported on first use (it pulls torch and the models; the core stays light)."""
    if name == "load":
        from pipelines.run.sample import load

        return load
    raise AttributeError(f"module 'jetflows' has no attribute {name!r}")
