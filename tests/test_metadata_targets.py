"""Metadata targets for the default catalogue: every task, never a title, grounded in the truth, split-safe."""

import collections
import re

import numpy as np
import pytest
import scipy.sparse as sp

from elm_jax.data import synthetic
from elm_jax.data import targets as targets_lib
from elm_jax.data import tasks as tasks_lib
from elm_jax.data.catalog import Catalog, EntityTable
from elm_jax.data.examples import build_examples
from elm_jax.data.metadata_targets import metadata_targets

FUNNY = re.compile(r"\b(funny|funnier|hilarious|humorous|comic|comedy|comedies|humour|laughs?|jokes)\b", re.I)
PRAISE = re.compile(r"\b(loved|delight|best|must-see|recommended|pleasure|superbly|genuinely|lovely)\b", re.I)
SCORN = re.compile(r"\b(disappointment|fails|chore|letdown|problem|worse|skip|tedious|stay away)\b", re.I)
# A negated mention ("not funny at all", "care less about comedy") says the movie lacks the attribute.
NEGATED = re.compile(r"\b(not|never|hardly|barely|little|less|no|without|rather than)\b[^.,:;\n]*", re.I)
FIRST_SENTENCE = re.compile(r"(?<=[.!?])\s|\n")


def _catalog(cat: synthetic.SyntheticCatalogue, names: list[str] | None = None) -> Catalog:
    """Movies keyed by string ids (the truth holds ints), users by int ids; every 10th entity held out."""
    movies = EntityTable(
        "movie",
        np.array([str(m) for m in cat.movie_ids]),
        names or cat.titles,
        {"semantic": cat.movie_attributes},
        texts=cat.plots,
    )
    users = EntityTable("user", cat.user_ids, [f"user {u}" for u in cat.user_ids], {"behavioral": cat.user_taste})
    row = {int(m): i for i, m in enumerate(cat.movie_ids)}
    r = cat.ratings
    cols = [row[int(m)] for m in r["movieId"]]
    ratings = sp.csr_matrix((r["rating"], (r["userId"] - 1, cols)), shape=(len(users), len(movies)))
    test = {"movie": np.arange(0, len(movies), 10), "user": np.arange(0, len(users), 10)}
    return Catalog(movies, users, ratings, test)


def _truth(cat: synthetic.SyntheticCatalogue) -> dict[str, np.ndarray]:
    return cat.ground_truth()


@pytest.fixture(scope="module")
def world():
    cat = synthetic.generate(synthetic.SyntheticConfig(n_movies=200, n_users=100))
    return cat, _catalog(cat), _truth(cat)


@pytest.fixture(scope="module")
def by_task(world):
    _, catalog, truth = world
    out = collections.defaultdict(list)
    for t in metadata_targets(catalog, truth, tasks_lib.DEFAULT_TASKS):
        out[t.task].append(t)
    return out


def test_every_task_yields_one_target_per_example_of_reasonable_length(world, by_task):
    _, catalog, _ = world
    for task in tasks_lib.DEFAULT_TASKS:
        examples = build_examples(catalog, task, "train", None, 0)
        targets = by_task[task.name]
        assert len(targets) == len(examples) > 0, task.name
        ids = catalog.table(task.entity).ids.tolist()
        assert [t.entities for t in targets] == [tuple(str(ids[r]) for r in ex.rows) for ex in examples]
        words = [len(t.text.split()) for t in targets]
        assert 25 <= min(words) and max(words) <= 140, (task.name, min(words), max(words))


def _names_a_movie(text: str, name: str) -> bool:
    bare = re.sub(r"\s*\(\d{4}\)$", "", name)
    return name in text or re.search(r"(?<!\w)" + re.escape(bare) + r"(?!\w)", text) is not None


def test_no_target_names_its_movies(world, by_task):
    _, catalog, _ = world
    name = dict(zip(catalog.movies.ids.tolist(), catalog.movies.names))
    for task in tasks_lib.MOVIE_TASKS:
        for t in by_task[task.name]:
            assert not any(_names_a_movie(t.text, name[e]) for e in t.entities), (task.name, t)


def test_a_title_that_templates_use_is_scrubbed(world):
    cat, _, truth = world
    catalog = _catalog(cat, names=["Genre (1999)"] * len(cat.titles))  # "Genre: both are ..." in pair lists
    out = metadata_targets(catalog, truth, tasks_lib.MOVIE_TASKS, per_task=10)
    assert out and all(t.text and not _names_a_movie(t.text, "Genre (1999)") for t in out)


def test_user_profiles_are_ten_bullets(by_task):
    for t in by_task["user_profile"]:
        lines = t.text.split("\n")
        assert len(lines) == 10 and all(line.startswith("- ") and len(line) > 10 for line in lines), t.text


def test_deterministic_by_seed(world, by_task):
    _, catalog, truth = world
    tasks = tasks_lib.select(["summary", "similarities", "user_profile"], tasks_lib.registry())
    again = metadata_targets(catalog, truth, tasks)
    assert again == [t for name in ("summary", "similarities", "user_profile") for t in by_task[name]]
    other = metadata_targets(catalog, truth, tasks, seed=1)
    assert {t.text for t in other} != {t.text for t in again}


def test_phrasing_varies_across_examples(by_task):
    for name, targets in by_task.items():
        firsts = [FIRST_SENTENCE.split(t.text, maxsplit=1)[0] for t in targets]
        assert len(set(firsts)) / len(firsts) > 0.5, (name, collections.Counter(firsts).most_common(3))
        assert len({t.text for t in targets}) == len(targets), name


