"""Sampling options chosen on validation jets: the setting whose jets match them best wins."""

import json
import math

import numpy as np
import pytest
import torch

from pipelines.data.jetnet import Jets
from pipelines.io import strict_json
from pipelines.run import calibrate as calibration
from pipelines.run.config import CalibrateConfig
from pipelines.run.generators import SamplerRecord, TrainedSampler
from tests.conftest import prong_jets

#: angular smearing of the prongs each fake guidance setting samples with: 2 draws the toy's own
#: jets, 1 blurs them (an under-sharpened flow), 3 blurs them more
BLUR = {1.0: 0.03, 2.0: 0.0, 3.0: 0.08}


def _jets(particles: torch.Tensor, mask: torch.Tensor) -> Jets:
    n = len(particles)
    features = np.stack([np.full(n, 1000.0), np.zeros(n), np.zeros(n), mask.sum(1).numpy()], 1)
    return Jets(particles.numpy(), mask.numpy(), features.astype(np.float32), np.full(n, 2))


def _fake_build_sampler(states, *, device, options):
    """A stand-in generator: three-prong toy jets, smeared as the guidance option says."""
    blur = BLUR.get(options["guidance"], math.nan)  # another setting: a diverged draw

    def sample(n: int, g: torch.Generator, kin: torch.Tensor | None):
        seed = int(torch.randint(1 << 30, (1,), generator=g))
        particles, mask = prong_jets(n, seed=seed)
        particles[..., :2] += blur * torch.randn(particles[..., :2].shape, generator=g)
        return particles, mask

    record = SamplerRecord("cloud", "t", 12, [[1000.0, 0.0]])
    return TrainedSampler(record, sample, torch.tensor([[1000.0, 0.0]]), torch.device("cpu"))


def test_the_setting_whose_jets_match_the_validation_jets_is_chosen(monkeypatch):
    monkeypatch.setattr(calibration, "build_sampler", _fake_build_sampler)
    valid, train = _jets(*prong_jets(600, seed=1)), _jets(*prong_jets(600, seed=2))
    settings = ({"guidance": 5.0}, *({"guidance": w} for w in BLUR))  # 5: NaN jets first
    cfg = CalibrateConfig(settings=settings)
    result = calibration.calibrate({}, {"guidance": 1.5}, cfg, valid=valid, train=train, seed=3)
    assert result["chosen"] == {"guidance": 2.0} and result["n_jets"] == 600
    worst = {row["setting"]["guidance"]: row["worst"] for row in result["settings"]}
    assert worst[5.0] > 10 * worst[2.0]  # NaN jets score far worst, never chosen
    # the toy's own jets score as a second real sample would; smeared prongs far worse
    assert worst[2.0] < 2.0 and min(worst[1.0], worst[3.0]) > 3 * worst[2.0]
    tau32 = {row["setting"]["guidance"]: row["ratios"]["tau32"] for row in result["settings"]}
    assert tau32[3.0] > tau32[1.0] > tau32[2.0]  # more smearing, further off
    lines = "\n".join(calibration.markdown(result))
    assert "| 2.0 |" in lines and lines.count("**yes**") == 1


@pytest.mark.parametrize("value", ["x", None, True, float("nan")])
def test_a_setting_built_in_python_must_hold_numbers(value):
    with pytest.raises(ValueError, match="each value must be a number"):
        CalibrateConfig(settings=({"guidance": value},))


def test_a_non_finite_score_read_back_from_json_ranks_last_and_prints_as_a_dash():
    rows = [
        {"setting": {"guidance": 1.0}, "ratios": {"tau32": math.inf}, "worst": math.inf},
        {"setting": {"guidance": 2.0}, "ratios": {"tau32": 1.5}, "worst": 1.5},
    ]
    chosen = {"guidance": 2.0}
    result = {"n_jets": 200, "observables": ["tau32"], "settings": rows, "chosen": chosen}
    stored = json.loads(json.dumps(strict_json(result)))  # as write_json stores it: inf -> null
    assert [calibration._worst(r) for r in stored["settings"]] == [math.inf, 1.5]
    lines = "\n".join(calibration.markdown(stored))
    assert "| 1.0 | - | - |" in lines and "| 2.0 | 1.50 | 1.50 | **yes** |" in lines
