"""The paper's App. D toy task on the real SmolLM2: with stage 1 first, the vector is decoded within tens of steps."""

import pytest

from elm_jax import toy_ablation

pytestmark = pytest.mark.pretrained


def test_two_stage_training_decodes_one_and_two(tmp_path):
    history = toy_ablation.run(
        "smollm2-135m-instruct", tmp_path, stage1_steps=30, stage2_steps=10, regimes=("two_stage",)
    )["two_stage"]
    assert [r["step"] for r in history] == [10, 20, 30, 40]
    assert history[0]["accuracy"] < 1.0  # the fresh adapter does not already say the words
    assert all(r["accuracy"] == 1.0 for r in history[2:])  # "one" and "two" (and the end token) exactly
    assert history[-1]["loss"] < 0.1
