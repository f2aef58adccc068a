"""Value checks for the frozen config dataclasses, so a bad value fails when the config is
built (and a YAML loader names its key) rather than deep inside torch after hours of work."""

from __future__ import annotations

import math
from typing import Any

from jetflows.errors import UserError


def require(config: Any, names: tuple[str, ...], *, low: float = 0, strict: bool = False) -> None:
    """Raise ValueError unless each field of ``config`` in ``names`` is a finite number >= low
    (> low when ``strict``); None passes (an optional field left unset).

    Example:
        >>> from types import SimpleNamespace
        >>> require(SimpleNamespace(lr=float("nan")), ("lr",), strict=True)
        Traceback (most recent call last):
        ...
        jetflows.errors.UserError: lr must be a finite number > 0, got nan
    """
    for name in names:
        value = getattr(config, name)
        if value is None:
            continue
        finite = isinstance(value, int | float) and math.isfinite(value)
        if not finite or (value <= low if strict else value < low):
            raise UserError(
                f"{name} must be a finite number {'>' if strict else '>='} {low}, got {value!r}"
            )
