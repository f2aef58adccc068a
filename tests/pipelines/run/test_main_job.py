"""`jetflows data generate` + `data summary` for several classes (the data step of the main job;
the pipeline itself is tested in test_pipeline.py). Full size is `slow`; CI runs a small version
(few jets, two classes) through the same commands."""

import json

import pytest

from pipelines.cli import main

EXPECTED_PEAKS = {"t": (170, 190), "w": (78, 95), "z": (88, 102)}  # GeV, issue 2


def _main_job(tmp_path, classes, n, chunk):
    files = []
    for cls in classes:
        out = tmp_path / "data" / f"{cls}.hdf5"
        assert (
            main(
                [
                    "data",
                    "generate",
                    "--class",
                    cls,
                    "--n",
                    str(n),
                    "--out",
                    str(out),
                    "--chunk-size",
                    str(chunk),
                    "--cache",
                    str(tmp_path / "cache"),
                ]
            )
            == 0
        )
        files.append(str(out))
    assert main(["data", "summary", *files, "--out", str(tmp_path / "summary")]) == 0
    return json.loads((tmp_path / "summary" / "summary.json").read_text())


def test_main_job_small(tmp_path):
    rows = _main_job(tmp_path, ["g", "t"], n=4, chunk=2)
    assert set(rows) == {"g.hdf5", "t.hdf5"}
    assert all(row["jets"] == 4 for row in rows.values())
    assert (tmp_path / "summary" / "mass.png").stat().st_size > 1000


@pytest.mark.slow
def test_main_job_mass_peaks(tmp_path):
    rows = _main_job(tmp_path, list(EXPECTED_PEAKS), n=1600, chunk=100)
    for cls, (lo, hi) in EXPECTED_PEAKS.items():
        assert lo <= rows[f"{cls}.hdf5"]["file_mass_peak"] <= hi, (cls, rows[f"{cls}.hdf5"])
