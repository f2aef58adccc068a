"""The pipeline: per class, data -> ConVAE -> latents -> flow -> generated jets -> evaluation.

``runs/<name>/`` holds ``config.yaml`` (resolved), ``pipeline.log`` (what ran, what was skipped,
how long each stage took), ``summary.md``/``summary.json`` (one row per
class, every metric beside its truth floor) and one directory per class with ``data.hdf5``
(Pythia jets, when generated), ``convae.pt``, ``flow.pt`` (+ ``jet_flow.pt``),
``history.json``, ``generated.hdf5``, ``real_test.hdf5``, ``metrics.json``, ``report.md`` and
``plots/`` (a set flow also ``guide.pt`` when ``set_flow.guide_epochs`` > 0, and
``calibration.json`` with ``calibrate.settings``: the guidance chosen on the validation jets,
`pipelines.run.calibrate`).

Resumption: every stage has an identity (a hash of the config parts it depends on, chained to
the stages before it), recorded in ``stages.json`` once its output is complete. A stage whose
output exists with the same identity is skipped; training stages also write ``*.last.pt`` after
every epoch and resume from it, so a killed pipeline re-run continues where it stopped.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import get_num_threads as get_threads

from jetflows import threads
from jetflows.classes import canonical_class
from jetflows.distributed import is_main, main_first, rank_world, resolve_device
from jetflows.errors import UserError
from pipelines.data.jetnet import Jets, read_jetnet_file, stored, write_jetnet_file
from pipelines.evaluation.reconstruction import markdown as reconstruction_markdown
from pipelines.evaluation.reconstruction import reconstruction_plots
from pipelines.evaluation.report import (
    STABLE_NAMES,
    stable_cell,
    summary_figure,
    training_curves,
)
from pipelines.io import folder_lock, markdown_table, read_json, write_json, write_text
from pipelines.run import calibrate
from pipelines.run.checkpoints import load_checkpoint, provenance, save_checkpoint
from pipelines.run.config import (
    PipelineConfig,
    digest,
    flat_keys,
    load_config,
    to_dict,
    to_yaml,
)
from pipelines.run.generators import GENERATORS, build_sampler
from pipelines.run.sample import BATCH_SIZE, generated_attributes, sampled_jets
from pipelines.run.stages import class_jets, convae_of, jetnet_source, split_jets

LOG = logging.getLogger("jetflows.pipeline")


class Stages:
    """``stages.json`` of a class directory: which stage outputs are complete, for which config.
    Every decision (skipped, done in how long) goes to the ``jetflows.pipeline`` log; the
    training stages' histories of this run are collected in ``histories`` (history.json)."""

    def __init__(self, directory: Path) -> None:
        self.path, self.name = directory / "stages.json", directory.name
        self.done: dict[str, str] = read_json(self.path) if self.path.is_file() else {}
        self.clock = time.perf_counter()
        self.histories: dict[str, list[dict[str, float]]] = {}

    def complete(self, stage: str, key: str, *outputs: Path) -> bool:
        done = self.done.get(stage) == key and all(p.exists() for p in outputs)
        if done:
            LOG.info("%s: %s up to date (config %s), skipped", self.name, stage, key)
        return done

    def mark(self, stage: str, key: str) -> None:
        self.done[stage] = key
        if is_main():  # data-parallel: one process writes
            write_json(self.path, self.done)
        now = time.perf_counter()
        LOG.info(
            "%s: %s done in %.1f s (config %s; peak memory so far %.2f GB)",
            self.name,
            stage,
            now - self.clock,
            key,
            threads.peak_memory_gb(),
        )
        self.clock = now


# ------------------------------------------------------------------------------- per class


