"""MovieLens (GroupLens) ratings, tags, tag genome and optional plots, read from an extracted folder or the zip.

The paper's data is ml-25m. Files are parsed with pyarrow.csv, which reads ml-25m's 25M ratings in seconds.
tfds' movielens builder takes about 53 min to prepare the same ratings on 2 cores and keeps only movies.csv and
ratings.csv, with no tags or genome, and the ELM CAV attributes need those. The tfds route is still offered
(`prepare_with_tfds`, `read_tfds`, `download_movielens`) for users who already keep their data in tfds.

Layouts: ml-25m, ml-20m and ml-latest(-small) ship headed CSVs (movies.csv, ratings.csv, tags.csv,
genome-scores.csv + genome-tags.csv); ml-1m ships `::`-separated movies.dat (latin-1) and ratings.dat and has no
tags. `plots.csv` (movieId,plot) is not part of MovieLens; the project's synthetic catalogue writes one.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

NO_GENRES = "(no genres listed)"  # MovieLens' marker for a movie without genres; loaded as ()
VARIANTS = ("25m", "20m", "latest-small", "1m")
TFDS_VARIANTS = ("25m", "20m", "latest-small")  # tfds' ml-1m parser needs TensorFlow
URL = "https://files.grouplens.org/datasets/movielens/ml-{variant}.zip"

_CSV_FILES = ("movies.csv", "ratings.csv", "tags.csv", "genome-scores.csv", "genome-tags.csv", "plots.csv")
_DAT_FILES = ("movies.dat", "ratings.dat")
_EXPECTED = (
    "movies.csv + ratings.csv (ml-25m, ml-20m, ml-latest(-small); optional tags.csv, genome-scores.csv + "
    "genome-tags.csv, plots.csv) or movies.dat + ratings.dat (ml-1m)"
)
_BLOCK_SIZE = 16 << 20  # pyarrow parses one block per thread; 16 MiB blocks beat the 1 MiB default on 25M rows
_I64, _F32, _STR = pa.int64(), pa.float32(), pa.string()


def _check_lengths(owner: str, **columns: Any) -> None:
    """Fail early when hand-built columns disagree in length (loaders always build them aligned)."""
    lengths = {name: len(value) for name, value in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{owner}: columns differ in length: {lengths}")


@dataclasses.dataclass(frozen=True, eq=False)
class Ratings:
    user: np.ndarray  # (R,) int64 user ids
    movie: np.ndarray  # (R,) int64 movie ids
    rating: np.ndarray  # (R,) float32 stars
    timestamp: np.ndarray  # (R,) int64 seconds since the epoch

    def __post_init__(self):
        _check_lengths("Ratings", user=self.user, movie=self.movie, rating=self.rating, timestamp=self.timestamp)

    def __len__(self) -> int:
        return len(self.user)


@dataclasses.dataclass(frozen=True, eq=False)
class Tags:
    user: np.ndarray  # (T,) int64
    movie: np.ndarray  # (T,) int64
    tag: list[str]  # lowercased and stripped, so "Dark " and "dark" count as one attribute
    timestamp: np.ndarray  # (T,) int64

    def __post_init__(self):
        _check_lengths("Tags", user=self.user, movie=self.movie, tag=self.tag, timestamp=self.timestamp)

    def __len__(self) -> int:
        return len(self.user)


@dataclasses.dataclass(frozen=True, eq=False)
class Genome:
    movie_ids: np.ndarray  # (M,) int64, the row order of `relevance` (ascending)
    tag_ids: np.ndarray  # (G,) int64, the column order of `relevance` (ascending)
    tags: list[str]  # (G,) genome tag names, same order as tag_ids
    relevance: np.ndarray  # (M, G) float32 in [0, 1]

    def __post_init__(self):
        _check_lengths("Genome tags", tag_ids=self.tag_ids, tags=self.tags)
        if self.relevance.shape != (len(self.movie_ids), len(self.tag_ids)):
            raise ValueError(
                f"Genome: relevance has shape {self.relevance.shape}; expected {(len(self.movie_ids), len(self.tags))}"
            )


@dataclasses.dataclass(frozen=True, eq=False)
class RatingsData:
    """One MovieLens release in memory: movies sorted by id (downstream code looks ids up by bisection), ratings
    and tags in file order."""

    movie_ids: np.ndarray  # (N,) int64, ascending
    titles: list[str]  # (N,) "Title (year)"
    genres: list[tuple[str, ...]]  # (N,); () for "(no genres listed)"
    ratings: Ratings
    tags: Tags  # empty when the release has none (ml-1m, tfds)
    genome: Genome | None = None
    plots: dict[int, str] | None = None  # movieId -> plot, from plots.csv when present
    source: str = ""  # the folder, zip or tfds data_dir it was read from

    def __post_init__(self):
        _check_lengths("RatingsData movies", movie_ids=self.movie_ids, titles=self.titles, genres=self.genres)
        if (np.diff(self.movie_ids) <= 0).any():
            raise ValueError(f"RatingsData of {self.source or '(no source)'}: movie_ids must be unique and ascending")


class _Files:
    """The MovieLens files of a folder, or of the folder inside a zip that holds them, found by base name."""

    def __init__(self, path: Path):
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        if path.is_dir():
            self.listing = sorted(p.name for p in path.iterdir())  # what error messages say was found
            self._members = {p.name: str(p) for p in path.iterdir() if p.is_file()}
        elif path.is_file() and zipfile.is_zipfile(path):
            self._zip = zipfile.ZipFile(path)
            self.listing = self._zip.namelist()
            self._members = self._zip_members(self.listing)
        elif path.exists():
            raise ValueError(f"{path}: not a folder or a .zip; expected a MovieLens folder or zip holding {_EXPECTED}")
        else:
            raise FileNotFoundError(f"{path}: no such folder or zip")

    @staticmethod
    def _zip_members(names: list[str]) -> dict[str, str]:
        """Base name -> member, in the shallowest folder holding a known file (official zips use ml-25m/)."""
        known = [n for n in names if n.rsplit("/", 1)[-1] in _CSV_FILES + _DAT_FILES]
        if not known:
            return {}
        folder = min((n.rpartition("/")[0] for n in known), key=lambda d: (d.count("/"), d))
        prefix = folder + "/" if folder else ""
        return {n[len(prefix) :]: n for n in names if n.startswith(prefix) and "/" not in n[len(prefix) :]}

    def __contains__(self, name: str) -> bool:
        return name in self._members

    def where(self, name: str) -> str:
        """How error messages name a file: its path, or zip:member."""
        return self._members[name] if self._zip is None else f"{self.path}:{self._members[name]}"

    def opener(self, name: str) -> Callable[[], IO[bytes]]:
        """A callable opening the file afresh (native pyarrow stream for folders, zip member stream for zips)."""
        if self._zip is None:
            return lambda: pa.input_stream(self._members[name])
        return lambda: self._zip.open(self._members[name])

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def _find_conversion_error(
    opener: Callable[[], IO[bytes]], read: pacsv.ReadOptions, column: str, type_: pa.DataType
) -> str:
    """Row and value behind a pyarrow conversion error, whose message names only the column."""
    options = pacsv.ConvertOptions(column_types={column: _STR}, include_columns=[column], strings_can_be_null=False)
    with opener() as f:
        values = pacsv.read_csv(f, read_options=read, convert_options=options).column(column)
    row = 0
    for chunk in values.chunks:
        try:
            pc.cast(chunk, type_)
        except pa.ArrowInvalid:
            for i, value in enumerate(chunk.to_pylist()):
                try:
                    pc.cast(pa.array([value]), type_)
                except pa.ArrowInvalid:
                    return f"row {row + i + 1}: {column} {value!r} is not a valid {type_}"
        row += len(chunk)
    return f"{column} holds a value that is not a valid {type_}"


def _to_numpy(chunks: list[pa.Array], dtype: np.dtype) -> np.ndarray:
    """Concatenate parsed chunks, dropping each once copied, so peak memory stays near one copy of the column."""
    out = np.empty(sum(len(c) for c in chunks), dtype)
    start = 0
    while chunks:
        chunk = chunks.pop(0).to_numpy()
        out[start : start + len(chunk)] = chunk
        start += len(chunk)
        del chunk
        pa.default_memory_pool().release_unused()  # hand the freed chunk back, or RSS keeps both copies
    return out


def _read_csv(
    opener: Callable[[], IO[bytes]],
    where: str,
    columns: dict[str, pa.DataType],
    names: list[str] | None = None,
    lower_strings: bool = False,
) -> dict[str, Any]:
    """Parse the wanted columns of a CSV into numpy arrays (strings into lists), rejecting missing or bad values.

    `names` is given for header-less files (ml-1m). Rows in messages count data rows from 1, header excluded.
    """
    if names is None:
        with opener() as f:  # pyarrow's native streams have no readline
            head = b""
            while b"\n" not in head and (chunk := f.read(1 << 16)):
                head += chunk
        names = next(csv.reader([head.split(b"\n", 1)[0].decode("utf-8-sig").rstrip("\r")]), [])
        read = pacsv.ReadOptions(block_size=_BLOCK_SIZE)
    else:
        read = pacsv.ReadOptions(block_size=_BLOCK_SIZE, column_names=names)
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(
            f"{where}: missing column(s) {', '.join(missing)}; the header has {', '.join(names) or 'none'}"
        )
    convert = pacsv.ConvertOptions(column_types=columns, include_columns=list(columns), strings_can_be_null=False)
    try:
        with opener() as f:
            table = pacsv.read_csv(f, read_options=read, convert_options=convert)
    except pa.ArrowInvalid as e:
        found = re.search(r"CSV column #(\d+)", str(e))
        if found is None:
            raise ValueError(f"{where}: {e}") from None
        column = names[int(found.group(1))]
        raise ValueError(f"{where}: {_find_conversion_error(opener, read, column, columns[column])}") from None
    arrays = {name: table.column(name) for name in columns}
    del table
    out = {}
    for name, type_ in columns.items():
        values = arrays.pop(name)
        if values.null_count:
            row = pc.index(values.is_null(), True).as_py()
            raise ValueError(f"{where}: row {row + 1}: {name} is empty or NaN")
        if type_ == _STR:
            values = pc.utf8_trim_whitespace(pc.utf8_lower(values)) if lower_strings else values
            out[name] = values.to_pylist()
            continue
        out[name] = _to_numpy(values.chunks, type_.to_pandas_dtype())
        del values
        if type_ == _F32 and not np.isfinite(out[name]).all():
            row = int(np.flatnonzero(~np.isfinite(out[name]))[0])
            raise ValueError(f"{where}: row {row + 1}: {name} is {out[name][row]}")
    return out


def _check_unique(ids: np.ndarray, where: str, field: str) -> None:
    uniq, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = (counts > 1).nonzero()[0]
        i = dup[np.argmin(first[dup])]  # the duplicate seen first in the file
        raise ValueError(
            f"{where}: duplicate {field} {uniq[i]} ({counts[i]} rows, first at row {first[i] + 1}); "
            f"{dup.size} id(s) are duplicated"
        )


def first_repeat(a: np.ndarray, b: np.ndarray) -> tuple[int, int] | None:
    """(row, earlier row) of the first row whose (a, b) pair an earlier row already has, or None."""
    da, db = np.diff(a), np.diff(b)
    if ((da > 0) | ((da == 0) & (db > 0))).all():  # strictly ordered, as MovieLens files are: no repeats
        return None
    order = np.lexsort((b, a))  # stable: equal pairs keep file order
    sa, sb = a[order], b[order]
    repeats = np.flatnonzero((sa[1:] == sa[:-1]) & (sb[1:] == sb[:-1]))
    if not repeats.size:
        return None
    later = int(order[1:][repeats].min())
    first = int(order[np.flatnonzero((sa == a[later]) & (sb == b[later]))[0]])
    return later, first


def _check_known(movie: np.ndarray, movie_ids: np.ndarray, where: str, movies_where: str) -> None:
    # In 1M-row slices np.isin takes its lookup-table path without 25M-row temporaries (~0.1 s, +25 MB).
    slices = [~np.isin(movie[i : i + (1 << 20)], movie_ids) for i in range(0, len(movie), 1 << 20)]
    unknown = np.concatenate([np.zeros(0, bool), *slices])
    if unknown.any():
        bad = np.flatnonzero(unknown)
        raise ValueError(
            f"{where}: {bad.size} row(s) reference movie ids absent from {movies_where}; "
            f"first: movieId {movie[bad[0]]} at row {bad[0] + 1}"
        )


def _genres(field: str) -> tuple[str, ...]:
    return () if field in ("", NO_GENRES) else tuple(field.split("|"))


def _movies_dat(opener: Callable[[], IO[bytes]], where: str) -> tuple[np.ndarray, list[str], list[tuple[str, ...]]]:
    """ml-1m movies.dat: MovieID::Title::Genres in latin-1, no quoting (titles may hold commas and quotes)."""
    ids, titles, genres = [], [], []
    with opener() as f:
        for row, line in enumerate(io.TextIOWrapper(f, encoding="latin-1"), start=1):
            fields = line.rstrip("\r\n").split("::")
            if len(fields) != 3 or not fields[0].strip().isdigit():
                raise ValueError(f"{where}: row {row}: expected MovieID::Title::Genres, got {line.strip()!r}")
            ids.append(int(fields[0]))
            titles.append(fields[1])
            genres.append(_genres(fields[2]))
    return np.array(ids, np.int64), titles, genres


def _ratings_dat(opener: Callable[[], IO[bytes]], where: str) -> dict[str, Any]:
    """ml-1m ratings.dat: UserID::MovieID::Rating::Timestamp; pyarrow takes one-byte delimiters, so swap them."""
    with opener() as f:
        data = f.read().replace(b"::", b",")
    names = ["userId", "movieId", "rating", "timestamp"]
    types = dict(zip(names, (_I64, _I64, _F32, _I64)))
    return _read_csv(lambda: pa.BufferReader(data), where, types, names=names)


def _genome(files: _Files, movie_ids: np.ndarray) -> Genome | None:
    present = [n for n in ("genome-scores.csv", "genome-tags.csv") if n in files]
    if not present:
        return None
    if len(present) == 1:
        other = ({"genome-scores.csv", "genome-tags.csv"} - set(present)).pop()
        raise FileNotFoundError(f"{files.where(present[0])} needs {other} next to it")
    where, tags_where = files.where("genome-scores.csv"), files.where("genome-tags.csv")
    names = _read_csv(files.opener("genome-tags.csv"), tags_where, {"tagId": _I64, "tag": _STR})
    _check_unique(names["tagId"], tags_where, "tagId")
    order = np.argsort(names["tagId"], kind="stable")
    tag_ids = names["tagId"][order]
    scores = _read_csv(files.opener("genome-scores.csv"), where, {"movieId": _I64, "tagId": _I64, "relevance": _F32})
    _check_known(scores["movieId"], movie_ids, where, files.where("movies.csv"))
    col = np.minimum(np.searchsorted(tag_ids, scores["tagId"]), len(tag_ids) - 1)
    unknown = np.flatnonzero(tag_ids[col] != scores["tagId"]) if len(tag_ids) else np.arange(len(col))
    if unknown.size:
        row = int(unknown[0])
        raise ValueError(f"{where}: row {row + 1}: tagId {scores['tagId'][row]} is not in {tags_where}")
    genome_movies = np.unique(scores["movieId"])
    row = np.searchsorted(genome_movies, scores["movieId"])  # 4x faster and leaner than return_inverse on ml-25m
    relevance = np.full((len(genome_movies), len(tag_ids)), np.nan, np.float32)
    relevance[row, col] = scores["relevance"]
    if len(row) != relevance.size or np.isnan(relevance).any():  # n rows filling n cells: each pair exactly once
        raise ValueError(
            f"{where}: {len(row)} rows for {len(genome_movies)} movies x {len(tag_ids)} tags; "
            "every movie needs exactly one score per genome tag"
        )
    return Genome(genome_movies, tag_ids, [names["tag"][i].strip() for i in order], relevance)


def _plots(files: _Files, movie_ids: np.ndarray) -> dict[int, str] | None:
    if "plots.csv" not in files:
        return None
    where = files.where("plots.csv")
    plots = _read_csv(files.opener("plots.csv"), where, {"movieId": _I64, "plot": _STR})
    _check_unique(plots["movieId"], where, "movieId")
    _check_known(plots["movieId"], movie_ids, where, files.where("movies.csv"))
    return dict(zip(plots["movieId"].tolist(), plots["plot"]))


def _empty_tags() -> Tags:
    return Tags(np.zeros(0, np.int64), np.zeros(0, np.int64), [], np.zeros(0, np.int64))


def load_movielens(path: str | os.PathLike) -> RatingsData:
    """Read a MovieLens release from its extracted folder or its official zip (members read in place)."""
    files = _Files(Path(path))
    try:
        if "movies.csv" in files or "ratings.csv" in files:
            layout = ("movies.csv", "ratings.csv")
        elif "movies.dat" in files or "ratings.dat" in files:
            layout = ("movies.dat", "ratings.dat")
        else:
            found = ", ".join(files.listing) or "nothing"
            raise ValueError(f"{path}: unknown MovieLens layout; expected {_EXPECTED}; found {found}")
        for name in layout:
            if name not in files:
                raise FileNotFoundError(
                    f"{path}: missing required file {name} (this layout needs {' and '.join(layout)})"
                )
        movies_where, ratings_where = files.where(layout[0]), files.where(layout[1])
        if layout[0] == "movies.dat":
            movie_ids, titles, genres = _movies_dat(files.opener("movies.dat"), movies_where)
            rows = _ratings_dat(files.opener("ratings.dat"), ratings_where)
        else:
            movies = _read_csv(
                files.opener("movies.csv"), movies_where, {"movieId": _I64, "title": _STR, "genres": _STR}
            )
            movie_ids, titles, genres = movies["movieId"], movies["title"], [_genres(g) for g in movies["genres"]]
            types = {"userId": _I64, "movieId": _I64, "rating": _F32, "timestamp": _I64}
            rows = _read_csv(files.opener("ratings.csv"), ratings_where, types)
        _check_unique(movie_ids, movies_where, "movieId")
        order = np.argsort(movie_ids, kind="stable")
        movie_ids, titles, genres = movie_ids[order], [titles[i] for i in order], [genres[i] for i in order]
        _check_known(rows["movieId"], movie_ids, ratings_where, movies_where)
        repeat = first_repeat(rows["userId"], rows["movieId"])
        if repeat is not None:
            later, first = repeat
            raise ValueError(
                f"{ratings_where}: row {later + 1}: user {rows['userId'][later]} rates movie {rows['movieId'][later]} "
                f"again (first at row {first + 1})"
            )
        ratings = Ratings(rows.pop("userId"), rows.pop("movieId"), rows.pop("rating"), rows.pop("timestamp"))
        tags = _empty_tags()
        if "tags.csv" in files:
            where = files.where("tags.csv")
            types = {"userId": _I64, "movieId": _I64, "tag": _STR, "timestamp": _I64}
            t = _read_csv(files.opener("tags.csv"), where, types, lower_strings=True)
            _check_known(t["movieId"], movie_ids, where, movies_where)
            named = np.flatnonzero([bool(tag) for tag in t["tag"]])  # a blank tag names no concept: dropped
            tags = Tags(t["userId"][named], t["movieId"][named], [t["tag"][i] for i in named], t["timestamp"][named])
        return RatingsData(
            movie_ids, titles, genres, ratings, tags, _genome(files, movie_ids), _plots(files, movie_ids), str(path)
        )
    finally:
        files.close()


# --- the tfds route: slow, movies and ratings only, kept for users of tfds' prepared datasets ---


def _check_variant(variant: str, allowed: tuple[str, ...]) -> None:
    if variant not in allowed:
        raise ValueError(f"MovieLens variant {variant!r} is not one of {', '.join(allowed)}")


@contextlib.contextmanager
def _registered_checksum(builder_cls: type, url: str, zip_path: Path, name: str) -> Iterator[None]:
    """Let tfds accept a zip that is not GroupLens' file, by registering its own sha256/size for `url` for a while."""
    from tensorflow_datasets.core.download import checksums

    info = checksums.compute_url_info(zip_path)
    registered = checksums.UrlInfo(size=info.size, checksum=info.checksum, filename=name)
    builder_cls.url_infos = {**(builder_cls.url_infos or {}), url: registered}
    try:
        yield
    finally:
        del builder_cls.url_infos  # back to the inherited, registered checksums


