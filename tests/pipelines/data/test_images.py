"""Sparse images as point clouds: MNIST's IDX files (written here, never downloaded), the
embedded drawn digits, the k most intense pixels, and `jetflows data images`."""

import gzip

import numpy as np
import pytest

from pipelines.cli import main
from pipelines.data.images import IDX_FILES, mnist_digits, read_idx, render_digits, sparse_pixels
from pipelines.data.jetnet import read_jetnet_file
from tests.conftest import assert_one_line_error


def _write_idx(path, array, gz):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.fixture
def mnist_dir(tmp_path):
    """A tiny MNIST in IDX files: the train part gzipped, the t10k part not."""
    rng = np.random.default_rng(0)
    for part, gz in (("train", True), ("t10k", False)):
        images = rng.integers(0, 256, (6, 28, 28))
        labels = np.array([8, 1, 8, 3, 8, 0])
        stems = IDX_FILES[part]
        _write_idx(tmp_path / (stems[0] + (".gz" if gz else "")), images, gz)
        _write_idx(tmp_path / (stems[1] + (".gz" if gz else "")), labels, gz)
    return tmp_path


def test_mnist_idx_files_are_read_offline(mnist_dir):
    eights = mnist_digits(mnist_dir, 8)
    assert eights.shape == (6, 28, 28) and 0 <= eights.min() and eights.max() <= 1
    train = read_idx(mnist_dir / "train-images-idx3-ubyte.gz")
    np.testing.assert_allclose(eights[0], train[0] / 255.0, rtol=1e-6)
    bad = mnist_dir / "bad"
    bad.write_bytes(b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="not an IDX file of unsigned bytes"):
        read_idx(bad)
    cut = mnist_dir / "cut"
    cut.write_bytes((mnist_dir / "t10k-labels-idx1-ubyte").read_bytes()[:-2])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(cut)


def _correlation(images, template):
    x = images.reshape(len(images), -1)
    x = x - x.mean(1, keepdims=True)
    t = template.ravel() - template.mean()
    return (x @ t) / np.linalg.norm(x, axis=1) / np.linalg.norm(t)


def test_drawn_digits_are_seeded_varied_and_tell_digits_apart():
    eights = render_digits(8, 40, seed=1)
    np.testing.assert_array_equal(eights, render_digits(8, 40, seed=1))
    assert eights.shape == (40, 28, 28) and eights.min() >= 0 and eights.max() == 1
    assert not np.array_equal(eights, render_digits(8, 40, seed=2))
    assert np.abs(eights[0] - eights[1]).sum() > 5  # fonts, strokes and distortions vary
    # yet a drawn 8 looks like eights: nearer (in correlation) to the mean 8 than to the mean 1
    mean8, mean1 = render_digits(8, 200, seed=2).mean(0), render_digits(1, 200, seed=2).mean(0)
    assert (_correlation(eights, mean8) > _correlation(eights, mean1)).mean() > 0.9
    ones = render_digits(1, 40, seed=3)
    assert (_correlation(ones, mean1) > _correlation(ones, mean8)).mean() > 0.9


def test_sparse_pixels_keep_the_k_brightest():
    image = np.zeros((1, 4, 4))
    image[0, 1, 2], image[0, 3, 0], image[0, 0, 0] = 0.9, 0.5, 0.2
    points, mask = sparse_pixels(image, 4)
    assert mask.tolist() == [[True, True, True, False]]  # only three lit pixels
    np.testing.assert_allclose(points[0, 0], [(2 + 0.5) / 4, (1 + 0.5) / 4, 0.9])
    np.testing.assert_allclose(points[0, 1], [0.5 / 4, 3.5 / 4, 0.5])
    assert (points[0, 3] == 0).all()
    with pytest.raises(ValueError, match=r"k must be in 1\.\.16"):
        sparse_pixels(image, 17)


def test_data_images_writes_the_jets_layout(tmp_path, capsys, mnist_dir):
    out = tmp_path / "d8.hdf5"
    assert (
        main(["data", "images", "--digit", "8", "--pixels", "25", "--n", "12", "--out", str(out)])
        == 0
    )
    jets = read_jetnet_file(out)
    assert jets.particles.shape == (12, 25, 3) and jets.mask.all()
    assert (jets.jet_features[:, 2] == 8).all()
    np.testing.assert_allclose(jets.jet_features[:, 1], jets.particles[..., 2].sum(1), rtol=1e-5)
    assert (np.diff(jets.particles[..., 2], axis=1) <= 0).all()  # brightest first
    mnist = tmp_path / "m8.hdf5"
    argv = ["data", "images", "--source", "mnist", "--dir", str(mnist_dir), "--digit", "8"]
    assert main([*argv, "--out", str(mnist)]) == 0
    assert len(read_jetnet_file(mnist)) == 6  # three eights in each part
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--source", "mnist", "--dir", "{empty}"], "put MNIST's four IDX files"),
        (["--source", "mnist"], "--source mnist needs --dir"),
        (["--digit", "10"], "digit must be 0-9"),
        (["--pixels", "785"], "--pixels must be in 1..784"),
        (["--source", "emnist"], "invalid choice: 'emnist'"),  # argparse's own checks
        (["--n", "0"], "must be >= 1"),
    ],
)
def test_bad_image_input_is_one_line_and_exit_2(tmp_path, capsys, argv, match):
    (tmp_path / "empty").mkdir()
    argv = [a.format(empty=tmp_path / "empty") for a in argv]
    base = ["data", "images", "--digit", "8", "--out", str(tmp_path / "x.hdf5")]
    try:
        assert_one_line_error(capsys, [*base, *argv], match)
    except SystemExit as stop:  # argparse exits itself, with the same one line
        err = capsys.readouterr().err
        assert stop.code == 2 and len(err.strip().splitlines()) == 1 and match in err, err
    assert not (tmp_path / "x.hdf5").exists()
