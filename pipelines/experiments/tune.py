"""Optuna tuning: `jetflows tune --config configs/tune_convae.yaml --trials 20`.

A tuning config names a base pipeline config, one jet class, a search space over any config
value (keys in ``--set`` form: ``loss.alpha``, ``convae.latent_dim`` ...), the objective(s) and
the pruner. A trial trains the ConVAE and the latent flow (or the particle flows) on the
training split, generates as many jets as the validation split holds and scores them with the
true observable EMDs (`pipelines.evaluation.metrics.observable_emds`, each scaled by the
real spread).

Scaling out is Optuna's own: every `jetflows tune` process on the same storage (SQLite under
runs/ by default, any SQLAlchemy URL, e.g. PostgreSQL, read from an environment variable so no
credential sits in a config) joins the same study (``load_if_exists``). Trials send heartbeats;
a trial whose worker died is marked failed by the next worker and re-queued with the same
parameters (`RetryHeartbeatStaleTrialCallback`), so a killed worker loses no trial. Single-objective
studies report the validation loss every epoch (the ConVAE's, then the flow's at steps after
it) and prune (median or Hyperband). A flow-only study trains the ConVAE once per worker.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import optuna
import sqlalchemy.exc
from tqdm import tqdm

from jetflows.classes import canonical_class
from jetflows.errors import UserError
from pipelines.data.jetnet import Jets
from pipelines.evaluation import metrics
from pipelines.io import markdown_table, write_json, write_text
from pipelines.run import stages
from pipelines.run.config import (
    PipelineConfig,
    based_config,
    build,
    check_name,
    class_tree,
    digest,
    pipeline_config,
    to_yaml,
)
from pipelines.run.generators import GENERATORS, build_sampler
from pipelines.run.sample import sampled_jets
from pipelines.run.stages import OnEpoch

_REST = ("pt", "energy", "eta", "phi", "multiplicity")
#: name -> the observables whose scaled EMDs add up to each objective value
OBJECTIVES: dict[str, tuple[tuple[str, ...], ...]] = {
    "emd_sum": (("mass", *_REST),),
    "mass_vs_rest": (("mass",), _REST),
    "mass_angles_energy": (("mass",), ("eta", "phi"), ("pt", "energy")),
}


def objective_values(name: str, emds: dict[str, float]) -> tuple[float, ...]:
    """The values of objective ``name`` from the scaled observable EMDs (emd_<obs>_scaled)."""
    return tuple(
        float(sum(emds[f"emd_{obs}_scaled"] for obs in group)) for group in OBJECTIVES[name]
    )


PRUNERS: dict[str, Callable[[], optuna.pruners.BasePruner]] = {
    "median": functools.partial(optuna.pruners.MedianPruner, n_startup_trials=2),
    "hyperband": optuna.pruners.HyperbandPruner,
    "none": optuna.pruners.NopPruner,
}


@dataclass(frozen=True)
class Param:
    """One search dimension: a float/int range (``log`` for log-uniform) or ``choices``."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int | None = None
    integer: bool = False
    choices: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if self.choices is not None and len(self.choices) == 0:
            raise UserError("a search parameter's choices must name at least one value")
        if self.choices is None and (self.low is None or self.high is None or self.low > self.high):
            raise UserError("a search parameter needs low <= high, or choices")

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        """Draw this parameter for ``trial``."""
        if self.choices is not None:
            return trial.suggest_categorical(name, list(self.choices))
        if self.integer:
            return trial.suggest_int(
                name, int(self.low), int(self.high), step=self.step or 1, log=self.log
            )
        return trial.suggest_float(name, self.low, self.high, log=self.log)


