"""The evaluation pipeline: truth floor, outputs, bad input."""

import json

import numpy as np
import pytest

from pipelines.cli import main
from pipelines.data.jetnet import read_jetnet_file
from pipelines.evaluation.evaluate import EvalConfig, draw_samples, evaluate
from tests.conftest import random_jets

FAST = EvalConfig(n_jets=150, cov_mmd=False, fpnd=False)


def test_samples_are_disjoint_and_the_same_size():
    real, gen = random_jets(500, 30, seed=1), random_jets(200, 30, seed=2)
    samples = draw_samples(real, gen, 10_000, seed=0)
    assert len(samples.reference) == len(samples.floor) == len(samples.gen) == 200
    rows = {tuple(r.ravel()) for r in samples.reference.particles}
    assert not rows & {tuple(r.ravel()) for r in samples.floor.particles}


def test_model_equal_to_real_sits_at_the_floor_and_bad_model_far_above():
    real = random_jets(1200, 30, seed=3)
    good = evaluate(real, random_jets(400, 30, seed=4), cfg=FAST, progress=False)
    bad_jets = random_jets(400, 30, seed=4)
    bad_jets.particles[..., 0] *= 2.0  # twice as wide in eta
    bad = evaluate(real, bad_jets, cfg=FAST, progress=False)
    for name in ("emd_sum", "w1p_eta"):
        assert bad["metrics"][name]["ratio"] > 2 * good["metrics"][name]["ratio"], name
    # FPD's floor at 150 jets is not told from 0 by its error: no ratio, the values compare
    assert bad["metrics"]["fpd"]["value"] > 2 * good["metrics"]["fpd"]["value"]
    assert good["metrics"]["emd_sum"]["ratio"] < 3
    row = good["metrics"]["w1m"]
    assert row["ratio"] == pytest.approx(row["value"] / row["floor"])
    assert good["skipped"]["fpnd"] == "switched off" and good["n_jets"] == 150


def test_fpnd_skipped_with_reason_for_w():
    real, gen = random_jets(300, 30, seed=5), random_jets(150, 30, seed=6)
    out = evaluate(
        real, gen, jet_class="W", cfg=EvalConfig(n_jets=150, cov_mmd=False), progress=False
    )
    assert "g, q, t only" in out["skipped"]["fpnd"] and "fpnd" not in out["metrics"]


def _far(jets, feature, value):
    """``jets`` with the first particle's ``feature`` set to ``value`` (issue 25 #30: eta_rel
    1e30 failed in the plots, after every metric was computed)."""
    jets.particles[0, 0, feature] = value
    return jets


@pytest.mark.parametrize(
    ("real", "gen", "match"),
    [
        (random_jets(300, 30), random_jets(150, 20), "same particle count"),
        (random_jets(150, 30), random_jets(150, 30), "too few jets"),
        (random_jets(300, 30), random_jets(50, 30), "too few jets"),
        (random_jets(300, 30), _far(random_jets(150, 30), 0, 1e30), "eta_rel 1e\\+30, outside"),
        (_far(random_jets(300, 30), 2, -0.5), random_jets(150, 30), "real particles have pt_rel"),
    ],
)
def test_bad_inputs(real, gen, match):
    with pytest.raises(ValueError, match=match):
        evaluate(real, gen, cfg=FAST, progress=False)


def test_nan_and_unknown_class():
    real, gen = random_jets(300, 30), random_jets(150, 30)
    gen.particles[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="generated particles contain NaN"):
        evaluate(real, gen, cfg=FAST, progress=False)
    with pytest.raises(ValueError, match="unknown jet class"):
        evaluate(real, random_jets(150, 30), jet_class="higgs", cfg=FAST, progress=False)


