"""The embedded default catalogue: MovieLens layout, determinism, atomic writes, and the signal it must carry."""

import collections
import csv
import dataclasses
import datetime
import re

import numpy as np
import pytest

from elm_jax.data import synthetic

SMALL = synthetic.SyntheticConfig(seed=7, n_movies=300, n_users=200, ratings_per_user_mean=30, ratings_per_user_min=10)
FILES = ("movies.csv", "ratings.csv", "tags.csv", "plots.csv", "ground_truth.npz", "README.txt")
HEADERS = {
    "movies.csv": ["movieId", "title", "genres"],
    "ratings.csv": ["userId", "movieId", "rating", "timestamp"],
    "tags.csv": ["userId", "movieId", "tag", "timestamp"],
    "plots.csv": ["movieId", "plot"],
}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return synthetic.write_catalogue(tmp_path_factory.mktemp("syn") / "catalogue", SMALL)


@pytest.fixture(scope="module")
def tables(written):
    out = {}
    for name, header in HEADERS.items():
        with open(written / name, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == header, name
        assert all(len(r) == len(header) for r in rows[1:]), name
        out[name] = rows[1:]
    return out


@pytest.fixture(scope="module")
def truth(written):
    return synthetic.load_ground_truth(written)


def _ratings(tables):
    r = tables["ratings.csv"]
    return (
        np.array([int(x[0]) for x in r]),
        np.array([int(x[1]) for x in r]),
        np.array([float(x[2]) for x in r]),
        np.array([int(x[3]) for x in r]),
    )


def test_movielens_layout(written, tables):
    assert sorted(p.name for p in written.iterdir()) == sorted(FILES)
    header_line = (written / "movies.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header_line == "movieId,title,genres"  # exact bytes, no BOM, no quoting
    movies = tables["movies.csv"]
    assert len(movies) == SMALL.n_movies
    for _, title, genres in movies:
        assert re.fullmatch(r".+ \((19|20)\d\d\)", title), title
        parts = genres.split("|")
        assert parts == sorted(parts) and set(parts) <= set(synthetic.GENRES), genres
    assert any("," in t for _, t, _ in movies) and any('"' in t for _, t, _ in movies)  # quoting is exercised
    readme = (written / "README.txt").read_text()
    assert "SYNTHETIC" in readme and f"seed {SMALL.seed}" in readme


def test_ids_are_consistent(tables, truth):
    movie_ids = [int(m) for m, _, _ in tables["movies.csv"]]
    assert movie_ids == sorted(set(movie_ids)) == truth["movie_ids"].tolist()
    assert [int(m) for m, _ in tables["plots.csv"]] == movie_ids
    users, movies, _, _ = _ratings(tables)
    assert set(movies.tolist()) <= set(movie_ids)
    assert set(users.tolist()) == set(truth["user_ids"].tolist()) == set(range(1, SMALL.n_users + 1))
    assert len(set(zip(users.tolist(), movies.tolist()))) == len(users)  # one rating per user and movie
    rated = set(zip(users.tolist(), movies.tolist()))
    assert all((int(u), int(m)) in rated for u, m, _, _ in tables["tags.csv"])  # users tag what they rated
    assert truth["movie_attributes"].shape == (SMALL.n_movies, len(SMALL.attributes))
    assert truth["user_taste"].shape == (SMALL.n_users, len(SMALL.attributes))
    assert truth["attributes"].tolist() == list(SMALL.attributes)


def test_deterministic_by_seed(written, tmp_path):
    again = synthetic.write_catalogue(tmp_path / "again", SMALL)
    for name in FILES:
        assert (again / name).read_bytes() == (written / name).read_bytes(), name
    other = synthetic.write_catalogue(tmp_path / "other", dataclasses.replace(SMALL, seed=SMALL.seed + 1))
    for name in ("movies.csv", "ratings.csv", "plots.csv", "tags.csv"):
        assert (other / name).read_bytes() != (written / name).read_bytes(), name


def test_titles_unique_and_plots_varied(tables):
    titles = [t for _, t, _ in tables["movies.csv"]]
    assert len({t.rsplit(" (", 1)[0] for t in titles}) == len(titles)
    plots = [p for _, p in tables["plots.csv"]]
    sentences = [re.split(r"(?<=\.) (?=[A-Z])", p) for p in plots]
    assert all(3 <= len(s) <= 6 for s in sentences)
    firsts = collections.Counter(s[0] for s in sentences)
    assert sum(n for n in firsts.values() if n > 1) < 0.05 * len(plots)
    assert len({w for p in plots for w in re.findall(r"[a-z'-]+", p.lower())}) > 800


def test_plots_carry_the_attributes(tables, truth):
    """A linear model on bag-of-words predicts held-out attributes: a sentence encoder has the signal to find."""
    words = [re.findall(r"[a-z'-]+", p.lower()) for _, p in tables["plots.csv"]]
    vocab = {w: i for i, w in enumerate(sorted({w for ws in words for w in ws}))}
    x = np.zeros((len(words), len(vocab)))
    for i, ws in enumerate(words):
        np.add.at(x[i], [vocab[w] for w in ws], 1.0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = truth["movie_attributes"]
    train, test = slice(0, 200), slice(200, None)
    xm, ym = x[train].mean(0), y[train].mean(0)
    xc = x[train] - xm
    w = np.linalg.solve(xc.T @ xc + 0.1 * np.eye(len(vocab)), xc.T @ (y[train] - ym))
    pred = (x[test] - xm) @ w + ym
    corr = [np.corrcoef(pred[:, k], y[test][:, k])[0, 1] for k in range(y.shape[1])]
    assert np.mean(corr) > 0.5 and min(corr) > 0.2, np.round(corr, 2)


def test_ratings_scale_popularity_and_time(tables):
    users, movies, stars, times = _ratings(tables)
    assert set(stars.tolist()) <= {x / 2 for x in range(1, 11)}
    assert 3.0 < stars.mean() < 4.0
    counts = np.sort(np.bincount(movies))[::-1]
    assert counts[: SMALL.n_movies // 10].sum() > 0.3 * counts.sum()
    year = {int(m): int(t[-5:-1]) for m, t, _ in tables["movies.csv"]}
    rated_year = [datetime.datetime.fromtimestamp(t, datetime.UTC).year for t in times.tolist()]
    assert all(ry >= year[m] for ry, m in zip(rated_year, movies.tolist()))  # nobody rates an unreleased movie
    assert np.bincount(users).max() > 3 * np.median(np.bincount(users)[1:])  # heavy users exist


def test_ratings_follow_taste(tables, truth):
    users, movies, stars, _ = _ratings(tables)
    row = {m: i for i, m in enumerate(truth["movie_ids"].tolist())}
    affinity = truth["movie_attributes"][[row[m] for m in movies.tolist()]]
    corrs = []
    for u in np.unique(users):
        sel = users == u
        if stars[sel].std() > 0:
            corrs.append(np.corrcoef(stars[sel], affinity[sel] @ truth["user_taste"][u - 1])[0, 1])
    assert np.mean(corrs) > 0.4


def test_tags_follow_attributes(tables, truth):
    row = {m: i for i, m in enumerate(truth["movie_ids"].tolist())}
    attrs = truth["movie_attributes"]
    texts = [t for _, _, t, _ in tables["tags.csv"]]
    assert any(t != t.lower() for t in texts)  # users write tags their own way, like MovieLens users
    assert {"hilarious", "creepy"} & {t.lower() for t in texts}  # synonyms, not only the attribute names
    checked = 0
    for k, name in enumerate(synthetic.ATTRIBUTES):
        variants = {v.lower() for v in synthetic.TAG_VARIANTS[name]}
        tagged = [row[int(m)] for _, m, t, _ in tables["tags.csv"] if t.lower() in variants]
        if len(tagged) >= 10:
            assert attrs[tagged, k].mean() > attrs[:, k].mean() + 0.2, name
            checked += 1
    assert checked >= 10


def _disk_full(*args):
    raise OSError("disk full")


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "_write_npz", _disk_full)
    with pytest.raises(OSError, match="disk full"):
        synthetic.write_catalogue(tmp_path / "cat", SMALL)
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_the_old_catalogue(tmp_path, monkeypatch):
    out = synthetic.write_catalogue(tmp_path / "cat", SMALL)
    before = (out / "ratings.csv").read_bytes()
    monkeypatch.setattr(synthetic, "_write_npz", _disk_full)
    with pytest.raises(OSError):
        synthetic.write_catalogue(out, dataclasses.replace(SMALL, seed=9))
    assert (out / "ratings.csv").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["cat"]


def test_rewrite_replaces(tmp_path):
    out = synthetic.write_catalogue(tmp_path / "cat", SMALL)
    synthetic.write_catalogue(out, dataclasses.replace(SMALL, seed=9))
    assert "seed 9" in (out / "README.txt").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["cat"]


def test_bad_config():
    with pytest.raises(ValueError, match="attributes"):
        synthetic.SyntheticConfig(attributes=("funny", "smelly"))
    with pytest.raises(ValueError, match="rating_years"):
        synthetic.SyntheticConfig(years=(1950, 2024))
