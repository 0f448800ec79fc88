"""Issue 7's key test: on the synthetic fish with its ground truth, a real grid study over lambda
(Ray Tune, two seeds, from far too weak to far too strong) and the selection rule.

The recommended lambda must lie within one grid step of the lambda whose models recover the
planted assemblies best (mean over seeds of the mean best |cosine|), and the recommended model must
recover them at least as well as the best-mean-nRMSE model. The grid is log-spaced in half decades
from 1e-5 to 1e-1; N = 300 neurons (4 planted assemblies of 8), 8 hidden units, 3000 updates of 5
Gibbs steps (about 5 s a fit on one core) and a final evaluation of 1000 chains x 50 samples
(about 1.7 s; with 200 x 20 the evaluation noise alone is ~0.05 in mean nRMSE, as large as the
differences the rule has to see).

Measured offline with these settings (plain CRBM + evaluate, same seeds): recovery per lambda
0.54, 0.62, 0.74, 0.93, 0.99, 0.98, 0.61, 0.14, 0.10; the rule recommends 1e-3. With 1000
updates the nRMSE plateau ends before the recovery optimum (3e-3) and the rule lands two grid
steps below it on 3 of 4 seed/data draws; that setting is not used here.
"""

import numpy as np
import pytest

from raysearch.search.config import study_from_dict

GRID = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]

STUDY = {
    "name": "selection-grid",
    "recordings": [{"name": "fish", "synthetic": {"n_neurons": 300, "n_frames": 1500, "seed": 0}}],
    "model": {"n_hidden": 8, "n_updates": 3000, "batch_size": 100, "n_gibbs": 5},
    "search": {"mode": "grid", "penalty": "l2l1", "lam": GRID, "seeds": [0, 1],
               "max_concurrent": 2},
    "evaluation": {"report_every": 3000,
                   "during": {"n_chains": 20, "n_burnin": 20, "n_samples": 5, "n_between": 5},
                   "final": {"n_chains": 1000, "n_burnin": 500, "n_samples": 50, "n_between": 10}},
    "run": {"verbose": 0, "max_failures": 0},
}


@pytest.fixture(scope="module")
def grid_study(ray_session, tmp_path_factory):
    from raysearch.search import run_study

    d = dict(STUDY, run=dict(STUDY["run"], storage_path=str(tmp_path_factory.mktemp("sel"))))
    run = run_study(study_from_dict(d))
    assert run.num_errors == 0
    return run.experiment_dir


@pytest.mark.slow
def test_recommended_lambda_recovers_the_planted_assemblies(grid_study):
    from raysearch import select_model
    from raysearch.recovery import recovery_table

    table = recovery_table(grid_study)
    assert len(table) == 2 * len(GRID)
    assert table["recovery"].notna().all()
    by_lam = table.groupby("lam")["recovery"].mean()
    grid = np.array(sorted(by_lam.index))
    np.testing.assert_allclose(grid, GRID, rtol=1e-9)
    optimum = int(np.argmax(by_lam.loc[grid].to_numpy()))

    rec, bins = select_model(grid_study)
    assert rec.attrs["rule"] == "sparsest" and rec.attrs["tolerance_source"] == "95% subset of the best"
    chosen = rec.set_index("role").loc["recommended"]
    best = rec.set_index("role").loc["best objective"]
    step = int(np.argmin(np.abs(np.log(grid) - np.log(float(chosen["lam"])))))
    print(table.sort_values(["lam", "seed"]).to_string())
    print(rec.attrs["message"])
    assert abs(step - optimum) <= 1, (grid[step], grid[optimum])

    recov = table.set_index("trial_id")["recovery"]
    assert recov[chosen["trial_id"]] >= recov[best["trial_id"]]
    # one bin per grid lambda; the weak end has no bad fit; the far-too-strong end has no usable
    # fit: bad (vv nRMSE > 1) or empty (no weight above 0.01: vv nRMSE ~ 1 either side of 1)
    assert bins["n_fits"].tolist() == [2] * len(GRID)
    assert bins["share_bad"].iloc[0] == 0.0
    strong = table[table["lam"] == GRID[-1]]
    assert (strong["bad"].astype(bool) | (strong["weight_density"] == 0)).all()
    # the recommendation is a good, non-empty fit
    assert not bool(chosen["bad"]) and float(chosen["weight_density"]) > 0


@pytest.mark.slow
def test_plain_best_objective_recovers_less(grid_study):
    """The reason for the rule: the best-mean-nRMSE model sits at the weak end of the plateau."""
    from raysearch import select_model
    from raysearch.recovery import recovery_table

    table = recovery_table(grid_study).set_index("trial_id")
    best, _ = select_model(grid_study, rule="best")
    sparse, _ = select_model(grid_study)
    r_best = table.loc[best.iloc[0]["trial_id"], "recovery"]
    r_sparse = table.loc[sparse.iloc[0]["trial_id"], "recovery"]
    assert float(sparse.iloc[0]["lam"]) >= float(best.iloc[0]["lam"])
    assert r_sparse >= r_best


@pytest.mark.parametrize("objective", ["max_nrmse", "mean_nrmse"])
def test_optuna_minimises_the_study_objective(ray_session, tmp_path, objective):
    """The value Optuna stores for each trial is the chosen objective (the other is reported)."""
    import sys
    from pathlib import Path

    import optuna

    sys.path.insert(0, str(Path(__file__).parent / "search"))
    from search_helpers import tiny_study

    from raysearch.search import load_results, run_study

    study = tiny_study(tmp_path, search={"objective": objective, "num_samples": 2})
    run = run_study(study)
    assert run.num_errors == 0
    df = load_results(run.experiment_dir).set_index("trial_id")
    assert df[["mean_nrmse", "max_nrmse"]].notna().all().all()
    stored = optuna.load_study(study_name=study.name,
                               storage=f"sqlite:///{Path(run.experiment_dir) / 'optuna.db'}")
    done = [t for t in stored.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2
    got = sorted(t.value for t in done)
    assert got == pytest.approx(sorted(df[objective].astype(float)), rel=1e-9)
    other = "mean_nrmse" if objective == "max_nrmse" else "max_nrmse"
    assert not np.allclose(got, sorted(df[other].astype(float)))
