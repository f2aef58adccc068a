import h5py
import numpy as np
import pytest

from pipelines.data import jetnet as data
from pipelines.data.jetnet import (
    jetnet_filename,
    load_jetnet,
    locate_jetnet_file,
    read_jetnet_file,
    split_indices,
    write_jetnet_file,
)
from tests.conftest import random_jets


def _write_raw(path, pf, jf):
    with h5py.File(path, "w") as f:
        f.create_dataset("particle_features", data=pf)
        f.create_dataset("jet_features", data=jf)
    return path


def _raw(jets):
    pf = np.concatenate([jets.particles, jets.mask[..., None]], -1).astype(np.float32)
    return pf, jets.jet_features.copy()


@pytest.fixture
def jetnet_dir(tmp_path):
    """A JetNet-layout directory with small g and t files of 150 and 30 particles."""
    for i, cls in enumerate("gt"):
        for p in (30, 150):
            jets = random_jets(40 + 10 * i, p, seed=i + p)
            jets.jet_features[:, 3] = jets.mask.sum(1) + 7  # files count every constituent
            _write_raw(tmp_path / jetnet_filename(cls, p), *_raw(jets))
    return tmp_path


def test_file_names_as_jetnet_publishes_them():
    assert jetnet_filename("top") == "t.hdf5"
    assert jetnet_filename("W", 150) == "w150.hdf5"
    assert jetnet_filename("gluon", 31) == "g150.hdf5"


def test_reader_shapes_values_and_mask(tmp_path):
    jets = random_jets(12, 30)
    path = _write_raw(tmp_path / "t.hdf5", *_raw(jets))
    got = read_jetnet_file(path)
    assert got.particles.shape == (12, 30, 3) and got.mask.shape == (12, 30)
    assert got.jet_features.shape == (12, 4) and got.particles.dtype == np.float32
    np.testing.assert_array_equal(got.particles, jets.particles)
    np.testing.assert_array_equal(got.mask, jets.mask)
    assert (got.labels == 2).all()
    cut = read_jetnet_file(path, 10)
    assert cut.particles.shape == (12, 10, 3)
    assert cut.jet_features[:, 3].max() <= 10  # jetnet caps the multiplicity at what is kept


def test_write_then_read_round_trip_and_jetnet_layout(tmp_path):
    jets = random_jets(9, 30)
    path = write_jetnet_file(tmp_path / "q.hdf5", jets, {"source": "test"})
    with h5py.File(path) as f:
        assert f["particle_features"].shape == (9, 30, 4)
        assert f["jet_features"].shape == (9, 4)
        assert f.attrs["source"] == "test"
    got = read_jetnet_file(path)
    np.testing.assert_array_equal(got.particles, jets.particles)
    np.testing.assert_array_equal(got.jet_features, jets.jet_features)
    assert (got.labels == 1).all()


@pytest.mark.parametrize("jet_type", [["t"], ["g", "t"], ["t", "g"]])
@pytest.mark.parametrize("split", ["train", "valid", "test", "all"])
@pytest.mark.parametrize("num_particles", [30, 150, 20])
def test_splits_reproduce_jetnet(jetnet_dir, monkeypatch, jet_type, split, num_particles):
    import jetnet.datasets.jetnet as jetnet_module
    from jetnet.datasets import JetNet

    # jetnet asks Zenodo for a checksum even for files on disk; point it at the local file
    monkeypatch.setattr(
        jetnet_module,
        "checkDownloadZenodoDataset",
        lambda data_dir, dataset_name, **kw: f"{data_dir}/{dataset_name}.hdf5",
    )
    pf, jf = JetNet.getData(
        jet_type, str(jetnet_dir), num_particles=num_particles, split=split, seed=7
    )
    ours = load_jetnet(jet_type, jetnet_dir, num_particles=num_particles, split=split, seed=7)
    np.testing.assert_array_equal(ours.particles, pf[..., :3])
    np.testing.assert_array_equal(ours.mask, pf[..., 3] > 0)
    np.testing.assert_array_equal(ours.labels, jf[:, 0])
    np.testing.assert_array_equal(ours.jet_features, jf[:, 1:])


