"""Selection rule and bad-share bins on hand-built results tables with known answers."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from raysearch import selection
from raysearch.errors import ConfigError, InputError
from raysearch.selection import bad_share_by_lambda, lambda_bins, subset_constant, wilson_interval


# The known answers below are worked out on the tables' mean_nrmse column; the library's default
# objective (max_nrmse) has its own test, test_default_objective_is_the_worst_nrmse.
def _on_mean(fn):
    def call(df, *args, **kw):
        kw.setdefault("objective", "mean_nrmse")
        return fn(df, *args, **kw)

    return call


recommend = _on_mean(selection.recommend)
seed_spread = _on_mean(selection.seed_spread)
mean_noise = _on_mean(selection.mean_noise)
robust_seed_spread = _on_mean(selection.robust_seed_spread)
default_tolerance = _on_mean(selection.default_tolerance)


def table(rows):
    return pd.DataFrame(
        rows,
        columns=["trial_id", "lam", "seed", "mean_nrmse", "max_nrmse", "bad", "weight_density"],
    )


def grid_table():
    # lam:        0.001            0.01             0.1              1.0
    # mean_nrmse: .20 .22          .18 .20          .21 .23          .60 (bad) .55 (bad)
    return table(
        [
            ("a", 0.001, 0, 0.20, 0.30, False, 0.50),
            ("b", 0.001, 1, 0.22, 0.31, False, 0.52),
            ("c", 0.01, 0, 0.18, 0.40, False, 0.30),
            ("d", 0.01, 1, 0.20, 0.41, False, 0.31),
            ("e", 0.1, 0, 0.21, 0.35, False, 0.10),
            ("f", 0.1, 1, 0.23, 0.36, False, 0.12),
            ("g", 1.0, 0, 0.60, 1.50, True, 0.01),
            ("h", 1.0, 1, 0.55, 1.20, True, 0.02),
        ]
    )


def test_default_objective_is_the_worst_nrmse():
    """Without an objective the rule ranks by max_nrmse: lambda means .305 (1e-3), .405 (1e-2),
    .355 (1e-1); every seed pair differs by .01, so sigma = sqrt(.00005 / median(chi2_1)) and the
    tolerance d_3 * sigma = .0201: only 1e-3 is within it, its better seed a (mean_nrmse would
    pick 0.1, see the next test)."""
    assert selection.DEFAULT_OBJECTIVE == "max_nrmse"
    rec = selection.recommend(grid_table())
    tol = subset_constant(3) * np.sqrt(0.00005 / stats.chi2.median(1))
    assert rec.tolerance == pytest.approx(tol) and tol == pytest.approx(0.0201, abs=1e-4)
    assert rec.lam == pytest.approx(0.001) and rec.row["trial_id"] == "a"
    assert selection.default_tolerance(grid_table()) == pytest.approx(tol)


def test_seed_spread_uses_fits_at_best_lambda():
    # best fit is c (0.18) at lam 0.01, whose seeds give 0.18 and 0.20
    assert seed_spread(grid_table()) == pytest.approx(np.std([0.18, 0.20], ddof=1))


def test_seed_spread_tolerance_by_name():
    rec = recommend(grid_table(), tolerance="seed-spread")
    # pooled spread over 1e-3, 1e-2, 1e-1 (each seed pair differs by .02): .02 / sqrt(2); only
    # lambda 1e-2 (mean .19) is within .19 + .0141: its better seed c
    assert rec.tolerance == pytest.approx(seed_spread(grid_table()))
    assert (
        rec.tolerance == pytest.approx(0.02 / np.sqrt(2)) and rec.tolerance_source == "seed spread"
    )
    assert rec.row["trial_id"] == "c"
    with pytest.raises(ConfigError, match="seed-spread"):
        recommend(grid_table(), tolerance="wide")


def test_sparsest_within_the_default_tolerance():
    rec = recommend(grid_table())
    # three usable lambdas (fewer than 5: no grid scatter), so sigma_m is the seed floor: every
    # seed pair differs by .02 (s^2 = .0002), robust spread sqrt(.0002 / median(chi2_1)) = .02097,
    # over sqrt(2 seeds); K = 3: tolerance = d_3 * sqrt(2) * .02097 / sqrt(2) = .0402
    sigma = np.sqrt(0.0002 / stats.chi2.median(1))
    assert sigma == pytest.approx(1.4826 * 0.02 / np.sqrt(2), rel=1e-4)
    tol = subset_constant(3) * sigma
    assert rec.tolerance == pytest.approx(tol) and tol == pytest.approx(0.0402, abs=1e-4)
    assert rec.tolerance_source == "95% subset of the best"
    # lambda means 1e-3 .21, 1e-2 .19, 1e-1 .22; limit .19 + .0402: all three; the largest
    # lambda 0.1, its better seed e (.21)
    assert rec.lam == pytest.approx(0.1)
    assert rec.row["trial_id"] == "e"
    assert rec.best_row["trial_id"] == "c"
    assert rec.n_bad == 2 and rec.n_fits == 8
    # confidence 50%: d_3 = .5485 -> .0115, only 1e-2; a given tolerance replaces the default
    assert recommend(grid_table(), confidence=0.5).tolerance == pytest.approx(
        subset_constant(3, 0.5) * sigma
    )
    assert recommend(grid_table(), confidence=0.5).lam == pytest.approx(0.01)
    assert recommend(grid_table(), tolerance=0.0).lam == pytest.approx(0.01)


def test_sparsest_with_given_tolerance_picks_largest_lambda_not_bad():
    rec = recommend(grid_table(), tolerance=0.051)
    # candidates <= 0.231: a, b, c, d, e, f; bad fits at lam 1 are excluded although sparser
    assert rec.lam == pytest.approx(0.1)
    assert rec.row["trial_id"] == "e"  # tie on lambda -> lower objective
    assert rec.runner_up["lam"] == pytest.approx(0.01)  # runner-up at another lambda
    assert rec.runner_up["trial_id"] == "c"
    assert set(rec.candidates["trial_id"]) == {"a", "b", "c", "d", "e", "f"}


def test_best_rule_and_max_objective():
    rec = recommend(grid_table(), rule="best")
    assert rec.row["trial_id"] == "c"
    rec = recommend(grid_table(), rule="best", objective="max_nrmse")
    assert rec.row["trial_id"] == "a"
    # sparsest on the worst criterion, tolerance 0.05: a (0.30), b (0.31), e (0.35 > 0.35?) no
    rec = recommend(grid_table(), objective="max_nrmse", tolerance=0.05)
    assert rec.lam == pytest.approx(0.1) and rec.row["trial_id"] == "e"


def test_sparsity_by_weight_density():
    rec = recommend(grid_table(), tolerance=0.05, sparsity_by="weight_density")
    assert rec.row["trial_id"] == "e"  # 0.10 lowest density among the good candidates


def test_ties_on_objective_go_to_larger_lambda():
    df = table([("x", 0.01, 0, 0.2, 0.3, False, 0.5), ("y", 0.05, 0, 0.2, 0.3, False, 0.4)])
    assert recommend(df, tolerance=0.0).row["trial_id"] == "y"
    assert recommend(df, rule="best").row["trial_id"] == "y"


def test_all_bad_gives_no_recommendation():
    df = table([("x", 0.01, 0, 0.9, 1.3, True, 0.5), ("y", 0.05, 0, float("nan"), 2.0, True, 0.4)])
    rec = recommend(df)
    assert rec.lam is None and rec.row is None
    assert rec.n_bad == 2 and "no usable fit" in rec.message
    assert len(rec.to_frame()) == 0


def test_single_lambda_and_single_fit():
    df = table([("x", 0.02, 0, 0.3, 0.5, False, 0.2)])
    rec = recommend(df)
    assert rec.lam == pytest.approx(0.02) and rec.tolerance == 0.0 and rec.runner_up is None
    df = table([("x", 0.02, 0, 0.3, 0.5, False, 0.2), ("y", 0.02, 1, 0.5, 0.6, False, 0.2)])
    rec = recommend(df)
    assert rec.tolerance == 0.0  # one lambda: nothing to tell it apart from
    assert rec.row["trial_id"] == "x"  # same lambda, lower objective first
    assert rec.runner_up["trial_id"] == "y"  # no other lambda: next fit


def test_no_noise_estimate_is_said():
    """One fit per lambda and fewer than 5 lambdas (the quickstart): tolerance 0, the best
    objective is recommended, and the source says why."""
    df = table(
        [
            ("a", 0.001, 0, 0.20, 0.3, False, 0.5),
            ("b", 0.003, 0, 0.10, 0.3, False, 0.4),
            ("c", 0.01, 0, 0.15, 0.3, False, 0.2),
            ("d", 0.03, 0, 0.18, 0.3, False, 0.1),
        ]
    )
    rec = recommend(df)
    assert rec.tolerance == 0.0 and rec.row["trial_id"] == "b"
    assert rec.tolerance_source.startswith("95% subset of the best; no noise estimate")
    assert "no noise estimate" in rec.message
    # with a noise estimate the label is the plain one
    assert recommend(grid_table()).tolerance_source == "95% subset of the best"


def test_nan_objective_and_missing_bad_flag_are_not_usable():
    df = table(
        [
            ("x", 0.01, 0, float("nan"), 0.3, False, 0.5),
            ("y", 0.1, 0, 0.4, 0.6, None, 0.3),
            ("z", 0.001, 0, 0.5, 0.7, False, 0.6),
        ]
    )
    rec = recommend(df, tolerance=1.0)
    assert rec.row["trial_id"] == "z" and rec.n_bad == 2


def test_continuous_search_uses_nearest_fits_for_spread():
    lam = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 5e-2, 1e-1]
    obj = [0.30, 0.25, 0.21, 0.20, 0.22, 0.45, 0.80]
    df = table([(f"t{i}", l, 0, o, o + 0.1, False, 0.1) for i, (l, o) in enumerate(zip(lam, obj))])
    # the 5 fits nearest to the best lambda 3e-3 in log10: 3e-3, 1e-3, 1e-2, 3e-4, 5e-2
    near = [0.20, 0.21, 0.22, 0.25, 0.45]
    assert seed_spread(df) == pytest.approx(np.std(near, ddof=1))
    # one fit per lambda: the noise is the scatter of single fits along lambda only (no seed
    # floor): steps .05 .04 .01 .02 .23 .35, median .045 -> sigma_m = 1.4826 * .045 / sqrt(2)
    assert mean_noise(df) == pytest.approx(1.4826 * 0.045 / np.sqrt(2))
    rec = recommend(df)
    assert rec.tolerance == pytest.approx(subset_constant(7) * 1.4826 * 0.045)  # 0.1529
    # within 0.20 + 0.1529: 1e-4 (.30), 3e-4 (.25), 1e-3 (.21), 3e-3 (.20), 1e-2 (.22); not 5e-2
    # (.45): largest lambda 1e-2
    assert rec.lam == pytest.approx(1e-2) and rec.row["trial_id"] == "t4"
    assert rec.runner_up["trial_id"] == "t3"


def test_invalid_settings():
    with pytest.raises(ConfigError, match="rule"):
        recommend(grid_table(), rule="fastest")
    with pytest.raises(ConfigError, match="sparsity"):
        recommend(grid_table(), sparsity_by="size")
    with pytest.raises(ConfigError, match="tolerance"):
        recommend(grid_table(), tolerance=-1)
    with pytest.raises(InputError, match="lacks column"):
        recommend(grid_table().drop(columns="bad"))


def wilson_by_hand(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_wilson_interval_matches_hand_computation():
    for k, n in [(3, 10), (0, 10), (10, 10), (1, 40), (17, 40)]:
        lo, hi = wilson_interval(k, n)
        elo, ehi = wilson_by_hand(k, n)
        assert lo == pytest.approx(max(elo, 0.0), abs=1e-12)
        assert hi == pytest.approx(min(ehi, 1.0), abs=1e-12)


def test_bad_share_bins_on_a_grid():
    df = grid_table()
    out = bad_share_by_lambda(df)
    assert list(out["n_fits"]) == [2, 2, 2, 2]
    assert list(out["n_bad"]) == [0, 0, 0, 2]
    assert list(out["share_bad"]) == [0, 0, 0, 1]
    # geometric centres of grid bins are the grid values themselves
    np.testing.assert_allclose(out["lam_center"], [0.001, 0.01, 0.1, 1.0], rtol=1e-12)
    lo, hi = wilson_by_hand(2, 2)
    assert out["ci_low"].iloc[3] == pytest.approx(lo)
    assert out["ci_high"].iloc[3] == pytest.approx(1.0)


def test_bad_share_with_explicit_log_bins():
    lam = [1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1, 1e-1]
    bad = [False, True, False, False, True, True, True, False]
    df = pd.DataFrame({"lam": lam, "bad": bad})
    out = bad_share_by_lambda(df, bins=np.array([1e-3, 1e-2, 1e-1]))
    # [1e-3, 1e-2): 1e-3, 2e-3, 5e-3 -> 1 bad of 3; [1e-2, 1e-1]: 1e-2 .. 1e-1 (upper edge incl.)
    assert list(out["n_fits"]) == [3, 5]
    assert list(out["n_bad"]) == [1, 3]
    assert out["share_bad"].tolist() == pytest.approx([1 / 3, 3 / 5])


def test_bad_share_counts_missing_flags_as_bad_and_default_log_bins():
    rng = np.random.default_rng(0)
    lam = 10 ** rng.uniform(-5, -1, size=40)
    df = pd.DataFrame({"lam": lam, "bad": [None] * 5 + [False] * 35})
    out = bad_share_by_lambda(df)
    assert len(out) == 6 and out["n_fits"].sum() == 40 and out["n_bad"].sum() == 5  # sqrt(40)
    edges = lambda_bins(lam)
    assert edges[0] == pytest.approx(lam.min()) and edges[-1] == pytest.approx(lam.max())


def test_distinct_lambdas_without_repeats_get_log_bins():
    df = pd.DataFrame({"lam": [1e-4, 1e-3, 1e-2, 1e-1], "bad": [False, False, True, True]})
    out = bad_share_by_lambda(df)
    assert len(out) == 2  # round(sqrt(4)) bins, not one per fit
    assert list(out["n_bad"]) == [0, 2]


# --- pooled seed spread, empty fits, select_model, report data -----------------------------------


def test_seed_spread_pools_the_best_lambda_and_its_grid_neighbours():
    # five lambdas x 2 seeds; best fit at 1e-3; neighbours 1e-4 and 1e-2; 1e-5 and 1e-1 left out
    rows, vals = (
        [],
        {
            1e-5: (0.30, 0.90),
            1e-4: (0.20, 0.26),
            1e-3: (0.10, 0.12),
            1e-2: (0.15, 0.25),
            1e-1: (0.50, 0.10),
        },
    )
    for lam, (a, b) in vals.items():
        rows += [(f"{lam}-0", lam, 0, a, a, False, 0.3), (f"{lam}-1", lam, 1, b, b, False, 0.3)]
    df = table(rows)
    # each pair (a, b) has (n - 1) s^2 = (a - b)^2 / 2
    pooled = np.sqrt(((0.20 - 0.26) ** 2 + (0.10 - 0.12) ** 2 + (0.15 - 0.25) ** 2) / 2 / 3)
    assert seed_spread(df) == pytest.approx(pooled)
    # a bad neighbour is not a neighbour: 1e-2 flagged bad -> 1e-4 and 1e-3 only... and 1e-1 is
    # the next lambda with two good fits
    df.loc[df["lam"] == 1e-2, "bad"] = True
    pooled = np.sqrt(((0.20 - 0.26) ** 2 + (0.10 - 0.12) ** 2 + (0.50 - 0.10) ** 2) / 2 / 3)
    assert seed_spread(df) == pytest.approx(pooled)


def test_empty_fits_are_never_recommended():
    """A fit with no weight above threshold (weight_density 0) has trivially matched hidden
    statistics; even with the best objective and the largest lambda it is not a candidate."""
    df = table(
        [
            ("a", 1e-3, 0, 0.10, 0.2, False, 0.2),
            ("b", 1e-3, 1, 0.12, 0.2, False, 0.2),
            ("z", 1e-1, 0, -0.70, 0.99, False, 0.0),
            ("y", 1e-1, 1, 0.05, 0.99, False, 0.0),
        ]
    )
    rec = recommend(df)
    assert rec.row["trial_id"] == "a" and rec.best_row["trial_id"] == "a"
    assert rec.n_bad == 2 and rec.n_empty == 2 and "2 empty" in rec.message
    assert seed_spread(df) == pytest.approx(np.std([0.10, 0.12], ddof=1))
    assert recommend(df, rule="best").row["trial_id"] == "a"
    # changed on purpose (issue 12.1): an empty fit is bad (reason "empty"), in the bad share too
    out = bad_share_by_lambda(df)
    assert out["n_bad"].tolist() == [0, 2] and out["n_empty"].tolist() == [0, 2]


def test_select_model_uses_finished_trials_and_the_study_objective():
    from raysearch.selection import select_model

    df = grid_table()
    df["finished"] = True
    df.loc[df["trial_id"] == "c", "finished"] = False  # best fit still running: not selected
    df.attrs["study"] = {"search": {"objective": "max_nrmse"}}
    rec, bins = select_model(df, tolerance=0.0)
    assert rec.attrs["objective"] == "max_nrmse" and rec.attrs["tolerance_source"] == "given"
    assert rec["role"].tolist()[:2] == ["recommended", "best objective"]
    assert rec.iloc[0]["trial_id"] == "a"  # lowest max_nrmse 0.30 among finished
    # 7 finished fits over 4 lambdas (fewer than 2 per lambda): round(sqrt(7)) = 3 log bins with
    # edges 1e-3, 1e-2, 1e-1, 1 -> {a, b}, {d}, {e, f, g, h}
    assert bins["n_fits"].tolist() == [2, 1, 4]
    rec, _ = select_model(df, objective="mean_nrmse", rule="best")
    assert rec.iloc[0]["trial_id"] == "d" and "lowest mean_nrmse" in rec.attrs["message"]
    with pytest.raises(ConfigError, match="objective"):
        select_model(df, objective="accuracy")
    df["finished"] = False
    with pytest.raises(InputError, match="no finished trial"):
        select_model(df)


def test_sampled_pair_couplings_equal_the_dense_matrix():
    from raysearch.analysis.couplings import LowRankCouplings
    from raysearch.selection import pair_couplings, sample_pairs

    rng = np.random.default_rng(0)
    W, c = rng.normal(size=(6, 40)), rng.random(6)
    J = LowRankCouplings.from_factors(W, c).dense()
    i, j = sample_pairs(40, 300, seed=1)
    assert len(i) <= 300 and np.all(i < j) and len(set(zip(i, j))) == len(i)
    np.testing.assert_allclose(pair_couplings(W, c, i, j), J[i, j], rtol=1e-12, atol=1e-12)
    # same arguments, same pairs; small N: every pair
    assert np.array_equal(sample_pairs(40, 300, seed=1)[0], i)
    a, b = sample_pairs(10, 1000)
    assert len(a) == 45
    np.testing.assert_allclose(pair_couplings(W[:, :10], c, a, b), J[:10, :10][a, b])


def test_selection_data_histograms_against_a_hand_computation(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "analysis"))
    from analysis_helpers import make_experiment

    from raysearch.data.preprocessing import preprocess
    from raysearch.data.synthetic import make_synthetic_recording
    from raysearch.search import load_results
    from raysearch.selection import pair_couplings, sample_pairs, selection_data

    rec, _ = make_synthetic_recording(n_neurons=60, n_frames=300, seed=0)
    ds = preprocess(rec)
    rng = np.random.default_rng(0)
    lams = [1e-4, 1e-4, 1e-1, 1e-1]
    specs = [
        dict(
            W=rng.normal(size=(4, 60)) * s,
            c=rng.random(4) + 0.5,
            lam=lam,
            seed=i % 2,
            mean_nrmse=m,
            bad=b,
        )
        for i, (lam, s, m, b) in enumerate(
            zip(lams, (1.0, 1.0, 0.1, 0.1), (0.2, 0.21, 0.3, 0.9), (False,) * 3 + (True,))
        )
    ]
    exp = make_experiment(tmp_path / "exp", specs, ds)
    df = load_results(exp)
    data = selection_data(df, n_pairs=500, n_hist_bins=20, seed=3)
    assert data.hist_bins["n_models"].tolist() == [2, 2]
    i, j = sample_pairs(60, 500, seed=3)
    assert data.n_pairs == len(i)
    order = df.sort_values("lam")["trial_id"].tolist()
    spec_of = {f"abcde_{k:05d}": s for k, s in enumerate(specs)}
    w = [
        np.concatenate(
            [spec_of[t]["W"].ravel().astype(np.float32).astype(float) for t in order[g : g + 2]]
        )
        for g in (0, 2)
    ]
    big = max(np.abs(x).max() for x in w)
    edges = np.linspace(-big, big, 21)
    np.testing.assert_allclose(data.weight_edges, edges, rtol=1e-12)
    for g in range(2):
        np.testing.assert_allclose(data.weight_hist[g], np.histogram(w[g], edges, density=True)[0])
    J = [
        np.concatenate(
            [
                pair_couplings(
                    spec_of[t]["W"].astype(np.float32), spec_of[t]["c"].astype(np.float32), i, j
                )
                for t in order[g : g + 2]
            ]
        )
        for g in (0, 2)
    ]
    big = max(np.abs(x).max() for x in J)
    edges = np.linspace(-big, big, 21)
    for g in range(2):
        np.testing.assert_allclose(
            data.coupling_hist[g], np.histogram(J[g], edges, density=True)[0], rtol=1e-9
        )
    # radar: recommended, best objective (same fit -> shown once) and the bad fit
    assert data.radar["role"].tolist() == ["recommended = best objective", "bad"]
    assert data.radar["lam"].tolist() == [1e-4, 1e-1]
    assert data.recommendation.iloc[0]["mean_nrmse"] == pytest.approx(0.2)


def test_lambdas_are_compared_by_their_mean_over_seeds():
    """The minimum of many noisy single fits is biased low; each lambda is scored by its mean.
    lam 1e-3: 0.10, 0.30 (mean 0.20); 1e-2: 0.20, 0.22 (0.21); 1e-1: 0.24, 0.26 (0.25)."""
    df = table(
        [
            ("a", 1e-3, 0, 0.10, 0.1, False, 0.5),
            ("b", 1e-3, 1, 0.30, 0.3, False, 0.5),
            ("c", 1e-2, 0, 0.22, 0.2, False, 0.3),
            ("d", 1e-2, 1, 0.20, 0.2, False, 0.3),
            ("e", 1e-1, 0, 0.24, 0.2, False, 0.1),
            ("f", 1e-1, 1, 0.26, 0.2, False, 0.1),
        ]
    )
    rec = recommend(df, tolerance=0.02)
    # best mean 0.20 (1e-3); limit 0.22: 1e-3 and 1e-2 (0.21) qualify, 1e-1 (0.25) does not.
    # A per-fit rule would stop at 0.10 + 0.02 and keep only lambda 1e-3.
    assert rec.lam == pytest.approx(1e-2) and rec.row["trial_id"] == "d"  # its better seed
    assert rec.row["lam_objective"] == pytest.approx(0.21)
    assert set(rec.candidates["trial_id"]) == {"a", "b", "c", "d"}
    assert rec.best_row["trial_id"] == "a" and rec.runner_up["trial_id"] == "a"
    assert recommend(df, rule="best").row["trial_id"] == "a"
    # seed spread: the best lambda is the best mean (1e-3), pooled with its neighbour 1e-2
    pooled = np.sqrt(((0.10 - 0.30) ** 2 + (0.22 - 0.20) ** 2) / 2 / 2)
    assert seed_spread(df) == pytest.approx(pooled)


def test_pair_sampling_never_forms_the_dense_matrix():
    """N = 200,000 units: a dense J would need 320 GB; the sampled route needs O(M * pairs)."""
    import raysearch
    from raysearch.selection import pair_couplings, sample_pairs, select_model

    assert raysearch.select_model is select_model
    rng = np.random.default_rng(0)
    W, c = rng.normal(size=(3, 200_000)).astype(np.float32), rng.random(3)
    i, j = sample_pairs(200_000, 5_000, seed=0)
    assert 4_900 < len(i) <= 5_000
    J = pair_couplings(W, c, i, j)
    k = 17
    assert J[k] == pytest.approx(float(np.sum(c * W[:, i[k]].astype(float) * W[:, j[k]])))


def test_selection_data_leaves_a_diverged_model_out_of_the_histograms(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "analysis"))
    from analysis_helpers import make_experiment

    from raysearch.data.preprocessing import preprocess
    from raysearch.data.synthetic import make_synthetic_recording
    from raysearch.search import load_results
    from raysearch.selection import selection_data

    rec, _ = make_synthetic_recording(n_neurons=40, n_frames=300, seed=0)
    ds = preprocess(rec)
    rng = np.random.default_rng(0)
    W_nan = np.full((3, 40), np.nan)
    specs = [
        dict(W=rng.normal(size=(3, 40)), c=np.ones(3), lam=1e-3, seed=0, mean_nrmse=0.2),
        dict(W=W_nan, c=np.ones(3), lam=1e-2, seed=0, mean_nrmse=0.3, bad=True),
    ]
    data = selection_data(load_results(make_experiment(tmp_path / "e", specs, ds)))
    assert data.hist_bins["n_models"].sum() == 1
    assert any("NaN" in n for n in data.notes)
    assert data.bins["n_bad"].sum() == 1


def test_every_fit_is_counted_when_log_edges_round_below_the_largest_lambda():
    # lambdas of a real quickstart run: 10**log10(max) rounded below max and dropped that fit
    lam = [0.005547, 0.010323, 0.001, 0.005302, 0.03766576841599294, 0.001313]
    df = pd.DataFrame({"lam": lam, "bad": [False, False, False, False, True, False]})
    out = bad_share_by_lambda(df)
    assert out["n_fits"].sum() == 6 and out["n_bad"].sum() == 1
    assert out["n_bad"].iloc[-1] == 1
    edges = lambda_bins(np.array(lam))
    assert edges[0] == min(lam) and edges[-1] == max(lam)
    # explicit edges that miss the largest value by rounding still count it
    out = bad_share_by_lambda(df, bins=np.array([0.001, 0.01, max(lam) * (1 - 1e-15)]))
    assert out["n_fits"].sum() == 6


# --- the default tolerance: Gupta's subset selection with the noise of a lambda mean ------------


def test_subset_constant_known_values():
    from scipy import stats

    assert subset_constant(1) == 0.0
    # two lambdas: keep the best unless m_other < m_best - d sqrt(2) sigma: P = Phi(d)
    assert subset_constant(2) == pytest.approx(stats.norm.ppf(0.95), abs=1e-8)
    assert subset_constant(2, 0.9) == pytest.approx(stats.norm.ppf(0.9), abs=1e-8)
    # more lambdas, a larger margin (the minimum of more noisy means is lower)
    ds = [subset_constant(k) for k in (2, 3, 5, 9, 30)]
    assert all(a < b for a, b in zip(ds, ds[1:]))
    with pytest.raises(ConfigError, match="confidence"):
        subset_constant(3, 1.0)


@pytest.mark.parametrize("k", [3, 7])
def test_subset_constant_keeps_the_best_with_the_stated_probability(k):
    """Monte Carlo (seeded): k equal true means with unit noise; the set
    {j: m_j <= min(m) + d sqrt(2)} contains lambda 0 in 95% of the draws."""
    d = subset_constant(k)
    m = np.random.default_rng(k).standard_normal((400_000, k))
    kept = m[:, 0] <= m.min(axis=1) + d * np.sqrt(2)
    assert kept.mean() == pytest.approx(0.95, abs=0.002)  # binomial sd 0.00034


def test_mean_noise_scatter_and_seed_floor():
    # plateau with a winner's-curse minimum and a breakdown at 1e-1 (two seeds each, +-0.005)
    means = {1e-6: 0.02, 1e-5: 0.00, 1e-4: 0.03, 1e-3: 0.01, 1e-2: 0.04, 1e-1: 0.30}
    rows = []
    for lam, m in means.items():
        rows += [
            (f"{lam}-0", lam, 0, m - 0.005, 1.0, False, 0.3),
            (f"{lam}-1", lam, 1, m + 0.005, 1.0, False, 0.3),
        ]
    df = table(rows)
    # steps .02 .03 .02 .03 .26 -> median .03 (above the seed floor, 1.4826 * .01 / 2 = .0074)
    assert seed_spread(df) == pytest.approx(0.01 / np.sqrt(2))
    assert robust_seed_spread(df) == pytest.approx(np.sqrt(0.01**2 / 2 / stats.chi2.median(1)))
    assert mean_noise(df) == pytest.approx(1.4826 * 0.03 / np.sqrt(2))
    tol = subset_constant(6) * 1.4826 * 0.03  # 0.0994
    assert default_tolerance(df) == pytest.approx(tol)
    rec = recommend(df)
    # limit 0.0994: 1e-6 .. 1e-2 (.04) are candidates, 1e-1 (.30) is not; the old seed-spread
    # tolerance (.0071) kept only the minimum 1e-5
    assert rec.tolerance == pytest.approx(tol)
    assert rec.lam == pytest.approx(1e-2) and rec.row["trial_id"] == "0.01-0"
    assert recommend(df, tolerance=seed_spread(df)).lam == pytest.approx(1e-5)
    # equal lambda means: no scatter, the seed floor remains (seeds +-0.02 at every lambda)
    flat = table(
        [
            (f"{lam}-{s}", lam, s, 0.1 + (0.02 if s else -0.02), 1.0, False, 0.3)
            for lam in (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
            for s in (0, 1)
        ]
    )
    assert mean_noise(flat) == pytest.approx(1.4826 * 0.04 / np.sqrt(2) / np.sqrt(2), rel=1e-4)
    # bad and empty fits are left out of the lambda means: steps .02 .03 .02 .03, median .025
    df.loc[df["lam"] == 1e-1, "bad"] = True
    assert mean_noise(df) == pytest.approx(1.4826 * 0.025 / np.sqrt(2))
    df.loc[df["lam"] == 1e-2, "weight_density"] = 0.0
    # four lambdas left: too few for the grid scatter, the seed floor remains
    assert mean_noise(df) == pytest.approx(1.4826 * 0.01 / 2, rel=1e-4)
    one = table([("x", 1e-3, 0, 0.1, 0.2, False, 0.2)])
    assert mean_noise(one) == 0.0 and default_tolerance(one) == 0.0


def test_robust_seed_spread_ignores_one_freak_fit():
    """One fit with a freak objective (an nRMSE far below 0, as an h statistic can give) must not
    set the spread: the median over lambdas of the seed variances does not see it, the pooled
    spread does."""
    pairs = {1e-5: (0.00, 0.02), 1e-4: (0.01, 0.03), 1e-3: (-0.60, 0.02), 1e-2: (0.05, 0.07)}
    df = table(
        [(f"{lam}-{s}", lam, s, v[s], 1.0, False, 0.3) for lam, v in pairs.items() for s in (0, 1)]
    )
    # variances .0002, .0002, .1922, .0002 -> median .0002
    assert robust_seed_spread(df) == pytest.approx(np.sqrt(0.0002 / stats.chi2.median(1)))
    assert seed_spread(df) > 0.2
    # three seeds per lambda: nu = 2, median(chi2_2) = 2 ln 2
    df3 = table(
        [
            (f"{lam}-{s}", lam, s, 0.1 + 0.01 * s + (lam == 1e-3) * 0.5 * s, 1.0, False, 0.3)
            for lam in (1e-4, 1e-3, 1e-2)
            for s in (0, 1, 2)
        ]
    )
    assert robust_seed_spread(df3) == pytest.approx(np.sqrt(0.0001 / (2 * np.log(2) / 2)))
    assert robust_seed_spread(table([("x", 1e-3, 0, 0.1, 0.2, False, 0.2)])) == 0.0


# --- issue 12.5: failures count, and the tolerance is the evaluation's own noise ---------------


def test_failures_count_in_a_lambdas_score():
    """A lambda's score is over all its fits, a bad one counting 1 (chance); a lambda with more
    than half of its fits bad is never a candidate, however good its survivors."""
    df = table(
        [
            ("a", 1e-3, 0, 0.20, 0.30, False, 0.5),
            ("b", 1e-3, 1, 0.22, 0.32, False, 0.5),
            ("c", 1e-3, 2, 0.21, 0.31, False, 0.5),
            # sparser; its one survivor is the best fit of all, but two of three seeds failed
            ("d", 1e-2, 0, 0.15, 0.25, False, 0.3),
            ("e", 1e-2, 1, 0.9, np.inf, True, 0.3),
            ("f", 1e-2, 2, 0.9, np.inf, True, 0.3),
            # sparser still: one of three failed -> score (0.30 + 0.31 + 1) / 3 = 0.537
            ("g", 1e-1, 0, 0.20, 0.30, False, 0.1),
            ("h", 1e-1, 1, 0.21, 0.31, False, 0.1),
            ("i", 1e-1, 2, 0.9, np.inf, True, 0.1),
        ]
    )
    scores = selection.lambda_scores(df, "max_nrmse")
    assert scores["n_bad"].tolist() == [0, 2, 1]
    assert scores["score"].tolist() == pytest.approx([0.31, (0.25 + 2) / 3, (0.61 + 1) / 3])
    assert scores["mean"].tolist() == pytest.approx([0.31, 0.25, 0.305])
    rec = selection.recommend(df, objective="max_nrmse", tolerance=0.1)
    # the mean over survivors alone would pick 1e-1 (0.305 <= 0.25 + 0.1) or 1e-2 (the best)
    assert rec.lam == 1e-3 and rec.best_row["trial_id"] == "d"
    assert "a bad fit counting 1" in rec.message


def _issue_grid(with_noise: bool):
    """One seed per lambda (the issue's 2,000-neuron fish: 1e-5 ... 3e-2 in half decades): the
    max nRMSE falls, bottoms out at 1e-4 / 3e-4 and rises steeply; the two strongest are bad."""
    lam = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
    mx = [0.90, 0.50, 0.26, 0.25, 0.40, 0.80, np.inf, np.inf]
    df = pd.DataFrame(
        {
            "trial_id": [f"t{i}" for i in range(8)],
            "lam": lam,
            "seed": 0,
            "max_nrmse": mx,
            "mean_nrmse": mx,
            "bad": [False] * 6 + [True] * 2,
            "weight_density": 0.1,
        }
    )
    if with_noise:
        df["max_nrmse_se"] = [0.03, 0.02, 0.02, 0.02, 0.02, 0.03, np.inf, np.inf]
    return df


def test_tolerance_is_the_evaluation_noise_not_the_grid_scatter():
    old = selection.recommend(_issue_grid(False), objective="max_nrmse")
    new = selection.recommend(_issue_grid(True), objective="max_nrmse")
    # without the evaluation's noise: the grid scatter (steps .40 .24 .01 .15 .40, median .24)
    # makes a tolerance far wider than the spread of the good fits, and the rule runs to 3e-3
    scatter = 1.4826 * 0.24 / np.sqrt(2)
    assert old.tolerance == pytest.approx(subset_constant(6) * np.sqrt(2) * scatter)
    assert old.tolerance > 0.7 and old.lam == 3e-3
    # with it: sigma_m = the rms of the best lambda's objective noise (0.02)
    assert selection.mean_noise(_issue_grid(True), "max_nrmse") == pytest.approx(0.02)
    assert new.tolerance == pytest.approx(subset_constant(6) * np.sqrt(2) * 0.02)
    assert new.lam == 3e-4 and new.row["trial_id"] == "t3"


def test_select_model_takes_a_dataframe_not_a_path(tmp_path):
    with pytest.raises(InputError, match="DataFrame"):
        selection.select_model(str(tmp_path))


def test_radar_shows_a_bad_fit_even_when_one_of_its_statistics_is_nan():
    """The radar's "bad" row is a bad fit whenever there is one; a NaN (unassessable) statistic
    must not turn it into "worst (none bad)" while a bad fit exists (the label the report showed
    before)."""
    nan = float("nan")
    done = pd.DataFrame(
        {
            "trial_id": ["good", "bad"],
            "lam": [1e-3, 1e-1],
            "nrmse_v": [0.1, nan],
            "nrmse_h": [0.2, 0.9],
            "nrmse_vh": [0.1, 1.2],
            "nrmse_vv": [0.3, 0.99],
            "nrmse_hh": [0.2, 0.8],
            "max_nrmse": [0.3, math.inf],
            "bad": [False, True],
            "bad_reason": ["", "no_better_than_chance"],
        }
    )
    rec = pd.DataFrame({"role": ["recommended"], "trial_id": ["good"], "lam": [1e-3]}).assign(
        **{c: [0.1] for c in selection.NRMSE_COLUMNS}
    )
    rows = selection._radar_rows(done, rec, "max_nrmse")
    assert rows["role"].tolist() == ["recommended", "bad"]
    assert rows["trial_id"].tolist() == ["good", "bad"]
    assert np.isnan(rows.iloc[1]["nrmse_v"]) and rows.iloc[1]["nrmse_vh"] == pytest.approx(1.2)
