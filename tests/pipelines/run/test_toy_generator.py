"""Issue 39: adding a generator is one file plus its registration. This file is that file: a
toy generator (one normalizing flow on a jet's P x 3 particle features, its padding read back
from the sampled pt) with a config check and kinematics of its own, registered once, then
trained by the pipeline, sampled by ``jetflows sample`` and tuned by ``jetflows tune`` with no
other change anywhere."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
import yaml

from flows.train import CHECKPOINT_KIND as FLOW_KIND
from flows.train import flow_from_state
from jetflows.distributed import resolve_device
from jetflows.errors import UserError
from pipelines.cli import main
from pipelines.data.jetnet import write_jetnet_file
from pipelines.experiments.tune import tune
from pipelines.run import stages
from pipelines.run.config import digest, load_config
from pipelines.run.generators import Generator, Trained, register, unregister
from pipelines.run.pipeline import run_pipeline
from pipelines.run.targets import Target
from tests.conftest import TINY_MODELS, random_jets

ROOT = Path(__file__).parents[3]


def _check_toy(cfg: Any) -> None:
    """The toy's own config check: one dense flow on every feature is for small jets only."""
    if cfg.data.num_particles > 30:
        raise UserError("target toy models at most 30 particles (data.num_particles)")


def _flat(jets: Any) -> torch.Tensor:
    """(N, P, 3) particles with zeros in the padding -> (N, 3P)."""
    x = torch.from_numpy(jets.particles * jets.mask[..., None]).float()
    return x.flatten(1)


def _train_toy(cfg, jet_class, parts, data_key, trained) -> Trained:
    key = digest(data_key, cfg.flow, cfg.flow_train)
    record = stages.sampler_record("toy", jet_class, parts[0], kinematics=False)
    data = tuple((_flat(j), None, None) for j in parts)
    train = functools.partial(
        stages.train_flow,
        cfg.flow,
        cfg.flow_train,
        data,
        device=resolve_device(cfg.device),
        extra=record.to_dict(),
    )
    state = trained("flow.pt", FLOW_KIND, key, train)
    return Trained({"flow.pt": state}, {"flow.pt": key})


def _toy_sampler(record, states, device):
    flow = flow_from_state(states["flow.pt"]).to(device)
    P = record.num_particles

    def sample(n: int, g: torch.Generator, kin: torch.Tensor | None):
        x = flow.sample(n, generator=g).reshape(n, P, 3)
        mask = x[..., 2] > 1e-3  # a slot is a particle where the sampled pt is
        return x * mask[..., None], mask

    return sample


TOY = Generator(
    Target("toy", check=_check_toy),
    (("flow.pt", FLOW_KIND),),
    _train_toy,
    _toy_sampler,
    describe=lambda states: "toy flow on the particle features",
    space={"flow.hidden_features": {"low": 8, "high": 32, "log": True, "integer": True}},
)

TINY = [
    *TINY_MODELS,
    "target=toy",
    "name=toy",
    "classes=[g]",
    "data.source=jetnet",
    "data.split=[0.4, 0.1, 0.5]",
    "n_generate=200",
    "evaluate.n_jets=100",
]


@pytest.fixture
def toy():
    register(TOY)
    yield TOY
    unregister("toy")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_jets")
    write_jetnet_file(root / "g.hdf5", random_jets(400, seed=9))
    return root


def test_a_registered_toy_generator_trains_samples_and_tunes(toy, data_dir, tmp_path, capsys):
    sets = [*TINY, f"data.data_dir={data_dir}"]
    run = run_pipeline(load_config("configs/quickstart.yaml", sets), root=tmp_path / "runs")
    assert (run / "g" / "flow.pt").is_file() and (run / "g" / "metrics.json").is_file()
    out = tmp_path / "toy.hdf5"
    argv = ["sample", "--run", str(run), "--class", "g", "--n", "300", "--out", str(out)]
    assert main(argv) == 0
    with h5py.File(out) as f:
        particles = f["particle_features"][:]
        assert particles.shape == (300, 30, 4) and f.attrs["model"].startswith("toy flow")
    n = particles[..., 3].sum(1)
    assert np.isfinite(particles).all() and n.std() > 0  # jets vary, as real ones do
    tuning = {
        "study": "toy",
        "base": str(ROOT / "configs/quickstart.yaml"),
        "overrides": sets,
        "jet_class": "g",
        "objective": "emd_sum",
    }
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(tuning))
    out = tune(tmp_path / "tune.yaml", trials=2, root=tmp_path / "tune", progress=False)
    trials = json.loads((out / "results.json").read_text())["trials"]
    assert len(trials) == 2 and all(set(t["params"]) == {"flow.hidden_features"} for t in trials)
    best = load_config(out / "best.yaml")  # a ready-to-run config of the toy
    assert best.target == "toy" and 8 <= best.flow.hidden_features <= 32


def test_the_toys_config_check_and_kinematics_are_its_own(toy, data_dir):
    cfg = load_config("configs/quickstart.yaml", [*TINY, f"data.data_dir={data_dir}"])
    assert cfg.target == "toy" and not cfg.kinematics  # it names no kinematics option
    with pytest.raises(UserError, match="target toy models at most 30 particles"):
        load_config("configs/quickstart.yaml", [*TINY, "data.num_particles=150"])
    with pytest.raises(UserError, match=r"calibrate\.settings belongs to target cloud"):
        load_config("configs/quickstart.yaml", [*TINY, "calibrate.settings=[{guidance: 2}]"])


def test_an_option_two_generators_own_is_refused_for_neither(toy, data_dir):
    """A second generator owning the set flow's calibration (a variant of it) leaves the cloud
    configs that calibrate as they were, and calibrates itself; the toy still may not."""
    owner = Target("variant", owns=("calibrate.settings",))
    variant = Generator(owner, TOY.checkpoints, TOY.train, TOY.sampler)
    register(variant)
    try:
        calibrated = [
            "calibrate.settings=[{guidance: 2}]",
            "set_flow.guide_epochs=1",
            "data.n_jets=1000",
        ]
        for target in ("cloud", "variant"):
            cfg = load_config("configs/quickstart.yaml", [*TINY, f"target={target}", *calibrated])
            assert cfg.calibrate.settings
        with pytest.raises(UserError, match=r"belongs to target (cloud|variant)"):
            load_config("configs/quickstart.yaml", [*TINY, *calibrated])
    finally:
        unregister("variant")


def test_a_name_is_registered_once(toy):
    with pytest.raises(ValueError, match="registered already"):
        register(TOY)
    with pytest.raises(ValueError, match="registered already"):
        register(Generator(Target("cloud"), TOY.checkpoints, TOY.train, TOY.sampler))


def test_an_unregistered_target_is_unknown():
    with pytest.raises(UserError, match="unknown target 'toy'"):
        load_config("configs/quickstart.yaml", TINY)