@dataclass(frozen=True)
class TuneConfig:
    """A tuning study (``configs/tune_*.yaml`` mirror it).

    Arguments:
        study: the study name (shared by every worker).
        base: the pipeline YAML the trials start from; ``overrides`` then apply (``--set`` form).
        jet_class: the class tuned on.
        space: {config key: `Param`}; empty: the target's default space
            (`pipelines.run.generators.Generator.space`).
        objective: a name in `OBJECTIVES` (one value: pruning on; several: a Pareto front).
        pruner: a name in `PRUNERS` (single objective only).
        storage_env: the environment variable that holds the storage URL, if any.
        heartbeat: seconds between trial heartbeats; a trial silent for 2x is failed and retried.
        max_retry: retries of a trial whose worker died.
        seed: the TPE sampler's seed.
    """

    study: str = "tune"
    base: str = "configs/quickstart.yaml"
    overrides: tuple[str, ...] = ()
    jet_class: str = "t"
    space: dict[str, Param] = field(default_factory=dict)
    objective: str = "emd_sum"
    pruner: str = "median"
    storage_env: str | None = None
    heartbeat: int = 30
    max_retry: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        check_name(self.study, "study")
        object.__setattr__(self, "jet_class", canonical_class(self.jet_class))  # before any file
        if self.objective not in OBJECTIVES:
            raise UserError(f"unknown objective {self.objective!r}: use {sorted(OBJECTIVES)}")
        if self.pruner not in PRUNERS:
            raise UserError(f"unknown pruner {self.pruner!r}: use one of {sorted(PRUNERS)}")
        if self.heartbeat < 1 or self.max_retry < 0:
            raise UserError("heartbeat must be >= 1 s and max_retry >= 0")

    @property
    def directions(self) -> list[str]:
        """One "minimize" per objective value."""
        return ["minimize"] * len(OBJECTIVES[self.objective])


def load_tune_config(path: str | Path) -> tuple[TuneConfig, dict[str, Any]]:
    """The tuning config and the base pipeline tree (checked: every space key must exist)."""
    cfg, base = based_config(path, TuneConfig, "tuning config")
    pipeline_config(base, {})  # the base itself must be valid, every class's entry included
    target = trial_config(base, cfg.jet_class, {}).target
    if not cfg.space:
        space = {k: build(Param, dict(v), k) for k, v in GENERATORS[target].space.items()}
        cfg = dataclasses.replace(cfg, space=space)
    for key, param in cfg.space.items():  # every key must name a config field
        probe = param.choices[0] if param.choices else param.low
        trial_config(base, cfg.jet_class, {key: int(probe) if param.integer else probe})
    return cfg, base


def trial_config(base: dict[str, Any], jet_class: str, values: dict[str, Any]) -> PipelineConfig:
    """What a trial trains: the base tree's settings of ``jet_class`` (its ``per_class`` entry
    applied), then the trial's ``values`` ({dotted key: value}), which win."""
    return pipeline_config(class_tree(base, jet_class), values)


def best_config(base: dict[str, Any], jet_class: str, values: dict[str, Any]) -> PipelineConfig:
    """A trial's ``values`` as a pipeline config for every class of the base: set for all, as
    tuned on ``jet_class``, and inside that class's ``per_class`` entry when it has one (so they
    win over it there), while another class's own entry still wins for that class."""
    names = [k for k in base.get("per_class") or {} if canonical_class(k) == jet_class]
    inside = {f"per_class.{name}.{k}": v for name in names for k, v in values.items()}
    return pipeline_config(base, {**values, **inside})


#: what SQLite says when two workers create a new study file at the same moment
_CREATION_RACES = ("already exists", "UNIQUE constraint failed", "database is locked")


#: query keys of a storage URL whose values are secrets (password=, sslpassword=, token= ...)
_SECRET_KEY = re.compile(r"pass|pwd|secret|token|key|auth|cred", re.IGNORECASE)


