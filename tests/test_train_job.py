"""The `train` job end to end on a tiny config: prepare -> stage 1 -> stage 2 (LoRA), logs, checkpoints, resume."""

import json
import os
import subprocess
import sys

import numpy as np

from elm_jax.checkpoint import import_adapters
from tests import fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "elm_jax.main", "--config=configs/default.py:job=train", *args],
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=600,
    )


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_train_job_pulse_runs_both_stages_then_a_rerun_skips_them(tmp_path):
    work, args = fixtures.tiny_run(tmp_path)
    args += [
        "--config.targets.tasks=('summary','similarities','user_profile')",
        "--config.targets.per_task=4",
        "--config.targets.test_per_task=2",
        "--config.elm.adapter.hidden_dim=16",
        "--config.train.max_len=96",
        "--config.train.eval_examples=6",
        "--config.stage1.steps=3",
        "--config.stage1.warmup_steps=1",
        "--config.stage1.eval_every=2",
        "--config.stage1.save_every=2",
        "--config.stage2.steps=2",
        "--config.stage2.warmup_steps=1",
        "--config.stage2.lora.rank=2",
        "--config.stage2.trainable=adapters_.*",
    ]
    first = _train(*args)
    assert first.returncode == 0, first.stderr[-4000:]
    for stage, steps in (("stage1", 3), ("stage2", 2)):
        rows = _rows(work / stage / "logs" / "metrics.jsonl")
        train = [r for r in rows if r["split"] == "train"]
        assert train[-1]["step"] == steps and np.isfinite(train[-1]["loss"]) and train[-1]["tokens_per_s"] > 0
        assert {r["split"] for r in rows} == {"train", "eval", "eval_shuffled"}
        assert list((work / stage / "logs").glob("events.out.tfevents.*"))
        assert (work / stage / "checkpoints" / str(steps)).is_dir()
        params, adapters = import_adapters(work / stage / "adapters")
        assert [name for name, _ in adapters] == ["behavioral", "semantic"]
    assert "compiled: per device" in first.stderr  # the memory analysis comes before the first step

    evaluated = _train(
        *args,
        "--config.job=evaluate",
        "--config.eval.tasks=('summary','user_profile')",
        "--config.eval.max_examples_per_task=2",
        "--config.eval.max_new_tokens=3",
        "--config.eval.n_resamples=50",
        "--config.eval.conditions=('elm','zero')",
    )
    assert evaluated.returncode == 0, evaluated.stderr[-4000:]
    assert "evaluating stage1 (step 3), stage2 (step 2)" in evaluated.stdout
    report = json.loads((work / "eval" / "metrics.json").read_text())
    report_time = (work / "eval" / "metrics.json").stat().st_mtime
    assert set(report["tasks"]) == {"summary", "user_profile"}
    reliance = json.loads((work / "eval" / "vector_reliance.json").read_text())
    assert {k: r["rows"] for k, r in reliance.items()} == {"summary": 2, "user_profile": 2, "all": 4}
    assert all(np.isfinite([r["loss"], r["loss_shuffled"], r["gap"]["mean"]]).all() for r in reliance.values())

    second = _train(*args)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "stage1: already finished (step 3)" in second.stderr
    assert "stage2: already finished (step 2)" in second.stderr
    assert len(_rows(work / "stage2" / "logs" / "metrics.jsonl")) == len(rows)

    exported = _train(*args, "--config.job=export")
    assert exported.returncode == 0, exported.stderr[-4000:]
    manifest = json.loads((work / "export" / "elm.json").read_text())
    assert set(manifest["tasks"]) == {"summary", "similarities", "user_profile"} and manifest["chat"] is True
    assert all((work / "export" / "llm" / f).is_file() for f in ("model.safetensors", "tokenizer.json", "config.json"))
    assert [name for name, _ in import_adapters(work / "export" / "adapters")[1]] == ["behavioral", "semantic"]

    # The weights were trained for this adapter and these prompts: another setting is refused, field by field.
    changed = _train(*args, "--config.job=evaluate", "--config.elm.adapter.activation=relu", "--config.elm.chat=false")
    assert changed.returncode == 2, changed.stderr[-4000:]
    assert "elm.adapter.activation: trained with 'gelu', now 'relu'" in changed.stderr
    assert "elm.chat: trained with True, now False" in changed.stderr
    assert (work / "eval" / "metrics.json").stat().st_mtime == report_time  # nothing rewritten
    # Training on from these checkpoints also needs the same data stream; evaluation does not.
    resumed = _train(*args, "--config.train.batch_size=4")
    assert resumed.returncode == 2 and "train.batch_size: trained with 8, now 4" in resumed.stderr
    # More stage-1 steps after stage 2 trained from its step 3 would be lost under stage 2's weights.
    extended = _train(*args, "--config.stage1.steps=5")
    assert extended.returncode == 2
    assert "stage1.steps=5, but its checkpoints end at step 3 and stage2 already trained" in extended.stderr


def test_train_job_rejects_bad_stages_before_doing_any_work(tmp_path):
    result = _train(f"--workdir={tmp_path}", "--config.train.stages=('stage3',)")
    assert result.returncode == 2 and "stage3" in result.stderr
    result = _train(f"--workdir={tmp_path}", "--config.stage1.steps=5", "--config.stage1.warmup_steps=7")
    assert result.returncode == 2 and "config.stage1: optimizer" in result.stderr and "warmup_steps=7" in result.stderr
    assert not any(tmp_path.iterdir())