@dataclass
class ClassRun:
    """One class's run: its config, folder, stage record and jets (train, valid, test)."""

    cfg: PipelineConfig
    jet_class: str
    directory: Path
    stages: Stages
    progress: bool
    train: Jets
    valid: Jets
    test: Jets

    @property
    def parts(self) -> tuple[Jets, Jets]:
        """The (train, valid) jets the models are fitted on."""
        return self.train, self.valid

    def trained(
        self, name: str, kind: str, key: str, train: Callable[..., dict[str, Any]], **inputs: Any
    ) -> dict[str, Any]:
        """The state of training stage ``name`` (convae.pt ...): from its checkpoint when
        complete, else ``train(resume=, on_epoch=, progress=)`` (resumed from
        ``<name>.last.pt`` when it matches) saved with its provenance (the class and
        ``inputs``: file name -> the state it was fitted on), the partial checkpoint then
        removed."""
        path, stages = self.directory / name, self.stages
        record = provenance(self.jet_class, **inputs)
        if stages.complete(path.stem, key, path):
            state = load_checkpoint(path, kind)
            if state.get("provenance") == record:
                stages.histories[path.stem] = state["history"]
                return state
            # its config is unchanged but its inputs are not (a ConVAE retrained after its
            # file was lost): a model fitted on another first stage must be fitted again
            LOG.info(
                "%s: %s was fitted on other inputs, training it again", self.jet_class, path.stem
            )
        last = path.with_suffix(".last.pt")
        resume = None
        if last.is_file():
            try:
                state = load_checkpoint(last, kind)
            except ValueError as err:  # e.g. another target's partial flow.pt
                LOG.info("%s: not resuming %s (%s)", self.jet_class, path.stem, err)
                state = {}
            same = state.get("stage_key") == key and state.get("provenance") == record
            resume = state if same else None
            if resume is not None:
                LOG.info(
                    "%s: resuming %s after epoch %d", self.jet_class, path.stem, state["epoch"]
                )

        def on_epoch(epoch: int, row: dict[str, float], state: dict[str, Any]) -> None:
            save_checkpoint(last, {**state, "stage_key": key, "provenance": record})

        try:
            state = train(resume=resume, on_epoch=on_epoch, progress=self.progress)
        except ValueError as err:
            if resume is None:
                raise
            # e.g. a partial checkpoint of an older jetflows whose recorded settings differ
            LOG.info(
                "%s: cannot resume %s (%s), training from scratch", self.jet_class, path.stem, err
            )
            state = train(resume=None, on_epoch=on_epoch, progress=self.progress)
        state = {**state, "stage_key": key, "provenance": record}
        if is_main():
            save_checkpoint(path, state)
        stages.mark(path.stem, key)
        stages.histories[path.stem] = state["history"]
        if is_main():  # only now: a kill before the mark resumes from here, at the final epoch
            last.unlink(missing_ok=True)
        return state


def _reconstruction_stage(run: ClassRun, key: str, vae_state: dict[str, Any]) -> dict[str, Any]:
    """reconstruction.json and its plots: the trained ConVAE on the held-out test jets."""
    path = run.directory / "reconstruction.json"
    if run.stages.complete("reconstruction", key, path):
        return read_json(path)
    vae, norm = convae_of(vae_state, resolve_device(run.cfg.device))
    result = reconstruction_plots(vae, norm, run.test, run.directory)
    write_json(path, result)
    run.stages.mark("reconstruction", key)
    return result


def _generate_stage(
    run: ClassRun, key: str, states: dict[str, dict[str, Any]]
) -> tuple[Jets, bool]:
    """n_generate jets from the trained models in memory, written to generated.hdf5 (with the
    real test jets beside them in real_test.hdf5) for the record; read back only when the
    stage was done before. Returns (the jets, whether they are new)."""
    generated = run.directory / "generated.hdf5"
    real = run.directory / "real_test.hdf5"
    if run.stages.complete("generate", key, generated, real):
        return read_jetnet_file(generated), False
    write_jetnet_file(real, run.test, {"jet_class": run.jet_class, "split": "test"})
    sampler = build_sampler(states, device=run.cfg.device)
    seed = run.cfg.data.seed
    jets = sampled_jets(sampler, run.cfg.n_generate, seed=seed, progress=run.progress)
    attrs = {"run": str(run.directory.parent), "seed": seed, "batch_size": BATCH_SIZE}
    if sampler.model:
        attrs["model"] = sampler.model
        LOG.info("%s: generated with the %s", run.jet_class, sampler.model)
    write_jetnet_file(generated, jets, {**generated_attributes(run.jet_class), **attrs})
    run.stages.mark("generate", key)
    return stored(jets, generated), True


