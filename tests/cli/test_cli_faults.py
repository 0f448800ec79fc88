"""Bad input and faults against the console script (issue 16): nothing lost, nothing silently
wrong, one error line (exit 2) instead of a traceback.

Every test here reproduces a defect found by a hostile-user probe: it failed before the fix.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from raysearch.cli import main
from raysearch.crbm import CRBM
from raysearch.errors import InputError

FAST = ["--hidden", "3", "--updates", "40", "--gibbs", "1", "--batch", "40", "--quiet"]


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(err: str, command: str) -> str:
    """The single error line a bad input must give (no traceback)."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith(f"raysearch {command}: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def fish(tmp_path_factory) -> Path:
    from raysearch.data.synthetic import write_synthetic_recording

    return write_synthetic_recording(
        tmp_path_factory.mktemp("fish") / "fish.h5", n_neurons=80, n_frames=400, seed=3
    )


def write_recording(
    path, spikes, coords=None, times=None, labels=None, names=None, dff=None, ref=None
):
    """A minimal cRBM-layout HDF5 recording (spikes (T, N), coords (3, N) um)."""
    spikes = np.asarray(spikes)
    T, N = spikes.shape
    with h5py.File(path, "w") as f:
        f["Data/Brain/Analysis/ThresholdedSpikes"] = spikes
        if dff is not None:
            f["Data/Brain/Analysis/DFF_align"] = dff
        c = f.create_dataset(
            "Data/Brain/Coordinates",
            data=coords if coords is not None else np.random.default_rng(0).uniform(0, 400, (3, N)),
        )
        c.attrs["unit"] = "um"
        if ref is not None:
            r = f.create_dataset("Data/Brain/ZBrainCoordinates", data=ref)
            r.attrs["unit"] = "um"
        f["Data/Brain/Times"] = (times if times is not None else np.arange(T) / 4.0)[:, None]
        if labels is not None:
            lab = f.create_dataset("Data/Brain/Labels", data=labels)
            if names is not None:
                lab.attrs["region_names"] = json.dumps(names)
    return Path(path)


# ------------------------------------------------------------------------------ 1. data loss


def test_checkpoint_never_overwrites_the_input_recording(tmp_path, fish, capsys):
    victim = tmp_path / "victim.h5"
    shutil.copy(fish, victim)
    before = victim.read_bytes()
    for extra in ([], ["--force"]):
        rc, out, err = run(
            capsys,
            "train",
            str(victim),
            "--out",
            str(tmp_path / "out" / "v.h5"),
            "--checkpoint",
            str(victim),
            *extra,
            *FAST,
        )
        assert rc == 2
        assert "input recording" in one_error_line(err, "train")
        assert victim.read_bytes() == before
        assert not (tmp_path / "out" / "v.h5").exists()
    # nor --out onto the input, even with --force
    rc, _, err = run(capsys, "train", str(victim), "--out", str(victim), "--force", *FAST)
    assert rc == 2 and "input recording" in one_error_line(err, "train")
    assert victim.read_bytes() == before


def test_checkpoint_does_not_overwrite_a_model_file_without_force(tmp_path, fish, capsys):
    model = tmp_path / "model.h5"
    rc, _, err = run(capsys, "train", str(fish), "--out", str(model), "--no-eval", *FAST)
    assert rc == 0, err
    before = model.read_bytes()
    rc, _, err = run(
        capsys,
        "train",
        str(fish),
        "--out",
        str(tmp_path / "m2.h5"),
        "--no-eval",
        "--checkpoint",
        str(model),
        *FAST,
    )
    assert rc == 2 and "not a raysearch checkpoint" in one_error_line(err, "train")
    assert model.read_bytes() == before and not (tmp_path / "m2.h5").exists()
    # with --force the user said so
    rc, _, err = run(
        capsys,
        "train",
        str(fish),
        "--out",
        str(tmp_path / "m2.h5"),
        "--no-eval",
        "--checkpoint",
        str(model),
        "--force",
        *FAST,
    )
    assert rc == 0, err
    with h5py.File(model) as f:
        assert f.attrs["format"] == "raysearch-crbm-checkpoint"


