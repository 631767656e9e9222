"""The `report` job end to end on tiny models and a tiny default catalogue: every section, and JSON == HTML."""

import json
import os
import re
import subprocess
import sys

import pytest

from elm_jax.eval import report, report_render
from tests import fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ("Table 2", "Fig. 3", "Fig. 4", "Fig. 5", "Example generations", "Map")


def _job(job: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "elm_jax.main", f"--config=configs/default.py:job={job}", *args],
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=600,
    )


def _estimates(node):
    """Every {"mean", "ci_low", "ci_high"} dict in a JSON tree."""
    if isinstance(node, dict):
        if {"mean", "ci_low", "ci_high"} <= set(node):
            yield node
        else:
            for v in node.values():
                yield from _estimates(v)
    elif isinstance(node, list):
        for v in node:
            yield from _estimates(v)


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    work, args = fixtures.tiny_run(root)
    args += [
        "--config.targets.tasks=('summary','five_pos_char','user_profile')",
        "--config.elm.adapter.hidden_dim=16",
        "--config.eval.untrained=True",  # fresh adapters: the structure, not the quality, is under test
        "--config.eval.tasks=('summary','user_profile')",
        "--config.eval.conditions=('elm','text')",
        "--config.eval.max_examples_per_task=3",
        "--config.eval.max_new_tokens=3",
        "--config.eval.n_resamples=50",
        "--config.report.n_movies=2",
        "--config.report.n_users=2",
        "--config.report.interpolation_tasks=('summary','pitch')",  # pitch is not trained: listed as left out
        "--config.report.sweep_tasks=('five_pos_char',)",
        "--config.report.alphas=(0.25,0.75)",
        "--config.report.user_alphas=(0.0,0.5)",
        "--config.report.min_cav_accuracy=0.0",
        "--config.report.n_movie_concepts=1",
        "--config.report.n_user_concepts=2",
        "--config.report.n_examples=2",
        "--config.report.map_points=3",
    ]
    result = _job("report", *args)
    assert result.returncode == 0, result.stderr[-4000:]
    return work, args, result


def test_report_has_every_section_self_contained(reported):
    work, _, result = reported
    assert (work / "eval" / "metrics.json").is_file()  # evaluated first: eval/ was missing
    page = (work / "report" / "report.html").read_text()
    data = json.loads((work / "report" / "report.json").read_text())
    assert f"wrote {work / 'report' / 'report.html'}" in result.stdout
    for section in SECTIONS:
        assert f"<h2>{section}" in page, section
    assert page.count('src="data:image/png;base64,') == 5  # Table 2, Figs. 3-5, the map
    assert not re.search(r'(src|href)="(http|file|/)', page)  # nothing outside the page
    assert "untrained" in page
    assert set(data["table2"]["tasks"]) == {"summary", "user_profile"}
    assert set(data["fig3"]["tasks"]) == {"summary", "user_profile"} and data["fig3"]["not_trained"] == ["pitch"]
    assert list(data["fig4"]["tasks"]["five_pos_char"])[0] == "interpolation"
    assert len(data["fig4"]["tasks"]["five_pos_char"]) == 2  # interpolation + one CAV
    assert all({"accuracy", "gap"} <= set(v) for v in data["fig4"]["concepts"].values())
    assert len(data["fig5"]["lines"]) == 2 and all(len(v) == 2 for v in data["fig5"]["lines"].values())
    assert {"random", "ground_truth"} <= set(data["fig5"])
    assert [p["alpha"] for p in data["map"]["path"]] == [0.0, 0.5, 1.0]
    assert set(data["examples"]) == {"summary", "user_profile"}
    assert all(len(v) == 2 for v in data["examples"].values())


def test_html_shows_the_numbers_of_the_json(reported):
    work, _, _ = reported
    page = (work / "report" / "report.html").read_text()
    data = json.loads((work / "report" / "report.json").read_text())
    estimates = list(_estimates(data))
    assert len(estimates) > 20
    for e in estimates:
        assert report_render.fmt(e) in page
    for name, paper in data["table2"]["paper"].items():
        assert f"{paper['sc']:.2f}" in page and name in page
    for example in data["fig3"]["examples"]:
        assert f"{example.get('elm_sc', example.get('elm_bc')):.3f}" in page


def test_a_rerun_reuses_eval_and_generations(reported):
    work, args, _ = reported
    stamp = (work / "eval" / "metrics.json").stat().st_mtime
    chunks = sorted((work / "report" / "generations").rglob("*.json"))
    before = {p: p.stat().st_mtime for p in chunks}
    again = _job("report", *args)
    assert again.returncode == 0, again.stderr[-4000:]
    assert (work / "eval" / "metrics.json").stat().st_mtime == stamp
    assert {p: p.stat().st_mtime for p in chunks} == before


def test_bad_report_settings_are_named():
    with pytest.raises(ValueError, match="report.split"):
        report.ReportSettings(split="validation")
    with pytest.raises(ValueError, match="report.map_points"):
        report.ReportSettings(map_points=1)