def test_cli_evaluate_two_generated_top_samples(pythia_top_files, tmp_path, capsys):
    real, gen = pythia_top_files
    out = tmp_path / "eval"
    assert (
        main(["evaluate", "--real", str(real), "--gen", str(gen), "--out", str(out), "--n", "300"])
        == 0
    )
    assert "ratio" in capsys.readouterr().out
    text = (out / "metrics.json").read_text()
    results = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.json"))
    assert results["jet_class"] == "t" and results["n_jets"] == 300
    expected = {
        "emd_sum",
        "legacy_emd_sum",
        "jsd_mass",
        "kl_mass",
        "w1m",
        "w1p",
        "w1efp",
        "fpd",
        "kpd",
        "cov",
        "mmd",
        "fpnd",
    }
    assert expected <= set(results["metrics"])
    for row in results["metrics"].values():
        assert set(row) - {"undefined"} == {"value", "std", "floor", "floor_std", "ratio"}
        # an undefined number is null, and the row says why
        assert {k for k, v in row.items() if v is None} == set(row.get("undefined", {}))
    # two Pythia samples of the same process: the generated one is as good as the floor
    assert results["metrics"]["emd_sum"]["ratio"] < 3
    report = (out / "report.md").read_text()
    assert "truth floor" in report and "| fpnd |" in report and "NOT a distance" in report
    # FPND has no uncertainty: "n/a", never "± 0"
    fpnd_row = next(line for line in report.splitlines() if line.startswith("| fpnd |"))
    assert fpnd_row.split("|")[3].strip() == "n/a" and "| 0 |" not in fpnd_row
    plots = {p.name for p in (out / "plots").glob("*.png")}
    assert {"jet_mass.png", "jet_multiplicity.png", "particle_pt_rel.png", "efp_0.png"} <= plots
    assert all((out / "plots" / p).stat().st_size > 5000 for p in plots)
    assert "plots/jet_mass.png" in report


