"""Threads chosen on purpose: the flag, then the environment, then the idle cores."""

import pytest
import torch

from jetflows import threads
from jetflows.threads import ENV, choose_threads, cpu_times


@pytest.mark.parametrize(
    ("requested", "env", "idle", "cap", "want", "source"),
    [
        (3, {ENV: "2"}, 4.0, None, 3, "--threads"),
        (None, {ENV: "2", "OMP_NUM_THREADS": "1"}, 4.0, None, 2, ENV),
        (None, {"OMP_NUM_THREADS": "1"}, 4.0, None, 1, "OMP_NUM_THREADS"),
        (None, {}, 4.0, None, 4, "idle cores"),
        (None, {}, 1.1, None, 1, "idle cores"),  # one of two cores busy: one thread, not two
        (None, {}, 0.05, None, 1, "idle cores"),  # every core busy: still one
        (None, {}, 4.0, 1, 1, "idle cores"),  # small work
        (None, {ENV: " "}, 1.7, None, 2, "idle cores"),  # blank: not set
    ],
)
def test_choice_order(requested, env, idle, cap, want, source):
    choice = choose_threads(requested, cap=cap, usable=4, idle=idle, env=env)
    assert (choice.threads, choice.source) == (want, source)
    assert f"torch threads: {want}" in choice.describe() and ENV in choice.describe()


@pytest.mark.parametrize("env", [{ENV: "0"}, {ENV: "two"}, {"OMP_NUM_THREADS": "-1"}])
def test_bad_environment_names_the_variable(env):
    with pytest.raises(ValueError, match=next(iter(env))):
        choose_threads(None, usable=2, idle=2.0, env=env)


def test_idle_cores_from_proc_stat():
    stat = "cpu  10 0 10 80 0 0 0 0\ncpu0 5 0 5 40 0 0 0 0 0 0\ncpu1 100 0 0 0 0 0 0 0\nintr 1"
    assert cpu_times({0}, stat) == (40.0, 50.0)
    assert cpu_times({0, 1}, stat) == (40.0, 150.0)
    assert cpu_times({7}, stat) is None and cpu_times({0}, None) is None
    measured = threads.idle_cores(0.01)
    assert measured is None or 0.0 <= measured <= threads.usable_cores() + 1e-6


def test_cli_applies_and_reports_threads(capsys, tmp_path):
    from pipelines.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["data", "check", str(tmp_path), "--threads", "0"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.splitlines()) == 1 and "--threads" in err, err
    threads.apply_threads(choose_threads(1, usable=2))
    assert torch.get_num_threads() == 1 and threads.applied().source == "--threads"


def test_peak_memory_grows_with_what_the_process_holds():
    import numpy as np

    from jetflows.threads import peak_memory_gb

    before = peak_memory_gb()
    block = np.ones(300 * 2**20 // 8)  # 300 MB, touched
    assert block.sum() > 0 and peak_memory_gb() >= max(before, 0.3)
