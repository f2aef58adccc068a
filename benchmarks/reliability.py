"""Issue 25's probes as a table: case, exit status, last stderr line, files written or changed.

Every case runs ``python -m pipelines.cli ...`` of the checkout under test (``--repo``, default
this one) in a fresh folder holding a copy of a tiny finished run (top jets, two-stage, trained
in seconds on random jets by that same checkout), so the same list can be run before and after
a change:

    git worktree add /tmp/before 89a5feb^       # the code before the issue's fixes
    python benchmarks/reliability.py --repo /tmp/before > before.md
    python benchmarks/reliability.py > after.md

The signal cases (SIGTERM/Ctrl-C during COV/MMD, a swallowed SIGTERM, tune interrupted, a
SIGKILLed generator's workers), the run lock, the study's n_jets, damaged Pythia cache chunks
and the PostgreSQL URL need processes racing or a database server: they are in the test suite
(tests/pipelines/test_cli.py, test_tune.py, test_pythia.py, test_pipeline.py, test_study.py),
not here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from common import machine_line

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "data.source=jetnet",
    "data.n_jets=400",
    "data.split=[0.4,0.1,0.5]",
    "convae.n_filter=4",
    "convae.dense_width=32",
    "convae.latent_dim=4",
    "convae_train.epochs=2",
    "flow.transforms=2",
    "flow.hidden_features=16",
    "flow_train.epochs=2",
    "evaluate.cov_mmd=false",
    "n_generate=100",
]


SAMPLE = "sample --run {R} --class t --n 100 --out {C}/x.hdf5"
RERUN = "pipeline --config {R}/config.yaml --classes t --quiet"
TUNE = "tune --config {C}/tune.yaml --root {C}/tune --quiet"


@dataclass(frozen=True)
class Case:
    """One probe: ``argv`` with {R} (the run), {C} (the case folder), {D} (its data folder)."""

    item: str
    what: str
    argv: str
    prepare: Callable[[Path], None] | None = None
    timeout: float = 120.0
    limit_file_size: int | None = None
    env: dict[str, str] | None = None


def _jets(n: int, seed: int, eta: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """JetNet-layout arrays of random pt-sorted jets: particle_features (n, 30, 4), jet (n, 4)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(5, 31, n)
    mask = np.arange(30)[None] < counts[:, None]
    pt = np.sort(rng.exponential(0.05, (n, 30)), 1)[:, ::-1] + 1e-3
    eta_phi = rng.normal(0, eta, (2, n, 30))
    pf = np.stack([*eta_phi, pt, mask], -1) * mask[..., None]
    jf = np.stack(
        [rng.uniform(900, 1100, n), rng.normal(0, 1, n), rng.uniform(10, 250, n), counts], -1
    )
    return pf.astype(np.float32), jf.astype(np.float32)


def _write(path: Path, n: int = 400, seed: int = 0, **attrs: object) -> Path:
    pf, jf = _jets(n, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["particle_features"], f["jet_features"] = pf, jf
        f.attrs.update(attrs)
    return path


def _edit(path: Path, edit: Callable[[h5py.File], None]) -> None:
    with h5py.File(path, "a") as f:
        edit(f)


def _flip_a_weight_byte(case: Path) -> None:
    flow = case / "runs/tiny/t/flow.pt"
    data = bytearray(flow.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the stored tensors
    flow.write_bytes(bytes(data))


def _cut(path: Path, keep: float) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])


def _copy(case: Path, name: str, new: str) -> Path:
    out = case / new
    shutil.copy(case / "D" / name, out)
    return out


def _empty(f: h5py.File) -> None:
    f["particle_features"][...] = 0.0
    f["jet_features"][:, 3] = 0.0


def _pickle_bomb(case: Path) -> None:
    import pickle

    class Bomb:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {case}/PWNED",))

    (case / "runs/tiny/t/flow.pt").write_bytes(pickle.dumps(Bomb()))


def _far_eta(case: Path) -> None:
    _edit(case / "D/gen.hdf5", lambda f: f["particle_features"].__setitem__((0, 0, 0), 1e30))


def _negative_pt(case: Path) -> None:
    _edit(case / "D/t.hdf5", lambda f: f["jet_features"].__setitem__((0, 0), -5.0))


def _soft_link(case: Path) -> None:
    with h5py.File(case / "D/soft.hdf5", "w") as f:
        f["particle_features"] = h5py.SoftLink("/nowhere")
        f["jet_features"] = np.zeros((5, 4), np.float32)


def _group(case: Path) -> None:
    with h5py.File(case / "D/group.hdf5", "w") as f:
        f.create_group("particle_features")
        f["jet_features"] = np.zeros((5, 4), np.float32)


