"""Atomic file writes: a crash, Ctrl-C or a full disk never leaves a half-written file."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def check_writable(path: str | Path, *, overwrite: bool = False) -> Path:
    """Fail early, before any work, if ``path`` cannot be written.

    Raises:
        ValueError: the file exists and ``overwrite`` is False, or its directory is not writable.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ValueError(f"{path} already exists: pass --overwrite to replace it")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a file name")
    parent = next((p for p in [path.parent, *path.parent.parents] if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {path}: {parent} is not a writable directory")
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries of ``path`` left by writers that were killed (SIGKILL skips every
    cleanup): their pid, in the name, is no longer running."""
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


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
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb") as handle:  # flush to disk before the rename makes it visible
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise ValueError(f"cannot write {path}: no space left on device") from err
        raise
    finally:
        tmp.unlink(missing_ok=True)
