"""The in-memory world an ELM is trained and evaluated on: entities, their embeddings, ratings, the split.

Every source (MovieLens, the embedded default, a user's own files) ends up as a `Catalog`. Entities of one
kind live in an `EntityTable` whose rows line up with its embedding matrices; ratings are a sparse
users x movies matrix (0 = unrated, as the paper imputes for behavioral consistency).
"""

from __future__ import annotations

import dataclasses
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

    def __post_init__(self):
        expected = (len(self.users), len(self.movies))
        if self.ratings.shape != expected:
            raise ValueError(f"ratings have shape {self.ratings.shape}; expected (users, movies) = {expected}")
        self.ratings = sp.csr_matrix(self.ratings, dtype=np.float32)

    def table(self, kind: str) -> EntityTable:
        tables = {"movie": self.movies, "user": self.users}
        if kind not in tables:
            raise ValueError(f"entity kind {kind!r} is unknown; known: {', '.join(tables)}")
        return tables[kind]

    def liked_disliked(self, user: int, n: int = 5) -> tuple[list[int], list[int]]:
        """A user's n highest- and n lowest-rated movies (paper §3.1: five liked, five disliked)."""
        row = self.ratings.getrow(user)
        order = row.indices[np.lexsort((row.indices, -row.data))]  # highest first, ties by index
        liked = order[:n].tolist()
        disliked = [m for m in order[::-1] if m not in liked][:n]
        return liked, disliked
