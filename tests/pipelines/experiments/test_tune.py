"""Optuna tuning: shared SQLite studies across processes, retry of a killed worker's trial,
pruning, multi-objective Pareto fronts, and bad input."""

import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc
import yaml

from pipelines.data.jetnet import write_jetnet_file
from pipelines.experiments.tune import (
    TuneConfig,
    load_tune_config,
    open_storage,
    tune,
    with_installed_driver,
)
from pipelines.run.config import load_config
from tests.conftest import TINY_MODELS, assert_one_line_error, random_jets

ROOT = Path(__file__).parents[3]
TINY = [*TINY_MODELS, "data.source=jetnet", "data.split=[0.3, 0.2, 0.5]", "convae_train.epochs=3"]
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("jetnet_tune")
    write_jetnet_file(root / "g.hdf5", random_jets(400, seed=4))
    return root


def _write(tmp_path, data_dir, **changes):
    cfg = {
        "study": "tiny",
        "base": str(ROOT / "configs/quickstart.yaml"),
        "overrides": [*TINY, f"data.data_dir={data_dir}", *changes.pop("more", [])],
        "jet_class": "g",
        "objective": "emd_sum",
        "pruner": "median",
        "heartbeat": 1,
        "space": {
            "convae_train.lr": {"low": 1e-3, "high": 1e-2, "log": True},
            "convae.activation": {"choices": ["relu", "gelu"]},
        },
    }
    cfg.update(changes)
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _worker(config, root, trials, **env_vars):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **env_vars}
    argv = [
        sys.executable,
        "-m",
        "pipelines.cli",
        "tune",
        "--config",
        str(config),
        "--trials",
        str(trials),
        "--root",
        str(root),
        "--quiet",
    ]
    return subprocess.Popen(
        argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _study(root, name="tiny", must_exist=False):
    path = root / f"{name}.db"
    if must_exist and not path.exists():
        raise KeyError(name)
    return _load(name, f"sqlite:///{path}")


def _load(name, url):
    # the storage can exist before the worker has made its tables: open_storage waits out that
    # race as a second worker would (a bare load_study failed CI with "table already exists")
    return optuna.load_study(study_name=name, storage=open_storage(url, TuneConfig(), Path()))


def _wait_for_a_running_trial(load_study, timeout=120):
    """The first RUNNING trial once it has its parameters (a trial is RUNNING before its
    suggest calls); ``load_study()`` may raise KeyError while the study does not exist yet."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.2)
        try:
            running = load_study().get_trials(states=(optuna.trial.TrialState.RUNNING,))
        except KeyError:
            continue
        if running and running[0].params:
            return running[0]
    pytest.fail("the worker never started a trial")


def test_two_workers_share_one_sqlite_study(tmp_path, data_dir):
    config, root = _write(tmp_path, data_dir), tmp_path / "tune"
    workers = [_worker(config, root, 4) for _ in range(2)]
    for w in workers:
        assert w.wait(timeout=600) == 0, w.stderr.read()
    trials = _study(root).get_trials()
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == 4  # the study's total, exactly: not 4 per worker, not 5
    ran = [t for t in trials if not t.user_attrs.get("surplus")]
    assert len({t.user_attrs["worker"] for t in ran}) == 2  # both processes took trials
    # each worker explores its own points (one seed gave both workers the same stream)
    params = [tuple(sorted(t.params.items())) for t in ran]
    assert len(set(params)) == len(params), params
    results = json.loads((root / "tiny" / "results.json").read_text())
    assert {r["number"] for r in results["trials"]} == {t.number for t in ran}
    # a worker returns when the study is complete: the results are the whole study's, and
    # best.yaml names a complete trial and holds its params
    best = load_config(root / "tiny" / "best.yaml")
    assert best.name.startswith("tiny_trial")  # its own run, not the base's
    named = trials[int(best.name.removeprefix("tiny_trial"))]
    assert named.state == optuna.trial.TrialState.COMPLETE
    assert best.convae_train.lr == named.params["convae_train.lr"]


def test_one_worker_repeats_its_study_and_trials_is_the_study_total(tmp_path, data_dir):
    config = _write(tmp_path, data_dir)
    for root in (tmp_path / "a", tmp_path / "b"):
        tune(config, trials=3, root=root, progress=False)
    a, b = (_study(tmp_path / r).get_trials() for r in "ab")
    assert [t.params for t in a] == [t.params for t in b]  # one worker: reproducible
    assert len({tuple(sorted(t.params.items())) for t in a}) == 3
    tune(config, trials=2, root=tmp_path / "a", progress=False)  # 3 done: nothing to run
    tune(config, trials=3, root=tmp_path / "a", progress=False)
    assert len(_study(tmp_path / "a").get_trials()) == 3
    tune(config, trials=4, root=tmp_path / "a", progress=False)  # one more, to 4
    assert len(_study(tmp_path / "a").get_trials(states=FINISHED)) == 4


def test_a_killed_workers_trial_is_retried_not_lost(tmp_path, data_dir):
    # the victim's trial would run for hours: it is surely mid-trial when killed
    config = _write(
        tmp_path, data_dir, more=["convae_train.epochs=1000000", "convae_train.patience=0"]
    )
    root = tmp_path / "tune"
    victim = _worker(config, root, 1)
    running = [_wait_for_a_running_trial(lambda: _study(root, must_exist=True))]
    time.sleep(0.5)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    time.sleep(2.5)  # past the grace period (2 x heartbeat): the trial is now stale
    quick = _write(tmp_path, data_dir)  # same study, short trials
    tune(quick, trials=1, root=root, progress=False)
    trials = _study(root).get_trials()
    killed = running[0].number
    assert trials[killed].state == optuna.trial.TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert retried and retried[0].state in FINISHED
    # the killed trial's params as stored when it died: the snapshot taken when it started
    # running can predate its last suggestion (CI once saw one param of two)
    assert retried[0].params == trials[killed].params
    assert running[0].params.items() <= trials[killed].params.items()


def test_a_terminated_workers_trial_is_queued_again_without_a_traceback(tmp_path, data_dir):
    """SIGTERM mid-trial: Optuna printed its traceback before our line, and marked the trial
    FAIL never to run again (a SIGKILLed one is retried) (issue 25 #24). Now: exit 143, one
    line, and the same parameters queued for the next worker."""
    config = _write(
        tmp_path, data_dir, more=["convae_train.epochs=1000000", "convae_train.patience=0"]
    )
    root = tmp_path / "tune"
    victim = _worker(config, root, 1)
    running = _wait_for_a_running_trial(lambda: _study(root, must_exist=True))
    time.sleep(0.5)
    victim.send_signal(signal.SIGTERM)
    _, err = victim.communicate(timeout=60)
    assert victim.returncode == 143, err[-800:]
    assert "Traceback" not in err and "failed with" not in err, err[-800:]
    trials = _study(root).get_trials()
    assert trials[running.number].state == optuna.trial.TrialState.FAIL
    queued = [t for t in trials if t.system_attrs.get("failed_trial") == running.number]
    assert queued and queued[0].state == optuna.trial.TrialState.WAITING
    assert queued[0].params == running.params


def test_a_postgresql_url_gets_the_installed_driver():
    assert with_installed_driver("postgresql://u:p@h/db").startswith("postgresql+psycopg")
    assert with_installed_driver("postgres://h/db").startswith("postgresql+psycopg")
    for unchanged in ("sqlite:///x.db", "postgresql+psycopg2://h/db", "mysql://h/db"):
        assert with_installed_driver(unchanged) == unchanged


def test_a_bad_trial_is_pruned(tmp_path, data_dir):
    root = tmp_path / "tune"
    root.mkdir()
    study = optuna.create_study(study_name="tiny", storage=f"sqlite:///{root}/tiny.db")
    good = {"convae_train.lr": 1e-2, "convae.activation": "relu"}
    for params in (good, good, {"convae_train.lr": 1e-3, "convae.activation": "relu"}):
        study.enqueue_trial(params)
    space = {
        "convae_train.lr": {"low": 1e-9, "high": 1e-2, "log": True},
        "convae.activation": {"choices": ["relu", "gelu"]},
    }
    config = _write(tmp_path, data_dir, more=["convae_train.epochs=4"], space=space)
    study.enqueue_trial({"convae_train.lr": 1e-9, "convae.activation": "relu"})  # learns nothing
    tune(config, trials=4, root=root, progress=False)
    trials = _study(root).get_trials()
    bad = next(t for t in trials if t.params["convae_train.lr"] == 1e-9)
    assert bad.state == optuna.trial.TrialState.PRUNED
    assert len(bad.intermediate_values) < 4 + 2  # stopped before the end (ConVAE + flow steps)


def test_multi_objective_returns_a_pareto_front(tmp_path, data_dir):
    config = _write(tmp_path, data_dir, objective="mass_vs_rest")
    out = tune(config, trials=3, root=tmp_path / "tune", progress=False)
    results = json.loads((out / "results.json").read_text())
    complete = [r for r in results["trials"] if r["state"] == "COMPLETE"]
    front = [r for r in complete if r["number"] in results["best"]]
    assert front and all(len(r["values"]) == 2 for r in complete)
    for r in front:  # nobody on the front is dominated by another complete trial
        assert not any(
            all(a <= b for a, b in zip(o["values"], r["values"], strict=True))
            and o["values"] != r["values"]
            for o in complete
        )
        assert load_config(out / "pareto" / f"{r['number']}.yaml").convae.n_filter == 4


@pytest.mark.parametrize(
    ("changes", "argv", "match"),
    [
        ({}, ["--storage", "postgresql://user:hunter2@localhost:1/db"], "cannot open the storage"),
        ({}, ["--storage", "postgresql://localhost:1/db?password=hunter2"], "db?password=***'"),
        (
            {},
            ["--storage", "postgresql://me:hunter2@localhost:1/db?sslpassword=hunter2x&a=b"],
            "me:***@localhost:1/db?sslpassword=***&a=b",
        ),
        ({}, ["--storage", "sqlite:////nonexistent/dir/x.db"], "cannot open the storage"),
        ({}, ["--storage-env", "JETFLOWS_TEST_UNSET_URL"], "JETFLOWS_TEST_UNSET_URL"),
        ({"space": {"convae.filterz": {"low": 1, "high": 2}}}, [], "unknown config key"),
        ({"objective": "fastest"}, [], "unknown objective"),
        ({"space": {"loss.alpha": {"low": 2, "high": 1}}}, [], "low <= high"),
        ({}, ["--trials", "0"], "--trials must be >= 1"),
        ({}, ["--study", "../escaped"], "--study '../escaped' must be a plain folder name"),
        ({"study": "../escaped"}, [], "study '../escaped' must be a plain folder name"),
        ({"space": {"flow.transforms": {"choices": []}}}, [], "choices must name at least one"),
        ({"jet_class": "zebra"}, [], "unknown jet class 'zebra'"),
        (
            {},
            ["--storage", "sqlite:///x.db", "--storage-env", "JETFLOWS_TEST_URL"],
            "--storage or --storage-env, not both",
        ),
    ],
)
def test_bad_tuning_input_is_one_line_and_exit_2(tmp_path, data_dir, capsys, changes, argv, match):
    config = _write(tmp_path, data_dir, **changes)
    args = ["tune", "--config", str(config), "--trials", "1", "--root", str(tmp_path / "t")]
    err = assert_one_line_error(capsys, [*args, *argv, "--quiet"], match)
    assert "hunter2" not in err
    assert not list(tmp_path.glob("escaped*"))  # nothing written outside --root
    assert not list(tmp_path.glob("t/*.db"))  # nor a study database for a refused config


def test_a_trial_started_after_the_total_is_taken_never_runs(tmp_path, data_dir):
    from pipelines.experiments.tune import TrialObjective, load_tune_config, write_results

    cfg, base = load_tune_config(_write(tmp_path, data_dir))
    study = optuna.create_study()
    for value in (1.0, 2.0):  # two workers' trials already hold the study's total of 2
        study.add_trial(
            optuna.trial.create_trial(
                params={"convae_train.lr": 1e-3},
                distributions={"convae_train.lr": optuna.distributions.FloatDistribution(1e-4, 1)},
                value=value,
            )
        )
    objective = TrialObjective(cfg, base, data=None, limit=2)  # would fail if it trained
    study.optimize(objective, n_trials=1, catch=(Exception,))
    late = study.get_trials()[-1]
    assert late.state == optuna.trial.TrialState.FAIL and late.user_attrs["surplus"]
    write_results(study, cfg, base, tmp_path / "out")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["number"] for r in results["trials"]] == [0, 1]


def _postgres_binaries():
    found = shutil.which("initdb")
    candidates = [Path(found).parent] if found else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    return next((d for d in candidates if (d / "initdb").is_file()), None)


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server on 127.0.0.1 (Debian's postgresql package; .ci/run installs
    it), with a password login; yields (SQLAlchemy URL, password) and stops it after."""
    pytest.importorskip("psycopg2", reason="psycopg2 missing (pip install psycopg2-binary)")
    binaries = _postgres_binaries()
    if binaries is None:
        pytest.skip("no PostgreSQL server binaries (Debian: apt-get install postgresql)")
    # not under pytest's tmp_path: its parents are private to this user, and as root the
    # server must run as another user (postgres refuses to run as root)
    root = Path(tempfile.mkdtemp(prefix="jetflows-pg-"))
    as_user = []
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    password = secrets.token_hex(12)
    (root / "pw").write_text(password)
    if as_user:
        shutil.chown(root / "pw", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data, pg_ctl = root / "data", str(binaries / "pg_ctl")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    commands = [
        [str(binaries / "initdb"), "-D", str(data), "-U", "jetflows", f"--pwfile={root / 'pw'}"],
        [pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-o", options, "start"],
    ]
    for command in commands:
        done = subprocess.run([*as_user, *command], capture_output=True, text=True)
        if done.returncode:
            shutil.rmtree(root, ignore_errors=True)
            pytest.skip(f"cannot start PostgreSQL here: {(done.stderr or done.stdout).strip()}")
    # initdb's default authentication for TCP is trust: demand the password, as a real server
    with open(data / "pg_hba.conf", "w") as hba:
        hba.write("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "reload"], check=True, capture_output=True)
    # the README's form: SQLAlchemy 2.1 reads it as psycopg 3, which is not installed (#37)
    yield f"postgresql://jetflows:{password}@127.0.0.1:{port}/postgres", password
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], check=False)
    shutil.rmtree(root, ignore_errors=True)


def test_two_workers_on_a_postgresql_study_lose_no_trial_to_a_kill(tmp_path, data_dir, postgres):
    url, password = postgres
    storage = {"JETFLOWS_TEST_PG": url}  # the workers take the README's URL as it is
    direct = with_installed_driver(url)  # optuna itself needs the driver named
    (tmp_path / "slow").mkdir(), (tmp_path / "quick").mkdir()
    # the victim's trials would run for hours: it is surely mid-trial when killed
    slow = _write(
        tmp_path / "slow",
        data_dir,
        storage_env="JETFLOWS_TEST_PG",
        more=["convae_train.epochs=1000000", "convae_train.patience=0"],
    )
    quick = _write(tmp_path / "quick", data_dir, storage_env="JETFLOWS_TEST_PG")
    with pytest.raises(ValueError, match="cannot open the storage"):  # the password is needed
        open_storage(url.replace(password, "wrong"), load_tune_config(quick)[0], tmp_path)
    root = tmp_path / "tune"
    victim = _worker(slow, root, 3, **storage)
    killed = _wait_for_a_running_trial(lambda: _load("tiny", direct))
    survivor = _worker(quick, root, 3, **storage)
    time.sleep(1.0)
    victim.send_signal(signal.SIGKILL)
    printed = [*victim.communicate(timeout=60), *survivor.communicate(timeout=600)]
    assert survivor.returncode == 0, printed[3]
    trials = optuna.load_study(study_name="tiny", storage=direct).get_trials()
    assert len([t for t in trials if t.state in FINISHED]) == 3  # --trials, exactly
    assert trials[killed.number].state == optuna.trial.TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and retried[0].state in FINISHED
    assert retried[0].params == killed.params
    # every trial is accounted for: finished, the killed one (retried), or a surplus one
    for t in trials:
        assert t.state in FINISHED or t.number == killed.number or t.user_attrs.get("surplus"), t
    results = json.loads((root / "tiny" / "results.json").read_text())
    assert {r["number"] for r in results["trials"]} >= {
        t.number for t in trials if t.state in FINISHED
    }
    # the password is in no output and no file
    assert all(password not in text for text in printed)
    assert all(password.encode() not in p.read_bytes() for p in root.rglob("*") if p.is_file())


def test_a_worker_with_nothing_to_start_waits_for_the_others(tmp_path, data_dir):
    import threading

    from pipelines.experiments.tune import TrialObjective, _run_worker, load_tune_config

    cfg, base = load_tune_config(_write(tmp_path, data_dir))
    study = optuna.create_study()
    other = study.ask()  # another worker's trial, running: the study's --trials 1 is taken
    objective = TrialObjective(cfg, base, data=None, limit=1)  # would fail if it trained
    worker = threading.Thread(target=_run_worker, args=(study, objective, 1, 0.05, False))
    worker.start()
    time.sleep(0.5)
    assert worker.is_alive()  # not returned while the study is incomplete
    study.tell(other, 1.0)
    worker.join(10)
    assert not worker.is_alive() and len(study.trials) == 1  # it started nothing itself


def test_a_set_flow_study_searches_its_generators_default_space(tmp_path, data_dir):
    """No space in the tuning config: the target's registered one (width, depth, steps,
    solver for the set flow)."""
    from pipelines.run.generators import GENERATORS

    more = ["target=cloud", "particle.jet_flow.transforms=2", "flow_train.epochs=1"]
    config = _write(tmp_path, data_dir, space={}, more=more)
    cfg, _ = load_tune_config(config)
    assert set(cfg.space) == set(GENERATORS["cloud"].space)
    tune(config, trials=2, root=tmp_path / "tune", progress=False)
    trials = _study(tmp_path / "tune").get_trials(states=FINISHED)
    assert len(trials) == 2 and all(set(t.params) == set(cfg.space) for t in trials)
    assert all(t.value is not None and t.value > 0 for t in trials)


def test_the_tuned_class_s_own_settings_are_its_base_and_a_trial_value_wins(tmp_path, data_dir):
    """A base's per_class entry for the tuned class is part of every trial (flow.bins 4), a
    trial's value beats it (convae_train.lr), and another class's entry plays no part; the
    best config sets the value for every class and inside the tuned class's entry, while
    another class's own entry still wins for it."""
    from pipelines.experiments.tune import best_config, trial_config

    sets = "per_class={gluon: {flow.bins: 4, convae_train.lr: 0.5}, t: {convae_train.lr: 0.1}}"
    _, base = load_tune_config(_write(tmp_path, data_dir, more=[sets]))
    trial = trial_config(base, "g", {"convae_train.lr": 0.002})
    assert (trial.flow.bins, trial.convae_train.lr, trial.per_class) == (4, 0.002, {})
    best = best_config(base, "g", {"convae_train.lr": 0.002})
    assert best.for_class("g").convae_train.lr == 0.002 and best.for_class("g").flow.bins == 4
    assert best.for_class("q").convae_train.lr == 0.002  # no entry: the tuned value
    assert best.for_class("t").convae_train.lr == 0.1  # its own entry


def test_a_bug_while_opening_a_storage_is_not_called_the_users(monkeypatch, tmp_path):
    """Issue 39 (errors): every exception from the storage constructor became "cannot open the
    storage" (exit 2), a bug in our code included."""
    from pipelines.experiments import tune as tune_module

    cfg = TuneConfig()

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(tune_module.optuna.storages, "RDBStorage", broken)
    with pytest.raises(KeyError, match="a bug"):
        tune_module.open_storage(None, cfg, tmp_path / "s.db")

    def refused(*args, **kwargs):
        raise sqlalchemy.exc.OperationalError("connect", {}, Exception("no server"))

    monkeypatch.setattr(tune_module.optuna.storages, "RDBStorage", refused)
    with pytest.raises(ValueError, match="cannot open the storage"):
        tune_module.open_storage(None, cfg, tmp_path / "s.db")
