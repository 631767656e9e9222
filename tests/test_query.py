"""Talking to embeddings: each query kind on a tiny ELM, its consistency recomputed, bad input refused, the CLI once."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import scipy.sparse as sp

from elm_jax import query
from elm_jax.data import cavs
from elm_jax.data import tasks as tasks_lib
from elm_jax.data.catalog import Catalog, EntityTable
from elm_jax.encoder import TextEncoder
from elm_jax.eval import metrics
from elm_jax.generate import SamplingConfig
from elm_jax.models.adapter import AdapterConfig
from elm_jax.models.decoder import Decoder
from elm_jax.models.elm import ELM, ELMConfig, init_params
from elm_jax.tokenizer import Tokenizer
from elm_jax.trained import TrainedELM
from elm_jax.weights import hf
from elm_jax.weights.pretrained import LoadedDecoder
from tests import fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUNNY = [0, 1, 4, 8, 10, 11]  # the movies tagged "funny"


@pytest.fixture(scope="module")
def talker(tmp_path_factory):
    root = tmp_path_factory.mktemp("query")
    encoder = TextEncoder.from_pretrained(fixtures.write_bert_checkpoint(root / "encoder"))
    llm_path = fixtures.write_hf_checkpoint(root / "llm", "llama", seed=3)
    rng = np.random.default_rng(0)
    movies = EntityTable(
        "movie",
        np.arange(100, 112),
        [f"Movie {i} (19{i + 80})" for i in range(12)],
        {
            "semantic": encoder.encode(list(fixtures.DESCRIPTIONS)),
            "behavioral": rng.standard_normal((12, 4)).astype(np.float32),
        },
        texts=list(fixtures.DESCRIPTIONS),
    )
    users = EntityTable(
        "user",
        np.arange(8),
        [f"user {i}" for i in range(8)],
        {"behavioral": rng.standard_normal((8, 4)).astype(np.float32)},
    )
    dense = rng.integers(1, 6, (8, 12)) * (rng.random((8, 12)) < 0.6)
    catalog = Catalog(
        movies, users, sp.csr_matrix(dense), {"movie": np.arange(6), "user": np.arange(4)}, {"funny": FUNNY}
    )
    decoder_config = hf.load_config(llm_path)
    model = ELM(
        ELMConfig(decoder_config, (("behavioral", AdapterConfig(4, 32, 16)), ("semantic", AdapterConfig(32, 32, 16))))
    )
    samples = {"behavioral": users.embeddings["behavioral"], "semantic": movies.embeddings["semantic"]}
    params = init_params(model.config, hf.load_params(llm_path, decoder_config), samples, jax.random.key(0))
    llm = LoadedDecoder(Decoder(decoder_config), params["llm"], Tokenizer.from_dir(llm_path), llm_path)
    registry = tasks_lib.registry()
    elm = TrainedELM(model, params, llm, catalog, [registry["summary"], registry["user_profile"]], [])
    learned = {
        space: cavs.learn_cavs(movies.embeddings[space], catalog.tags, space, min_positives=5) for space in samples
    }
    settings = query.QuerySettings(SamplingConfig(max_new_tokens=6), chat=True, batch_size=4, ndcg_k=3)
    return query.Talker(elm, encoder.encode, learned, settings, registry)


@pytest.fixture
def generations(talker, monkeypatch):
    """The vectors of each sampler call (one (N, dim) array per call): a query must be one batched generation."""
    calls = []
    real = query.generate_elm_text

    def recorded(*args, **kwargs):
        calls.append(np.stack([q.vectors[0] for q in args[3]]))
        return real(*args, **kwargs)

    monkeypatch.setattr(query, "generate_elm_text", recorded)
    return calls


def _given(calls, expected):
    """One generation, fed exactly `expected`."""
    assert len(calls) == 1
    np.testing.assert_allclose(calls[0], np.asarray(expected, np.float32), rtol=1e-6, atol=1e-6)


def _encode(talker, answers):
    return talker.encode([a.text for a in answers])


def _user_ndcg(talker, answers, vectors):
    movies = talker.elm.catalog.movies.embeddings
    predicted = np.clip(np.asarray(vectors, np.float64) @ movies["behavioral"].T, 0, None)
    scores = metrics.cosine_matrix(_encode(talker, answers), movies["semantic"])
    return metrics.ndcg_rows(scores, predicted, k=3)  # the top 3 of the 6 movies (settings.ndcg_k)


def test_describe_mixes_ids_names_and_raw_vectors_in_one_batch_with_their_sc(talker, generations):
    semantic = talker.elm.catalog.movies.embeddings["semantic"]
    raw = semantic[0] + 0.1
    answers = talker.describe([100, "103", "Movie 5 (1985)", raw.tolist()], prompt="Describe {movie} briefly.")
    _given(generations, [semantic[0], semantic[3], semantic[5], raw])
    assert [a.inputs["target"] for a in answers] == [
        {"id": 100, "name": "Movie 0 (1980)"},
        {"id": 103, "name": "Movie 3 (1983)"},
        {"id": 105, "name": "Movie 5 (1985)"},
        {"vector": "targets[3]"},
    ]
    assert {(a.query, a.entity_kind, a.space, a.metric) for a in answers} == {("describe", "movie", "semantic", "sc")}
    expected = metrics.semantic_consistency(_encode(talker, answers), generations[0])
    np.testing.assert_allclose([a.consistency for a in answers], expected, rtol=1e-5)
    by_task = talker.describe(np.stack([semantic[1], semantic[2]]), task="five_pos_char")
    assert by_task[0].template == tasks_lib.registry()["five_pos_char"].template and len(by_task) == 2
    json.dumps([a.to_json() for a in answers + by_task])  # JSON-ready


def test_profile_scores_ndcg_against_the_cf_models_predicted_ratings(talker, generations):
    users = talker.elm.catalog.users.embeddings["behavioral"]
    answers = talker.profile([0, users[5]])
    _given(generations, users[[0, 5]])
    assert {(a.query, a.entity_kind, a.space, a.metric) for a in answers} == {
        ("profile", "user", "behavioral", "bc_ndcg")
    }
    assert answers[0].template == tasks_lib.USER_PROFILE.template
    np.testing.assert_allclose([a.consistency for a in answers], _user_ndcg(talker, answers, users[[0, 5]]), rtol=1e-6)


def test_interpolation_sweep_walks_from_a_to_b_in_one_batch(talker, generations):
    semantic = talker.elm.catalog.movies.embeddings["semantic"].astype(np.float64)
    alphas = [0.0, 0.5, 1.0, 1.5]
    answers = talker.interpolate(102, 107, alphas)
    given = [(1 - x) * semantic[2] + x * semantic[7] for x in alphas]
    _given(generations, given)
    assert [a.inputs["alpha"] for a in answers] == alphas
    assert answers[1].subject == "Movie 2 (1982) [102] -> Movie 7 (1987) [107], alpha 0.5"
    expected = metrics.semantic_consistency(_encode(talker, answers), np.stack(given))
    np.testing.assert_allclose([a.consistency for a in answers], expected, rtol=1e-5)

    users = talker.elm.catalog.users.embeddings["behavioral"].astype(np.float64)
    between_users = talker.interpolate(1, 2, 0.25, task="user_profile")
    mixed = 0.75 * users[1] + 0.25 * users[2]
    np.testing.assert_allclose(generations[1], mixed[None], rtol=1e-6)
    assert between_users[0].metric == "bc_ndcg"
    np.testing.assert_allclose(between_users[0].consistency, _user_ndcg(talker, between_users, [mixed])[0], rtol=1e-6)


def test_cav_moves_movies_in_sc_and_users_in_predicted_ratings(talker, generations):
    alphas = [0.0, 1.0, -2.0]
    movie = talker.cav(103, "funny", alphas)
    c = talker.cavs["semantic"]["funny"]
    moved = talker.elm.catalog.movies.embeddings["semantic"][3] + np.array(alphas)[:, None] * c.gap * c.direction
    _given(generations, moved)
    np.testing.assert_allclose(
        [a.consistency for a in movie], metrics.semantic_consistency(_encode(talker, movie), moved), rtol=1e-5
    )
    assert movie[1].inputs["concept"] == "funny" and movie[1].inputs["cav_accuracy"] == c.accuracy

    user = talker.cav(3, "funny", [0.0, 2.0], task="user_profile")
    b = talker.cavs["behavioral"]["funny"]
    moved = talker.elm.catalog.users.embeddings["behavioral"][3] + np.array([[0.0], [2.0]]) * b.gap * b.direction
    np.testing.assert_allclose(generations[1], moved, rtol=1e-6, atol=1e-6)
    assert {a.metric for a in user} == {"bc_ndcg"}
    np.testing.assert_allclose([a.consistency for a in user], _user_ndcg(talker, user, moved), rtol=1e-5)


def test_compare_asks_a_pair_task_about_two_points_and_scores_their_mean(talker, monkeypatch):
    calls = []
    real = query.generate_elm_text

    def recorded(*args, **kwargs):
        calls.append([(q.vectors, q.spaces) for q in args[3]])
        return real(*args, **kwargs)

    monkeypatch.setattr(query, "generate_elm_text", recorded)
    semantic = talker.elm.catalog.movies.embeddings["semantic"]
    raw = semantic[4] + 0.1
    answers = talker.compare([(100, 102), ("Movie 3 (1983)", raw.tolist())])
    assert len(calls) == 1 and [spaces for _, spaces in calls[0]] == [("semantic", "semantic")] * 2
    for (given, _), pair in zip(calls[0], [(semantic[0], semantic[2]), (semantic[3], raw)]):
        np.testing.assert_allclose(np.stack(given), np.stack(pair), rtol=1e-6, atol=1e-6)
    assert answers[0].template == tasks_lib.registry()["similarities"].template
    assert answers[0].subject == "Movie 0 (1980) [100] & Movie 2 (1982) [102]"
    assert answers[1].inputs == {"a": {"id": 103, "name": "Movie 3 (1983)"}, "b": {"vector": "pairs[1][1]"}}
    means = np.stack([(semantic[0] + semantic[2]) / 2, (semantic[3] + raw) / 2]).astype(np.float64)
    expected = metrics.semantic_consistency(_encode(talker, answers), means)
    np.testing.assert_allclose([a.consistency for a in answers], expected, rtol=1e-5)
    (free,) = talker.compare([(100, 101)], prompt="How do {movie1} and {movie2} differ?")
    assert (free.query, free.entity_kind, free.space, free.metric) == ("compare", "movie", "semantic", "sc")


def test_a_movie_outside_the_semantic_space_gets_spearman_over_users(talker):
    (answer,) = talker.describe([104], prompt="Describe {movie}.", space="behavioral")
    catalog = talker.elm.catalog
    users = talker.encode(query.user_texts(catalog, "titles"))
    predicted = catalog.users.embeddings["behavioral"].astype(np.float64) @ catalog.movies.embeddings["behavioral"][4]
    expected = metrics.movie_behavioral_consistency(_encode(talker, [answer]), users, predicted[None])[0]
    assert answer.metric == "bc_spearman" and answer.consistency == pytest.approx(expected)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda t: t.describe([999]), r"targets\[0\]: no movie has the id or exact name 999"),
        (lambda t: t.describe([]), "targets: give at least one"),
        (lambda t: t.describe([np.zeros(5)]), r"targets\[0\]: a vector of 5 dims; movie space 'semantic' has 32"),
        (lambda t: t.describe([100, np.full(32, np.nan)]), r"targets\[1\]: the vector has NaN or Inf"),
        (lambda t: t.profile([[0.0, np.inf, 0.0, 1.0]]), r"targets\[0\]: the vector has NaN or Inf"),
        (lambda t: t.describe([1.5]), r"targets\[0\]: 1.5 is neither an entity id nor a vector"),
        (lambda t: t.profile([100]), r"no user has the id or exact name 100"),
        (lambda t: t.cav(100, "funy", 1.0), r"concept: 'funy' has no CAV in space 'semantic'; known: funny"),
        (lambda t: t.interpolate(100, 101, [0.5, 3.0]), r"alphas: 3 is outside \[-1, 2\] for interpolate; pass force"),
        (lambda t: t.cav(100, "funny", -5.5), r"alphas: -5.5 is outside \[-5, 5\] for cav"),
        (lambda t: t.cav(100, "funny", [float("nan")], force=True), "alphas: must be finite"),
        (lambda t: t.interpolate(100, 101, []), "alphas: give one number"),
        (lambda t: t.interpolate(100, "user 1", 0.5), "b: no movie has the id or exact name 'user 1'"),
        (
            lambda t: t.describe([100], prompt="Compare {movie1} and {movie2}."),
            "prompt: .* has 2 slots; describe fills exactly one",
        ),
        (lambda t: t.describe([100], prompt="Say hello."), "prompt: .* has 0 slots"),
        (lambda t: t.describe([100], task="similarities"), "task: 'similarities' has 2 slots"),
        (lambda t: t.describe([100], task="summary", prompt="{movie}"), "task, prompt: give one of them"),
        (lambda t: t.describe([100], task="sumary"), "task: 'sumary' is unknown"),
        (
            lambda t: t.describe([0], task="summary", entity_kind="user"),
            "entity_kind: task 'summary' takes 'movie', not 'user'",
        ),
        (lambda t: t.describe([100], task="summary", space="behavioral"), "space: task 'summary' takes 'semantic'"),
        (lambda t: t.describe([100], prompt="Describe {it}."), r"entity_kind: are \['it'\] movies or users"),
        (lambda t: t.compare([]), r"pairs: give a list of pairs \(a, b\)"),
        (lambda t: t.compare([(100,)]), r"pairs: give a list of pairs \(a, b\)"),
        (lambda t: t.compare((100, 101)), r"pairs: give a list of pairs \(a, b\)"),
        (lambda t: t.compare([(100, 999)]), r"pairs\[0\]\[1\]: no movie has the id or exact name 999"),
        (lambda t: t.compare([(100, 101)], task="summary"), "task: 'summary' has 1 slots; compare fills exactly 2"),
        (lambda t: t.compare([(100, 101)], prompt="Is {movie} good?"), "prompt: .* has 1 slots; compare fills"),
        (
            lambda t: t.describe([100], prompt="Describe {movie}.", space="genre"),
            "space: the ELM has no adapter for 'genre'",
        ),
        (
            lambda t: t.describe([0], prompt="Describe {user}.", space="semantic"),
            "space: users have no 'semantic' embeddings",
        ),
        (lambda t: t.describe([100], entity_kind="film"), "entity_kind: 'film' is unknown"),
    ],
)
def test_bad_input_is_refused_naming_the_field_before_generating(talker, generations, call, message):
    with pytest.raises(ValueError, match=message):
        call(talker)
    assert generations == []


def test_a_shared_title_asks_for_an_id(talker, generations, monkeypatch):
    """MovieLens has titles shared by several movies (Emma (1996)); saying "no movie has" that name misleads."""
    names = list(talker.elm.catalog.movies.names)
    names[2] = names[1]
    monkeypatch.setitem(talker._lookup, "movie", query._lookup(talker.elm.catalog.movies.ids.tolist(), names))
    message = rf"targets\[0\]: 2 movies are named '{re.escape(names[1])}'; give an id \(101, 102\)"
    with pytest.raises(ValueError, match=message):
        talker.describe([names[1]])
    assert generations == []


def test_a_cav_without_a_held_out_accuracy_is_written_as_null(talker, monkeypatch):
    c = talker.cavs["semantic"]["funny"]
    monkeypatch.setitem(talker.cavs["semantic"], "funny", dataclasses.replace(c, accuracy=float("nan")))
    (answer,) = talker.cav(100, "funny", 1.0)
    assert answer.inputs["cav_accuracy"] is None


def test_force_allows_a_far_alpha(talker):
    (answer,) = talker.cav(100, "funny", 8.0, force=True)
    assert answer.inputs["alpha"] == 8.0 and answer.consistency is not None


def test_settings_refuse_a_negative_ndcg_k():
    with pytest.raises(ValueError, match="ndcg_k must be >= 0"):
        query.QuerySettings(ndcg_k=-1)


def test_load_vectors_reads_npy_and_json_and_names_the_file(tmp_path):
    np.save(tmp_path / "one.npy", np.arange(4.0))
    (tmp_path / "two.json").write_text("[[1, 2], [3, 4]]")
    (tmp_path / "ragged.json").write_text("[[1, 2], [3]]")
    assert query.load_vectors(tmp_path / "one.npy").shape == (1, 4)
    np.testing.assert_array_equal(query.load_vectors(tmp_path / "two.json"), [[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="ragged.json: expected a list of numbers"):
        query.load_vectors(tmp_path / "ragged.json")
    with pytest.raises(FileNotFoundError, match="missing.npy does not exist"):
        query.load_vectors(tmp_path / "missing.npy")
    (tmp_path / "cut.npy").write_bytes((tmp_path / "one.npy").read_bytes()[:20])
    with pytest.raises(ValueError, match="vector file .*cut.npy: not a readable numeric .npy array"):
        query.load_vectors(tmp_path / "cut.npy")


def _query(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "elm_jax.main", "--config=configs/default.py:job=query", *args],
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_query_job_moves_a_user_along_a_cav_and_writes_jsonl(tmp_path):
    """The CLI on a prepared tiny workdir with fresh adapters (query.untrained): the job's wiring, not training."""
    work, args = fixtures.tiny_run(tmp_path)
    args += [
        "--config.targets.tasks=('summary','user_profile')",
        "--config.targets.per_task=2",
        "--config.targets.test_per_task=1",
        "--config.elm.adapter.hidden_dim=16",
        "--config.query.untrained=True",
        "--config.query.kind=cav",
        "--config.query.task=user_profile",
        "--config.query.concept=playful",
        "--config.query.max_new_tokens=4",
        "--config.query.name=playful-user",
    ]
    bad = _query(*args, "--config.query.entities=('5',)", "--config.query.alphas=(0.0,9.0)")
    assert (
        bad.returncode == 2 and "alphas: 9 is outside [-5, 5] for cav" in bad.stderr and "Traceback" not in bad.stderr
    )
    odd = _query(*args, "--config.query.kind=compare", "--config.query.entities=('1','2','3')")
    assert odd.returncode == 2 and "compare takes pairs" in odd.stderr
    assert not work.exists() or not any(work.iterdir())

    ok = _query(*args, "--config.query.entities=('5',)", "--config.query.alphas=(0.0,1.0)")
    assert ok.returncode == 0, ok.stderr[-4000:]
    assert "untrained adapters" in ok.stdout and "bc_ndcg" in ok.stdout
    rows = [json.loads(line) for line in (work / "queries" / "playful-user.jsonl").read_text().splitlines()]
    assert [r["inputs"]["alpha"] for r in rows] == [0.0, 1.0]
    assert {(r["query"], r["entity_kind"], r["space"], r["metric"]) for r in rows} == {
        ("cav", "user", "behavioral", "bc_ndcg")
    }
    assert all(r["inputs"]["target"]["id"] == 5 and r["inputs"]["concept"] == "playful" for r in rows)
