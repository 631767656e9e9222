"""The accelerator benchmarks run end to end on CPU with tiny shapes, so a lent GPU's minutes go to measuring."""

import pathlib
import sys

import pytest

from elm_jax import sharding as shd
from elm_jax.models.decoder_config import DecoderConfig
from elm_jax.train_log import train_flops_per_token

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "benchmarks"))
import train_accelerator  # noqa: E402

TINY = DecoderConfig(
    family="llama",
    vocab_size=128,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    mlp_dim=64,
    dtype="bfloat16",
)


@pytest.mark.parametrize("stage", [1, 2])
def test_train_accelerator_measures_the_trainer_step_on_a_sharded_mesh(stage):
    mesh = shd.make_mesh({"fsdp": 2, "data": -1})
    row = train_accelerator.measure_config(TINY, stage, batch=8, seq=16, target=8, mesh=mesh, steps=2, peak=1e9)
    flops = train_flops_per_token(TINY, 16, weight_grads=stage == 2, head_tokens=8)
    assert row["tokens_per_s"] == pytest.approx(8 * 16 / (row["step_ms"] / 1e3))
    assert row["mfu"] == pytest.approx(row["tokens_per_s"] * flops / (mesh.devices.size * 1e9))
    assert 0 < row["step_ms_range"][0] <= row["step_ms"] <= row["step_ms_range"][1]
    assert 4.0 < row["first_loss"] < 6.0  # ~log(128): random weights, a real cross-entropy
