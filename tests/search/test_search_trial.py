"""Pieces of the trial that run without Ray: metric sanitising, the mid-fit model snapshot."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raysearch.backend import get_backend
from raysearch.crbm import CRBM
from raysearch.data.preprocessing import preprocess
from raysearch.data.synthetic import make_synthetic_recording
from raysearch.errors import ConfigError
from raysearch.evaluation import evaluate
from raysearch.search.trial import METRIC_KEYS, sanitize_metrics


def test_sanitize_metrics_maps_nan_to_inf_and_flags_bad():
    good = {k: 0.5 for k in METRIC_KEYS} | {"bad": False, "bad_reason": "", "lam": 0.1}
    assert sanitize_metrics(good) == good
    out = sanitize_metrics(good | {"nrmse_vv": float("nan"), "sparsity": None})
    assert out["nrmse_vv"] == math.inf and out["sparsity"] == math.inf
    # changed on purpose (issue 12.2): a NaN nRMSE alone does not make a fit bad (an unassessable
    # statistic reports NaN; evaluate's verdict flags an undefined assessable one); a non-finite
    # objective does, with a reason, and a bad fit's objectives are inf for Optuna (issue 12.1)
    assert out["bad"] is False and out["lam"] == 0.1 and out["max_nrmse"] == 0.5
    out = sanitize_metrics(good | {"max_nrmse": float("nan")})
    assert out["bad"] is True and out["bad_reason"] == "undefined"
    assert out["mean_nrmse"] == out["max_nrmse"] == out["max_criteria"] == math.inf
    out = sanitize_metrics(good | {"bad": True, "bad_reason": "no_better_than_chance"})
    assert out["bad_reason"] == "no_better_than_chance" and out["nrmse_vv"] == 0.5
    assert out["mean_nrmse"] == out["max_nrmse"] == out["max_criteria"] == math.inf
    # an intermediate (cheap) evaluation that cannot tell the fit from chance keeps its objective
    # for ASHA; a broken fit does not
    mid = sanitize_metrics(good | {"bad": True, "bad_reason": "no_better_than_chance"}, final=False)
    assert mid["bad"] is True and mid["max_nrmse"] == 0.5
    mid = sanitize_metrics(good | {"bad": True, "bad_reason": "unstable"}, final=False)
    assert mid["max_nrmse"] == math.inf
    # a non-finite sparsity alone does not make a fit bad (only the nRMSE figures do)
    assert sanitize_metrics(good | {"weight_density": float("nan")})["bad"] is False
    assert all(not math.isnan(v) for v in out.values() if isinstance(v, float))


@pytest.fixture(scope="module")
def dataset():
    rec, _ = make_synthetic_recording(n_neurons=60, n_frames=600, seed=0)
    return preprocess(rec, n_segments=5, n_test_segments=1, test_segments=(2,))


def test_snapshot_at_the_last_boundary_is_the_fitted_model(dataset, tmp_path):
    """CRBM.snapshot, taken in the checkpoint callback of each boundary (as the search trial
    does), equals what fit leaves behind at the final one; earlier ones equal a fit with fewer
    updates' state (resumed from the checkpoint written at that boundary)."""
    path = tmp_path / "ck.h5"
    snaps = []

    def on_boundary(m):
        snaps.append(m.snapshot())  # as the trial calls it: fit's own frames
        given = m.snapshot(dataset)  # the same with the frames passed in
        for attr in ("weights_", "hidden_var_"):
            np.testing.assert_array_equal(getattr(given, attr), getattr(snaps[-1], attr))
        if m._state["update"] == 10:
            m.save_checkpoint(path)

    model = CRBM(
        n_hidden=5, lam=1e-3, n_updates=30, batch_size=50, n_gibbs=2, seed=0, backend="numpy"
    )
    model.fit(dataset, callback_every=10, checkpoint=on_boundary)
    assert [s.n_updates_done_ for s in snaps] == [10, 20, 30]
    assert not np.array_equal(snaps[0].weights_, snaps[2].weights_)
    snap = snaps[-1]
    for attr in (
        "weights_",
        "fields_",
        "gamma_plus_",
        "gamma_minus_",
        "theta_plus_",
        "theta_minus_",
        "hidden_var_",
    ):
        np.testing.assert_allclose(
            getattr(snap, attr), getattr(model, attr), rtol=1e-6, atol=1e-7, err_msg=attr
        )
    assert snap.n_updates_done_ == 30 and snap.get_params() == model.get_params()
    a = evaluate(snap, dataset, n_chains=20, n_burnin=20, n_samples=5, n_between=5, seed=1)
    b = evaluate(model, dataset, n_chains=20, n_burnin=20, n_samples=5, n_between=5, seed=1)
    # the same evaluation (NaN where both are undefined, e.g. RMSE_opt >= RMSE_shuf this early)
    da, db = a.to_dict(), b.to_dict()
    keys = [k for k in da if k.startswith(("nrmse_", "rmse_")) or k == "mean_nrmse"]
    np.testing.assert_allclose([da[k] for k in keys], [db[k] for k in keys], rtol=1e-5)
    # the first snapshot is the model at update 10: its weights are those of the checkpoint
    from raysearch.crbm import training
    from raysearch.crbm.io import read_checkpoint

    st = read_checkpoint(path)
    bk = get_backend("numpy")
    gauged = training.sign_gauge({k: bk.asarray(v) for k, v in st["params"].items()}, bk)
    np.testing.assert_array_equal(snaps[0].weights_, gauged["weights"])
    with pytest.raises(ConfigError, match="pass the training frames"):
        model.snapshot()  # after fit the frames are not kept
    assert model.snapshot(dataset).n_updates_done_ == 30
    with pytest.raises(ConfigError, match="no training state"):
        CRBM(n_hidden=2).snapshot(dataset)


