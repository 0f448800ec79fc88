"""A model file that cannot be read is never left out of an analysis without a word (issue 16).

Before: a garbage, pickled or truncated model file made its trial look unfinished, so ``analyze``
silently analyzed the others (the best trial could vanish, the recommended lambda change).
Now ``analyze`` fails on it by default (``strict``), and with ``strict=False`` / ``--no-strict``
lists it in the console, the report and ``summary.json``.
"""

import json
import pickle

import numpy as np
import pytest
from analysis_helpers import family_specs, make_experiment

from raysearch.analysis import analyze
from raysearch.cli import main
from raysearch.errors import InputError


def _spoil(path, how):
    if how == "garbage":
        path.write_bytes(b"\x00\x13 not a model at all " * 50)
    elif how == "pickle":
        path.write_bytes(pickle.dumps({"weights": np.ones((2, 2))}))
    else:  # truncated: the first part of a real model file
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])


@pytest.fixture()
def exp_with_best_spoiled(tmp_path, small_dataset):
    ds, _ = small_dataset
    specs = family_specs(np.random.default_rng(7), ds.n_units, per_family=2)
    exp = make_experiment(tmp_path / "study", specs, ds)
    # the best model (lowest mean nRMSE among the good ones) is abcde_00000
    assert min(range(len(specs)), key=lambda i: (specs[i]["bad"], specs[i]["mean_nrmse"])) == 0
    return exp


@pytest.mark.parametrize("how", ["garbage", "pickle", "truncated"])
def test_unreadable_model_file_fails_by_default_and_is_listed_otherwise(exp_with_best_spoiled, how):
    exp = exp_with_best_spoiled
    spoiled = exp / "models" / "abcde_00000.h5"
    _spoil(spoiled, how)
    with pytest.raises(InputError) as err:
        analyze(exp)
    assert str(spoiled) in str(err.value) and "--no-strict" in str(err.value)
    a = analyze(exp, strict=False)
    assert "abcde_00000" not in a.trial_ids and len(a.trial_ids) == 3
    assert len(a.skipped) == 1 and str(spoiled) in a.skipped[0]
    assert any(str(spoiled) in n for n in a.notes)
    assert a.summary()["skipped_models"] == a.skipped


def test_cli_lists_skipped_files_in_console_report_and_summary(exp_with_best_spoiled, capsys):
    exp = exp_with_best_spoiled
    spoiled = exp / "models" / "abcde_00000.h5"
    _spoil(spoiled, "garbage")
    rc = main(["analyze", str(exp)])
    out, err = capsys.readouterr()
    assert rc == 2 and "Traceback" not in err
    assert str(spoiled) in err and not (exp / "analysis").exists()
    rc = main(["analyze", str(exp), "--no-strict"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert f"skipped unreadable model file abcde_00000: {spoiled}" in err
    summary = json.loads((exp / "analysis" / "summary.json").read_text())
    assert len(summary["skipped_models"]) == 1 and str(spoiled) in summary["skipped_models"][0]
    assert any(str(spoiled) in n for n in summary["notes"])
    assert str(spoiled) in (exp / "analysis" / "report.html").read_text()
    printed = json.loads(out.splitlines()[0])
    assert printed["skipped_models"] == summary["skipped_models"]
