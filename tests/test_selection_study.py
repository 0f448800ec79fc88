"""Issue 7's key test: on the synthetic fish with its ground truth, a real grid study over lambda
(Ray Tune, two seeds, from far too weak to far too strong) and the selection rule.

The recommended lambda must lie within one grid step of the lambda whose models recover the
planted assemblies best (mean over seeds of the mean best |cosine|), and the recommended model must
recover them at least as well as the best-objective model. The grid is log-spaced in half decades
from 1e-5 to 1e-1; N = 300 neurons (4 planted assemblies of 8), 8 hidden units, 3000 updates of 5
Gibbs steps (about 5 s a fit on one core) and a final evaluation of 1000 chains x 50 samples
(about 1.5 s; with 200 x 20 the evaluation noise alone is ~0.05 in mean nRMSE, as large as the
differences the rule has to see). The study minimises the worst nRMSE (``max_nrmse``, the
published model selection's criterion).

How often the rule passes these two checks, measured offline with these settings (plain CRBM.fit +
evaluate, no Ray; the Ray trials give the same numbers: this study's draw matched to every digit)
on 16 seed/data draws (synthetic fish seeds 0-9 with fit seeds 0, 1, and fish 0-5 with fit seeds
2, 3), code of commit 68e76f8:

- default tolerance (95% subset of the best, ``raysearch.selection.default_tolerance``):
  16/16 with ``max_nrmse``, 14/16 with ``mean_nrmse`` (misses: fish 0 seeds 2, 3 picks 3e-3,
  one step from the optimum but recovering 0.984 against the best-objective fit's 0.990; fish 1
  seeds 2, 3 picks 3e-4, two steps below it, 1e-3 falling 0.0005 outside the tolerance);
- the former tolerance (seed-to-seed spread near the best lambda): 8/16 with ``max_nrmse``,
  10/16 with ``mean_nrmse`` (it stops at the weak end of the nRMSE plateau, up to five grid
  steps below the optimum).

An earlier run of the same draws, partly with the trainer and evaluation before commits
1f66e88-d2106fa: 16/16 and 14/16 against 8/16 and 8/16. The draw run here is fish 1 with seeds
0, 1 (optimum 3e-3; the rule picks 1e-3 with ``max_nrmse``, 3e-3 with ``mean_nrmse``; the former
tolerance picked 3e-4 with ``max_nrmse``, two steps off). A study of 18 fits took 2 min 20 s to
2 min 45 s with both trials pinned to one core.

With issue 12's verdicts (failures counted in a lambda's score, the tolerance from the
evaluation's own jackknife noise instead of the grid scatter), the same draw (fish 1, seeds 0, 1)
gave: recovery by lambda 0.53 0.63 0.77 0.89 0.977 0.980 0.67 0.22 0.15 (optimum 3e-3), fits at
3e-2 and 1e-1 bad (empty); recommended 1e-3 (recovery 0.977, one step from the optimum; tolerance
0.157), best objective 1e-4 seed 1 (0.770). The study took about 10 minutes on a shared 2-core
machine (the final evaluations carry the jackknife groups).
"""

import numpy as np
import pytest

from raysearch.search.config import study_from_dict

GRID = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]

STUDY = {
    "name": "selection-grid",
    "recordings": [{"name": "fish", "synthetic": {"n_neurons": 300, "n_frames": 1500, "seed": 1}}],
    "model": {"n_hidden": 8, "n_updates": 3000, "batch_size": 100, "n_gibbs": 5},
    "search": {
        "mode": "grid",
        "penalty": "l2l1",
        "lam": GRID,
        "seeds": [0, 1],
        "objective": "max_nrmse",
        "max_concurrent": 2,
    },
    "evaluation": {
        "report_every": 3000,
        "during": {"n_chains": 20, "n_burnin": 20, "n_samples": 5, "n_between": 5},
        "final": {"n_chains": 1000, "n_burnin": 500, "n_samples": 50, "n_between": 10},
    },
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
    from raysearch import load_results, select_model
    from raysearch.analysis.recovery import recovery_table

    table = recovery_table(grid_study)
    assert len(table) == 2 * len(GRID)
    assert table["recovery"].notna().all()
    by_lam = table.groupby("lam")["recovery"].mean()
    grid = np.array(sorted(by_lam.index))
    np.testing.assert_allclose(grid, GRID, rtol=1e-9)
    optimum = int(np.argmax(by_lam.loc[grid].to_numpy()))

    rec, bins = select_model(load_results(grid_study))
    assert rec.attrs["objective"] == "max_nrmse"  # the study's objective
    assert rec.attrs["rule"] == "sparsest"
    assert rec.attrs["tolerance_source"] == "95% subset of the best"
    chosen = rec.set_index("role").loc["recommended"]
    best = rec.set_index("role").loc["best objective"]
    step = int(np.argmin(np.abs(np.log(grid) - np.log(float(chosen["lam"])))))
    print(table.sort_values(["lam", "seed"]).to_string())
    print(rec.attrs["message"])
    assert abs(step - optimum) <= 1, (grid[step], grid[optimum])

    recov = table.set_index("trial_id")["recovery"]
    assert recov[chosen["trial_id"]] >= recov[best["trial_id"]]
    # issue 7 names the best-mean-nRMSE model as the yardstick; with max_nrmse as the objective
    # that is another fit, so check it too (usable fits: not bad, not empty)
    usable = table[~table["bad"].astype(bool) & (table["weight_density"] > 0)]
    best_mean = usable.loc[usable["mean_nrmse"].idxmin(), "trial_id"]
    assert recov[chosen["trial_id"]] >= recov[best_mean]
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
    """The reason for the rule: the best-objective model sits at the weak end of the plateau."""
    from raysearch import load_results, select_model
    from raysearch.analysis.recovery import recovery_table

    table = recovery_table(grid_study).set_index("trial_id")
    best, _ = select_model(load_results(grid_study), rule="best")
    sparse, _ = select_model(load_results(grid_study))
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

    # two small lambdas and fits long enough that every nRMSE is defined (a 40-update tiny fit
    # often has RMSE_opt >= RMSE_shuf for h: an undefined nRMSE, reported as inf, and then the
    # two objectives coincide)
    # a final evaluation precise enough that the fits are told from chance (with the tiny
    # study's 40 chains the jackknife noise of each nRMSE is ~0.25, and every fit is bad:
    # no_better_than_chance, objective inf; measured with 300 chains: max upper bound 0.73)
    study = tiny_study(
        tmp_path,
        search={
            "objective": objective,
            "num_samples": 2,
            "points_to_evaluate": [{"lam": 0.001}, {"lam": 0.003}],
        },
        model={"n_updates": 150, "n_hidden": 10},
        evaluation={"final": {"n_chains": 300, "n_burnin": 200, "n_samples": 30, "n_between": 10}},
    )
    run = run_study(study)
    assert run.num_errors == 0
    df = load_results(run.experiment_dir).set_index("trial_id")
    assert np.isfinite(df[["mean_nrmse", "max_nrmse"]].to_numpy(float)).all(), df
    stored = optuna.load_study(
        study_name=study.name, storage=f"sqlite:///{Path(run.experiment_dir) / 'optuna.db'}"
    )
    done = [t for t in stored.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2
    got = sorted(t.value for t in done)
    assert got == pytest.approx(sorted(df[objective].astype(float)), rel=1e-9)
    other = "mean_nrmse" if objective == "max_nrmse" else "max_nrmse"
    assert not np.allclose(got, sorted(df[other].astype(float)))