def _trial_checkpoints(dataset, trial_dir, boundaries=(10, 20, 30)):
    """Write checkpoint_00000i folders as the trial does (CRBM checkpoint + progress.json)."""
    import json

    from raysearch.search.trial import CHECKPOINT_FILE

    written = []

    def on_boundary(fitting):
        u = fitting._state["update"]
        if u not in boundaries:
            return
        d = trial_dir / f"checkpoint_{len(written):06d}"
        d.mkdir(parents=True)
        fitting.save_checkpoint(d / CHECKPOINT_FILE)
        (d / "progress.json").write_text(json.dumps({"updates": u, "seconds": 0.1 * u}))
        written.append(d)

    CRBM(n_hidden=4, n_updates=40, batch_size=50, n_gibbs=2, seed=3).fit(
        dataset, callback_every=10, checkpoint=on_boundary
    )
    return written


def test_restore_checkpoint_falls_back_to_the_newest_complete_one(dataset, tmp_path):
    """After a driver crash Tune may name a checkpoint it has already deleted (num_to_keep) or one
    a killed worker left half-copied: the trial then resumes from the newest complete checkpoint in
    its folder, and starts over only when none is left."""
    import shutil

    from ray import tune

    from raysearch.search.trial import CHECKPOINT_FILE, restore_checkpoint

    trial_dir = tmp_path / "crbm_trial_x"
    c0, c1, c2 = _trial_checkpoints(dataset, trial_dir)

    def restored(path):
        out = restore_checkpoint(tune.Checkpoint(path=str(path)))
        if out is None:
            return None
        d, saved = out
        shutil.rmtree(d)
        return saved["updates"]

    assert restored(c1) == 20  # Tune's checkpoint is there: it is used
    shutil.rmtree(c1)  # deleted after a newer one arrived
    assert restored(c1) == 30  # -> the newest one in the folder
    (c2 / CHECKPOINT_FILE).write_bytes((c2 / CHECKPOINT_FILE).read_bytes()[:2000])  # half-copied
    assert restored(c1) == 10  # -> skip the broken one, take the next older
    (c0 / "progress.json").unlink()
    assert restored(c1) is None  # nothing usable: start over
    assert restored(tmp_path / "nowhere" / "checkpoint_000004") is None


