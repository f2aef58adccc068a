import errno
import os
from pathlib import Path

import pytest

from pipelines.io import atomic_path, check_writable


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_old_file_on_interrupt(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("new but incomplete")
        raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_full_disk_is_one_clear_value_error(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(ValueError, match="no space left"), atomic_path(target) as tmp:
        tmp.write_text("x")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_check_writable(tmp_path):
    existing = tmp_path / "a.h5"
    existing.write_text("x")
    with pytest.raises(ValueError, match="already exists: pass --overwrite"):
        check_writable(existing)
    assert check_writable(existing, overwrite=True) == existing
    with pytest.raises(ValueError, match="not a writable directory"):
        check_writable(existing / "sub" / "b.h5")
    with pytest.raises(ValueError, match="is a directory"):
        check_writable(tmp_path, overwrite=True)
    assert check_writable(tmp_path / "new" / "dir" / "c.h5").name == "c.h5"


def test_temporaries_of_killed_writers_are_removed(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = tmp_path / f".x.txt.tmp-{dead.stdout.strip()}"
    stale.write_text("half")
    alive = tmp_path / f".x.txt.tmp-{os.getppid()}"  # a running process: left alone
    alive.write_text("busy")
    with atomic_path(tmp_path / "x.txt") as tmp:
        tmp.write_text("whole")
    assert not stale.exists() and alive.exists()
    assert (tmp_path / "x.txt").read_text() == "whole"


def test_a_json_record_that_cannot_be_read_is_named(tmp_path):
    from pipelines.io import read_json

    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        read_json(tmp_path / "missing.json")
    (tmp_path / "cut.json").write_text('{"flow": "ab')
    with pytest.raises(ValueError, match=r"cut\.json: not valid JSON \(.*line 1"):
        read_json(tmp_path / "cut.json")
    (tmp_path / "bytes.json").write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(ValueError, match=r"bytes\.json: not a text file"):
        read_json(tmp_path / "bytes.json")
    (tmp_path / "ok.json").write_text('{"a": [1, 2]}')
    assert read_json(tmp_path / "ok.json") == {"a": [1, 2]}


def test_folder_lock_refuses_a_second_holder_and_takes_over_dead_ones(tmp_path):
    import json
    import os
    import socket

    from pipelines.io import folder_lock

    with folder_lock(tmp_path) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(ValueError, match="in use by process"):
            with folder_lock(tmp_path):
                pass
    assert not lock.exists()  # released
    lock.write_text('{"pid": 1')  # unreadable: its writer died while writing it
    with folder_lock(tmp_path):
        pass
    elsewhere = {"pid": 1, "host": socket.gethostname() + "-other", "started": "then"}
    lock.write_text(json.dumps(elsewhere))  # another machine's: cannot be checked from here
    with pytest.raises(ValueError, match="if that process is over, remove"):
        with folder_lock(tmp_path):
            pass
    assert lock.exists()  # not ours to remove


def test_a_virtual_filesystem_is_named_as_such_not_as_full(tmp_path):
    """It said "/proc has 0 GB free" (issue 25 #35)."""
    from pipelines.io import check_disk_space

    if not Path("/proc/self").exists() or os.statvfs("/proc").f_blocks != 0:
        pytest.skip("no /proc pseudo-filesystem here")
    with pytest.raises(ValueError, match="/proc is a virtual filesystem, not a disk"):
        check_disk_space("/proc/jets.hdf5", 1000)
    check_disk_space(tmp_path / "jets.hdf5", 1000)  # a real disk with room passes
