"""Behavioral embeddings: weighted alternating least squares on implicit feedback (Hu, Koren & Volinsky, 2008).

The paper's behavioral user and movie vectors are trained "based solely on user ratings" by WALS matrix
factorisation on movies with at least 5 ratings (`filter_min_ratings`), and a user's predicted affinity for a
movie is <w_u, w_m>. Every rating is an observed preference p_ui = 1 with confidence c_ui > 1; everything
unrated is p_ui = 0 with confidence 1. ALS minimises

    sum_{u,i} c_ui (p_ui - x_u . y_i)^2 + l2 (sum_u |x_u|^2 + sum_i |y_i|^2)

by solving, for each user, (Y^T Y + Y^T (C_u - I) Y + l2 I) x_u = Y^T C_u p(u), then the same for items. Y^T Y is
shared; the correction only touches the user's rated items, so a half-step costs O(nnz rank^2 + rows rank^3).

Layout: the rows of one side are grouped by their number of ratings into padded buckets (lengths 8, 12, 16, 24,
32, ... so padding stays under ~1/3; ~20% on ML-25M-shaped data), each cut into blocks of at most `block_entries`
padded ratings. Shapes are static, so each half-step compiles once; the blocks run under `lax.map`, so the working
memory is one block (about 3 * block_entries * rank floats, 6 MB by default: small blocks stay in cache, which
made them ~1.7x faster than 128k-entry ones) whatever the data size. With a mesh the blocks are split over its
batch axes: data parallel over rows, factors replicated. On a multi-core CPU a mesh over several XLA:CPU devices
(`jax_num_cpu_devices`) is also the fastest way to use the cores (benchmarks/wals.py).

Defaults, not stated in the paper: rank 64; c = 1 + alpha r with alpha = 1 on 0.5-5 star ratings (a rated movie
counts 1.5-6x an unrated one); l2 = 10; 15 iterations; exact Cholesky solves. On the benchmark's synthetic
ML-25M-sized data held-out Recall@20 still rose from l2 = 10 to 300, but that data has only 32 latent tastes;
10 is a moderate choice for richer real data: tune it on held-out recall. The `cg` solver runs `cg_steps`
conjugate-gradient steps per row from the previous factors instead (Takacs et al., 2011; `implicit`'s default):
O(nnz rank) per step instead of O(nnz rank^2), at the price of inexact half-steps.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from elm_jax.sharding import batch_divisor, batch_sharding

_HIGHEST = lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class WALSConfig:
    rank: int = 64
    l2: float = 10.0  # lambda, on both sides, unscaled (as in Hu et al. and `implicit`)
    confidence: str = "linear"  # "linear": c = 1 + alpha r; "log": c = 1 + alpha log(1 + r / eps)
    alpha: float = 1.0
    eps: float = 1.0  # only for "log"
    iterations: int = 15
    seed: int = 0
    init_scale: float = 0.01  # std of the normal initial factors
    dtype: str = "float32"  # "float64" needs jax_enable_x64
    solver: str = "cholesky"  # exact per-row solves; "cg": `cg_steps` warm-started conjugate-gradient steps
    cg_steps: int = 3
    block_entries: int = 8192  # padded ratings per solve block: bounds the working memory

    def __post_init__(self):
        checks = {
            "rank": self.rank >= 1,
            "l2": self.l2 >= 0,
            "confidence": self.confidence in ("linear", "log"),
            "alpha": self.alpha >= 0,
            "eps": self.eps > 0,
            "iterations": self.iterations >= 0,
            "init_scale": self.init_scale > 0,
            "dtype": self.dtype in ("float32", "float64"),
            "solver": self.solver in ("cholesky", "cg"),
            "cg_steps": self.cg_steps >= 1,
            "block_entries": self.block_entries >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"WALSConfig.{name} = {getattr(self, name)!r} is invalid")
        if self.dtype == "float64" and not jax.config.jax_enable_x64:
            raise ValueError("WALSConfig.dtype = 'float64' needs jax.config.update('jax_enable_x64', True)")


# ------------------------------------------------------------------------------------------ inputs
def _check_ratings(
    users: np.ndarray, items: np.ndarray, values: np.ndarray, n_users: int, n_items: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validates (user, item, value) triplets; every error names the offending argument."""
    out = []
    for name, idx, n in (("users", users, n_users), ("items", items, n_items)):
        idx = np.asarray(idx)
        if idx.ndim != 1 or not (np.issubdtype(idx.dtype, np.integer) or idx.size == 0):
            raise ValueError(f"{name} must be a 1-D integer array, got dtype {idx.dtype} and shape {idx.shape}")
        if int(n) < 1:
            raise ValueError(f"n_{name} must be positive, got {n}")
        bad = np.flatnonzero((idx < 0) | (idx >= n))
        if bad.size:
            raise ValueError(f"{name}[{bad[0]}] = {idx[bad[0]]} is out of range for n_{name} = {n}")
        out.append(idx)
    if len(out[1]) != len(out[0]):
        raise ValueError(f"items has {len(out[1])} entries but users has {len(out[0])}")
    values = np.asarray(values)
    if not (np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)):
        raise ValueError(f"values must be real numbers, got dtype {values.dtype}")
    if values.shape != out[0].shape:
        raise ValueError(f"values has shape {values.shape} but users has {out[0].shape}")
    bad = np.flatnonzero(~(values >= 0) | ~np.isfinite(values))
    if bad.size:
        raise ValueError(f"values must be finite and non-negative; values[{bad[0]}] = {values[bad[0]]}")
    return out[0], out[1], values


