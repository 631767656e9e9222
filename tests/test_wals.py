"""WALS: parity with dense numpy normal equations, monotone loss, sharded == unsharded, recall vs popularity, errors."""

import dataclasses

import numpy as np
import pytest

from elm_jax.data import wals
from elm_jax.sharding import make_mesh

SMALL = wals.WALSConfig(rank=4, l2=0.5, alpha=2.0, iterations=6, block_entries=64)


@pytest.fixture(scope="module")
def small_ratings():
    """40 users x 30 items, ~25% rated, 0.5-5 stars; rows of 2-14 ratings span several length buckets."""
    rng = np.random.default_rng(0)
    users, items = np.nonzero(rng.random((40, 30)) < 0.25)
    return users, items, rng.integers(1, 11, len(users)) / 2, 40, 30


def numpy_als(users, items, values, n_users, n_items, config, iterations):
    """Hu et al.'s normal equations, one dense solve per row, in float64, from `init_factors`."""
    c = np.ones((n_users, n_items))
    c[users, items] = wals.confidences(values, config)
    p = np.zeros((n_users, n_items))
    p[users, items] = 1.0
    x, y = (f.astype(np.float64) for f in wals.init_factors(n_users, n_items, config))
    eye = config.l2 * np.eye(config.rank)
    for _ in range(iterations):
        x = np.stack([np.linalg.solve((y.T * c[u]) @ y + eye, y.T @ (c[u] * p[u])) for u in range(n_users)])
        y = np.stack([np.linalg.solve((x.T * c[:, i]) @ x + eye, x.T @ (c[:, i] * p[:, i])) for i in range(n_items)])
    return x, y, np.sum(c * (p - x @ y.T) ** 2) + config.l2 * (np.sum(x**2) + np.sum(y**2))


def test_matches_numpy_normal_equations_and_loss_decreases(small_ratings):
    losses = []
    record = lambda it, x, y: losses.append(wals.wals_loss(*small_ratings[:3], x, y, SMALL))
    x, y = wals.fit_wals(*small_ratings, SMALL, callback=record)
    assert x.shape == (40, 4) and y.shape == (30, 4) and x.dtype == y.dtype == np.float32
    assert np.all(np.diff(losses) < 0), losses  # each half-step is an exact minimisation
    for iterations in (1, 2):
        want_x, want_y, want_loss = numpy_als(*small_ratings, SMALL, iterations)
        got_x, got_y = wals.fit_wals(*small_ratings, dataclasses.replace(SMALL, iterations=iterations))
        np.testing.assert_allclose(got_x, want_x, atol=1e-4)
        np.testing.assert_allclose(got_y, want_y, atol=1e-4)
        # the O(nnz) loss equals the dense one
        assert wals.wals_loss(*small_ratings[:3], want_x, want_y, SMALL) == pytest.approx(want_loss, rel=1e-12)


def test_cg_solver_approaches_the_exact_solution(small_ratings):
    exact = wals.fit_wals(*small_ratings, dataclasses.replace(SMALL, iterations=10))
    # at rank 4, 4 CG steps solve each row up to rounding; from a warm start they track the exact fit
    cg = wals.fit_wals(*small_ratings, dataclasses.replace(SMALL, iterations=10, solver="cg", cg_steps=4))
    loss = lambda f: wals.wals_loss(*small_ratings[:3], *f, SMALL)
    assert loss(cg) == pytest.approx(loss(exact), rel=1e-4)


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_sharded_equals_unsharded(small_ratings, solver):
    config = dataclasses.replace(SMALL, iterations=3, solver=solver, block_entries=32)  # several blocks per shard
    want = wals.fit_wals(*small_ratings, config)
    for shape in ({"data": 8}, {"data": 2, "fsdp": 2, "tensor": 2}):
        got = wals.fit_wals(*small_ratings, config, mesh=make_mesh(shape))
        np.testing.assert_allclose(got[0], want[0], atol=1e-5)
        np.testing.assert_allclose(got[1], want[1], atol=1e-5)


