"""report.html is self-contained, holds every figure as a valid PNG; CSV tables; the CLI."""

import base64
import io
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent / "analysis"))

FIGURES = {"identity_best", "identity_bad", "nrmse_vs_lambda", "bad_share_vs_lambda",
           "region_couplings", "similarity", "pca", "assemblies",
           "selection_radar", "weight_histograms", "coupling_histograms"}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    from analysis_helpers import family_specs, make_experiment

    from raysearch.data.preprocessing import preprocess
    from raysearch.data.synthetic import make_synthetic_recording

    rec, gt = make_synthetic_recording(n_neurons=200, n_frames=1000, seed=0)
    ds = preprocess(rec)
    specs = family_specs(np.random.default_rng(0), ds.n_units, per_family=3)
    root = tmp_path_factory.mktemp("rep")
    exp = make_experiment(root / "study", specs, ds)
    pd.DataFrame(gt.structural, index=ds.region_names,
                 columns=ds.region_names).to_csv(root / "structural.csv")
    return exp, root / "structural.csv"


def _check_report(out):
    import matplotlib.image as mpimg

    html = (out / "report.html").read_text()
    # self-contained: no external references
    assert not re.search(r"(src|href)=['\"](?!data:)", html)
    figs = dict(re.findall(r"<figure id='fig-([a-z_]+)'><img alt='[a-z_]+' "
                           r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'>", html))
    assert set(figs) == FIGURES
    for name, b64 in figs.items():
        png = base64.b64decode(b64)
        assert png[:8] == b"\x89PNG\r\n\x1a\n", name
        img = mpimg.imread(io.BytesIO(png), format="png")
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100, name
        assert np.ptp(img[..., :3]) > 0, f"{name} is blank"
        assert (out / "figures" / f"{name}.png").read_bytes() == png
    return html


def test_report(experiment, tmp_path):
    from raysearch.analysis import analyze
    from raysearch.report import write_report

    exp, structural = experiment
    a = analyze(exp, structural=structural, region_models=2)
    out = tmp_path / "report"
    write_report(a, out)
    _check_report(out)
    for name in a.tables():
        assert (out / "tables" / f"{name}.csv").stat().st_size > 0
    sim = pd.read_csv(out / "tables" / "similarity_pearson.csv", index_col=0)
    np.testing.assert_allclose(sim.to_numpy(), a.similarity.pearson)
    models = pd.read_csv(out / "tables" / "models.csv")
    assert {"trial_id", "lam", "cluster", "pc1"} <= set(models.columns)
    assert not list(out.glob("**/.*.tmp"))


def test_report_model_selection_section(experiment, tmp_path):
    """The section holds the recommendation and bad-share tables, then the radar chart and the
    two histograms, each a valid non-blank PNG; its tables agree with select_model."""
    from raysearch.analysis import analyze
    from raysearch.report import write_report
    from raysearch.selection import select_model

    exp, _ = experiment
    a = analyze(exp, region_models=1)
    out = tmp_path / "report"
    html = _check_report(write_report(a, out).parent)
    section = html[html.index("<h2 id='model-selection'>Model selection</h2>"):]
    section = section[:section.index("<h2>", 10)]
    for name in ("selection_radar", "weight_histograms", "coupling_histograms"):
        assert f"<figure id='fig-{name}'>" in section
    assert "Bad models per lambda bin" in section and "recommended" in section
    rec, bins = select_model(exp)
    got = pd.read_csv(out / "tables" / "selection_recommendation.csv")
    assert got["trial_id"].tolist() == rec["trial_id"].tolist()
    got = pd.read_csv(out / "tables" / "selection_bad_share.csv")
    assert got["n_fits"].tolist() == bins["n_fits"].tolist()
    assert got["n_bad"].tolist() == bins["n_bad"].tolist()
    radar = pd.read_csv(out / "tables" / "selection_radar.csv")
    assert radar["role"].iloc[0].startswith("recommended")
    assert {"bad", "worst (none bad)"} & set(radar["role"])


def test_cli_analyze(experiment, tmp_path, capsys):
    from raysearch.cli import main

    exp, structural = experiment
    out = tmp_path / "cli-out"
    rc = main(["analyze", str(exp), "--out", str(out), "--structural", str(structural),
               "--clusters", "2", "--region-models", "1"])
    assert rc == 0
    assert "report:" in capsys.readouterr().out
    _check_report(out)


def test_cli_errors(tmp_path, capsys):
    from raysearch.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["analyze", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert not (tmp_path / "empty" / "analysis").exists()


def test_report_cross_subject_section(experiment, tmp_path):
    """An Analysis with a ``cross_subject`` attribute (issue 14) gets its section, tables only,
    and the report stays self-contained."""
    from raysearch.analysis import analyze
    from raysearch.report import write_report

    exp, _ = experiment
    a = analyze(exp, region_models=1)
    a.cross_subject = {"recurrence": pd.DataFrame([[1.0, 0.5], [0.5, 1.0]], index=["a", "b"],
                                                  columns=["a", "b"])}
    html = _check_report(write_report(a, tmp_path / "report").parent)
    assert "<h2>Cross-subject assemblies</h2>" in html and "share of assemblies" in html
