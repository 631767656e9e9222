"""Long generation jobs that survive interruption: results are kept per chunk, each written atomically.

A chunk is reused only if it was made from exactly the same inputs (its keys), so changing the examples,
the prompts or a setting that shapes them never silently mixes old and new outputs.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Sequence
from typing import TypeVar

from elm_jax.io_utils import atomic_write_json

T = TypeVar("T")


def map_in_chunks(
    items: Sequence[T],
    keys: Sequence[str],
    fn: Callable[[Sequence[T]], list[str]],
    folder: str | pathlib.Path,
    chunk_size: int,
    on_chunk: Callable[[int], None] | None = None,
) -> list[str]:
    """fn over `items` in chunks, reusing chunks already on disk under `folder` whose keys match."""
    if len(items) != len(keys):
        raise ValueError(f"{len(items)} items but {len(keys)} keys")
    folder = pathlib.Path(folder)
    out: list[str] = []
    for start in range(0, len(items), chunk_size):
        chunk, chunk_keys = items[start : start + chunk_size], list(keys[start : start + chunk_size])
        path = folder / f"{start:06d}.json"
        saved = json.loads(path.read_text()) if path.is_file() else None
        if saved is None or saved.get("keys") != chunk_keys:
            outputs = fn(chunk)
            if len(outputs) != len(chunk):
                raise RuntimeError(f"generation returned {len(outputs)} outputs for {len(chunk)} inputs")
            saved = {"keys": chunk_keys, "outputs": outputs}
            atomic_write_json(path, saved)
        out += saved["outputs"]
        if on_chunk is not None:
            on_chunk(len(chunk))
    return out
