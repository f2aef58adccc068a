"""jetflows core: constants, jet physics and training glue shared by `convae`, `flows` and
`pipelines`.

`jetflows`, `classes`, `physics` and `normalize` import only numpy at start-up (torch is
imported lazily where a tensor is passed), so every layer, the command line included, can use
them without paying for heavy imports; `training` (the shared fit loop) and `distributed`
(torch.distributed glue) import torch.
"""

from jetflows.classes import ALIASES, JET_TYPES, canonical_class

__version__ = "0.1.0"

__all__ = ["ALIASES", "JET_TYPES", "__version__", "canonical_class"]
