"""JetNet HDF5 files: read, validate, split and write them, offline.

Layout (JetNet's, so `jetnet` and other tools read our files unchanged):
    particle_features: (N, P, 4) float32 = (eta_rel, phi_rel, pt_rel, mask)
    jet_features:      (N, 4)    float32 = (pt [GeV], eta, mass [GeV], n_particles)
File names as JetNet publishes them: g.hdf5 ... z.hdf5 (30 particles), g150.hdf5 ... (150).

jetnet 0.2.5's `JetNet.getData` asks Zenodo for a checksum even when the file is on disk, so it
cannot load offline; this module reads the HDF5 files with h5py and reproduces its splits.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from jetflows.classes import JET_TYPES, canonical_class
from jetflows.errors import MissingFileError, UserError
from pipelines.io import atomic_path, require_file

MAX_PARTICLES = 150
SPLITS = ("train", "valid", "test", "all")
SPLIT_FRACTION = (0.7, 0.15, 0.15)
ZENODO_RECORDS = {30: 6975118, 150: 6975117}  # JetNet30 and JetNet150, as jetnet has them


@dataclass(frozen=True)
class Jets:
    """A set of jets in JetNet's conventions.

    Arguments:
        particles: (N, P, 3) float32 (eta_rel, phi_rel, pt_rel), pt-sorted, zero padding.
        mask: (N, P) bool, True for real particles.
        jet_features: (N, 4) float32 (pt [GeV], eta, mass [GeV], n_particles).
        labels: (N,) int64 class index into `JET_TYPES`.
    """

    particles: np.ndarray
    mask: np.ndarray
    jet_features: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.particles)

    def take(self, index: np.ndarray | slice) -> Jets:
        """The jets at ``index`` (an index array or a slice)."""
        return Jets(
            self.particles[index], self.mask[index], self.jet_features[index], self.labels[index]
        )


def concat_jets(parts: Sequence[Jets]) -> Jets:
    """Concatenate sets of jets with the same number of particles, in order."""
    return Jets(
        np.concatenate([p.particles for p in parts]),
        np.concatenate([p.mask for p in parts]),
        np.concatenate([p.jet_features for p in parts]),
        np.concatenate([p.labels for p in parts]),
    )


def jetnet_filename(jet_class: str, num_particles: int = 30) -> str:
    """JetNet's file name: "t.hdf5" for up to 30 particles, "t150.hdf5" above."""
    return f"{canonical_class(jet_class)}{'150' if num_particles > 30 else ''}.hdf5"


def check_num_particles(num_particles: int) -> int:
    """Validate a particle count (1..150, JetNet150's maximum)."""
    if not 1 <= int(num_particles) <= MAX_PARTICLES:
        raise UserError(f"particles must be in 1..{MAX_PARTICLES}, got {num_particles}")
    return int(num_particles)


def _dataset(f: h5py.File, key: str, path: Path) -> np.ndarray:
    """f[key] as an array: a dataset, not a group nor a link to nothing."""
    try:
        obj = f[key]
    except KeyError:  # a soft or external link whose target is missing
        raise UserError(f"{path}: {key} is a link to nothing (soft or external)") from None
    if not isinstance(obj, h5py.Dataset):
        raise UserError(f"{path}: {key} is an HDF5 group, not a dataset")
    return np.asarray(obj)


def _read_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    require_file(path)
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("particle_features", "jet_features") if k not in f.keys()]
            if missing:
                raise UserError(f"{path}: not a JetNet file, missing dataset(s) {missing}")
            return _dataset(f, "particle_features", path), _dataset(f, "jet_features", path)
    except OSError as err:
        raise UserError(f"{path}: not a readable HDF5 file (truncated or corrupt): {err}") from err


def jetnet_file_size(path: str | Path) -> int:
    """The number of jets in a JetNet-layout file, from its header alone (no data read).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not HDF5 or no particle_features dataset.
    """
    path = require_file(path)
    try:
        with h5py.File(path, "r") as f:
            if "particle_features" not in f:
                raise UserError(f"{path}: not a JetNet file, no particle_features dataset")
            return int(f["particle_features"].shape[0])
    except OSError as err:
        raise UserError(f"{path}: not a readable HDF5 file (truncated or corrupt): {err}") from err


