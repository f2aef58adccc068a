"""The `jetflows` command line: thin sub-commands that each call one pipeline function.

A user mistake (unknown class, bad numbers, missing or corrupt file, existing output) prints one
line to stderr and exits with status 2; a bug prints one line naming the file with its traceback
and exits with status 1 (`jetflows --debug ...` raises it instead). Heavy libraries are
imported inside the commands, so `--help` and quick commands start fast.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from jetflows import __version__, interrupt, threads
from jetflows.errors import MissingFileError, UserError
from jetflows.interrupt import Terminated

EXIT_USAGE = 2  # bad input: one line says what to fix
EXIT_BUG = 1  # an exception no check anticipated: the traceback goes to a file


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (not usage + error) and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


#: `jetflows sample` flags that become sampling options (`flows.setflow.SAMPLING_FIELDS`)
SAMPLE_OPTIONS = (
    "solver", "steps", "precision", "guidance", "guidance_from", "guidance_until", "teacher",
)  # fmt: skip
SEED_MAX = 2**63 - 1  # numpy, torch and HDF5 attributes all take a 64-bit seed


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be in 0..2**63-1, got {value}")
    return value


def cmd_data_generate(args: argparse.Namespace) -> None:
    """Generate jets of one class with Pythia8 + FastJet into a JetNet-layout file."""
    from pipelines.data.jetnet import check_num_particles, jetnet_filename
    from pipelines.data.production import generate_file
    from pipelines.data.pythia import PythiaConfig

    cfg = PythiaConfig(
        args.jet_class,
        seed=args.seed,
        mpi=not args.no_mpi,
        **({"recipe": args.recipe} if args.recipe else {}),
        **({"chunk_size": args.chunk_size} if args.chunk_size else {}),
    )
    if args.n < 1:
        raise UserError(f"--n must be >= 1, got {args.n}")
    check_num_particles(args.particles)
    shard = _shard(args.shard)
    name = jetnet_filename(cfg.jet_class, args.particles)
    if shard != (0, 1):
        name = name.replace(".hdf5", f".shard{shard[0]}of{shard[1]}.hdf5")
    out = args.out or Path("data") / name
    path, written = generate_file(
        cfg,
        args.n,
        out,
        num_particles=args.particles,
        jobs=args.jobs,
        overwrite=args.overwrite,
        cache_dir=args.cache,
        shard=shard,
    )
    what = f"shard {shard[0]}/{shard[1]} of " if shard != (0, 1) else ""
    print(
        f"{'wrote' if written else 'up to date:'} {path} ({what}{args.n} {cfg.jet_class} jets, "
        f"{args.particles} particles)"
    )


def _shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return (0, 1)
    i, sep, count = text.partition("/")
    if not sep or not i.strip().isdigit() or not count.strip().isdigit():
        raise UserError(f"--shard expects i/N (e.g. 0/4), got {text!r}")
    return int(i), int(count)


def cmd_data_merge(args: argparse.Namespace) -> None:
    """Join the shard files of one `data generate --shard i/N` request into one JetNet file."""
    from pipelines.data.production import merge_shards

    path = merge_shards(args.files, args.out, overwrite=args.overwrite)
    print(f"wrote {path} ({len(args.files)} shards)")


def _labels(files: Sequence[str]) -> list[str]:
    """A row label per file: its name, or its path as given where two names are alike
    (a/t.hdf5 and b/t.hdf5 must not share one row).

    Raises:
        ValueError: the same file given twice.
    """
    if len({Path(f).resolve() for f in files}) < len(files):
        raise UserError(f"a file is given twice: {' '.join(files)}")
    names = [Path(f).name for f in files]
    return names if len(set(names)) == len(names) else [str(f) for f in files]


SUMMARY_OUTPUTS = ("summary.json", "summary.md", "mass.png", "multiplicity.png")


def cmd_data_summary(args: argparse.Namespace) -> None:
    """Print and plot a summary (mass peak, multiplicity, ...) of JetNet-layout files."""
    from pipelines.data.jetnet import read_jetnet_file
    from pipelines.evaluation.dataset_summary import summary_table, write_summary
    from pipelines.io import check_output_dir

    # a folder of its own: a run's folder holds its own summary.md, never to be replaced here
    out = check_output_dir(args.out, overwrite=args.overwrite, replaceable=SUMMARY_OUTPUTS)
    labels = _labels(args.files)
    datasets = {label: read_jetnet_file(f) for label, f in zip(labels, args.files, strict=True)}
    rows = write_summary(datasets, out)
    print(summary_table(rows), end="")
    print(f"summary, mass.png and multiplicity.png in {args.out}")


def cmd_data_check(args: argparse.Namespace) -> None:
    """Validate a JetNet-layout file and print its shapes (and, for generated files, the recipe
    and phi_rel's unit)."""
    import h5py

    from pipelines.data.jetnet import read_jetnet_file

    jets = read_jetnet_file(args.file, args.particles)
    pf = (*jets.particles.shape[:2], 4)
    print(f"{args.file}: particle_features {pf}, jet_features {jets.jet_features.shape}, ok")
    with h5py.File(args.file, "r") as f:  # readable: read_jetnet_file just opened it
        for name in ("recipe", "phi_rel"):
            if name in f.attrs:
                print(f"  {name}: {f.attrs[name]}")


def cmd_data_images(args: argparse.Namespace) -> None:
    """Sparse images as point clouds: each digit's --pixels most intense pixels as (x, y, I)
    rows in the jets' HDF5 layout; from MNIST's IDX files in --dir, or drawn here (digits)."""
    from pipelines.data import images
    from pipelines.io import check_writable

    digit = images.check_digit(args.digit)
    images.check_pixels(args.pixels, "--pixels")
    out = check_writable(args.out, overwrite=args.overwrite)
    if args.source == "mnist":
        if args.dir is None:
            raise UserError("--source mnist needs --dir: the folder holding MNIST's IDX files")
        drawn = images.mnist_digits(args.dir, digit)[: args.n]
    else:
        drawn = images.render_digits(digit, args.n or 6000, seed=args.seed)
    jets = images.image_jets(drawn, args.pixels, digit, seed=args.seed)
    images.write_image_file(out, jets, source=args.source, digit=digit, pixels=args.pixels)
    lit = float(jets.mask.sum(1).mean())
    print(f"wrote {out}: {len(jets)} images of {digit}, {args.pixels} pixels each ({lit:.1f} lit)")


def cmd_data_download(args: argparse.Namespace) -> None:
    """Fetch a JetNet file from Zenodo (needs the network); a no-op when it is on disk."""
    from pipelines.data.jetnet import check_num_particles, locate_jetnet_file, read_jetnet_file

    particles = check_num_particles(args.particles)
    path = locate_jetnet_file(args.jet_class, args.dir, particles, download=True)
    jets = read_jetnet_file(path, particles)  # a file already there may be empty or damaged
    print(f"{path} ready ({len(jets)} jets)")


EVALUATION_OUTPUTS = ("metrics.json", "report.md", "plots")


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Compare generated with real jets: every metric beside its truth floor, plots, report."""
    from jetflows.classes import canonical_class
    from pipelines.evaluation.evaluate import EvalConfig, evaluate_files
    from pipelines.evaluation.report import STABLE_NAMES, fmt, stable_cell
    from pipelines.io import atomic_dir, check_output_dir, output_claim

    # every argument checked before the EFPs (seconds) are computed
    if args.jet_class:
        canonical_class(args.jet_class)
    # the folder is replaced whole: never one that holds anything but an evaluation's outputs
    out = check_output_dir(args.out, overwrite=args.overwrite, replaceable=EVALUATION_OUTPUTS)

    cfg = EvalConfig(
        n_jets=args.n,
        seed=args.seed,
        fpnd=not args.no_fpnd,
        cov_mmd=not args.no_cov_mmd,
        stable_draws=args.stable_draws,
    )
    with output_claim(out):  # two evaluations on one --out: the second is refused
        # again under the claim: another evaluation may have written it since the first check
        check_output_dir(args.out, overwrite=args.overwrite, replaceable=EVALUATION_OUTPUTS)
        with atomic_dir(out) as tmp:  # the old report stays whole until the new one is
            results = evaluate_files(args.real, args.gen, tmp, jet_class=args.jet_class, cfg=cfg)
    stable = results.get("stable")
    if stable:
        sizes = stable["sizes"]
        print(
            f"stable ratios ({sizes['draws']} real pairs x {sizes['samples']} generated samples "
            f"of {sizes['n']}; 10-90% band of one draw):"
        )
        for name, label in STABLE_NAMES.items():
            if name in stable:
                print(f"  {label:12s} {stable_cell(stable[name])}")
        print("one draw:")
    rows = results["metrics"]
    for name in ("emd_sum", "w1m", "w1p", "w1efp", "fpd", "kpd", "fpnd"):
        if name in rows:
            r = rows[name]
            print(
                f"{name:8s} {fmt(r['value'])} (floor {fmt(r['floor'])}, "
                f"ratio {fmt(r['ratio'], spec='.3g')})"
            )
    print(f"metrics.json, report.md and plots/ in {args.out}")


def _class_list(text: str | None) -> tuple[str, ...] | None:
    """--classes "g, t" -> ("g", "t"); None (not given): the config's classes.

    Raises:
        ValueError: given but naming no class ("," or ""), which meant every class.
    """
    if text is None:
        return None
    classes = tuple(c.strip() for c in text.split(",") if c.strip())
    if not classes:
        raise UserError(f"--classes {text!r} names no class: e.g. --classes g,t")
    return classes


def cmd_pipeline(args: argparse.Namespace) -> None:
    """Per class: data -> ConVAE -> flow -> generated jets -> evaluation; skips finished stages."""
    from jetflows.distributed import init_from_env, is_main, resolve_device
    from pipelines.run.config import load_config
    from pipelines.run.pipeline import run_pipeline

    cfg = load_config(args.config, args.set or [])
    classes = _class_list(args.classes)
    device = resolve_device(cfg.device)
    init_from_env("nccl" if device.type == "cuda" else "gloo")  # under torchrun: join the rest
    run = run_pipeline(
        cfg, root=args.runs, classes=classes, progress=not args.quiet, overwrite=args.overwrite
    )
    if is_main():
        print((run / "summary.md").read_text(), end="")
        print(f"reports: {run}/<class>/report.md, plots: {run}/<class>/plots/, summary: {run}")


def _requested_kinematics(args: argparse.Namespace) -> Any:
    """(n, 2) (pt, eta) from --pt/--eta or --kinematics FILE; None: drawn from the training jets."""
    import numpy as np

    if args.kinematics is not None and args.pt is not None:
        raise UserError("pass --pt or --kinematics, not both")
    if args.kinematics is not None:
        if not args.kinematics.is_file():
            raise MissingFileError(f"{args.kinematics}: no such file")
        try:
            table = np.loadtxt(args.kinematics, delimiter=",", ndmin=2, dtype=np.float64)
        except ValueError as err:
            raise UserError(f"{args.kinematics}: not a CSV of pt,eta rows ({err})") from err
        if table.shape[0] != args.n:
            raise UserError(f"{args.kinematics} has {table.shape[0]} rows, --n is {args.n}")
        return table
    if args.pt is None:
        if args.eta is not None:  # it was silently ignored
            raise UserError("--eta needs --pt (or a --kinematics file of pt,eta rows)")
        return None
    return np.tile([args.pt, 0.0 if args.eta is None else args.eta], (args.n, 1))


def cmd_sample(args: argparse.Namespace) -> None:
    """Write n generated jets of one class from a trained run (JetNet-layout HDF5)."""
    from jetflows.classes import canonical_class
    from pipelines.run.sample import sample_to_file

    if args.n < 1:
        raise UserError(f"--n must be >= 1, got {args.n}")
    jet_class = canonical_class(args.jet_class)
    out = args.out or Path(f"{jet_class}_generated.hdf5")
    path = sample_to_file(
        args.run,
        jet_class,
        args.n,
        out,
        kinematics=_requested_kinematics(args),
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        overwrite=args.overwrite,
        progress=not args.quiet,
        options={k: getattr(args, k) for k in SAMPLE_OPTIONS if getattr(args, k) is not None},
    )
    import h5py

    with h5py.File(path) as f:
        model = f.attrs.get("model", "")
    choice = threads.applied()
    used = f"; {choice.describe()}" if choice else ""
    where = "jetflows" if args.run is None else args.run
    source = f"{where}: {model}" if model else f"{where}"
    print(f"wrote {path} ({args.n} {jet_class} jets from {source}{used})")


def cmd_models(args: argparse.Namespace) -> None:
    """The models shipped with jetflows: provenance and scores; --score scores them again on
    fresh real jets (the main job's first part)."""
    from pipelines.run import shipped, showcase

    if args.score is None:
        if args.classes or args.real is not None:
            raise UserError("--classes and --real go with --score OUT")
        print(shipped.listing(), end="")
        return
    out = showcase.score_to_dir(
        args.score,
        _class_list(args.classes),
        n_real=args.real or 5000,
        seed=args.seed,
        progress=not args.quiet,
    )
    print((args.score / "summary.md").read_text(), end="")
    print(f"per class: {args.score}/<class>/report.md, plots/ ({len(out)} classes)")


def _models_parser(sub: argparse._SubParsersAction) -> None:
    mod = sub.add_parser(
        "models", help="the models shipped with jetflows", description=cmd_models.__doc__
    )
    mod.add_argument(
        "--score",
        type=Path,
        metavar="OUT",
        help="score each shipped model on fresh Pythia jets into OUT (summary.md, per class "
        "report.md and plots)",
    )
    mod.add_argument("--classes", help="with --score: comma-separated subset (default: all)")
    mod.add_argument(
        "--real", type=_positive_int, help="with --score: fresh real jets per class (5000)"
    )
    mod.add_argument(
        "--seed", type=_seed, default=7, help="with --score: the real jets' Pythia seed"
    )
    mod.add_argument("--quiet", action="store_true", help="no progress bars")
    mod.set_defaults(func=cmd_models)


def cmd_tune(args: argparse.Namespace) -> None:
    """Optuna study over a search space in YAML; several processes may share one storage."""
    from pipelines.experiments.tune import tune

    out = tune(
        args.config,
        trials=args.trials,
        storage=args.storage,
        storage_env=args.storage_env,
        study_name=args.study,
        root=args.root,
        progress=not args.quiet,
    )
    print((out / "results.md").read_text(), end="")
    print(f"results.json, results.md and the best config(s) as pipeline YAML in {out}")


def _tune_parser(sub: argparse._SubParsersAction) -> None:
    tn = sub.add_parser("tune", help="tune with Optuna", description=cmd_tune.__doc__)
    tn.add_argument("--config", type=Path, required=True, help="configs/tune_*.yaml")
    tn.add_argument("--trials", type=int, required=True, help="finished trials the study needs")
    tn.add_argument("--storage", help="SQLAlchemy URL (default sqlite:///<root>/<study>.db)")
    tn.add_argument("--storage-env", help="environment variable holding the storage URL")
    tn.add_argument("--study", help="study name (default: the config's)")
    tn.add_argument("--root", type=Path, default=Path("runs/tune"), help="results directory")
    tn.add_argument("--quiet", action="store_true", help="no progress bars")
    tn.set_defaults(func=cmd_tune)


def cmd_study(args: argparse.Namespace) -> None:
    """Train the ConVAE (+ latent flow) once per reconstruction loss and score each with every
    metric: a loss x metric table, heat maps, and whether the metrics agree (Kendall's tau)."""
    from pipelines.experiments.study import run_study

    classes = _class_list(args.classes)
    out = run_study(args.config, root=args.root, classes=classes, progress=not args.quiet)
    print((out / "results.md").read_text(), end="")
    print(f"results.json, results.md, heatmap.png and kendall.png in {out}")


def cmd_digits(args: argparse.Namespace) -> None:
    """The pipeline on sparse digits: per digit and reconstruction loss, the ConVAE and its
    latent flow; reconstructions and generated digits as images, image-level metrics."""
    from pipelines.experiments.digits import run_digits

    out = run_digits(args.config, root=args.runs, progress=not args.quiet)
    print((out / "summary.md").read_text(), end="")
    print(f"summary.md and, per digit and loss, report.md, metrics.json and plots/ in {out}")


def _digits_parser(sub: argparse._SubParsersAction) -> None:
    dg = sub.add_parser(
        "digits", help="the pipeline on sparse digits", description=cmd_digits.__doc__
    )
    dg.add_argument("--config", type=Path, required=True, help="configs/sparse_digits.yaml")
    dg.add_argument("--runs", type=Path, default=Path("runs"), help="runs directory")
    dg.add_argument("--quiet", action="store_true", help="no progress bars")
    dg.set_defaults(func=cmd_digits)


def _study_parser(sub: argparse._SubParsersAction) -> None:
    st = sub.add_parser("study", help="the loss x metric study", description=cmd_study.__doc__)
    st.add_argument("--config", type=Path, required=True, help="configs/study_*.yaml")
    st.add_argument("--classes", help="comma-separated subset, e.g. t,g (default: the config's)")
    st.add_argument("--root", type=Path, default=Path("runs/study"), help="results directory")
    st.add_argument("--quiet", action="store_true", help="no progress bars")
    st.set_defaults(func=cmd_study)


def _pipeline_and_sample_parsers(sub: argparse._SubParsersAction) -> None:
    pipe = sub.add_parser(
        "pipeline",
        help="train and evaluate per class (two-stage or direct)",
        description=cmd_pipeline.__doc__,
    )
    pipe.add_argument("--config", type=Path, help="YAML in configs/ (default: built-in defaults)")
    pipe.add_argument("--classes", help="comma-separated subset, e.g. g,t (default: the config's)")
    pipe.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set flow.transforms=8 (repeatable)",
    )
    pipe.add_argument("--runs", type=Path, default=Path("runs"), help="runs directory")
    pipe.add_argument("--quiet", action="store_true", help="no progress bars")
    pipe.add_argument(
        "--overwrite",
        action="store_true",
        help="redo a run made with other settings (its stages whose inputs changed)",
    )
    pipe.set_defaults(func=cmd_pipeline)

    smp = sub.add_parser(
        "sample", help="generate jets from a trained run", description=cmd_sample.__doc__
    )
    smp.add_argument("--n", type=int, required=True, help="number of jets")
    smp.add_argument("--class", dest="jet_class", required=True, help="g, q, t, w, z or alias")
    smp.add_argument(
        "--run",
        type=Path,
        help="a pipeline run directory, relative to the working directory (default: the "
        "model shipped with jetflows for the class; jetflows models lists them)",
    )
    smp.add_argument("--out", type=Path, help="output HDF5 (default: <class>_generated.hdf5)")
    smp.add_argument("--seed", type=_seed, default=0, help="random seed (same seed, same jets)")
    smp.add_argument(
        "--pt",
        type=float,
        help="jet pt [GeV] every jet is generated for (a run trained with latent.kinematics or "
        "particle.kinematics); default: each jet's (pt, eta) drawn from the training jets",
    )
    smp.add_argument("--eta", type=float, default=None, help="jet eta, with --pt (default 0)")
    smp.add_argument(
        "--kinematics",
        type=Path,
        help="CSV file of --n rows 'pt,eta': one jet generated for each",
    )
    smp.add_argument(
        "--steps",
        type=_positive_int,
        help="set flows (target cloud): network calls of the run's few-step student, one it "
        "was trained for (default: its first); with --teacher, or a run without a student, "
        "the set flow's ODE steps (fewer is faster and coarser)",
    )
    smp.add_argument(
        "--teacher",
        action="store_const",
        const=True,
        help="set flows: sample the set flow itself (the teacher: guided ODE, exact "
        "likelihood) even where the run has a few-step student",
    )
    smp.add_argument("--solver", help="set flows: euler, midpoint or rk4 (default: the model's)")
    smp.add_argument(
        "--precision",
        help="set flows: fp32, bf16 (bfloat16 network, faster where the CPU has native bf16) "
        "or auto (bf16 where native); default: the model's",
    )
    smp.add_argument(
        "--guidance",
        type=float,
        help="set flows: autoguidance weight w (1: off; > 1 needs the run's guide.pt); "
        "default: the model's",
    )
    smp.add_argument(
        "--guidance-from",
        type=float,
        help="set flows: guide only for t >= this (0: the whole path); default: the model's",
    )
    smp.add_argument(
        "--guidance-until",
        type=float,
        help="set flows: guide only for t < this (1: to the end); default: the model's",
    )
    smp.add_argument("--batch-size", type=_positive_int, default=10_000, help="jets per batch")
    smp.add_argument("--device", default="cpu", help="cpu, cuda or auto (a GPU if there is one)")
    smp.add_argument("--overwrite", action="store_true", help="replace an existing output")
    smp.add_argument("--quiet", action="store_true", help="no progress bar")
    smp.set_defaults(func=cmd_sample)


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "evaluate",
        help="metrics, truth floors, plots and a report",
        description=cmd_evaluate.__doc__,
    )
    ev.add_argument("--real", type=Path, required=True, help="real jets (JetNet-layout HDF5)")
    ev.add_argument("--gen", type=Path, required=True, help="generated jets (JetNet layout)")
    ev.add_argument(
        "--class",
        dest="jet_class",
        help="jet class (default: from the real file's JetNet name); FPND: g, q, t",
    )
    ev.add_argument("--out", type=Path, default=Path("runs/evaluate"), help="output directory")
    ev.add_argument("--overwrite", action="store_true", help="replace the results already in --out")
    ev.add_argument(
        "--n",
        type=_positive_int,
        default=50_000,
        help="jets per sample (jetnet's convention: 50,000)",
    )
    ev.add_argument("--seed", type=_seed, default=42, help="seed of the samples and bootstraps")
    ev.add_argument("--no-fpnd", action="store_true", help="skip FPND (a graph network)")
    ev.add_argument("--no-cov-mmd", action="store_true", help="skip COV/MMD")
    ev.add_argument(
        "--stable-draws",
        type=int,
        default=16,
        help="real pairs behind the stable ratios (many splits of the real jets x every "
        "generated sample of --n jets); 0: one draw only",
    )
    ev.set_defaults(func=cmd_evaluate)


