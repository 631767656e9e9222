"""Concept activation vectors: linear directions for soft attributes ("funny", "scary") in an embedding space.

As in the paper (§4, footnote 9, after Göpfert et al. 2022) a CAV is linear and objective: an L2-regularised
logistic regression separates items users tagged with the concept from items nobody tagged with it (an
equal number, sampled), and the CAV is its unit weight vector. Held-out accuracy on a balanced split says
whether the space encodes the concept at all.

Moving along a CAV (paper §4: "make an existing movie funnier") is w' = w + alpha * gap * v, where `gap`
is the distance between the mean projections of tagged and untagged training items. The paper gives no
scale for alpha; with this one, alpha = 1 moves a typical untagged item as far along the concept as a
typical tagged item sits. Behavioral CAVs are learned on item vectors of the matrix factorisation and,
since users live in the same space, move users too (the paper's Fig. 5).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from elm_jax.io_utils import atomic_write_npz


@dataclasses.dataclass(frozen=True)
class CAV:
    concept: str
    space: str
    direction: np.ndarray  # (dim,) unit vector
    gap: float  # mean projection of tagged minus untagged training items, along `direction`
    accuracy: float  # held-out balanced accuracy
    n_positive: int


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, iterations: int = 50) -> tuple[np.ndarray, float]:
    """Newton's method (IRLS) on the mean L2-regularised log loss; exact enough for dims in the hundreds."""
    n, d = x.shape
    xb = np.concatenate([x, np.ones((n, 1))], axis=1)
    w = np.zeros(d + 1)
    reg = np.full(d + 1, l2)
    reg[-1] = 0.0  # the intercept is not regularised
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(xb @ w, -30, 30)))
        grad = xb.T @ (p - y) / n + reg * w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb / n + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return w[:-1], float(w[-1])


def learn_cav(
    embeddings: np.ndarray,
    positives: Sequence[int],
    concept: str,
    space: str,
    *,
    l2: float = 1e-3,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> CAV:
    """One CAV from the row indices of `embeddings` tagged with `concept`."""
    positives = np.unique(np.asarray(positives, np.int64))
    n = len(embeddings)
    if len(positives) < 5 or len(positives) > n - 5:
        raise ValueError(f"concept {concept!r}: {len(positives)} tagged of {n} items; need at least 5 on each side")
    rng = np.random.default_rng(seed)
    negatives = rng.choice(
        np.setdiff1d(np.arange(n), positives), size=min(len(positives), n - len(positives)), replace=False
    )
    # Held out per class (stratified): a random split of 10-20 rows could hold one class only (accuracy NaN).
    k = max(1, int(round(test_fraction * len(positives))))
    pos, neg = rng.permutation(positives), rng.permutation(negatives)
    rows = np.concatenate([pos[:k], neg[:k], pos[k:], neg[k:]])
    labels = np.concatenate([np.ones(k), np.zeros(k), np.ones(len(pos) - k), np.zeros(len(neg) - k)])
    n_test = 2 * k
    x = embeddings[rows].astype(np.float64)
    # Centre and scale by one number (training rows only): per-dimension standardising would let the L2 penalty
    # favour near-constant dimensions, and the CAV would point where the items do not vary (a gap of ~1e-6).
    mean, scale = x[n_test:].mean(0), x[n_test:].std() + 1e-12
    w, b = _fit_logistic((x[n_test:] - mean) / scale, labels[n_test:], l2)
    predictions = ((x[:n_test] - mean) / scale @ w + b) > 0
    test_labels = labels[:n_test].astype(bool)
    accuracy = 0.5 * (np.mean(predictions[test_labels]) + np.mean(~predictions[~test_labels]))
    direction = w / np.linalg.norm(w)
    proj = x[n_test:] @ direction
    train_labels = labels[n_test:].astype(bool)
    gap = float(proj[train_labels].mean() - proj[~train_labels].mean())
    return CAV(concept, space, direction.astype(np.float32), gap, float(accuracy), int(len(positives)))


def learn_cavs(
    embeddings: np.ndarray,
    tagged: Mapping[str, Sequence[int]],
    space: str,
    *,
    min_positives: int = 10,
    l2: float = 1e-3,
    seed: int = 0,
) -> dict[str, CAV]:
    """CAVs for every concept with at least `min_positives` tagged items (rarer concepts are skipped)."""
    return {
        concept: learn_cav(embeddings, rows, concept, space, l2=l2, seed=seed)
        for concept, rows in sorted(tagged.items())
        if min_positives <= len(set(rows)) <= len(embeddings) - 5
    }


def move(vectors: np.ndarray, cav: CAV, alpha: float | np.ndarray) -> np.ndarray:
    """w + alpha * gap * v for one vector or a batch (alpha may be one value per row)."""
    vectors = np.asarray(vectors, np.float32)
    if vectors.shape[-1] != cav.direction.shape[0]:
        raise ValueError(
            f"CAV {cav.concept!r} lives in {cav.space!r} ({cav.direction.shape[0]} dims); "
            f"got vectors of {vectors.shape[-1]} dims"
        )
    alpha = np.asarray(alpha, np.float32)[..., None] if np.ndim(alpha) else np.float32(alpha)
    return vectors + alpha * np.float32(cav.gap) * cav.direction


def save_cavs(path: str | os.PathLike, space: str, learned: Sequence[CAV]) -> pathlib.Path:
    """One space's CAVs as an .npz (written atomically), for `load_cavs` in later jobs."""
    other = [c.concept for c in learned if c.space != space]
    if other:
        raise ValueError(f"CAV {other[0]!r} lives in another space than {space!r}")
    return atomic_write_npz(
        path,
        {
            "space": np.array(space),
            "concepts": np.array([c.concept for c in learned], np.str_),
            "directions": np.stack([c.direction for c in learned]) if learned else np.zeros((0, 0), np.float32),
            "gaps": np.array([c.gap for c in learned], np.float64),
            "accuracies": np.array([c.accuracy for c in learned], np.float64),
            "n_positive": np.array([c.n_positive for c in learned], np.int64),
        },
    )


def load_cavs(path: str | os.PathLike) -> dict[str, CAV]:
    """Concept -> CAV, as `save_cavs` wrote them."""
    with np.load(path, allow_pickle=False) as f:
        space = str(f["space"])
        return {
            str(concept): CAV(str(concept), space, direction, float(gap), float(accuracy), int(n))
            for concept, direction, gap, accuracy, n in zip(
                f["concepts"], f["directions"], f["gaps"], f["accuracies"], f["n_positive"], strict=True
            )
        }
