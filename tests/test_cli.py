"""The command-line entry point end to end on a tiny checkpoint: outputs, overrides, clear errors."""

import json
import os
import subprocess
import sys

import pytest

from tests import fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args: str, cwd: str = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "elm_jax.main", "--config=configs/default.py:job=generate", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return fixtures.write_hf_checkpoint(tmp_path_factory.mktemp("llm"), "llama")


def test_generate_job_writes_generations(tiny_checkpoint, tmp_path):
    result = _run(
        f"--workdir={tmp_path}",
        f"--config.llm.checkpoint={tiny_checkpoint}",
        "--config.generate.max_new_tokens=3",
        "--config.mesh.tensor=1",
        "--config.generate.batch_size=2",
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [
        "What is the capital of France?",
        "Describe the movie Titanic in one sentence.",
        "Write a one-sentence review of a funny animated movie about a talking dog.",
    ]
    assert all(isinstance(r["completion"], str) for r in rows)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config.llm.checkpoint=/no/such/model"], "/no/such/model"),
        (["--config.generate.max_new_tokens=0"], "max_new_tokens"),
        (["--config.mesh.tensor=3"], "devices"),
        (["--config.generate.quant=int4"], "quant"),
    ],
)
def test_bad_input_fails_cleanly_and_writes_nothing(tiny_checkpoint, tmp_path, args, message):
    base = [f"--workdir={tmp_path}", f"--config.llm.checkpoint={tiny_checkpoint}"]
    result = _run(*base, *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "generations.jsonl").exists()


def test_unknown_config_field_is_rejected(tmp_path):
    result = _run(f"--workdir={tmp_path}", "--config.generate.max_new_tokenz=3")
    assert result.returncode != 0 and "max_new_tokenz" in result.stderr


def test_config_arg_selects_the_llm():
    sys.path.insert(0, REPO)
    from configs import default

    assert default.get_config().llm.checkpoint == "smollm2-135m-instruct"
    gemma = default.get_config("llm=gemma3-270m")
    assert gemma.llm.checkpoint == "gemma3-270m" and gemma.generate.chat is False
    with pytest.raises(ValueError, match="lmm"):
        default.get_config("lmm=x")


def test_evaluate_job_on_the_default_catalogue_with_tiny_models(tiny_checkpoint, tmp_path):
    encoder = fixtures.write_bert_checkpoint(tmp_path / "encoder")
    args = [
        f"--workdir={tmp_path / 'run'}",
        f"--config.llm.checkpoint={tiny_checkpoint}",
        f"--config.encoder.checkpoint={encoder}",
        "--config.data.synthetic.n_movies=120",
        "--config.data.synthetic.n_users=80",
        "--config.data.catalog.wals.rank=8",
        "--config.data.catalog.wals.iterations=3",
        "--config.eval.tasks=('summary','similarities','user_profile')",
        "--config.eval.max_examples_per_task=4",
        "--config.eval.max_new_tokens=4",
        "--config.eval.n_resamples=100",
        "--config.elm.adapter.hidden_dim=16",
        "--config.eval.untrained=True",  # fresh adapters: tests/test_train_job.py evaluates a trained ELM
    ]
    result = subprocess.run(
        [sys.executable, "-m", "elm_jax.main", "--config=configs/default.py:job=evaluate", *args],
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert set(report["tasks"]) == {"summary", "similarities", "user_profile"}
    assert "| single/elm |" in result.stdout
    assert "held-out loss with true vs shuffled vectors" in result.stdout and "| all |" in result.stdout
    rows = (tmp_path / "run" / "eval" / "generations.jsonl").read_text().splitlines()
    assert len(rows) == 4 * (4 + 4 + 4)
