"""MovieLens loading: ml-25m-style CSV folders and zips, ml-1m .dat files, input checks, and the tfds route."""

import contextlib
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests

from elm_jax.data import movielens
from elm_jax.data.movielens import load_movielens

MOVIES = """movieId,title,genres
1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy
2,"American President, The (1995)",Comedy|Drama|Romance
5,"Movie with ""Quotes"", Part 2 (2001)",Drama
7,No Genre Film (2019),(no genres listed)
"""
RATINGS = """userId,movieId,rating,timestamp
1,1,4.0,964982703
1,2,3.5,964981247
1,7,0.5,964982224
2,5,5.0,1445714835
3,1,2.5,1306463578
"""
TAGS = """userId,movieId,tag,timestamp
2,1,  Pixar ,1445714994
2,5,DARK Comedy,1445714996
3,7,"Funny, ""witty""\",1445715000
"""
GENOME_TAGS = "tagId,tag\n2,action\n1,007\n3,atmospheric\n"
GENOME_SCORES = "movieId,tagId,relevance\n2,1,0.25\n2,2,0.5\n2,3,0.75\n1,3,0.125\n1,1,0.0\n1,2,1.0\n"
PLOTS = 'movieId,plot\n1,"Toys come alive, and a cowboy doll feels replaced."\n7,A film with no genres.\n'
CSV_FILES = {
    "movies.csv": MOVIES,
    "ratings.csv": RATINGS,
    "tags.csv": TAGS,
    "genome-tags.csv": GENOME_TAGS,
    "genome-scores.csv": GENOME_SCORES,
    "plots.csv": PLOTS,
}


def write_folder(root: Path, files: dict[str, str], name: str = "ml-25m", encoding: str = "utf-8") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for fn, text in files.items():
        (folder / fn).write_bytes(text.encode(encoding))
    return folder


def write_zip(folder: Path) -> Path:
    """Zip a folder the way GroupLens does: every file under a top-level ml-xx/ folder."""
    path = folder.with_suffix(".zip")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{folder.name}/", "")
        for f in sorted(folder.iterdir()):
            z.write(f, f"{folder.name}/{f.name}")
    return path


def assert_same(a: movielens.RatingsData, b: movielens.RatingsData, tags_genome_plots: bool = True) -> None:
    np.testing.assert_array_equal(a.movie_ids, b.movie_ids)
    assert a.titles == b.titles and a.genres == b.genres
    for field in ("user", "movie", "rating", "timestamp"):
        np.testing.assert_array_equal(getattr(a.ratings, field), getattr(b.ratings, field))
    if tags_genome_plots:
        for field in ("user", "movie", "tag", "timestamp"):
            np.testing.assert_array_equal(getattr(a.tags, field), getattr(b.tags, field))
        np.testing.assert_array_equal(a.genome.relevance, b.genome.relevance)
        np.testing.assert_array_equal(a.genome.movie_ids, b.genome.movie_ids)
        assert a.genome.tags == b.genome.tags and a.plots == b.plots


def test_csv_folder_every_field(tmp_path):
    data = load_movielens(write_folder(tmp_path, CSV_FILES))
    assert data.movie_ids.dtype == np.int64 and data.movie_ids.tolist() == [1, 2, 5, 7]
    assert data.titles == [
        "Toy Story (1995)",
        "American President, The (1995)",
        'Movie with "Quotes", Part 2 (2001)',
        "No Genre Film (2019)",
    ]
    assert data.genres == [
        ("Adventure", "Animation", "Children", "Comedy", "Fantasy"),
        ("Comedy", "Drama", "Romance"),
        ("Drama",),
        (),
    ]
    r = data.ratings
    assert (r.user.dtype, r.movie.dtype, r.rating.dtype, r.timestamp.dtype) == (
        np.int64,
        np.int64,
        np.float32,
        np.int64,
    )
    assert r.user.tolist() == [1, 1, 1, 2, 3] and r.movie.tolist() == [1, 2, 7, 5, 1]
    assert r.rating.tolist() == [4.0, 3.5, 0.5, 5.0, 2.5] and r.timestamp[3] == 1445714835 and len(r) == 5
    t = data.tags
    assert t.tag == ["pixar", "dark comedy", 'funny, "witty"']
    assert t.user.tolist() == [2, 2, 3] and t.movie.tolist() == [1, 5, 7] and t.timestamp[2] == 1445715000
    g = data.genome
    assert (
        g.movie_ids.tolist() == [1, 2]
        and g.tag_ids.tolist() == [1, 2, 3]
        and g.tags == ["007", "action", "atmospheric"]
    )
    np.testing.assert_array_equal(g.relevance, np.array([[0.0, 1.0, 0.125], [0.25, 0.5, 0.75]], np.float32))
    assert g.relevance.dtype == np.float32
    assert data.plots == {1: "Toys come alive, and a cowboy doll feels replaced.", 7: "A film with no genres."}
    assert data.source == str(tmp_path / "ml-25m")


