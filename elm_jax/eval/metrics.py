"""Consistency, retrieval and bootstrap metrics for ELM generations (paper §3.2 and App. B), in vectorised numpy.

Each per-example metric returns one value per row, so `summarise` can put a bootstrap CI on every reported number.
An undefined value is NaN rather than an invented number: an NDCG with no relevant item, or a Spearman correlation with
a constant side. `bootstrap_ci` drops NaNs and reports how many it dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

Gain = Literal["linear", "exponential"]

# Bounds the temporaries of the chunked loops (retrieval scores, bootstrap resamples) to ~32 MB of float64.
_BLOCK_ELEMENTS = 1 << 22


def _as_float(x: ArrayLike, name: str, ndim: int | tuple[int, ...]) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim not in np.atleast_1d(ndim):
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} must be finite")
    return x


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Unit-normalises the last axis; a zero row stays zero, so its cosine with anything is 0 (not NaN)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def cosine_rows(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """Row-wise cosine similarity (N,) of two (N, D) arrays; inputs need not be normalised, a zero row gives 0."""
    a, b = _as_float(a, "a", 2), _as_float(b, "b", 2)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return np.clip(np.einsum("nd,nd->n", _unit_rows(a), _unit_rows(b)), -1.0, 1.0)


def cosine_matrix(queries: ArrayLike, candidates: ArrayLike) -> np.ndarray:
    """Cosine similarity (N, M) of each query (N, D) with candidates shared (M, D) or per query (N, M, D)."""
    q = _as_float(queries, "queries", 2)
    c = _as_float(candidates, "candidates", (2, 3))
    if c.shape[-1] != q.shape[1] or (c.ndim == 3 and c.shape[0] != q.shape[0]):
        raise ValueError(f"candidates {c.shape} do not match queries {q.shape}")
    q, c = _unit_rows(q), _unit_rows(c)
    sims = q @ c.T if c.ndim == 2 else np.einsum("nd,nmd->nm", q, c)
    return np.clip(sims, -1.0, 1.0)


def semantic_consistency(text_embeddings: ArrayLike, given_vectors: ArrayLike) -> np.ndarray:
    """SC(o, w) = cos(P(o), w) per example (paper §3.2, App. B; P is the same encoder that made w, footnote 6).

    `given_vectors` are the vectors the ELM was actually given: the entity's embedding on the test set, the
    interpolated or CAV-shifted vector for §4's hypothetical entities, another entity's vector for the shuffled control.
    """
    return cosine_rows(text_embeddings, given_vectors)


def _tie_bounds(sorted_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) of the run of equal values that holds each position of rows already sorted along axis 1."""
    n, m = sorted_rows.shape
    pos = np.broadcast_to(np.arange(m), (n, m))
    first = np.ones((n, m), dtype=bool)
    first[:, 1:] = sorted_rows[:, 1:] != sorted_rows[:, :-1]
    last = np.ones((n, m), dtype=bool)
    last[:, :-1] = first[:, 1:]
    start = np.maximum.accumulate(np.where(first, pos, 0), axis=1)
    end = np.minimum.accumulate(np.where(last, pos + 1, m)[:, ::-1], axis=1)[:, ::-1]
    return start, end


def ndcg_rows(scores: ArrayLike, relevance: ArrayLike, k: int | None = None, gain: Gain = "linear") -> np.ndarray:
    """NDCG@k (N,) of ranking each row's items by `scores` (descending), graded by `relevance` (N, M) >= 0.

    Matches sklearn.metrics.ndcg_score (ignore_ties=False) item for item: discount 1/log2(rank + 1), zero past k,
    and tied scores share the mean of their positions' discounts. That is the expected DCG over random orderings of
    the ties, so the result does not depend on how a sort breaks ties. `gain="linear"` (the sklearn default) uses
    rel as the gain and `"exponential"` uses 2^rel - 1, common in IR papers. Unlike sklearn, which returns 0, a row
    with no relevant item (ideal DCG 0) gives NaN, so `bootstrap_ci` leaves it out of the average.
    """
    scores = _as_float(scores, "scores", 2)
    relevance = _as_float(relevance, "relevance", 2)
    if scores.shape != relevance.shape:
        raise ValueError(f"shapes differ: {scores.shape} vs {relevance.shape}")
    if (relevance < 0).any():
        raise ValueError("relevance must be non-negative (ratings with missing ones imputed as 0)")
    if gain not in ("linear", "exponential"):
        raise ValueError(f"gain must be 'linear' or 'exponential', got {gain!r}")
    n, m = scores.shape
    k = m if k is None else k
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    discount = np.zeros(m)
    discount[: min(k, m)] = 1.0 / np.log2(np.arange(min(k, m)) + 2.0)
    cum = np.concatenate([[0.0], np.cumsum(discount)])
    gains = relevance if gain == "linear" else np.exp2(relevance) - 1.0

    order = np.argsort(-scores, axis=1, kind="stable")
    start, end = _tie_bounds(np.take_along_axis(scores, order, axis=1))
    dcg = (np.take_along_axis(gains, order, axis=1) * (cum[end] - cum[start]) / (end - start)).sum(axis=1)
    ideal = (np.sort(gains, axis=1)[:, ::-1] * discount).sum(axis=1)
    return np.divide(dcg, ideal, out=np.full(n, np.nan), where=ideal > 0)


