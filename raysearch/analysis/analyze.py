"""``analyze(DIR) -> Analysis``: everything the analyzer computes for one experiment directory.

The functions here return data only; :mod:`raysearch.plots` draws it and :mod:`raysearch.report`
writes the HTML report and CSV tables.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from raysearch.analysis.assemblies import DEFAULT_THRESHOLD, Assemblies, assemblies
from raysearch.analysis.clustering import Embedding, cluster_table, embed_and_cluster
from raysearch.analysis.io import ModelFiles, model_exists, read_evaluation_stats, read_units
from raysearch.analysis.regions import (
    consistency,
    load_structural,
    region_couplings,
    structural_spearman,
)
from raysearch.analysis.similarity import Similarity, similarity_matrix
from raysearch.errors import InputError

log = logging.getLogger(__name__)


@dataclass
class Analysis:
    """Results of :func:`analyze` (data only; see :mod:`raysearch.plots` for figures).

    Attributes
    ----------
    directory : str
    results : DataFrame
        The finished trials with a model file (rows of ``load_results``), plus ``cluster``,
        ``pc1``, ``pc2`` for the models in the similarity set (NaN / -1 for the others).
    trial_ids : list of str
        Models in the similarity set (the recording with the most models), in matrix order.
    similarity : Similarity
    embedding : Embedding
    clusters : DataFrame
        :func:`raysearch.analysis.clustering.cluster_table`.
    region_names : list of str
    region_couplings : dict {trial_id: ndarray (R, R)}
    region_consistency : DataFrame (K_r, K_r) or None
    recording_consistency : DataFrame or None
        Across recordings (mean region matrix per recording), when there are several.
    structural : DataFrame or None
        Spearman rho (and n entries) with the structural matrix per region model.
    assemblies : Assemblies or None
    assembly_trial : str or None
    coords : ndarray (N, 3) or None
        Unit coordinates of the assembly model (um).
    identity : dict {"best"/"bad": (trial_id, {stat: {"train","test","model"}})}
    notes : list of str
        What was skipped and why.
    skipped : list of str
        Model files that could not be read (garbage, a pickle, truncated), one
        ``"<trial_id>: <path>: <reason>"`` each; with ``strict=False`` they are left out of the
        analysis, with ``strict=True`` (the default) :func:`analyze` fails on them.
    """

    directory: str
    results: pd.DataFrame
    trial_ids: list
    similarity: Similarity
    embedding: Embedding
    clusters: pd.DataFrame
    region_names: list = field(default_factory=list)
    region_couplings: dict = field(default_factory=dict)
    region_consistency: pd.DataFrame | None = None
    recording_consistency: pd.DataFrame | None = None
    structural: pd.DataFrame | None = None
    assemblies: Assemblies | None = None
    assembly_trial: str | None = None
    coords: np.ndarray | None = None
    unit_region: np.ndarray | None = None
    identity: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    skipped: list = field(default_factory=list)

    def summary(self) -> dict:
        """A few headline numbers (JSON-able)."""
        sim = self.similarity.pearson
        off = sim[~np.eye(len(sim), dtype=bool)]
        out = {
            "n_models": len(self.trial_ids),
            "similarity_method": self.similarity.method,
            "pearson_mean": float(np.nanmean(off)) if off.size else float("nan"),
            "n_clusters": int(self.embedding.n_clusters),
        }
        if self.region_consistency is not None and len(self.region_consistency) > 1:
            rc = self.region_consistency.to_numpy()
            out["region_consistency_mean"] = float(np.nanmean(rc[~np.eye(len(rc), dtype=bool)]))
        if self.structural is not None and len(self.structural):
            out["structural_spearman_best"] = float(self.structural["spearman"].iloc[0])
        out["skipped_models"] = list(self.skipped)
        return out

    def tables(self) -> dict:
        """Every table as a DataFrame, keyed by the CSV name it is written under."""
        ids = self.trial_ids
        t = {
            "models": self.results,
            "clusters": self.clusters,
            "similarity_pearson": pd.DataFrame(self.similarity.pearson, index=ids, columns=ids),
            "similarity_cosine": pd.DataFrame(self.similarity.cosine, index=ids, columns=ids),
        }
        for tid, mat in self.region_couplings.items():
            t[f"region_couplings_{tid}"] = pd.DataFrame(
                mat, index=self.region_names, columns=self.region_names
            )
        if self.region_consistency is not None:
            t["region_consistency"] = self.region_consistency
        if self.recording_consistency is not None:
            t["recording_consistency"] = self.recording_consistency
        if self.structural is not None:
            t["structural_spearman"] = self.structural
        if self.assemblies is not None:
            t["assemblies"] = self.assemblies.table
        return t


def _load_results(directory):
    try:
        from raysearch.search import load_results
    except ImportError as exc:  # pragma: no cover - only while the search module is missing
        raise InputError(f"cannot read results: raysearch.search is unavailable ({exc})") from None
    return load_results(directory)


def finished_models(df: pd.DataFrame, directory) -> pd.DataFrame:
    """Rows of ``load_results`` with a readable local model file; InputError when there are none."""
    if df is None or len(df) == 0:
        raise InputError(f"{directory} has no trials; run a study first (`raysearch run`)")
    has_file = df["model_path"].map(model_exists) if "model_path" in df else pd.Series(False)
    fin = df[has_file.to_numpy(bool)]
    if len(fin) == 0:
        statuses = (
            ", ".join(f"{k}: {v}" for k, v in df["status"].value_counts().items())
            if "status" in df
            else "unknown"
        )
        raise InputError(
            f"{directory} has {len(df)} trial(s) but no finished trial with a model "
            f"file in {Path(directory) / 'models'} (statuses: {statuses}); wait for "
            "trials to finish or resume the study"
        )
    return fin.reset_index(drop=True)


def unreadable_models(df: pd.DataFrame) -> list[str]:
    """``"<trial_id>: <path>: <reason>"`` for every trial whose model file exists but cannot be
    read (the ``model_error`` column of ``load_results``)."""
    if df is None or "model_error" not in df:
        return []
    bad = df[df["model_error"].notna()]
    models = Path(df.attrs.get("experiment_dir", ".")) / "models"
    return [
        f"{r.trial_id}: {models / f'{r.trial_id}.h5'}: {r.model_error}" for r in bad.itertuples()
    ]


def _order_best(df, objective=None):
    """Indices sorted best first by the study's objective (:func:`raysearch.verdicts.rank`:
    usable fits by increasing objective, then the others)."""
    from raysearch import verdicts

    objective = objective or verdicts.study_objective(df)
    if objective not in df:  # a table from before that objective existed
        objective = next((o for o in verdicts.OBJECTIVES if o in df), None)
    if objective is None or "bad" not in df:
        return np.arange(len(df))
    return verdicts.rank(df, objective)


def analyze(
    directory,
    structural=None,
    n_clusters=None,
    similarity="auto",
    sketch_dim=2**15,
    region_models=10,
    assembly_threshold=DEFAULT_THRESHOLD,
    chunk=None,
    seed=0,
    strict=True,
) -> Analysis:
    """Analyze a finished (or partly finished) experiment directory.

    Parameters
    ----------
    directory : path
        Experiment directory of a study (``<storage>/<name>``).
    structural : path, optional
        CSV regions x regions structural matrix (see :func:`regions.load_structural`).
    n_clusters : int, optional
        k of k-means; by silhouette score when None.
    similarity : {"auto", "exact", "sketch"}
        Route for the model-similarity matrix (see :mod:`.similarity`).
    sketch_dim : int
        Sketch length of the sketch route.
    region_models : int
        Region-level couplings cost O(N^2 M) per model, so they are computed for this many models
        (best first by the study's objective, :func:`raysearch.verdicts.rank`), plus the worst
        bad model when there is one.
    assembly_threshold : float
        Membership threshold relative to each hidden unit's largest |w|.
    chunk : int, optional
        Rows of J formed at a time for region couplings (default: 64 MB blocks).
    seed : int
    strict : bool
        True (default): a model file that exists but cannot be read (garbage, a pickle, a
        truncated file) is an error, since leaving it out can change the best model and the
        recommended lambda. False: such files are left out, listed in ``skipped`` and the notes.

    Returns
    -------
    Analysis
    """
    directory = str(directory)
    all_rows = _load_results(directory)
    skipped = unreadable_models(all_rows)
    if skipped and strict:
        raise InputError(
            f"{len(skipped)} model file(s) in {directory} cannot be read: "
            + "; ".join(skipped)
            + ". Leaving them out could change the best model "
            "and the recommended lambda; re-run or remove those trials, or pass "
            "--no-strict to analyze the others"
        )
    df = finished_models(all_rows, directory)
    notes = [f"model file skipped (unreadable): {line}" for line in skipped]
    info = [ModelFiles(df["model_path"].tolist()).info(k) for k in range(len(df))]
    diverged = np.array([i["diverged"] for i in info], bool)
    if diverged.any():
        notes.append(
            f"{diverged.sum()} diverged model(s) left out: "
            + ", ".join(df["trial_id"].astype(str)[diverged])
        )
        if diverged.all():
            raise InputError(
                f"every finished model in {directory} diverged during training; "
                "nothing to analyze (lower the learning rate or lambda range)"
            )
        df = df[~diverged].reset_index(drop=True)
        info = [i for i, d in zip(info, diverged) if not d]
    files = ModelFiles(df["model_path"].tolist())
    n_vis = np.array([i["n_visible"] for i in info])
    rec = df["recording"].astype(str).fillna("") if "recording" in df else pd.Series([""] * len(df))
    group_key = rec + "|N=" + pd.Series(n_vis).astype(str)
    main = group_key.value_counts().index[0]
    in_main = (group_key == main).to_numpy()
    if not in_main.all():
        notes.append(
            f"neuron-level similarity uses the {in_main.sum()} models of the largest "
            f"recording group ({main}); {(~in_main).sum()} others are compared at region "
            "level only"
        )
    main_idx = np.flatnonzero(in_main)
    sim = similarity_matrix(
        ModelFiles([files.paths[i] for i in main_idx]),
        method=similarity,
        sketch_dim=sketch_dim,
        seed=seed,
    )
    if sim.method == "sketch":
        notes.append(
            f"model similarity estimated by TensorSketch (dim {sketch_dim}; error on a "
            f"correlation ~ {np.sqrt(2 / sketch_dim):.3f}); use similarity='exact' for "
            "the exact route"
        )
    pear = sim.pearson
    if np.isnan(pear).any():
        notes.append(
            "some models have constant couplings (e.g. all-zero weights); their "
            "similarity is NaN and is treated as 0 for PCA/k-means"
        )
        pear = np.nan_to_num(pear, nan=0.0)
        np.fill_diagonal(pear, 1.0)
    emb = embed_and_cluster(pear, n_clusters=n_clusters, seed=seed)
    df = df.copy()
    df["cluster"] = -1
    df["pc1"] = np.nan
    df["pc2"] = np.nan
    df.loc[main_idx, "cluster"] = emb.labels
    df.loc[main_idx, "pc1"] = emb.coords[:, 0]
    if emb.coords.shape[1] > 1:
        df.loc[main_idx, "pc2"] = emb.coords[:, 1]
    clusters = cluster_table(df.iloc[main_idx], emb.labels)
    trial_ids = df["trial_id"].astype(str).iloc[main_idx].tolist()

    out = Analysis(
        directory=directory,
        results=df,
        trial_ids=trial_ids,
        similarity=sim,
        embedding=emb,
        clusters=clusters,
        notes=notes,
        skipped=skipped,
    )
    order = _order_best(df)
    best = int(order[0])
    from raysearch.verdicts import bad_mask

    is_bad = bad_mask(df) if "bad" in df else np.zeros(len(df), bool)
    bad_rows = [i for i in order[::-1] if is_bad[i]]
    worst = int(bad_rows[0]) if bad_rows else (int(order[-1]) if len(order) > 1 else None)

    _identity(out, df, files, best, worst)
    _regions(out, df, files, order, worst, region_models, structural, chunk)
    _assemblies(out, df, files, best, assembly_threshold)
    return out


def _identity(out, df, files, best, worst):
    for key, i in (("best", best), ("bad", worst)):
        if i is None:
            continue
        stats = read_evaluation_stats(files.paths[i])
        if stats:
            out.identity[key] = (str(df["trial_id"].iloc[i]), stats)
        else:
            out.notes.append(
                f"model {df['trial_id'].iloc[i]} has no /evaluation stat vectors; "
                f"no identity plot for the {key} model"
            )


def _regions(out, df, files, order, worst, n_models, structural, chunk):
    chosen = [int(i) for i in order[: max(1, n_models)]]
    if worst is not None and worst not in chosen:
        chosen.append(worst)
    mats, names_of, rec_of = {}, {}, {}
    for i in chosen:
        units = read_units(files.paths[i])
        tid = str(df["trial_id"].iloc[i])
        if units is None:
            out.notes.append(f"model {tid} was saved without /units; no region couplings for it")
            continue
        W, c = files[i]
        R = len(units["region_names"])
        mats[tid] = region_couplings(W, c, units["unit_region"], n_regions=R, chunk=chunk)
        names_of[tid] = list(units["region_names"])
        rec_of[tid] = str(df["recording"].iloc[i]) if "recording" in df else ""
    if not mats:
        return
    first = next(iter(mats))
    names = names_of[first]
    same = {t: m for t, m in mats.items() if names_of[t] == names}
    out.region_names = names
    out.region_couplings = same
    out.region_consistency = consistency(list(same.values()), labels=list(same))
    recs = sorted(set(rec_of.values()))
    if len(recs) > 1:
        common = [n for n in names if all(n in names_of[t] for t in mats)]
        means, labels = [], []
        for r in recs:
            ms = [_reindex(mats[t], names_of[t], common) for t in mats if rec_of[t] == r]
            means.append(np.nanmean(np.stack(ms), axis=0))
            labels.append(r)
        out.recording_consistency = consistency(means, labels=labels)
    if structural is not None:
        S = load_structural(structural, names)
        rows = []
        for t, m in same.items():
            rho, n = structural_spearman(m, S)
            rows.append({"trial_id": t, "spearman": rho, "n_entries": n})
        out.structural = pd.DataFrame(rows)


def _reindex(mat, names, common):
    idx = [names.index(n) for n in common]
    return mat[np.ix_(idx, idx)]


def _assemblies(out, df, files, best, threshold):
    units = read_units(files.paths[best])
    W, c = files[best]
    ur = units["unit_region"] if units is not None else None
    rn = units["region_names"] if units is not None else None
    out.assemblies = assemblies(W, ur, rn, hidden_var=c, threshold=threshold)
    out.assembly_trial = str(df["trial_id"].iloc[best])
    if units is not None:
        out.coords = np.asarray(units["coords"], dtype=float)
        out.unit_region = np.asarray(units["unit_region"])
    else:
        out.notes.append("the best model has no /units: assembly maps need coordinates, skipped")
