"""The command line: every user mistake -> one line on stderr, exit status 2, no output file."""

import errno
import tempfile

import numpy as np
import pytest

from jetflows.errors import MissingFileError, UserError
from pipelines import cli
from pipelines.cli import main
from pipelines.data import production, pythia
from pipelines.data.jetnet import read_jetnet_file, write_jetnet_file
from tests.conftest import assert_one_line_error, random_jets


def _run(capsys, command):
    """Run ``jetflows COMMAND`` (a string, split on spaces) in-process: (status, stdout, stderr)."""
    code = main(command.split())
    out, err = capsys.readouterr()
    return code, out, err


def _fail(capsys, command, match):
    with pytest.raises(SystemExit) as exc:  # argparse errors exit from the parser
        main(command.split())
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and match in err, err


def _error(capsys, command, match):
    return assert_one_line_error(capsys, command.split(), match)


@pytest.fixture
def fake_pythia(monkeypatch):
    """Replace Pythia by a cheap deterministic chunk so CLI plumbing tests take milliseconds."""

    def chunk(cfg, index):
        jets = random_jets(cfg.chunk_size, 150, seed=index)
        return {"particles": jets.particles, "jet_features": jets.jet_features}

    monkeypatch.setattr(production, "generate_chunk", chunk)


def test_sample_offers_every_set_flow_sampling_option():
    from flows.setflow import SAMPLING_FIELDS
    from pipelines.run.generators import TEACHER

    assert set(cli.SAMPLE_OPTIONS) == {*SAMPLING_FIELDS, TEACHER}
    args = cli.build_parser().parse_args(["sample", "--n", "1", "--class", "t"])
    assert all(getattr(args, k) is None for k in cli.SAMPLE_OPTIONS)  # default: the model's


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "data" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["data", "generate", "--help"])
    assert "--particles" in capsys.readouterr().out


def test_generate_real_pythia_end_to_end(tmp_path, capsys):
    out, cache = tmp_path / "w.hdf5", tmp_path / "cache"
    command = f"data generate --class W --n 3 --out {out} --chunk-size 3 --cache {cache}"
    code, stdout, _ = _run(capsys, command + " --jobs 1")
    assert code == 0 and "wrote" in stdout
    jets = read_jetnet_file(out)
    assert jets.particles.shape == (3, 30, 3) and (jets.labels == 3).all()
    code, stdout, _ = _run(capsys, command.replace("W", "w"))
    assert code == 0 and "up to date" in stdout


def test_generate_default_output_name(tmp_path, capsys, monkeypatch, fake_pythia):
    monkeypatch.chdir(tmp_path)
    code, _, _ = _run(capsys, "data generate --class top --n 5 --particles 150 --jobs 1 --cache c")
    assert code == 0
    assert read_jetnet_file(tmp_path / "data" / "t150.hdf5").particles.shape == (5, 150, 3)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ("--class higgs --n 5", "gluon, quark, top, W, Z"),
        ("--class t --n 0", "--n must be >= 1"),
        ("--class t --n -3", "--n must be >= 1"),
        ("--class t --n 5 --particles 0", "particles must be in 1..150"),
        ("--class t --n 5 --particles 151", "particles must be in 1..150"),
        ("--class t --n 5 --recipe delphes", "unknown recipe 'delphes'"),
        # it hung without a word (issue 25 #26): refused at once, with the sizes
        ("--class t --n 1000000000000", "GB of memory"),
    ],
)
def test_generate_bad_arguments(tmp_path, capsys, args, match):
    out = tmp_path / "x.hdf5"
    _error(capsys, f"data generate {args} --out {out}", match=match)
    assert not out.exists()


