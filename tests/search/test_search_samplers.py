"""Every search mode's Tuner and sampler survive pickling (Ray Tune pickles both).

Optuna 5.1's NSGA-II sampler holds a lock and stopped pickling; these tests turn any such upstream
change into one clear failure instead of a crash at the start of a ``multi`` study.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import pytest
from search_helpers import tiny_study

from raysearch.search.samplers import NSGAIISampler, TPESampler, make_sampler
from raysearch.search.tuner import build_tuner, experiment_dir, prepare_datasets

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _objective_single(trial):
    x = trial.suggest_float("x", 1e-4, 1.0, log=True)
    return (x - 0.01) ** 2


def _objective_multi(trial):
    x = trial.suggest_float("x", 1e-4, 1.0, log=True)
    return (x - 0.01) ** 2, x


def _study(mode, sampler):
    if mode == "multi":
        return optuna.create_study(
            directions=["minimize", "minimize"], sampler=sampler
        ), _objective_multi
    return optuna.create_study(direction="minimize", sampler=sampler), _objective_single


@pytest.mark.parametrize("mode, cls", [("optuna", TPESampler), ("multi", NSGAIISampler)])
def test_sampler_pickles_before_and_after_use_and_keeps_proposing_the_same(mode, cls):
    """A sampler pickled before use proposes exactly what an untouched one with the same seed
    proposes; one pickled in the middle of a study carries on with the same proposals."""
    sampler = make_sampler(mode, seed=3)
    assert isinstance(sampler, cls)
    assert isinstance(sampler, optuna.samplers.BaseSampler)

    ref_study, obj = _study(mode, make_sampler(mode, seed=3))
    ref_study.optimize(obj, n_trials=30)
    ref = [t.params["x"] for t in ref_study.trials]

    copy = pickle.loads(pickle.dumps(sampler))
    study, obj = _study(mode, copy)
    study.optimize(obj, n_trials=15)
    # mid-study: the sampler now holds a populated generation cache (NSGA-II) and RNG state
    resumed = pickle.loads(pickle.dumps(study.sampler))
    study.sampler = resumed
    study.optimize(obj, n_trials=15)
    assert [t.params["x"] for t in study.trials] == ref


def test_make_sampler_rejects_other_modes():
    with pytest.raises(ValueError, match="grid"):
        make_sampler("grid", 0)


@pytest.mark.parametrize("mode", ["optuna", "multi", "grid", "optuna+asha"])
def test_every_search_mode_builds_a_tuner_that_pickles(ray_session, tmp_path, mode):
    """Tuner(...) pickles the trainable and search algorithm; OptunaSearch.save pickles the Optuna
    study with its sampler (plain pickle) whenever Tune snapshots the experiment. Both must work
    for every mode without starting a trial."""
    search = {"mode": mode.split("+")[0]}
    if mode == "grid":
        search.update(lam=[1e-3, 1e-2], seeds=[0, 1])
    if mode.endswith("asha"):
        search["asha"] = {"grace_updates": 10, "reduction_factor": 2}
    study = tiny_study(tmp_path, search=search)
    exp_dir = experiment_dir(study)
    Path(exp_dir).mkdir(parents=True)  # run_study makes it before building the Tuner
    tuner = build_tuner(study, prepare_datasets(study), exp_dir)  # pickles (Tuner.__init__)
    alg = tuner._local_tuner._tune_config.search_alg
    if mode == "grid":
        assert alg is None
        return
    # what Tune does before the first trial, then a searcher snapshot as Tune writes it
    assert alg.set_search_properties(None, None, _space(study))
    alg.save(str(tmp_path / "searcher.pkl"))
    with open(tmp_path / "searcher.pkl", "rb") as f:
        state = pickle.load(f)
    assert state["_ot_study"].sampler.__class__.__name__ == (
        "NSGAIISampler" if mode == "multi" else "TPESampler"
    )


def _space(study):
    from raysearch.search.tuner import _space as space

    return space(study)
