"""Bring-your-own folders: a catalogue round-trips exactly, and every bad input names its file and line or field."""

import json
import pathlib
import re
import shutil

import numpy as np
import pytest
import scipy.sparse as sp

from elm_jax.data import build, folder
from elm_jax.data.catalog import Catalog, EntityTable, fingerprint


def _catalog(with_users: bool = True) -> Catalog:
    rng = np.random.default_rng(0)
    movies = EntityTable(
        "movie",
        np.array([f"m{i}" for i in range(30)]),
        [f'Film {i}, "quoted" (2001)' for i in range(30)],
        {
            "semantic": rng.standard_normal((30, 8)).astype(np.float32),
            "behavioral": rng.standard_normal((30, 4)).astype(np.float32),
        },
        [f"A plot, number {i}.\nSecond line." for i in range(30)],
    )
    n_users = 20 if with_users else 0
    users = EntityTable(
        "user",
        np.arange(100, 100 + n_users),
        [f"user {i}" for i in range(n_users)],
        {"behavioral": rng.standard_normal((n_users, 4)).astype(np.float32)} if with_users else {},
    )
    stars = rng.integers(1, 11, (n_users, 30)) / 2 * (rng.random((n_users, 30)) < 0.4)
    stars[:1, 0] = 0.1  # a value float32 cannot hold exactly
    test = {"movie": np.arange(0, 30, 5), "user": np.array([3, 7]) if with_users else np.zeros(0, np.int64)}
    tags = {"funny": [1, 2, 3, 9], "laugh, out loud": [4]}
    return Catalog(movies, users, sp.csr_matrix(stars), test, tags)


def _assert_same(a: Catalog, b: Catalog) -> None:
    for ta, tb in ((a.movies, b.movies), (a.users, b.users)):
        assert ta.ids.tolist() == tb.ids.tolist() and ta.names == tb.names and ta.texts == tb.texts
        assert set(ta.embeddings) == set(tb.embeddings)
        for space in ta.embeddings:
            np.testing.assert_array_equal(ta.embeddings[space], tb.embeddings[space])
    assert (a.ratings != b.ratings).nnz == 0 and a.ratings.shape == b.ratings.shape
    assert {k: v.tolist() for k, v in a.test.items()} == {k: v.tolist() for k, v in b.test.items()}
    assert {k: list(v) for k, v in a.tags.items()} == {k: list(v) for k, v in b.tags.items()}
    assert fingerprint(a) == fingerprint(b)


@pytest.mark.parametrize("with_users", [True, False])
def test_a_catalogue_round_trips(tmp_path, with_users):
    catalog = _catalog(with_users)
    out = folder.write_folder(catalog, tmp_path / "mine")
    assert (out / "users").is_dir() == with_users and (out / "ratings.csv").is_file() == with_users
    back = folder.read_folder(out)
    _assert_same(catalog, back)
    assert back.movies.ids.dtype.kind == "U" and back.users.ids.dtype == np.int64


def test_without_split_json_the_split_is_seeded_like_build(tmp_path):
    out = folder.write_folder(_catalog(), tmp_path / "mine")
    (out / "split.json").unlink()
    first = folder.read_folder(out, test_movies=0.2, test_users=5, seed=4)
    rng = np.random.default_rng(4)
    assert first.test["movie"].tolist() == build.random_split(30, 0.2, rng).tolist()
    assert first.test["user"].tolist() == build.random_split(20, 5, rng).tolist()
    assert fingerprint(folder.read_folder(out, test_movies=0.2, test_users=5, seed=4)) == fingerprint(first)
    with pytest.raises(ValueError, match="users: a test split of 20 .* data.catalog.test_users"):
        folder.read_folder(out, test_users=20)


