import numpy as np
import pytest
import torch

from jetflows.spread import slot_std, spread_ratio
from tests.conftest import random_jets


def test_slot_std_counts_real_particles_only():
    x = np.zeros((4, 3, 3))
    x[:, 0, 0] = [1.0, -1.0, 1.0, -1.0]  # slot 0 real in every jet
    x[:2, 1, 0] = [2.0, 4.0]  # slot 1 real in two jets; the padding zeros must not count
    mask = np.array([[1, 1, 0], [1, 1, 0], [1, 0, 0], [1, 0, 0]], dtype=bool)
    std = slot_std(x, mask)
    assert std[0, 0] == pytest.approx(np.std([1, -1, 1, -1], ddof=1))
    assert std[1, 0] == pytest.approx(np.std([2.0, 4.0], ddof=1))
    assert np.isnan(std[2]).all()  # never real


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0, 2.0])
def test_spread_ratio_reads_the_scale_of_the_variation(scale):
    real = random_jets(400, seed=1)
    mean = real.particles.mean(0, keepdims=True)
    scaled = (mean + scale * (real.particles - mean)) * real.mask[..., None]
    ratio = spread_ratio(scaled, real.mask, real.particles, real.mask)
    assert ratio == pytest.approx({"eta": scale, "phi": scale, "pt": scale}, abs=0.05)


def test_two_samples_of_the_same_jets_have_ratio_one_and_torch_works():
    a, b = random_jets(2000, seed=2), random_jets(2000, seed=3)
    ratio = spread_ratio(torch.tensor(a.particles), torch.tensor(a.mask), b.particles, b.mask)
    assert all(0.9 < v < 1.1 for v in ratio.values()), ratio
