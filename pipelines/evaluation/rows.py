"""One figure beside its truth floor: the row every report (evaluate, study, digits) writes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: Why a row's number can be undefined; JSON writes it as null with this beside it.
UNDEFINED = {
    "ratio": "the floor is <= 0 (an unbiased estimate such as KPD's can be), so value / floor "
    "is undefined: read the value",
    "value": "not a finite number (e.g. a scaled EMD of an observable that is constant in the "
    "real sample divides by a zero spread)",
    "ratio of a bad value": "the value is not a finite number (see its reason), so value / "
    "floor is undefined though the floor is fine",
    "no floor": "the figure has no real-vs-real counterpart, so there is no ratio: read the value",
    "floor within its error": "the floor is not told apart from 0 by its own uncertainty "
    "(floor <= its std), so value / floor is noise: read the value beside the floor and its error",
}


@dataclass(frozen=True)
class MetricRow:
    """A figure of generated jets (``value`` +- ``std``) and the same figure of a real sample of
    the same size against the reference (``floor`` +- ``floor_std``); None: not measured.

    Example:
        >>> MetricRow(0.3, 0.2).to_dict(errors=False)
        {'value': 0.3, 'floor': 0.2, 'ratio': 1.4999999999999998}
        >>> MetricRow(0.3, 0.0).to_dict(errors=False)["undefined"]["ratio"][:20]
        'the floor is <= 0 (a'
    """

    value: float
    floor: float | None
    std: float | None = None
    floor_std: float | None = None

    @property
    def ratio(self) -> float:
        """value / floor; NaN where the floor is missing, <= 0, or within its own uncertainty
        of 0 (an FPD floor of 2.9e-18 +- 0.0096 gave a ratio of 3e15)."""
        floor = self.floor
        return self.value / floor if floor is not None and self._floor_measured() else math.nan

    def _floor_measured(self) -> bool:
        """Whether the floor is > 0 and told apart from 0 by its uncertainty (when it has one)."""
        return self.floor is not None and self.floor > 0 and not (self.floor_std or 0) >= self.floor

    def undefined(self) -> dict[str, str]:
        """Why each non-finite number is not one, by key."""
        numbers = {"value": self.value, "std": self.std, "floor": self.floor}
        numbers |= {"floor_std": self.floor_std, "ratio": self.ratio}
        if self.floor is None:
            why = "no floor"
        else:
            # the ratio's reason is the floor's only where the floor is <= 0; it was said even
            # for a floor of 1.03 beside a NaN value (all-empty generated jets)
            why = "ratio" if not self.floor > 0 else "ratio of a bad value"
            why = "floor within its error" if self.floor > 0 and not self._floor_measured() else why
        return {
            key: UNDEFINED[why if key == "ratio" else "value"]
            for key, number in numbers.items()
            if number is not None and not math.isfinite(number)
        }

    def to_dict(self, *, errors: bool = True) -> dict[str, Any]:
        """value, std, floor, floor_std, ratio (std's only with ``errors``), and ``undefined``
        where a number is not finite (strict JSON stores it as null)."""
        row: dict[str, Any] = {"value": self.value}
        if errors:
            row["std"] = self.std
        row["floor"] = self.floor
        if errors:
            row["floor_std"] = self.floor_std
        row["ratio"] = self.ratio
        undefined = self.undefined()
        if undefined:
            row["undefined"] = undefined
        return row
