"""Post-hoc analysis of a study: couplings, model similarity, PCA/k-means, regions, assemblies.

``raysearch.analyze(DIR) -> Analysis`` returns data only; :mod:`raysearch.plots` draws it and
:mod:`raysearch.report` writes ``report.html`` plus CSV tables. Nothing here imports matplotlib.
"""

from raysearch.analysis.analyze import Analysis, analyze, finished_models
from raysearch.analysis.assemblies import Assemblies, assemblies
from raysearch.analysis.clustering import (
    Embedding,
    cluster,
    cluster_table,
    embed,
    embed_and_cluster,
)
from raysearch.analysis.couplings import LowRankCouplings, offdiag_stats
from raysearch.analysis.regions import (
    consistency,
    load_structural,
    log_pearson,
    region_couplings,
    structural_spearman,
)
from raysearch.analysis.similarity import Similarity, TensorSketch, similarity_matrix

__all__ = [
    "Analysis",
    "analyze",
    "finished_models",
    "Assemblies",
    "assemblies",
    "Embedding",
    "cluster",
    "cluster_table",
    "embed",
    "embed_and_cluster",
    "LowRankCouplings",
    "offdiag_stats",
    "consistency",
    "load_structural",
    "log_pearson",
    "region_couplings",
    "structural_spearman",
    "Similarity",
    "TensorSketch",
    "similarity_matrix",
]
