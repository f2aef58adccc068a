"""Checkpoint files: self-describing states (see convae.train) written atomically, with a
provenance record (the class a model belongs to and the content hash of every checkpoint it
was fitted on), so a model copied from another class or beside another ConVAE is refused."""

from __future__ import annotations

import hashlib
import json
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from jetflows.errors import UserError
from pipelines.io import atomic_path, require_file

HASH_KEY = "content_sha256"


def _walk(obj: Any, name: str = "") -> Any:
    """(name, tensor) of every tensor in a nested state, in a fixed order."""
    if isinstance(obj, torch.Tensor):
        yield name, obj
    elif isinstance(obj, dict):
        for key in sorted(obj, key=str):
            if key != HASH_KEY:
                yield from _walk(obj[key], f"{name}/{key}")
    elif isinstance(obj, list | tuple):
        for i, item in enumerate(obj):
            yield from _walk(item, f"{name}/{i}")


#: the hash of everything else: configs, the generator record, provenance, history
RECORD_KEY = "record_sha256"


def _plain(obj: Any) -> Any:
    """``obj`` as JSON-able data, each tensor by its dtype and shape (its bytes are
    `content_hash`'s)."""
    if isinstance(obj, torch.Tensor):
        return ["tensor", str(obj.dtype), list(obj.shape)]
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items() if k not in (HASH_KEY, RECORD_KEY)}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, float):
        return repr(obj)  # exact, and NaN or inf as themselves
    return obj


