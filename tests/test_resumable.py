"""Chunked generation: reuse only what was made from the same inputs."""

import pytest

from elm_jax.resumable import map_in_chunks


def test_reuses_matching_chunks_and_redoes_changed_ones(tmp_path):
    calls = []

    def upper(chunk):
        calls.append(list(chunk))
        return [c.upper() for c in chunk]

    items = ["a", "b", "c", "d", "e"]
    assert map_in_chunks(items, items, upper, tmp_path, 2) == ["A", "B", "C", "D", "E"]
    assert len(calls) == 3
    assert map_in_chunks(items, items, upper, tmp_path, 2) == ["A", "B", "C", "D", "E"]
    assert len(calls) == 3  # all reused
    changed = ["a", "b", "x", "d", "e"]
    assert map_in_chunks(changed, changed, upper, tmp_path, 2) == ["A", "B", "X", "D", "E"]
    assert calls[3:] == [["x", "d"]]  # only the chunk whose inputs changed


def test_rejects_mismatched_inputs_and_outputs(tmp_path):
    with pytest.raises(ValueError, match="2 items but 1 keys"):
        map_in_chunks(["a", "b"], ["a"], lambda c: list(c), tmp_path, 2)
    with pytest.raises(RuntimeError, match="1 outputs for 2 inputs"):
        map_in_chunks(["a", "b"], ["a", "b"], lambda c: ["x"], tmp_path, 2)
    assert not list(tmp_path.iterdir())  # nothing half-written
