"""One class's jets and models, from arrays in memory: what `pipelines.run.pipeline` runs as
its stages (adding checkpoints, resumption and files) and each `pipelines.experiments.tune` trial
runs (adding pruning), so both train, and sample, the same way.

Data: `class_jets` (a JetNet file, else Pythia8) and `split_jets`. Models: `train_convae`, then
`train_latent_flow` on its latents (two-stage), or `particle_flows_data` with `train_jet_flow`
and `train_particle_flow` (direct), or `set_flow_data` with `train_jet_flow` and
`train_set_flow` (the set flow). `pipelines.run.generators` chains them per target. A flow state
carries its `pipelines.run.generators.SamplerRecord`, from which
`pipelines.run.generators.build_sampler` makes the generator.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from convae.model import ConVAE
from convae.train import fit as fit_convae
from convae.train import model_from_state
from flows import latent, particle, setflow
from flows.models import FlowConfig, build_flow
from flows.setflow import student as student_lib
from flows.train import FlowData
from flows.train import fit as fit_flow
from jetflows.distributed import resolve_device
from jetflows.errors import UserError
from jetflows.normalize import Normalization, fit_normalization
from jetflows.training import TrainConfig
from pipelines.data.jetnet import Jets, jetnet_file_size, locate_jetnet_file, read_jetnet_file
from pipelines.io import check_model_memory
from pipelines.run.config import PipelineConfig, TwoStageConfig, to_dict
from pipelines.run.records import SamplerRecord, kinematics_context, kinematics_norm
from pipelines.run.targets import LATENT

#: added to the student's training seed for the teacher's noise: the trajectories share no
#: stream with the student's own draws
STUDENT_SEED_OFFSET = 104729
KINEMATICS_POOL = 5000  # training (pt, eta) pairs kept in flow.pt for the sampler's jet_features

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
        raise UserError(
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
    from pipelines.data.production import request_jets
    from pipelines.data.pythia import PythiaConfig

    return request_jets(
        PythiaConfig(jet_class, seed=d.seed, recipe=d.recipe),
        d.n_jets,
        directory / "data.hdf5",
        num_particles=d.num_particles,
        jobs=d.jobs,
        progress=progress,
    )


def split_jets(jets: Jets, cfg: PipelineConfig) -> tuple[Jets, Jets, Jets]:
    """Seeded train / validation / test parts by ``data.split``."""
    return split_parts(jets, cfg.data.split, cfg.data.seed)


def split_parts(jets: Jets, split: tuple[float, ...], seed: int) -> tuple[Jets, Jets, Jets]:
    """Train / validation / test parts of ``jets`` by the fractions ``split``, in an order
    seeded by ``seed`` + 1 (the seed itself draws the jets)."""
    order = np.random.default_rng(seed + 1).permutation(len(jets))
    a = round(split[0] * len(jets))
    b = a + round(split[1] * len(jets))
    return jets.take(order[:a]), jets.take(order[a:b]), jets.take(order[b:])


def _tensors(jets: Jets, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(jets.particles.copy()).to(device),
        torch.from_numpy(jets.mask.copy()).to(device),
    )


# ----------------------------------------------------------------------------------- training


OnEpoch = Callable[[int, dict[str, float], dict[str, Any]], None] | None


def train_convae(
    cfg: TwoStageConfig,
    parts: tuple[Jets, Jets],
    *,
    resume: dict[str, Any] | None = None,
    on_epoch: OnEpoch = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train ``cfg``'s ConVAE on (train, valid) jets; its final state (normalization inside)."""
    device = resolve_device(cfg.device)
    train, valid = (_tensors(j, device) for j in parts)
    norm = fit_normalization(*train, kind=cfg.normalization)
    torch.manual_seed(cfg.convae_train.seed)
    model = built(lambda: ConVAE(cfg.convae), "ConVAE", device)
    return fit_convae(
        model,
        train,
        valid,
        loss=cfg.loss,
        config=cfg.convae_train,
        normalization=norm,
        resume=resume,
        on_epoch=on_epoch,
        progress=progress,
    ).state


def built(build: Callable[[], torch.nn.Module], what: str, device: torch.device) -> torch.nn.Module:
    """``build()`` on ``device``, once its parameters are known to fit (`check_model_memory`),
    so an impossible size is one line (ValueError), not an out-of-memory traceback.

    The parameters are counted on torch's meta device first (no memory; the random stream
    left as it was). A model that computes with its tensors while it is built (zuko's coupling
    masks call .item()) cannot be built there: it is built for real, a failed allocation
    becoming the same ValueError, and checked before it moves to ``device``.
    """
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            count: int | None = _parameters(build())
    except (RuntimeError, NotImplementedError):
        count = None
    if count is not None:
        check_model_memory(count, what, device)
    try:
        model = build()
    except (RuntimeError, MemoryError) as err:  # torch.OutOfMemoryError is a RuntimeError
        if isinstance(err, RuntimeError) and "alloc" not in str(err):
            raise
        raise UserError(f"the {what} does not fit in memory: make its sizes smaller") from err
    if count is None:
        check_model_memory(_parameters(model), what, device)
    return model.to(device)


