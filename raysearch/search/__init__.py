"""The search service: a study file, the Tune trial, Tuner assembly and resume, results loading.

study = raysearch.load_study("experiments/quickstart.yaml")
run = raysearch.run_study(study)                # Ray Tune + Optuna; returns a StudyRun
df = raysearch.load_results(run.experiment_dir)  # pandas, from the files alone
"""

from raysearch.search.config import Study, load_study, study_from_dict
from raysearch.search.results import load_results
from raysearch.search.tuner import StudyRun, resume_study, run_study

__all__ = [
    "Study",
    "StudyRun",
    "load_study",
    "study_from_dict",
    "run_study",
    "resume_study",
    "load_results",
]
