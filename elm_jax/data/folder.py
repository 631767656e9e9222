"""Bring your own data: a folder of entities, embeddings, ratings, tags and a split <-> a `Catalog`.

    movies/entities.jsonl   one JSON object per line: {"id": 1 or "m1", "name": "...", "text": "..."}
    movies/<space>.npy      (entities, dim) floats, row i embedding line i's entity; one file per space
    movies/tags.csv         optional: id,tag (which movies users tagged with a concept; for CAVs)
    users/                  optional: entities.jsonl and <space>.npy files, as for movies
    ratings.csv             optional: userId,movieId,rating (extra columns are ignored)
    split.json              optional: {"movie": [test ids], "user": [test ids]}; else a seeded random split

The embeddings are used as given (no WALS, no text encoder), so any embedding of any entities can be
explained, and every check names the file and the line, row or field at fault: a bad input fails before
training starts, not hours into it. See docs/bring_your_own.md.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import re
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from elm_jax.data.build import random_split
from elm_jax.data.catalog import Catalog, EntityTable
from elm_jax.data.movielens import _read_csv, first_repeat
from elm_jax.io_utils import atomic_dir, read_jsonl_objects

KINDS = {"movie": "movies", "user": "users"}  # entity kind -> its subfolder
ENTITIES = "entities.jsonl"
_FIELDS = ("id", "name", "text")
_SPACE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _read_entities(path: pathlib.Path, kind: str) -> tuple[np.ndarray, list[str], list[str] | None]:
    """Ids, names and texts (None when no line has one) of entities.jsonl, checked line by line."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; every entity folder needs one (id, name, text per line)")
    ids: list[int | str] = []
    names: list[str] = []
    texts: list[str | None] = []
    lines: list[int] = []
    first_line: dict[str, int] = {}
    for line_no, row in read_jsonl_objects(path, "id, name and optionally text"):
        where = f"{path}:{line_no}"
        unknown = sorted(set(row) - set(_FIELDS))
        missing = [k for k in ("id", "name") if k not in row]
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}; the fields are id, name and (optional) text")
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing}")
        id_ = row["id"]
        if isinstance(id_, bool) or not isinstance(id_, int | str) or (isinstance(id_, str) and not id_.strip()):
            raise ValueError(f"{where}: id {id_!r} is neither an integer nor a non-empty string")
        if isinstance(id_, int) and not -(2**63) <= id_ < 2**63:
            raise ValueError(f"{where}: id {id_} does not fit in 64 bits; use a string id")
        if ids and isinstance(id_, str) != isinstance(ids[0], str):
            raise ValueError(f"{where}: id {id_!r} and line {lines[0]}'s id {ids[0]!r} differ in type; use one")
        if str(id_) in first_line:
            raise ValueError(f"{where}: duplicate id {id_!r} (first on line {first_line[str(id_)]})")
        for field in ("name", "text"):
            if field in row and (not isinstance(row[field], str) or not row[field].strip()):
                raise ValueError(f"{where}: {field} {row[field]!r} is not a non-empty string")
        first_line[str(id_)] = line_no
        ids.append(id_)
        names.append(row["name"])
        texts.append(row.get("text"))
        lines.append(line_no)
    if not ids:
        raise ValueError(f"{path}: no {kind} entities")
    with_text = [t is not None for t in texts]
    if any(with_text) and not all(with_text):
        line_no = lines[with_text.index(False)]
        raise ValueError(f"{path}:{line_no}: no text, but other lines have one; give every {kind} a text or none")
    id_array = np.array(ids, np.int64) if isinstance(ids[0], int) else np.array(ids, np.str_)
    return id_array, names, texts if all(with_text) else None