def _parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


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
    width = 0 if context is None else context.shape[1]
    flow = built(lambda: build_flow(flow_cfg, features=x.shape[1], context=width), "flow", device)
    return fit_flow(
        flow,
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
    cfg: TwoStageConfig, parts: tuple[Jets, Jets], vae: ConVAE, norm: Normalization
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
        z[-1] = latent.with_condition(z[-1], vae, x, m)  # and the decoder's condition, if any
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


# ------------------------------------------------------------------------ generator records


def sampler_record(
    target: str, jet_class: str, train: Jets, *, kinematics: bool, **fields: Any
) -> SamplerRecord:
    """The record of a ``target`` generator trained on ``train`` jets, conditioned on each
    jet's (pt, eta) or not (``kinematics``); ``fields``: the target-specific fields (latent +
    multiplicity_probs, or particle_target)."""
    return SamplerRecord(
        target=target,
        jet_class=jet_class,
        num_particles=train.particles.shape[1],
        jet_kinematics=train.jet_features[:KINEMATICS_POOL, :2].astype(float).tolist(),
        # the sampler scales requested (pt, eta) as the training context was
        kinematics_norm=kinematics_norm(train.jet_features) if kinematics else None,
        **fields,
    )


def train_latent_flow(
    cfg: TwoStageConfig,
    jet_class: str,
    parts: tuple[Jets, Jets],
    vae_state: dict[str, Any],
    *,
    resume: dict[str, Any] | None = None,
    on_epoch: OnEpoch = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Fit the latent flow on the (train, valid) latents of the ConVAE of ``vae_state``; its
    state, with the generator's `SamplerRecord` in ``extra``."""
    device = resolve_device(cfg.device)
    vae, norm = convae_of(vae_state, device)
    record = sampler_record(
        LATENT.name,  # a study's TwoStageConfig has no target: this stage is the latent one's
        jet_class,
        parts[0],
        kinematics=LATENT.conditioned(cfg),
        latent=to_dict(cfg.latent),
        multiplicity_probs=latent.multiplicity_probs(torch.from_numpy(parts[0].mask)).tolist(),
    )
    return train_flow(
        cfg.flow,
        cfg.flow_train,
        latent_data(cfg, parts, vae, norm),
        device=device,
        extra=record.to_dict(),
        resume=resume,
        on_epoch=on_epoch,
        progress=progress,
    )


def _particle_record(
    cfg: PipelineConfig, jet_class: str, train: Jets, target: particle.ParticleTarget
) -> SamplerRecord:
    """The record of a generator on the particles (direct or set flow), by its target."""
    return sampler_record(
        cfg.target, jet_class, train, kinematics=cfg.kinematics, particle_target=target.to_dict()
    )


def particle_flows_data(
    cfg: PipelineConfig, jet_class: str, parts: tuple[Jets, Jets]
) -> tuple[SamplerRecord, tuple[FlowData, FlowData], tuple[FlowData, FlowData]]:
    """The direct generator's record and the (train, valid) data of its jet flow and of its
    particle flow."""
    target, jet_data, particle_data_ = particle_data(cfg, parts)
    record = _particle_record(cfg, jet_class, parts[0], target)
    return record, jet_data, particle_data_


def train_jet_flow(
    cfg: PipelineConfig, data: tuple[FlowData, FlowData], **fit: Any
) -> dict[str, Any]:
    """Fit the direct generator's jet flow (``fit``: resume, on_epoch, progress); its state."""
    device = resolve_device(cfg.device)
    return train_flow(
        cfg.particle.jet_flow, cfg.flow_train, data, device=device, standardize=False, **fit
    )


def train_particle_flow(
    cfg: PipelineConfig, data: tuple[FlowData, FlowData], record: SamplerRecord, **fit: Any
) -> dict[str, Any]:
    """Fit the direct generator's particle flow; its state, with ``record`` in ``extra``."""
    device = resolve_device(cfg.device)
    return train_flow(
        cfg.flow,
        cfg.flow_train,
        data,
        device=device,
        standardize=False,
        extra=record.to_dict(),
        **fit,
    )


def set_flow_data(
    cfg: PipelineConfig, jet_class: str, parts: tuple[Jets, Jets]
) -> tuple[SamplerRecord, tuple[FlowData, FlowData], tuple[setflow.SetData, setflow.SetData]]:
    """The set-flow generator's record and the (train, valid) data of its jet flow (as the
    particles target's) and of its set flow: standardized (eta_rel, phi_rel, log pt_rel)
    (N, P, 3), the mask (N, P) and the jet-level context (N, C)."""
    target, jet_data, (train, valid) = particle_data(cfg, parts)
    record = _particle_record(cfg, jet_class, parts[0], target)
    P = cfg.data.num_particles
    set_data = tuple(
        (x.reshape(len(x), P, 3), torch.from_numpy(jets.mask.copy()), context)
        for (x, context, _), jets in zip((train, valid), parts, strict=True)
    )
    return record, jet_data, set_data


def train_set_flow(
    cfg: PipelineConfig,
    data: tuple[setflow.SetData, setflow.SetData],
    record: SamplerRecord,
    **fit: Any,
) -> dict[str, Any]:
    """Fit the set flow by flow matching (``fit``: resume, on_epoch, progress); its state,
    with ``record`` in ``extra``."""
    device = resolve_device(cfg.device)
    data = tuple(tuple(None if t is None else t.to(device) for t in part) for part in data)
    torch.manual_seed(cfg.flow_train.seed)
    context = data[0][2]
    width = 0 if context is None else context.shape[1]
    flow = built(lambda: setflow.SetFlow(cfg.set_flow, context=width), "set flow", device)
    return setflow.fit(
        flow, data[0], data[1], config=cfg.flow_train, extra=record.to_dict(), **fit
    ).state


def _repeated(data: setflow.SetData, draws: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The masks (N * draws, P) and contexts of ``data``, each jet ``draws`` times in a row."""
    _, mask, context = data
    return mask.repeat(draws, 1), None if context is None else context.repeat(draws, 1)


def distillation_data(
    cfg: PipelineConfig,
    data: tuple[setflow.SetData, setflow.SetData],
    teacher: setflow.SetFlow,
    guide: setflow.SetFlow | None,
    *,
    progress: bool = False,
) -> tuple[student_lib.StudentData, student_lib.StudentData]:
    """The teacher's trajectories for the training jets (``student.draws`` noise draws each)
    and the validation jets (one each), guidance included, with the ODE and arithmetic the
    student learns it with (`flows.setflow.student.StudentConfig.teacher`)."""
    exact = student_lib.learnt_teacher(teacher, cfg.student)
    g = torch.Generator().manual_seed(cfg.student_train.seed + STUDENT_SEED_OFFSET)
    out = []
    for part, draws in zip(data, (cfg.student.draws, 1), strict=True):
        mask, context = _repeated(part, draws)
        with tqdm(
            total=len(mask), desc="teacher trajectories", unit="jet", disable=not progress
        ) as bar:
            traj = student_lib.teacher_trajectories(
                exact, mask, context, guide=guide, generator=g,
                progress=bar.update,
            )  # fmt: skip
        out.append((traj, mask, context))
    return out[0], out[1]


def train_student(
    cfg: PipelineConfig,
    data: tuple[setflow.SetData, setflow.SetData],
    record: SamplerRecord,
    states: dict[str, dict[str, Any]],
    **fit: Any,
) -> dict[str, Any]:
    """Distil the few-step student from the set flow in ``states["flow.pt"]`` (with the
    sampling options it is drawn with: solver, steps, guidance), guided by
    ``states["guide.pt"]`` as those say (``fit``: resume, on_epoch, progress); its state, with
    ``record`` in ``extra``."""
    device = resolve_device(cfg.device)
    teacher = setflow.set_flow_from_state(states["flow.pt"]).to(device)
    guided = cfg.student.teacher(teacher.config).guidance != 1.0
    guide = setflow.set_flow_from_state(states["guide.pt"]).to(device) if guided else None
    data = tuple(tuple(None if t is None else t.to(device) for t in part) for part in data)
    train, valid = distillation_data(cfg, data, teacher, guide, progress=fit.get("progress", False))
    torch.manual_seed(cfg.student_train.seed)
    shape = {"features": teacher.features, "context": teacher.context}
    make = functools.partial(student_lib.Student, teacher.config, cfg.student, **shape)
    student = built(make, "student", device)  # sized on the meta device first: no weights
    if cfg.student.init == "teacher":
        student.load_teacher(teacher)
    return student_lib.fit(
        student, train, valid, config=cfg.student_train, extra=record.to_dict(), **fit
    ).state
