"""The in-memory world an ELM is trained and evaluated on: entities, their embeddings, ratings, the split, tags.

Every source (MovieLens, the embedded default, a user's own files) ends up as a `Catalog`. Entities of one
kind live in an `EntityTable` whose rows line up with its embedding matrices; ratings are a sparse
users x movies matrix (0 = unrated, as the paper imputes for behavioral consistency); tags say which movies
users tagged with a concept ("funny"), which is what concept activation vectors are learned from.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp


@dataclasses.dataclass
class EntityTable:
    kind: str  # "movie", "user", ...
    ids: np.ndarray  # (N,) unique ids (str or int)
    names: list[str]  # what a text-only LLM is told instead of the vector (movie titles)
    embeddings: dict[str, np.ndarray]  # space -> (N, dim) float32
    texts: list[str] | None = None  # ground-truth text: a movie's description, a user's profile

    def __post_init__(self):
        n = len(self.ids)
        if len(set(self.ids.tolist())) != n:
            raise ValueError(f"{self.kind} ids are not unique")
        if len(self.names) != n:
            raise ValueError(f"{self.kind}: {len(self.names)} names for {n} ids")
        if self.texts is not None and len(self.texts) != n:
            raise ValueError(f"{self.kind}: {len(self.texts)} texts for {n} ids")
        for space, matrix in self.embeddings.items():
            if matrix.ndim != 2 or matrix.shape[0] != n:
                raise ValueError(f"{self.kind} embeddings {space!r} have shape {matrix.shape}; expected ({n}, dim)")
            bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
            if bad.size:
                row = int(bad[0])
                raise ValueError(
                    f"{self.kind} embeddings {space!r}: row {row} (id {self.ids.tolist()[row]!r}) has NaN or Inf"
                )

    def __len__(self) -> int:
        return len(self.ids)

    @functools.cached_property
    def row_of(self) -> dict[str, int]:
        """Id (as a string, the form target files use) -> row, built once: per-target lookups must not be O(N)."""
        return {str(v): i for i, v in enumerate(self.ids.tolist())}

    def index(self, ids: Sequence) -> np.ndarray:
        """Row indices of `ids`; raises naming the first unknown id."""
        lookup = {v: i for i, v in enumerate(self.ids.tolist())}
        try:
            return np.array([lookup[i] for i in ids], np.int64)
        except KeyError as e:
            raise ValueError(f"unknown {self.kind} id {e.args[0]!r}") from None


@dataclasses.dataclass
class Catalog:
    movies: EntityTable
    users: EntityTable
    ratings: sp.csr_matrix  # (len(users), len(movies)), 0 = unrated
    test: Mapping[str, np.ndarray]  # kind -> row indices held out from training (entity-level split)
    tags: Mapping[str, Sequence[int]] = dataclasses.field(default_factory=dict)  # concept -> tagged movie rows

    def __post_init__(self):
        expected = (len(self.users), len(self.movies))
        if self.ratings.shape != expected:
            raise ValueError(f"ratings have shape {self.ratings.shape}; expected (users, movies) = {expected}")
        self.ratings = sp.csr_matrix(self.ratings, dtype=np.float32)
        for concept, rows in self.tags.items():
            outside = [r for r in rows if not 0 <= r < len(self.movies)]
            if outside:
                raise ValueError(f"tag {concept!r} names movie row {outside[0]}; there are {len(self.movies)} movies")

    def table(self, kind: str) -> EntityTable:
        tables = {"movie": self.movies, "user": self.users}
        if kind not in tables:
            raise ValueError(f"entity kind {kind!r} is unknown; known: {', '.join(tables)}")
        return tables[kind]

    def liked_disliked(self, user: int, n: int = 5, among: np.ndarray | None = None) -> tuple[list[int], list[int]]:
        """A user's n highest- and n lowest-rated movies (paper §3.1: five liked, five disliked), of the movie
        rows `among` if given; with fewer than 2n ratings, the top and bottom halves."""
        row = self.ratings.getrow(user)
        indices, data = row.indices, row.data
        if among is not None:
            keep = np.isin(indices, among)
            indices, data = indices[keep], data[keep]
        order = indices[np.lexsort((indices, -data))]  # highest first, ties by index
        k = min(n, (len(order) + 1) // 2)
        return order[:k].tolist(), order[k:][::-1][:n].tolist()


def fingerprint(catalog: Catalog) -> str:
    """A hash of everything in the catalogue, so results derived from it are reused only while it is unchanged."""
    h = hashlib.sha1()
    for table in (catalog.movies, catalog.users):
        h.update(json.dumps([table.kind, table.ids.tolist(), table.names, table.texts]).encode())
        for space in sorted(table.embeddings):
            matrix = np.ascontiguousarray(table.embeddings[space], np.float32)
            h.update(json.dumps([space, matrix.shape]).encode())
            h.update(matrix.tobytes())
    ratings = catalog.ratings.copy()
    ratings.sum_duplicates()  # canonical form: sorted indices, no duplicates
    h.update(json.dumps(ratings.shape).encode())
    for part in (ratings.indptr.astype(np.int64), ratings.indices.astype(np.int64), ratings.data):
        h.update(np.ascontiguousarray(part).tobytes())
    test = {kind: sorted(np.asarray(rows).tolist()) for kind, rows in catalog.test.items()}
    tags = {concept: sorted(set(np.asarray(rows).tolist())) for concept, rows in catalog.tags.items()}
    h.update(json.dumps([test, tags], sort_keys=True).encode())
    return h.hexdigest()[:16]
