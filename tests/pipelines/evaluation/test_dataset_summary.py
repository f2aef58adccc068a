"""Dataset summaries compare like with like."""

import numpy as np
import pytest

from pipelines.evaluation.dataset_summary import summarize, write_summary
from tests.conftest import random_jets


def test_particle_level_figures_ignore_what_the_file_says_about_the_clustered_jet(tmp_path):
    """Two files with the same particles, one claiming a clustered mass 50 GeV higher and 60
    more constituents (as a Pythia file does against a generated one): the particle-level
    figures agree, the file's own differ, and the plots use the particle level."""
    generated = random_jets(400, 30, seed=3)
    clustered = random_jets(400, 30, seed=3)
    clustered.jet_features[:, 2] += 50.0
    clustered.jet_features[:, 3] += 60
    a, b = summarize(generated), summarize(clustered)
    for key in ("particle_mass_peak", "particle_mass_median", "particle_multiplicity_median"):
        assert a[key] == pytest.approx(b[key])
    assert b["file_mass_peak"] - a["file_mass_peak"] == pytest.approx(50.0, abs=1.0)
    assert b["file_multiplicity_median"] - a["file_multiplicity_median"] == 60
    rows = write_summary({"gen": generated, "real": clustered}, tmp_path)
    assert set(rows) == {"gen", "real"}
    text = (tmp_path / "summary.md").read_text()
    assert "not comparable" in text and np.isfinite(rows["gen"]["particle_mass_peak"])
    assert (tmp_path / "mass.png").stat().st_size > 1000


def test_data_summary_writes_through_a_symlinked_out_and_keeps_the_link(tmp_path):
    """--out a symbolic link to a folder: the results go into the folder and the link stays
    (issue 25 #39: the link was replaced by a folder and a .link.old-PID left beside it)."""
    from pipelines.cli import main
    from pipelines.data.jetnet import write_jetnet_file

    write_jetnet_file(tmp_path / "t.hdf5", random_jets(50, 30, seed=1))
    target, link = tmp_path / "reports", tmp_path / "link"
    target.mkdir()
    link.symlink_to(target, target_is_directory=True)
    assert main(["data", "summary", str(tmp_path / "t.hdf5"), "--out", str(link)]) == 0
    assert link.is_symlink() and (target / "summary.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "reports", "t.hdf5"]