def test_generate_help_names_every_recipe(capsys):
    from pipelines.data.pythia import RECIPES

    with pytest.raises(SystemExit):
        main(["data", "generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in RECIPES)


def test_generate_usage_errors_are_one_line(capsys):
    _fail(capsys, "data generate --class t --n many", match="invalid int")
    _fail(capsys, "data generate --class t", match="--n")
    _fail(capsys, "data generate --class t --n 2 --jobs 0", match=">= 1")
    _fail(capsys, "frobnicate", match="invalid choice")


@pytest.mark.parametrize("seed", ["-3", "99999999999999999999", "x"])
@pytest.mark.parametrize("command", ["data generate --class t --n 2", "sample --n 2", "evaluate"])
def test_a_bad_seed_names_the_option(capsys, command, seed):
    """--seed outside 0..2**63-1 is refused by the parser, naming the option (it was
    "expected non-negative integer" from numpy, or an h5py TypeError after sampling)."""
    _fail(capsys, f"{command} --seed {seed}", match="argument --seed: must be")


def test_check_names_the_recipe_and_phi_unit(tmp_path, capsys, fake_pythia):
    out = tmp_path / "t.hdf5"
    cache = tmp_path / "c"
    code, _, _ = _run(capsys, f"data generate --class t --n 2 --out {out} --jobs 1 --cache {cache}")
    assert code == 0
    code, stdout, _ = _run(capsys, f"data check {out}")  # the default: radians
    assert code == 0 and "recipe: particle" in stdout and "phi_rel: radians" in stdout
    matched = tmp_path / "m.hdf5"
    generate = f"data generate --class t --n 2 --out {matched} --cache {cache}"
    _run(capsys, f"{generate} --recipe fpnd-matched")
    code, stdout, _ = _run(capsys, f"data check {matched}")
    assert (
        code == 0 and "recipe: fpnd-matched: as particle, but phi_rel stored compressed" in stdout
    )
    assert "phi_rel: delta phi / pi (compressed, not radians)" in stdout
    # the former name of the compressed recipe (the default before) is told its new one
    _error(capsys, f"{generate} --recipe jetnet", match="'jetnet' is now called 'fpnd-matched'")


def test_existing_output_needs_overwrite(tmp_path, capsys, fake_pythia):
    out = tmp_path / "t.hdf5"
    out.write_text("precious")
    command = f"data generate --class t --n 2 --out {out} --jobs 1 --cache {tmp_path}"
    _error(capsys, command, match="pass --overwrite")
    assert out.read_text() == "precious"
    code, _, _ = _run(capsys, command + " --overwrite")
    assert code == 0 and read_jetnet_file(out).particles.shape == (2, 30, 3)


def test_unwritable_output_fails_before_generating(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(production, "generate_chunk", lambda *a: pytest.fail("generated"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _error(
        capsys,
        f"data generate --class t --n 2 --out {blocker}/t.hdf5",
        match="not a writable directory",
    )


def test_interrupt_gives_status_130_and_no_file(tmp_path, capsys, monkeypatch):
    def interrupted(cfg, index):
        raise KeyboardInterrupt

    monkeypatch.setattr(production, "generate_chunk", interrupted)
    out = tmp_path / "t.hdf5"
    code, _, err = _run(
        capsys, f"data generate --class t --n 2 --out {out} --jobs 1 --cache {tmp_path}"
    )
    assert code == 130 and "interrupted" in err and not out.exists()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the point
def test_a_swallowed_sigterm_still_ends_the_command_as_terminated(tmp_path, capsys, monkeypatch):
    """SIGTERM landing in a weakref callback was printed as "Exception ignored ... Terminated"
    and the run went on to exit 0 (issue 25 #22). The handler now also records the request:
    the next chunk boundary raises it again, exit 143, no file."""
    import os
    import signal
    import weakref

    def swallowing(cfg, index):  # the signal arrives while a weakref callback runs
        class Thing:
            pass

        thing = Thing()
        ref = weakref.ref(thing, lambda _: os.kill(os.getpid(), signal.SIGTERM))
        del thing  # the callback runs; the Terminated raised in it is ignored by Python
        assert ref() is None
        return real(cfg, index)

    real = pythia.generate_chunk
    monkeypatch.setattr(production, "generate_chunk", swallowing)
    out = tmp_path / "t.hdf5"
    code, _, err = _run(
        capsys,
        f"data generate --class t --n 4 --chunk-size 2 --out {out} --jobs 1 --cache {tmp_path}",
    )
    assert code == 143 and "terminated (SIGTERM)" in err and not out.exists()


@pytest.mark.parametrize(("signalled", "status"), [(None, 130), ("term", 143)])
def test_an_interrupt_rethrown_by_a_c_extension_is_still_an_interrupt(
    tmp_path, capsys, monkeypatch, signalled, status
):
    """Ctrl-C or SIGTERM during COV/MMD came out of wasserstein's C++ as "RuntimeError:
    KeyboardInterrupt received in PairwiseEMD::compute", exit 1 (issue 25 #21)."""
    from jetflows import interrupt
    from pipelines import cli

    def rethrown(args):
        if signalled:
            interrupt.request(interrupt.Terminated)
        raise RuntimeError("KeyboardInterrupt received in PairwiseEMD::compute")

    monkeypatch.setattr(cli, "cmd_data_check", rethrown)
    code, _, err = _run(capsys, f"data check {tmp_path / 'x.hdf5'}")
    assert code == status and len(err.splitlines()) == 1
    assert ("terminated (SIGTERM)" if signalled else "interrupted;") in err


@pytest.mark.parametrize(
    ("raised", "status"),
    [
        (UserError("--n must be >= 1"), 2),
        (MissingFileError("runs/x/t/flow.pt: no such file"), 2),
        (OSError(28, "No space left on device"), 2),  # the environment: the user can fix it
        (ValueError("operands could not be broadcast together"), 1),  # numpy, deep inside: a bug
        (TypeError("unsupported operand type(s)"), 1),
        (KeyError("mass"), 1),
    ],
)
def test_user_errors_exit_2_and_bugs_exit_1_with_their_traceback_in_a_file(
    tmp_path, capsys, monkeypatch, raised, status
):
    """It turned every ValueError/OSError, a bug's included, into "error: ..." with exit 2 and
    no traceback, so a bug report had nothing to show (issue 26 #3)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the traceback goes

    def deep_inside(args):
        raise raised

    monkeypatch.setattr(cli, "cmd_data_check", deep_inside)
    code, out, err = _run(capsys, f"data check {tmp_path / 'x.hdf5'}")
    assert code == status and len(err.strip().splitlines()) == 1 and not out, err
    tracebacks = list(tmp_path.glob("jetflows-traceback-*.txt"))
    if status == 2:
        assert err.startswith("jetflows: error: ") and not tracebacks
        return
    assert "internal error" in err and type(raised).__name__ in err and "--debug" in err
    assert len(tracebacks) == 1 and str(tracebacks[0]) in err
    assert "deep_inside" in tracebacks[0].read_text()  # the frame that raised it
    with pytest.raises(type(raised)):  # --debug: the exception itself, with its traceback
        main(["--debug", "data", "check", str(tmp_path / "x.hdf5")])


def test_check_and_summary(tmp_path, capsys):
    path = write_jetnet_file(tmp_path / "t.hdf5", random_jets(30, 30))
    code, out, _ = _run(capsys, f"data check {path}")
    assert code == 0 and "(30, 30, 4)" in out and "(30, 4)" in out
    code, out, _ = _run(capsys, f"data summary {path} --out {tmp_path}/s")
    assert code == 0 and "particle_mass_peak" in out and "file_mass_peak" in out
    for name in ("summary.json", "summary.md", "mass.png", "multiplicity.png"):
        assert (tmp_path / "s" / name).stat().st_size > 0


def test_summary_of_two_files_of_one_name_keeps_both(tmp_path, capsys):
    """a/t.hdf5 and b/t.hdf5 were one row (keyed by base name), b's numbers labelled t."""
    import json

    for folder, seed in (("a", 1), ("b", 2)):
        (tmp_path / folder).mkdir()
        write_jetnet_file(tmp_path / folder / "t.hdf5", random_jets(30, 30, seed=seed))
    a, b = tmp_path / "a" / "t.hdf5", tmp_path / "b" / "t.hdf5"
    code, _, _ = _run(capsys, f"data summary {a} {b} --out {tmp_path}/s")
    rows = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert code == 0 and len(rows) == 2, rows
    _error(capsys, f"data summary {a} {a} --out {tmp_path}/s2", match="given twice")
    # a summary is replaced only when asked, and never inside a folder holding anything else
    _error(capsys, f"data summary {a} --out {tmp_path}/s", match="pass --overwrite")
    assert _run(capsys, f"data summary {a} --out {tmp_path}/s --overwrite")[0] == 0
    _error(capsys, f"data summary {a} --out {tmp_path}/a --overwrite", match="besides results")
    assert (tmp_path / "a" / "t.hdf5").is_file() and not (tmp_path / "a" / "summary.md").exists()


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 20), "truncated or corrupt"),
        (
            lambda p: write_jetnet_file(p, random_jets(2, 30)).write_bytes(p.read_bytes()[:900]),
            "truncated or corrupt",
        ),
        (lambda p: _raw_file(p, np.zeros((0, 30, 4)), np.zeros((0, 4))), "holds 0 jets"),
        (
            lambda p: _raw_file(p, np.ones((2, 30, 4), np.int64), np.ones((2, 4))),
            "particle_features has dtype int64, expected floating point",
        ),
        (
            lambda p: _raw_file(p, np.ones((2, 30, 4)), np.array([[-900.0, 0, 80, 30]] * 2)),
            "2 jets with pt <= 0",
        ),
        (lambda p: p.mkdir(), "is a directory, not a file"),
        (lambda p: _linked(p, lambda f: f.create_group("particle_features")), "is an HDF5 group"),
        (
            lambda p: _linked(p, lambda f: f.__setitem__("particle_features", _soft("/nowhere"))),
            "particle_features is a link to nothing",
        ),
    ],
)
def test_check_bad_files(tmp_path, capsys, make, match):
    path = tmp_path / "t.hdf5"
    make(path)
    _error(capsys, f"data check {path}", match=match)


def test_check_nan_file(tmp_path, capsys):
    import h5py

    path = tmp_path / "t.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("particle_features", data=np.full((2, 30, 4), np.nan))
        f.create_dataset("jet_features", data=np.zeros((2, 4)))
    _error(capsys, f"data check {path}", match="NaN/inf")


def test_download_offline(tmp_path, capsys, monkeypatch):
    from pipelines.data import jetnet

    monkeypatch.setattr(jetnet, "_zenodo_reachable", lambda timeout=3.0: False)
    _error(capsys, f"data download --class top --dir {tmp_path}", match="zenodo.org is unreachable")


@pytest.mark.parametrize("content", [b"", b"\x00random bytes" * 40])
def test_download_refuses_an_empty_or_damaged_file_already_there(tmp_path, capsys, content):
    """It printed "ready" for any file of the right name."""
    from pipelines.data.jetnet import jetnet_filename

    path = tmp_path / jetnet_filename("t", 30)
    path.write_bytes(content)
    _error(capsys, f"data download --class top --dir {tmp_path}", match=path.name)
    write_jetnet_file(path, random_jets(12, seed=1))
    code, out, _ = _run(capsys, f"data download --class top --dir {tmp_path}")
    assert code == 0 and "ready (12 jets)" in out


def test_every_command_help_shows_defaults_and_an_example(capsys):
    from pipelines.cli import EXAMPLES, _leaf_parsers, build_parser

    leaves = dict(_leaf_parsers(build_parser()))
    assert set(leaves) == set(EXAMPLES)
    for path in leaves:
        with pytest.raises(SystemExit):
            main([*path.split(), "--help"])
        text = capsys.readouterr().out
        assert f"example:\n  {EXAMPLES[path]}" in text, path
        assert "(default: " in text or path in ("data check", "data merge"), path
        # the example parses: the options it names exist
        args = build_parser().parse_args(EXAMPLES[path].split()[1:])
        assert args.func is not None


def test_sample_names_where_a_relative_run_was_looked_for(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _error(capsys, "sample --n 5 --class t --run runs/nowhere", match=str(tmp_path / "runs"))


def _soft(target):
    import h5py

    return h5py.SoftLink(target)


def _linked(path, add):
    """An HDF5 file with jet_features and, in place of particle_features, what ``add`` puts."""
    import h5py

    with h5py.File(path, "w") as f:
        f["jet_features"] = np.ones((2, 4))
        add(f)


def _raw_file(path, particle_features, jet_features):
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("particle_features", data=particle_features)
        f.create_dataset("jet_features", data=jet_features)


def test_an_output_directory_is_named_as_such(tmp_path, capsys, fake_pythia):
    (tmp_path / "d").mkdir()
    _error(capsys, f"data generate --class t --n 2 --out {tmp_path / 'd'}", match="is a directory")
    _error(
        capsys,
        f"data generate --class t --n 2 --out {tmp_path / 'd'} --overwrite",
        match="is a directory",
    )


def test_merge_of_a_missing_file_says_so(tmp_path, capsys):
    _error(
        capsys,
        f"data merge {tmp_path / 'nope.hdf5'} --out {tmp_path / 'm.hdf5'}",
        match="nope.hdf5: no such file",
    )


def test_evaluate_checks_class_and_out_before_any_work(tmp_path, capsys, monkeypatch):
    from pipelines.evaluation import evaluate

    monkeypatch.setattr(evaluate, "read_jetnet_file", lambda *a, **k: pytest.fail("read"))
    real = write_jetnet_file(tmp_path / "t.hdf5", random_jets(300, 30))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    base = f"evaluate --real {real} --gen {real}"
    _error(capsys, f"{base} --out {tmp_path / 'o'} --class higgs", match="unknown jet class")
    _error(capsys, f"{base} --out {blocker}", match="is a file, not a directory")
    _error(capsys, f"{base} --out {blocker}/sub", match="not a writable directory")
    _error(capsys, f"{base} --out {tmp_path / 'o'} --n 5", match="(evaluate --n) must be >= 100")


def test_an_unknown_class_in_a_file_is_said_to_come_from_the_file(tmp_path, capsys):
    import h5py

    real = write_jetnet_file(tmp_path / "t.hdf5", random_jets(300, 30))
    gen = write_jetnet_file(tmp_path / "gen.hdf5", random_jets(300, 30))
    with h5py.File(gen, "a") as f:
        f.attrs["jet_class"] = "zebra"
    err = _error(capsys, f"evaluate --real {real} --gen {gen} --out {tmp_path / 'o'}", "zebra")
    assert "gen.hdf5: its jet_class attribute" in err
    assert not (tmp_path / "o").exists()


def test_evaluate_replaces_its_folder_whole_and_only_when_asked(tmp_path, capsys, monkeypatch):
    from pipelines.evaluation import evaluate

    real = write_jetnet_file(tmp_path / "t.hdf5", random_jets(300, 30))
    out = tmp_path / "o"
    calls = []

    def fake(real_path, gen_path, out_dir, **kwargs):  # the metrics themselves: test_evaluate
        (out_dir / "plots").mkdir(parents=True)
        (out_dir / "plots" / "new.png").write_text("new")
        if calls:  # the second run is killed half-way
            raise KeyboardInterrupt
        calls.append(out_dir)
        (out_dir / "metrics.json").write_text("{}")
        return {"metrics": {}}

    monkeypatch.setattr(evaluate, "evaluate_files", fake)
    out.mkdir()
    (out / "report.md").write_text("old")
    base = f"evaluate --real {real} --gen {real} --out {out}"
    _error(capsys, base, match="already holds results: pass --overwrite")
    assert (out / "report.md").read_text() == "old"
    # a killed writer's temporary folder (its pid is not running) is removed by the next one
    stale = tmp_path / ".o.tmp-999999999"
    stale.mkdir()
    assert main([*base.split(), "--overwrite"]) == 0
    assert sorted(p.name for p in out.rglob("*")) == ["metrics.json", "new.png", "plots"]
    assert calls[0] != out and not stale.exists()  # written beside, then moved into place
    (out / "report.md").write_text("complete")
    assert main([*base.split(), "--overwrite"]) == 130  # interrupted: the old folder, whole
    assert sorted(p.name for p in out.rglob("*")) == [
        "metrics.json",
        "new.png",
        "plots",
        "report.md",
    ]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_evaluate_never_replaces_a_folder_holding_other_files(tmp_path, capsys):
    real = write_jetnet_file(tmp_path / "t.hdf5", random_jets(300, 30))
    run = tmp_path / "run_t"
    run.mkdir()
    (run / "flow.pt").write_text("a trained model")
    (run / "report.md").write_text("old")
    argv = f"evaluate --real {real} --gen {real} --out {run} --overwrite"
    _error(capsys, argv, match="holds flow.pt besides results")
    assert (run / "flow.pt").read_text() == "a trained model"


def test_an_output_another_command_is_writing_is_refused(tmp_path, capsys):
    """Issue 39 #3: two `sample --out same.hdf5` started 0.3 s apart both exited 0, the later
    silently replacing the earlier (the same for `evaluate --out`)."""
    from pipelines.io import output_claim

    write_jetnet_file(tmp_path / "real.hdf5", random_jets(400, 30, seed=1))
    write_jetnet_file(tmp_path / "gen.hdf5", random_jets(200, 30, seed=2))
    out, report = tmp_path / "top.hdf5", tmp_path / "ev"
    sample = ["sample", "--n", "5", "--class", "top", "--out", str(out)]
    evaluate = ["evaluate", "--real", str(tmp_path / "real.hdf5"), "--gen"]
    evaluate += [str(tmp_path / "gen.hdf5"), "--out", str(report), "--no-fpnd"]
    for argv, path in ((sample, out), (evaluate, report)):
        with output_claim(path):  # another command, alive, is writing it
            assert_one_line_error(capsys, argv, f"{path} is being written by process")
            assert not path.exists()
        assert not (tmp_path / f".{path.name}.lock").exists()
    assert main([*sample, "--quiet"]) == 0 and out.is_file()  # once free, as before
    assert_one_line_error(capsys, sample, "already exists: pass --overwrite")


@pytest.mark.parametrize(
    ("raised", "code", "said"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), 2, "No space left on device"),
        (PermissionError(errno.EACCES, "Permission denied"), 2, "Permission denied"),
        (MemoryError(), 2, "out of memory: ask for less at a time"),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: 8 GB"), 2, "out of memory"),
        (OSError(errno.EIO, "Input/output error"), 1, "internal error"),
        (KeyError("x"), 1, "internal error"),
    ],
)
def test_only_errors_the_user_can_fix_exit_2(monkeypatch, capsys, raised, code, said):
    """Issue 39 (errors): every OSError exited 2, so an internal I/O bug read as the user's
    fault; memory exhausted by --n 1e7 --batch-size 1e7 was a bug's exit 1."""

    def fail(args):
        raise raised

    monkeypatch.setattr(cli, "cmd_data_check", fail)  # the parser is built in main
    assert main(["data", "check", "x.hdf5"]) == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and said in err


