"""Reading recordings: cRBM, Fishualizer (both orientations) and NWB round trips; bad input."""

import json
import logging

import h5py
import numpy as np
import pytest

from raysearch.data.recordings import load_recording
from raysearch.data.synthetic import make_synthetic_recording, write_synthetic_recording
from raysearch.errors import ConfigError, InputError


@pytest.fixture(scope="module")
def small():
    rec, _ = make_synthetic_recording(n_neurons=120, n_frames=90, n_assemblies=4, seed=2)
    return rec


def _crbm(path, rec, spikes=None, dff=None, coords=None, labels=None, times=None):
    """A cRBM-layout file written by hand (same shapes as the published files)."""
    with h5py.File(path, "w") as f:
        b = f.create_group("Data/Brain")
        a = b.create_group("Analysis")
        a["ThresholdedSpikes"] = rec.spikes.astype(np.float32) if spikes is None else spikes
        a["DFF"] = rec.dff if dff is None else dff
        b["Coordinates"] = (rec.coords.T / 1000.0) if coords is None else coords
        b["ZBrainCoordinates"] = rec.ref_coords.T / 1000.0
        b["Times"] = rec.times[:, None] if times is None else times
        b["Labels"] = rec.labels.T.astype(np.float32) if labels is None else labels
    return path


def _fishualizer(path, rec, matlab):
    """A Fishualizer-style file. matlab=True stores every array with the axes the other way
    round (neurons first for activity, (N, 3) coordinates, (1, T) times, (N, R) labels), as a
    MATLAB writer that did not pre-transpose would."""
    T, N = rec.spikes.shape
    with h5py.File(path, "w") as f:
        d = f.create_group("Data")
        if matlab:
            d["Values"] = np.ascontiguousarray(rec.dff.T)
            d["Spikes"] = np.ascontiguousarray(rec.spikes.T).astype(np.uint8)
            c = d.create_dataset("Coordinates", data=rec.coords)
            c.attrs["unit"] = "um"
            r = d.create_dataset("RefCoordinates", data=rec.ref_coords)
            r.attrs["unit"] = "um"
            d["Times"] = rec.times[None, :]
            d["Labels"] = rec.labels.astype(np.float32)
        else:
            d["Values"] = rec.dff
            d["Spikes"] = rec.spikes.astype(np.uint8)
            c = d.create_dataset("Coordinates", data=rec.coords.T / 1000.0)
            c.attrs["unit"] = "mm"
            r = d.create_dataset("RefCoordinates", data=rec.ref_coords.T / 1000.0)
            r.attrs["unit"] = "mm"
            d["Times"] = rec.times[:, None].astype(np.float32)
            lab = d.create_dataset("Labels", data=rec.labels.T.astype(np.float32))
            lab.attrs["region_names"] = json.dumps(rec.region_names)
        d["Stimulus"] = np.zeros((T, 1), dtype=np.float32)
    return path


def _same(got, rec, atol=2e-3):
    assert np.array_equal(got.spikes, rec.spikes)
    assert np.array_equal(got.dff, rec.dff)
    np.testing.assert_allclose(got.coords, rec.coords, atol=atol)
    np.testing.assert_allclose(got.ref_coords, rec.ref_coords, atol=atol)
    np.testing.assert_allclose(got.times, rec.times, rtol=1e-6)
    assert np.array_equal(got.labels, rec.labels)


def test_crbm_round_trip_from_synth(tmp_path, small):
    path = write_synthetic_recording(tmp_path / "s.h5", 120, 90, n_assemblies=4, seed=2)
    got = load_recording(path)
    assert got.layout == "crbm" and got.source == str(path)
    _same(got, small)
    assert got.region_names == small.region_names
    s = got.summary()
    assert s["n_neurons"] == 120 and s["n_frames"] == 90 and s["frame_rate_hz"] == 4.0
    assert s["mean_spike_rate"] == pytest.approx(small.spikes.mean())
    assert "Data/Brain/Analysis/ThresholdedSpikes" in s["datasets"]