CASES = [
    Case(
        "1",
        "sample over the run's test jets",
        "sample --run {R} --class t --n 100 --out {R}/t/real_test.hdf5 --overwrite",
    ),
    Case(
        "2",
        "rerun a name with other settings",
        RERUN + " --runs {C}/runs --set flow_train.epochs=3",
    ),
    Case(
        "2",
        "an empty config file",
        "pipeline --config {C}/empty.yaml --runs {C}/runs",
        lambda c: (c / "empty.yaml").write_text(""),
    ),
    Case("4", "data summary into a run folder", "data summary {D}/t.hdf5 --out {R}"),
    Case(
        "5",
        "data summary of two t.hdf5",
        "data summary {D}/t.hdf5 {D}/b/t.hdf5 --out {C}/s",
        lambda c: _write(c / "D/b/t.hdf5", seed=9),
    ),
    Case(
        "8",
        "a flipped byte inside flow.pt",
        SAMPLE,
        _flip_a_weight_byte,
    ),
    Case("9", "sample --pt 1e-30", SAMPLE + " --pt 1e-30"),
    Case(
        "9",
        "sample --eta 1e30",
        SAMPLE + " --pt 1000 --eta 1e30",
    ),
    Case(
        "11",
        "a crafted pickle as flow.pt",
        SAMPLE,
        _pickle_bomb,
    ),
    Case(
        "12",
        "tune --study ../../x",
        TUNE + " --study ../../x --trials 1",
        None,
    ),
    Case(
        "13",
        "a password in a URL query",
        TUNE + " --trials 1 --storage postgresql://localhost:1/db?password=hunter2",
        None,
    ),
    Case("14", "--set with invalid YAML", "pipeline --set flow.transforms=[ --runs {C}/runs"),
    Case(
        "14",
        "--set with a python tag",
        "pipeline --set name=!!python/object/apply:os.system --runs {C}/runs",
    ),
    Case(
        "15",
        "an int key beside an unknown key",
        "pipeline --config {C}/bad.yaml --runs {C}/runs",
        lambda c: (c / "bad.yaml").write_text("1: a\nzzz: b\n"),
    ),
    Case(
        "16",
        "a diverging learning rate",
        RERUN + " --runs {C}/fresh --set convae_train.lr=1e30 --set convae_train.clip_norm=null",
    ),
    Case(
        "17",
        "convae.latent_dim=100000000",
        RERUN + " --runs {C}/fresh --set convae.latent_dim=100000000",
    ),
    Case(
        "18",
        "sample --seed 99999999999999999999",
        SAMPLE + " --seed 99999999999999999999",
    ),
    Case("20", "a dangling soft link as particle_features", "data check {D}/soft.hdf5", _soft_link),
    Case(
        "23",
        "a file size limit while sampling",
        "sample --run {R} --class t --n 20000 --out {C}/x.hdf5 --quiet",
        limit_file_size=100_000,
    ),
    Case(
        "26",
        "data generate --n 10^12",
        "data generate --class t --n 1000000000000 --out {C}/x.hdf5",
        timeout=30,
    ),
    Case("27", "--seed -3", SAMPLE + " --seed -3"),
    Case(
        "28",
        "a truncated stages.json",
        RERUN + " --runs {C}/runs",
        lambda c: (c / "runs/tiny/t/stages.json").write_text("{"),
    ),
    Case(
        "29",
        "evaluate --n 5",
        "evaluate --real {D}/t.hdf5 --gen {D}/gen.hdf5 --out {C}/e --n 5 --no-fpnd --no-cov-mmd",
    ),
    Case(
        "30",
        "eta_rel 1e30 in a generated file",
        "evaluate --real {D}/t.hdf5 --gen {D}/gen.hdf5 --out {C}/e --no-fpnd --no-cov-mmd",
        _far_eta,
    ),
    Case(
        "31",
        "jet_class attribute 'zebra'",
        "evaluate --real {D}/t.hdf5 --gen {D}/zebra.hdf5 --out {C}/e --no-fpnd --no-cov-mmd",
        lambda c: _write(c / "D/zebra.hdf5", 200, 3, jet_class="zebra"),
    ),
    Case(
        "34",
        "t/flow.pt is a directory",
        SAMPLE,
        lambda c: ((c / "runs/tiny/t/flow.pt").unlink(), (c / "runs/tiny/t/flow.pt").mkdir()),
    ),
    Case(
        "39.7",
        "t/flow.pt a text file",
        SAMPLE,
        lambda c: (c / "runs/tiny/t/flow.pt").write_text("hello world\n"),
    ),
    Case(
        "39.8", "t/convae.pt cut to 40%", SAMPLE, lambda c: _cut(c / "runs/tiny/t/convae.pt", 0.4)
    ),
    Case(
        "39.15",
        "a run name of 200 characters",
        "pipeline --config {C}/long.yaml --runs {C}/runs",
        lambda c: (c / "long.yaml").write_text("name: " + "x" * 200 + "\n"),
    ),
    Case("39.16", "sample --guidance -1", SAMPLE + " --guidance -1"),
    Case("39.10", "sample --seed 2**64", SAMPLE + " --seed 18446744073709551616"),
    Case(
        "39.12",
        "evaluate real jets that are all empty",
        "evaluate --real {C}/empty.hdf5 --gen {D}/t.hdf5 --out {C}/ev",
        lambda c: _edit(_copy(c, "t.hdf5", "empty.hdf5"), _empty),
    ),
    Case("39.11", "WORLD_SIZE=2 without RANK", RERUN, env={"WORLD_SIZE": "2"}),
    Case("39.11", "WORLD_SIZE=abc", RERUN, env={"WORLD_SIZE": "abc"}),
    Case("35", "data check a directory", "data check {D}"),
    Case("35", "particle_features an HDF5 group", "data check {D}/group.hdf5", _group),
    Case("35", "sample into /proc", "sample --run {R} --class t --n 100 --out /proc/x.hdf5"),
    Case("38", "a negative jet pt in a JetNet file", "data check {D}/t.hdf5", _negative_pt),
    Case(
        "39",
        "pipeline --classes ,",
        "pipeline --config {R}/config.yaml --classes , --runs {C}/runs",
    ),
]