def ndcg(scores: ArrayLike, relevance: ArrayLike, k: int | None = None, gain: Gain = "linear") -> float:
    """NDCG@k of one ranking; see `ndcg_rows` for the definition."""
    return float(ndcg_rows(np.atleast_2d(scores), np.atleast_2d(relevance), k=k, gain=gain)[0])


def _average_ranks(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """1-based average ranks (ties share the mean rank) of each row's masked entries among themselves."""
    x = np.where(mask, x, np.inf)  # masked-out entries sort after every (finite) kept one
    order = np.argsort(x, axis=1, kind="stable")
    start, end = _tie_bounds(np.take_along_axis(x, order, axis=1))
    ranks = np.empty_like(x)
    np.put_along_axis(ranks, order, (start + end + 1) / 2.0, axis=1)
    return ranks


def spearman_rows(x: ArrayLike, y: ArrayLike, mask: ArrayLike | None = None) -> np.ndarray:
    """Spearman rank correlation (N,) of each row pair, over the entries where `mask` is true (all by default).

    Ties get average ranks, as scipy.stats.spearmanr does (Pearson correlation of the average ranks). A row where either
    side is constant, or with fewer than 2 entries, gives NaN: the correlation is undefined there.
    """
    x, y = _as_float(x, "x", 2), _as_float(y, "y", 2)
    mask = np.ones(x.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if not x.shape == y.shape == mask.shape:
        raise ValueError(f"shapes differ: x {x.shape}, y {y.shape}, mask {mask.shape}")
    # The masked average ranks of a row with c entries are a permutation-with-ties of 1..c, whose mean is (c + 1) / 2;
    # a constant side has every rank exactly equal to that mean, so its variance is exactly 0.
    mean_rank = (mask.sum(axis=1, keepdims=True) + 1) / 2.0
    dx = np.where(mask, _average_ranks(x, mask) - mean_rank, 0.0)
    dy = np.where(mask, _average_ranks(y, mask) - mean_rank, 0.0)
    var = (dx * dx).sum(axis=1) * (dy * dy).sum(axis=1)
    rho = np.divide((dx * dy).sum(axis=1), np.sqrt(var), out=np.full(x.shape[0], np.nan), where=var > 0)
    return np.clip(rho, -1.0, 1.0)


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman rank correlation of two 1-D sequences; NaN when either is constant (see `spearman_rows`)."""
    return float(spearman_rows(np.atleast_2d(x), np.atleast_2d(y))[0])


def user_behavioral_consistency(
    profile_embeddings: ArrayLike,
    item_embeddings: ArrayLike,
    ratings: ArrayLike,
    k: int | None = None,
    gain: Gain = "linear",
) -> np.ndarray:
    """User BC (N,): NDCG@k of the items ranked by encoder cosine to each generated profile (paper §3.2, App. B).

    This is BC(o_u, u) = RankingScore(R_u, rho(o_u)), with the dual encoder as the ranker rho (footnote 7). The paper
    does not state the size of the item set I, so the caller picks it: `item_embeddings` (M, D) is shared by all users,
    and (N, M, D) gives a set per user. In `ratings` (N, M), an unrated item is 0, as in App. B ("We impute zero-star
    if a selected movie has no rating"). For CAV-shifted users, pass the CF-predicted ratings instead, clipped at 0.
    """
    return ndcg_rows(cosine_matrix(profile_embeddings, item_embeddings), ratings, k=k, gain=gain)


def movie_behavioral_consistency(
    movie_text_embeddings: ArrayLike,
    user_embeddings: ArrayLike,
    ratings: ArrayLike,
    rated_mask: ArrayLike | None = None,
) -> np.ndarray:
    """Movie BC (N,): Spearman between the users' cosine to the generated movie text and their ratings (App. B).

    This is BC(o_m, m; U) = RankingScore(R_m || rho(o_m)), with a user ranker that queries with o_m. The paper does not
    say how a user is represented as text, so the caller chooses. `user_embeddings` is the encoder embedding of each
    user's text, for example the user's ground-truth profile or their top-rated titles. It is (U, D) when the user set U
    is shared and (N, U, D) when each movie has its own set. By default an unrated user counts as 0 in `ratings`
    (N, U), as in the user case. `rated_mask` (N, U) limits each movie's correlation to its raters.
    """
    return spearman_rows(cosine_matrix(movie_text_embeddings, user_embeddings), ratings, mask=rated_mask)


def retrieval_ranks(text_embeddings: ArrayLike, entity_embeddings: ArrayLike, true_index: ArrayLike) -> np.ndarray:
    """1-based rank (N,) of each true entity among all M entities, by cosine to the generated text (beyond the paper).

    Ties take the average of the tied positions: rank = #(strictly closer) + (#tied including itself + 1) / 2. That is
    the expected rank under random tie-breaking, so a degenerate text (for example a zero embedding, tied with
    everything) scores chance level, (M + 1) / 2, rather than rank 1. Ranks are therefore float and may end in .5.
    """
    text = _unit_rows(_as_float(text_embeddings, "text_embeddings", 2))
    true_index = np.asarray(true_index)
    entities = _unit_rows(_as_float(entity_embeddings, "entity_embeddings", 2))
    if entities.shape[1] != text.shape[1]:
        raise ValueError(f"entity_embeddings {entities.shape} do not match text_embeddings {text.shape}")
    if true_index.shape != (text.shape[0],) or not np.issubdtype(true_index.dtype, np.integer):
        raise ValueError(f"true_index must be {text.shape[0]} integers, got {true_index.dtype} {true_index.shape}")
    if ((true_index < 0) | (true_index >= entities.shape[0])).any():
        raise ValueError(f"true_index out of range [0, {entities.shape[0]})")
    ranks = np.empty(text.shape[0])
    block = max(1, _BLOCK_ELEMENTS // max(1, entities.shape[0]))
    for lo in range(0, text.shape[0], block):
        sims = text[lo : lo + block] @ entities.T
        true = sims[np.arange(sims.shape[0]), true_index[lo : lo + block]][:, None]
        ranks[lo : lo + block] = (sims > true).sum(axis=1) + ((sims == true).sum(axis=1) + 1) / 2.0
    return ranks


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A statistic with its percentile-bootstrap CI, over `n` finite values; `n_dropped` NaNs were left out."""

    value: float
    low: float
    high: float
    n: int
    n_dropped: int


def bootstrap_ci(
    values: ArrayLike,
    statistic: Callable[..., np.ndarray] = np.mean,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Percentile-bootstrap CI of `statistic` over the non-NaN entries of a 1-D array; the same seed gives the same CI.

    `statistic` must take `axis=` (np.mean, np.median) and is applied to a (resamples, n) matrix of resampled
    values. With no finite value, every field is NaN and n is 0.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {values.shape}")
    if not 0.0 < confidence < 1.0 or n_resamples < 1:
        raise ValueError(f"need 0 < confidence < 1 and n_resamples >= 1, got {confidence}, {n_resamples}")
    kept = values[~np.isnan(values)]
    n, n_dropped = kept.size, values.size - kept.size
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, n_dropped)
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_ELEMENTS // n)
    stats = np.concatenate(
        [
            statistic(kept[rng.integers(0, n, size=(min(block, n_resamples - lo), n))], axis=1)
            for lo in range(0, n_resamples, block)
        ]
    )
    alpha = 1.0 - confidence
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return Estimate(float(statistic(kept)), float(low), float(high), n, n_dropped)


def _json_float(x: float) -> float | None:
    return None if np.isnan(x) else x


def summarise(
    per_example: Mapping[str, ArrayLike], n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict[str, dict[str, float | int | None]]:
    """Mean with its bootstrap CI for each per-example metric, as JSON-ready dicts (NaN is written as None)."""
    out = {}
    for name, values in per_example.items():
        est = bootstrap_ci(values, np.mean, n_resamples=n_resamples, confidence=confidence, seed=seed)
        out[name] = {
            "mean": _json_float(est.value),
            "ci_low": _json_float(est.low),
            "ci_high": _json_float(est.high),
            "n": est.n,
            "n_dropped": est.n_dropped,
        }
    return out


def retrieval_summary(
    ranks: ArrayLike, ks: Sequence[int] = (1, 10), n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict[str, dict[str, float | int | None]]:
    """Recall@k, MRR and mean rank of `retrieval_ranks`, each with a bootstrap CI (see `summarise`).

    A tied rank such as 1.5 is not a hit at k=1, so ties never count as hits on the optimistic side.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    per_example = {f"recall@{k}": (ranks <= k).astype(np.float64) for k in ks}
    per_example |= {"mrr": 1.0 / ranks, "mean_rank": ranks}
    return summarise(per_example, n_resamples=n_resamples, confidence=confidence, seed=seed)


def shuffled_control(given_vectors: ArrayLike, seed: int) -> np.ndarray:
    """Permutation `p` for the shuffled-entity control: example i is scored against given_vectors[p[i]], never its own.

    The derangement is by content, not just by index. Identical rows (the same entity repeated across tasks) are never
    paired, so each control vector really belongs to another entity. 1-D entity ids work too. The construction: group
    equal rows, randomly order the groups and the rows within them, then rotate that order by a random shift s with
    g_max <= s <= n - g_max, where g_max is the largest group. The rotation cannot land in the same group, so this is
    impossible (ValueError) when one entity fills more than half the rows.
    """
    given = np.asarray(given_vectors)
    n = given.shape[0] if given.ndim else 0
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 rows, got {n}")
    _, group, counts = np.unique(given, axis=0, return_inverse=True, return_counts=True)
    group = group.reshape(-1)
    if 2 * counts.max() > n:
        raise ValueError(f"no derangement of {n} rows when {counts.max()} of them are one entity")
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(n), rng.permutation(counts.size)[group]))
    shift = rng.integers(counts.max(), n - counts.max() + 1)
    perm = np.empty(n, dtype=np.int64)
    perm[order] = np.roll(order, -shift)
    return perm
