"""`raysearch synth` and `raysearch inspect`: output, exit codes, nothing written on error."""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from raysearch.cli import main
from raysearch.data.recordings import load_recording
from raysearch.data.synthetic import load_ground_truth, make_synthetic_recording


def test_synth_then_inspect(tmp_path, capsys):
    out = tmp_path / "fish.h5"
    assert (
        main(
            [
                "synth",
                str(out),
                "--neurons",
                "300",
                "--frames",
                "120",
                "--seed",
                "4",
                "--assemblies",
                "5",
            ]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    rec = load_recording(out)
    ref, gt = make_synthetic_recording(300, 120, n_assemblies=5, seed=4)
    assert np.array_equal(rec.spikes, ref.spikes)
    assert load_ground_truth(out).membership.shape == (5, 300)

    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "layout:      crbm" in text
    assert "neurons:     300" in text and "frames:      120" in text
    assert "frame rate:  4.000 Hz" in text
    assert f"spike rate:  {ref.spikes.mean():.4f}" in text
    assert "Tectum_L" in text and "Data/Brain/Analysis/ThresholdedSpikes  (120, 300)" in text

    assert main(["inspect", str(out), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["n_neurons"] == 300 and s["layout"] == "crbm"
    assert sum(s["regions"].values()) == 300


def test_synth_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "fish.h5"
    out.write_bytes(b"keep me")
    assert main(["synth", str(out), "--neurons", "100", "--frames", "20"]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    assert main(["synth", str(out), "--neurons", "100", "--frames", "20", "--force"]) == 0
    assert h5py.is_hdf5(out)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--neurons", "5"], "n_neurons must be an integer >= 20"),
        (["--frames", "3"], "n_frames must be an integer >= 10"),
        (["--assemblies", "0"], "n_assemblies must be a positive integer"),
        (["--seed", "-1"], "seed must be a non-negative integer"),
        (["--frame-rate", "0"], "frame_rate must be > 0 Hz"),
    ],
)
def test_synth_bad_settings_exit_2_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "fish.h5"
    assert main(["synth", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def _bad_files(tmp_path):
    notes = tmp_path / "notes.h5"
    notes.write_text("hello")
    trunc = tmp_path / "trunc.h5"
    main(["synth", str(trunc), "--neurons", "100", "--frames", "50"])
    trunc.write_bytes(trunc.read_bytes()[:5000])
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["stack"] = np.zeros((2, 2))
    nonbin = tmp_path / "nonbin.h5"
    with h5py.File(nonbin, "w") as f:
        f["Data/Brain/Analysis/ThresholdedSpikes"] = np.full((20, 30), 0.5, np.float32)
        f["Data/Brain/Coordinates"] = np.zeros((3, 30))
        f["Data/Brain/Labels"] = np.ones((2, 30))
    mism = tmp_path / "mismatch.h5"
    with h5py.File(mism, "w") as f:
        f["Data/Brain/Analysis/ThresholdedSpikes"] = np.zeros((20, 31), np.uint8)
        f["Data/Brain/Coordinates"] = np.zeros((3, 30))
    nan = tmp_path / "nan.h5"
    with h5py.File(nan, "w") as f:
        d = np.zeros((20, 30), np.float32)
        d[1, 2] = np.nan
        f["Data/Brain/Analysis/DFF"] = d
        f["Data/Brain/Coordinates"] = np.zeros((3, 30))
    return [
        (tmp_path / "missing.h5", "no such file"),
        (notes, "not an HDF5/NWB file"),
        (trunc, "truncated"),
        (other, "none of the known recording layouts found"),
        (nonbin, "should hold 0/1 spikes"),
        (mism, "disagree on N"),
        (nan, "1 NaN/inf values in 1 neurons"),
    ]


def test_inspect_bad_inputs_exit_2_with_one_message(tmp_path, capsys):
    for path, message in _bad_files(tmp_path):
        capsys.readouterr()
        assert main(["inspect", str(path)]) == 2, path
        err = capsys.readouterr().err
        assert err.startswith("raysearch inspect: error: ") and str(path) in err, err
        assert message in err and "Traceback" not in err
        assert err.count("\n") == 1


def test_inspect_can_drop_nonfinite_neurons(tmp_path, capsys):
    path = dict((p.name, p) for p, _ in _bad_files(tmp_path))["nan.h5"]
    capsys.readouterr()
    assert main(["inspect", str(path), "--on-nonfinite", "drop"]) == 0
    assert "29 (dropped: 1 in no region, 1 with NaN/inf)" in capsys.readouterr().out


def test_console_script_exit_code_no_traceback(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "raysearch", "inspect", str(tmp_path / "x.h5")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "no such file" in r.stderr and "Traceback" not in r.stderr
