"""The compositional RBM: units (``units``), PCD training (``training``), the estimator
(:class:`CRBM`) and model files (``io``)."""

from raysearch.crbm.estimator import CRBM

__all__ = ["CRBM"]