def _calibration_stage(
    run: ClassRun, key: str, states: dict[str, dict[str, Any]], sampling: dict[str, Any]
) -> dict[str, Any]:
    """calibration.json: the sampling options chosen on the validation jets
    (`pipelines.run.calibrate`)."""
    path = run.directory / "calibration.json"
    if run.stages.complete("calibrate", key, path):
        return _checked_calibration(read_json(path), run.cfg.calibrate.settings, path)
    result = calibrate.calibrate(
        states,
        sampling,
        run.cfg.calibrate,
        valid=run.valid,
        train=run.train,
        seed=run.cfg.data.seed,
        device=run.cfg.device,
        progress=run.progress,
    )
    write_json(path, result)
    run.stages.mark("calibrate", key)
    LOG.info("%s: sampling with %s (chosen on validation jets)", run.jet_class, result["chosen"])
    return result


def _checked_calibration(
    result: Any, settings: tuple[dict[str, Any], ...], path: Path
) -> dict[str, Any]:
    """A calibration.json read back on a rerun, checked: its ``chosen`` is one of the config's
    candidate ``settings`` (a string gave exit 1; a setting never tried was written into
    flow.pt). ValueError naming the file otherwise."""
    chosen = result.get("chosen") if isinstance(result, dict) else None
    candidates = [dict(s) for s in settings]
    if not isinstance(chosen, dict) or chosen not in candidates:
        raise UserError(
            f"{path}: its chosen setting {chosen!r} is not one of the config's "
            "calibrate.settings (edited by hand?); delete it and rerun to choose again"
        )
    return result


def _keep_sampling(
    path: Path, states: dict[str, dict[str, Any]], sampled: dict[str, dict[str, Any]]
) -> None:
    """Store the config's sampling options (a set flow's solver, steps, guidance) in the
    flow's checkpoint at ``path`` when they differ from those it holds, so that ``jetflows
    sample`` draws as the pipeline's evaluation did after options changed on a trained model
    (the weights are unchanged)."""
    before, after = states["flow.pt"], sampled["flow.pt"]
    # the options replace entries; what they leave is the same object (weights included)
    if is_main() and any(v is not before.get(k) and v != before.get(k) for k, v in after.items()):
        save_checkpoint(path, after)


def _remove_stale(path: Path, why: str) -> None:
    """Delete a class folder's ``path``, if there, that the config no longer makes (logged)."""
    if path.is_file():
        path.unlink()
        LOG.info("%s: %s removed (%s)", path.parent.name, path.name, why)