def mask_secrets(url: str, text: str) -> str:
    """``text`` with every credential of storage ``url`` replaced by ***: the password of
    user:password@host and the value of any secret-named query parameter (?password=...).

    Example:
        >>> mask_secrets("postgresql://me:pw1@db/x?sslpassword=pw2", "at me:pw1@db, pw2")
        'at me:***@db, ***'
    """
    parts = urlsplit(url)
    secrets = [
        v for k, v in parse_qsl(parts.query, keep_blank_values=True) if _SECRET_KEY.search(k)
    ]
    if parts.password:
        secrets.append(parts.password)
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def with_installed_driver(url: str) -> str:
    """``postgresql://`` (the form SQLAlchemy and the README use) with the driver that is
    installed: SQLAlchemy 2.1 takes it to mean psycopg 3, and fails ("Failed to import DB
    access module") where only psycopg2 is, as in this package's install. Explicit drivers
    (``postgresql+psycopg://``) and other databases pass unchanged."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        return url
    for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{driver}://{rest}"
    return url


#: what opening a storage raises for a bad URL, a missing driver or an unreachable server
#: (SQLAlchemy's errors, optuna's ValueError for a URL it cannot use); anything else is a bug
STORAGE_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.SQLAlchemyError, ValueError, ImportError, OSError,
)  # fmt: skip


def open_storage(url: str | None, cfg: TuneConfig, default: Path) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats and retries; URL: given, else $storage_env, else SQLite."""
    if url is None and cfg.storage_env:
        url = os.environ.get(cfg.storage_env)
        if not url:
            raise UserError(f"the environment variable {cfg.storage_env} (storage URL) is unset")
    if url is None:
        default.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{default}"
    url = with_installed_driver(url)
    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" since optuna 2.8
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    heartbeat_interval=cfg.heartbeat,
                    grace_period=2 * cfg.heartbeat,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                        cfg.max_retry
                    ),
                    engine_kwargs={"connect_args": {"timeout": 30}} if "sqlite" in url else {},
                )
        except STORAGE_ERRORS as err:  # what a URL, a driver or a server can cause: one line
            # two workers starting together on a new SQLite file race to create its tables
            if any(race in str(err) for race in _CREATION_RACES) and attempt < 4:
                time.sleep(0.5 * (attempt + 1))
                continue
            shown, why = mask_secrets(url, url), mask_secrets(url, str(err).splitlines()[0])
            raise UserError(f"cannot open the storage {shown!r}: {why}") from err
    raise AssertionError("unreachable")


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """A sampler whose random stream is seeded by (seed, trial number): trial numbers are
    unique across the workers of a study, so parallel workers explore different points, while
    a single worker repeats its study exactly. Optuna's own seeding gives every worker started
    with one seed the same stream, so two workers ran identical trials.

    It builds ``make(seed)`` afresh before each trial (TPE keeps no state between trials but
    its random stream; the history it learns from is read from the study).
    """

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        self.make, self.seed = make, seed
        self.inner = make(seed)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        entropy = np.random.SeedSequence([self.seed, trial.number]).generate_state(1)[0]
        self.inner = self.make(int(entropy))
        self.inner.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial
    ) -> dict[str, Any]:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial, search_space: dict[str, Any]
    ) -> dict[str, Any]:
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        param_name: str,
        param_distribution: optuna.distributions.BaseDistribution,
    ) -> Any:
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        state: optuna.trial.TrialState,
        values: Any,
    ) -> None:
        self.inner.after_trial(study, trial, state, values)


# ------------------------------------------------------------------------------------ a trial


class TrialTrainer:
    """A trial's `pipelines.run.generators.Trainer`: trains the ``reported`` stages with
    ``report`` (each stage's epochs numbered on from the configured epoch budgets of the
    reported stages before it: the ConVAE's, then the latent flow's, as one curve for the
    pruner), the others silently, and keeps the last state of each checkpoint file by its stage
    key, so a flow-only study trains the ConVAE (or the jet flow) once per worker."""

    cache: ClassVar[dict[str, tuple[str, dict[str, Any]]]] = {}  # file -> (key, state)

    def __init__(self, report: OnEpoch, reported: tuple[str, ...]) -> None:
        self.report, self.reported, self.offset = report, reported, 0

    def __call__(
        self, name: str, kind: str, key: str, train: Callable[..., dict[str, Any]], **inputs: Any
    ) -> dict[str, Any]:
        cached = self.cache.get(name)
        offset, reported = self.offset, name in self.reported and self.report is not None

        def report(epoch: int, row: dict[str, float], state: dict[str, Any]) -> None:
            self.report(offset + epoch, row, state)

        if cached is not None and cached[0] == key:
            state = cached[1]
        else:
            state = train(resume=None, on_epoch=report if reported else None, progress=False)
            self.cache[name] = (key, state)
        if name in self.reported:
            self.offset += state["train_config"]["epochs"]
        return state


def score(
    cfg: PipelineConfig, jet_class: str, train: Jets, valid: Jets, report: Callable
) -> dict[str, float]:
    """Train on ``train``, sample len(valid) jets as `jetflows sample` would (the same
    generator, masking and kinematics draw; a conditioned generator samples for the validation
    jets' own (pt, eta)), and return their scaled observable EMDs against ``valid``."""
    generator = GENERATORS[cfg.target]
    trained = generator.train(
        cfg,
        jet_class,
        (train, valid),
        digest(cfg.data, jet_class),
        TrialTrainer(report, generator.reported),
    )
    sampler = build_sampler(trained.states, device=cfg.device, options=generator.sampling(cfg))
    kinematics = valid.jet_features[:, :2] if sampler.conditional else None
    gen = sampled_jets(sampler, len(valid), seed=cfg.data.seed, kinematics=kinematics, finite=False)
    emds, _ = metrics.observable_emds(metrics.observables(valid), metrics.observables(gen))
    return {k: float(v) for k, v in emds.items()}