def ratings_csr(users: np.ndarray, items: np.ndarray, values: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """(n_users, n_items) float32 CSR of the ratings; a repeated (user, item) pair is summed into one rating."""
    users, items, values = _check_ratings(users, items, values, n_users, n_items)
    m = sp.csr_matrix((values.astype(np.float32, copy=False), (users, items)), shape=(n_users, n_items))
    m.sum_duplicates()
    return m


def filter_min_ratings(items: np.ndarray, min_count: int = 5) -> np.ndarray:
    """Mask of the ratings whose item has at least `min_count` ratings: the paper fits WALS on such movies only.

    Apply it to the triplets before `fit_wals`; the dropped items keep their indices and get zero factors, so the
    caller should treat them as having no behavioral embedding.
    """
    items = np.asarray(items)
    if items.ndim != 1 or not (np.issubdtype(items.dtype, np.integer) or items.size == 0):
        raise ValueError(f"items must be a 1-D integer array, got dtype {items.dtype} and shape {items.shape}")
    if items.size and items.min() < 0:
        raise ValueError(f"items must be non-negative, found {items.min()}")
    counts = np.bincount(items.astype(np.int64)) if items.size else np.zeros(0, np.int64)
    return counts[items] >= min_count


def split_heldout(
    users: np.ndarray, items: np.ndarray, values: np.ndarray, fraction: float = 0.2, seed: int = 0, min_ratings: int = 5
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(train, heldout) triplets: a random `fraction` (at least one) of each user's ratings, for users with at least
    `min_ratings` ratings, is held out; the other users stay wholly in train (they still shape the item factors)."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    n = int(np.max(users)) + 1 if len(users) else 1
    m = int(np.max(items)) + 1 if len(items) else 1
    users, items, values = _check_ratings(users, items, values, n, m)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(users)), users))  # each user's ratings, in random order
    counts = np.bincount(users, minlength=n)
    starts = np.cumsum(counts) - counts
    rank_in_user = np.empty(len(users), np.int64)
    rank_in_user[order] = np.arange(len(users)) - starts[users[order]]
    n_hold = np.where(counts >= min_ratings, np.maximum(1, np.round(fraction * counts)), 0)
    hold = rank_in_user < n_hold[users]
    return (users[~hold], items[~hold], values[~hold]), (users[hold], items[hold], values[hold])


