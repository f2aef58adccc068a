"""Jet classes of the JetNet dataset and their user-facing aliases."""

from __future__ import annotations

from jetflows.errors import UserError

#: JetNet's class names, in JetNet's order (the order fixes class indices and split permutations).
JET_TYPES: tuple[str, ...] = ("g", "q", "t", "w", "z")

#: Accepted spellings (case-insensitive) for each class.
ALIASES: dict[str, str] = {
    "g": "g",
    "gluon": "g",
    "q": "q",
    "quark": "q",
    "light": "q",
    "t": "t",
    "top": "t",
    "w": "w",
    "z": "z",
}


def canonical_class(name: str) -> str:
    """Return JetNet's one-letter class name for ``name`` ("top" -> "t", "W" -> "w").

    Raises:
        ValueError: ``name`` is not a class or an alias; the message lists the valid ones.

    Example:
        >>> canonical_class("Top")
        't'
    """
    key = str(name).strip().lower()
    if key not in ALIASES:
        raise UserError(
            f"unknown jet class {name!r}: use one of g, q, t, w, z "
            "or the aliases gluon, quark, top, W, Z (case-insensitive)"
        )
    return ALIASES[key]


def class_index(name: str) -> int:
    """Index of a class in `JET_TYPES` (JetNet's label convention)."""
    return JET_TYPES.index(canonical_class(name))
