"""The pipeline: per class, data -> ConVAE -> latents -> flow -> generated jets -> evaluation.

``runs/<name>/`` holds ``config.yaml`` (resolved), ``pipeline.log`` (what ran, what was skipped,
how long each stage took), ``summary.md``/``summary.json`` (one row per
class, every metric beside its truth floor) and one directory per class with ``data.hdf5``
(Pythia jets, when generated), ``convae.pt``, ``flow.pt`` (+ ``jet_flow.pt``),
``history.json``, ``generated.hdf5``, ``real_test.hdf5``, ``metrics.json``, ``report.md`` and
``plots/``.

Resumption: every stage has an identity (a hash of the config parts it depends on, chained to
the stages before it), recorded in ``stages.json`` once its output is complete. A stage whose
output exists with the same identity is skipped; training stages also write ``*.last.pt`` after
every epoch and resume from it, so a killed pipeline re-run continues where it stopped.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convae.model import ConVAE
from convae.train import CHECKPOINT_KIND as CONVAE_KIND
from convae.train import fit as fit_convae
from convae.train import model_from_state
from flows import latent, particle
from flows.models import FlowConfig, build_flow
from flows.train import CHECKPOINT_KIND as FLOW_KIND
from flows.train import FlowData
from flows.train import fit as fit_flow
from jetflows.classes import canonical_class
from jetflows.distributed import is_main, main_first, rank_world, resolve_device
from jetflows.normalize import Normalization, fit_normalization
from jetflows.training import TrainConfig
from pipelines.checkpoints import load_checkpoint, provenance, save_checkpoint
from pipelines.config import PipelineConfig, digest, to_dict, to_yaml
from pipelines.data import (
    Jets,
    jetnet_file_size,
    locate_jetnet_file,
    read_jetnet_file,
    write_jetnet_file,
)
from pipelines.io import atomic_path, write_json
from pipelines.reconstruction import markdown as reconstruction_markdown
from pipelines.reconstruction import reconstruction_plots
from pipelines.report import summary_figure, training_curves
from pipelines.sample import kinematics_context, kinematics_norm

LOG = logging.getLogger("jetflows.pipeline")
KINEMATICS_POOL = 5000  # training (pt, eta) pairs kept in flow.pt for the sampler's jet_features


class Stages:
    """``stages.json`` of a class directory: which stage outputs are complete, for which config.
    Every decision (skipped, done in how long) goes to the ``jetflows.pipeline`` log; the
    training stages' histories of this run are collected in ``histories`` (history.json)."""

    def __init__(self, directory: Path) -> None:
        self.path, self.name = directory / "stages.json", directory.name
        self.done: dict[str, str] = json.loads(self.path.read_text()) if self.path.is_file() else {}
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
        LOG.info("%s: %s done in %.1f s (config %s)", self.name, stage, now - self.clock, key)
        self.clock = now


# --------------------------------------------------------------------------------------- data


def jetnet_source(cfg: PipelineConfig, jet_class: str) -> Path | None:
    """The JetNet file the class's jets come from (None: Pythia8), checked to hold n_jets jets
    from its header alone, so a short file fails before anything is trained.

    Raises:
        FileNotFoundError: source "jetnet" and no file.
        ValueError: the file holds fewer than data.n_jets jets, or is not a JetNet file.
    """
    d = cfg.data
    if d.source == "pythia":
        return None
    try:
        path = locate_jetnet_file(jet_class, d.data_dir, d.num_particles)
    except FileNotFoundError:
        if d.source == "jetnet":
            raise
        return None
    size = jetnet_file_size(path)
    if size < d.n_jets:
        raise ValueError(
            f"{path} holds {size} jets but data.n_jets asks for {d.n_jets}: lower data.n_jets "
            "or use a larger file"
        )
    return path


def class_jets(cfg: PipelineConfig, jet_class: str, directory: Path, progress: bool) -> Jets:
    """n_jets jets of the class: the JetNet file if present (auto/jetnet), else Pythia8."""
    d = cfg.data
    path = jetnet_source(cfg, jet_class)
    if path is not None:
        jets = read_jetnet_file(path, d.num_particles)
        order = np.random.default_rng(d.seed).permutation(len(jets))[: d.n_jets]
        return jets.take(np.sort(order))
    from pipelines.generate import GeneratorConfig, generate_file

    path, _ = generate_file(
        GeneratorConfig(jet_class, seed=d.seed, recipe=d.recipe),
        d.n_jets,
        directory / "data.hdf5",
        num_particles=d.num_particles,
        jobs=d.jobs,
        overwrite=True,
        progress=progress,
    )
    return read_jetnet_file(path)


