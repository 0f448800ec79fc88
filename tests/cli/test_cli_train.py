"""``raysearch train``: end to end on small synthetic fish, exit codes and messages."""

import json

import h5py
import numpy as np
import pytest

from raysearch.cli import main
from raysearch.crbm import CRBM

FAST = ["--hidden", "4", "--updates", "60", "--gibbs", "2", "--batch", "50", "--quiet"]


def run(capsys, *argv):
    rc = main(["train", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_train_synthetic_without_eval(tmp_path, capsys):
    out = tmp_path / "m.h5"
    rc, stdout, err = run(
        capsys,
        "synthetic",
        "--synthetic-neurons",
        "200",
        "--synthetic-frames",
        "600",
        "--lam",
        "0.02",
        "--no-eval",
        "--out",
        str(out),
        *FAST,
    )
    assert rc == 0, err
    lines = stdout.strip().splitlines()
    assert len(lines) == 1
    res = json.loads(lines[0])
    assert res["updates"] == 60 and res["n_units"] == 200 and res["lam"] == 0.02
    assert res["diverged"] is False and res["visible"] == "bernoulli"
    m = CRBM.load(out)
    assert m.weights_.shape == (4, 200) and m.lam == 0.02 and m.n_updates == 60
    with h5py.File(out, "r") as f:
        assert f["units/coords"].shape == (200, 3)


def test_train_recording_file_with_evaluation(tmp_path, capsys):
    from raysearch.data.synthetic import write_synthetic_recording

    data = write_synthetic_recording(tmp_path / "fish.h5", n_neurons=150, n_frames=500, seed=1)
    out = tmp_path / "m.h5"
    rc, stdout, err = run(capsys, str(data), "--out", str(out), "--eval-chains", "20", *FAST)
    assert rc == 0, err
    res = json.loads(stdout.strip().splitlines()[-1])
    for k in ("nrmse_v", "nrmse_vv", "mean_nrmse", "bad", "sparsity"):
        assert k in res
    assert np.isfinite(res["nrmse_v"])
    assert out.exists()


def test_progress_goes_to_stderr(tmp_path, capsys):
    rc, stdout, err = run(
        capsys,
        "synthetic",
        "--synthetic-neurons",
        "100",
        "--synthetic-frames",
        "400",
        "--no-eval",
        "--out",
        str(tmp_path / "m.h5"),
        "--hidden",
        "2",
        "--updates",
        "200",
        "--gibbs",
        "1",
        "--batch",
        "20",
    )
    assert rc == 0
    assert "200/200" in err and "upd" in err
    assert len(stdout.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lam", "-1"], "lam"),
        (["--hidden", "0"], "n_hidden"),
        (["--batch", "100000"], "batch_size"),
        (["--test-segments", "a,b"], "test-segments"),
    ],
)
def test_bad_settings_exit_2_with_message(tmp_path, capsys, args, message):
    out = tmp_path / "m.h5"
    rc, stdout, err = run(
        capsys,
        "synthetic",
        "--synthetic-neurons",
        "100",
        "--synthetic-frames",
        "400",
        "--no-eval",
        "--out",
        str(out),
        "--quiet",
        "--updates",
        "10",
        *args,
    )
    assert rc == 2
    assert message in err and "Traceback" not in err
    assert not out.exists() and stdout == ""


def test_bad_input_files(tmp_path, capsys):
    out = tmp_path / "m.h5"
    rc, _, err = run(capsys, str(tmp_path / "missing.h5"), "--out", str(out), "--quiet")
    assert rc == 2 and "missing.h5" in err
    out.write_text("keep me")
    rc, _, err = run(capsys, "synthetic", "--out", str(out), "--quiet")
    assert rc == 2 and "--force" in err and out.read_text() == "keep me"
    rc, _, err = run(capsys, "synthetic", "--out", str(tmp_path / "m.txt"), "--quiet")
    assert rc == 2 and ".h5" in err


def test_checkpoint_and_resume(tmp_path, capsys):
    common = [
        "synthetic",
        "--synthetic-neurons",
        "100",
        "--synthetic-frames",
        "400",
        "--no-eval",
        *FAST,
    ]
    ck = tmp_path / "ck.h5"
    rc, _, err = run(capsys, *common, "--out", str(tmp_path / "a.h5"), "--checkpoint", str(ck))
    assert rc == 0 and ck.exists(), err
    rc, stdout, err = run(capsys, *common, "--out", str(tmp_path / "b.h5"), "--resume", str(ck))
    assert rc == 0, err
    assert json.loads(stdout)["updates"] == 60
    a, b = CRBM.load(tmp_path / "a.h5"), CRBM.load(tmp_path / "b.h5")
    np.testing.assert_array_equal(a.weights_, b.weights_)
    rc, _, err = run(
        capsys,
        *common[: -len(FAST)],
        "--hidden",
        "5",
        "--updates",
        "60",
        "--gibbs",
        "2",
        "--batch",
        "50",
        "--quiet",
        "--out",
        str(tmp_path / "c.h5"),
        "--resume",
        str(ck),
    )
    assert rc == 2 and "cannot resume" in err