def test_writing_never_clobbers_or_leaves_half_a_folder(tmp_path, monkeypatch):
    out = folder.write_folder(_catalog(), tmp_path / "mine")
    with pytest.raises(ValueError, match="already exists"):
        folder.write_folder(_catalog(), out)

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", disk_full)
    with pytest.raises(OSError, match="disk full"):
        folder.write_folder(_catalog(), tmp_path / "other")
    with pytest.raises(OSError, match="disk full"):
        folder.write_folder(_catalog(False), out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    _assert_same(folder.read_folder(out), _catalog())  # the old folder is intact


def _lines(path: pathlib.Path, edit) -> None:
    lines = path.read_text().splitlines()
    edit(lines)
    path.write_text("\n".join(lines) + "\n")


def _set(path: pathlib.Path, line: int, **fields) -> None:
    def edit(lines):
        row = json.loads(lines[line - 1])
        row.update(fields)
        lines[line - 1] = json.dumps({k: v for k, v in row.items() if v is not None})

    _lines(path, edit)


def _npy(path: pathlib.Path, edit) -> None:
    np.save(path, edit(np.load(path)))


def _nan_row(m):
    m = m.copy()
    m[2, 1] = np.nan
    return m


def _csv_row(path: pathlib.Path, text: str, at: int | None = None) -> None:
    _lines(path, lambda lines: lines.insert(len(lines) if at is None else at, text))


M, U = "movies/entities.jsonl", "users/entities.jsonl"
BAD = {
    "no folder": (lambda r: shutil.rmtree(r), FileNotFoundError, "data folder .*mine does not exist"),
    "no entities": (lambda r: (r / M).unlink(), FileNotFoundError, "movies/entities.jsonl does not exist"),
    "bad json": (
        lambda r: _lines(r / M, lambda ls: ls.insert(2, "{oops")),
        ValueError,
        "entities.jsonl:3: invalid JSON",
    ),
    "not an object": (
        lambda r: _lines(r / M, lambda ls: ls.insert(0, "[1]")),
        ValueError,
        "entities.jsonl:1: expected",
    ),
    "typo field": (
        lambda r: _set(r / M, 2, titel="x"),
        ValueError,
        r"entities.jsonl:2: unknown field\(s\) \['titel'\]",
    ),
    "no name": (lambda r: _set(r / M, 4, name=None), ValueError, r"entities.jsonl:4: missing field\(s\) \['name'\]"),
    "empty name": (lambda r: _set(r / M, 5, name=" "), ValueError, "entities.jsonl:5: name ' ' is not a non-empty"),
    "empty text": (lambda r: _set(r / M, 6, text=""), ValueError, "entities.jsonl:6: text '' is not a non-empty"),
    "some texts": (lambda r: _set(r / M, 7, text=None), ValueError, "entities.jsonl:7: no text, but other lines"),
    "duplicate id": (lambda r: _set(r / M, 9, id="m1"), ValueError, "entities.jsonl:9: duplicate id 'm1' .*line 2"),
    "float id": (lambda r: _set(r / U, 3, id=1.5), ValueError, "users/entities.jsonl:3: id 1.5 is neither"),
    "huge id": (lambda r: _set(r / U, 3, id=2**63), ValueError, "users/entities.jsonl:3: id 9223372036854775808 does"),
    "mixed ids": (lambda r: _set(r / U, 2, id="u"), ValueError, "users/entities.jsonl:2: id 'u' and line 1's id 100"),
    "empty file": (lambda r: (r / U).write_text("\n"), ValueError, "users/entities.jsonl: no user entities"),
    "nan": (
        lambda r: _npy(r / "movies/semantic.npy", _nan_row),
        ValueError,
        r"semantic.npy: row 2 \(id 'm2'\) has NaN",
    ),
    "inf as f32": (
        lambda r: _npy(r / "users/behavioral.npy", lambda m: np.where(np.eye(20, 4) > 0, 1e300, m.astype(np.float64))),
        ValueError,
        r"users/behavioral.npy: row 0 \(id 100\) has NaN or Inf",
    ),
    "rows": (lambda r: _npy(r / "movies/semantic.npy", lambda m: m[:-1]), ValueError, "semantic.npy: 29 rows but .*30"),
    "1-d": (lambda r: _npy(r / "movies/semantic.npy", lambda m: m[:, 0]), ValueError, r"semantic.npy: shape \(30,\)"),
    "ints": (lambda r: _npy(r / "movies/semantic.npy", lambda m: m.astype(int)), ValueError, "semantic.npy: dtype int"),
    "not npy": (lambda r: (r / "movies/semantic.npy").write_text("x"), ValueError, "semantic.npy: not a readable"),
    "dims": (
        lambda r: _npy(r / "users/behavioral.npy", lambda m: m[:, :3]),
        ValueError,
        "movies/behavioral.npy has 4 dims but .*users/behavioral.npy has 3",
    ),
    "no spaces": (
        lambda r: [p.unlink() for p in (r / "movies").glob("*.npy")],
        ValueError,
        r"movies: no <space>.npy embeddings",
    ),
    "misnamed kind": (lambda r: (r / "users").rename(r / "user"), ValueError, "user: entity folders are named movies"),
    "unknown movie": (
        lambda r: _csv_row(r / "ratings.csv", "101,m99,4"),
        ValueError,
        "ratings.csv: row .*'m99' is not",
    ),
    "unknown user": (lambda r: _csv_row(r / "ratings.csv", "7,m1,4", 1), ValueError, "ratings.csv: row 1: userId 7 is"),
    "text user": (lambda r: _csv_row(r / "ratings.csv", "x,m1,4", 1), ValueError, "ratings.csv: row 1: userId 'x'"),
    "nan rating": (lambda r: _csv_row(r / "ratings.csv", "100,m1,nan", 1), ValueError, "ratings.csv: row 1: rating is"),
    "zero rating": (lambda r: _csv_row(r / "ratings.csv", "100,m1,0", 1), ValueError, "row 1: rating 0.0 is not > 0"),
    "twice": (
        lambda r: _csv_row(r / "ratings.csv", (r / "ratings.csv").read_text().splitlines()[3]),
        ValueError,
        r"ratings.csv: row \d+: user \d+ rates movie 'm\d+' again \(first at row 3\)",
    ),
    "columns": (
        lambda r: _lines(r / "ratings.csv", lambda ls: ls.__setitem__(0, "userId,movieId,stars")),
        ValueError,
        r"ratings.csv: missing column\(s\) rating",
    ),
    "no users": (
        lambda r: (shutil.rmtree(r / "users"), (r / "split.json").write_text('{"movie": ["m1"]}')),
        ValueError,
        "ratings.csv: ratings need users",
    ),
    "unknown tag id": (lambda r: _csv_row(r / "movies/tags.csv", "m77,funny"), ValueError, "tags.csv: row .*'m77'"),
    "empty tag": (lambda r: _csv_row(r / "movies/tags.csv", "m1, "), ValueError, r"tags.csv: row \d+: empty tag"),
    "user tags": (lambda r: (r / "users/tags.csv").write_text("id,tag\n"), ValueError, "movies only"),
    "split json": (lambda r: (r / "split.json").write_text("{"), ValueError, "split.json: invalid JSON"),
    "split kinds": (
        lambda r: (r / "split.json").write_text('{"movie": ["m1"]}'),
        ValueError,
        r"split.json: expected an object .* \['movie', 'user'\]; got \['movie'\]",
    ),
    "split id": (
        lambda r: (r / "split.json").write_text('{"movie": ["m1", "m404"], "user": [100]}'),
        ValueError,
        r"split.json: movie\[1\] = 'm404' is not an id in .*movies/entities.jsonl",
    ),
    "split repeat": (
        lambda r: (r / "split.json").write_text('{"movie": ["m1"], "user": [100, 101, 100]}'),
        ValueError,
        r"split.json: user\[2\] = 100 repeats user\[0\]",
    ),
    "split all": (
        lambda r: (r / "split.json").write_text(json.dumps({"movie": [f"m{i}" for i in range(30)], "user": [100]})),
        ValueError,
        "split.json: 'movie' holds 30 of 30 movies for test",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_names_the_file_and_place(tmp_path, case):
    edit, error, message = BAD[case]
    root = folder.write_folder(_catalog(), tmp_path / "mine")
    edit(root)
    with pytest.raises(error, match=message):
        folder.read_folder(root)


def test_texts_are_optional(tmp_path):
    root = folder.write_folder(_catalog(), tmp_path / "mine")
    _lines(root / M, lambda ls: ls.__setitem__(slice(None), [re.sub(r', "text": ".*"', "", x) for x in ls]))
    assert folder.read_folder(root).movies.texts is None


def test_prepare_export_fills_an_empty_folder_and_says_why_it_refuses_another(tmp_path):
    from elm_jax.data import prepare

    (tmp_path / "empty").mkdir()
    assert prepare.export(_catalog(), tmp_path / "empty")
    assert not prepare.export(_catalog(), tmp_path / "empty")  # already holds it: nothing written
    with pytest.raises(ValueError, match="holds another catalogue"):
        prepare.export(_catalog(with_users=False), tmp_path / "empty")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"notes exists and is not a catalogue folder \(.*movies/entities.jsonl"):
        prepare.export(_catalog(), tmp_path / "notes")
