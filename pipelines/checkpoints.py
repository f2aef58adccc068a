"""Checkpoint files: self-describing states (see convae.train) written atomically."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from pipelines.io import atomic_path


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` with torch.save to a temporary name, then rename it into place."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | Path, kind: str) -> dict[str, Any]:
    """Read a checkpoint and check that it is of ``kind`` (e.g. "jetflows.convae").

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a checkpoint (truncated, corrupt) or one of another model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        # weights_only=False: our own files hold configs and RNG states besides tensors
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise ValueError(
            f"{path}: not a readable checkpoint (truncated or corrupt): {err}"
        ) from err
    found = state.get("kind") if isinstance(state, dict) else type(state).__name__
    if found != kind:
        raise ValueError(f"{path}: a checkpoint of {found!r}, expected {kind!r}")
    return state
