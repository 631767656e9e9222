"""The prepare job: targets split by entity, tag CAVs, outputs reused while their inputs are unchanged."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import default
from elm_jax.data import cavs, folder, prepare
from elm_jax.data import targets as targets_lib
from elm_jax.data import tasks as tasks_lib
from tests import fixtures
from tests.test_folder import _catalog

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _prepare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "elm_jax.main", "--config=configs/default.py:job=prepare", *args],
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _mtimes(*folders):
    return {p: p.stat().st_mtime_ns for f in folders for p in sorted(f.rglob("*")) if p.is_file()}


def test_prepare_job_on_the_default_catalogue_then_a_second_run_reuses_everything(tmp_path):
    encoder = fixtures.write_bert_checkpoint(tmp_path / "encoder")
    work, export = tmp_path / "run", tmp_path / "example"
    args = [
        f"--workdir={work}",
        f"--config.encoder.checkpoint={encoder}",
        "--config.data.synthetic.n_movies=120",
        "--config.data.synthetic.n_users=80",
        "--config.data.catalog.wals.rank=8",
        "--config.data.catalog.wals.iterations=3",
        "--config.targets.tasks=('movie','user')",  # all 25 tasks (the default trains five)
        "--config.targets.per_task=3",
        "--config.targets.test_per_task=2",
        f"--config.prepare.export={export}",
    ]
    first = _prepare(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "targets (metadata, written): 75 train, 50 test over 25 tasks" in first.stdout

    catalog = folder.read_folder(export)  # the exported catalogue, split included, is the one prepared
    registry = tasks_lib.registry()
    split = {s: targets_lib.read_jsonl(work / "targets" / f"{s}.jsonl", catalog, registry) for s in ("train", "test")}
    for name, targets in split.items():
        targets_lib.check_split(catalog, registry, targets, name)
    entities = {s: {(registry[t.task].entity, e) for t in ts for e in t.entities} for s, ts in split.items()}
    assert not entities["train"] & entities["test"]
    summary = json.loads((work / "targets" / "summary.json").read_text())
    assert summary["counts"]["train"]["user_profile"] == 3 and summary["counts"]["test"]["summary"] == 2

    cav_summary = json.loads((work / "cavs" / "summary.json").read_text())
    assert set(cav_summary["spaces"]) == {"behavioral", "semantic"}
    for space, report in cav_summary["spaces"].items():
        learned = cavs.load_cavs(work / "cavs" / f"{space}.npz")
        assert learned and set(learned) == set(report["concepts"])
        dim = catalog.movies.embeddings[space].shape[1]
        for concept, cav in learned.items():
            assert cav.space == space and cav.direction.shape == (dim,)
            assert np.linalg.norm(cav.direction) == pytest.approx(1.0, abs=1e-5)
            assert cav.accuracy == pytest.approx(report["concepts"][concept]["accuracy"])

    before = _mtimes(work / "targets", work / "cavs", export)
    second = _prepare(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "targets (metadata, reused)" in second.stdout and "cavs semantic (reused)" in second.stdout
    assert f"catalogue already in {export}" in second.stdout
    assert _mtimes(work / "targets", work / "cavs", export) == before


def test_bad_input_fails_cleanly_and_writes_no_targets(tmp_path):
    data = folder.write_folder(_catalog(), tmp_path / "mine")
    result = _prepare(f"--workdir={tmp_path / 'run'}", "--config.data.source=folder", f"--config.data.path={data}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "targets.source='metadata'" in result.stderr and "data.source='folder' lacks" in result.stderr
    assert not (tmp_path / "run" / "targets").exists()


def _folder_config(data, **targets):
    config = default.get_config("job=prepare")
    config.data.source, config.data.path = "folder", str(data)
    config.targets.update(targets)
    return config


def test_teacher_targets_from_a_folder_are_reused_until_a_setting_changes(tmp_path, monkeypatch):
    data = folder.write_folder(_catalog(), tmp_path / "mine")
    prompts = []

    def fake_teacher(teacher, seed, mesh):
        def generate(batch):
            prompts.extend(batch)
            return [f"{teacher['max_new_tokens']} tokens about it" for _ in batch]

        return generate

    monkeypatch.setattr(prepare, "_teacher", fake_teacher)
    tasks = ("summary", "similarities", "user_profile")
    config = _folder_config(data, source="teacher", tasks=tasks, per_task=2, test_per_task=1)
    prepare.run(config, tmp_path / "run")
    assert len(prompts) == 9 and all("Do not use" in p for p in prompts[:2])
    rows = (tmp_path / "run" / "targets" / "train.jsonl").read_text().splitlines()
    assert [json.loads(r)["task"] for r in rows] == ["summary"] * 2 + ["similarities"] * 2 + ["user_profile"] * 2

    prepare.run(config, tmp_path / "run")
    assert len(prompts) == 9  # reused: no generation, no teacher loaded
    config.targets.teacher.max_new_tokens = 7
    prepare.run(config, tmp_path / "run")
    assert len(prompts) == 18 and "7 tokens" in (tmp_path / "run" / "targets" / "test.jsonl").read_text()


def test_file_targets_keep_each_row_on_its_side_of_the_split(tmp_path):
    data = folder.write_folder(_catalog(), tmp_path / "mine")
    catalog = folder.read_folder(data)  # test movies m0, m5, ...; test users 103, 107
    rows = [
        ("summary", ["m1"]),
        ("summary", ["m2"]),
        ("summary", ["m3"]),
        ("summary", ["m5"]),
        ("similarities", ["m1", "m2"]),
        ("similarities", ["m1", "m5"]),  # straddles the split: dropped
        ("similarities", ["m0", "m5"]),
        ("user_profile", ["103"]),
        ("pitch", ["m4"]),  # a task not selected
    ]
    path = tmp_path / "mine.jsonl"
    path.write_text(
        "".join(json.dumps({"task": t, "entities": e, "target": f"text {i}"}) + "\n" for i, (t, e) in enumerate(rows))
    )
    config = _folder_config(data, source="file", file=str(path), tasks=("summary", "similarities", "user"), per_task=2)
    prepare.run(config, tmp_path / "run")

    def read(split):
        path = tmp_path / "run" / "targets" / f"{split}.jsonl"
        return [(t.task, list(t.entities)) for t in targets_lib.read_jsonl(path, catalog, tasks_lib.registry())]

    assert read("train") == [rows[0], rows[1], rows[4]]  # at most per_task=2 per task
    assert read("test") == [rows[3], rows[6], rows[7]]

    config.targets.file = str(tmp_path / "none.jsonl")
    with pytest.raises(FileNotFoundError, match="none.jsonl \\(targets.file\\) does not exist"):
        prepare.run(config, tmp_path / "run")


def test_tasks_follow_what_the_catalogue_has(tmp_path):
    registry = tasks_lib.registry()
    without_users = _catalog(with_users=False)
    assert [t.name for t in prepare.select_tasks(without_users, ["summary", "user"], registry)] == ["summary"]
    with pytest.raises(ValueError, match="leaves no task"):
        prepare.select_tasks(without_users, ["user_profile"], registry)
    no_semantic = _catalog()
    del no_semantic.movies.embeddings["semantic"]
    with pytest.raises(ValueError, match="'summary' reads the movie space 'semantic'.*movies/semantic.npy"):
        prepare.select_tasks(no_semantic, ["summary"], registry)


def test_cavs_are_rewritten_when_their_inputs_change(tmp_path):
    catalog = _catalog()
    rng = np.random.default_rng(1)
    catalog.tags = {"planted": np.flatnonzero(catalog.movies.embeddings["semantic"][:, 0] > 0).tolist()}
    catalog.tags["random"] = rng.choice(30, 12, replace=False).tolist()
    first = prepare.write_cavs(tmp_path, catalog, min_positives=10, l2=1e-3, seed=0)
    assert not first.reused and set(first.summary["spaces"]["semantic"]["concepts"]) <= {"planted", "random"}
    assert prepare.write_cavs(tmp_path, catalog, min_positives=10, l2=1e-3, seed=0).reused
    del catalog.movies.embeddings["behavioral"]
    third = prepare.write_cavs(tmp_path, catalog, min_positives=12, l2=1e-3, seed=0)
    assert not third.reused and sorted(p.name for p in tmp_path.iterdir()) == ["semantic.npz", "summary.json"]