def test_cli_evaluate_bad_files(tmp_path, capsys, pythia_top_files):
    code = main(
        [
            "evaluate",
            "--real",
            str(tmp_path / "missing.hdf5"),
            "--gen",
            str(pythia_top_files[1]),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "missing.hdf5: no such file" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()
    small = read_jetnet_file(pythia_top_files[1])
    assert len(small) == 300
    code = main(
        [
            "evaluate",
            "--real",
            str(pythia_top_files[1]),
            "--gen",
            str(pythia_top_files[1]),
            "--out",
            str(tmp_path / "o"),
            "--class",
            "higgs",
        ]
    )
    assert code == 2 and "unknown jet class" in capsys.readouterr().err


def test_ratio_is_undefined_for_a_non_positive_floor():
    from pipelines.evaluation.evaluate import _row

    assert _row((2.0, 0.1), (4.0, 0.2))["ratio"] == 0.5
    assert np.isnan(_row((1e-4, 0.0), (-2e-5, 0.0))["ratio"])
    assert np.isnan(_row((0.0, 0.0), (0.0, 0.0))["ratio"])


def test_ratio_reasons_and_strict_json_round_trip(tmp_path):
    from pipelines.evaluation.evaluate import _row, read_metrics
    from pipelines.io import write_json

    row = _row((1e-4, 0.0), (-2e-5, 0.0))
    assert set(row["undefined"]) == {"ratio"} and "floor is <= 0" in row["undefined"]["ratio"]
    assert "undefined" not in _row((2.0, 0.1), (4.0, 0.2))
    nan_value = _row((float("nan"), 0.0), (1.03, 0.0))
    assert set(nan_value["undefined"]) == {"value", "ratio"}
    # the floor of 1.03 is fine: the ratio is undefined because the value is (issue 25 #32)
    assert "floor is <= 0" not in nan_value["undefined"]["ratio"]
    assert "value is not a finite number" in nan_value["undefined"]["ratio"]
    path = write_json(tmp_path / "metrics.json", {"metrics": {"kpd": row}})
    assert '"ratio": null' in path.read_text() and "NaN" not in path.read_text()
    assert np.isnan(read_metrics(path)["metrics"]["kpd"]["ratio"])


def test_cli_evaluate_takes_the_class_from_the_generated_file(pythia_top_files, tmp_path, capsys):
    """A file from `jetflows sample` names its class; --n beyond the files is said, not hidden;
    files naming different classes are refused unless --class says which."""
    import h5py

    real, gen = pythia_top_files
    tagged = tmp_path / "generated.hdf5"
    tagged.write_bytes(gen.read_bytes())
    with h5py.File(tagged, "a") as f:
        f.attrs["jet_class"] = "g"
    args = ["evaluate", "--real", str(real), "--gen", str(tagged), "--out", str(tmp_path / "o")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "generated file holds g jets, the real file t jets" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()
    renamed = tmp_path / "real" / "jets.hdf5"  # no JetNet name: the attribute decides
    renamed.parent.mkdir()
    renamed.write_bytes(real.read_bytes())
    with h5py.File(renamed, "a") as f:  # an fpnd-matched file: its phi_rel is compressed
        f.attrs["phi_rel"] = "delta phi / pi (compressed, not radians)"
    (tmp_path / "reports").mkdir()  # --out a link: written through it, the link kept (#39)
    (tmp_path / "p").symlink_to(tmp_path / "reports", target_is_directory=True)
    args = ["evaluate", "--real", str(renamed), "--gen", str(tagged), "--out", str(tmp_path / "p")]
    assert main([*args, "--n", "100000", "--no-fpnd", "--no-cov-mmd"]) == 0
    captured = capsys.readouterr()
    assert "evaluating 300 jets per sample, not 100000" in captured.err
    assert f"{renamed}: phi_rel is stored as delta phi / pi" in captured.err  # issue 25 #40
    assert json.loads((tmp_path / "p" / "metrics.json").read_text())["jet_class"] == "g"
    assert (tmp_path / "p").is_symlink() and (tmp_path / "reports" / "metrics.json").is_file()
    assert not [p for p in tmp_path.iterdir() if ".old-" in p.name or ".tmp-" in p.name]


def test_plot_choices_for_spiky_and_integer_distributions():
    """One bin per count and at least ten even when every jet has 30 particles; log-y where the
    populated bins span decades; ratios out of range and generated-only bins become arrows."""
    from pipelines.evaluation.report import _bins, _ratio_panel, _y_scale, pyplot

    thirty = np.full(100, 30.0)
    edges = _bins(thirty, thirty, logx=False, integer=True)
    assert len(edges) - 1 >= 10 and np.allclose(np.diff(edges), 1) and edges[-1] == 30.5
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2)
    _y_scale(top, np.array([0.5, 1e-2, 1e-5, 0.0]))
    assert top.get_yscale() == "log"
    _y_scale(bottom, np.array([0.5, 0.2, 0.1]))
    assert bottom.get_yscale() == "linear"
    fig2, ax = plt.subplots()
    h_real, h_gen = np.array([100, 100, 0, 100]), np.array([100, 400, 5, 0])
    _ratio_panel(ax, h_real, h_gen, h_real / 300, h_gen / 505, np.arange(5.0))
    arrows = {line.get_marker(): len(line.get_xdata()) for line in ax.lines if line.get_marker()}
    # the 4x bin and the generated-only bin are arrows; 1 and 0 (gen empty) are points
    assert arrows.get("^") == 2 and arrows.get("o") == 2
    plt.close(fig)
    plt.close(fig2)


def test_no_ratio_where_the_floor_is_within_its_own_error():
    """Issue 39 #12: at --n 400 an FPD floor of 2.9e-18 +- 0.0096 printed a ratio of 3.05e15."""
    from pipelines.evaluation.rows import MetricRow

    noisy = MetricRow(8.8e-3, 2.9e-18, std=1e-3, floor_std=0.0096).to_dict()
    assert noisy["ratio"] is None or np.isnan(noisy["ratio"])
    assert "not told apart from 0" in noisy["undefined"]["ratio"]
    assert MetricRow(0.3, 0.2, std=0.01, floor_std=0.05).ratio == pytest.approx(1.5)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ("empty", "the real jets hold no particles at all"),
        ("huge pt", "generated jets have pt 1e+30 GeV, outside"),
    ],
)
def test_jets_that_cannot_be_evaluated_are_refused(tmp_path, capsys, edit, match):
    """Issue 39 #12: all-empty real jets gave exit 0 and a report of n/a; a generated jet pt
    of 1e30 GeV was accepted (emd_pt 1.2e30) while a negative one was refused."""
    from pipelines.data.jetnet import write_jetnet_file
    from tests.conftest import assert_one_line_error

    real, gen = random_jets(400, 30, seed=1), random_jets(200, 30, seed=2)
    if edit == "empty":
        real.mask[:] = False
        real.particles[:] = 0
        real.jet_features[:, 3] = 0
    else:
        gen.jet_features[5, 0] = 1e30
    write_jetnet_file(tmp_path / "real.hdf5", real)
    write_jetnet_file(tmp_path / "gen.hdf5", gen)
    argv = ["evaluate", "--real", str(tmp_path / "real.hdf5"), "--gen", str(tmp_path / "gen.hdf5")]
    assert_one_line_error(capsys, [*argv, "--out", str(tmp_path / "ev")], match)
    assert not (tmp_path / "ev").exists()
