"""The paper's App. D toy task on the real SmolLM2: with stage 1 first, the vector is decoded within tens of steps.
And its bookkeeping on a tiny random model."""

import pytest

from elm_jax import toy_ablation
from tests import fixtures


@pytest.mark.pretrained
def test_two_stage_training_decodes_one_and_two(tmp_path):
    history = toy_ablation.run(
        "smollm2-135m-instruct", tmp_path, stage1_steps=30, stage2_steps=10, regimes=("two_stage",)
    )["two_stage"]
    assert [r["step"] for r in history] == [10, 20, 30, 40]
    assert history[0]["accuracy"] < 1.0  # the fresh adapter does not already say the words
    assert all(r["accuracy"] == 1.0 for r in history[2:])  # "one" and "two" (and the end token) exactly
    assert history[-1]["loss"] < 0.1


def test_a_rerun_with_other_settings_trains_anew_and_bad_regimes_fail_first(tmp_path):
    llm = str(fixtures.write_hf_checkpoint(tmp_path / "llm", "llama"))
    run = lambda lr: toy_ablation.run(
        llm, tmp_path / "toy", stage1_steps=1, stage2_steps=1, model_lr=lr, eval_every=1, regimes=("single_stage",)
    )["single_stage"]
    first = run(1e-3)
    assert run(1e-3) == first  # the same settings: resumed (nothing left to train), the same history
    other = run(1e-1)
    assert [r["step"] for r in other] == [1, 2] and other != first
    with pytest.raises(ValueError, match="regime 'three_stage'"):
        toy_ablation.run(llm, tmp_path / "toy", regimes=("single_stage", "three_stage"))
