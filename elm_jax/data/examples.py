"""Which entities each task is asked about, and the teacher prompt that names them.

Splits are by entity, never by example (paper §4; a public reproduction leaked test items into training by
splitting per example): a test movie or user appears in no training example of any task, and pair tasks
draw both entities from the same side of the split.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence

import numpy as np

from elm_jax.data.catalog import Catalog
from elm_jax.data.prompts import SLOT
from elm_jax.data.tasks import Task
from elm_jax.eval import metrics

SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class Example:
    task: str
    rows: tuple[int, ...]  # one entity row per slot, in the template's slot order


def split_rows(catalog: Catalog, kind: str, split: str) -> np.ndarray:
    """Row indices of `kind` entities on one side of the entity-level split."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    test = np.asarray(catalog.test.get(kind, []), np.int64)
    if split == "test":
        return test
    return np.setdiff1d(np.arange(len(catalog.table(kind))), test)


def task_seed(seed: int, name: str) -> list[int]:
    """Per-task seeds that do not change between runs (Python's hash() does)."""
    return [seed, zlib.crc32(name.encode())]


def build_examples(catalog: Catalog, task: Task, split: str, limit: int | None, seed: int) -> list[Example]:
    """Up to `limit` entities of the split; pair tasks add a random or nearest partner from the same split."""
    rng = np.random.default_rng(task_seed(seed, task.name))
    pool = split_rows(catalog, task.entity, split)
    if len(pool) == 0:
        raise ValueError(f"task {task.name!r}: the {split} split has no {task.entity} entities")
    chosen = rng.permutation(pool)[:limit]
    if task.pairing == "none":
        return [Example(task.name, (int(r),)) for r in chosen]
    if len(pool) < 2:
        raise ValueError(f"pair task {task.name!r} needs at least 2 {split} {task.entity} entities")
    if task.pairing == "random":
        partners = [int(rng.choice(pool[pool != r])) for r in chosen]
    else:
        matrix = catalog.table(task.entity).embeddings[task.spaces[task.slots[1]]]
        sims = metrics.cosine_matrix(matrix[chosen], matrix[pool])
        sims[pool[None, :] == chosen[:, None]] = -np.inf
        partners = [int(pool[i]) for i in np.argmax(sims, axis=1)]
    return [Example(task.name, (int(r), p)) for r, p in zip(chosen, partners)]


def _titles(catalog: Catalog, rows: Sequence[int]) -> str:
    """Titles listed as the paper's user-profile prompt lists them: "A, B, and C"."""
    names = [catalog.movies.names[r] for r in rows]
    if len(names) < 3:
        return " and ".join(names)
    return ", ".join(names[:-1]) + ", and " + names[-1]


def teacher_prompt(catalog: Catalog, task: Task, example: Example, split: str) -> str:
    """The task's prompt with names instead of vectors: for the text-only baseline and teacher targets.

    A user's liked and disliked titles in a training prompt come from training movies only, so no training
    target can name a test movie (a test user's prompt may name any movie: nothing trains on it)."""
    names = dict(zip(task.slots, (catalog.table(task.entity).names[r] for r in example.rows), strict=True))
    if task.entity == "user":
        among = split_rows(catalog, "movie", "train") if split == "train" else None
        liked, disliked = catalog.liked_disliked(example.rows[0], among=among)
        names.update(liked=_titles(catalog, liked), disliked=_titles(catalog, disliked))
    return SLOT.sub(lambda m: names[m.group(1)], task.teacher_template)


def user_ratings_text(catalog: Catalog, user: int) -> str:
    """A user as text: their five highest- and lowest-rated titles (paper §3.1's profile inputs)."""
    liked, disliked = catalog.liked_disliked(user)
    return f"Likes the movies: {_titles(catalog, liked)}. Dislikes the movies: {_titles(catalog, disliked)}."