def test_reading_only_the_signals_asked_for(tmp_path, small):
    path = write_synthetic_recording(tmp_path / "s.h5", 120, 90, n_assemblies=4, seed=2)
    only = load_recording(path, signals=("spikes",))
    assert only.dff is None and np.array_equal(only.spikes, small.spikes)
    only = load_recording(path, signals="dff")
    assert only.spikes is None and np.array_equal(only.dff, small.dff)
    with pytest.raises(ConfigError, match="signals"):
        load_recording(path, signals=("calcium",))


def test_unlabelled_neurons_are_dropped_and_counted(tmp_path, small):
    labels = small.labels.T.astype(np.float32).copy()
    labels[:, [3, 50, 51]] = 0
    path = _crbm(tmp_path / "u.h5", small, labels=labels)
    got = load_recording(path)
    keep = np.ones(120, dtype=bool)
    keep[[3, 50, 51]] = False
    assert got.n_dropped == 3 and got.n_neurons == 117
    assert np.array_equal(got.spikes, small.spikes[:, keep])
    assert np.array_equal(got.dff, small.dff[:, keep])
    np.testing.assert_allclose(got.coords, small.coords[keep], atol=2e-3)
    assert got.summary()["n_dropped"] == 3
    kept_all = load_recording(path, drop_unlabelled=False)
    assert kept_all.n_neurons == 120 and kept_all.n_dropped == 0


@pytest.mark.parametrize("matlab", [False, True], ids=["time-first", "matlab-transposed"])
def test_fishualizer_round_trip(tmp_path, small, matlab):
    path = _fishualizer(tmp_path / "fz.h5", small, matlab)
    got = load_recording(path)
    assert got.layout == "fishualizer"
    _same(got, small)
    if not matlab:
        assert got.region_names == small.region_names


def test_fishualizer_transposed_with_dropped_neurons(tmp_path, small, monkeypatch):
    # small read blocks so that the transposed reader crosses several blocks
    import raysearch.data.recordings as R

    monkeypatch.setattr(R, "_BLOCK_BYTES", 1000)
    rec = make_synthetic_recording(60, 50, n_assemblies=4, seed=1)[0]
    rec.labels[[0, 7, 8, 59]] = False
    path = _fishualizer(tmp_path / "fz.h5", rec, matlab=True)
    got = load_recording(path)
    keep = rec.labels.any(1)
    assert got.n_dropped == 4
    assert np.array_equal(got.spikes, rec.spikes[:, keep])
    assert np.array_equal(got.dff, rec.dff[:, keep])


def _write_nwb(path, rec, glia=False):
    from datetime import datetime, timezone

    import pynwb
    from pynwb.ophys import DfOverF, ImageSegmentation, OpticalChannel

    nwb = pynwb.NWBFile(
        session_description="test",
        identifier="x",
        session_start_time=datetime(2024, 1, 1, tzinfo=timezone.utc),
    )
    dev = nwb.create_device(name="scope")
    plane = nwb.create_imaging_plane(
        name="plane",
        optical_channel=OpticalChannel(name="c", description="c", emission_lambda=510.0),
        description="p",
        device=dev,
        excitation_lambda=488.0,
        indicator="GCaMP6s",
        location="brain",
        imaging_rate=4.0,
        grid_spacing=[1e-6, 1e-6, 1e-6],
        grid_spacing_unit="meters",
    )
    mod = nwb.create_processing_module(name="ophys", description="o")
    seg = ImageSegmentation()
    mod.add(seg)
    ps = seg.create_plane_segmentation(name="ps", description="d", imaging_plane=plane)
    for xyz in rec.coords.astype(float):
        # two voxels around the true position with equal weights: mean = the position
        lo, hi = np.floor(xyz), np.floor(xyz) + 2 * (xyz - np.floor(xyz))
        ps.add_roi(voxel_mask=[(lo[0], lo[1], lo[2], 1.0), (hi[0], hi[1], hi[2], 1.0)])
    dff = DfOverF(name="DfOverF")
    mod.add(dff)
    region = ps.create_roi_table_region(region=list(range(rec.n_neurons)), description="all")
    if glia:  # added first: the reader must still pick the neurons
        dff.create_roi_response_series(
            name="GliaDfOverF", data=rec.dff * 0 + 7, rois=region, unit="1", rate=4.0
        )
    dff.create_roi_response_series(
        name="NeuronDfOverF" if glia else "RoiResponseSeries",
        data=rec.dff,
        rois=region,
        unit="1",
        rate=4.0,
    )
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