def split_jets(jets: Jets, cfg: PipelineConfig) -> tuple[Jets, Jets, Jets]:
    """Seeded train / validation / test parts."""
    order = np.random.default_rng(cfg.data.seed + 1).permutation(len(jets))
    a = round(cfg.data.split[0] * len(jets))
    b = a + round(cfg.data.split[1] * len(jets))
    return jets.take(order[:a]), jets.take(order[a:b]), jets.take(order[b:])


def _tensors(jets: Jets, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(jets.particles.copy()).to(device),
        torch.from_numpy(jets.mask.copy()).to(device),
    )


# ----------------------------------------------------------------------------------- training


def _trained(
    path: Path,
    kind: str,
    key: str,
    stages: Stages,
    train: Callable[..., dict[str, Any]],
    record: dict[str, Any],
) -> dict[str, Any]:
    """The state of a training stage: from ``path`` when complete, else trained by
    ``train(resume=, on_epoch=)`` (resumed from ``<path>.last.pt`` when it matches) and saved
    with its provenance ``record`` (`pipelines.checkpoints.provenance`), the partial checkpoint
    then removed."""
    if stages.complete(path.stem, key, path):
        state = load_checkpoint(path, kind)
        stages.histories[path.stem] = state["history"]
        return state
    last = path.with_suffix(".last.pt")
    resume = None
    if last.is_file():
        state = load_checkpoint(last, kind)
        resume = state if state.get("stage_key") == key else None
        if resume is not None:
            LOG.info("%s: resuming %s after epoch %d", path.parent.name, path.stem, state["epoch"])

    def on_epoch(epoch: int, row: dict[str, float], state: dict[str, Any]) -> None:
        save_checkpoint(last, {**state, "stage_key": key, "provenance": record})

    state = {**train(resume=resume, on_epoch=on_epoch), "stage_key": key, "provenance": record}
    if is_main():
        save_checkpoint(path, state)
    stages.mark(path.stem, key)
    stages.histories[path.stem] = state["history"]
    if is_main():  # only now: a kill before the mark resumes from here, at the final epoch
        last.unlink(missing_ok=True)
    return state


OnEpoch = Callable[[int, dict[str, float], dict[str, Any]], None] | None