def run_class(
    cfg: PipelineConfig, jet_class: str, directory: Path, *, progress: bool = True
) -> dict[str, Any]:
    """Every stage for one class in ``directory``; returns its metrics.json contents."""
    from pipelines.evaluation.evaluate import evaluate_to_dir, read_metrics

    directory.mkdir(parents=True, exist_ok=True)
    with main_first():  # data-parallel: rank 0 generates, the others then read the file
        jets = class_jets(cfg, jet_class, directory, progress and is_main())
    run = ClassRun(cfg, jet_class, directory, Stages(directory), progress, *split_jets(jets, cfg))
    generator = GENERATORS[cfg.target]
    trained = generator.train(cfg, jet_class, run.parts, digest(cfg.data, jet_class), run.trained)
    if not is_main():  # data-parallel: the other ranks only help to train
        return {}
    for name, _ in generator.companions:  # e.g. a guide the config no longer trains
        if name not in trained.states:
            _remove_stale(directory / name, "this config trains none")
    reconstruction = (
        _reconstruction_stage(run, trained.keys["convae.pt"], trained.states["convae.pt"])
        if generator.reconstructs
        else None
    )
    # a set flow's ODE (solver, steps) samples only: new steps, new jets, the same model; the
    # other targets have no such options and keep their keys
    sampling, states = generator.sampling(cfg), trained.states
    # models sampled beside the flow (a set flow's guide) make other jets when retrained
    beside = [trained.keys[name] for name, _ in generator.companions if name in trained.keys]
    calibration, calibrated = None, []
    if cfg.calibrate.settings:  # the config's check: a generator with sampling options
        # the candidates as drawn (an option every candidate sets is not the config's)
        drawn = [{**sampling, **setting} for setting in cfg.calibrate.settings]
        what = (cfg.calibrate.observables, cfg.calibrate.n_jets, cfg.data.seed)
        calibrated = [digest(trained.keys["flow.pt"], *beside, drawn, *what)]
        calibration = _calibration_stage(run, calibrated[0], trained.states, sampling)
        sampling = {**sampling, **calibration["chosen"]}
    else:  # a choice this config no longer makes
        _remove_stale(directory / "calibration.json", "this config calibrates nothing")
    if sampling and generator.options is not None:
        states = generator.options(trained.states, sampling)  # what the jets are drawn with
        _keep_sampling(directory / "flow.pt", trained.states, states)
    added = generator.added_sampling
    keyed = {k: v for k, v in sampling.items() if k not in added or v != added[k]}
    generate = (trained.keys["flow.pt"], *beside, cfg.n_generate, *([keyed] if keyed else []))
    distilled = None
    if generator.distil is not None:  # a model distilled from the one sampled (a student)
        teacher = digest(trained.keys["flow.pt"], *beside, keyed)
        distilled = generator.distil(cfg, jet_class, run.parts, states, teacher, run.trained)
        if distilled is None:
            _remove_stale(directory / "student.pt", "this config distils none")
    if distilled is not None:  # sampled in its place, here and by jetflows sample
        states = {**states, **distilled.states}
        generate = (*generate, *distilled.keys.values())
    # after every training stage, the distilled one included
    write_json(directory / "history.json", run.stages.histories)
    curves = training_curves(run.stages.histories, directory / "plots")
    keys = {"generate": digest(*generate)}
    generated, regenerated = _generate_stage(run, keys["generate"], states)
    # the report shows the calibration: a new one (even choosing the same) is reported again
    keys["evaluate"] = digest(keys["generate"], cfg.evaluate, *calibrated)
    metrics = directory / "metrics.json"
    # new jets (e.g. a deleted generated.hdf5 redrawn by newer code) are always scored again
    done = run.stages.complete("evaluate", keys["evaluate"], metrics, directory / "report.md")
    if done and not regenerated:
        return read_metrics(metrics)
    results = evaluate_to_dir(
        run.test,
        generated,
        directory,
        jet_class=jet_class,
        cfg=cfg.evaluate,
        progress=progress,
        inputs={"real": directory / "real_test.hdf5", "gen": directory / "generated.hdf5"},
        extra={
            **({"reconstruction": reconstruction} if reconstruction else {}),
            **({"calibration": calibration} if calibration else {}),
        }
        or None,
        extra_report=[
            *(reconstruction_markdown(reconstruction) if reconstruction else ()),
            *(calibrate.markdown(calibration) if calibration else ()),
            *training_markdown(curves),
        ],
    )
    run.stages.mark("evaluate", keys["evaluate"])
    return results


# ------------------------------------------------------------------------------------ a run


HEADLINE = ("emd_sum", "emd_mass", "w1m", "w1p", "w1efp", "fpd", "kpd", "fpnd", "cov", "mmd")
#: The run's summary.png: ratio to the floor per metric and class (FPD/KPD left out: their
#: floors are ~0, so their ratios say nothing).
SUMMARY_FIGURE = (
    "w1m",
    "w1p",
    "w1efp",
    "emd_mass_scaled",
    "emd_multiplicity_scaled",
    "emd_tau21_scaled",
    "emd_tau32_scaled",
    "emd_d2_scaled",
    "emd_sum",
    "fpnd",
    "cov",
    "mmd",
)


def training_markdown(curves: list[Path]) -> list[str]:
    """The report.md section linking the training curves."""
    if not curves:
        return []
    return ["## Training", "", *(f"![{p.stem}](plots/{p.name})" for p in curves)]


def _cell(entry: dict[str, float] | None) -> str:
    return "-" if entry is None else f"{entry['value']:.3g} ({entry['floor']:.3g})"


def summary_markdown(name: str, results: dict[str, dict[str, Any]]) -> str:
    """Headline metrics as one row per class, then every metric as one row per metric; each
    cell ``value (truth floor)``."""
    everything = sorted({k for r in results.values() for k in r["metrics"]})
    headline = [k for k in HEADLINE if k in everything]
    classes = list(results)
    lines = [
        f"# Run {name}: generated vs real test jets (truth floor in brackets)",
        "",
        "Each cell: the metric of generated against real test jets and, in brackets, the same "
        "metric between two disjoint real samples of the same size: what a perfect generator "
        "would score. Lower is better (COV: higher); value ~ floor is as good as real data.",
        "",
        *markdown_table(
            ["class", "jets/sample", *headline],
            (
                [c, r["n_jets"], *(_cell(r["metrics"].get(k)) for k in headline)]
                for c, r in results.items()
            ),
        ),
        "",
        *stable_summary(results),
        "## Every metric (one draw)",
        "",
        *markdown_table(
            ["metric", *classes],
            ([k, *(_cell(results[c]["metrics"].get(k)) for c in classes)] for k in everything),
        ),
        *reconstruction_summary(results),
        *calibration_summary(results),
    ]
    return "\n".join(lines) + "\n"


