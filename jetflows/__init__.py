"""jetflows core: constants and jet physics shared by `convae`, `flows` and `pipelines`.

The core imports only numpy at start-up (torch is imported lazily where a tensor is passed), so
every layer, the command line included, can use it without paying for heavy imports.
"""

from jetflows.classes import ALIASES, JET_TYPES, canonical_class

__version__ = "0.1.0"

__all__ = ["ALIASES", "JET_TYPES", "__version__", "canonical_class"]