def test_checkpoint_of_another_fit_needs_force_but_this_fit_may_rewrite_it(tmp_path, fish, capsys):
    ck = tmp_path / "ck.h5"
    rc, _, err = run(
        capsys,
        "train",
        str(fish),
        "--out",
        str(tmp_path / "a.h5"),
        "--no-eval",
        "--checkpoint",
        str(ck),
        "--lam",
        "0.01",
        *FAST,
    )
    assert rc == 0, err
    before = ck.read_bytes()
    # another lambda: another fit
    rc, _, err = run(
        capsys,
        "train",
        str(fish),
        "--out",
        str(tmp_path / "b.h5"),
        "--no-eval",
        "--checkpoint",
        str(ck),
        "--lam",
        "0.02",
        *FAST,
    )
    assert rc == 2 and "checkpoint of another fit" in one_error_line(err, "train")
    assert ck.read_bytes() == before
    # the same fit again (same settings, same data) may rewrite its own checkpoint
    rc, _, err = run(
        capsys,
        "train",
        str(fish),
        "--out",
        str(tmp_path / "c.h5"),
        "--no-eval",
        "--checkpoint",
        str(ck),
        "--lam",
        "0.01",
        *FAST,
    )
    assert rc == 0, err


# ------------------------------------------------------------------ 2. validate before any work


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda d: ["--out", str(d / "afile" / "m.h5")], "is not a directory"),
        (lambda d: ["--out", str(d / "m.h5"), "--eval-chains", "0"], "--eval-chains must be >= 1"),
        (
            lambda d: ["--out", str(d / "m.h5"), "--checkpoint", str(d / "afile" / "ck.h5")],
            "is not a directory",
        ),
        (
            lambda d: ["--out", str(d / "m.h5"), "--checkpoint", str(d / "m.h5")],
            "same file as --out",
        ),
        (lambda d: ["--out", str(d)], "must end in .h5"),
    ],
)
def test_bad_paths_and_arguments_fail_before_the_data_is_read(tmp_path, capsys, make_args, message):
    (tmp_path / "afile").write_text("a file, not a folder")
    # the recording does not exist: an error about it would mean the arguments were checked late
    rc, _, err = run(
        capsys, "train", str(tmp_path / "no-such-recording.h5"), *make_args(tmp_path), *FAST
    )
    assert rc == 2
    assert message in one_error_line(err, "train")


def test_model_is_saved_before_evaluation_so_a_failing_evaluation_loses_nothing(
    tmp_path, fish, capsys, monkeypatch
):
    import raysearch.evaluation

    def broken(*a, **k):
        raise InputError("evaluation exploded")

    monkeypatch.setattr(raysearch.evaluation, "evaluate", broken)
    out = tmp_path / "m.h5"
    rc, _, err = run(capsys, "train", str(fish), "--out", str(out), *FAST)
    assert rc == 2
    line = one_error_line(err, "train")
    assert "evaluation exploded" in line and f"saved in {out}" in line
    assert CRBM.load(out).weights_.shape == (3, 80)


# ---------------------------------------------------------------- 4. resume on the wrong data


