"""`raysearch results DIR`: the model-selection summary after the trial table (known answers).

The experiment directory is written by hand (Tune-style trial dirs + model files with
/evaluation), so the expected recommendation and bins are computed here without Ray.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from raysearch.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "analysis"))
from analysis_helpers import make_experiment  # noqa: E402

# lambda: (mean_nrmse seed 0, seed 1); the strongest lambda is bad for both seeds
GRID = {1e-4: (0.20, 0.22), 1e-3: (0.18, 0.20), 1e-2: (0.21, 0.23), 1e-1: (0.60, 0.55)}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    from raysearch.data.preprocessing import preprocess
    from raysearch.data.synthetic import make_synthetic_recording

    rec, _ = make_synthetic_recording(n_neurons=60, n_frames=300, seed=0)
    ds = preprocess(rec)
    rng = np.random.default_rng(0)
    specs = [
        dict(
            W=rng.normal(size=(3, ds.n_units)),
            c=np.ones(3),
            lam=lam,
            seed=s,
            mean_nrmse=vals[s],
            bad=lam == 1e-1,
        )
        for lam, vals in GRID.items()
        for s in (0, 1)
    ]
    return make_experiment(tmp_path_factory.mktemp("res") / "study", specs, ds)


def _section(out: str) -> str:
    return out[out.index("Model selection") :]


def test_default_rule_tolerance_from_seed_spread(experiment, capsys):
    assert main(["results", str(experiment)]) == 0
    out = capsys.readouterr().out
    assert out.index("trial_id") < out.index("Model selection")  # after the trial table
    sec = _section(out)
    # no study.yaml says otherwise: the default objective, the worst nRMSE (here = the mean)
    assert "objective max_nrmse, rule sparsest" in sec
    # default tolerance (raysearch.selection.default_tolerance): 3 usable lambdas, too few for the
    # grid scatter, so the noise of a lambda mean is the robust seed spread (every seed pair
    # differs by 0.02: sqrt(0.02**2 / 2 / median(chi2_1)) = 0.02097) over sqrt(2 seeds), times
    # d_3 * sqrt(2) (Gupta's 95% subset of the best, d_3 = 1.9163): 0.0402
    from scipy import stats

    from raysearch.selection import subset_constant

    tol = subset_constant(3) * np.sqrt(0.02**2 / 2 / stats.chi2.median(1))
    assert f"{tol:.4g} (95% subset of the best)" in sec and f"{tol:.3g}" == "0.0402"
    # lambda means 0.21, 0.19, 0.22: all within 0.19 + 0.0402; the largest good lambda 0.01, its
    # better seed
    rec_line = next(ln for ln in sec.splitlines() if "recommended:" in ln)
    assert "lambda 0.01," in rec_line and "mean_nrmse 0.2100" in rec_line
    assert "runner-up:" in sec
    # bins: one per lambda, 2 fits each; 2/2 bad at 0.1 with Wilson CI 34-100%
    table = sec[sec.index("Bad models per lambda range") :].splitlines()[2:]
    assert [ln.split()[2:6] for ln in table] == [["2", "0", "0", "0%"]] * 3 + [
        ["2", "2", "0", "100%"]
    ]
    assert table[-1].split()[-1] == "34-100%" and table[0].split()[-1] == "0-66%"


def test_given_tolerance_picks_the_sparsest_good_fit(experiment, capsys):
    assert main(["results", str(experiment), "--tolerance", "0.05"]) == 0
    sec = _section(capsys.readouterr().out)
    assert "0.05 (given); 6 good fit(s) within it" in sec
    lines = {ln.split(":")[0].strip(): ln for ln in sec.splitlines() if ":" in ln}
    assert "lambda 0.01," in lines["recommended"] and "mean_nrmse 0.2100" in lines["recommended"]
    assert "lambda 0.001," in lines["runner-up"] and "mean_nrmse 0.1800" in lines["runner-up"]
    assert "lambda 0.001," in lines["best objective"]


def test_seed_spread_tolerance_by_name(experiment, capsys):
    """Issue 7's first proposal stays selectable: the pooled seed spread over 1e-4, 1e-3, 1e-2
    (every seed pair differs by 0.02: 0.02 / sqrt(2)); only lambda 1e-3 (mean 0.19) is within
    0.19 + 0.0141, so its better seed (0.18) is recommended."""
    assert main(["results", str(experiment), "--tolerance", "seed-spread"]) == 0
    sec = _section(capsys.readouterr().out)
    assert f"{0.02 / np.sqrt(2):.4g} (seed spread)" in sec
    rec_line = next(ln for ln in sec.splitlines() if "recommended:" in ln)
    assert "lambda 0.001," in rec_line and "mean_nrmse 0.1800" in rec_line


def test_best_rule_and_objective_option(experiment, capsys):
    assert main(["results", str(experiment), "--rule", "best", "--objective", "max_nrmse"]) == 0
    sec = _section(capsys.readouterr().out)
    assert "objective max_nrmse, rule best" in sec and "tolerance:" not in sec
    rec_line = next(ln for ln in sec.splitlines() if "recommended:" in ln)
    assert "lambda 0.001" in rec_line and "max_nrmse 0.1800" in rec_line


def test_bad_tolerance_is_one_message_and_exit_2(experiment, capsys):
    assert main(["results", str(experiment), "--tolerance", "-1"]) == 2
    err = capsys.readouterr().err
    assert "tolerance" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exc:  # argparse: usage error, exit 2
        main(["results", str(experiment), "--tolerance", "wide"])
    assert exc.value.code == 2 and "seed-spread" in capsys.readouterr().err