@pytest.mark.parametrize("glia", [False, True], ids=["one-series", "neuron-and-glia"])
def test_nwb_round_trip(tmp_path, glia):
    pytest.importorskip("pynwb", reason="the NWB round trip needs the nwb extra (pynwb)")
    rec = make_synthetic_recording(40, 30, n_assemblies=4, seed=4)[0]
    # voxel_mask stores uint32 positions: use integer + half coordinates
    rec.coords = np.round(rec.coords * 2) / 2
    path = _write_nwb(tmp_path / "r.nwb", rec, glia=glia)
    got = load_recording(path, signals=("dff",))
    assert got.layout == "nwb" and got.spikes is None
    assert np.array_equal(got.dff, rec.dff)
    np.testing.assert_allclose(got.coords, rec.coords, atol=1e-3)
    np.testing.assert_allclose(got.times, np.arange(30) / 4.0)
    assert got.region_names == ["all"]


def test_nwb_without_pynwb_names_the_extra(tmp_path, monkeypatch):
    pytest.importorskip("pynwb")
    rec = make_synthetic_recording(20, 12, n_assemblies=1, min_assembly_size=4, seed=4)[0]
    rec.coords = np.round(rec.coords)
    path = _write_nwb(tmp_path / "r.nwb", rec)
    import builtins

    real_import = builtins.__import__

    def fake(name, *a, **k):
        if name == "pynwb" or name.startswith("pynwb."):
            raise ImportError("no pynwb")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(InputError, match=r'pip install "raysearch\[nwb\]"'):
        load_recording(path, signals=("dff",))


# ---------------------------------------------------------------------------------------------
# bad input: one clear InputError naming the file and the problem


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.h5: no such file"):
        load_recording(tmp_path / "nope.h5")


def test_not_hdf5(tmp_path):
    p = tmp_path / "notes.h5"
    p.write_text("not a recording")
    with pytest.raises(InputError, match=r"notes\.h5: not an HDF5/NWB file"):
        load_recording(p)


def test_truncated_file(tmp_path):
    path = write_synthetic_recording(tmp_path / "t.h5", 200, 200, seed=0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"t\.h5: .*truncated"):
        load_recording(path)


def test_no_known_datasets_lists_what_was_found(tmp_path):
    p = tmp_path / "other.h5"
    with h5py.File(p, "w") as f:
        f["images/stack"] = np.zeros((2, 3, 4))
        f["meta"] = np.arange(3)
    with pytest.raises(InputError, match=r"other\.h5: none of the known.*images/stack"):
        load_recording(p)


def test_spikes_and_coordinates_disagree_on_n(tmp_path, small):
    spikes = np.zeros((90, 121), dtype=np.float32)
    p = _crbm(tmp_path / "n.h5", small, spikes=spikes)
    with pytest.raises(InputError, match=r"n\.h5: .*ThresholdedSpikes.*N = 120.*disagree on N"):
        load_recording(p)


def test_times_disagree_on_t(tmp_path, small):
    p = _crbm(tmp_path / "t.h5", small, times=np.arange(80.0)[:, None])
    with pytest.raises(InputError, match=r"80 frame times .* T = 90"):
        load_recording(p)