def _validate(path: Path, pf: np.ndarray, jf: np.ndarray) -> None:
    if pf.ndim != 3 or pf.shape[-1] != 4:
        raise UserError(f"{path}: particle_features has shape {pf.shape}, expected (N, P, 4)")
    if jf.ndim != 2 or jf.shape[-1] != 4:
        raise UserError(f"{path}: jet_features has shape {jf.shape}, expected (N, 4)")
    if len(pf) != len(jf):
        raise UserError(f"{path}: {len(pf)} jets of particles but {len(jf)} of jet features")
    if len(pf) == 0:
        raise UserError(f"{path}: holds 0 jets")
    for name, arr in (("particle_features", pf), ("jet_features", jf)):
        if not np.issubdtype(arr.dtype, np.floating):
            raise UserError(f"{path}: {name} has dtype {arr.dtype}, expected floating point")
        bad = int(np.size(arr) - np.isfinite(arr).sum())
        if bad:
            raise UserError(f"{path}: {name} holds {bad} NaN/inf values")
    if not np.isin(pf[..., 3], (0.0, 1.0)).all():
        raise UserError(f"{path}: the mask (particle_features[..., 3]) is not 0/1")
    bad = int((jf[:, 0] <= 0).sum())  # a generator's context takes log pt: caught here, not
    if bad:  # after training as "context contains NaN"
        raise UserError(f"{path}: {bad} jets with pt <= 0 in jet_features[:, 0]")


def read_jetnet_file(path: str | Path, num_particles: int | None = None) -> Jets:
    """Read and validate one JetNet-layout HDF5 file, never touching the network.

    Arguments:
        path: the file.
        num_particles: keep the first P particles and, as jetnet does, cap n_particles in the
            jet features at P. None: everything as stored (n_particles counts constituents).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not HDF5, truncated, missing datasets, wrong shapes, NaN/inf, a bad mask,
            or fewer particles than asked for. The message names the file.
    """
    path = Path(path)
    pf, jf = _read_arrays(path)
    _validate(path, pf, jf)
    n_part = pf.shape[1] if num_particles is None else check_num_particles(num_particles)
    if n_part > pf.shape[1]:
        raise UserError(f"{path}: holds {pf.shape[1]} particles per jet, {n_part} were asked")
    pf, jf = pf[:, :n_part].astype(np.float32), jf.astype(np.float32)
    if num_particles is not None:  # jetnet's convention: multiplicity capped at what is kept
        jf[:, 3] = np.minimum(jf[:, 3], n_part)
    label = _label_from_name(path)
    return Jets(pf[..., :3] * pf[..., 3:], pf[..., 3] > 0, jf, np.full(len(pf), label))


def stored(jets: Jets, path: str | Path) -> Jets:
    """``jets`` exactly as `read_jetnet_file` reads them back after `write_jetnet_file` to
    ``path``: float32, particles zeroed where masked, labels from the file name. Lets a stage
    pass on what it wrote without reading it back."""
    mask = jets.mask.astype(bool)
    particles = (jets.particles * mask[..., None]).astype(np.float32)
    label = _label_from_name(Path(path))
    return Jets(particles, mask, jets.jet_features.astype(np.float32), np.full(len(jets), label))


def _label_from_name(path: Path) -> int:
    """Class index from a JetNet file name ("t150.hdf5" -> 2); -1 for other names."""
    stem = path.stem.removesuffix("150")
    return JET_TYPES.index(stem) if stem in JET_TYPES else -1


def write_jetnet_file(
    path: str | Path, jets: Jets, attrs: dict[str, str | int | float] | None = None
) -> Path:
    """Write ``jets`` in JetNet's layout, atomically; ``attrs`` go into the file's attributes.

    jet_features[:, 3] is written as given (JetNet's files count every constituent there).
    """
    pf = np.concatenate([jets.particles * jets.mask[..., None], jets.mask[..., None]], -1)
    _validate(Path(path), pf, jets.jet_features)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("particle_features", data=pf.astype(np.float32))
            f.create_dataset("jet_features", data=jets.jet_features.astype(np.float32))
            f.attrs.update(attrs or {})
    return Path(path)