def stable_summary(results: dict[str, dict[str, Any]]) -> list[str]:
    """summary.md's stable ratios: one row per class, each figure with its 10-90% band."""
    rows = {c: r["stable"] for c, r in results.items() if r.get("stable")}
    if not rows:
        return []
    names = [k for k in STABLE_NAMES if any(k in s for s in rows.values())]
    sizes = next(iter(rows.values()))["sizes"]
    return [
        "## Stable ratios to the truth floor (decide by these)",
        "",
        f"Over {sizes['draws']} splits of the real test jets into halves of {sizes['n']} and the "
        "generated samples of that size (each class's report.md says how many); in brackets the "
        "10-90% band of single-draw ratios.",
        "",
        *markdown_table(
            ["class", *(STABLE_NAMES[k] for k in names)],
            ([c, *(stable_cell(s.get(k)) for k in names)] for c, s in rows.items()),
        ),
        "",
    ]


def calibration_summary(results: dict[str, dict[str, Any]]) -> list[str]:
    """A summary.md section: the sampling options each class chose on its validation jets
    (only for runs that calibrate; each class's report.md has every candidate)."""
    rows = [(c, r["calibration"]) for c, r in results.items() if r.get("calibration")]
    if not rows:
        return []
    return [
        "",
        "## Sampling options chosen on the validation jets",
        "",
        f"Per class, the setting with {calibrate.CRITERION} lowest on the validation jets "
        "(each class's report.md lists every candidate); the test jets above were drawn with it.",
        "",
        *markdown_table(
            ["class", "chosen", "worst W1 / floor (validation)", "candidates"],
            (
                [
                    c,
                    ", ".join(f"{k} {v:g}" for k, v in cal["chosen"].items()),
                    calibrate.cell(
                        next(r["worst"] for r in cal["settings"] if r["setting"] == cal["chosen"])
                    ),
                    len(cal["settings"]),
                ]
                for c, cal in rows
            ),
        ),
    ]


def reconstruction_summary(results: dict[str, dict[str, Any]]) -> list[str]:
    """A summary.md section: per class, does the ConVAE keep the mass and the prongs? (Only
    for targets with a ConVAE, and reconstruction.json files that have the substructure.)"""
    rows = [
        (c, r["reconstruction"])
        for c, r in results.items()
        if "w1" in (r.get("reconstruction") or {})
    ]
    if not rows:
        return []
    subs = ("tau21", "tau32", "d2")
    return [
        "",
        "## ConVAE reconstruction of held-out jets: are the prongs kept?",
        "",
        "Pearson r (rank r) of input vs reconstruction (target >= 0.8 for tau21, tau32, D2; "
        ">= 0.9 for the mass; D2's long tail can hold Pearson's r down where the rank r is high) "
        "and W1 of reconstructions against inputs over its floor (target <= 3): a "
        "generator can only generate the prongs its ConVAE reconstructs.",
        "",
        *markdown_table(
            [
                "class",
                "r(mass)",
                *(f"r({k})" for k in subs),
                "tau32 median input / rec.",
                *(f"W1 {k} (x floor)" for k in subs),
            ],
            (
                [
                    c,
                    *(
                        f"{rec['correlation'][k]:.2f} ({rec['rank_correlation'][k]:.2f})"
                        for k in ("mass", *subs)
                    ),
                    f"{rec['median']['tau32']['input']:.2f} / "
                    f"{rec['median']['tau32']['reconstruction']:.2f}",
                    *(f"{rec['w1'][k]['ratio']:.1f}" for k in subs),
                ]
                for c, rec in rows
            ),
        ),
    ]