def test_zip_loads_like_the_folder_and_optional_files_are_optional(tmp_path):
    folder = write_folder(tmp_path, CSV_FILES)
    zipped = load_movielens(write_zip(folder))
    assert_same(zipped, load_movielens(folder))
    assert zipped.source.endswith("ml-25m.zip")
    flat = tmp_path / "flat.zip"  # files at the zip's root, as a user might zip them
    with zipfile.ZipFile(flat, "w") as z:
        for fn, text in CSV_FILES.items():
            z.writestr(fn, text)
    assert_same(load_movielens(flat), zipped)
    bare = load_movielens(write_folder(tmp_path / "bare", {"movies.csv": MOVIES, "ratings.csv": RATINGS}))
    assert bare.genome is None and bare.plots is None and len(bare.tags) == 0 and bare.tags.tag == []


def test_movies_are_sorted_by_id_and_blank_tags_dropped(tmp_path):
    """Downstream code bisects movie ids; a blank tag names no concept (and a folder export would refuse it)."""
    header, *rows = MOVIES.splitlines()
    files = CSV_FILES | {"movies.csv": "\n".join([header, *rows[::-1]]) + "\n", "tags.csv": TAGS + "3,1,  ,1\n"}
    data = load_movielens(write_folder(tmp_path, files))
    assert_same(data, load_movielens(write_folder(tmp_path / "sorted", CSV_FILES)))
    with pytest.raises(ValueError, match="movie_ids must be unique and ascending"):
        movielens.RatingsData(data.movie_ids[::-1], data.titles, data.genres, data.ratings, data.tags)


def test_ml1m_dat_files(tmp_path):
    movies = '1::Toy Story (1995)::Animation|Children\'s|Comedy\n2::Café, Le "Quoted" (1999)::Drama\n'
    ratings = "1::2::5::978300760\n2::1::3::978302109\n2::2::4::978301968\n"
    folder = write_folder(tmp_path, {"movies.dat": movies, "ratings.dat": ratings}, "ml-1m", encoding="latin-1")
    (folder / "users.dat").write_text("1::F::1::10::48067\n")  # ignored
    for data in (load_movielens(folder), load_movielens(write_zip(folder))):
        assert data.movie_ids.tolist() == [1, 2] and data.titles == ["Toy Story (1995)", 'Café, Le "Quoted" (1999)']
        assert data.genres == [("Animation", "Children's", "Comedy"), ("Drama",)]
        assert data.ratings.user.tolist() == [1, 2, 2] and data.ratings.movie.tolist() == [2, 1, 2]
        assert data.ratings.rating.tolist() == [5.0, 3.0, 4.0] and data.ratings.rating.dtype == np.float32
        assert data.ratings.timestamp.tolist() == [978300760, 978302109, 978301968]
        assert len(data.tags) == 0 and data.genome is None


