"""Trained models that ship with the package: `jetflows sample` before any training.

Each class's model lives in ``pipelines/shipped/<class>.pt`` (package data, read through
`importlib.resources`), beside ``manifest.json``, which records for every file its SHA-256,
the config it was trained from (path, digest and the resolved config), the data recipe and
seed, the commit it was packed at, and the stable ratios it scored when it was shipped.

A shipped file is a pipeline run's sampled models cut to what sampling needs: the set flow's
few-step student (``student.pt``: its network's best weights, the teacher's record with the
training jets' (pt, eta) pool) and the jet-level flow (``jet_flow.pt``); no optimizer state,
no history, no teacher (the teacher and its exact ``log_prob`` stay in the run that made it).

    jetflows sample --n 10000 --class top          # the shipped model (no --run)
    jetflows models                                 # what ships, with its provenance and scores
    >>> import jetflows; gen = jetflows.load("top")  # doctest: +SKIP

`scripts/ship_models.py` rebuilds the files from their configs; `pipelines.run.showcase` scores
them (the main job's first step).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from jetflows.classes import JET_TYPES, canonical_class
from jetflows.errors import MissingFileError, UserError
from pipelines.io import atomic_path, write_json
from pipelines.run.checkpoints import load_checkpoint, save_checkpoint
from pipelines.run.config import PipelineConfig, digest, load_config, to_dict
from pipelines.run.generators import (
    STUDENT,
    TEACHER,
    TrainedSampler,
    build_sampler,
    class_dir,
    load_sampler,
)

#: the checkpoint kind of a shipped file
KIND = "jetflows.shipped"
#: the package folder holding the shipped files
PACKAGE, FOLDER = "pipelines", "shipped"
MANIFEST = "manifest.json"
#: the largest shipped file read: anything bigger is not ours (a whole run is ~30 MB)
MAX_BYTES = 16 * 2**20
#: what sampling needs of each checkpoint (the best weights are kept apart, cast or not)
_KEEP = {
    STUDENT: ("kind", "version", "set_flow_config", "student_config", "features", "context",
              "extra", "provenance"),
    "jet_flow.pt": ("kind", "version", "flow_config", "features", "context", "extra",
                    "provenance"),
}  # fmt: skip
#: the rebuild command a missing or damaged file names
REBUILD = "python scripts/ship_models.py"


def folder() -> Path:
    """The folder of the shipped files (inside the installed package)."""
    return Path(str(importlib.resources.files(PACKAGE) / FOLDER))


def manifest(where: Path | None = None) -> dict[str, Any]:
    """manifest.json: {"models": {class: entry}}; empty when nothing ships.

    Raises:
        ValueError: a manifest that is not JSON or has no ``models`` mapping.
    """
    path = (where or folder()) / MANIFEST
    if not path.is_file():
        return {"models": {}}
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise UserError(f"{path}: not readable JSON ({err}); reinstall jetflows") from err
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise UserError(f"{path}: no 'models' mapping; reinstall jetflows")
    return data


#: the config sections that make a shipped model (its data, networks, training, guidance and
#: student); the others (the run's name and classes, the evaluation, the two-stage model's
#: sections) do not change its weights, and a field added to them must not unship it
MODEL_SECTIONS = (
    "target", "normalization", "data", "set_flow", "particle", "flow_train", "calibrate",
    "student", "student_train", "per_class",
)  # fmt: skip


def config_digest(cfg: PipelineConfig) -> str:
    """What a shipped model was trained from: the `MODEL_SECTIONS` of its resolved config
    (added fields at their defaults left out, as for a stage's key: `digest`)."""
    return digest(*(getattr(cfg, k) for k in MODEL_SECTIONS))


def require_entry(jet_class: str, where: Path) -> dict[str, Any]:
    """The manifest entry of a class (ValueError naming the classes that ship)."""
    models = manifest(where)["models"]
    if jet_class not in models:
        have = ", ".join(c for c in JET_TYPES if c in models) or "none"
        raise UserError(
            f"no shipped model for class {jet_class!r} (shipped: {have}); train one with "
            "jetflows pipeline and sample it with --run"
        )
    return models[jet_class]


def sha256(path: Path) -> str:
    """The file's SHA-256 (hex)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_shipped(jet_class: str, where: Path | None = None) -> dict[str, Any]:
    """The checked state of a class's shipped file.

    Raises:
        FileNotFoundError: the file is missing (says how to rebuild it).
        ValueError: no shipped model of the class, or a file whose bytes do not match the
            SHA-256 in the manifest (damaged or edited), or whose content is not that class's.
    """
    jet_class, where = canonical_class(jet_class), where or folder()
    entry = require_entry(jet_class, where)
    path = where / entry["file"]
    if not path.is_file():
        raise MissingFileError(
            f"{path}: the shipped {jet_class} model is missing; reinstall jetflows or rebuild it "
            f"with {REBUILD} --classes {jet_class}"
        )
    if path.stat().st_size > MAX_BYTES or sha256(path) != entry["sha256"]:
        raise UserError(
            f"{path}: does not match the SHA-256 recorded in {MANIFEST} (damaged or edited); "
            f"reinstall jetflows or rebuild it with {REBUILD} --classes {jet_class}"
        )
    state = load_checkpoint(path, KIND)
    if state.get("jet_class") != jet_class:
        raise UserError(f"{path}: holds a {state.get('jet_class')!r} model, not {jet_class!r}")
    return state


def _states(state: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The checkpoints of a shipped state, as `build_sampler` takes them (weights as fp32)."""
    out = {}
    for name, kept in state["states"].items():
        weights = {k: v.float() if v.is_floating_point() else v for k, v in kept["weights"].items()}
        out[name] = {**kept["state"], "best_state_dict": weights, "state_dict": weights}
    return out


def load(
    jet_class: str,
    *,
    device: str = "cpu",
    options: Mapping[str, Any] | None = None,
    where: Path | None = None,
) -> TrainedSampler:
    """The shipped generator of ``jet_class``, ready to sample (`pipelines.run.sample`).

    Arguments:
        jet_class: g, q, t, w, z or an alias.
        device: cpu, cuda or auto.
        options: ``{"steps": k}``: one of the student's step counts (default: its first).
        where: the folder of the shipped files (default: the package's, `folder`).

    Raises:
        FileNotFoundError, ValueError: see `read_shipped`; ``teacher`` asked of a shipped model.

    Example:
        >>> from pipelines.run.sample import sampled_jets  # doctest: +SKIP
        >>> jets = sampled_jets(load("top"), 10_000, seed=0)  # doctest: +SKIP
    """
    if (options or {}).get(TEACHER):
        raise UserError(
            "a shipped model is the few-step student alone: its teacher (the set flow) is in "
            "the run that trained it; train one with jetflows pipeline --config "
            "configs/standard_cloud.yaml and sample it with --run ... --teacher"
        )
    state = read_shipped(jet_class, where)
    gen = build_sampler(_states(state), device=device, options=options)
    gen.model = f"shipped {canonical_class(jet_class)} model, {gen.model}"
    return gen


def open_sampler(
    run: str | Path | None,
    jet_class: str,
    *,
    device: str = "cpu",
    options: Mapping[str, Any] | None = None,
) -> TrainedSampler:
    """A trained run's generator (`load_sampler`), or the shipped one where ``run`` is None."""
    if run is None:
        return load(jet_class, device=device, options=options)
    return load_sampler(run, jet_class, device=device, options=options)


# ------------------------------------------------------------------------------------ packing


def _cut(state: Mapping[str, Any], name: str, dtype: torch.dtype) -> dict[str, Any]:
    """One checkpoint cut to what sampling needs, its floating weights stored as ``dtype``."""
    weights = {
        k: (v.to(dtype) if v.is_floating_point() else v).clone()
        for k, v in state["best_state_dict"].items()
    }
    return {"state": {k: state[k] for k in _KEEP[name] if k in state}, "weights": weights}


@dataclass(frozen=True)
class Packed:
    """A shipped file's content and what its manifest entry records about where it came from."""

    state: dict[str, Any]
    provenance: dict[str, Any]


def pack(
    run: str | Path, jet_class: str, *, config: str | Path, dtype: torch.dtype = torch.float32
) -> Packed:
    """Cut a trained run's sampled models (few-step student and jet flow) into a shipped
    state, after checking that they load together and that the run was trained from
    ``config`` (the same resolved config, less name and classes).

    Raises:
        ValueError: the run has no student, or was trained from another config.
    """
    jet_class = canonical_class(jet_class)
    path = class_dir(run, jet_class)
    if not (path / STUDENT).is_file():
        raise UserError(f"{path}: no {STUDENT}; only a run with a few-step student ships")
    load_sampler(run, jet_class)  # every provenance check of a run's models
    ran = load_config(Path(run) / "config.yaml")
    cfg = load_config(config)
    if config_digest(ran) != config_digest(cfg):
        raise UserError(f"{run} was not trained from {config} (its resolved config differs)")
    states = {name: load_checkpoint(path / name, state_kind) for name, state_kind in _kinds()}
    state = {
        "kind": KIND,
        "jet_class": jet_class,
        "states": {name: _cut(s, name, dtype) for name, s in states.items()},
    }
    stages = json.loads((path / "stages.json").read_text())
    calibrated = path / "calibration.json"  # a run that calibrates its guidance per class
    calibration = json.loads(calibrated.read_text()).get("chosen") if calibrated.is_file() else {}
    provenance = {
        "config": str(config),
        "config_digest": config_digest(cfg),
        "config_resolved": to_dict(cfg) | {"classes": [jet_class]},
        "data": {k: v for k, v in to_dict(cfg.data).items() if k not in ("data_dir", "jobs")},
        "run": str(run),
        "stage_keys": stages,
        "guidance_chosen": calibration,
        "weights": str(dtype).removeprefix("torch."),
    }
    return Packed(state, provenance)


def _kinds() -> tuple[tuple[str, str], ...]:
    from flows.setflow.student import CHECKPOINT_KIND
    from flows.train import CHECKPOINT_KIND as FLOW_KIND

    return ((STUDENT, CHECKPOINT_KIND), ("jet_flow.pt", FLOW_KIND))


def write_shipped(
    packed: Packed, scores: dict[str, Any], where: Path, *, commit: str, model: str
) -> Path:
    """Write ``<class>.pt`` and its manifest entry (file, SHA-256, provenance, scores) into
    ``where``; both are written whole or not at all."""
    jet_class = packed.state["jet_class"]
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"{jet_class}.pt"
    with atomic_path(path) as tmp:
        save_checkpoint(tmp, packed.state)
    data = manifest(where)
    data["models"][jet_class] = {
        "file": path.name,
        "sha256": sha256(path),
        "bytes": path.stat().st_size,
        "model": model,
        "commit": commit,
        **packed.provenance,
        "scores": scores,
    }
    data["models"] = {c: data["models"][c] for c in JET_TYPES if c in data["models"]}
    write_json(where / MANIFEST, data)
    return path


def describe_scores(scores: Mapping[str, Any]) -> str:
    """One line of a shipped model's stable ratios (`jetflows models`)."""
    names = ("w1m", "w1p", "w1efp", "tau21", "tau32", "d2", "cov")
    cells = [
        f"{k} {scores[k]['stable_ratio']:.2f}"
        for k in names
        if k in scores and scores[k].get("stable_ratio") is not None
    ]
    return ", ".join(cells)


def listing(where: Path | None = None) -> str:
    """`jetflows models`: one paragraph per shipped model, its provenance and scores."""
    models = manifest(where)["models"]
    if not models:
        return f"no models ship with this copy of jetflows; rebuild them with {REBUILD}\n"
    lines = []
    for c, e in models.items():
        sizes = e["scores"].get("sizes", {})
        lines += [
            f"{c}: {e['model']} ({e['file']}, {e['bytes'] / 2**20:.1f} MB, sha256 "
            f"{e['sha256'][:16]}...)",
            f"  trained from {e['config']} (digest {e['config_digest']}) on {e['data']['n_jets']} "
            f"{e['data']['source']} jets, recipe {e['data']['recipe']}, seed {e['data']['seed']}; "
            f"packed at commit {e['commit'][:12]}",
            f"  stable ratios to the floor ({sizes.get('draws')} splits of {sizes.get('real')} "
            f"fresh Pythia jets of seed {e['scores'].get('real', {}).get('seed')} x "
            f"{sizes.get('samples')} samples of {sizes.get('n')}): {describe_scores(e['scores'])}",
        ]
    return "\n".join(lines) + "\n"
