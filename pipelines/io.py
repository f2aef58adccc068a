"""Atomic file writes: a crash, Ctrl-C or a full disk never leaves a half-written file."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jetflows import interrupt
from jetflows.errors import MissingFileError, UserError


def default_cache_dir() -> Path:
    """$JETFLOWS_CACHE, else ~/.cache/jetflows: what jetflows keeps between runs (Pythia
    chunks, precision timings)."""
    return Path(os.environ.get("JETFLOWS_CACHE", Path.home() / ".cache" / "jetflows"))


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (where a new file or directory would go)."""
    return next((p for p in [path, *path.parents] if p.exists()), Path("."))


def check_writable(path: str | Path, *, overwrite: bool = False) -> Path:
    """Fail early, before any work, if ``path`` cannot be written.

    Raises:
        ValueError: the file exists and ``overwrite`` is False, or its directory is not writable.
    """
    path = Path(path)
    if path.is_dir():  # before "exists": --overwrite would not help
        raise UserError(f"{path} is a directory, not a file name")
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists: pass --overwrite to replace it")
    parent = _nearest_existing(path.parent)
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {path}: {parent} is not a writable directory")
    return path


def check_output_dir(
    path: str | Path, *, overwrite: bool = True, replaceable: tuple[str, ...] | None = None
) -> Path:
    """Fail early, before any work, if ``path`` cannot become an output directory.

    ``replaceable``: the only names an existing folder may hold to be replaced whole (None:
    anything), so that replacing a report never deletes a run's models beside it.

    Returns:
        The directory to write: ``path``, or where it points if it is a symbolic link (the
        link stays; replacing the folder whole must not replace the link by a folder).

    Raises:
        ValueError: it is an existing file, a non-empty directory and ``overwrite`` is False,
            a directory holding other things than ``replaceable``, or no directory above it is
            writable.
    """
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file, not a directory: name a directory for the outputs")
    held = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if replaceable is not None and set(held) - set(replaceable):
        others = sorted(set(held) - set(replaceable))
        raise UserError(
            f"{path} holds {', '.join(others[:3])}{' ...' if len(others) > 3 else ''} besides "
            "results: write the results into a folder of their own"
        )
    if not overwrite and held:
        raise UserError(f"{path} already holds results: pass --overwrite to replace them")
    existing = _nearest_existing(path)
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write into {path}: {existing} is not a writable directory")
    return path


def check_disk_space(path: str | Path, needed: int, *, margin: float = 1.05) -> None:
    """Refuse, before writing anything, a file of ``needed`` bytes that would not fit.

    Raises:
        ValueError: the free space where ``path`` goes is below ``margin`` x ``needed``.
    """
    path = Path(path)
    existing = _nearest_existing(path.parent)
    if hasattr(os, "statvfs") and os.statvfs(existing).f_blocks == 0:
        # /proc, /sys: no disk behind them ("0 GB free" would send one looking for space)
        raise UserError(f"{path}: {existing} is a virtual filesystem, not a disk: write elsewhere")
    free = shutil.disk_usage(existing).free
    if needed * margin > free:
        raise UserError(
            f"{path} would need {needed / 1e9:.3g} GB but {existing} has {free / 1e9:.3g} GB "
            "free: ask for fewer jets or write elsewhere"
        )