@pytest.mark.parametrize(
    ("sig", "status", "said"), [("INT", 130, "interrupted"), ("TERM", 143, "SIGTERM")]
)
def test_a_stop_turned_into_another_error_is_still_a_stop(monkeypatch, capsys, sig, status, said):
    """Issue 39 #4: Ctrl-C during imports came out as "internal error" (exit 1) in 2 of 14
    tries: a library turned the KeyboardInterrupt into its own error."""
    import os
    import signal

    def importing(args):
        try:
            os.kill(os.getpid(), getattr(signal, f"SIG{sig}"))
        except KeyboardInterrupt as err:  # what an import wrapper does with it
            raise ImportError("cannot import name 'x' (partially initialized module)") from err

    monkeypatch.setattr(cli, "cmd_data_check", importing)
    code, _, err = _run(capsys, "data check x.hdf5")
    assert code == status and said in err and len(err.splitlines()) == 1


def test_a_swallowed_stop_never_commits_an_output(tmp_path, capsys, monkeypatch):
    """Issue 39 #4: a SIGTERM swallowed during evaluate's imports let it write every output,
    then exit 143 saying no partial output was written."""
    import os
    import signal

    write_jetnet_file(tmp_path / "real.hdf5", random_jets(400, 30, seed=1))
    write_jetnet_file(tmp_path / "gen.hdf5", random_jets(200, 30, seed=2))
    from pipelines.evaluation import evaluate as evaluation

    real_read = evaluation.read_jetnet_file

    def swallowing(path):  # the signal lands where a library catches and ignores it
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except KeyboardInterrupt:
            pass
        return real_read(path)

    monkeypatch.setattr(evaluation, "read_jetnet_file", swallowing)
    out = tmp_path / "ev"
    argv = f"evaluate --real {tmp_path / 'real.hdf5'} --gen {tmp_path / 'gen.hdf5'} --out {out}"
    code, _, err = _run(capsys, argv + " --no-fpnd --no-cov-mmd --stable-draws 0")
    assert code == 143 and "terminated (SIGTERM)" in err and not out.exists()
