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

FIGURES = {
    "identity_best",
    "identity_bad",
    "nrmse_vs_lambda",
    "bad_share_vs_lambda",
    "region_couplings",
    "similarity",
    "pca",
    "assemblies",
    "selection_radar",
    "weight_histograms",
    "coupling_histograms",
}


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
    pd.DataFrame(gt.structural, index=ds.region_names, columns=ds.region_names).to_csv(
        root / "structural.csv"
    )
    return exp, root / "structural.csv"


def _check_report(out):
    import matplotlib.image as mpimg

    html = (out / "report.html").read_text()
    # self-contained: figures embedded; the only links are to the report's own files
    for ref in re.findall(r"(?:src|href)=['\"]([^'\"]*)", html):
        if ref.startswith("data:"):
            continue
        assert re.fullmatch(r"(figures|tables)/[\w.-]+\.(png|csv)", ref), ref
        assert (out / ref).is_file(), ref
    figs = dict(
        re.findall(
            r"<figure id='fig-([a-z_]+)'><img alt='[a-z_]+' "
            r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'>",
            html,
        )
    )
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
    from raysearch.search import load_results
    from raysearch.selection import select_model

    exp, _ = experiment
    a = analyze(exp, region_models=1)
    out = tmp_path / "report"
    html = _check_report(write_report(a, out).parent)
    section = html[html.index("<h2 id='model-selection'>Model selection</h2>") :]
    section = section[: section.index("<h2>", 10)]
    for name in ("selection_radar", "weight_histograms", "coupling_histograms"):
        assert f"<figure id='fig-{name}'>" in section
    assert "Bad models per lambda bin" in section and "recommended" in section
    rec, bins = select_model(load_results(exp))  # selection takes a DataFrame (issue 15.1)
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
    rc = main(
        [
            "analyze",
            str(exp),
            "--out",
            str(out),
            "--structural",
            str(structural),
            "--clusters",
            "2",
            "--region-models",
            "1",
        ]
    )
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


def test_report_header_labels_and_links(experiment, tmp_path):
    """The header names the study (from study.yaml), the tables are links to the CSV files,
    column headers and captions are words, not raw keys."""
    import datetime

    import yaml

    from raysearch import __version__
    from raysearch.analysis import analyze
    from raysearch.report import header_rows, write_report

    exp, _ = experiment
    study = {
        "name": "demo",
        "recordings": [{"name": "fish", "synthetic": {"n_neurons": 200, "n_frames": 1000}}],
        "preprocessing": {"signal": "spikes"},
        "search": {
            "mode": "optuna",
            "penalty": "l2l1",
            "lam": {"low": 1e-3, "high": 0.5},
            "objective": "mean_nrmse",
        },
    }
    (exp / "study.yaml").write_text(yaml.safe_dump(study))
    try:
        a = analyze(exp, region_models=1)
        when = datetime.datetime(2026, 1, 2, 3, 4, tzinfo=datetime.timezone.utc)
        rows = dict(header_rows(a, a.results, now=when))
        n, n_bad = len(a.results), int(a.results["bad"].sum())
        lam = a.results["lam"].astype(float)
        assert rows["Study"] == "demo" and rows["Search mode"] == "optuna"
        assert rows["Penalty"] == "l2l1" and rows["λ searched"] == "0.001 to 0.5 (log scale)"
        assert rows["Trials"] == f"{n} ({n_bad} flagged bad); λ {lam.min():.3g} to {lam.max():.3g}"
        assert rows["Data"] == "fish (synthetic fish, 200 neurons, 1000 frames); signal spikes"
        assert rows["Report date"] == "2026-01-02 03:04 UTC"
        assert rows["raysearch version"] == __version__
        out = tmp_path / "report"
        html = _check_report(write_report(a, out).parent)
    finally:
        (exp / "study.yaml").unlink()
    assert "<h1>raysearch analysis: demo</h1>" in html
    for name in a.tables():
        assert f"<a href='tables/{name}.csv'>" in html
    assert "<th>mean nRMSE</th>" in html and "<th>mean_nrmse</th>" not in html
    assert "<b>nRMSE against λ</b>" in html and "<b>nrmse_vs_lambda</b>" not in html
    assert "n_models:" not in html and "models analysed: " in html


def test_header_without_study_file(experiment):
    from raysearch.analysis import analyze
    from raysearch.report import header_rows

    exp, _ = experiment
    rows = dict(header_rows(analyze(exp, region_models=1)))
    assert rows["Study"] == exp.name and "Penalty" not in rows and "Trials" in rows


def test_report_cross_subject_section(experiment, tmp_path):
    """An Analysis with a ``cross_subject`` attribute (issue 14) gets its section, tables only,
    and the report stays self-contained."""
    from raysearch.analysis import analyze
    from raysearch.report import write_report

    exp, _ = experiment
    a = analyze(exp, region_models=1)
    a.cross_subject = {
        "recurrence": pd.DataFrame([[1.0, 0.5], [0.5, 1.0]], index=["a", "b"], columns=["a", "b"])
    }
    html = _check_report(write_report(a, tmp_path / "report").parent)
    assert "<h2>Cross-subject assemblies</h2>" in html and "share of assemblies" in html