def prepare_with_tfds(
    zip_path: str | os.PathLike, data_dir: str | os.PathLike, variant: str = "25m", verify_checksum: bool = True
) -> Path:
    """Prepare tfds' movielens/<variant>-movies and -ratings (array_record) from a local zip, offline, without TF.

    tfds checks the zip against GroupLens' registered sha256 unless `verify_checksum=False` (for other zips).
    It keeps only movies.csv and ratings.csv and takes ~53 min for ml-25m's ratings; `load_movielens` reads the
    same zip in seconds. Returns `data_dir`, for `read_tfds`.
    """
    _check_variant(variant, TFDS_VARIANTS)
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError
    from tensorflow_datasets.structured import movielens  # registers the legacy builder with tfds

    zip_path, data_dir = Path(zip_path), Path(data_dir)
    name, folder = f"ml-{variant}.zip", f"ml-{variant}"
    with zipfile.ZipFile(zip_path) as archive:
        needed = [f"{folder}/movies.csv", f"{folder}/ratings.csv"]
        missing = sorted(set(needed) - set(archive.namelist()))
        if missing:
            raise ValueError(f"{zip_path}: tfds reads {' and '.join(needed)}; missing {', '.join(missing)}")
        # tfds' own extractor needs TensorFlow; it skips extraction when <extract_dir>/ZIP.<name> exists.
        extracted = data_dir / "downloads" / "extracted" / f"ZIP.{name}"
        if not extracted.exists():
            partial = extracted.with_name(extracted.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            archive.extractall(partial)
            partial.rename(extracted)
    manual = data_dir / "downloads" / "manual"  # tfds finds the zip here, under its registered file name
    manual.mkdir(parents=True, exist_ok=True)
    if not (manual / name).exists() or not (manual / name).samefile(zip_path):
        shutil.copyfile(zip_path, manual / name)
    url = URL.format(variant=variant)
    registered = (
        contextlib.nullcontext() if verify_checksum else _registered_checksum(movielens.Movielens, url, zip_path, name)
    )
    config = tfds.download.DownloadConfig(manual_dir=str(manual), try_download_gcs=False)
    with registered:
        for table in ("movies", "ratings"):
            builder = tfds.builder(f"movielens/{variant}-{table}", data_dir=str(data_dir), file_format="array_record")
            try:
                builder.download_and_prepare(download_config=config)
            except NonMatchingChecksumError as e:
                raise NonMatchingChecksumError(
                    f"{zip_path} is not GroupLens' {name}; pass verify_checksum=False to use it anyway.\n{e}"
                ) from e
    return data_dir


def read_tfds(data_dir: str | os.PathLike, variant: str = "25m", batch: int = 65536) -> RatingsData:
    """Read what `prepare_with_tfds` wrote (via `tfds.data_source`, no TF) into a RatingsData.

    tfds keeps movies and ratings only, so tags, genome and plots are empty. tfds stores examples shuffled;
    movies come back sorted by id and ratings by (user, movie, timestamp), which is ml-25m's file order.
    Records are decoded one by one in Python (~17k ratings/s on 2 cores, so ~25 min for ml-25m).
    """
    _check_variant(variant, TFDS_VARIANTS)
    import tensorflow_datasets as tfds

    movies = tfds.data_source(f"movielens/{variant}-movies", data_dir=str(data_dir), split="train")
    genre_names = movies.dataset_info.features["movie_genres"].feature.names
    rows = movies.__getitems__(list(range(len(movies))))
    movie_ids = np.array([int(r["movie_id"]) for r in rows], np.int64)
    order = np.argsort(movie_ids, kind="stable")
    titles = [rows[i]["movie_title"].decode() for i in order]
    genres = [tuple(genre_names[g] for g in rows[i]["movie_genres"]) for i in order]
    genres = [() if g == (NO_GENRES,) else g for g in genres]

    source = tfds.data_source(f"movielens/{variant}-ratings", data_dir=str(data_dir), split="train")
    n = len(source)
    user, movie, timestamp = (np.empty(n, np.int64) for _ in range(3))
    rating = np.empty(n, np.float32)
    for start in range(0, n, batch):
        for i, r in enumerate(source.__getitems__(list(range(start, min(start + batch, n)))), start):
            user[i], movie[i] = int(r["user_id"]), int(r["movie_id"])
            rating[i], timestamp[i] = r["user_rating"], r["timestamp"]
    by = np.lexsort((timestamp, movie, user))
    ratings = Ratings(user[by], movie[by], rating[by], timestamp[by])
    return RatingsData(movie_ids[order], titles, genres, ratings, _empty_tags(), source=str(data_dir))


def download_movielens(variant: str, data_dir: str | os.PathLike) -> Path:
    """Download GroupLens' zip with tfds' download manager, which checks it against tfds' registered sha256/size.

    Returns the zip's path (under <data_dir>/downloads), for `load_movielens` or `prepare_with_tfds`.
    """
    _check_variant(variant, VARIANTS)
    import tensorflow_datasets as tfds

    url = URL.format(variant=variant)
    manager = tfds.download.DownloadManager(download_dir=Path(data_dir) / "downloads", force_checksums_validation=True)
    try:
        return Path(manager.download(url))
    except (OSError, tfds.download.DownloadError) as e:  # requests' connection errors are OSErrors
        raise ConnectionError(
            f"could not download {url} ({type(e).__name__}: {e}). Without internet, fetch ml-{variant}.zip "
            "elsewhere and pass its path to load_movielens."
        ) from e
