"""The record of what a workdir's weights were trained with, and the checks that keep jobs from misloading them."""

import json

import pytest

from configs.default import get_config
from elm_jax import training_record


def test_a_job_with_the_training_settings_passes_and_any_changed_one_is_named(tmp_path):
    config = get_config()
    training_record.check_or_write(config, tmp_path, "abc", trained=False)
    training_record.check(config, tmp_path, "abc")
    training_record.check(config, tmp_path, "abc", resuming=True)
    config.elm.adapter.activation = "relu"
    config.stage2.lora.rank = 8
    with pytest.raises(ValueError, match="trained_with.json") as e:
        training_record.check(config, tmp_path, "xyz")
    for field in ("elm.adapter.activation: trained with 'gelu', now 'relu'", "stage2.lora.rank", "catalog"):
        assert field in str(e.value)
    config = get_config()
    config.llm.scan_layers = False  # the checkpoints' parameter layout
    with pytest.raises(ValueError, match="llm.scan_layers: trained with True, now False"):
        training_record.check(config, tmp_path, "abc")


def test_a_field_recorded_before_it_was_tracked_is_not_held_against_the_workdir(tmp_path):
    config = get_config()
    training_record.check_or_write(config, tmp_path, "abc", trained=False)
    path = tmp_path / training_record.RECORD
    record = json.loads(path.read_text())
    del record["weights"]["llm.scan_layers"]  # as an earlier version wrote it
    path.write_text(json.dumps(record))
    training_record.check(config, tmp_path, "abc")


def test_stages_may_be_loaded_alone_or_added_later_and_the_stream_counts_only_on_resume(tmp_path):
    config = get_config()
    config.train.stages = ("stage1",)
    training_record.check_or_write(config, tmp_path, "abc", trained=False)
    config.train.stages = ("stage1", "stage2")  # stage 2 trained later on top of stage 1: recorded then
    training_record.check_or_write(config, tmp_path, "abc", trained=True)
    assert set(json.loads((tmp_path / training_record.RECORD).read_text())["stages"]) == {"stage1", "stage2"}
    config.train.stages = ("stage1",)  # evaluating stage 1 alone
    config.train.batch_size = 4  # evaluation does not replay the data stream
    training_record.check(config, tmp_path, "abc")
    with pytest.raises(ValueError, match="train.batch_size: trained with 8, now 4"):
        training_record.check_or_write(config, tmp_path, "abc", trained=True)
    training_record.check_or_write(config, tmp_path, "abc", trained=False)  # nothing trained: a fresh record
    training_record.check(config, tmp_path, "abc", resuming=True)


def test_a_workdir_without_a_record_is_trusted(tmp_path, caplog):
    training_record.check(get_config(), tmp_path, "abc")
    assert "no record of the training settings" in caplog.text
