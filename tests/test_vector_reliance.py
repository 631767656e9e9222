"""Held-out loss with true vs shuffled vectors: positive for an ELM that reads its vector, zero when it cannot."""

import dataclasses

import numpy as np
import pytest

from elm_jax import sharding as shd
from elm_jax.data.train_batches import Batches, BatchSpec
from elm_jax.eval.vector_reliance import format_table, vector_reliance
from elm_jax.optim import OptimConfig
from elm_jax.train import StageConfig, train_stage
from elm_jax.train_step import StepConfig
from tests import fixtures


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model, params, sequences = fixtures.tiny_elm(tmp_path_factory.mktemp("llm"))
    sequences = [dataclasses.replace(s, task="odd" if i % 2 else "even") for i, s in enumerate(sequences)]
    spec = BatchSpec(global_batch=8, seq_len=12, space_dims=(("semantic", 4),), max_slots=1)
    stage = StageConfig(
        "stage1", r"adapters_.*", OptimConfig(learning_rate=2e-2, steps=30, warmup_steps=1), StepConfig()
    )
    mesh = shd.make_mesh({"data": -1})
    out = train_stage(model, params, stage, Batches(sequences, spec, 0, seed=0), mesh, tmp_path_factory.mktemp("run"))
    return model, params, out, sequences


def test_a_trained_elm_relies_on_its_vector_task_by_task(trained):
    model, _, params, sequences = trained
    result = vector_reliance(model, params, sequences, pad_id=0, n_resamples=200)
    assert list(result) == ["even", "odd", "all"]
    assert [result[k]["rows"] for k in result] == [12, 12, 24]
    for r in result.values():
        assert r["loss_shuffled"] > r["loss"]
        assert r["gap"]["ci_low"] > 0 and r["true_better"]["mean"] > 0.5
    # The pooled row pools the tasks' rows (each row has 4 target tokens, so losses average).
    assert result["all"]["loss"] == pytest.approx((result["even"]["loss"] + result["odd"]["loss"]) / 2, rel=1e-5)
    assert "| all | 24 |" in format_table(result)


def test_no_gap_when_the_adapter_ignores_its_input(trained):
    model, _, params, sequences = trained
    # A zero output layer gives every vector the same soft token: the gap is exactly zero, and a tie is no win.
    blind = {**params, "adapters_semantic": {**params["adapters_semantic"]}}
    blind["adapters_semantic"]["fc2"] = {**params["adapters_semantic"]["fc2"]}
    blind["adapters_semantic"]["fc2"]["kernel"] = np.zeros_like(params["adapters_semantic"]["fc2"]["kernel"])
    r = vector_reliance(model, blind, sequences, pad_id=0, n_resamples=50)["all"]
    assert r["loss"] == r["loss_shuffled"]
    assert r["gap"]["mean"] == 0 and r["true_better"]["mean"] == 0
    with pytest.raises(ValueError, match="at least 2"):
        vector_reliance(model, params, sequences[:1], pad_id=0)
    same = [dataclasses.replace(s, vectors=sequences[0].vectors) for s in sequences]
    with pytest.raises(ValueError, match="cannot shuffle"):  # one entity everywhere: no other vector to give
        vector_reliance(model, params, same, pad_id=0)


def test_rows_of_a_last_partial_batch_are_scored_like_the_others(trained):
    model, _, params, sequences = trained
    full = vector_reliance(model, params, sequences[:16], pad_id=0, n_resamples=50)["all"]
    np.testing.assert_allclose(
        vector_reliance(model, params, sequences[:16], pad_id=0, batch_size=3, n_resamples=50)["all"]["loss"],
        full["loss"],
        rtol=1e-5,
    )
