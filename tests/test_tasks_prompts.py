"""Tasks as data, prompt encoding with embedding slots, and the catalog's input checks."""

import json

import numpy as np
import pytest
import scipy.sparse as sp

from elm_jax.data import tasks as tasks_lib
from elm_jax.data.catalog import Catalog, EntityTable
from elm_jax.data.prompts import encode_prompt, pad_prompts, slot_names
from elm_jax.tokenizer import Tokenizer
from tests import fixtures

TABLE2 = [
    "summary",
    "positive_review",
    "negative_review",
    "neutral_review",
    "five_pos_char",
    "five_neg_char",
    "long_description",
    "funnier",
    "sadder",
    "scarier",
    "improve",
    "movie_to_viewer",
    "pitch",
    "criticize",
    "convince1",
    "convince2",
    "convince3",
    "dissuade1",
    "dissuade2",
    "similarities",
    "interpolation",
    "why_like_nn",
    "diff_than_nn",
    "common_with_nn",
]


def test_registry_holds_the_papers_24_movie_tasks_and_the_user_profile():
    registry = tasks_lib.registry()
    assert sorted(t.name for t in tasks_lib.MOVIE_TASKS) == sorted(TABLE2)
    assert registry["user_profile"].entity == "user" and registry["user_profile"].spaces == {"user": "behavioral"}
    pairs = {t.name: t.pairing for t in tasks_lib.MOVIE_TASKS if t.group == "pair"}
    assert pairs == {
        "interpolation": "random",
        "similarities": "random",
        "why_like_nn": "nearest",
        "diff_than_nn": "nearest",
        "common_with_nn": "nearest",
    }
    for task in registry.values():
        assert "name" not in task.template  # the ELM prompt never asks to avoid a name it was never told
        assert "Do not use" in task.teacher_template or task.entity == "user"


def test_select_expands_groups_and_rejects_unknown_names():
    registry = tasks_lib.registry()
    assert len(tasks_lib.select(["movie"], registry)) == 24
    assert [t.name for t in tasks_lib.select(["user", "summary", "user"], registry)] == ["user_profile", "summary"]
    with pytest.raises(ValueError, match="'sumary' is unknown"):
        tasks_lib.select(["sumary"], registry)


def test_task_file_adds_tasks_and_names_bad_entries(tmp_path):
    good = [
        {
            "name": "haiku",
            "template": "Write a haiku about the movie {movie}.",
            "teacher_template": "Write a haiku about the movie {movie}. Do not use its name.",
            "spaces": {"movie": "semantic"},
        }
    ]
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps(good))
    registry = tasks_lib.registry(tasks_lib.load_task_file(path))
    assert registry["haiku"].slots == ["movie"] and len(registry) == 26
    bad_cases = [
        ([{**good[0], "spaces": {"film": "semantic"}}], "do not match spaces"),
        ([{**good[0], "colour": "red"}], "unknown fields \\['colour'\\]"),
        ([{**good[0], "pairing": "nearest"}], "pairing"),
        ([{**good[0], "teacher_template": "A haiku about {title}."}], r"entry 0: task 'haiku': teacher_template slots"),
        ([3], "entry 0: expected an object"),
        ([{**good[0], "teacher_template": "A haiku."}], r"teacher_template slots \[\] must include \['movie'\]"),
        ({"name": "x"}, "expected a JSON list"),
    ]
    for rows, message in bad_cases:
        path.write_text(json.dumps(rows))
        with pytest.raises(ValueError, match=message):
            tasks_lib.load_task_file(path)
    path.write_text("[{")
    with pytest.raises(ValueError, match=f"task file {path}: invalid JSON"):
        tasks_lib.load_task_file(path)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        tasks_lib.load_task_file(tmp_path / "nope.json")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return Tokenizer.from_dir(fixtures.write_hf_checkpoint(tmp_path_factory.mktemp("tok"), "llama"))


@pytest.mark.parametrize("k", [1, 3])
def test_encode_prompt_places_k_soft_tokens_per_slot(tokenizer, k):
    template = "The cat sat on {movie1} and the dog sat on {movie2}."
    prompt = encode_prompt(tokenizer, template, tokens_per_slot=k)
    assert prompt.slots == ["movie1", "movie2"] == slot_names(template)
    soft = np.array(prompt.soft_index)
    assert sorted(soft[soft >= 0].tolist()) == list(range(2 * k))
    first, second = np.flatnonzero(soft == 0)[0], np.flatnonzero(soft == k)[0]
    assert (soft[first : first + k] == np.arange(k)).all() and (soft[second : second + k] == np.arange(k, 2 * k)).all()
    text = [t for t, s in zip(prompt.tokens, prompt.soft_index) if s < 0]
    # The space before each slot belongs to the name the vector replaces, so it is dropped.
    assert tokenizer.decode(text) == "The cat sat on and the dog sat on."
    assert tokenizer.decode(prompt.tokens[:first]) == "The cat sat on"


