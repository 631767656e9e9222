"""Evaluation metrics: hand-computed NDCG/Spearman/cosine, sklearn tie averaging, scipy parity, BC, retrieval, CIs."""

import contextlib
import itertools
import json
import math
import warnings

import numpy as np
import pytest
import scipy.stats

from elm_jax.eval import metrics as m

L2, L3, L5, L6 = math.log2(2), math.log2(3), math.log2(5), math.log2(6)  # discounts of ranks 1, 2, 4, 5


@contextlib.contextmanager
def no_warnings():
    """Fails on any numpy floating-point error or Python warning raised inside the block."""
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        yield


def brute_force_ndcg(scores, relevance, k=None):
    """Mean NDCG over every ordering that breaks the ties in `scores`: what tie averaging must equal."""
    scores, relevance = np.asarray(scores, float), np.asarray(relevance, float)
    k = len(scores) if k is None else k
    discount = [1 / math.log2(i + 2) if i < k else 0.0 for i in range(len(scores))]
    groups = [np.flatnonzero(scores == s) for s in sorted(set(scores), reverse=True)]
    ideal = sum(g * d for g, d in zip(sorted(relevance, reverse=True), discount))
    dcgs = [
        sum(relevance[i] * d for i, d in zip(itertools.chain(*orders), discount))
        for orders in itertools.product(*(itertools.permutations(g) for g in groups))
    ]
    return np.mean(dcgs) / ideal


def test_cosine_rows_unnormalised_and_zero_rows():
    a = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 4.0], [1.0, 0.0], [1.0, 2.0]])
    b = np.array([[1.0, 1.0], [0.0, 0.0], [6.0, 8.0], [2.0, 2.0], [-2.0, -4.0]])
    # zero row -> 0; zero row -> 0; parallel (3,4)/(6,8) -> 1; (1,0).(2,2) / (1 * 2*sqrt2) = 1/sqrt2; antiparallel -> -1
    with no_warnings():
        got = m.cosine_rows(a, b)
    np.testing.assert_allclose(got, [0.0, 0.0, 1.0, 1 / math.sqrt(2), -1.0], atol=1e-12)
    with no_warnings():
        np.testing.assert_array_equal(m.cosine_matrix(np.zeros((2, 3)), np.ones((4, 3))), np.zeros((2, 4)))


def test_semantic_consistency_is_rowwise_cosine():
    rng = np.random.default_rng(0)
    text, given = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    expected = [t @ g / np.linalg.norm(t) / np.linalg.norm(g) for t, g in zip(text, given)]
    np.testing.assert_allclose(m.semantic_consistency(text, given), expected, rtol=1e-12)
    np.testing.assert_allclose(m.semantic_consistency(given * 7.0, given), np.ones(6), rtol=1e-12)


def test_ndcg_hand_computed():
    scores = [0.9, 0.8, 0.7, 0.6]  # already in rank order: items 0, 1, 2, 3
    relevance = [2, 3, 0, 1]
    # DCG = 2/log2(2) + 3/log2(3) + 0/log2(4) + 1/log2(5) = 2 + 1.89279 + 0 + 0.43068 = 4.32347
    # IDCG (order 3, 2, 1, 0) = 3 + 2/log2(3) + 1/2 + 0 = 4.76186  ->  NDCG = 0.90794
    expected = (2 / L2 + 3 / L3 + 1 / L5) / (3 / L2 + 2 / L3 + 1 / 2)
    assert m.ndcg(scores, relevance) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.90794, abs=1e-5)
    # exponential gains 2^rel - 1 = 3, 7, 0, 1: DCG = 3 + 7/log2(3) + 1/log2(5), IDCG = 7 + 3/log2(3) + 1/2
    expected_exp = (3 + 7 / L3 + 1 / L5) / (7 + 3 / L3 + 1 / 2)
    assert m.ndcg(scores, relevance, gain="exponential") == pytest.approx(expected_exp, rel=1e-12)
    # k=2: DCG@2 = 2 + 3/log2(3), IDCG@2 = 3 + 2/log2(3)
    assert m.ndcg(scores, relevance, k=2) == pytest.approx((2 + 3 / L3) / (3 + 2 / L3), rel=1e-12)
    assert m.ndcg(scores, relevance, k=10) == m.ndcg(scores, relevance)