def available_memory(device: Any = "cpu") -> int:
    """Bytes a new allocation can get on ``device``: a CUDA device's free memory, else the
    system's MemAvailable (free + reclaimable cache; Linux), else its free pages."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


#: Bytes per float32 parameter while training with Adam: the weights, their gradient, Adam's
#: two moments and the best weights kept for early stopping (activations come on top).
TRAINING_BYTES_PER_PARAMETER = 5 * 4


def check_model_memory(parameters: int, what: str, device: Any = "cpu") -> None:
    """Refuse, before allocating it, a model whose training cannot fit in memory.

    Raises:
        ValueError: ``parameters`` x `TRAINING_BYTES_PER_PARAMETER` exceeds what ``device``
            has available.
    """
    needed, free = parameters * TRAINING_BYTES_PER_PARAMETER, available_memory(device)
    if needed > free:
        raise UserError(
            f"the {what} would have {parameters:.3g} parameters, {needed / 1e9:.3g} GB to train, "
            f"but {free / 1e9:.3g} GB are available on {device}: make its sizes smaller"
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


@contextmanager
def folder_lock(directory: str | Path) -> Iterator[Path]:
    """Hold ``directory/.lock`` (the holder's pid, host and start time) while the block runs.

    A second holder is refused with one line (ValueError) naming the first. A lock whose
    process is gone (same host, pid not running) or that is unreadable (a holder killed while
    writing it) is stale: it is taken over. A lock from another host cannot be checked from
    here: it is refused, and the message says which file to remove if that run is over.
    """
    with _lock(Path(directory) / ".lock", f"{directory} is in use", "use another name") as path:
        yield path


@contextmanager
def output_claim(path: str | Path) -> Iterator[Path]:
    """Claim the output ``path`` for this process while the block writes it (``.<name>.lock``
    beside it, as `folder_lock`): two commands started together on one --out both exited 0,
    the later silently replacing the earlier."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # the output's folder: made for it anyway
    lock = path.parent / f".{path.name}.lock"
    with _lock(lock, f"{path} is being written", "choose another output") as held:
        yield held


@contextmanager
def _lock(path: Path, busy: str, other: str) -> Iterator[Path]:
    """Create ``path`` exclusively (pid, host, start time) for the block; see `folder_lock`."""
    import socket
    import time

    host = socket.gethostname()
    me = {"pid": os.getpid(), "host": host, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):  # a stale lock is removed, then taken; losing that race is refused
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            _check_stale_lock(path, host, busy, other)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:
        raise UserError(f"{busy} by another process: try again")
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _check_stale_lock(path: Path, host: str, busy: str, other: str) -> None:
    """Remove ``path`` if its holder is gone; raise ValueError if it may still run."""
    try:
        holder = json.loads(path.read_text())
        pid, where, since = int(holder["pid"]), str(holder["host"]), holder["started"]
    except (OSError, ValueError, KeyError, TypeError):
        path.unlink(missing_ok=True)  # unreadable: its writer died before finishing it
        return
    if where == host and not _alive(pid):
        path.unlink(missing_ok=True)
        return
    gone = f"; if that process is over, remove {path}" if where != host else ""
    raise UserError(
        f"{busy} by process {pid} on {where} since {since}: wait for it to finish, or {other}{gone}"
    )


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries of ``path`` (files or folders) left by writers that were killed
    (SIGKILL skips every cleanup): their pid, in the name, is no longer running."""
    for tmp in [*path.parent.glob(f".{path.name}.tmp-*"), *path.parent.glob(f".{path.name}.old-*")]:
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            _remove(tmp)


@contextmanager
def _beside(path: Path, *kinds: str) -> Iterator[list[Path]]:
    """Temporary names ``.NAME.<kind>-PID`` beside ``path``, removed at the end whatever
    happens (a killed writer's are removed here first); a full disk becomes a ValueError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    temporaries = [path.with_name(f".{path.name}.{kind}-{os.getpid()}") for kind in kinds]
    for tmp in temporaries:
        _remove(tmp)
    try:
        yield temporaries
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise UserError(f"cannot write {path}: no space left on device") from err
        raise
    except RuntimeError as err:  # h5py reports a failed write(2) or extend as RuntimeError
        reason = re.search(r"errno = \d+, error message = '([^']*)'", str(err))
        if reason:  # e.g. 'File too large' (a file size limit), 'Disk quota exceeded'
            raise UserError(f"cannot write {path}: {reason.group(1)}") from err
        raise
    finally:
        for tmp in temporaries:
            _remove(tmp)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary name beside ``path``; rename it onto ``path`` when the block succeeds.

    The temporary file is removed if the block raises (KeyboardInterrupt included), so readers see
    either the old file or the complete new one. A full disk becomes a one-line ValueError.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "x.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text()
        'done'
    """
    path = Path(path)
    with _beside(path, "tmp") as (tmp,):
        yield tmp
        interrupt.check()  # a stop request swallowed in the block never commits its output
        with open(tmp, "rb") as handle:  # flush to disk before the rename makes it visible
            os.fsync(handle.fileno())
        os.replace(tmp, path)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; when the block succeeds, it takes the place of
    ``path`` (any old folder there is removed after), so readers never see old and new files
    mixed. A failure (Ctrl-C included) removes the temporary folder and leaves ``path`` as it
    was; a SIGKILL leaves it too, and the next writer removes the killed one's temporaries.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "report"
        >>> with atomic_dir(target) as tmp:
        ...     _ = (tmp / "a.txt").write_text("new")
        >>> sorted(p.name for p in target.iterdir())
        ['a.txt']
    """
    path = Path(path)
    with _beside(path, "tmp", "old") as (tmp, old):
        tmp.mkdir()
        yield tmp
        interrupt.check()  # a stop request swallowed in the block never commits its output
        # two renames (a folder cannot replace a non-empty one in one): the window between them
        # is microseconds, against minutes of writing into the folder itself
        if path.exists():
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:  # interrupted between the renames: the old folder goes back
            if old.exists() and not path.exists():
                os.replace(old, path)
            raise


def stable_hash(data: Any) -> str:
    """A short hash of plain data (JSON-able), the same in any process and on any machine:
    the identity of a pipeline stage's config, of a Pythia chunk cache.

    Example:
        >>> stable_hash({"b": 1, "a": [2, 3]}) == stable_hash({"a": [2, 3], "b": 1})
        True
    """
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """The lines of a Markdown table (cells as given, formatted by the caller).

    Example:
        >>> markdown_table(["class", "W1M"], [["t", "0.95"]])
        ['| class | W1M |', '|---|---|', '| t | 0.95 |']
    """
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def strict_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None (JSON null), recursively.

    json.dumps writes NaN as a bare ``NaN`` token that strict JSON readers (jq, JavaScript,
    Go, ...) reject; where a number is undefined the files say why beside it.

    Example:
        >>> strict_json({"ratio": float("nan"), "values": [1.0, float("inf")]})
        {'ratio': None, 'values': [1.0, None]}
    """
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a report, a summary)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as strict, indented JSON (NaN and inf -> null), atomically."""
    return write_text(path, json.dumps(strict_json(data), indent=2, allow_nan=False))


def keyed_json(path: str | Path, key: str, compute: Callable[[], dict[str, Any]]) -> dict:
    """The JSON object at ``path`` if it was written for ``key``, else ``compute()`` written
    there with its key (a study's cell done once: its data and model hashed into ``key``).
    Returned as read back (NaN as null), the same either way."""
    path = Path(path)
    done = read_json(path) if path.is_file() else {}
    if done.get("key") != key:
        write_json(path, {"key": key, **compute()})
        done = read_json(path)
    return done


def parse_json(text: str, source: str | Path) -> Any:
    """``text`` as JSON; a ValueError that names ``source`` (a file, or where the text came
    from) and where the text breaks, instead of json's bare "Expecting value: line 1"."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(
            f"{source}: not valid JSON ({err.msg}, line {err.lineno} column {err.colno}); "
            "a damaged record: delete it and rerun to write it again"
        ) from None


def read_json(path: str | Path) -> Any:
    """The JSON file at ``path``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON (truncated, damaged, not text); the message names the file.
    """
    path = require_file(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file, so not the JSON record expected") from None
    return parse_json(text, path)


def require_file(path: str | Path, what: str = "file") -> Path:
    """``path`` if it is a regular file (links followed).

    Raises:
        FileNotFoundError: nothing there, or a link to nothing; "is a directory" where a
            directory stands in its place (it said "no such file").
    """
    path = Path(path)
    if path.is_dir():
        raise MissingFileError(f"{path}: is a directory, not a {what}")
    if not path.is_file():
        raise MissingFileError(f"{path}: no such {what}")
    return path
