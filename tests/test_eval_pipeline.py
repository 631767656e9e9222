"""The consistency evaluation end to end: examples, conditions, scoring, outputs, resumption."""

import dataclasses
import json

import flax.linen as nn
import jax
import numpy as np
import pytest
import scipy.sparse as sp

from elm_jax import generate as gen
from elm_jax.data import tasks as tasks_lib
from elm_jax.data.catalog import Catalog, EntityTable
from elm_jax.data.examples import build_examples
from elm_jax.encoder import TextEncoder
from elm_jax.eval import pipeline
from elm_jax.models.adapter import AdapterConfig
from elm_jax.models.decoder import Decoder
from elm_jax.models.elm import ELM, ELMConfig
from elm_jax.tokenizer import Tokenizer
from elm_jax.weights import hf
from tests import fixtures

TASKS = ["summary", "interpolation", "why_like_nn", "user_profile"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    encoder = TextEncoder.from_pretrained(fixtures.write_bert_checkpoint(root / "encoder"))
    llm_path = fixtures.write_hf_checkpoint(root / "llm", "llama", seed=3)
    rng = np.random.default_rng(0)
    movies = EntityTable(
        "movie",
        np.array([f"m{i}" for i in range(12)]),
        [f"Movie {i} (19{i + 80})" for i in range(12)],
        {"semantic": encoder.encode(list(fixtures.DESCRIPTIONS))},
        texts=list(fixtures.DESCRIPTIONS),
    )
    users = EntityTable(
        "user",
        np.arange(8),
        [f"user {i}" for i in range(8)],
        {"behavioral": rng.standard_normal((8, 4)).astype(np.float32)},
    )
    dense = rng.integers(1, 6, (8, 12)) * (rng.random((8, 12)) < 0.6)
    catalog = Catalog(movies, users, sp.csr_matrix(dense), {"movie": np.arange(6), "user": np.arange(4)})
    decoder_config = hf.load_config(llm_path)
    elm = ELM(
        ELMConfig(
            decoder_config, (("behavioral", AdapterConfig(4, 32, 16)), ("semantic", AdapterConfig(encoder.dim, 32, 16)))
        )
    )
    dummy = (
        np.zeros((1, 4), np.int32),
        np.zeros((1, 4), np.int32),
        {"behavioral": np.zeros((1, 1, 4)), "semantic": np.zeros((1, 1, encoder.dim))},
        np.zeros((1, 1), np.int32),
    )
    params = nn.unbox(elm.init(jax.random.key(0), *dummy)["params"])
    params["llm"] = hf.load_params(llm_path, decoder_config)
    return catalog, encoder, elm, params, Tokenizer.from_dir(llm_path)


def _run(world, workdir, elm_generate=None, text_generate=None, model=None, **settings):
    catalog, encoder, elm, params, tokenizer = world
    sampling = gen.SamplingConfig(max_new_tokens=4)
    elm_generate = elm_generate or (lambda q: gen.generate_elm_text(elm, params, tokenizer, q, sampling, batch_size=4))
    decoder = Decoder(elm.config.decoder)
    text_generate = text_generate or (
        lambda p: gen.generate_text(decoder, params["llm"], tokenizer, p, sampling, chat=True, batch_size=4)
    )
    tasks = tasks_lib.select(TASKS, tasks_lib.registry())
    defaults = dict(max_examples_per_task=5, chunk_size=3, n_resamples=200)
    return pipeline.evaluate(
        catalog,
        tasks,
        pipeline.EvalSettings(**{**defaults, **settings}),
        elm_generate,
        text_generate,
        encoder.encode,
        tokenizer,
        workdir,
        model,
    )


def test_end_to_end_on_a_tiny_random_model_writes_every_section(world, tmp_path):
    report = _run(world, tmp_path)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written == json.loads(json.dumps(report))
    conditions = {"elm", "zero", "random", "text", "shuffled"}
    assert set(report["tasks"]) == set(TASKS)
    for name, per_condition in report["tasks"].items():
        assert set(per_condition) == conditions
        keys = set(per_condition["elm"])
        assert "bc" in keys
        assert ("sc" in keys) == (name != "user_profile")  # SC lives in the encoder's (semantic) space
        assert ("recall@1" in keys) == (name in ("summary", "user_profile"))  # retrieval for single entities
        for stats in per_condition["elm"].values():
            assert set(stats) >= {"mean", "ci_low", "ci_high", "n"}
    assert set(report["overall"]) == {f"{g}/{c}" for g in ("single", "pair", "user") for c in conditions}
    rows = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * (5 + 5 + 5 + 4)  # 4 generated conditions; 4 test users
    assert {r["condition"] for r in rows} == {"elm", "zero", "random", "text"}


def test_a_perfect_describer_scores_one_and_the_controls_do_not(world, tmp_path):
    catalog = world[0]
    semantic = catalog.movies.embeddings["semantic"]

    def oracle(queries):  # "generates" the ground-truth description of the movie whose vector it was given
        out = []
        for q in queries:
            sims = semantic @ q.vectors[0] if np.any(q.vectors[0]) and q.spaces[0] == "semantic" else None
            out.append(
                fixtures.DESCRIPTIONS[int(np.argmax(sims))] if sims is not None and sims.max() > 0.999 else "lemon"
            )
        return out

    report = _run(world, tmp_path, elm_generate=oracle, text_generate=lambda p: ["lemon"] * len(p))
    summary = report["tasks"]["summary"]
    assert summary["elm"]["sc"]["mean"] == pytest.approx(1.0, abs=1e-5)
    assert summary["elm"]["recall@1"]["mean"] == 1.0 and summary["elm"]["mean_rank"]["mean"] == 1.0
    for control in ("zero", "random", "text", "shuffled"):
        assert summary[control]["sc"]["mean"] < 0.99
        assert summary[control]["recall@1"]["mean"] < 1.0


def test_examples_use_only_test_entities_and_true_nearest_partners(world):
    catalog = world[0]
    registry = tasks_lib.registry()
    nearest = build_examples(catalog, registry["why_like_nn"], "test", 6, 0)
    semantic = catalog.movies.embeddings["semantic"]
    for ex in nearest:
        first, partner = ex.rows
        assert partner != first and {first, partner} <= set(range(6))
        sims = semantic[:6] @ semantic[first]
        sims[first] = -np.inf
        assert partner == int(np.argmax(sims))
    random_pairs = build_examples(catalog, registry["interpolation"], "test", 6, 0)
    assert all(set(ex.rows) <= set(range(6)) and ex.rows[0] != ex.rows[1] for ex in random_pairs)
    assert build_examples(catalog, registry["interpolation"], "test", 6, 0) == random_pairs  # seeded


def test_text_baseline_prompts_name_the_entities(world, tmp_path):
    seen = []
    _run(
        world,
        tmp_path,
        elm_generate=lambda q: ["x"] * len(q),
        text_generate=lambda p: seen.extend(p) or ["x"] * len(p),
        conditions=("elm", "text"),
    )
    summaries = [p for p in seen if p.startswith("Write a long summary of the movie Movie ")]
    assert len(summaries) == 5 and all("Do not use the movie's name" in p for p in summaries)
    profiles = [p for p in seen if p.startswith("In ten bullet points")]
    assert len(profiles) == 4 and all("likes the movies: Movie" in p for p in profiles)


def test_an_interrupted_evaluation_resumes_without_regenerating(world, tmp_path):
    calls = []

    def flaky(queries):
        calls.append(len(queries))
        if len(calls) == 3:
            raise RuntimeError("preempted")
        return ["a cat"] * len(queries)

    with pytest.raises(RuntimeError, match="preempted"):
        _run(world, tmp_path, elm_generate=flaky, text_generate=lambda p: ["a dog"] * len(p))
    assert not (tmp_path / "metrics.json").exists()  # nothing final is written before the end
    done_before = len(calls) - 1
    _run(world, tmp_path, elm_generate=flaky, text_generate=lambda p: ["a dog"] * len(p))
    regenerated = len(calls) - done_before - 1
    total_chunks = sum(3 * ((n + 2) // 3) for n in (5, 5, 5, 4))  # 3 ELM conditions, chunks of 3
    assert regenerated == total_chunks - done_before


def test_another_model_never_reuses_kept_generations(world, tmp_path):
    """Generations are kept per chunk for resumption, keyed by the model too: a retrained ELM regenerates."""
    calls = []

    def counting(queries):
        calls.append(len(queries))
        return ["a cat"] * len(queries)

    text = lambda p: ["a dog"] * len(p)
    first = {"stages": [["stage1", 4]], "untrained": False}
    _run(world, tmp_path, elm_generate=counting, text_generate=text, model=first)
    n = len(calls)
    _run(world, tmp_path, elm_generate=counting, text_generate=text, model=first)
    assert len(calls) == n  # same model: everything reused
    report = _run(
        world, tmp_path, elm_generate=counting, text_generate=text, model={**first, "stages": [["stage1", 8]]}
    )
    assert len(calls) == 2 * n
    assert report["model"]["stages"] == [["stage1", 8]]
    assert json.loads((tmp_path / "metrics.json").read_text())["model"]["untrained"] is False


def test_an_edited_task_or_other_data_never_reuses_kept_generations(world, tmp_path):
    """The chunk keys cover each task's templates and spaces, the prompt settings and the catalogue's content."""
    catalog, encoder, elm, params, tokenizer = world
    calls = []

    def counting(queries):
        calls.append(len(queries))
        return ["a cat"] * len(queries)

    def run(task, data=catalog, **settings):
        defaults = dict(conditions=("elm",), max_examples_per_task=3, n_resamples=10)
        return pipeline.evaluate(
            data,
            [task],
            pipeline.EvalSettings(**{**defaults, **settings}),
            counting,
            None,
            encoder.encode,
            tokenizer,
            tmp_path,
            {"llm": "x"},
        )

    task = tasks_lib.Task("mine", "Summarise {movie}.", "Summarise {movie}.", {"movie": "semantic"})
    run(task)
    run(task)
    assert len(calls) == 1
    run(dataclasses.replace(task, template="Write a poem about {movie}."))
    assert len(calls) == 2
    run(task, tokens_per_slot=2)
    assert len(calls) == 3
    semantic = catalog.movies.embeddings["semantic"] + 0.01
    moved = dataclasses.replace(catalog, movies=dataclasses.replace(catalog.movies, embeddings={"semantic": semantic}))
    run(task, moved)
    assert len(calls) == 4


def test_settings_reject_unknown_conditions_and_empty_sizes():
    with pytest.raises(ValueError, match="conditions \\['vibes'\\]"):
        pipeline.EvalSettings(conditions=("elm", "vibes"))
    with pytest.raises(ValueError, match="max_examples_per_task must be at least 1, got 0"):
        pipeline.EvalSettings(max_examples_per_task=0)


def test_pair_bc_averages_only_the_movies_a_user_rated():
    """A user who rated one movie of a pair 5 stars ranks above one who rated both 3 (not as 2.5 with a 0)."""
    movies = EntityTable("movie", np.arange(2), ["a", "b"], {"semantic": np.eye(2, dtype=np.float32)})
    users = EntityTable("user", np.arange(3), ["u0", "u1", "u2"], {"behavioral": np.zeros((3, 1), np.float32)})
    ratings = sp.csr_matrix(np.array([[5.0, 0.0], [3.0, 3.0], [1.0, 1.0]]))
    catalog = Catalog(movies, users, ratings, {"movie": np.arange(1), "user": np.arange(1)})
    user_embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], np.float32)  # cosine to the text: 1, .8, 0
    scorer = pipeline._Scorer(catalog, pipeline.EvalSettings(), user_embeddings)
    bc = scorer._movie_bc((0, 1), np.array([1.0, 0.0], np.float32), np.random.default_rng(0))
    assert bc == pytest.approx(1.0)