def test_ndcg_sklearn_docstring_example():
    # sklearn.metrics.ndcg_score docstring: relevance [10, 0, 0, 1, 5], scores [.1, .2, .3, 4, 70] -> 0.6957
    # order by score: rel 5, 1, 0, 0, 10 -> DCG = 5 + 1/log2(3) + 10/log2(6); IDCG = 10 + 5/log2(3) + 1/2
    relevance = [10, 0, 0, 1, 5]
    expected = (5 + 1 / L3 + 10 / L6) / (10 + 5 / L3 + 1 / 2)
    assert m.ndcg([0.1, 0.2, 0.3, 4, 70], relevance) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.6956940443813076, rel=1e-12)
    # same docstring, ties: scores [1, 0, 0, 0, 1], k=1 -> the top slot holds the mean of rel 10 and 5: 7.5 / 10
    assert m.ndcg([1, 0, 0, 0, 1], relevance, k=1) == pytest.approx(0.75, rel=1e-12)


def test_ndcg_ties_hand_computed_and_enumerated():
    scores = [1.0, 1.0, 0.5, 0.5, 0.2]
    relevance = [3, 0, 1, 2, 0]
    # tied ranks 1-2 share discount (1 + 1/log2 3)/2 and hold gain 3 + 0; ranks 3-4 share (1/2 + 1/log2 5)/2 and
    # hold 1 + 2; rank 5 holds 0. IDCG = 3 + 2/log2(3) + 1/2.
    dcg = 3 * (1 + 1 / L3) / 2 + 3 * (1 / 2 + 1 / L5) / 2
    assert m.ndcg(scores, relevance) == pytest.approx(dcg / (3 + 2 / L3 + 1 / 2), rel=1e-12)
    assert m.ndcg(scores, relevance) == pytest.approx(brute_force_ndcg(scores, relevance), rel=1e-12)
    # k=3 cuts the second tie group: it shares (1/2 + 0)/2 per item
    dcg3 = 3 * (1 + 1 / L3) / 2 + 3 * (1 / 2) / 2
    assert m.ndcg(scores, relevance, k=3) == pytest.approx(dcg3 / (3 + 2 / L3 + 1 / 2), rel=1e-12)
    assert m.ndcg(scores, relevance, k=3) == pytest.approx(brute_force_ndcg(scores, relevance, k=3), rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_ndcg_rows_match_tie_enumeration(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 3, size=(8, 6)).astype(float)  # many ties
    relevance = rng.integers(0, 6, size=(8, 6)) / 2.0  # half-star ratings, 0 = unrated
    relevance[:, 0] = 4.0  # at least one relevant item per row
    for k in (None, 1, 3):
        expected = [brute_force_ndcg(s, r, k=k) for s, r in zip(scores, relevance)]
        np.testing.assert_allclose(m.ndcg_rows(scores, relevance, k=k), expected, rtol=1e-12)


def test_ndcg_perfect_and_reversed():
    relevance = [3, 2, 1, 0]
    assert m.ndcg([4, 3, 2, 1], relevance) == pytest.approx(1.0, rel=1e-12)
    # reversed: DCG = 0 + 1/log2(3) + 2/log2(4) + 3/log2(5) = 2.92296; IDCG = 3 + 2/log2(3) + 1/2 = 4.76186 -> 0.61383
    reversed_ndcg = m.ndcg([1, 2, 3, 4], relevance)
    assert reversed_ndcg == pytest.approx((1 / L3 + 2 / 2 + 3 / L5) / (3 + 2 / L3 + 1 / 2), rel=1e-12)
    assert reversed_ndcg == pytest.approx(0.61383, abs=1e-5)
    all_orders = [m.ndcg(p, relevance) for p in itertools.permutations([1, 2, 3, 4])]
    assert min(all_orders) == pytest.approx(reversed_ndcg, rel=1e-12)  # reversed order is the minimum
    assert m.ndcg([7, 7, 7, 7], [1, 1, 1, 1]) == pytest.approx(1.0, rel=1e-12)  # all tied, all equal gains


def test_ndcg_undefined_and_invalid():
    with no_warnings():
        assert math.isnan(m.ndcg([0.3, 0.2, 0.1], [0, 0, 0]))  # no relevant item: NaN (sklearn says 0)
    with pytest.raises(ValueError, match="non-negative"):
        m.ndcg([1, 2], [1, -1])
    with pytest.raises(ValueError, match="k must be"):
        m.ndcg([1, 2], [1, 0], k=0)
    with pytest.raises(ValueError, match="gain"):
        m.ndcg([1, 2], [1, 0], gain="log")


def test_spearman_hand_computed():
    # ranks x = [1, 2.5, 2.5, 4], y = [1, 3, 2, 4]; minus mean 2.5: dx = [-1.5, 0, 0, 1.5], dy = [-1.5, .5, -.5, 1.5]
    # sum dx dy = 4.5, sum dx^2 = 4.5, sum dy^2 = 5  ->  rho = 4.5 / sqrt(4.5 * 5) = 0.948683
    assert m.spearman([1, 2, 2, 3], [10, 30, 20, 40]) == pytest.approx(4.5 / math.sqrt(22.5), rel=1e-12)
    assert m.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0, rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_spearman_matches_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, size=(6, 30)).astype(float)
    y = rng.integers(0, 3, size=(6, 30)).astype(float)
    expected = [scipy.stats.spearmanr(a, b).statistic for a, b in zip(x, y)]
    np.testing.assert_allclose(m.spearman_rows(x, y), expected, rtol=1e-12, atol=1e-14)
    assert m.spearman(x[0], y[0]) == pytest.approx(expected[0], rel=1e-12, abs=1e-14)
    mask = rng.random((6, 30)) < 0.6
    masked = [scipy.stats.spearmanr(a[k], b[k]).statistic for a, b, k in zip(x, y, mask)]
    np.testing.assert_allclose(m.spearman_rows(x, y, mask), masked, rtol=1e-12, atol=1e-14)