def test_resume_refuses_a_checkpoint_of_another_recording_with_the_same_n(tmp_path, fish, capsys):
    from raysearch.data.synthetic import write_synthetic_recording

    other = write_synthetic_recording(tmp_path / "other.h5", n_neurons=80, n_frames=400, seed=4)
    ck = tmp_path / "ck.h5"
    rc, _, err = run(
        capsys,
        "train",
        str(fish),
        "--out",
        str(tmp_path / "a.h5"),
        "--no-eval",
        "--checkpoint",
        str(ck),
        *FAST,
    )
    assert rc == 0, err
    rc, _, err = run(
        capsys,
        "train",
        str(other),
        "--out",
        str(tmp_path / "b.h5"),
        "--no-eval",
        "--resume",
        str(ck),
        *FAST,
    )
    assert rc == 2
    assert "other training data" in one_error_line(err, "train")
    assert not (tmp_path / "b.h5").exists()
    # on its own data the resume is accepted
    rc, _, err = run(
        capsys,
        "train",
        str(fish),
        "--out",
        str(tmp_path / "c.h5"),
        "--no-eval",
        "--resume",
        str(ck),
        *FAST,
    )
    assert rc == 0, err


def test_fit_resume_checks_the_data_fingerprint(tmp_path):
    rng = np.random.default_rng(0)
    A = (rng.random((200, 12)) < 0.2).astype(np.float32)
    B = A.copy()
    B[7, 3] = 1 - B[7, 3]  # one value differs
    ck = tmp_path / "ck.h5"
    kw = dict(n_hidden=2, n_updates=20, batch_size=20, n_gibbs=1, backend="numpy")
    CRBM(**kw).fit(A, checkpoint=(ck, 10))
    with pytest.raises(InputError, match="other training data"):
        CRBM(**kw).fit(B, resume_from=ck)
    assert CRBM(**kw).fit(A, resume_from=ck).n_updates_done_ == 20


def test_checkpoint_without_fingerprint_resumes_with_a_warning(tmp_path, caplog):
    """Checkpoints written before the fingerprint existed are still accepted (with a warning)."""
    import logging

    rng = np.random.default_rng(1)
    A = (rng.random((200, 12)) < 0.2).astype(np.float32)
    ck = tmp_path / "ck.h5"
    kw = dict(n_hidden=2, n_updates=20, batch_size=20, n_gibbs=1, backend="numpy")
    CRBM(**kw).fit(A, checkpoint=(ck, 10))
    with h5py.File(ck, "a") as f:
        del f.attrs["data_fingerprint"]
    with caplog.at_level(logging.WARNING):
        assert CRBM(**kw).fit(A, resume_from=ck).n_updates_done_ == 20
    assert "no fingerprint" in caplog.text


def test_data_fingerprint_is_exact_and_sees_shape_and_dtype():
    from raysearch.crbm.io import data_fingerprint

    a = np.arange(24, dtype=np.float32).reshape(4, 6)
    assert data_fingerprint(a) == data_fingerprint(a.copy())
    assert data_fingerprint(a) == data_fingerprint(np.asfortranarray(a))  # same values
    b = a.copy()
    b[3, 5] += 1
    assert data_fingerprint(a) != data_fingerprint(b)
    assert data_fingerprint(a) != data_fingerprint(a.reshape(6, 4))
    assert data_fingerprint(a) != data_fingerprint(a.astype(np.float64))


# -------------------------------------------------------- 7. tracebacks instead of one line


@pytest.mark.parametrize("argv", [["inspect", "{fish}"], ["inspect", "{fish}", "--json"]])
def test_closed_stdout_pipe_is_not_a_traceback(fish, argv):
    """``raysearch inspect FILE | head -1``: the reader goes away before the output is written."""
    cmd = [sys.executable, "-m", "raysearch", *[a.format(fish=fish) for a in argv]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # head -1 has exited
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert "Exception ignored" not in err, err


def test_unreadable_file_is_one_line_in_process(tmp_path, fish, capsys, monkeypatch):
    """PermissionError while opening a file (simulated: the tests run as root)."""
    import h5py as _h5py

    def denied(name, *a, **k):
        raise PermissionError(13, "Permission denied", str(name))

    monkeypatch.setattr(_h5py, "is_hdf5", denied)
    rc, _, err = run(capsys, "inspect", str(fish))
    assert rc == 2
    line = one_error_line(err, "inspect")
    assert "Permission denied" in line and str(fish) in line


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run a command as nobody",
)
def test_unreadable_file_as_an_unprivileged_user(fish):
    import tempfile

    where = Path(tempfile.mkdtemp(prefix="raysearch-test-"))  # /tmp: reachable by nobody
    try:
        os.chmod(where, 0o755)
        locked = where / "locked.h5"
        shutil.copy(fish, locked)
        os.chmod(locked, 0o000)
        cmd = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-c",
            "import sys; from raysearch.cli import main; sys.exit(main(sys.argv[1:]))",
            "inspect",
            str(locked),
        ]
        env = {**os.environ, "HOME": str(where)}
        if "PYTHONPATH" not in env:
            env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=where)
    finally:
        shutil.rmtree(where, ignore_errors=True)
    if "No module named" in res.stderr or "can't open file" in res.stderr:
        pytest.skip(f"the Python environment is not readable by nobody: {res.stderr[:200]}")
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 2, res.stderr
    assert (
        res.stderr.strip() == f"raysearch inspect: error: {locked}: cannot be read "
        "(Permission denied)"
    ), res.stderr


