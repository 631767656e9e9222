"""Target sources and the entity-level split: no test entity in any training example of any task."""

import json

import numpy as np
import pytest
import scipy.sparse as sp

from elm_jax.data import targets as targets_lib
from elm_jax.data import tasks as tasks_lib
from elm_jax.data.catalog import Catalog, EntityTable
from elm_jax.data.examples import build_examples, split_rows


@pytest.fixture(scope="module")
def catalog():
    rng = np.random.default_rng(0)
    movies = EntityTable(
        "movie",
        np.array([f"m{i}" for i in range(30)]),
        [f"Film {i} (2001)" for i in range(30)],
        {"semantic": rng.standard_normal((30, 8)).astype(np.float32)},
    )
    users = EntityTable(
        "user",
        np.arange(20),
        [f"user {i}" for i in range(20)],
        {"behavioral": rng.standard_normal((20, 4)).astype(np.float32)},
    )
    ratings = sp.csr_matrix(rng.integers(1, 6, (20, 30)) * (rng.random((20, 30)) < 0.5))
    return Catalog(movies, users, ratings, {"movie": np.arange(0, 30, 5), "user": np.array([3, 7])})


def test_no_test_entity_appears_in_any_training_example(catalog):
    registry = tasks_lib.registry()
    test_rows = {"movie": set(catalog.test["movie"].tolist()), "user": {3, 7}}
    for task in registry.values():
        for ex in build_examples(catalog, task, "train", None, seed=1):
            assert not set(ex.rows) & test_rows[task.entity], (task.name, ex)
        for ex in build_examples(catalog, task, "test", None, seed=1):
            assert set(ex.rows) <= test_rows[task.entity]
    assert len(split_rows(catalog, "movie", "train")) == 24


def test_teacher_targets_name_entities_and_pass_the_split_check(catalog, tmp_path):
    registry = tasks_lib.registry()
    tasks = tasks_lib.select(["summary", "similarities", "user_profile"], registry)
    prompts = []
    out = targets_lib.teacher_targets(
        catalog, tasks, lambda p: prompts.extend(p) or [f"T:{x[:20]}" for x in p], tmp_path, per_task=4
    )
    assert [t.task for t in out] == ["summary"] * 4 + ["similarities"] * 4 + ["user_profile"] * 4
    assert all(len(t.entities) == len(registry[t.task].slots) for t in out)
    assert any("Film" in p and "Do not use the movie" in p for p in prompts)
    targets_lib.check_split(catalog, registry, out, "train")
    with pytest.raises(ValueError, match="not in the train split"):
        targets_lib.check_split(catalog, registry, [targets_lib.Target("summary", ("m5",), "x")], "train")
    path = targets_lib.write_jsonl(tmp_path / "t.jsonl", out)
    assert targets_lib.read_jsonl(path, catalog, registry) == out


def test_training_user_prompts_name_training_movies_only(catalog, tmp_path):
    """A teacher copies titles from the prompt into the target: a training user's liked and disliked lists must
    not name test movies (a test user's prompt, for the text baseline, may name any)."""
    test_titles = {catalog.movies.names[m] for m in catalog.test["movie"].tolist()}
    prompts = {}
    for split in ("train", "test"):
        prompts[split] = []
        targets_lib.teacher_targets(
            catalog,
            [tasks_lib.USER_PROFILE],
            lambda p, split=split: prompts[split].extend(p) or ["profile"] * len(p),
            tmp_path / split,
            split=split,
        )
    assert len(prompts["train"]) == 18 and not any(t in p for p in prompts["train"] for t in test_titles)
    assert any(t in p for p in prompts["test"] for t in test_titles)
    assert all(", and " in p for p in prompts["train"])  # the paper's "A, B, C, D, and E"


@pytest.mark.parametrize(
    "row, message",
    [
        ("{", "invalid JSON"),
        ('["summary", ["m1"], "x"]', "expected a JSON object"),
        (json.dumps({"task": "summary", "entities": ["m1"]}), "exactly task, entities, target"),
        (json.dumps({"task": "sumary", "entities": ["m1"], "target": "x"}), "unknown task 'sumary'"),
        (json.dumps({"task": ["summary"], "entities": ["m1"], "target": "x"}), r"unknown task \['summary'\]"),
        (json.dumps({"task": "summary", "entities": ["m1", "m2"], "target": "x"}), "takes 1 entities"),
        (json.dumps({"task": "summary", "entities": ["m99"], "target": "x"}), "unknown movie id 'm99'"),
        (json.dumps({"task": "summary", "entities": ["m1"], "target": "  "}), "empty target"),
    ],
)
def test_user_jsonl_errors_name_the_line(catalog, tmp_path, row, message):
    path = tmp_path / "targets.jsonl"
    path.write_text(json.dumps({"task": "summary", "entities": ["m1"], "target": "fine"}) + "\n" + row + "\n")
    with pytest.raises(ValueError, match=f"targets.jsonl:2: .*{message}"):
        targets_lib.read_jsonl(path, catalog, tasks_lib.registry())
