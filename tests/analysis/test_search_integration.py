"""analyze() and the report on an experiment directory written by a real (tiny) search."""

import numpy as np


def test_analyze_real_search_dir(ray_session, tmp_path):
    from raysearch.analysis import analyze
    from raysearch.report import write_report
    from raysearch.search import run_study
    from raysearch.search.config import study_from_dict

    study = study_from_dict(
        {
            "name": "tiny-analysis",
            "recordings": [
                {"name": "fish", "synthetic": {"n_neurons": 80, "n_frames": 600, "seed": 0}}
            ],
            "preprocessing": {"n_segments": 5, "n_test_segments": 1, "test_segments": [2]},
            "model": {"n_hidden": 5, "n_updates": 40, "batch_size": 50, "n_gibbs": 2},
            "search": {
                "mode": "optuna",
                "lam": {"low": 1e-4, "high": 1.0},
                "num_samples": 4,
                "max_concurrent": 2,
                "sampler_seed": 0,
            },
            "evaluation": {
                "report_every": 20,
                "during": {"n_chains": 20, "n_burnin": 20, "n_samples": 5, "n_between": 5},
                "final": {"n_chains": 40, "n_burnin": 50, "n_samples": 10, "n_between": 5},
            },
            "run": {"verbose": 0, "max_failures": 1, "storage_path": str(tmp_path / "results")},
        }
    )
    run = run_study(study)
    a = analyze(run.experiment_dir, n_clusters=2)
    assert len(a.trial_ids) == 4
    assert a.similarity.pearson.shape == (4, 4)
    assert np.allclose(np.diag(a.similarity.pearson), 1.0)
    assert set(a.identity) >= {"best"}
    assert a.region_names and len(a.region_couplings) >= 1
    assert a.coords.shape == (80, 3)
    out = write_report(a, tmp_path / "report")
    html = out.read_text()
    for name in (
        "identity_best",
        "nrmse_vs_lambda",
        "similarity",
        "pca",
        "assemblies",
        "region_couplings",
    ):
        assert f"id='fig-{name}'" in html