def test_fifo_or_directory_instead_of_a_file_is_one_line(tmp_path, capsys):
    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)  # opening it to sniff the HDF5 signature would block forever
    rc, _, err = run(capsys, "inspect", str(fifo))
    assert rc == 2 and "not a regular file" in one_error_line(err, "inspect")
    rc, _, err = run(capsys, "train", str(tmp_path), "--out", str(tmp_path / "m.h5"), *FAST)
    assert rc == 2 and "is a directory" in one_error_line(err, "train")


def test_non_utf8_study_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "study.yaml"
    bad.write_bytes(b"name: caf\xe9\nrecordings: []\n")
    rc, _, err = run(capsys, "run", str(bad))
    assert rc == 2 and "not UTF-8" in one_error_line(err, "run")


@pytest.mark.parametrize(
    "search",
    [
        {"mode": "grid", "lam": [0.01, float("inf")]},
        {"mode": "optuna", "lam": {"low": 1e-4, "high": float("inf")}},
        {"mode": "optuna", "lam": {"low": float("nan"), "high": 1.0}},
    ],
)
def test_infinite_lambda_is_refused_before_anything_is_created(tmp_path, capsys, search):
    import yaml

    study = {
        "name": "inf",
        "recordings": [{"synthetic": {"n_neurons": 60, "n_frames": 600}}],
        "search": search,
        "run": {"storage_path": str(tmp_path / "results")},
    }
    p = tmp_path / "inf.yaml"
    p.write_text(yaml.safe_dump(study))
    assert ".inf" in p.read_text() or ".nan" in p.read_text()
    rc, _, err = run(capsys, "run", str(p))
    assert rc == 2
    assert "search.lam" in err and "finite" in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "results").exists()


def test_num_samples_has_an_upper_bound(tmp_path):
    from raysearch.errors import ConfigError
    from raysearch.search.config import MAX_TRIALS, study_from_dict

    base = {"name": "big", "recordings": [{"synthetic": {}}]}
    with pytest.raises(ConfigError, match="at most 10000 trials"):
        study_from_dict(
            {**base, "search": {"lam": {"low": 1e-4, "high": 1}, "num_samples": 10**12}}
        )
    study_from_dict(
        {**base, "search": {"lam": {"low": 1e-4, "high": 1}, "num_samples": MAX_TRIALS}}
    )
    with pytest.raises(ConfigError, match="at most 10000 trials"):
        study_from_dict(
            {**base, "search": {"mode": "grid", "lam": [0.1, 0.2], "seeds": list(range(5001))}}
        )


# ------------------------------------------------------------------------ 8. messages


