"""Scaling out and surviving faults: the pipeline under torchrun (2 gloo processes), training
processes SIGKILLed at random points and resumed, a full disk during a checkpoint write."""

import contextlib
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipelines.cli import main
from pipelines.data.jetnet import read_jetnet_file, write_jetnet_file
from pipelines.run.checkpoints import load_checkpoint
from tests.conftest import TINY_MODELS, assert_one_line_error, random_jets

ROOT = Path(__file__).parents[2]
TINY = [
    *TINY_MODELS,
    "name=tiny",
    "data.source=jetnet",
    "data.split=[0.3, 0.1, 0.6]",
    "convae_train.epochs=2",
    "n_generate=200",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("jetnet_faults")
    write_jetnet_file(root / "g.hdf5", random_jets(400, seed=6))
    return root


def _argv(data_dir, runs, *more):
    args = [
        "pipeline",
        "--config",
        str(ROOT / "configs/quickstart.yaml"),
        "--classes",
        "g",
        "--runs",
        str(runs),
        "--set",
        f"data.data_dir={data_dir}",
        "--quiet",
    ]
    for item in [*TINY, *more]:
        args += ["--set", item]
    return args


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def test_pipeline_under_torchrun_with_two_gloo_processes_killed_and_resumed(tmp_path, data_dir):
    more = ["convae_train.epochs=40", "convae_train.patience=0"]
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "pipelines.cli",
        *_argv(data_dir, tmp_path, *more),
    ]
    directory = tmp_path / "tiny" / "g"
    # SIGKILL the launcher and both workers in the middle of the ConVAE's epochs
    _kill_during(argv, directory / "convae.last.pt", random.Random("torchrun"), module=False)
    done = subprocess.run(argv, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("convae.pt", "flow.pt", "metrics.json", "report.md", "generated.hdf5"):
        assert (directory / name).is_file(), name
    log = (tmp_path / "tiny" / "pipeline.log").read_text()
    assert "(2 process(es))" in log and "g: resuming convae after epoch" in log
    assert done.stdout.count("# Run tiny") == 1  # one process reports
    history = json.loads((directory / "history.json").read_text())
    assert [row["epoch"] for row in history["convae"]] == list(range(40))
    assert len(history["flow"]) == 2


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun's workers start sessions of their own, so killing
    the launcher's process group would orphan them, still training)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _kill_during(argv, marker: Path, rng: random.Random, module: bool = True) -> None:
    """Start the pipeline (``argv`` after ``python -m pipelines.cli``, or a whole command line
    when not ``module``), wait until it is training the stage that writes ``marker`` (its
    per-epoch checkpoint), then SIGKILL it and every process it started, at a random moment."""
    started = time.time()
    command = [sys.executable, "-m", "pipelines.cli", *argv] if module else argv
    proc = subprocess.Popen(
        command,
        env=_env(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120

    def written() -> bool:  # by this process (an older one may be what it resumed from)
        return marker.exists() and marker.stat().st_mtime > started

    while not written() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the stage finished before it could be killed"
    time.sleep(rng.uniform(0.0, 0.5))
    for pid in [proc.pid, *_descendants(proc.pid)]:  # like a machine that loses power
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("target", ["latent", "particles"])
def test_training_killed_at_random_points_resumes_intact(tmp_path, data_dir, target):
    """ConVAE and flow training (latent), jet + particle flows (particles): SIGKILL at random
    moments (seeded), then a run to the end; every checkpoint loads, epochs run 0..E-1 once."""
    rng = random.Random(f"faults-{target}")
    # long enough that a kill up to 0.5 s after a stage's first epoch, or after it resumed,
    # lands inside it (60 tiny flow epochs take ~0.25 s: the stage could end first)
    epochs = {"convae.pt": 300, "jet_flow.pt": 600, "flow.pt": 600}
    more = [
        "convae_train.epochs=300",
        "flow_train.epochs=600",
        f"target={target}",
        "convae_train.patience=0",
        "flow_train.patience=0",
    ]
    argv = _argv(data_dir, tmp_path, *more)
    directory = tmp_path / "tiny" / "g"
    names = ["convae.pt", "flow.pt"] if target == "latent" else ["jet_flow.pt", "flow.pt"]
    for name in names:  # kill each training stage twice, at random epochs
        for _ in range(2):
            _kill_during(argv, directory / name.replace(".pt", ".last.pt"), rng)
    assert main(argv) == 0
    log = (tmp_path / "tiny" / "pipeline.log").read_text()
    assert f"g: resuming {names[0][:-3]} after epoch" in log  # a killed stage continued
    for name in names:
        state = load_checkpoint(
            directory / name, "jetflows.flow" if "flow" in name else "jetflows.convae"
        )
        assert [row["epoch"] for row in state["history"]] == list(range(epochs[name]))  # once
        assert state["epoch"] == epochs[name]
    assert not list(directory.glob("*.last.pt")) and not list(directory.glob(".*tmp-*"))
    assert read_jetnet_file(directory / "generated.hdf5").particles.shape == (200, 30, 3)


def test_a_full_disk_during_a_checkpoint_is_one_line_and_no_file(
    tmp_path, data_dir, capsys, monkeypatch
):
    real_save = torch.save

    def full_disk(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)  # part of the bytes reached the disk ...
        raise OSError(errno.ENOSPC, "No space left on device")  # ... then the disk was full

    monkeypatch.setattr(torch, "save", full_disk)
    assert_one_line_error(capsys, _argv(data_dir, tmp_path), "no space left on device")
    directory = tmp_path / "tiny" / "g"
    assert not list(directory.glob("*.pt")) and not list(directory.glob(".*tmp-*"))