def _tune_yaml(case: Path, data: Path) -> None:
    import yaml

    overrides = [*TINY, f"data.data_dir={data}", "convae_train.epochs=1"]
    config = {
        "study": "tiny",
        "base": str(ROOT / "configs/quickstart.yaml"),
        "overrides": overrides,
        "jet_class": "t",
        "space": {"convae_train.lr": {"low": 1e-3, "high": 1e-2, "log": True}},
    }
    (case / "tune.yaml").write_text(yaml.safe_dump(config))


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


def _changes(before: dict, after: dict) -> str:
    new = sorted(set(after) - set(before))
    changed = sorted(k for k in set(after) & set(before) if after[k] != before[k])
    gone = sorted(set(before) - set(after))
    parts = [
        f"{label}: {', '.join(v[:3])}{' ...' if len(v) > 3 else ''}"
        for label, v in (("new", new), ("changed", changed), ("gone", gone))
        if v
    ]
    return "; ".join(parts) or "none"


def run_case(case: Case, repo: Path, work: Path, run: Path, data: Path, k: int) -> list[str]:
    folder = work / f"case{k:02d}"
    shutil.copytree(run.parent, folder / "runs")
    shutil.copytree(data, folder / "D")
    _tune_yaml(folder, folder / "D")
    if case.prepare:
        case.prepare(folder)
    before = _snapshot(folder)
    argv = case.argv.format(R=folder / "runs/tiny", C=folder, D=folder / "D").split()
    limit = case.limit_file_size

    def preexec() -> None:
        if limit:
            import resource

            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", **(case.env or {})}
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", *argv],
            cwd=repo,
            env=env,
            text=True,
            capture_output=True,
            timeout=case.timeout,
            preexec_fn=preexec,
        )
        code, err = str(done.returncode), done.stderr
    except subprocess.TimeoutExpired as timed_out:
        code, err = f"timeout {case.timeout:.0f} s", str(timed_out.stderr or "")
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("#")]
    last = (lines[-1] if lines else "").replace(str(folder), "C").replace("|", "/")[:120]
    traceback = " (traceback)" if "Traceback" in err else ""
    left = _changes(before, _snapshot(folder)).replace(str(folder), "C")
    seconds = time.perf_counter() - start
    return [case.item, case.what, code + traceback, f"`{last}`", left, f"{seconds:.0f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=ROOT, help="the checkout to probe")
    parser.add_argument("--only", default=None, help="comma-separated items, e.g. 1,2,23")
    args = parser.parse_args()
    repo = args.repo.resolve()
    print(machine_line(), f"| checkout: {repo}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="jetflows_reliability_"))
    try:
        data = work / "data"
        _write(data / "t.hdf5", 400, 0)
        _write(data / "gen.hdf5", 200, 1)
        sets = [a for s in [*TINY, f"data.data_dir={data}"] for a in ("--set", s)]
        argv = ["pipeline", "--config", "configs/quickstart.yaml", "--classes", "t"]
        argv += ["--runs", str(work / "runs"), "--quiet", "--set", "name=tiny", *sets]
        env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
        subprocess.run(
            [sys.executable, "-m", "pipelines.cli", *argv],
            cwd=repo,
            env=env,
            check=True,
            capture_output=True,
        )
        run = work / "runs/tiny"
        header = ["item", "case", "exit", "last stderr line", "files written or changed", "s"]
        print("| " + " | ".join(header) + " |\n" + "|---" * len(header) + "|", flush=True)
        only = set(args.only.split(",")) if args.only else None
        for k, case in enumerate(CASES):
            if only is None or case.item in only:
                row = run_case(case, repo, work, run, data, k)
                print("| " + " | ".join(row) + " |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