def test_coordinates_of_the_wrong_size_are_named(tmp_path, capsys):
    T, N = 50, 20
    rng = np.random.default_rng(1)
    spikes = (rng.random((T, N)) < 0.2).astype(np.uint8)
    path = write_recording(
        tmp_path / "c.h5",
        spikes,
        coords=rng.uniform(0, 400, (3, N - 1)),
        ref=rng.uniform(0, 400, (3, N)),
    )
    rc, _, err = run(capsys, "inspect", str(path))
    assert rc == 2
    line = one_error_line(err, "inspect")
    assert "/Data/Brain/Coordinates (3, 19)" in line and "ThresholdedSpikes" in line, line


def test_train_messages_name_cli_options_that_exist(tmp_path, capsys):
    T, N = 400, 30
    rng = np.random.default_rng(2)
    dff = rng.normal(size=(T, N)).astype(np.float32)
    labels = np.ones((1, N), np.uint8)
    # spikes that are not 0/1: the fix is --signal dff --transform binarize
    path = write_recording(tmp_path / "nb.h5", dff, dff=dff, labels=labels, names=["all"])
    rc, _, err = run(capsys, "train", str(path), "--out", str(tmp_path / "m.h5"), *FAST)
    line = one_error_line(err, "train")
    assert rc == 2 and "--signal dff --transform binarize" in line
    rc, _, err = run(
        capsys,
        "train",
        str(path),
        "--out",
        str(tmp_path / "m.h5"),
        "--no-eval",
        "--signal",
        "dff",
        "--transform",
        "binarize",
        "--threshold",
        "1.0",
        *FAST,
    )
    assert rc == 0, err
    # NaN in the dF/F: the fix is --on-nonfinite drop
    dff2 = dff.copy()
    dff2[5, 4] = np.nan
    path2 = write_recording(
        tmp_path / "nan.h5", (dff > 1).astype(np.uint8), dff=dff2, labels=labels, names=["all"]
    )
    rc, _, err = run(
        capsys, "train", str(path2), "--out", str(tmp_path / "m2.h5"), "--signal", "dff", *FAST
    )
    line = one_error_line(err, "train")
    assert rc == 2 and "--on-nonfinite drop" in line
    rc, out, err = run(
        capsys,
        "train",
        str(path2),
        "--out",
        str(tmp_path / "m2.h5"),
        "--no-eval",
        "--signal",
        "dff",
        "--on-nonfinite",
        "drop",
        *FAST,
    )
    assert rc == 0, err
    assert json.loads(out)["n_units"] == N - 1


def test_checkpoint_error_names_the_format_once(tmp_path, fish):
    from raysearch.crbm.io import read_checkpoint

    with pytest.raises(InputError) as exc:
        read_checkpoint(fish)
    assert "raysearch raysearch" not in str(exc.value)
    assert "not a raysearch checkpoint file" in str(exc.value)


# -------------------------------------------------------------- 9. silently accepted nonsense


def test_all_zero_spikes_are_an_error_before_training(tmp_path, capsys):
    T, N = 400, 30
    path = write_recording(
        tmp_path / "zero.h5",
        np.zeros((T, N), np.uint8),
        labels=np.ones((1, N), np.uint8),
        names=["all"],
    )
    rc, out, err = run(capsys, "train", str(path), "--out", str(tmp_path / "m.h5"), *FAST)
    assert rc == 2 and out == ""
    assert "no spikes" in one_error_line(err, "train")
    assert not (tmp_path / "m.h5").exists()


def test_all_zero_spikes_in_a_study_are_an_error_before_ray_starts(tmp_path, capsys):
    import yaml

    T, N = 400, 30
    path = write_recording(
        tmp_path / "zero.h5",
        np.zeros((T, N), np.uint8),
        labels=np.ones((1, N), np.uint8),
        names=["all"],
    )
    study = {
        "name": "zero",
        "recordings": [{"path": str(path)}],
        "search": {"lam": {"low": 1e-4, "high": 1}},
        "run": {"storage_path": str(tmp_path / "results")},
    }
    (tmp_path / "zero.yaml").write_text(yaml.safe_dump(study))
    rc, out, err = run(capsys, "run", str(tmp_path / "zero.yaml"))
    assert rc == 2 and "no spikes" in one_error_line(err, "run")
    assert "Ray dashboard" not in out and not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "times, word", [(np.zeros(50), "constant"), (np.arange(50)[::-1] / 4.0, "not increasing")]
)
def test_constant_or_reversed_frame_times_are_an_error(tmp_path, capsys, times, word):
    rng = np.random.default_rng(3)
    path = write_recording(
        tmp_path / "t.h5", (rng.random((50, 10)) < 0.2).astype(np.uint8), times=times
    )
    rc, _, err = run(capsys, "inspect", str(path))
    assert rc == 2
    line = one_error_line(err, "inspect")
    assert "frame times" in line and word in line