def test_spearman_constant_is_nan_without_warnings():
    with no_warnings():
        assert math.isnan(m.spearman([2, 2, 2, 2], [1, 2, 3, 4]))
        assert math.isnan(m.spearman([1, 2, 3, 4], [5, 5, 5, 5]))
        # constant only among the masked entries, and a row with a single masked entry
        rows = m.spearman_rows([[1, 1, 2], [1, 2, 3]], [[1, 2, 3], [1, 2, 3]], [[1, 1, 0], [1, 0, 0]])
    assert np.isnan(rows).all()


def test_user_bc_taste_vector_gives_ndcg_one():
    rng = np.random.default_rng(0)
    items = rng.normal(size=(8, 5))
    taste = rng.normal(size=(2, 5))
    sims = m.cosine_matrix(taste, items)
    ratings = np.argsort(np.argsort(sims, axis=1), axis=1) / 2.0  # monotone in similarity; the least similar is 0
    ratings[1] = ratings[1, ::-1]  # user 1 likes what its profile is least similar to
    bc = m.user_behavioral_consistency(taste * 3.0, items, ratings)
    assert bc[0] == pytest.approx(1.0, rel=1e-12)
    assert bc[1] < 1.0
    # a per-user item set (N, M, D) gives the same as the shared set it repeats
    np.testing.assert_allclose(m.user_behavioral_consistency(taste, np.stack([items, items]), ratings), bc, rtol=1e-12)
    with no_warnings():
        assert math.isnan(m.user_behavioral_consistency(taste[:1], items, np.zeros((1, 8)))[0])  # rated none


def test_movie_bc_taste_vector_gives_spearman_one():
    rng = np.random.default_rng(1)
    users = rng.normal(size=(10, 6))
    text = rng.normal(size=(1, 6))
    sims = m.cosine_matrix(text, users)[0]
    ratings = 1.0 + np.argsort(np.argsort(sims)) / 2.0  # 1..5.5 stars, monotone in similarity
    assert m.movie_behavioral_consistency(text, users, ratings[None])[0] == pytest.approx(1.0, rel=1e-12)
    rated = np.arange(10) % 3 != 0
    with_zeros = np.where(rated, ratings, 0.0)  # unrated users imputed 0 break the monotone order ...
    unmasked = m.movie_behavioral_consistency(text, users, with_zeros[None])[0]
    assert unmasked == pytest.approx(scipy.stats.spearmanr(sims, with_zeros).statistic, rel=1e-12)
    assert unmasked < 1.0
    # ... while restricting to the raters recovers the perfect ranking
    masked = m.movie_behavioral_consistency(text, users, with_zeros[None], rated_mask=rated[None])[0]
    assert masked == pytest.approx(1.0, rel=1e-12)


def test_retrieval_ranks_constructed():
    np.testing.assert_array_equal(m.retrieval_ranks(np.eye(5) * 2.0, np.eye(5), np.arange(5)), np.ones(5))
    # entities at angles 0, pi/6, ..., 5pi/6: cosine to the text (1, 0) falls with the angle, so entity j has rank j + 1
    angles = np.arange(6) * np.pi / 6
    entities = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    text = np.tile([1.0, 0.0], (6, 1))
    np.testing.assert_array_equal(m.retrieval_ranks(text, entities, np.arange(6)), np.arange(1, 7))
    np.testing.assert_array_equal(m.retrieval_ranks(text, entities, np.arange(6)[::-1]), np.arange(6, 0, -1))