def test_repair_checkpoints_gives_unfinished_trials_back_a_checkpoint(
    dataset, tmp_path, monkeypatch
):
    """The driver-side half: a trial whose Tune-named checkpoint is gone gets the newest complete
    one copied to that path; with none left, a placeholder (the trial then starts over); finished
    trials and trials whose checkpoint is there are left alone."""
    from types import SimpleNamespace

    import ray.tune
    from ray import tune

    from raysearch.search import tuner
    from raysearch.search.trial import restore_checkpoint

    a, b, c, d = (tmp_path / f"crbm_trial_{x}" for x in "abcd")
    _, a1, _ = _trial_checkpoints(dataset, a)  # a: names a1, which gets deleted
    import shutil

    shutil.rmtree(a1)
    b0, _, _ = _trial_checkpoints(dataset, b)  # b: all gone -> placeholder
    for x in b.glob("checkpoint_*"):
        shutil.rmtree(x)
    c0, _, _ = _trial_checkpoints(dataset, c)  # c: named one present -> untouched
    d.mkdir()  # d: finished -> untouched
    trials = [
        SimpleNamespace(trial_id=t, status=st, checkpoint=tune.Checkpoint(path=str(p)))
        for t, st, p in (
            ("a", "RUNNING", a1),
            ("b", "ERROR", b0),
            ("c", "PENDING", c0),
            ("d", "TERMINATED", d / "checkpoint_000003"),
        )
    ]
    # e: running, but the state recorded no checkpoint yet: its reports so far are kept (Tune
    # restarts it as new and uploads a fresh result.json over them); twice -> two copies
    e = tmp_path / "crbm_trial_e"
    e.mkdir()
    (e / "result.json").write_text('{"updates": 10}\n{"updates": 20}\n')
    trials.append(SimpleNamespace(trial_id="e", status="RUNNING", checkpoint=None, path=str(e)))
    monkeypatch.setattr(ray.tune, "ExperimentAnalysis", lambda path: SimpleNamespace(trials=trials))
    before_c = sorted(p.name for p in c.rglob("*"))
    notes = tuner.repair_checkpoints(str(tmp_path))
    assert len(notes) == 3 and notes[0].startswith("trial a:") and "update 30" in notes[0]
    assert notes[1].startswith("trial b:") and "starts over" in notes[1]
    assert notes[2].startswith("trial e:") and "result.pre-resume-1.json" in notes[2]
    assert (e / "result.pre-resume-1.json").read_text() == (e / "result.json").read_text()
    loaded, saved = restore_checkpoint(trials[0].checkpoint)  # a1 now holds update 30
    shutil.rmtree(loaded)
    assert saved["updates"] == 30
    assert b0.is_dir() and restore_checkpoint(trials[1].checkpoint) is None
    assert sorted(p.name for p in c.rglob("*")) == before_c
    assert not (d / "checkpoint_000003").exists()
    # a second resume of e without a recorded checkpoint keeps a second copy
    (e / "result.json").write_text('{"updates": 30}\n')
    del trials[:4]
    assert "result.pre-resume-2.json" in tuner.repair_checkpoints(str(tmp_path))[0]
    assert (e / "result.pre-resume-2.json").read_text() == '{"updates": 30}\n'


def test_resume_from_folder_when_tune_gives_no_checkpoint(dataset, tmp_path):
    """A trial Tune starts without a checkpoint looks in its own folder: a new trial's folder has
    none (None, also for a folder not created yet); a trial that ran before under a driver that
    died before recording its first checkpoint resumes from the newest complete one there."""
    import shutil

    from pyarrow import fs as pafs

    from raysearch.search.trial import CHECKPOINT_FILE, resume_from_folder

    local = pafs.LocalFileSystem()
    assert resume_from_folder(local, str(tmp_path / "not_yet")) is None
    trial_dir = tmp_path / "crbm_trial_y"
    trial_dir.mkdir()
    (trial_dir / "params.json").write_text("{}")
    assert resume_from_folder(local, str(trial_dir)) is None
    _, _, c2 = _trial_checkpoints(dataset, trial_dir)
    loaded, saved = resume_from_folder(local, str(trial_dir))
    shutil.rmtree(loaded)
    assert saved["updates"] == 30
    (c2 / CHECKPOINT_FILE).unlink()  # newest incomplete: the one before it
    loaded, saved = resume_from_folder(local, str(trial_dir))
    shutil.rmtree(loaded)
    assert saved["updates"] == 20
