"""Optuna samplers in a form that Ray Tune can pickle.

Ray Tune pickles the search algorithm twice: ``Tuner(...)`` stores it with the experiment (with
cloudpickle) and ``OptunaSearch.save`` writes its state, the Optuna study and sampler included, with
plain :mod:`pickle` whenever Tune snapshots the experiment. Since Optuna 5.1 the genetic samplers
(``NSGAIISampler``, ``NSGAIIISampler``) hold a ``threading.Lock`` that guards their generation
cache, and a lock cannot be pickled: a ``multi`` study then failed in ``Tuner.__init__``.

The samplers here are Optuna's own, subclassed only to leave their locks out of the pickled state
and to make fresh ones when unpickled. The lock guards a cache that the sampler rebuilds from the
study's storage (it checks the study id and trial count on every call), so nothing of the
search is lost. With Optuna versions whose samplers hold no lock the subclasses behave exactly as
Optuna's classes. This module imports Optuna, so import it only where a sampler is built.
"""

from __future__ import annotations

import threading

import optuna

__all__ = ["TPESampler", "NSGAIISampler", "make_sampler"]

_LOCK = type(threading.Lock())
_RLOCK = type(threading.RLock())
_STATE_KEY = "_raysearch_dropped_locks"


class _PicklableLocks:
    """Mixin: pickle an object without its ``threading`` locks; unpickling makes new ones."""

    def __getstate__(self):
        state = dict(self.__dict__)
        dropped = {}
        for key, value in list(state.items()):
            if isinstance(value, (_LOCK, _RLOCK)):
                dropped[key] = isinstance(value, _RLOCK)
                del state[key]
        state[_STATE_KEY] = dropped
        return state

    def __setstate__(self, state):
        state = dict(state)
        dropped = state.pop(_STATE_KEY, {})
        self.__dict__.update(state)
        for key, reentrant in dropped.items():
            setattr(self, key, threading.RLock() if reentrant else threading.Lock())


class TPESampler(_PicklableLocks, optuna.samplers.TPESampler):
    """:class:`optuna.samplers.TPESampler` that pickles whatever locks it holds."""


class NSGAIISampler(_PicklableLocks, optuna.samplers.NSGAIISampler):
    """:class:`optuna.samplers.NSGAIISampler` that pickles without its generation-cache lock."""


def make_sampler(mode: str, seed: int) -> optuna.samplers.BaseSampler:
    """The seeded sampler of a search mode: TPE for ``optuna``, NSGA-II for ``multi``.

    Parameters
    ----------
    mode : {"optuna", "multi"}
    seed : int
    """
    if mode == "optuna":
        return TPESampler(seed=seed)
    if mode == "multi":
        return NSGAIISampler(seed=seed)
    raise ValueError(f"no Optuna sampler for search mode {mode!r} (expected 'optuna' or 'multi')")