def split_indices(
    length: int,
    split: str = "all",
    split_fraction: Sequence[float] = SPLIT_FRACTION,
    seed: int = 42,
) -> np.ndarray:
    """Indices of ``split`` exactly as jetnet's `JetNet.getData` chooses them.

    jetnet permutes with ``np.random.default_rng(seed).permutation(length)`` and cuts at the
    cumulative fractions (its `getSplitting`); reusing both keeps results comparable with papers.
    """
    from jetnet.datasets.utils import getSplitting  # jetnet is heavy (~3 s): import on use

    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: use one of {list(SPLITS)}")
    if len(split_fraction) != 3 or min(split_fraction) < 0 or sum(split_fraction) > 1 + 1e-9:
        raise UserError(
            f"split_fraction must be 3 non-negative numbers summing to <= 1, "
            f"got {list(split_fraction)}"
        )
    lcut, rcut = getSplitting(length, split, list(SPLITS), list(split_fraction))
    return np.random.default_rng(seed).permutation(length)[lcut:rcut]


def _zenodo_reachable(timeout: float = 3.0) -> bool:
    try:
        socket.create_connection(("zenodo.org", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def locate_jetnet_file(
    jet_class: str, data_dir: str | Path, num_particles: int = 30, download: bool = False
) -> Path:
    """Path of a JetNet file in ``data_dir``; with ``download``, fetch it via jetnet if missing.

    Raises:
        FileNotFoundError: the file is missing (and, with ``download``, Zenodo is unreachable);
            the message says where to get the file and where to put it.
    """
    name = jetnet_filename(jet_class, num_particles)
    path = Path(data_dir) / name
    if path.is_file():
        return path
    record = ZENODO_RECORDS[150 if num_particles > 30 else 30]
    where = f"download {name} from https://zenodo.org/record/{record} and put it at {path}"
    if not download:
        raise MissingFileError(
            f"{path}: no such file; {where} (or generate jets with `jetflows data generate`)"
        )
    if not _zenodo_reachable():
        raise MissingFileError(f"cannot download {name}: zenodo.org is unreachable; {where}")
    from jetnet.datasets.utils import checkDownloadZenodoDataset

    return Path(
        checkDownloadZenodoDataset(
            str(data_dir), name.removesuffix(".hdf5"), record, name, download=True
        )
    )


def load_jetnet(
    jet_class: str | Sequence[str],
    data_dir: str | Path,
    *,
    num_particles: int = 30,
    split: str = "all",
    split_fraction: Sequence[float] = SPLIT_FRACTION,
    seed: int = 42,
    download: bool = False,
) -> Jets:
    """Load JetNet jets of one or more classes, split as `jetnet.datasets.JetNet` splits them.

    Classes are concatenated in the given order (canonicalised, as jetnet does) before the
    seeded permutation, so ``load_jetnet(["g", "t"], ...)`` matches jetnet's
    ``jet_type=["g", "t"]``.

    Arguments:
        jet_class: a class or alias ("top"), or a sequence of them.
        data_dir: directory holding g.hdf5 ... (or g150.hdf5 ... for num_particles > 30).
        num_particles: particles per jet, 1..150.
        split: "train", "valid", "test" or "all".
        split_fraction: train, valid, test fractions (jetnet's default 0.7, 0.15, 0.15).
        seed: jetnet's split seed (default 42).
        download: fetch a missing file from Zenodo (needs the network).
    """
    classes = [jet_class] if isinstance(jet_class, str) else list(jet_class)
    num_particles = check_num_particles(num_particles)
    parts = [
        read_jetnet_file(locate_jetnet_file(c, data_dir, num_particles, download), num_particles)
        for c in classes
    ]
    jets = concat_jets(parts)
    return jets.take(split_indices(len(jets), split, split_fraction, seed))
