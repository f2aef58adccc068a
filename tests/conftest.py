"""Shared fixtures: small generated jets (never the network) and thread pinning."""

from __future__ import annotations

import os

import numpy as np
import pytest

# Small ops slow down 30-260x when torch's threads fight other processes for 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _pin_threads() -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("JETFLOWS_TEST_THREADS", "1")))


def without_times(history: list[dict]) -> list[dict]:
    """History rows without their wall times (``seconds``), which differ from run to run."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def random_jets(n: int = 20, num_particles: int = 30, seed: int = 0):
    """Jets in JetNet conventions: pt-sorted particles, random multiplicity, zero padding."""
    from pipelines.data.jetnet import Jets

    rng = np.random.default_rng(seed)
    counts = rng.integers(1, num_particles + 1, size=n)
    mask = np.arange(num_particles)[None, :] < counts[:, None]
    pt = np.sort(rng.exponential(0.05, size=(n, num_particles)), axis=1)[:, ::-1] + 1e-3
    eta, phi = rng.normal(0, 0.2, (2, n, num_particles))
    particles = (np.stack([eta, phi, pt], -1) * mask[..., None]).astype(np.float32)
    jet_features = np.stack(
        [rng.uniform(900, 1100, n), rng.normal(0, 1, n), rng.uniform(10, 250, n), counts], -1
    ).astype(np.float32)
    return Jets(particles, mask, jet_features, np.full(n, 2))


def prong_jets(n: int, seed: int, *, prongs: int = 3, per_prong: int = 4):
    """Toy jets of ``prongs`` narrow prongs (spread 0.02) at 0.3 from the axis, evenly spaced
    in angle at a random orientation; pts summing to 1. Returns torch float32 particles
    (n, prongs x per_prong, 3) (eta, phi, pt), not pt-sorted, and an all-true mask."""
    import torch

    rng = np.random.default_rng(seed)
    turn = rng.uniform(0, 2 * np.pi, (n, 1)) + np.arange(prongs) * 2 * np.pi / prongs
    centres = 0.3 * np.stack([np.cos(turn), np.sin(turn)], -1)  # (n, prongs, 2)
    angles = centres[:, :, None] + rng.normal(0, 0.02, (n, prongs, per_prong, 2))
    share = rng.dirichlet([4] * prongs, n)[:, :, None] * rng.dirichlet([2] * per_prong, (n, prongs))
    jets = np.concatenate([angles, share[..., None]], -1).reshape(n, prongs * per_prong, 3)
    mask = torch.ones(n, prongs * per_prong, dtype=torch.bool)
    return torch.tensor(jets, dtype=torch.float32), mask


#: pipeline overrides for models small enough to train in seconds (tests add data and epochs)
TINY_MODELS = [
    "data.n_jets=400",
    "convae.n_filter=4",
    "convae.dense_width=32",
    "convae.latent_dim=4",
    "flow.transforms=2",
    "flow.hidden_features=16",
    "flow_train.epochs=2",
    "evaluate.cov_mmd=false",
]


def assert_one_line_error(capsys, argv: list[str], match: str) -> str:
    """``jetflows ARGV`` fails as a user mistake: exit status 2 and one stderr line with
    ``match``. Returns that line."""
    from pipelines.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and match in err, err
    return err


@pytest.fixture
def jets():
    return random_jets()


@pytest.fixture(scope="session")
def pythia_top_files(tmp_path_factory):
    """Two independent samples of real Pythia8 top jets (600 and 300), as JetNet-layout files."""
    from pipelines.data.production import generate_file
    from pipelines.data.pythia import PythiaConfig

    root = tmp_path_factory.mktemp("pythia_top")
    files = []
    for seed, n in ((1, 600), (2, 300)):
        path, _ = generate_file(
            PythiaConfig("t", seed=seed),
            n,
            root / f"s{seed}" / "t.hdf5",
            jobs=2,
            cache_dir=root / "cache",
            progress=False,
        )
        files.append(path)
    return files