def _recorded_eval(config, **model_changes) -> dict:
    """metrics.json as an evaluation with `config` writes it (the parts needs_evaluation reads)."""
    import dataclasses

    from elm_jax.data import tasks as tasks_lib
    from elm_jax.eval import pipeline

    model = {
        "llm": config.llm.checkpoint,
        "chat": bool(config.elm.chat),
        "tokens_per_slot": config.elm.adapter.num_tokens,
        "sampling": dataclasses.asdict(pipeline.sampling_from_config(config)),
        "untrained": bool(config.eval.untrained),
        "stages": [],
        "runs": [],
    }
    settings = json.loads(json.dumps(dataclasses.asdict(pipeline.settings_from_config(config))))
    tasks = {t.name: {} for t in tasks_lib.select(list(config.eval.tasks), tasks_lib.registry())}
    return {"model": {**model, **model_changes}, "settings": settings, "tasks": tasks}


def test_eval_made_with_other_settings_is_stale(tmp_path):
    """Table 2 comes from eval/metrics.json: an untrained evaluation never stands in for the trained ELM's (and
    back), nor one made with another LLM, sampling (int8 weights included), prompt layout, task list or evaluation
    setting."""
    from configs import default

    config = default.get_config()
    (tmp_path / "eval").mkdir()
    metrics = tmp_path / "eval" / "metrics.json"
    for recorded, untrained, stale in ((True, False, True), (False, True, True), (True, True, False)):
        config.eval.untrained = untrained
        metrics.write_text(json.dumps(_recorded_eval(config, untrained=recorded)))
        assert report.needs_evaluation(config, tmp_path) is stale
    changes = (
        ("temperature", 0.7),
        ("max_new_tokens", 9),
        ("quant", "int8"),
        ("tasks", ("summary",)),
        ("n_resamples", 7),
    )
    for field, value in changes:
        changed = default.get_config()
        changed.eval.untrained = True
        changed.eval[field] = value
        assert report.needs_evaluation(changed, tmp_path), field
    config.llm.checkpoint = "gemma3-270m"
    assert report.needs_evaluation(config, tmp_path)
    metrics.write_text(json.dumps({"tasks": {}}))  # written before the model was recorded
    config.eval.untrained = False
    assert report.needs_evaluation(config, tmp_path)


def test_kept_report_texts_are_keyed_by_their_task_and_vectors(tmp_path, monkeypatch):
    """Re-learned CAVs move the same (movie, concept, alpha) elsewhere, and an edited task asks something else:
    neither may reuse a kept text."""
    import types

    import numpy as np

    from elm_jax.data.tasks import Task

    def fake(self, chunk):
        return [f"{task.template}|{vectors[0][0]:.1f}" for task, vectors in chunk]

    monkeypatch.setattr(report._Generations, "_elm_chunk", fake)
    tools = types.SimpleNamespace(
        identity="model", talker=types.SimpleNamespace(settings=types.SimpleNamespace(seed=0))
    )
    task = Task("summary", "Sum {movie}.", "Sum {movie}.", {"movie": "semantic"})

    def texts(task, value):  # a fresh run each time: only what is kept on disk carries over
        return report._Generations(tools, tmp_path, 4).elm(
            "fig4", [("summary|cav|funny|m1|1", task, [np.full(2, value)])]
        )

    assert texts(task, 1.0) == ["Sum {movie}.|1.0"]
    assert texts(task, 2.0) == ["Sum {movie}.|2.0"]
    edited = Task("summary", "Summarise {movie}.", "Sum {movie}.", {"movie": "semantic"})
    assert texts(edited, 2.0) == ["Summarise {movie}.|2.0"]


def test_free_text_renders_safely():
    """Tags are user text (escaped in the page), and decoded texts may hold "$" (not matplotlib's mathtext)."""
    e = {"mean": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 3, "n_dropped": 0}
    concept = "<img src=x onerror=alert(1)>"
    f4 = {
        "alphas": [0.5],
        "anchor": "A",
        "concepts": {concept: {"accuracy": 0.9, "n_positive": 5, "gap": 1.0}},
        "spread": 1.0,
        "not_trained": [],
        "examples": [],
        "tasks": {"summary": {"interpolation": [e], f"cav:{concept}": [e]}},
    }
    assert concept not in report_render._fig4(f4)
    money = "Made for $5,000 (50% of it on effects), it earned $3 million."
    path = [
        {"alpha": a, "xy": [a, a], "text_xy": [a, 0.1], "sc": 0.8, "text": money if a == 0.5 else "A film."}
        for a in (0.0, 0.5, 1.0)
    ]
    m = {"task": "summary", "start": "A ($1)", "anchor": "B ($2)", "movies": [[0, 0], [1, 1], [0.5, 0.2]]}
    assert "<img" in report_render._map({**m, "endpoints_xy": [[0, 0], [1, 1]], "path": path})