def record_hash(state: dict[str, Any]) -> str:
    """SHA-256 of every value in ``state`` that is not a tensor's bytes: a sign flipped in a
    stored jet kinematics value or a config edited by hand changes it."""
    text = json.dumps(_plain(state), sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def _check_extents(state: dict[str, Any], path: Path) -> None:
    """Refuse a tensor that claims more elements than its storage holds (a crafted
    ``zeros(1).expand(20000, 20000)`` is 4 bytes on disk and 1.6 GB once made contiguous for
    the hash): checked before anything is allocated."""
    for name, tensor in _walk(state):
        if tensor.numel() * tensor.element_size() > tensor.untyped_storage().nbytes():
            raise UserError(
                f"{path}: tensor {name} of shape {tuple(tensor.shape)} is larger than the data "
                "stored for it: not a checkpoint jetflows wrote; delete it and train again"
            )


def content_hash(state: dict[str, Any]) -> str:
    """SHA-256 of every tensor in ``state`` (weights, best weights, optimizer, RNG), by name."""
    h = hashlib.sha256()
    for name, tensor in _walk(state):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` with torch.save to a temporary name, then rename it into place, with a
    content hash of its tensors and a hash of everything else (`record_hash`) that
    `load_checkpoint` checks (flipped bytes inside a tensor or a record leave a loadable file:
    only the hashes tell)."""
    with atomic_path(path) as tmp:
        hashes = {HASH_KEY: content_hash(state), RECORD_KEY: record_hash(state)}
        torch.save({**state, **hashes}, tmp)
    return Path(path)


def _first_line(err: BaseException) -> str:
    """An error's first non-empty line: torch's load errors run to paragraphs."""
    return next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)


def _check_container(path: Path) -> None:
    """Refuse, naming the file, what is neither torch's zip archive nor a pickle (a text file,
    a checkpoint cut short: its zip directory sits at the end), before torch reads it."""
    with open(path, "rb") as handle:
        pickled = handle.read(1) == b"\x80"  # a bare pickle: torch.load says what it holds
    if not pickled and not zipfile.is_zipfile(path):
        raise UserError(
            f"{path}: not a readable checkpoint (truncated, corrupt or not one at all); delete "
            "it and rerun jetflows pipeline to train it again"
        )


def load_checkpoint(path: str | Path, kind: str | tuple[str, ...]) -> dict[str, Any]:
    """Read a checkpoint and check that it is of ``kind`` (e.g. "jetflows.convae"), or of one
    of the kinds in a tuple.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a checkpoint (truncated, corrupt) or one of another model.
    """
    path = require_file(path, "checkpoint")
    _check_container(path)
    try:
        # weights_only: a checkpoint is a pickle, and a crafted one runs code when fully
        # unpickled; ours hold only tensors, containers, numbers and strings, which the
        # restricted unpickler allows, and it refuses any other object unread
        with warnings.catch_warnings():  # "Detected pickle protocol 4": a foreign pickle
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # a foreign object ("unsupported GLOBAL"), or a pickle (it starts with the PROTO
        # opcode 0x80) using opcodes the restricted unpickler refuses; anything else is junk
        text = str(err).lower()
        with open(path, "rb") as handle:
            pickled = handle.read(1) == b"\x80" and "unsupported operand" in text
        refused = "unsupported global" in text or pickled
        if not refused:  # junk bytes, not a foreign object
            raise UserError(
                f"{path}: not a readable checkpoint (truncated or corrupt): {_first_line(err)}"
            ) from err
        raise UserError(
            f"{path}: holds objects no jetflows checkpoint holds (refused unread: loading "
            "them could run code); was it made by jetflows?"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, KeyError, IndexError, OSError) as err:
        # a damaged archive surfaces from torch's readers as any of these (a KeyError from the
        # unpickler's memo, errno 22 from the zip reader): all mean the bytes are not a whole
        # checkpoint
        raise UserError(
            f"{path}: not a readable checkpoint (truncated or corrupt): {_first_line(err)}"
        ) from err
    found = state.get("kind") if isinstance(state, dict) else type(state).__name__
    if found not in ((kind,) if isinstance(kind, str) else kind):
        raise UserError(f"{path}: a checkpoint of {found!r}, expected {kind!r}")
    _check_extents(state, path)
    if state.pop(HASH_KEY, None) != content_hash(state):
        raise UserError(
            f"{path}: damaged (its tensors no longer match the hash written with them); "
            "delete it and rerun to train it again"
        )
    recorded = state.pop(RECORD_KEY, None)  # None: written before the record was hashed
    if recorded is not None and recorded != record_hash(state):
        raise UserError(
            f"{path}: damaged or edited (its configs, record or history no longer match the "
            "hash written with them); delete it and rerun to train it again"
        )
    return state


#: what, besides the weights, makes a model what it is: keys hashed for every kind (None where
#: a kind lacks one), and the set flow's own key, hashed only where present (so the fingerprints
#: recorded in existing runs stay valid)
_IDENTITY = ("kind", "model_config", "flow_config", "features", "context", "normalization")
_SET_FLOW_IDENTITY = ("set_flow_config",)


def fingerprint(state: dict[str, Any]) -> str:
    """A content hash of a checkpoint's model: its best weights, architecture and input scaling
    (not its history or optimizer), so it survives re-saving and names the model itself."""
    h = hashlib.sha256(
        json.dumps(
            {k: state.get(k) for k in _IDENTITY}
            | {k: state[k] for k in _SET_FLOW_IDENTITY if k in state},
            sort_keys=True,
            default=str,
        ).encode()
    )
    for name, tensor in sorted(state["best_state_dict"].items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def provenance(jet_class: str, **fitted_on: dict[str, Any]) -> dict[str, Any]:
    """The record a pipeline checkpoint carries: its class and, per input checkpoint (file name
    -> that checkpoint's state), the input's fingerprint."""
    return {
        "jet_class": jet_class,
        "fitted_on": {name: fingerprint(state) for name, state in fitted_on.items()},
    }


def check_provenance(
    state: dict[str, Any], path: str | Path, jet_class: str, **fitted_on: dict[str, Any]
) -> None:
    """Refuse a checkpoint of another class, or one fitted on other inputs than ``fitted_on``
    (file name -> the state found beside it).

    Raises:
        ValueError: no provenance recorded, or the recorded class or an input's fingerprint
            differs.
    """
    record = state.get("provenance")
    if record is None:
        raise UserError(
            f"{path}: records no class and inputs (not a model the pipeline saved); "
            "train it with `jetflows pipeline`"
        )
    if record["jet_class"] != jet_class:
        raise UserError(
            f"{path} is a model of class {record['jet_class']!r}, not {jet_class!r} "
            "(copied from another class's folder?)"
        )
    for name, other in fitted_on.items():
        recorded, found = record["fitted_on"].get(name), fingerprint(other)
        if recorded != found:
            raise UserError(
                f"{path} was fitted on another {name} than the one beside it (fingerprint "
                f"{recorded}, found {found}): copy a run's models together, or retrain"
            )
