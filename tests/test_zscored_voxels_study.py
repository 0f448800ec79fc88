"""Issue 12.6: a small version of the shipped z-scored voxel study (experiments/zscored_voxels.yaml)
runs end to end through Ray Tune, and its models recover the planted assemblies on voxel units.

Same fish, preprocessing and model as the shipped study; three lambdas (too weak, the middle,
too strong) and one seed instead of seven x three, and a cheaper final evaluation. Measured
offline with the study's model (plain CRBM.fit, 20 hidden units): recovery at 1e-2 0.90 and
0.91 (seeds 1, 2), at 3e-2 0.94; with 10 hidden units 0.69-0.84 (one assembly missed by 2 of 3
seeds) and 0.48-0.50 at 1e-4 / 1e-5 (dense weights, density 0.90).
"""

from pathlib import Path

import numpy as np
import pytest
import yaml

from raysearch.search.config import study_from_dict

ROOT = Path(__file__).resolve().parents[1]
LAMS = [1e-4, 1e-2, 1e-1]


@pytest.fixture(scope="module")
def voxel_study(ray_session, tmp_path_factory):
    from raysearch.search import run_study

    d = yaml.safe_load((ROOT / "experiments" / "zscored_voxels.yaml").read_text())
    d["search"].update(lam=LAMS, seeds=[0])
    d["evaluation"] = {
        "report_every": d["model"]["n_updates"],
        "during": {"n_chains": 20, "n_burnin": 20, "n_samples": 5, "n_between": 5},
        "final": {"n_chains": 100, "n_burnin": 300, "n_samples": 10, "n_between": 10},
    }
    d["run"] = {
        "storage_path": str(tmp_path_factory.mktemp("zvox")),
        "verbose": 0,
        "max_failures": 0,
    }
    run = run_study(study_from_dict(d))
    assert run.num_errors == 0
    return run.experiment_dir


def test_zscored_voxel_study_recovers_the_planted_assemblies(voxel_study):
    from raysearch.analysis.recovery import recovery_table
    from raysearch.search import load_results

    df = load_results(voxel_study)
    done = df[df["finished"].fillna(False).astype(bool)]
    assert len(done) == len(LAMS)
    # every trial says whether it stopped as unstable and why (empty reason when it did not)
    assert {"diverged", "diverged_reason", "unstable", "unstable_reason"} <= set(done.columns)
    for r in done.itertuples():
        assert bool(r.diverged) == bool(r.diverged_reason)
    table = recovery_table(voxel_study).set_index("lam")["recovery"]
    mid = table[1e-2]
    assert mid >= 0.8  # the target on voxel units
    assert mid > table[1e-4] + 0.1  # too little sparsity blurs them
    density = done.set_index("lam")["weight_density"]
    assert density[1e-1] < 0.05 < density[1e-4]  # the strong end empties out
    assert np.isfinite(table.to_numpy()).all()


@pytest.mark.xfail(
    strict=True,
    reason="issue 12.6 target not met yet: the verdicts call the "
    "1e-2 fit (recovery 0.92) no_better_than_chance and recommend 1e-1 (0.74), "
    "the only fit not bad",
)
def test_zscored_voxel_study_recommends_a_recovering_lambda(voxel_study):
    from raysearch import select_model
    from raysearch.analysis.recovery import recovery_table
    from raysearch.search import load_results

    df = load_results(voxel_study)
    done = df[df["finished"].fillna(False).astype(bool)]
    table = recovery_table(voxel_study).set_index("lam")["recovery"]
    rec, _ = select_model(done)
    assert len(rec), rec.attrs.get("message")
    best = rec[rec["role"] == "recommended"].iloc[0]
    assert table[float(best["lam"])] >= 0.8, (best["lam"], table.to_dict())