BAD_INPUTS = {
    "no ratings file": ({"ratings.csv": None}, FileNotFoundError, r"missing required file ratings\.csv"),
    "no movies file": ({"movies.csv": None}, FileNotFoundError, r"missing required file movies\.csv"),
    "missing column": (
        {"ratings.csv": "userId,movieId,timestamp\n1,1,5\n"},
        ValueError,
        r"ratings\.csv: missing column\(s\) rating; the header has userId, movieId, timestamp",
    ),
    "unknown movie": (
        {"ratings.csv": RATINGS + "4,99,3.0,1\n4,98,3.0,1\n4,99,1.0,2\n"},
        ValueError,
        r"ratings\.csv: 3 row\(s\) reference movie ids absent from .*movies\.csv; first: movieId 99 at row 6",
    ),
    "non-numeric rating": (
        {"ratings.csv": RATINGS + "4,1,good,1\n"},
        ValueError,
        r"ratings\.csv: row 6: rating 'good' is not a valid float",
    ),
    "NaN rating": (
        {"ratings.csv": RATINGS + "4,1,NaN,1\n"},
        ValueError,
        r"ratings\.csv: row 6: rating is empty or NaN",
    ),
    "empty rating": ({"ratings.csv": RATINGS + "4,1,,1\n"}, ValueError, r"ratings\.csv: row 6: rating is empty or NaN"),
    "infinite rating": ({"ratings.csv": RATINGS + "4,1,inf,1\n"}, ValueError, r"ratings\.csv: row 6: rating is inf"),
    "repeated rating": (
        {"ratings.csv": RATINGS + "3,5,1.0,1\n1,2,4.0,1\n"},
        ValueError,
        r"ratings\.csv: row 7: user 1 rates movie 2 again \(first at row 2\)",
    ),
    "duplicate movie": (
        {"movies.csv": MOVIES + "2,Again (2000),Drama\n"},
        ValueError,
        r"movies\.csv: duplicate movieId 2 \(2 rows, first at row 2\)",
    ),
    "tag of unknown movie": (
        {"tags.csv": TAGS + "1,42,x,1\n"},
        ValueError,
        r"tags\.csv: 1 row\(s\) reference movie ids absent",
    ),
    "incomplete genome": (
        {"genome-scores.csv": GENOME_SCORES.rsplit("\n", 2)[0] + "\n"},
        ValueError,
        r"genome-scores\.csv: 5 rows for 2 movies x 3 tags",
    ),
    "genome without names": ({"genome-tags.csv": None}, FileNotFoundError, r"genome-scores\.csv needs genome-tags"),
    "unknown layout": (
        {name: None for name in CSV_FILES} | {"README.txt": "hi"},
        ValueError,
        r"unknown MovieLens layout; expected movies\.csv \+ ratings\.csv .* movies\.dat \+ ratings\.dat .*; "
        r"found .*README\.txt",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_name_the_file_and_row(tmp_path, case):
    change, error, message = BAD_INPUTS[case]
    files = {k: v for k, v in (CSV_FILES | change).items() if v is not None}
    folder = write_folder(tmp_path, files)
    for path in (folder, write_zip(folder)):
        with pytest.raises(error, match=message):
            load_movielens(path)


def test_path_that_is_not_movielens(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder or zip"):
        load_movielens(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not a folder or a .zip"):
        load_movielens(tmp_path / "notes.txt")


def test_tfds_route_on_a_fake_zip(tmp_path):
    """tfds keeps movies and ratings only; those match load_movielens."""
    zip_path = write_zip(write_folder(tmp_path / "src", CSV_FILES))
    with pytest.raises(Exception, match="verify_checksum=False") as e:
        movielens.prepare_with_tfds(zip_path, tmp_path / "tfds", "25m")
    assert type(e.value).__name__ == "NonMatchingChecksumError"
    data_dir = movielens.prepare_with_tfds(zip_path, tmp_path / "tfds", "25m", verify_checksum=False)
    assert (data_dir / "downloads" / "extracted" / "ZIP.ml-25m.zip" / "ml-25m" / "ratings.csv").exists()
    from_tfds = movielens.read_tfds(data_dir, "25m", batch=2)
    assert_same(from_tfds, load_movielens(zip_path), tags_genome_plots=False)
    assert len(from_tfds.tags) == 0 and from_tfds.genome is None and from_tfds.plots is None
    assert "tensorflow" not in sys.modules
    # the checksum registration was temporary
    from tensorflow_datasets.structured.movielens import Movielens

    assert Movielens.url_infos[movielens.URL.format(variant="25m")].size == 261978986
    with pytest.raises(ValueError, match="variant '1m' is not one of 25m, 20m, latest-small"):
        movielens.prepare_with_tfds(zip_path, tmp_path / "tfds", "1m")


def _fake_network(monkeypatch, seen: list[str], content: bytes | None):
    """Replace tfds' HTTP call: record the URL, then fail like an offline machine or serve `content`."""
    from tensorflow_datasets.core.download import downloader

    @contextlib.contextmanager
    def open_url(url, **kwargs):
        seen.append(url)
        if content is None:
            raise requests.exceptions.ConnectionError(f"Failed to resolve '{url.split('/')[2]}'")
        yield types.SimpleNamespace(headers={}, url=url), iter([content])

    monkeypatch.setattr(downloader, "_open_url", open_url)


def test_download_offline_gives_a_clear_error(tmp_path, monkeypatch):
    seen = []
    _fake_network(monkeypatch, seen, None)
    with pytest.raises(ConnectionError, match=r"could not download .*ml-latest-small\.zip .*pass its path to load_mov"):
        movielens.download_movielens("latest-small", tmp_path)
    assert seen == ["https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"]


def test_download_checks_the_registered_checksum(tmp_path, monkeypatch):
    seen = []
    _fake_network(monkeypatch, seen, b"not the GroupLens zip")
    with pytest.raises(Exception, match="has wrong checksum") as e:
        movielens.download_movielens("1m", tmp_path)
    assert type(e.value).__name__ == "NonMatchingChecksumError"
    assert seen == ["https://files.grouplens.org/datasets/movielens/ml-1m.zip"]
    with pytest.raises(ValueError, match="variant '100k'"):
        movielens.download_movielens("100k", tmp_path)