def confidences(values: np.ndarray, config: WALSConfig) -> np.ndarray:
    """c_ui from r_ui: linear 1 + alpha r, or 1 + alpha log(1 + r / eps) (Hu et al., eqs. 1 and 6)."""
    values = np.asarray(values, np.float64)
    if config.confidence == "linear":
        return 1.0 + config.alpha * values
    return 1.0 + config.alpha * np.log1p(values / config.eps)


def init_factors(n_users: int, n_items: int, config: WALSConfig) -> tuple[np.ndarray, np.ndarray]:
    """The initial (user, item) factors of `fit_wals`: normal with std `init_scale`, from `seed`."""
    rng = np.random.default_rng(config.seed)
    x = rng.standard_normal((n_users, config.rank), np.float32) * config.init_scale
    y = rng.standard_normal((n_items, config.rank), np.float32) * config.init_scale
    return x.astype(config.dtype), y.astype(config.dtype)


# ------------------------------------------------------------------------------------------ layout
def _length_grid(longest: int) -> np.ndarray:
    """Padded row lengths 8, 12, 16, 24, 32, 48, ...: a handful of shapes, at most a third of padding."""
    grid, base = [], 8
    while not grid or grid[-1] < longest:
        grid += [base, base * 3 // 2]
        base *= 2
    return np.asarray(grid, np.int64)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Bucket:
    """Rows of one padded length L, as (shards, blocks, rows per block[, L]); row id n_rows / confidence 0 = padding."""

    rows: np.ndarray
    cols: np.ndarray
    conf: np.ndarray


def _deal(a: np.ndarray, shards: int, per_block: int) -> np.ndarray:
    """(shards, blocks, per_block, ...) with flat row j on shard j % shards."""
    a = np.moveaxis(a.reshape(-1, shards, *a.shape[1:]), 1, 0)
    return a.reshape(shards, -1, per_block, *a.shape[2:])


def _layout(m: sp.csr_matrix, shards: int, block_entries: int, rank: int, dtype: str) -> Iterator[_Bucket]:
    """Buckets of the non-empty rows of `m` (values = confidences); a bucket's padding rows come last, so dealing
    its rows round-robin spreads them over all shards."""
    lengths = np.diff(m.indptr)
    grid = _length_grid(max(int(lengths.max(initial=0)), 1))
    padded = grid[np.searchsorted(grid, lengths)]
    for length in np.unique(padded[lengths > 0]):
        rows = np.flatnonzero((padded == length) & (lengths > 0))
        per_block = max(1, min(block_entries // length, block_entries // rank, -(-len(rows) // shards)))
        blocks = -(-len(rows) // (shards * per_block))
        total = shards * blocks * per_block
        row_ids = np.full(total, m.shape[0], np.int32)
        row_ids[: len(rows)] = rows
        lens = lengths[rows]
        src = np.repeat(m.indptr[rows] - np.cumsum(lens) + lens, lens) + np.arange(lens.sum())
        mask = np.zeros((total, length), bool)
        mask[: len(rows)] = np.arange(length) < lens[:, None]
        cols = np.zeros((total, length), np.int32)
        conf = np.zeros((total, length), dtype)
        cols[mask], conf[mask] = m.indices[src], m.data[src]
        yield _Bucket(*(_deal(a, shards, per_block) for a in (row_ids, cols, conf)))


# ------------------------------------------------------------------------------------------ solves
def _cholesky_solve(args: tuple[jax.Array, jax.Array]) -> jax.Array:
    """One SPD solve. Deliberately unbatched: jaxlib's batched CPU LAPACK kernels split the batch over XLA's thread
    pool and block a pool thread waiting for it, which deadlocks once two run at once (buckets, devices) on a small
    pool; one matrix per call runs inline, and costs the same ~10 us per 64x64 solve."""
    a, b = args
    return jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(a), True), b)


def _solve_blocks(gram: jax.Array, other: jax.Array, current: jax.Array, rows, cols, conf, config: WALSConfig):
    """New factors (blocks, B, rank) for one shard's blocks of one bucket, given the other side's factors."""
    k = other.shape[1]

    def block(args):
        row, col, c = args
        y = other[col]  # (B, L, k)
        w = jnp.where(c > 0, c - 1, 0)  # Y^T (C_u - I) Y weights; 0 on padding
        rhs = jnp.einsum("blk,bl->bk", y, c, precision=_HIGHEST)  # Y^T C_u p(u)
        if config.solver == "cholesky":
            a = (
                gram
                + config.l2 * jnp.eye(k, dtype=gram.dtype)
                + jnp.einsum("blk,blm->bkm", y * w[..., None], y, precision=_HIGHEST)
            )
            return lax.map(_cholesky_solve, (a, rhs))

        def matvec(p):
            yp = jnp.einsum("blk,bk->bl", y, p, precision=_HIGHEST)
            return p @ gram + config.l2 * p + jnp.einsum("blk,bl->bk", y, w * yp, precision=_HIGHEST)

        def step(_, state):
            x, r, p, rs = state
            ap = matvec(p)
            step_size = rs / jnp.maximum(jnp.sum(p * ap, axis=1, keepdims=True), jnp.finfo(p.dtype).tiny)
            x, r = x + step_size * p, r - step_size * ap
            rs_new = jnp.sum(r * r, axis=1, keepdims=True)
            return x, r, r + rs_new / jnp.maximum(rs, jnp.finfo(p.dtype).tiny) * p, rs_new

        x = current[jnp.minimum(row, current.shape[0] - 1)]
        r = rhs - matvec(x)
        return lax.fori_loop(0, config.cg_steps, step, (x, r, r, jnp.sum(r * r, axis=1, keepdims=True)))[0]

    return lax.map(block, (rows, cols, conf))


@functools.cache
def _half_step(n_rows: int, config: WALSConfig, mesh: Mesh | None) -> Callable:
    """Jitted: (other side's factors, this side's factors, buckets) -> this side's new factors."""
    lead = None if mesh is None else batch_sharding(mesh, 1).spec[0]

    def solve_bucket(gram, other, current, rows, cols, conf):
        out = _solve_blocks(gram, other, current, rows[0], cols[0], conf[0], config)
        return out[None]

    if mesh is not None:
        solve_bucket = jax.shard_map(
            solve_bucket, mesh=mesh, in_specs=(P(), P(), P(), P(lead), P(lead), P(lead)), out_specs=P(lead)
        )

    def run(other, current, buckets):
        gram = jnp.matmul(other.T, other, precision=_HIGHEST)
        new = jnp.zeros((n_rows, other.shape[1]), other.dtype)
        for b in buckets:
            x = solve_bucket(gram, other, current, b.rows, b.cols, b.conf)
            new = new.at[b.rows.reshape(-1)].set(x.reshape(-1, x.shape[-1]), mode="drop")
        return new

    replicated = None if mesh is None else NamedSharding(mesh, P())
    return jax.jit(run, out_shardings=replicated)


def fit_wals(
    users: np.ndarray,
    items: np.ndarray,
    values: np.ndarray,
    n_users: int,
    n_items: int,
    config: WALSConfig = WALSConfig(),
    mesh: Mesh | None = None,
    callback: Callable[[int, jax.Array, jax.Array], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(user factors (n_users, rank), item factors (n_items, rank)) fitted to the ratings by implicit-feedback ALS.

    `values` are ratings r_ui >= 0 (repeated pairs are summed); rows without ratings get zero factors.
    `callback(iteration, user_factors, item_factors)` runs after each iteration (for losses, timings).
    """
    m = ratings_csr(users, items, values, n_users, n_items)
    m.data = confidences(m.data, config).astype(config.dtype)
    shards = 1 if mesh is None else batch_divisor(mesh)
    put = lambda a: jax.device_put(a, None if mesh is None else batch_sharding(mesh, a.ndim))
    layouts = [  # each bucket goes to the devices as soon as it is built: one host copy at a time
        [jax.tree.map(put, b) for b in _layout(a, shards, config.block_entries, config.rank, config.dtype)]
        for a in (m, m.T.tocsr())
    ]
    replicated = None if mesh is None else NamedSharding(mesh, P())
    x, y = (jax.device_put(f, replicated) for f in init_factors(n_users, n_items, config))
    steps = [_half_step(n_users, config, mesh), _half_step(n_items, config, mesh)]
    for iteration in range(config.iterations):
        x = steps[0](y, x, layouts[0])
        y = steps[1](x, y, layouts[1])
        if callback is not None:
            callback(iteration, x, y)
    return np.asarray(x), np.asarray(y)


def wals_loss(
    users: np.ndarray,
    items: np.ndarray,
    values: np.ndarray,
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    config: WALSConfig,
) -> float:
    """The objective ALS minimises (module docstring), over all n_users x n_items pairs in O(nnz rank + rank^3)."""
    x, y = np.asarray(user_factors, np.float64), np.asarray(item_factors, np.float64)
    m = ratings_csr(users, items, values, len(x), len(y)).tocoo()
    c = confidences(m.data, config)
    all_pairs = np.sum((x.T @ x) * (y.T @ y))  # sum over all pairs of s^2; the rated ones are corrected below
    rated = 0.0
    for start in range(0, m.nnz, 1 << 20):
        sl = slice(start, start + (1 << 20))
        s = np.einsum("nk,nk->n", x[m.row[sl]], y[m.col[sl]])
        rated += np.sum(c[sl] * (1 - s) ** 2 - s**2)
    return float(all_pairs + rated + config.l2 * (np.sum(x * x) + np.sum(y * y)))


# ------------------------------------------------------------------------------------------ evaluation
def popularity_scores(train: sp.csr_matrix) -> np.ndarray:
    """(n_items,) number of training users per item: the popularity baseline, usable as rank-1 factors
    `recall_ndcg_at_k(np.ones((n_users, 1)), popularity_scores(train)[:, None], train, heldout)`."""
    return np.asarray(sp.csr_matrix(train).getnnz(axis=0), np.float32)


def recall_ndcg_at_k(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    train: sp.csr_matrix,
    heldout: sp.csr_matrix,
    k: int = 20,
    users: np.ndarray | None = None,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Mean Recall@k and NDCG@k over users with held-out items, ranking all items by <x_u, y_i> with the user's
    training items excluded. Recall@k = hits / min(k, #held-out), the normalisation of Liang et al. (2018) that
    makes 1.0 reachable; NDCG@k uses binary relevance. `users` restricts (subsamples) the evaluated users."""
    x, y = np.asarray(user_factors, np.float32), np.asarray(item_factors, np.float32)
    train, heldout = sp.csr_matrix(train), sp.csr_matrix(heldout)
    if train.shape != heldout.shape or train.shape != (len(x), len(y)):
        raise ValueError(
            f"train {train.shape} and heldout {heldout.shape} must both be (users, items) = {len(x), len(y)}"
        )
    if not 1 <= k <= len(y):
        raise ValueError(f"k must be in [1, n_items = {len(y)}], got {k}")
    n_held = np.diff(heldout.indptr)
    candidates = np.flatnonzero(n_held > 0)
    if users is not None:
        candidates = np.intersect1d(candidates, np.asarray(users))
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discounts)
    recall, ndcg = [], []
    for start in range(0, len(candidates), batch_size):
        batch = candidates[start : start + batch_size]
        scores = x[batch] @ y.T
        seen = train[batch].tocoo()
        scores[seen.row, seen.col] = -np.inf
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1)
        held = heldout[batch]
        keys = np.repeat(np.arange(len(batch)), np.diff(held.indptr)) * len(y) + held.indices
        hits = np.isin(np.arange(len(batch))[:, None] * len(y) + top, keys)
        best = np.minimum(k, n_held[batch])
        recall.append(hits.sum(axis=1) / best)
        ndcg.append((hits * discounts).sum(axis=1) / ideal[best - 1])
    mean = lambda parts: float(np.mean(np.concatenate(parts))) if parts else float("nan")  # no users: undefined
    return {f"recall@{k}": mean(recall), f"ndcg@{k}": mean(ndcg), "users": len(candidates)}
