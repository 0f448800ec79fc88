"""raysearch: a distributed search over the sparsity strength of compositional RBMs.

The public API is small and follows the data flow::

    rec = raysearch.load_recording("fish.h5")            # or make_synthetic_recording(...)
    ds = raysearch.preprocess(rec, signal="spikes")      # train/test Dataset
    model = raysearch.CRBM(n_hidden=50, lam=0.05).fit(ds)
    metrics = raysearch.evaluate(model, ds)
    df = raysearch.load_results("ray_results/quickstart")  # after `raysearch run`
    res = raysearch.analyze("ray_results/quickstart")

Names are imported lazily so that ``import raysearch`` stays cheap and never needs CuPy or Ray.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    # data
    "Recording": "raysearch.data.recordings",
    "load_recording": "raysearch.data.recordings",
    "make_synthetic_recording": "raysearch.data.synthetic",
    "write_synthetic_recording": "raysearch.data.synthetic",
    "Dataset": "raysearch.data.preprocessing",
    "preprocess": "raysearch.data.preprocessing",
    # model
    "get_backend": "raysearch.backend",
    "CRBM": "raysearch.crbm",
    "evaluate": "raysearch.evaluation",
    # search
    "load_study": "raysearch.search",
    "run_study": "raysearch.search",
    "resume_study": "raysearch.search",
    "load_results": "raysearch.search",
    "select_model": "raysearch.selection",
    # analysis
    "analyze": "raysearch.analysis",
    "Analysis": "raysearch.analysis",
    # errors
    "RaysearchError": "raysearch.errors",
    "InputError": "raysearch.errors",
    "ConfigError": "raysearch.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'raysearch' has no attribute {name!r}") from None
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