def planted_ratings(seed=0, n_users=1000, n_items=500, rank=8):
    """Users rate the items of highest noisy utility <u, v> + popularity; counts 10-60, stars from the utility."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((n_users, rank))
    v = rng.standard_normal((n_items, rank))
    popularity = -np.log(np.arange(1, n_items + 1))[rng.permutation(n_items)]  # Zipf: a strong baseline to beat
    utility = 2 * u @ v.T / np.sqrt(rank) + popularity + rng.gumbel(size=(n_users, n_items))
    counts = rng.integers(10, min(61, n_items // 2), n_users)
    ranked = np.argsort(-utility, axis=1)
    users = np.repeat(np.arange(n_users), counts)
    items = np.concatenate([ranked[a, :n] for a, n in enumerate(counts)])
    stars = np.clip(np.round(2 * (3 + utility[users, items] - utility.mean())) / 2, 0.5, 5.0)
    return users, items, stars, n_users, n_items


def test_recall_and_ndcg_beat_popularity_on_planted_factors():
    users, items, stars, n_users, n_items = planted_ratings()
    (tu, ti, ts), (hu, hi, hs) = wals.split_heldout(users, items, stars, fraction=0.2, seed=0)
    train = wals.ratings_csr(tu, ti, ts, n_users, n_items)
    heldout = wals.ratings_csr(hu, hi, hs, n_users, n_items)
    x, y = wals.fit_wals(tu, ti, ts, n_users, n_items, wals.WALSConfig(rank=16, l2=20.0, iterations=8))
    got = wals.recall_ndcg_at_k(x, y, train, heldout, k=20)
    base = wals.recall_ndcg_at_k(np.ones((n_users, 1)), wals.popularity_scores(train)[:, None], train, heldout, k=20)
    assert got["users"] == base["users"] == n_users
    # measured: WALS Recall@20 0.48, NDCG@20 0.44; popularity 0.27 and 0.23
    assert got["recall@20"] > 0.42 and got["recall@20"] > 1.5 * base["recall@20"], (got, base)
    assert got["ndcg@20"] > 0.38 and got["ndcg@20"] > 1.5 * base["ndcg@20"], (got, base)


def test_metrics_perfect_and_split_and_filter():
    users, items, stars, n_users, n_items = planted_ratings(n_users=50, n_items=40)
    (tu, ti, ts), (hu, hi, hs) = wals.split_heldout(users, items, stars, fraction=0.25, seed=1, min_ratings=15)
    train, heldout = (wals.ratings_csr(a, b, c, n_users, n_items) for a, b, c in ((tu, ti, ts), (hu, hi, hs)))
    assert train.multiply(heldout).nnz == 0 and train.nnz + heldout.nnz == len(users)
    counts, held = np.bincount(users, minlength=n_users), np.diff(heldout.indptr)
    np.testing.assert_array_equal(held, np.where(counts >= 15, np.maximum(1, np.round(0.25 * counts)), 0))
    # scores that rank exactly the held-out items first: recall = NDCG = 1
    perfect = wals.recall_ndcg_at_k(heldout.toarray(), np.eye(n_items), train, heldout, k=5)
    assert perfect == {"recall@5": 1.0, "ndcg@5": 1.0, "users": int((counts >= 15).sum())}
    np.testing.assert_array_equal(wals.filter_min_ratings(np.array([0, 1, 1, 2, 2, 2]), 2), [0, 1, 1, 1, 1, 1])


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(items=np.array([0, 1])), "items has 2 entries"),
        (dict(values=np.array([1.0, -1.0, 2.0])), r"values\[1\] = -1"),
        (dict(values=np.array([1.0, 2.0, np.nan])), r"values\[2\] = nan"),
        (dict(values=np.array([1.0, 2.0])), "values has shape"),
        (dict(users=np.array([0, 5, 1])), r"users\[1\] = 5 is out of range for n_users = 3"),
        (dict(items=np.array([0, 1, -1])), r"items\[2\] = -1 is out of range"),
        (dict(users=np.array([0.0, 1.0, 2.0])), "users must be a 1-D integer array"),
        (dict(n_items=0), "n_items must be positive"),
    ],
)
def test_bad_input_names_the_argument(change, message):
    args = dict(users=np.array([0, 1, 2]), items=np.array([0, 1, 1]), values=np.array([1.0, 2.0, 3.0]))
    args.update(n_users=3, n_items=2, config=SMALL)
    args.update(change)
    with pytest.raises(ValueError, match=message):
        wals.fit_wals(**args)


@pytest.mark.parametrize("field, value", [("rank", 0), ("l2", -1.0), ("confidence", "sqrt"), ("solver", "lu")])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"WALSConfig.{field}"):
        wals.WALSConfig(**{field: value})