def _read_embeddings(folder: pathlib.Path, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Every <space>.npy of an entity folder, checked for type, shape, row count and finite values."""
    out = {}
    for path in sorted(folder.glob("*.npy")):
        try:
            matrix = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise ValueError(f"{path}: not a readable .npy array: {e}") from None
        if not np.issubdtype(matrix.dtype, np.floating):
            raise ValueError(f"{path}: dtype {matrix.dtype}; expected float32")
        if matrix.ndim != 2 or matrix.shape[1] == 0:
            raise ValueError(f"{path}: shape {matrix.shape}; expected (entities, dim) = ({len(ids)}, dim)")
        if matrix.shape[0] != len(ids):
            raise ValueError(
                f"{path}: {matrix.shape[0]} rows but {folder / ENTITIES} has {len(ids)} entities; "
                "row i must embed line i's entity"
            )
        with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes Inf, reported below
            matrix = matrix.astype(np.float32, copy=False)
        bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
        if bad.size:
            raise ValueError(f"{path}: row {bad[0]} (id {ids.tolist()[bad[0]]!r}) has NaN or Inf (as float32)")
        out[path.stem] = matrix
    return out


def _read_table(folder: pathlib.Path, kind: str) -> EntityTable:
    ids, names, texts = _read_entities(folder / ENTITIES, kind)
    embeddings = _read_embeddings(folder, ids)
    if kind == "movie" and not embeddings:
        raise ValueError(f"{folder}: no <space>.npy embeddings (e.g. semantic.npy); movies need at least one space")
    return EntityTable(kind, ids, names, embeddings, texts)


def _csv_column(ids: np.ndarray) -> pa.DataType:
    return pa.int64() if ids.dtype.kind == "i" else pa.string()


def _rows_of(values: Sequence | np.ndarray, table: EntityTable, where: str, field: str, source: pathlib.Path):
    """Row of each id read from a CSV column; raises naming the first id the table lacks."""
    values = np.asarray(values, table.ids.dtype if table.ids.dtype.kind == "i" else np.str_)
    order = np.argsort(table.ids, kind="stable")
    pos = np.minimum(np.searchsorted(table.ids[order], values), len(order) - 1)
    unknown = np.flatnonzero(table.ids[order][pos] != values)
    if unknown.size:
        i = int(unknown[0])
        raise ValueError(f"{where}: row {i + 1}: {field} {values[i].item()!r} is not an id in {source}")
    return order[pos]


def _read_ratings(path: pathlib.Path, movies: EntityTable, users: EntityTable, root: pathlib.Path) -> sp.csr_matrix:
    if len(users) == 0:
        raise ValueError(f"{path}: ratings need users; add {root / KINDS['user'] / ENTITIES}")
    columns = {"userId": _csv_column(users.ids), "movieId": _csv_column(movies.ids), "rating": pa.float32()}
    cols = _read_csv(lambda: pa.input_stream(str(path)), str(path), columns)
    u = _rows_of(cols["userId"], users, str(path), "userId", root / KINDS["user"] / ENTITIES)
    m = _rows_of(cols["movieId"], movies, str(path), "movieId", root / KINDS["movie"] / ENTITIES)
    rating = cols["rating"]
    if (rating <= 0).any():
        i = int(np.flatnonzero(rating <= 0)[0])
        raise ValueError(f"{path}: row {i + 1}: rating {rating[i]} is not > 0 (0 means unrated)")
    repeat = first_repeat(u, m)
    if repeat is not None:
        later, first = repeat
        raise ValueError(
            f"{path}: row {later + 1}: user {users.ids[u[later]].item()!r} rates movie "
            f"{movies.ids[m[later]].item()!r} again (first at row {first + 1})"
        )
    return sp.csr_matrix((rating, (u, m)), shape=(len(users), len(movies)))


def _read_tags(path: pathlib.Path, movies: EntityTable, root: pathlib.Path) -> dict[str, list[int]]:
    cols = _read_csv(lambda: pa.input_stream(str(path)), str(path), {"id": _csv_column(movies.ids), "tag": pa.string()})
    rows = _rows_of(cols["id"], movies, str(path), "id", root / KINDS["movie"] / ENTITIES)
    out: dict[str, set[int]] = {}
    for i, (row, tag) in enumerate(zip(rows.tolist(), cols["tag"])):
        if not tag.strip():
            raise ValueError(f"{path}: row {i + 1}: empty tag")
        out.setdefault(tag.strip(), set()).add(row)
    return {concept: sorted(rows) for concept, rows in sorted(out.items())}


def _read_split(path: pathlib.Path, tables: dict[str, EntityTable], root: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON: {e}") from None
    present = [kind for kind, table in tables.items() if len(table)]
    if not isinstance(split, dict) or set(split) != set(present):
        keys = sorted(split) if isinstance(split, dict) else type(split).__name__
        raise ValueError(f"{path}: expected an object with a list of test ids for each of {present}; got {keys}")
    out = {}
    for kind, test_ids in split.items():
        table = tables[kind]
        if not isinstance(test_ids, list):
            raise ValueError(f"{path}: {kind!r} is not a list of ids")
        lookup = table.row_of
        rows: dict[int, int] = {}
        for position, id_ in enumerate(test_ids):
            if str(id_) not in lookup:
                raise ValueError(
                    f"{path}: {kind}[{position}] = {id_!r} is not an id in {root / KINDS[kind] / ENTITIES}"
                )
            if lookup[str(id_)] in rows:
                raise ValueError(f"{path}: {kind}[{position}] = {id_!r} repeats {kind}[{rows[lookup[str(id_)]]}]")
            rows[lookup[str(id_)]] = position
        if not 0 < len(rows) < len(table):
            raise ValueError(
                f"{path}: {kind!r} holds {len(rows)} of {len(table)} {kind}s for test; need at least one each side"
            )
        out[kind] = np.array(sorted(rows), np.int64)
    return out


def read_folder(
    path: str | os.PathLike, *, test_movies: float = 0.1, test_users: float = 0.2, seed: int = 0
) -> Catalog:
    """The catalogue a bring-your-own folder describes; without split.json, a seeded split like build.py's."""
    root = pathlib.Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist (see docs/bring_your_own.md for its layout)")
    known = set(KINDS.values())
    for sub in sorted(root.iterdir()):
        if sub.is_dir() and sub.name not in known and (sub / ENTITIES).is_file():
            raise ValueError(f"{sub}: entity folders are named {' and '.join(sorted(known))}, not {sub.name!r}")
    movies = _read_table(root / KINDS["movie"], "movie")
    users_dir = root / KINDS["user"]
    if users_dir.is_dir():
        users = _read_table(users_dir, "user")
    else:
        users = EntityTable("user", np.zeros(0, np.int64), [], {})
    for space in sorted(set(movies.embeddings) & set(users.embeddings)):
        dims = movies.embeddings[space].shape[1], users.embeddings[space].shape[1]
        if dims[0] != dims[1]:
            raise ValueError(
                f"{root / KINDS['movie'] / space}.npy has {dims[0]} dims but {users_dir / space}.npy has {dims[1]}; "
                "a space shared by movies and users needs one dimension"
            )
    if (users_dir / "tags.csv").is_file():
        raise ValueError(f"{users_dir / 'tags.csv'}: tags are read for movies only (movies/tags.csv)")
    ratings_path = root / "ratings.csv"
    if ratings_path.is_file():
        ratings = _read_ratings(ratings_path, movies, users, root)
    else:
        ratings = sp.csr_matrix((len(users), len(movies)), dtype=np.float32)
    tags_path = root / KINDS["movie"] / "tags.csv"
    tags = _read_tags(tags_path, movies, root) if tags_path.is_file() else {}
    tables = {"movie": movies, "user": users}
    if (root / "split.json").is_file():
        test = _read_split(root / "split.json", tables, root)
    else:
        rng = np.random.default_rng(seed)
        test = {}
        for kind, fraction in (("movie", test_movies), ("user", test_users)):
            if not len(tables[kind]):
                continue
            try:
                test[kind] = random_split(len(tables[kind]), fraction, rng)
            except ValueError as e:
                raise ValueError(f"{root}: {kind}s: {e}; set data.catalog.test_{kind}s or write split.json") from None
    test.setdefault("user", np.zeros(0, np.int64))
    return Catalog(movies, users, ratings, test, tags)


def write_folder(catalog: Catalog, path: str | os.PathLike, *, overwrite: bool = False) -> pathlib.Path:
    """Writes a catalogue in the bring-your-own layout, all or nothing; `read_folder` gives it back unchanged.

    The split is written to split.json, so the folder reproduces the catalogue exactly: use it as an
    example of the format, or to hand a prepared catalogue to another machine.
    """
    out = pathlib.Path(path)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists; remove it or choose another folder")
    with atomic_dir(out) as tmp:
        split = {}
        for table in (catalog.movies, catalog.users):
            if not len(table):
                continue
            folder = tmp / KINDS[table.kind]
            folder.mkdir()
            texts = table.texts if table.texts is not None else [None] * len(table)
            rows = (
                {"id": i, "name": n, **({} if t is None else {"text": t})}
                for i, n, t in zip(table.ids.tolist(), table.names, texts)
            )
            (folder / ENTITIES).write_text(
                "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
            )
            for space, matrix in table.embeddings.items():
                if not _SPACE_NAME.fullmatch(space):
                    raise ValueError(f"{table.kind} space {space!r} is not a usable file name ([A-Za-z0-9_.-]+)")
                np.save(folder / f"{space}.npy", np.asarray(matrix, np.float32), allow_pickle=False)
            split[table.kind] = table.ids[np.asarray(catalog.test.get(table.kind, []), np.int64)].tolist()
        if catalog.tags:
            movie_ids = catalog.movies.ids.tolist()
            with open(tmp / KINDS["movie"] / "tags.csv", "w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f, lineterminator="\n")
                writer.writerow(("id", "tag"))
                writer.writerows((movie_ids[r], concept) for concept, rows in catalog.tags.items() for r in rows)
        if catalog.ratings.nnz:
            ratings = catalog.ratings.tocoo()
            with open(tmp / "ratings.csv", "w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f, lineterminator="\n")
                writer.writerow(("userId", "movieId", "rating"))
                user_ids, movie_ids = catalog.users.ids.tolist(), catalog.movies.ids.tolist()
                writer.writerows(
                    (user_ids[u], movie_ids[m], str(v))  # str of a float32: the shortest text that reads back exactly
                    for u, m, v in zip(ratings.row.tolist(), ratings.col.tolist(), ratings.data)
                )
        (tmp / "split.json").write_text(json.dumps(split, ensure_ascii=False) + "\n", encoding="utf-8")
    return out