def test_region_name_count_mismatch_is_an_error(tmp_path, capsys):
    rng = np.random.default_rng(4)
    N = 10
    labels = np.zeros((3, N), np.uint8)
    labels[np.arange(N) % 3, np.arange(N)] = 1
    path = write_recording(
        tmp_path / "l.h5",
        (rng.random((50, N)) < 0.2).astype(np.uint8),
        labels=labels,
        names=["a", "b"],
    )
    rc, _, err = run(capsys, "inspect", str(path))
    assert rc == 2
    line = one_error_line(err, "inspect")
    assert "3 regions" in line and "2" in line


# ------------------------------------------------------------------------------ 10. minor


def _strict_json(text):
    def refuse(c):
        raise ValueError(f"bare {c} in JSON output")

    return json.loads(text, parse_constant=refuse)


def test_train_json_line_has_null_not_nan(tmp_path, fish, capsys, monkeypatch):
    import raysearch.evaluation

    class Metrics:
        def to_dict(self):
            return {"nrmse_v": float("nan"), "mean_nrmse": np.float64("nan"), "bad": True}

    monkeypatch.setattr(raysearch.evaluation, "evaluate", lambda *a, **k: Metrics())
    rc, out, err = run(capsys, "train", str(fish), "--out", str(tmp_path / "m.h5"), *FAST)
    assert rc == 0, err
    res = _strict_json(out)
    assert res["nrmse_v"] is None and res["mean_nrmse"] is None and res["bad"] is True


def test_inspect_json_has_null_not_nan(tmp_path, capsys):
    path = write_recording(tmp_path / "one.h5", np.ones((1, 5), np.uint8))  # one frame
    rc, out, err = run(capsys, "inspect", str(path), "--json")
    assert rc == 0, err
    assert _strict_json(out)["frame_rate_hz"] is None
    rc, out, err = run(capsys, "inspect", str(path))
    assert rc == 0 and "frame rate:  unknown (fewer than 2 frames)" in out and "nan" not in out


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    from raysearch.search.config import study_from_dict
    from raysearch.search.tuner import _write_study

    rng = np.random.default_rng(5)
    X = (rng.random((100, 8)) < 0.2).astype(np.float32)
    old = os.umask(umask)
    try:
        m = CRBM(n_hidden=2, n_updates=10, batch_size=10, n_gibbs=1, backend="numpy").fit(X)
        m.save(tmp_path / "m.h5")
        m.save_checkpoint(tmp_path / "ck.h5")
        _write_study(
            study_from_dict(
                {
                    "name": "s",
                    "recordings": [{"synthetic": {}}],
                    "search": {"lam": {"low": 1e-3, "high": 1}},
                }
            ),
            str(tmp_path / "exp"),
        )
    finally:
        os.umask(old)
    for p in (tmp_path / "m.h5", tmp_path / "ck.h5", tmp_path / "exp" / "study.yaml"):
        assert p.stat().st_mode & 0o777 == mode, (p, oct(p.stat().st_mode))


def test_no_arguments_prints_usage_on_stderr_and_exits_2(capsys):
    rc, out, err = run(capsys)
    assert rc == 2 and out == ""
    assert "usage: raysearch" in err and "COMMAND is required" in err
