"""Training targets: what the ELM should say about each (task, entities) example.

Three sources, one format (a JSONL row per example: {"task", "entities": [ids, one per slot], "target"}):
  teacher   a teacher LLM prompted with the entities' titles and the task (paper §3.1 used PaLM 2-L);
            any checkpoint elm_jax loads can be the teacher. Resumable, with progress.
  metadata  targets written from the embedded default catalogue's ground truth (fast, offline).
  file      a JSONL file the user supplies.
Entities are referred to by id, not row, so target files survive re-ordering of the catalogue.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence

from tqdm import tqdm

from elm_jax.data.catalog import Catalog
from elm_jax.data.examples import Example, build_examples, split_rows, teacher_prompt
from elm_jax.data.tasks import Task
from elm_jax.io_utils import atomic_write_jsonl, read_jsonl_objects
from elm_jax.resumable import map_in_chunks


@dataclasses.dataclass(frozen=True)
class Target:
    task: str
    entities: tuple[str, ...]  # entity ids as strings, one per slot
    text: str


def to_target(catalog: Catalog, task: Task, example: Example, text: str) -> Target:
    ids = catalog.table(task.entity).ids.tolist()
    return Target(task.name, tuple(str(ids[r]) for r in example.rows), text)


def to_example(catalog: Catalog, task: Task, target: Target) -> Example:
    lookup = catalog.table(task.entity).row_of
    missing = [e for e in target.entities if e not in lookup]
    if missing:
        raise ValueError(f"task {task.name!r}: unknown {task.entity} id {missing[0]!r}")
    return Example(task.name, tuple(lookup[e] for e in target.entities))


def write_jsonl(path: str | os.PathLike, targets: Sequence[Target]) -> pathlib.Path:
    return atomic_write_jsonl(path, ({"task": t.task, "entities": list(t.entities), "target": t.text} for t in targets))


def read_jsonl(path: str | os.PathLike, catalog: Catalog, tasks: Mapping[str, Task]) -> list[Target]:
    """Targets from a user's JSONL file; every row is checked against the tasks and the catalogue."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"targets file {path} does not exist")
    out = []
    for line_no, row in read_jsonl_objects(path, "exactly task, entities, target"):
        where = f"{path}:{line_no}"
        if set(row) != {"task", "entities", "target"}:
            raise ValueError(f"{where}: expected an object with exactly task, entities, target")
        task = tasks.get(row["task"]) if isinstance(row["task"], str) else None
        if task is None:
            raise ValueError(f"{where}: unknown task {row['task']!r}")
        if not isinstance(row["target"], str) or not row["target"].strip():
            raise ValueError(f"{where}: empty target text")
        if not isinstance(row["entities"], list) or len(row["entities"]) != len(task.slots):
            raise ValueError(f"{where}: task {task.name!r} takes {len(task.slots)} entities, got {row['entities']!r}")
        target = Target(task.name, tuple(str(e) for e in row["entities"]), row["target"])
        try:
            to_example(catalog, task, target)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        out.append(target)
    return out


def check_split(catalog: Catalog, tasks: Mapping[str, Task], targets: Sequence[Target], split: str = "train") -> None:
    """Raises if a target names an entity from the other side of the split (e.g. a test movie in training)."""
    allowed = {
        kind: {str(i) for i in catalog.table(kind).ids[split_rows(catalog, kind, split)].tolist()}
        for kind in {t.entity for t in tasks.values()}
    }
    for i, t in enumerate(targets):
        kind = tasks[t.task].entity
        leaked = [e for e in t.entities if e not in allowed[kind]]
        if leaked:
            raise ValueError(f"target {i} ({t.task}) uses {kind} {leaked[0]!r}, which is not in the {split} split")


def teacher_targets(
    catalog: Catalog,
    tasks: Sequence[Task],
    generate: Callable[[Sequence[str]], list[str]],
    workdir: str | os.PathLike,
    *,
    split: str = "train",
    per_task: int | None = None,
    seed: int = 0,
    chunk_size: int = 64,
) -> list[Target]:
    """Targets written by a teacher LLM from the teacher prompts (titles, not vectors); resumable."""
    plan = {t.name: build_examples(catalog, t, split, per_task, seed) for t in tasks}
    out: list[Target] = []
    with tqdm(total=sum(map(len, plan.values())), desc="teacher targets", unit="text", disable=None) as bar:
        for task in tasks:
            examples = plan[task.name]
            prompts = [teacher_prompt(catalog, task, ex, split) for ex in examples]
            texts = map_in_chunks(prompts, prompts, generate, pathlib.Path(workdir) / task.name, chunk_size, bar.update)
            out += [to_target(catalog, task, ex, text) for ex, text in zip(examples, texts, strict=True)]
    return out