def _every_class(
    cfg: PipelineConfig, run: Path, results: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """``results`` and every other class the run folder has metrics for, in the config's
    class order then by name: a run of a class subset keeps the others in the summary."""
    from pipelines.evaluation.evaluate import read_metrics

    found = {d.name for d in run.iterdir() if (d / "metrics.json").is_file()} | set(results)
    order = [c for c in cfg.classes if c in found] + sorted(found - set(cfg.classes))
    return {
        c: results[c] if c in results else read_metrics(run / c / "metrics.json") for c in order
    }


def _remove_empty(run: Path, created: bool) -> None:
    """After a failed run: remove class folders left empty and, when this call created the run
    folder and nothing but its config and log is in it, the run folder. Anything trained stays
    (a rerun resumes from it)."""
    for folder in run.iterdir():
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    if created and {p.name for p in run.iterdir()} <= {"config.yaml", "pipeline.log", ".lock"}:
        shutil.rmtree(run)


def run_pipeline(
    cfg: PipelineConfig,
    *,
    root: str | Path = "runs",
    classes: tuple[str, ...] | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Run every class of ``cfg`` (or ``classes``) into ``root/<name>``; returns that path.

    The run folder is locked while it runs (`pipelines.io.folder_lock`: a second pipeline on
    it is refused). A folder made with other settings is refused, naming the keys that differ,
    unless ``overwrite``: then stages whose inputs changed are redone with these settings.

    Raises:
        ValueError: the folder is in use, or holds a run with other settings.
    """
    classes = tuple(canonical_class(c) for c in classes) if classes else cfg.classes
    for jet_class in classes:  # a missing or short JetNet file fails before anything is written
        jetnet_source(cfg.for_class(jet_class), jet_class)
    run = Path(root) / cfg.name
    created = not run.exists()
    run.mkdir(parents=True, exist_ok=True)
    main = is_main()
    with folder_lock(run) if main else contextlib.nullcontext():
        if main:
            if not created:
                check_same_settings(run, cfg, overwrite=overwrite)
            text, path = to_yaml(cfg), run / "config.yaml"
            if not path.is_file() or path.read_text() != text:  # the same settings: untouched
                write_text(path, text)
        return _run_classes(cfg, run, classes, created=created, progress=progress)


def check_same_settings(run: Path, cfg: PipelineConfig, *, overwrite: bool) -> None:
    """Raise ValueError if ``run/config.yaml`` holds other settings than ``cfg`` (the device
    aside: it changes where, not what) and ``overwrite`` is off; the message names the keys."""
    path = run / "config.yaml"
    if overwrite or not path.is_file():
        return
    before, now = flat_keys(to_dict(load_config(path))), flat_keys(to_dict(cfg))
    changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    changed = [k for k in changed if k != "device"]
    if changed:
        shown = ", ".join(f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise UserError(
            f"{run} was run with other settings ({shown}{more}): pass --overwrite to redo it "
            "with these, or choose another name"
        )


def _run_classes(
    cfg: PipelineConfig, run: Path, classes: tuple[str, ...], *, created: bool, progress: bool
) -> Path:
    """`run_pipeline`'s body, in the locked folder."""
    main = is_main()
    handler = logging.FileHandler(run / "pipeline.log") if main else logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    failed = True
    choice = threads.applied()
    LOG.info("%s: %s", cfg.name, choice.describe() if choice else f"torch threads: {get_threads()}")
    try:
        results = {}
        for i, jet_class in enumerate(classes):
            if progress and main:
                print(f"== {cfg.name}: class {jet_class} ({i + 1}/{len(classes)})", flush=True)
            LOG.info("%s: class %s (%d process(es))", cfg.name, jet_class, rank_world()[1])
            mine = cfg.for_class(jet_class)
            results[jet_class] = run_class(mine, jet_class, run / jet_class, progress=progress)
        failed = False
    finally:
        LOG.removeHandler(handler)
        handler.close()
        if failed and main:  # Ctrl-C included: no empty folders to mistake for a run
            _remove_empty(run, created)
    if not main:
        return run
    results = _every_class(cfg, run, results)
    write_json(run / "summary.json", {c: r["metrics"] for c, r in results.items()})
    figure = summary_figure(results, SUMMARY_FIGURE, run / "summary.png")
    own = "".join(
        f"- class {c} ran with {', '.join(f'{k}={v}' for k, v in cfg.per_class[c].items())}\n"
        for c in results
        if cfg.per_class.get(c)
    )
    own = f"\n## Settings of one class (per_class)\n\n{own}" if own else ""
    write_text(
        run / "summary.md",
        summary_markdown(cfg.name, results) + f"{own}\n![summary]({figure.name})\n",
    )
    return run