def train_convae(
    cfg: PipelineConfig,
    parts: tuple[Jets, Jets],
    *,
    resume: dict[str, Any] | None = None,
    on_epoch: OnEpoch = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train ``cfg``'s ConVAE on (train, valid) jets; its final state (normalization inside)."""
    device = resolve_device(cfg.device)
    (x, m), (vx, vm) = (_tensors(j, device) for j in parts)
    norm = fit_normalization(x, m, kind=cfg.normalization)
    torch.manual_seed(cfg.convae_train.seed)
    model = ConVAE(cfg.convae).to(device)
    return fit_convae(
        model,
        (norm.transform(x, m), m),
        (norm.transform(vx, vm), vm),
        loss=cfg.loss,
        config=cfg.convae_train,
        normalization=norm,
        resume=resume,
        on_epoch=on_epoch,
        progress=progress,
    ).state


def convae_of(state: dict[str, Any], device: torch.device) -> tuple[ConVAE, Normalization]:
    """The (best) ConVAE of a state and its input normalization."""
    return model_from_state(state).to(device), Normalization.from_dict(state["normalization"])


def train_flow(
    flow_cfg: FlowConfig,
    train_cfg: TrainConfig,
    data: tuple[FlowData, FlowData],
    *,
    device: torch.device,
    extra: dict[str, Any] | None = None,
    standardize: bool = True,
    resume: dict[str, Any] | None = None,
    on_epoch: OnEpoch = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Fit a flow of ``flow_cfg`` on (train, valid) flow data; its final state."""
    data = tuple(tuple(None if t is None else t.to(device) for t in part) for part in data)
    x, context = data[0][0], data[0][1]
    torch.manual_seed(train_cfg.seed)
    flow = build_flow(
        flow_cfg, features=x.shape[1], context=0 if context is None else context.shape[1]
    )
    return fit_flow(
        flow.to(device),
        data[0],
        data[1],
        config=train_cfg,
        standardize=standardize,
        extra=extra,
        resume=resume,
        on_epoch=on_epoch,
        progress=progress,
    ).state


def latent_data(
    cfg: PipelineConfig, parts: tuple[Jets, Jets], vae: ConVAE, norm: Normalization
) -> tuple[FlowData, FlowData]:
    """The latent flow's (train, valid) data: the ConVAE's encodings of the jets."""
    device = next(vae.parameters()).device
    g = torch.Generator(device=device).manual_seed(cfg.flow_train.seed)
    z = []
    for x, m in (_tensors(j, device) for j in parts):
        z.append(
            latent.encode_latents(vae, norm.transform(x, m), mode=cfg.latent.encoding, generator=g)
        )
        if cfg.latent.project:  # the flow samples each jet's n, mass and sum pt with its z
            z[-1] = latent.with_jet_observables(z[-1], x, m, generator=g)
        elif cfg.latent.masking in latent.JOINT:  # the flow samples each jet's n with its z
            z[-1] = latent.with_multiplicity(z[-1], m, generator=g)
    context = kinematics_contexts(parts, device) if cfg.latent.kinematics else (None, None)
    return (z[0], context[0], None), (z[1], context[1], None)


def kinematics_contexts(
    parts: tuple[Jets, Jets], device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The flows' (log pt, eta) context of the (train, valid) jets, scaled by the train jets."""
    scale = kinematics_norm(parts[0].jet_features)
    return tuple(
        kinematics_context(torch.from_numpy(j.jet_features[:, :2]).to(device).float(), scale)
        for j in parts
    )


def particle_data(
    cfg: PipelineConfig, parts: tuple[Jets, Jets]
) -> tuple[particle.ParticleTarget, tuple[FlowData, FlowData], tuple[FlowData, FlowData]]:
    """The particle target and the (train, valid) data of the jet flow and the particle flow
    (encoded on the CPU: dequantization noise from a CPU generator, the same on any device)."""
    (x, m), (vx, vm) = (_tensors(j) for j in parts)
    target = particle.fit_target(
        x,
        m,
        context=cfg.particle.context,
        use_centroid=cfg.particle.centroid,
        project=cfg.particle.project,
    )
    g = torch.Generator().manual_seed(cfg.flow_train.seed)
    (px, pc, pj), (vpx, vpc, vpj) = (
        particle.encode(a, b, target, generator=g) for a, b in ((x, m), (vx, vm))
    )
    kin = kinematics_contexts(parts) if cfg.particle.kinematics else (None, None)
    return target, ((pj, kin[0], None), (vpj, kin[1], None)), ((px, pc, None), (vpx, vpc, None))


def _convae_stage(
    cfg: PipelineConfig,
    jet_class: str,
    parts: tuple[Jets, Jets],
    key: str,
    stages: Stages,
    directory: Path,
    progress: bool,
) -> dict[str, Any]:
    train = functools.partial(train_convae, cfg, parts, progress=progress)
    return _trained(directory / "convae.pt", CONVAE_KIND, key, stages, train, provenance(jet_class))


def _reconstruction_stage(
    test: Jets, key: str, stages: Stages, directory: Path, vae: ConVAE, norm: Normalization
) -> dict[str, Any]:
    """reconstruction.json and its plots: the trained ConVAE on the held-out test jets."""
    path = directory / "reconstruction.json"
    if stages.complete("reconstruction", key, path):
        return json.loads(path.read_text())
    result = reconstruction_plots(vae, norm, test, directory)
    write_json(path, result)
    stages.mark("reconstruction", key)
    return result


def _common_extra(cfg: PipelineConfig, jet_class: str, train: Jets) -> dict[str, Any]:
    pool = train.jet_features[:KINEMATICS_POOL, :2].astype(float).tolist()  # (pt, eta)
    extra = {
        "jet_class": jet_class,
        "num_particles": cfg.data.num_particles,
        "jet_kinematics": pool,
    }
    if cfg.kinematics:  # the sampler scales requested (pt, eta) as the training context was
        extra["kinematics_norm"] = kinematics_norm(train.jet_features)
    return extra


def _latent_flow_stage(
    cfg: PipelineConfig,
    jet_class: str,
    parts: tuple[Jets, Jets],
    key: str,
    stages: Stages,
    directory: Path,
    progress: bool,
    vae_state: dict[str, Any],
) -> tuple[ConVAE, Normalization]:
    """Fit the latent flow on the ConVAE of ``vae_state``; that ConVAE and its normalization."""
    vae, norm = convae_of(vae_state, resolve_device(cfg.device))
    extra = {
        **_common_extra(cfg, jet_class, parts[0]),
        "target": "latent",
        "latent": to_dict(cfg.latent),
        "multiplicity_probs": latent.multiplicity_probs(torch.from_numpy(parts[0].mask)).tolist(),
    }
    train = functools.partial(
        train_flow,
        cfg.flow,
        cfg.flow_train,
        latent_data(cfg, parts, vae, norm),
        device=resolve_device(cfg.device),
        extra=extra,
        progress=progress,
    )
    record = provenance(jet_class, **{"convae.pt": vae_state})
    _trained(directory / "flow.pt", FLOW_KIND, key, stages, train, record)
    return vae, norm


def _particle_flow_stage(
    cfg: PipelineConfig,
    jet_class: str,
    parts: tuple[Jets, Jets],
    key: str,
    stages: Stages,
    directory: Path,
    progress: bool,
) -> None:
    target, jet_data, particle_data_ = particle_data(cfg, parts)
    extra = {
        **_common_extra(cfg, jet_class, parts[0]),
        "target": "particles",
        "particle_target": target.to_dict(),
    }
    common = {"device": resolve_device(cfg.device), "standardize": False, "progress": progress}
    jet_train = functools.partial(
        train_flow, cfg.particle.jet_flow, cfg.flow_train, jet_data, **common
    )
    jet_state = _trained(
        directory / "jet_flow.pt", FLOW_KIND, key, stages, jet_train, provenance(jet_class)
    )
    train = functools.partial(
        train_flow, cfg.flow, cfg.flow_train, particle_data_, extra=extra, **common
    )
    record = provenance(jet_class, **{"jet_flow.pt": jet_state})
    _trained(directory / "flow.pt", FLOW_KIND, key, stages, train, record)


# ------------------------------------------------------------------------------- per class


def run_class(
    cfg: PipelineConfig, jet_class: str, directory: Path, *, progress: bool = True
) -> dict[str, Any]:
    """Every stage for one class in ``directory``; returns its metrics.json contents."""
    from pipelines.evaluate import evaluate_files, read_metrics
    from pipelines.sample import sample_to_file

    directory.mkdir(parents=True, exist_ok=True)
    stages = Stages(directory)
    with main_first():  # data-parallel: rank 0 generates, the others then read the file
        jets = class_jets(cfg, jet_class, directory, progress and is_main())
    train, valid, test = split_jets(jets, cfg)
    keys = {"data": digest(cfg.data, jet_class)}
    if cfg.target == "latent":
        keys["convae"] = digest(
            keys["data"], cfg.normalization, cfg.convae, cfg.loss, cfg.convae_train
        )
        vae_state = _convae_stage(
            cfg, jet_class, (train, valid), keys["convae"], stages, directory, progress
        )
        keys["flow"] = digest(keys["convae"], cfg.flow, cfg.flow_train, cfg.latent)
        vae, norm = _latent_flow_stage(
            cfg, jet_class, (train, valid), keys["flow"], stages, directory, progress, vae_state
        )
    else:
        keys["flow"] = digest(keys["data"], cfg.flow, cfg.flow_train, cfg.particle)
        _particle_flow_stage(
            cfg, jet_class, (train, valid), keys["flow"], stages, directory, progress
        )
    if not is_main():  # data-parallel: the other ranks only help to train
        return {}
    reconstruction = (
        _reconstruction_stage(test, keys["convae"], stages, directory, vae, norm)
        if cfg.target == "latent"
        else None
    )
    write_json(directory / "history.json", stages.histories)
    curves = training_curves(stages.histories, directory / "plots")
    keys["generate"] = digest(keys["flow"], cfg.n_generate)
    generated, real = directory / "generated.hdf5", directory / "real_test.hdf5"
    regenerated = not stages.complete("generate", keys["generate"], generated, real)
    if regenerated:
        write_jetnet_file(real, test, {"jet_class": jet_class, "split": "test"})
        sample_to_file(
            directory.parent,
            jet_class,
            cfg.n_generate,
            generated,
            seed=cfg.data.seed,
            device=cfg.device,
            overwrite=True,
            progress=progress,
        )
        stages.mark("generate", keys["generate"])
    keys["evaluate"] = digest(keys["generate"], cfg.evaluate)
    metrics = directory / "metrics.json"
    # new jets (e.g. a deleted generated.hdf5 redrawn by newer code) are always scored again
    done = stages.complete("evaluate", keys["evaluate"], metrics, directory / "report.md")
    if done and not regenerated:
        return read_metrics(metrics)
    results = evaluate_files(
        real,
        generated,
        directory,
        jet_class=jet_class,
        cfg=cfg.evaluate,
        progress=progress,
        extra={"reconstruction": reconstruction} if reconstruction else None,
        extra_report=[
            *(reconstruction_markdown(reconstruction) if reconstruction else ()),
            *training_markdown(curves),
        ],
    )
    stages.mark("evaluate", keys["evaluate"])
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
        "| class | jets/sample | " + " | ".join(headline) + " |",
        "|---" * (len(headline) + 2) + "|",
    ]
    for c, r in results.items():
        cells = [_cell(r["metrics"].get(k)) for k in headline]
        lines.append(f"| {c} | {r['n_jets']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Every metric",
        "",
        "| metric | " + " | ".join(classes) + " |",
        "|---" * (len(classes) + 1) + "|",
    ]
    for k in everything:
        lines.append(
            f"| {k} | " + " | ".join(_cell(results[c]["metrics"].get(k)) for c in classes) + " |"
        )
    return "\n".join(lines) + "\n"


def _remove_empty(run: Path, created: bool) -> None:
    """After a failed run: remove class folders left empty and, when this call created the run
    folder and nothing but its config and log is in it, the run folder. Anything trained stays
    (a rerun resumes from it)."""
    for folder in run.iterdir():
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    if created and {p.name for p in run.iterdir()} <= {"config.yaml", "pipeline.log"}:
        shutil.rmtree(run)


def run_pipeline(
    cfg: PipelineConfig,
    *,
    root: str | Path = "runs",
    classes: tuple[str, ...] | None = None,
    progress: bool = True,
) -> Path:
    """Run every class of ``cfg`` (or ``classes``) into ``root/<name>``; returns that path."""
    classes = tuple(canonical_class(c) for c in classes) if classes else cfg.classes
    for jet_class in classes:  # a missing or short JetNet file fails before anything is written
        jetnet_source(cfg, jet_class)
    run = Path(root) / cfg.name
    created = not run.exists()
    run.mkdir(parents=True, exist_ok=True)
    main = is_main()
    if main:
        with atomic_path(run / "config.yaml") as tmp:
            tmp.write_text(to_yaml(cfg))
    handler = logging.FileHandler(run / "pipeline.log") if main else logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    failed = True
    try:
        results = {}
        for i, jet_class in enumerate(classes):
            if progress and main:
                print(f"== {cfg.name}: class {jet_class} ({i + 1}/{len(classes)})", flush=True)
            LOG.info("%s: class %s (%d process(es))", cfg.name, jet_class, rank_world()[1])
            results[jet_class] = run_class(cfg, jet_class, run / jet_class, progress=progress)
        failed = False
    finally:
        LOG.removeHandler(handler)
        handler.close()
        if failed and main:  # Ctrl-C included: no empty folders to mistake for a run
            _remove_empty(run, created)
    if not main:
        return run
    write_json(run / "summary.json", {c: r["metrics"] for c, r in results.items()})
    figure = summary_figure(results, SUMMARY_FIGURE, run / "summary.png")
    with atomic_path(run / "summary.md") as tmp:
        tmp.write_text(summary_markdown(cfg.name, results) + f"\n![summary]({figure.name})\n")
    return run