def _data_parser(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser(
        "data", help="generate (sharded), merge, check, download and summarize jet datasets"
    )
    verbs = data.add_subparsers(dest="verb", required=True, metavar="VERB")

    img = verbs.add_parser(
        "images",
        help="sparse digit images as (x, y, I) point clouds (MNIST files or drawn here)",
        description=cmd_data_images.__doc__,
    )
    img.add_argument(
        "--source", choices=("digits", "mnist"), default="digits", help="where the images come from"
    )
    img.add_argument("--dir", type=Path, help="folder with MNIST's IDX files (--source mnist)")
    img.add_argument("--digit", type=int, required=True, help="0-9")
    img.add_argument("--pixels", type=int, default=100, help="pixels kept per image (k)")
    img.add_argument(
        "--n", type=_positive_int, help="images (default: every MNIST one; 6,000 drawn)"
    )
    img.add_argument("--seed", type=_seed, default=0, help="seed of the drawn digits and of ties")
    img.add_argument("--out", type=Path, required=True, help="output HDF5")
    img.add_argument("--overwrite", action="store_true", help="replace an existing output")
    img.set_defaults(func=cmd_data_images)

    gen = verbs.add_parser(
        "generate",
        help="generate jets with Pythia8 + FastJet (JetNet layout)",
        description=cmd_data_generate.__doc__,
    )
    gen.add_argument(
        "--class",
        dest="jet_class",
        required=True,
        help="g, q, t, w, z (or gluon, quark, top, W, Z)",
    )
    gen.add_argument("--n", type=int, required=True, help="number of jets")
    gen.add_argument("--particles", type=int, default=30, help="particles per jet, 1..150")
    gen.add_argument("--out", type=Path, help="output file (default: data/<class>[150].hdf5)")
    gen.add_argument("--seed", type=_seed, default=42, help="random seed")
    gen.add_argument("--jobs", type=_positive_int, help="processes (default: every core)")
    gen.add_argument("--overwrite", action="store_true", help="replace an existing output")
    gen.add_argument("--no-mpi", action="store_true", help="switch off multiparton interactions")
    gen.add_argument(
        "--recipe",
        help="particle (default; every visible particle, phi_rel in radians), fpnd-matched (the "
        "same particles with phi_rel compressed to delta phi / pi: FPND against JetNet's "
        "statistics comes closest, but masses and substructure from its particles are not the "
        "jet's) or detector (tracks + ECAL/HCAL cells, radians); see docs/data.md 'The "
        "embedded data and JetNet'",
    )
    gen.add_argument(
        "--chunk-size",
        type=_positive_int,
        help="jets per independently seeded chunk (part of the seed; default 100)",
    )
    gen.add_argument(
        "--cache", type=Path, help="chunk cache (default $JETFLOWS_CACHE or ~/.cache/jetflows)"
    )
    gen.add_argument(
        "--shard", help="i/N: generate only shard i of N (e.g. one machine each); see data merge"
    )
    gen.set_defaults(func=cmd_data_generate)

    merge = verbs.add_parser(
        "merge", help="join shard files into one JetNet file", description=cmd_data_merge.__doc__
    )
    merge.add_argument("files", nargs="+", help="the shard files (any order)")
    merge.add_argument("--out", type=Path, required=True, help="output HDF5 file")
    merge.add_argument("--overwrite", action="store_true", help="replace an existing output")
    merge.set_defaults(func=cmd_data_merge)

    summ = verbs.add_parser(
        "summary",
        help="summarize files: numbers and histograms",
        description=cmd_data_summary.__doc__,
    )
    summ.add_argument("files", nargs="+", help="JetNet-layout HDF5 files")
    summ.add_argument("--out", type=Path, default=Path("runs/data_summary"), help="output dir")
    summ.add_argument("--overwrite", action="store_true", help="replace a summary already there")
    summ.set_defaults(func=cmd_data_summary)

    check = verbs.add_parser(
        "check", help="validate a JetNet-layout file", description=cmd_data_check.__doc__
    )
    check.add_argument("file", help="HDF5 file")
    check.add_argument("--particles", type=int, help="particles to read (default: all)")
    check.set_defaults(func=cmd_data_check)

    down = verbs.add_parser(
        "download", help="download a JetNet file from Zenodo", description=cmd_data_download.__doc__
    )
    down.add_argument("--class", dest="jet_class", required=True, help="g, q, t, w or z")
    down.add_argument("--particles", type=int, default=30, help="30 or up to 150")
    down.add_argument("--dir", type=Path, default=Path("data/jetnet"), help="data directory")
    down.set_defaults(func=cmd_data_download)


#: One example per leaf command, shown at the end of its --help.
EXAMPLES: dict[str, str] = {
    "data generate": "jetflows data generate --class top --n 50000 --out data/t.hdf5",
    "data merge": "jetflows data merge data/t.shard*of4.hdf5 --out data/t.hdf5",
    "data summary": "jetflows data summary data/t.hdf5 runs/quickstart/t/generated.hdf5",
    "data check": "jetflows data check data/t.hdf5",
    "data images": "jetflows data images --digit 8 --pixels 100 --out data/digits8.hdf5",
    "data download": "jetflows data download --class t --dir data/jetnet",
    "pipeline": "jetflows pipeline --config configs/quickstart.yaml --classes t",
    "sample": "jetflows sample --n 10000 --class top --out top.hdf5",
    "models": "jetflows models --score runs/shipped",
    "tune": "jetflows tune --config configs/tune_flow.yaml --trials 20",
    "study": "jetflows study --config configs/study_losses.yaml --classes t,g",
    "digits": "jetflows digits --config configs/sparse_digits.yaml",
    "evaluate": "jetflows evaluate --real data/t.hdf5 --gen top.hdf5 --out runs/eval_t",
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default ("(default: 42)") unless there is none to show (None, a
    flag's False) or the help already says it; keeps the example's line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        if not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _leaf_parsers(parser: argparse.ArgumentParser, path: str = "") -> Iterator:
    """(command path, parser) of every command without sub-commands."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        yield path, parser
    for action in actions:
        for name, child in action.choices.items():
            yield from _leaf_parsers(child, f"{path} {name}".strip())


def build_parser() -> argparse.ArgumentParser:
    """The `jetflows` parser with every sub-command."""
    parser = _Parser(
        prog="jetflows",
        description="Generate particle-physics jets with a ConVAE "
        "and normalizing flows. See README.md for the workflow.",
    )
    parser.add_argument("--version", action="version", version=f"jetflows {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="on any error, raise it with its full traceback"
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    _data_parser(sub)
    _pipeline_and_sample_parsers(sub)
    _tune_parser(sub)
    _study_parser(sub)
    _digits_parser(sub)
    _evaluate_parser(sub)
    _models_parser(sub)
    for path, leaf in _leaf_parsers(parser):
        leaf.add_argument(
            "--threads",
            type=_positive_int,
            help=f"torch threads (default: ${threads.ENV}, $OMP_NUM_THREADS, else the usable "
            "cores idle now, fewer for small work)",
        )
        leaf.formatter_class = _HelpFormatter
        leaf.epilog = f"example:\n  {EXAMPLES[path]}"
    return parser


def _raise_terminated(signum: int, frame: Any) -> None:
    interrupt.request(Terminated)  # kept: the raise below may land where it is swallowed
    raise Terminated


def _raise_interrupted(signum: int, frame: Any) -> None:
    # Ctrl-C recorded too: during an import a library may turn the KeyboardInterrupt into
    # another error (exit 1, "internal error", in 2 of 14 tries)
    interrupt.request(KeyboardInterrupt)
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While a command runs, SIGTERM unwinds it like Ctrl-C (temporary files removed)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    previous_int = signal.signal(signal.SIGINT, _raise_interrupted)
    hook = sys.unraisablehook
    sys.unraisablehook = functools.partial(_quiet_stops, hook)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
        sys.unraisablehook = hook


def _quiet_stops(hook: Callable[[Any], None], unraisable: Any) -> None:
    """sys.unraisablehook: a stop raised where Python can only ignore it (a weakref callback,
    a __del__) is not printed as "Exception ignored ... Traceback": `jetflows.interrupt` holds
    the request and the next safe point raises it again. Anything else goes to ``hook``."""
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        hook(unraisable)


def _show_warning(message: Warning | str, *_args: Any, **_kwargs: Any) -> None:
    print(f"jetflows: warning: {message}", file=sys.stderr)


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Warnings as one line each on stderr ("jetflows: warning: ..."), not Python's two (the
    file and line of the code that warned, then its source line); the filters stay as they
    are, and each command starts with a fresh record of what it has shown."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        yield


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run a sub-command. Bad input (`UserError`) or an environment the user can
    fix (a full disk, a read-only folder) -> one line on stderr and status 2; any other exception
    is a bug -> one line naming the file that holds its traceback, status 1 (`--debug` raises it
    instead); Ctrl-C -> 130 and SIGTERM -> 143 (128 + the signal), each one line, no partial
    output."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    interrupt.clear()
    try:
        return _run_command(func, args)
    finally:
        interrupt.clear()  # the request ended this command: not the caller's next one


def _run_command(func: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> int:
    """`main`'s command, its errors and stops turned into one line and an exit status."""
    try:
        with _sigterm_as_interrupt(), _one_line_warnings():
            threads.apply_threads(threads.choose_threads(args.threads, cap=_thread_cap(args)))
            func(args)
            interrupt.check()  # a SIGTERM swallowed where it landed still ends as one
    except KeyboardInterrupt as stop:  # Terminated included
        return _stopped(type(stop))
    except Exception as err:
        if interrupt.requested():  # a stop turned into another error on its way up
            return _stopped(interrupt.requested())
        said = _users_to_fix(err)
        if said is not None:
            if args.debug:
                raise
            print(f"jetflows: error: {said}", file=sys.stderr)
            return EXIT_USAGE
        # C++ extensions (wasserstein's PairwiseEMD, under COV/MMD) catch the interrupt and
        # rethrow it as "RuntimeError: KeyboardInterrupt received in ..."
        if isinstance(err, RuntimeError) and "KeyboardInterrupt" in str(err):
            return _stopped(interrupt.requested() or KeyboardInterrupt)
        if args.debug:
            raise
        return _bug(err)
    return 0


#: errno values of OS errors the user's environment causes and the user can fix
_USER_ERRNOS = {
    errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT,
    errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG,
}  # fmt: skip


def _users_to_fix(err: Exception) -> str | None:
    """The one line for an error the user causes and can fix (exit 2), else None (a bug,
    exit 1 with its traceback): bad input (`UserError`), a missing file, a permission, a full
    disk or read-only folder, memory exhausted, a diverged training (FloatingPointError: its
    cure is in the settings). Any other OSError is ours to explain, not the user's."""
    if isinstance(err, UserError | FloatingPointError):
        return str(err)
    if isinstance(err, OSError) and err.errno in _USER_ERRNOS:
        return str(err)
    out_of_memory = isinstance(err, MemoryError) or (
        isinstance(err, RuntimeError) and "can't allocate memory" in str(err)
    )
    if out_of_memory:
        return (
            "out of memory: ask for less at a time (a smaller --batch-size or --n), or free memory"
        )
    return None


#: jets below which a command's tensors are too small to share among threads
SMALL_WORK = 1000


def _thread_cap(args: argparse.Namespace) -> int | None:
    """The most threads a command's work can use: one for a few jets (the threads' barriers
    cost more than the small matrices save), else no limit."""
    n = getattr(args, "n", None)
    return 1 if args.command == "sample" and isinstance(n, int) and n < SMALL_WORK else None


def _bug(err: Exception) -> int:
    """One line for an exception no check anticipated (a bug), its traceback kept in a file."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    fd, path = tempfile.mkstemp(prefix=f"jetflows-traceback-{stamp}-", suffix=".txt")
    with os.fdopen(fd, "w") as handle:
        handle.write("".join(traceback.format_exception(err)))
    print(
        f"jetflows: internal error (a bug; please report it with the traceback): "
        f"{type(err).__name__}: {err}; traceback: {path} (or run again with --debug)",
        file=sys.stderr,
    )
    return EXIT_BUG


def _stopped(kind: type[BaseException]) -> int:
    """One line for a stopped command; the exit status of its signal."""
    if issubclass(kind, Terminated):
        print("jetflows: terminated (SIGTERM); no partial output was written", file=sys.stderr)
        return 128 + signal.SIGTERM
    print("jetflows: interrupted; no partial output was written", file=sys.stderr)
    return 130


if __name__ == "__main__":
    sys.exit(main())