def test_nonfinite_activity_error_or_drop(tmp_path, small, caplog):
    dff = small.dff.copy()
    dff[5, 10] = np.nan
    dff[6, 10] = np.inf
    dff[0, 33] = -np.inf
    p = _crbm(tmp_path / "nan.h5", small, dff=dff)
    with pytest.raises(
        InputError,
        match=r"nan\.h5: .*DFF has 3 NaN/inf values in 2 neurons.*"
        r"on_nonfinite='drop'",
    ):
        load_recording(p)
    with caplog.at_level(logging.WARNING):
        got = load_recording(p, on_nonfinite="drop")
    keep = np.ones(120, dtype=bool)
    keep[[10, 33]] = False
    assert got.n_neurons == 118 and got.n_nonfinite_dropped == 2
    assert np.array_equal(got.dff, small.dff[:, keep])
    assert np.array_equal(got.spikes, small.spikes[:, keep])
    assert "NaN/inf" in caplog.text


def test_non_binary_spikes(tmp_path, small):
    spikes = small.spikes.astype(np.float32)
    spikes[3, 4] = 0.7
    spikes[8, 9] = 2.0
    p = _crbm(tmp_path / "nb.h5", small, spikes=spikes)
    with pytest.raises(InputError, match=r"nb\.h5: .*0/1 spikes but has 2 other values"):
        load_recording(p)
    # the dF/F alone is still readable
    assert load_recording(p, signals=("dff",)).spikes is None


def test_nothing_left_after_region_filtering(tmp_path, small):
    p = _crbm(tmp_path / "e.h5", small, labels=np.zeros((12, 120), dtype=np.float32))
    with pytest.raises(InputError, match=r"e\.h5: all 120 neurons are in no region"):
        load_recording(p)


def test_published_like_file_zbrain_names_bool_spikes_chunked_dff(tmp_path, small):
    # as in the published cRBM files: 294 ZBrain masks without names, coordinates in mm with no
    # unit attribute; here also h5py-bool spikes and a chunked, compressed dF/F
    from raysearch.data.recordings import ZBRAIN_REGIONS

    labels = np.zeros((294, 120), dtype=np.float32)
    labels[14, :60] = 1  # "Diencephalon - Habenula"
    labels[213, 30:110] = 1  # overlapping masks, as in ZBrain
    p = tmp_path / "rbm_fish.h5"
    with h5py.File(p, "w") as f:
        b = f.create_group("Data/Brain")
        b.create_dataset("Analysis/ThresholdedSpikes", data=small.spikes)
        b.create_dataset("Analysis/DFF_align", data=small.dff, chunks=(16, 32), compression="gzip")
        b["Coordinates"] = small.coords.T / 1000.0
        b["ZBrainCoordinates"] = small.ref_coords.T / 1000.0
        b["Times"] = small.times[:, None]
        b["Labels"] = labels
    got = load_recording(p)
    assert got.region_names == ZBRAIN_REGIONS and got.region_names[14] == "Diencephalon - Habenula"
    assert got.n_dropped == 10 and got.n_neurons == 110
    assert np.array_equal(got.spikes, small.spikes[:, :110])
    assert np.array_equal(got.dff, small.dff[:, :110])
    np.testing.assert_allclose(got.coords, small.coords[:110], atol=2e-3)
    counts = got.region_counts()
    assert counts["Diencephalon - Habenula"] == 60
    assert counts[ZBRAIN_REGIONS[213]] == 80


def test_malformed_nwb(tmp_path):
    pytest.importorskip("pynwb")
    p = tmp_path / "fake.nwb"
    with h5py.File(p, "w") as f:
        f.attrs["nwb_version"] = "2.7.0"
        f["x"] = np.zeros(3)
    with pytest.raises(InputError, match=r"fake\.nwb: pynwb cannot read this NWB file"):
        load_recording(p)