#: trials that count towards --trials: finished, or taken by a worker (running or re-queued)
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
RUNNING = optuna.trial.TrialState.RUNNING
TAKEN = (*FINISHED, RUNNING, optuna.trial.TrialState.WAITING)


class Surplus(Exception):
    """A trial started after the study's ``--trials`` were all taken by other workers."""


class TrialObjective:
    """The Optuna objective: one trial = one config from the space, trained and scored.

    A trial whose lower-numbered trials (trial numbers are handed out in order by the
    storage) already take up ``limit`` is a surplus one: it is marked and ends at once, so
    workers racing for the last trial never run more than ``--trials``.
    """

    def __init__(
        self, cfg: TuneConfig, base: dict[str, Any], data: tuple[Jets, Jets], limit: int
    ) -> None:
        self.cfg, self.base, self.data, self.limit = cfg, base, data, limit
        self.surplus = False  # the last trial was a surplus one (its failure is not news)
        self.current: int | None = None  # the trial this worker runs now
        self.stopped = False  # it was interrupted (Optuna's "failed" warning is not news)

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        self.current = trial.number
        try:
            return self._run(trial)
        except KeyboardInterrupt:
            self.stopped = True
            raise

    def _run(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        taken = trial.study.get_trials(deepcopy=False, states=TAKEN)
        self.surplus = sum(t.number < trial.number for t in taken) >= self.limit
        if self.surplus:
            trial.set_user_attr("surplus", True)
            raise Surplus(f"trial {trial.number}: the study's {self.limit} trials are taken")
        trial.set_user_attr("worker", os.getpid())
        values = {key: p.suggest(trial, key) for key, p in self.cfg.space.items()}
        pipeline = trial_config(self.base, self.cfg.jet_class, values)
        single = len(self.cfg.directions) == 1

        def report(epoch: int, row: dict[str, float], state: dict[str, Any]) -> None:
            if single:  # Optuna prunes single-objective studies only
                trial.report(row["valid_loss"], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        emds = score(pipeline, self.cfg.jet_class, *self.data, report)
        for name, value in emds.items():
            trial.set_user_attr(name, value)
        result = objective_values(self.cfg.objective, emds)
        return result[0] if single else result


# -------------------------------------------------------------------------------- a study


def tune(
    config_path: str | Path,
    *,
    trials: int,
    storage: str | None = None,
    storage_env: str | None = None,
    study_name: str | None = None,
    root: str | Path = "runs/tune",
    progress: bool = True,
) -> Path:
    """Run (or join) a study until it holds ``trials`` finished trials; write its results.

    ``trials`` is the study's total, over every worker and every call: a worker starts a trial
    only while fewer than ``trials`` are finished (complete or pruned) or running, then waits
    for the others' running trials, so it returns when the study holds exactly ``trials``
    finished ones. A trial that fails (NaN) does not count and is replaced; a worker runs at
    most ``trials`` trials itself (so a study whose every trial fails still ends).

    ``storage``: an SQLAlchemy URL; ``storage_env``: the variable holding one (overrides the
    config's). Returns the study's directory ``root/<study>`` with results.json, results.md
    and best.yaml (single objective) or pareto/<trial>.yaml (multi-objective).
    """
    if trials < 1:
        raise UserError(f"--trials must be >= 1, got {trials}")
    if storage and storage_env:
        raise UserError("pass --storage or --storage-env, not both (which one would win?)")
    cfg, base = load_tune_config(config_path)
    if storage_env:
        cfg = dataclasses.replace(cfg, storage_env=storage_env)
    name = check_name(study_name, "--study") if study_name else cfg.study
    out = Path(root) / name
    rdb = open_storage(storage, cfg, Path(root) / f"{name}.db")
    study = optuna.create_study(
        study_name=name,
        storage=rdb,
        load_if_exists=True,
        directions=cfg.directions,
        sampler=TrialSeededSampler(lambda seed: optuna.samplers.TPESampler(seed=seed), cfg.seed),
        pruner=PRUNERS[cfg.pruner](),
    )
    pipeline = trial_config(base, cfg.jet_class, {})
    train, valid, _ = stages.split_jets(
        stages.class_jets(pipeline, cfg.jet_class, out / "data", progress), pipeline
    )
    objective = TrialObjective(cfg, base, (train, valid), trials)
    optuna_log = logging.getLogger("optuna.study._optimize")
    quiet = functools.partial(_not_surplus, objective)  # optuna would warn of a failed trial
    optuna_log.addFilter(quiet)
    try:
        _run_worker(study, objective, trials, cfg.heartbeat, progress)
    finally:
        optuna_log.removeFilter(quiet)
    write_results(study, cfg, base, out)
    return out


def _run_worker(
    study: optuna.Study, objective: TrialObjective, trials: int, wait: float, progress: bool
) -> None:
    """Run trials until the study holds ``trials`` finished ones (at most ``trials`` here).
    While the rest are running in other workers, wait (polling every ``wait`` s) for them to
    finish or, if their worker died, to go stale and be re-queued: when a worker returns, the
    study is complete and the results it writes are the whole study's."""
    attempts = 0
    with tqdm(total=trials, desc=study.study_name, unit="trial", disable=not progress) as bar:
        while True:
            with warnings.catch_warnings():  # "experimental" since optuna 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # a dead worker's trial is failed (and re-queued) before it could count
                optuna.storages.fail_stale_trials(study)
            counted = study.get_trials(deepcopy=False, states=(*FINISHED, RUNNING))
            bar.n = sum(t.state in FINISHED for t in counted)
            bar.refresh()
            if bar.n >= trials:
                return
            if len(counted) >= trials:  # the last ones are running elsewhere
                time.sleep(wait)
                continue
            if attempts >= trials:  # this worker's trials all failed (NaN): stop trying
                return
            try:
                study.optimize(objective, n_trials=1, catch=(FloatingPointError, Surplus))
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the trial is not lost
                _requeue(study, objective.current)
                raise
            attempts += 0 if objective.surplus else 1  # a surplus trial never ran


def _requeue(study: optuna.Study, number: int | None) -> None:
    """Queue the interrupted trial ``number`` again, as Optuna's RetryFailedTrialCallback does
    for a dead worker's (Optuna marks an interrupted trial FAIL and never runs it again)."""
    from optuna.trial import TrialState, create_trial

    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None or trial.state != TrialState.FAIL or trial.user_attrs.get("surplus"):
        return
    study.add_trial(
        create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={k: v for k, v in trial.user_attrs.items() if k != "worker"},
            system_attrs={"failed_trial": trial.number},
        )
    )


def _not_surplus(objective: TrialObjective, record: logging.LogRecord) -> bool:
    """Optuna's failed-trial warning is dropped for a surplus trial (not news) and for an
    interrupted one (its traceback came before our one line; the trial is queued again)."""
    return not objective.surplus and not objective.stopped


def write_results(study: optuna.Study, cfg: TuneConfig, base: dict[str, Any], out: Path) -> None:
    """results.json (every trial), results.md, and ready-to-run pipeline YAML of the best."""
    rows = [
        {
            "number": t.number,
            "state": t.state.name,
            "values": t.values,
            "params": t.params,
            "retried_from": t.system_attrs.get("failed_trial"),
        }
        for t in study.get_trials(deepcopy=False)
        if not t.user_attrs.get("surplus")  # never ran: see TrialObjective
    ]
    best = study.best_trials if any(r["state"] == "COMPLETE" for r in rows) else []
    best_numbers = [t.number for t in best]
    write_json(
        out / "results.json", {"objective": cfg.objective, "trials": rows, "best": best_numbers}
    )
    for trial in best:
        name = "best.yaml" if len(cfg.directions) == 1 else f"pareto/{trial.number}.yaml"
        # its own run name: `jetflows pipeline` with it must not overwrite the base's run
        run_name = f"{study.study_name}_trial{trial.number}"
        config = best_config(base, cfg.jet_class, {**trial.params})
        config = dataclasses.replace(config, name=run_name)
        header = f"# study {study.study_name}, trial {trial.number}: {trial.values}\n"
        write_text(out / name, header + to_yaml(config))
    lines = [
        f"# Study {study.study_name}: objective {cfg.objective}",
        "",
        f"{len(rows)} trials; best (Pareto front for several objectives):",
        "",
        *markdown_table(
            ["trial", "values", "params"],
            ([t.number, ", ".join(f"{v:.4g}" for v in t.values), t.params] for t in best),
        ),
    ]
    write_text(out / "results.md", "\n".join(lines) + "\n")