def _rank(world, values: np.ndarray, targets: list) -> tuple[list, list]:
    """Targets of the 20 highest and 20 lowest movies by `values` (truth rows = catalogue rows here)."""
    _, catalog, _ = world
    row = {str(m): i for i, m in enumerate(catalog.movies.ids.tolist())}
    order = sorted(targets, key=lambda t: values[row[t.entities[0]]])
    return order[-20:], order[:20]


def test_funniest_movies_get_funny_words(world, by_task):
    cat = world[0]
    funny = cat.movie_attributes[:, cat.config.attributes.index("funny")]
    for name in ("summary", "five_pos_char", "positive_review", "convince2", "movie_to_viewer"):
        top, bottom = _rank(world, funny, by_task[name])
        hits_top = np.mean([len(FUNNY.findall(NEGATED.sub("", t.text))) for t in top])
        hits_bottom = np.mean([len(FUNNY.findall(NEGATED.sub("", t.text))) for t in bottom])
        assert hits_top > 1.0 and hits_top > 4 * hits_bottom, (name, hits_top, hits_bottom)


def test_review_sentiment_follows_the_task(world, by_task):
    cat = world[0]
    good, _ = _rank(world, cat.movie_quality, by_task["positive_review"])
    bad = by_task["negative_review"]
    praise_pos = np.mean([len(PRAISE.findall(t.text)) for t in good])
    praise_neg = np.mean([len(PRAISE.findall(t.text)) for t in bad])
    scorn_pos = np.mean([len(SCORN.findall(t.text)) for t in good])
    scorn_neg = np.mean([len(SCORN.findall(t.text)) for t in bad])
    assert praise_pos > 1.0 and praise_pos > 3 * praise_neg, (praise_pos, praise_neg)
    assert scorn_neg > 1.0 and scorn_neg > 3 * scorn_pos, (scorn_neg, scorn_pos)


def test_pair_lists_follow_the_attribute_gaps(world, by_task):
    cat, catalog, _ = world
    names = cat.config.attributes
    row = {str(m): i for i, m in enumerate(catalog.movies.ids.tolist())}
    for t in by_task["diff_than_nn"]:
        a, b = (cat.movie_attributes[row[e]] for e in t.entities)
        assert t.text.split("\n")[1].startswith(f"1. {names[int(np.argmax(np.abs(a - b)))].capitalize()}:"), t.text
    for t in by_task["common_with_nn"]:
        shared = np.minimum(*(cat.movie_attributes[row[e]] for e in t.entities))
        if shared.max() >= 0.35:
            assert t.text.split("\n")[1].startswith(f"1. {names[int(np.argmax(shared))].capitalize()}:"), t.text
    for t in by_task["similarities"]:
        assert "the first movie" in t.text.lower() and "the second movie" in t.text.lower()


def test_user_profiles_follow_taste(world, by_task):
    cat, catalog, _ = world
    names = cat.config.attributes
    hits = 0
    for t in by_task["user_profile"]:
        taste = cat.user_taste[int(t.entities[0]) - 1]
        hits += names[int(np.argmax(taste))] in t.text.split("\n")[0] + t.text.split("\n")[-1]
    assert hits / len(by_task["user_profile"]) > 0.6


def test_respects_the_split(world, by_task):
    _, catalog, truth = world
    registry = tasks_lib.registry()
    train = [t for targets in by_task.values() for t in targets]
    targets_lib.check_split(catalog, registry, train, "train")
    test = metadata_targets(catalog, truth, tasks_lib.DEFAULT_TASKS, split="test", per_task=5)
    targets_lib.check_split(catalog, registry, test, "test")
    assert {t.task for t in test} == set(registry)
    assert max(collections.Counter(t.task for t in test).values()) == 5


def test_missing_ids_and_unknown_tasks_are_clear_errors(world):
    _, catalog, truth = world
    tasks = tasks_lib.select(["summary"], tasks_lib.registry())
    keep = np.arange(1, len(truth["movie_ids"]))
    fewer = {**truth, "movie_ids": truth["movie_ids"][keep], "movie_attributes": truth["movie_attributes"][keep]}
    first = catalog.movies.ids[0]
    with pytest.raises(ValueError, match=f"movie id '{first}'.*not in the ground truth"):
        metadata_targets(catalog, fewer, tasks)
    no_user = {**truth, "user_ids": truth["user_ids"] + 1000}
    with pytest.raises(ValueError, match="user id .* not in the ground truth"):
        metadata_targets(catalog, no_user, tasks_lib.select(["user"], tasks_lib.registry()))
    custom = tasks_lib.Task("haiku", "Write a haiku about {movie}.", "Haiku about {movie}.", {"movie": "semantic"})
    with pytest.raises(ValueError, match="no metadata targets for task.*haiku"):
        metadata_targets(catalog, truth, [custom])


def test_comparisons_with_genre_peers_never_contradict_themselves(world):
    """Genre means come from the training movies, and a genre with few of them is compared with all movies: a
    lone member of its genre had a zero gap everywhere ("more funny and less funny")."""
    _, catalog, truth = world
    tasks = tasks_lib.select(["criticize", "pitch", "convince1", "convince2"], tasks_lib.registry())
    for split in ("train", "test"):
        for t in metadata_targets(catalog, truth, tasks, split=split):
            for more, less in re.findall(r"more (\w[\w-]*)\W.*?less (\w[\w-]*)", t.text):
                assert more != less, t.text


def test_articles_agree_with_their_genre(by_task):
    texts = [t.text for ts in by_task.values() for t in ts]
    assert not [x for x in texts if re.search(r"\ba (action|animated|adventure|epic|indie)\b", x)]
