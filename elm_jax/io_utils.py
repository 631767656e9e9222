"""Atomic file writes: a crash or a bad input never leaves a half-written result behind."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """A temporary file beside `path` for a writer that opens files itself; renamed over `path` once the block
    succeeds, removed if it fails."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = pathlib.Path(name)
    try:
        yield tmp
        tmp.chmod(0o644)  # mkstemp makes it private; results are ordinary shared files
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _atomic_file(path: str | os.PathLike, mode: str) -> Iterator[IO]:
    """An open temporary file in `path`'s folder that is renamed over `path` once written, or removed on failure."""
    with atomic_path(path) as tmp, open(tmp, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
    """Writes to a temporary file in the same folder, then renames it over `path`."""
    with _atomic_file(path, "w") as f:
        f.write(text)
    return pathlib.Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> pathlib.Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> pathlib.Path:
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def atomic_write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> pathlib.Path:
    """np.savez, all or nothing (`path` should end in .npz: np.savez does not add it to an open file)."""
    with _atomic_file(path, "wb") as f:
        np.savez(f, **arrays)
    return pathlib.Path(path)


def make_shared(folder: pathlib.Path) -> None:
    """Folders 0755 and files 0644 under `folder`, itself included: mkdtemp and some writers (safetensors)
    make them private, but results and caches are ordinary shared files."""
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yields a temporary folder beside `path` to fill; on success it replaces `path` whole, on failure it goes.

    Readers never see a half-written folder, and a failed rewrite keeps the old folder intact.
    """
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        make_shared(tmp)
        if out.exists():  # swap: the old folder stays whole until the new one is in place
            old = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old / out.name, out)
                raise
            finally:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_jsonl_objects(path: pathlib.Path, expected: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a user's JSONL file; a line that is not a JSON object
    raises an error naming it (`path:line`) and what was `expected` there."""
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON: {e}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object with {expected}")
            yield line_no, row
