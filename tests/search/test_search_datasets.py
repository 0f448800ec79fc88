"""The driver reads only the signal a study needs from each recording file."""

import h5py
import numpy as np
from search_helpers import tiny_study

from raysearch.data.synthetic import write_synthetic_recording
from raysearch.search.tuner import prepare_datasets


def test_prepare_datasets_reads_only_the_studied_signal(tmp_path):
    path = tmp_path / "fish.h5"
    write_synthetic_recording(path, n_neurons=200, n_frames=600, seed=0)
    with h5py.File(path, "r+") as f:  # spoil the dF/F: reading it would be an error
        for name in ("DFF_align", "DFF"):
            ds = f.get(f"Data/Brain/Analysis/{name}")
            if ds is not None:
                ds[0, 0] = np.nan
    study = tiny_study(
        tmp_path,
        recordings=[{"name": "fish", "path": str(path)}],
        preprocessing={"signal": "spikes"},
    )
    (ds,) = prepare_datasets(study).values()
    assert ds.signal == "spikes" and ds.train.shape[1] == 200