def test_splits_are_disjoint_and_cover_everything():
    parts = [split_indices(1000, s, seed=3) for s in ("train", "valid", "test")]
    assert [len(p) for p in parts] == [700, 150, 150]
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(1000))
    np.testing.assert_array_equal(split_indices(1000, "train", seed=3), parts[0])
    assert not np.array_equal(split_indices(1000, "train", seed=4), parts[0])


def test_bad_split_arguments():
    with pytest.raises(ValueError, match="unknown split"):
        split_indices(10, "training")
    with pytest.raises(ValueError, match="split_fraction"):
        split_indices(10, "train", (0.8, 0.3, 0.1))


def test_missing_file_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"zenodo.org/record/6975118.*put it at .*t\.hdf5"):
        load_jetnet("top", tmp_path)


def test_download_offline_fails_with_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_zenodo_reachable", lambda timeout=3.0: False)
    with pytest.raises(FileNotFoundError) as err:
        locate_jetnet_file("w", tmp_path, 150, download=True)
    message = str(err.value)
    assert "unreachable" in message and "6975117" in message and "w150.hdf5" in message
    assert "\n" not in message


def _truncate(path):
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.unlink(), "no such file"),
        (_truncate, "not a readable HDF5 file"),
        (lambda p: p.write_text("not hdf5"), "not a readable HDF5 file"),
        (
            lambda p: _write_raw(p, np.zeros((3, 30, 3)), np.zeros((3, 4))),
            r"particle_features has shape \(3, 30, 3\)",
        ),
        (
            lambda p: _write_raw(p, np.zeros((3, 30, 4)), np.zeros((3, 5))),
            r"jet_features has shape \(3, 5\)",
        ),
        (lambda p: _write_raw(p, np.zeros((3, 30, 4)), np.zeros((4, 4))), "3 jets of particles"),
        (lambda p: _write_raw(p, np.full((3, 30, 4), np.nan), np.zeros((3, 4))), "NaN/inf"),
        (lambda p: _write_raw(p, np.full((3, 30, 4), 0.5), np.zeros((3, 4))), "mask"),
    ],
)
def test_bad_files_name_the_file_and_the_problem(tmp_path, damage, message):
    path = write_jetnet_file(tmp_path / "t.hdf5", random_jets(3, 30))
    damage(path)
    error = FileNotFoundError if message == "no such file" else ValueError
    with pytest.raises(error, match=message) as err:
        read_jetnet_file(path)
    assert str(path) in str(err.value)


def test_missing_dataset_key(tmp_path):
    path = tmp_path / "g.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("particle_features", data=np.zeros((2, 30, 4)))
    with pytest.raises(ValueError, match=r"missing dataset.*jet_features"):
        read_jetnet_file(path)


def test_more_particles_than_stored_and_out_of_range(tmp_path):
    path = write_jetnet_file(tmp_path / "t.hdf5", random_jets(3, 30))
    with pytest.raises(ValueError, match="holds 30 particles per jet, 40 were asked"):
        read_jetnet_file(path, 40)
    for bad in (0, 151):
        with pytest.raises(ValueError, match=r"particles must be in 1\.\.150"):
            read_jetnet_file(path, bad)


def test_writer_refuses_nan_and_leaves_no_file(tmp_path):
    jets = random_jets(3, 30)
    jets.jet_features[0, 2] = np.inf
    with pytest.raises(ValueError, match="NaN/inf"):
        write_jetnet_file(tmp_path / "t.hdf5", jets)
    assert list(tmp_path.iterdir()) == []


def test_jetnet_reads_our_files_unchanged(tmp_path, monkeypatch):
    import jetnet.datasets.jetnet as jetnet_module
    from jetnet.datasets import JetNet

    monkeypatch.setattr(
        jetnet_module,
        "checkDownloadZenodoDataset",
        lambda data_dir, dataset_name, **kw: f"{data_dir}/{dataset_name}.hdf5",
    )
    jets = random_jets(25, 30)
    write_jetnet_file(tmp_path / "z.hdf5", jets)
    pf, jf = JetNet.getData("z", str(tmp_path), split="all", seed=1)
    order = split_indices(25, "all", seed=1)
    np.testing.assert_array_equal(pf[..., :3], jets.particles[order])
    np.testing.assert_array_equal(pf[..., 3] > 0, jets.mask[order])
    np.testing.assert_array_equal(jf[:, 1:], jets.jet_features[order])
    assert (jf[:, 0] == 4).all()
