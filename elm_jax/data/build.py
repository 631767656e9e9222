"""Raw ratings and texts -> a `Catalog`: behavioral and semantic embeddings, the entity split, tag concepts.

Behavioral embeddings are WALS factors of the ratings, fit on movies with at least `min_ratings` ratings
(paper §3.1). Semantic embeddings are the text encoder's vectors of each movie's text; the paper averages
the encodings of several texts per movie (plot descriptions and reviews), which `semantic_embeddings`
does for any list of texts per movie. Embeddings are cached as versioned arrays with their ids, keyed by
everything that shapes them, so a second run skips the work and a changed setting recomputes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from elm_jax.data import wals
from elm_jax.data.catalog import Catalog, EntityTable
from elm_jax.data.movielens import RatingsData

_CACHE_VERSION = 2
Encoder = Callable[[Sequence[str]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class CatalogConfig:
    min_ratings: int = 5  # movies with fewer ratings are dropped (paper §3.1)
    wals: wals.WALSConfig = wals.WALSConfig()
    test_movies: float = 0.1  # a fraction (< 1) or a count of movies held out from every training task
    test_users: float = 0.2  # the paper's 80/20 user split
    seed: int = 0


def movie_texts(data: RatingsData, rows: np.ndarray) -> list[list[str]]:
    """The texts each kept movie is encoded from: its plot where the source has one, else what MovieLens has."""
    tags_by_movie: dict[int, list[str]] = {}
    for movie, tag in zip(data.tags.movie.tolist(), data.tags.tag):
        tags_by_movie.setdefault(movie, []).append(tag)
    out = []
    for r in rows.tolist():
        movie_id = int(data.movie_ids[r])
        if data.plots and movie_id in data.plots:
            out.append([data.plots[movie_id]])
            continue
        top = [t for t, _ in sorted(_counts(tags_by_movie.get(movie_id, [])).items(), key=lambda kv: -kv[1])[:10]]
        genres = ", ".join(data.genres[r]) or "unknown genre"
        out.append([f"{data.titles[r]}. Genres: {genres}." + (f" Tags: {', '.join(top)}." if top else "")])
    return out


def _counts(items: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


def semantic_embeddings(texts: Sequence[Sequence[str]], encode: Encoder) -> np.ndarray:
    """Mean of the encodings of each entity's texts, re-normalised (paper §3.1)."""
    flat = [t for group in texts for t in group]
    if any(not t.strip() for t in flat):
        raise ValueError("empty text among the movie texts: every movie needs some text to embed")
    encoded = encode(flat)
    sizes = np.array([len(g) for g in texts])
    sums = np.add.reduceat(encoded, np.concatenate([[0], np.cumsum(sizes)[:-1]]), axis=0)
    means = sums / sizes[:, None]
    return (means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32)


def random_split(n: int, test: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted rows of `test` (a fraction below 1, else a count) of n entities, drawn with `rng`."""
    count = int(round(test * n)) if test < 1 else int(test)
    if not 0 < count < n:
        raise ValueError(f"a test split of {test} leaves {count} of {n} entities for test; need at least one each side")
    return np.sort(rng.choice(n, size=count, replace=False))


def _fingerprint(data: RatingsData, texts: Sequence[Sequence[str]], config: CatalogConfig, encoder_name: str) -> str:
    """Everything the cached embeddings are computed from: the ratings themselves and the texts encoded."""
    h = hashlib.sha1(json.dumps([repr(config), encoder_name, _CACHE_VERSION, texts]).encode())
    r = data.ratings
    for part in (data.movie_ids, r.user, r.movie, r.rating):
        h.update(np.ascontiguousarray(part).tobytes())
    return h.hexdigest()[:16]


def build_catalog(
    data: RatingsData,
    encode: Encoder,
    encoder_name: str,
    config: CatalogConfig,
    cache_dir: str | os.PathLike,
    mesh=None,
) -> Catalog:
    """The catalogue for ELM training and evaluation, with embeddings cached under `cache_dir`."""
    r = data.ratings
    keep = wals.filter_min_ratings(np.searchsorted(data.movie_ids, r.movie), config.min_ratings)
    movie_rows = np.unique(np.searchsorted(data.movie_ids, r.movie[keep]))
    if len(movie_rows) < 10:
        raise ValueError(f"{data.source}: only {len(movie_rows)} movies have >= {config.min_ratings} ratings")
    user_ids = np.unique(r.user[keep])
    m_index = np.searchsorted(data.movie_ids[movie_rows], r.movie[keep])
    u_index = np.searchsorted(user_ids, r.user[keep])

    texts = movie_texts(data, movie_rows)
    cache = pathlib.Path(cache_dir) / f"embeddings-{_fingerprint(data, texts, config, encoder_name)}.npz"
    if cache.is_file():
        logging.info("reusing embeddings from %s", cache)
        arrays = dict(np.load(cache))
    else:
        logging.info("fitting WALS on %d ratings (%d users x %d movies)", keep.sum(), len(user_ids), len(movie_rows))
        users_b, movies_b = wals.fit_wals(
            u_index, m_index, r.rating[keep], len(user_ids), len(movie_rows), config.wals, mesh
        )
        logging.info("encoding %d movie texts", len(movie_rows))
        semantic = semantic_embeddings(texts, encode)
        arrays = {
            "movie_ids": data.movie_ids[movie_rows],
            "user_ids": user_ids,
            "movie_behavioral": movies_b,
            "user_behavioral": users_b,
            "movie_semantic": semantic,
        }
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, cache)

    movies = EntityTable(
        "movie",
        arrays["movie_ids"],
        [data.titles[i] for i in movie_rows],
        {"semantic": arrays["movie_semantic"], "behavioral": arrays["movie_behavioral"]},
        # Where some movies have no plot, their text is what their vector encodes (title, genres, tags).
        [group[0] for group in texts] if data.plots else None,
    )
    users = EntityTable(
        "user",
        arrays["user_ids"],
        [f"user {u}" for u in arrays["user_ids"].tolist()],
        {"behavioral": arrays["user_behavioral"]},
    )
    ratings = sp.csr_matrix((r.rating[keep], (u_index, m_index)), shape=(len(user_ids), len(movie_rows)))
    rng = np.random.default_rng(config.seed)
    test = {
        "movie": random_split(len(movies), config.test_movies, rng),
        "user": random_split(len(users), config.test_users, rng),
    }
    return Catalog(movies, users, ratings, test)


def tag_concepts(data: RatingsData, catalog: Catalog, aliases: Mapping[str, str] | None = None) -> dict[str, list[int]]:
    """Concept -> catalogue rows of the movies users tagged with it; `aliases` maps tag wordings to concepts."""
    row_of = {int(m): i for i, m in enumerate(catalog.movies.ids.tolist())}
    out: dict[str, set[int]] = {}
    for movie, tag in zip(data.tags.movie.tolist(), data.tags.tag):
        concept = aliases.get(tag, tag) if aliases else tag
        if movie in row_of:
            out.setdefault(concept, set()).add(row_of[movie])
    return {concept: sorted(rows) for concept, rows in out.items()}
