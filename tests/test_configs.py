"""Every shipped config builds, and its training stages parse into valid stage settings."""

import pytest

from configs import default, movielens, pod
from elm_jax.train import stage_from_config


@pytest.mark.parametrize(
    "module, arg",
    [
        (default, None),
        (default, "llm=gemma3-270m,job=train"),
        (movielens, None),
        (movielens, "llm=gemma3-270m,targets=file"),
        (pod, "llm=/models/gemma-3-4b-pt"),
        (pod, "llm=/models/Llama-3.2-3B,lora=16"),
    ],
)
def test_config_builds_and_its_stages_parse(module, arg):
    config = module.get_config(arg)
    stages = [stage_from_config(name, config[name], config.seed) for name in config.train.stages]
    assert [s.name for s in stages] == ["stage1", "stage2"]
    assert stages[0].trainable == r"adapters_.*"
    assert config.train.batch_size % config.train.accum_steps == 0


def test_pod_lora_trains_adapters_and_factors_only():
    stage = stage_from_config("stage2", pod.get_config("llm=/m,lora=16").stage2, 0)
    assert stage.step.lora.rank == 16 and stage.trainable == r"(?:adapters_.*)|lora/.*"


def test_unknown_config_arg_is_refused():
    with pytest.raises(ValueError, match="config arg 'lorra' is unknown"):
        pod.get_config("lorra=2")