def test_retrieval_ranks_ties_average():
    entities = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    with no_warnings():
        ranks = m.retrieval_ranks(np.array([[1.0, 0.0], [0.0, 0.0]]), entities, np.array([1, 2]))
    # duplicate top entities share positions 1-2 -> 1.5; a zero text ties all 4 -> (4 + 1) / 2 = 2.5 (chance level)
    np.testing.assert_array_equal(ranks, [1.5, 2.5])
    with pytest.raises(ValueError, match="out of range"):
        m.retrieval_ranks(np.ones((1, 2)), entities, np.array([4]))


def test_retrieval_summary():
    summary = m.retrieval_summary([1.0, 1.5, 3.0, 12.0], ks=(1, 10), n_resamples=200)
    assert summary["recall@1"]["mean"] == pytest.approx(0.25)  # only rank 1 counts; the tie at 1.5 does not
    assert summary["recall@10"]["mean"] == pytest.approx(0.75)
    assert summary["mrr"]["mean"] == pytest.approx((1 + 1 / 1.5 + 1 / 3 + 1 / 12) / 4)
    assert summary["mean_rank"]["mean"] == pytest.approx(17.5 / 4)
    assert summary["mean_rank"]["ci_low"] <= 17.5 / 4 <= summary["mean_rank"]["ci_high"]


def test_bootstrap_ci_contains_mean_and_shrinks():
    rng = np.random.default_rng(0)
    small = m.bootstrap_ci(rng.normal(size=50))
    large = m.bootstrap_ci(rng.normal(size=10_000))  # several resample blocks
    for est in (small, large):
        assert est.low <= est.value <= est.high
    assert (large.high - large.low) < (small.high - small.low) / 5  # width ~ 1/sqrt(n): ratio ~ 14
    assert large.n == 10_000 and large.n_dropped == 0


def test_bootstrap_ci_deterministic_and_nan():
    values = np.random.default_rng(1).normal(size=40)
    assert m.bootstrap_ci(values, seed=3) == m.bootstrap_ci(values, seed=3)
    assert m.bootstrap_ci(values, seed=3) != m.bootstrap_ci(values, seed=4)
    with_nan = np.concatenate([values, [np.nan] * 3])
    est, clean = m.bootstrap_ci(with_nan, seed=3), m.bootstrap_ci(values, seed=3)
    assert (est.n, est.n_dropped) == (40, 3)
    assert (est.value, est.low, est.high) == (clean.value, clean.low, clean.high)  # NaNs dropped, nothing else changes
    median = m.bootstrap_ci(values, statistic=np.median)
    assert median.value == pytest.approx(np.median(values)) and median.low <= median.value <= median.high
    with no_warnings():
        empty = m.bootstrap_ci([np.nan, np.nan])
    assert math.isnan(empty.value) and (empty.n, empty.n_dropped) == (0, 2)


def test_summarise_json_ready():
    out = m.summarise({"sc": [0.9, 0.8, np.nan], "empty": [np.nan]}, n_resamples=100)
    assert set(out["sc"]) == {"mean", "ci_low", "ci_high", "n", "n_dropped"}
    assert out["sc"]["mean"] == pytest.approx(0.85) and (out["sc"]["n"], out["sc"]["n_dropped"]) == (2, 1)
    assert out["empty"] == {"mean": None, "ci_low": None, "ci_high": None, "n": 0, "n_dropped": 1}
    json.dumps(out, allow_nan=False)


@pytest.mark.parametrize("n", [2, 3, 7, 50])
def test_shuffled_control_is_deterministic_derangement(n):
    vectors = np.random.default_rng(n).normal(size=(n, 4))
    for seed in range(20):
        perm = m.shuffled_control(vectors, seed)
        np.testing.assert_array_equal(np.sort(perm), np.arange(n))
        assert (perm != np.arange(n)).all()
        np.testing.assert_array_equal(perm, m.shuffled_control(vectors, seed))
    if n > 3:
        assert len({tuple(m.shuffled_control(vectors, s)) for s in range(20)}) > 1


def test_shuffled_control_never_pairs_identical_rows():
    ids = np.array([0, 0, 1, 1, 2, 2, 3, 0, 1])  # the same entity repeated across tasks
    vectors = np.stack([ids, 2 * ids], axis=1).astype(float)  # rows sort like the ids, so groups get the same labels
    for seed in range(50):
        perm = m.shuffled_control(vectors, seed)
        assert (ids[perm] != ids).all()
        np.testing.assert_array_equal(perm, m.shuffled_control(ids, seed))  # 1-D ids give the same permutation
    with pytest.raises(ValueError):
        m.shuffled_control(np.array([5, 5, 5, 1]), 0)  # one entity is more than half the rows
    with pytest.raises(ValueError):
        m.shuffled_control(np.zeros((1, 3)), 0)