def test_encode_prompt_inside_a_chat_template(tokenizer):
    prompt = encode_prompt(tokenizer, "What is the capital of {movie}?", chat=True)
    assert prompt.slots == ["movie"]
    rendered = tokenizer.decode(prompt.tokens, skip_special_tokens=False)
    assert rendered.startswith("<|im_start|>user\nWhat is the capital of")
    assert rendered.endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="repeats a slot"):
        encode_prompt(tokenizer, "{movie} and {movie}")


def test_pad_prompts_left_pads_and_checks_length(tokenizer):
    prompts = [encode_prompt(tokenizer, "The cat {movie}."), encode_prompt(tokenizer, "{movie}")]
    batch = pad_prompts(prompts, pad_id=0, length=12, rows=3)
    assert batch["tokens"].shape == (3, 12) and batch["mask"].sum(1).tolist() == [len(prompts[0].tokens), 1, 0]
    assert batch["soft_index"][1, -1] == 0 and (batch["soft_index"][2] == -1).all()
    with pytest.raises(ValueError, match="prompt 0 has"):
        pad_prompts(prompts, pad_id=0, length=2, rows=2)


def _table(kind="movie", n=4, **changes):
    rng = np.random.default_rng(0)
    fields = dict(
        kind=kind,
        ids=np.arange(n),
        names=[f"{kind} {i}" for i in range(n)],
        embeddings={"semantic": rng.standard_normal((n, 3)).astype(np.float32)},
    )
    return EntityTable(**{**fields, **changes})


def test_catalog_checks_its_inputs():
    with pytest.raises(ValueError, match="row 2 \\(id 2\\) has NaN"):
        _table(embeddings={"semantic": np.array([[0.0], [1.0], [np.nan], [2.0]])})
    with pytest.raises(ValueError, match="shape \\(3, 2\\)"):
        _table(embeddings={"semantic": np.zeros((3, 2))})
    with pytest.raises(ValueError, match="not unique"):
        _table(ids=np.array([1, 1, 2, 3]))
    with pytest.raises(ValueError, match="3 names for 4 ids"):
        _table(names=["a", "b", "c"])
    movies, users = _table(), _table("user", 2)
    with pytest.raises(ValueError, match="expected \\(users, movies\\) = \\(2, 4\\)"):
        Catalog(movies, users, sp.csr_matrix((4, 2)), {"movie": np.array([0])})
    with pytest.raises(ValueError, match="unknown movie id 9"):
        movies.index([1, 9])


def test_liked_disliked_orders_by_rating():
    ratings = sp.csr_matrix(np.array([[5, 1, 3, 4, 2, 0, 4.5]]))
    catalog = Catalog(_table(n=7), _table("user", 1), ratings, {"movie": np.array([0])})
    liked, disliked = catalog.liked_disliked(0, n=2)
    assert liked == [0, 6] and disliked == [1, 4]
    # Fewer than 2n ratings: the top and the bottom half (a liked movie is never also disliked).
    liked, disliked = catalog.liked_disliked(0, n=5)
    assert liked == [0, 6, 3] and disliked == [1, 4, 2]
    liked, disliked = catalog.liked_disliked(0, n=2, among=np.array([1, 2, 3, 6]))  # e.g. training movies only
    assert liked == [6, 3] and disliked == [1, 2]


def test_encode_targets_ends_whole_targets_and_leaves_cut_ones_open(tokenizer):
    from elm_jax.data.targets import Target
    from elm_jax.data.train_batches import encode_targets

    catalog = Catalog(_table(), _table("user", 1), sp.csr_matrix((1, 4)), {"movie": np.array([0])})
    task = tasks_lib.Task("t", "The cat sat on {movie}.", "Describe {movie}.", {"movie": "semantic"})
    short, long = Target("t", ("1",), "The dog sat."), Target("t", ("2",), "The cat sat on the mat, and the dog sat.")
    prompt = len(encode_prompt(tokenizer, task.template).tokens)
    end = tokenizer.stop_ids[0]
    encode = lambda targets, max_len: encode_targets(
        catalog, {"t": task}, targets, tokenizer, ["semantic"], tokens_per_slot=1, chat=False, max_len=max_len
    )
    room = len(tokenizer.encode(" The dog sat.", bos=False)) + 1  # the short target and its end token just fit
    whole, cut = encode([short, long], prompt + room)
    assert whole.tokens[-1] == end and whole.target_start == prompt and whole.task == "t"
    assert tokenizer.decode(whole.tokens[prompt:-1]) == " The dog sat."
    # Cut to max_len with no end token: a cut target must not teach the model to stop mid-sentence.
    assert len(cut.tokens) == prompt + room and end not in cut.tokens[prompt:].tolist()
    assert tokenizer.decode(cut.tokens[prompt:]).startswith(" The cat sat")
    np.testing.assert_array_equal(cut.vectors[0], catalog.movies.embeddings["semantic"][2])
    with pytest.raises(ValueError, match="its prompt has"):
        encode([short], prompt + 1)
