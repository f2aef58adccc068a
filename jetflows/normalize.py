"""Mask-aware, invertible feature normalizations (padding is not data).

The research code min-max scaled arrays that included zero padding, so every feature's minimum was
the padding's 0 and the scale depended on the multiplicity. Here statistics come from real
particles only, and padding stays exactly zero after `transform` and `inverse`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from jetflows.errors import UserError
from jetflows.physics import Array, _xp


def _standard(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return rows.mean(0), rows.std(0)


def _minmax(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return rows.min(0), rows.max(0) - rows.min(0)


#: name -> function from real rows (M, F) to (shift, scale), each (F,).
STATISTICS: dict[str, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "standard": _standard,  # zero mean, unit variance
    "minmax": _minmax,  # onto [0, 1]
    # (eta, phi, log pt_rel), then standard: the soft particles, 1e-4 to 1e-2 of the jet's pt,
    # are as far apart as the hard ones (the set flow sees log pt too), and an inverse of any
    # network output is a positive pt
    "standard_log_pt": _standard,
}
#: name -> the features taken as their log before the statistics (pt_rel: index 2)
LOGGED: dict[str, tuple[int, ...]] = {"standard_log_pt": (2,)}
#: the smallest value a logged feature is taken to have (no real particle has pt_rel 0)
LOG_FLOOR = 1e-12
#: the largest log an inverse exponentiates (pt_rel e^5 ~ 150: far beyond a real particle's <= 1)
LOG_CEILING = 5.0


@dataclass(frozen=True)
class Normalization:
    """An invertible per-feature affine map ``(x - shift) / scale`` that leaves padding at zero.

    Arguments:
        kind: the name in `STATISTICS` the statistics came from (kept for the record).
        shift: (F,) values subtracted.
        scale: (F,) divisors, all > 0.
        log: features mapped by their log first (and by exp in `inverse`), `LOGGED[kind]`.

    Example:
        >>> x = np.array([[[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]]])
        >>> norm = fit_normalization(x, x[..., 0] > 0, kind="minmax")
        >>> norm.transform(x, x[..., 0] > 0)[0, :, 0].tolist() == [0.0, 1.0, 0.0]  # padding: 0
        True
    """

    kind: str
    shift: tuple[float, ...]
    scale: tuple[float, ...]
    log: tuple[int, ...] = ()

    def _logged(self, x: Array) -> Array:
        """(..., F) boolean: which features are logged, as an array like ``x``."""
        xp = _xp(x)
        flags = [i in self.log for i in range(x.shape[-1])]
        return xp.asarray(flags) if xp is np else xp.tensor(flags, device=x.device)

    def _params(self, x: Array) -> tuple[Array, Array]:
        if x.shape[-1] != len(self.shift):
            raise UserError(
                f"normalization has {len(self.shift)} features but the data has {x.shape[-1]}"
            )
        xp = _xp(x)
        kwargs = {"dtype": x.dtype} if xp is np else {"dtype": x.dtype, "device": x.device}
        return xp.asarray(self.shift, **kwargs), xp.asarray(self.scale, **kwargs)

    def transform(self, x: Array, mask: Array | None = None) -> Array:
        """x: (..., F) -> normalized (..., F); rows outside ``mask`` (...,) become zero."""
        shift, scale = self._params(x)
        if self.log:
            xp = _xp(x)
            x = xp.where(self._logged(x), xp.log(xp.clip(x, LOG_FLOOR, None)), x)
        y = (x - shift) / scale
        return y if mask is None else y * mask[..., None]

    def inverse(self, y: Array, mask: Array | None = None) -> Array:
        """Undo `transform`: y: (..., F) -> x (..., F); rows outside ``mask`` become zero."""
        shift, scale = self._params(y)
        x = y * scale + shift
        if self.log:  # exp of the logged features only (another feature's exp may overflow),
            # bounded at LOG_CEILING: an untrained decoder's output must not become an inf pt
            xp, logged = _xp(x), self._logged(x)
            bounded = xp.clip(xp.where(logged, x, xp.zeros_like(x)), None, LOG_CEILING)
            x = xp.where(logged, xp.exp(bounded), x)
        return x if mask is None else x * mask[..., None]

    def to_dict(self) -> dict[str, object]:
        """Plain-Python form, for checkpoints and JSON (``log`` only when some feature is)."""
        state = {"kind": self.kind, "shift": list(self.shift), "scale": list(self.scale)}
        return {**state, "log": list(self.log)} if self.log else state

    @classmethod
    def from_dict(cls, state: dict[str, object]) -> Normalization:
        """Rebuild from `to_dict` output; an unknown or missing key is a ValueError (``log``
        may be missing: states written before it existed log nothing)."""
        fields = set(asdict(cls("", (), ())))
        if not fields - {"log"} <= set(state) <= fields:
            needed = sorted(fields - {"log"})
            raise UserError(f"normalization state needs exactly the keys {needed} (and maybe log)")
        log = tuple(int(i) for i in state.get("log", ()))
        return cls(str(state["kind"]), tuple(state["shift"]), tuple(state["scale"]), log)


def fit_normalization(
    x: Array, mask: Array | None = None, *, kind: str = "standard", eps: float = 1e-8
) -> Normalization:
    """Statistics of the real rows of ``x``.

    Arguments:
        x: (N, P, F) particles with mask (N, P), or (N, F) rows with mask None (all real).
        kind: a name in `STATISTICS`.
        eps: floor for the scale, so a constant feature maps to zero instead of dividing by 0.

    Returns:
        A `Normalization`; its `transform` maps the real rows as ``kind`` says.
    """
    if kind not in STATISTICS:
        raise UserError(f"unknown normalization {kind!r}: use one of {sorted(STATISTICS)}")
    data = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)
    if mask is not None:
        mask = np.asarray(mask.detach().cpu() if hasattr(mask, "detach") else mask, dtype=bool)
        if mask.shape != data.shape[:-1]:
            raise UserError(f"mask shape {mask.shape} does not match data {data.shape[:-1]}")
        data = data[mask]
    rows = data.reshape(-1, data.shape[-1])
    if len(rows) == 0:
        raise UserError("cannot fit a normalization: no real particles (the mask is all False)")
    if not np.isfinite(rows).all():
        raise UserError("cannot fit a normalization: the data contain NaN or inf")
    log = tuple(i for i in LOGGED.get(kind, ()) if i < rows.shape[-1])
    if log:  # a copy: without a mask, rows may be the caller's own array
        rows = rows.copy()
        rows[:, list(log)] = np.log(np.clip(rows[:, list(log)], LOG_FLOOR, None))
    shift, scale = STATISTICS[kind](rows)
    scale = np.maximum(scale, eps)
    return Normalization(kind, tuple(map(float, shift)), tuple(map(float, scale)), log)
