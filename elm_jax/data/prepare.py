"""The `prepare` job: training targets and tag CAVs on disk, ready for training and evaluation.

    workdir/targets/train.jsonl, test.jsonl  targets from config.targets.source, split by entity
    workdir/targets/summary.json             counts per task, the inputs, and their fingerprint
    workdir/cavs/<space>.npz                 tag CAVs in each movie space (`cavs.load_cavs`)
    workdir/cavs/summary.json                held-out accuracy per concept and space, the inputs, the fingerprint

Every file is written atomically and each summary last. A rerun whose inputs (the catalogue's contents, the
tasks, the settings, a targets file's bytes) hash to the recorded fingerprint reuses the outputs, so only a
changed input costs time; a teacher's generations are also kept per chunk and survive an interruption.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import pathlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from elm_jax.data import cavs, folder, sources, synthetic
from elm_jax.data import targets as targets_lib
from elm_jax.data import tasks as tasks_lib
from elm_jax.data.catalog import Catalog, fingerprint
from elm_jax.data.examples import SPLITS, split_rows
from elm_jax.data.metadata_targets import metadata_targets
from elm_jax.data.movielens import RatingsData
from elm_jax.data.targets import Target
from elm_jax.data.tasks import Task
from elm_jax.io_utils import atomic_write_json

_VERSION = 3  # bump when the outputs of the same inputs change (2: CAVs keep the space's geometry; 3: training
# user profiles name training movies only, genre comparisons against training movies, stratified CAV splits)
TARGET_SOURCES = ("metadata", "teacher", "file")
MakeTargets = Callable[[str], list[Target]]  # split -> targets of that side


@dataclasses.dataclass(frozen=True)
class Step:
    summary: dict[str, Any]  # what summary.json holds
    reused: bool  # True when the outputs on disk matched the inputs


def _hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _reusable(summary_path: pathlib.Path, fingerprint_: str, outputs: Iterable[pathlib.Path]) -> dict | None:
    """The summary on disk if it records `fingerprint_` and every output is there; else None."""
    try:
        summary = json.loads(summary_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    ok = isinstance(summary, dict) and summary.get("fingerprint") == fingerprint_
    return summary if ok and all(p.is_file() for p in outputs) else None


def select_tasks(catalog: Catalog, names: Sequence[str], registry: Mapping[str, Task]) -> list[Task]:
    """The named tasks, less user tasks when the catalogue has no users; a task's missing space is an error."""
    tasks = tasks_lib.select(names, registry)
    if not len(catalog.users):
        dropped = [t.name for t in tasks if t.entity == "user"]
        if dropped:
            logging.info("the catalogue has no users: leaving out %s", ", ".join(dropped))
        tasks = [t for t in tasks if t.entity != "user"]
    for task in tasks:
        table = catalog.table(task.entity)
        for space in task.spaces.values():
            if space not in table.embeddings:
                raise ValueError(
                    f"task {task.name!r} reads the {task.entity} space {space!r}, which the catalogue lacks "
                    f"(it has {sorted(table.embeddings)}); a folder needs {folder.KINDS[task.entity]}/{space}.npy, "
                    "or leave the task out of targets.tasks"
                )
    if not tasks:
        raise ValueError(f"targets.tasks={tuple(names)} leaves no task this catalogue can serve")
    return tasks


def file_targets(
    path: pathlib.Path,
    catalog: Catalog,
    tasks: Sequence[Task],
    registry: Mapping[str, Task],
    split: str,
    limit: int | None,
) -> list[Target]:
    """A user's JSONL rows of the selected tasks whose entities all lie on `split`'s side (up to `limit` per task).

    The file need not know the split: rows of a pair that straddles it are dropped (and counted in the log).
    """
    selected = {t.name: t for t in tasks}
    side = {
        kind: {str(i) for i in catalog.table(kind).ids[split_rows(catalog, kind, split)].tolist()}
        for kind in {t.entity for t in tasks}
    }
    out: list[Target] = []
    counts: collections.Counter[str] = collections.Counter()
    straddling = 0
    for target in targets_lib.read_jsonl(path, catalog, registry):
        task = selected.get(target.task)
        if task is None:
            continue
        inside = [e in side[task.entity] for e in target.entities]
        if not all(inside):
            straddling += any(inside)
            continue
        if limit is None or counts[target.task] < limit:
            out.append(target)
            counts[target.task] += 1
    if straddling:
        logging.info("%s: %d rows mix train and test entities and go to neither side", path, straddling)
    return out


def target_source(
    config: Any,
    catalog: Catalog,
    raw: RatingsData | None,
    tasks: Sequence[Task],
    registry: Mapping[str, Task],
    teacher_dir: pathlib.Path,
    mesh=None,
) -> tuple[dict[str, Any], MakeTargets]:
    """The inputs that shape the targets (for the fingerprint) and the function that makes them."""
    t = config.targets
    limits = {"train": t.per_task, "test": t.test_per_task}
    inputs: dict[str, Any] = {
        "version": _VERSION,
        "catalog": fingerprint(catalog),
        "source": t.source,
        "tasks": [dataclasses.asdict(task) for task in tasks],
        "limits": limits,
        "seed": config.seed,
    }
    if t.source == "metadata":
        if config.data.source != "default" or raw is None:
            raise ValueError(
                "targets.source='metadata' writes from the default catalogue's ground truth, which "
                f"data.source={config.data.source!r} lacks; use targets.source='teacher' or 'file'"
            )
        truth = synthetic.load_ground_truth(raw.source)
        inputs["truth"] = {k: hashlib.sha1(np.ascontiguousarray(v).tobytes()).hexdigest() for k, v in truth.items()}
        return inputs, lambda split: metadata_targets(
            catalog, truth, tasks, split=split, per_task=limits[split], seed=config.seed
        )
    if t.source == "file":
        if not t.file:
            raise ValueError("targets.file must name a JSONL file when targets.source='file'")
        path = pathlib.Path(t.file)
        if not path.is_file():
            raise FileNotFoundError(f"targets file {path} (targets.file) does not exist")
        inputs["file"] = hashlib.sha1(path.read_bytes()).hexdigest()
        return inputs, lambda split: file_targets(path, catalog, tasks, registry, split, limits[split])
    if t.source == "teacher":
        teacher = {**t.teacher.to_dict(), "dtype": config.llm.dtype, "param_dtype": config.llm.param_dtype}
        inputs["teacher"] = teacher
        generate = _teacher(teacher, config.seed, mesh)
        # Generations of other teacher settings never mix in (nor, when sampling, of another seed).
        chunks = teacher_dir / _hash({**teacher, "seed": config.seed} if teacher["temperature"] > 0 else teacher)
        return inputs, lambda split: targets_lib.teacher_targets(
            catalog,
            tasks,
            generate,
            chunks / split,
            split=split,
            per_task=limits[split],
            seed=config.seed,
            chunk_size=teacher["chunk_size"],
        )
    raise ValueError(f"targets.source={t.source!r} is unknown; known: {', '.join(TARGET_SOURCES)}")


def _teacher(teacher: Mapping[str, Any], seed: int, mesh) -> Callable[[Sequence[str]], list[str]]:
    """Prompts -> the teacher LLM's answers; the LLM is loaded on first use, so reused chunks never load it."""
    from elm_jax.generate import SamplingConfig, generate_text
    from elm_jax.weights.pretrained import load_decoder

    sampling = SamplingConfig(
        max_new_tokens=teacher["max_new_tokens"],
        temperature=teacher["temperature"],
        top_k=teacher["top_k"],
        top_p=teacher["top_p"],
    )
    loaded = []

    def generate(prompts: Sequence[str]) -> list[str]:
        if not loaded:
            logging.info("loading the teacher %s", teacher["checkpoint"])
            loaded.append(
                load_decoder(teacher["checkpoint"], mesh, dtype=teacher["dtype"], param_dtype=teacher["param_dtype"])
            )
        llm = loaded[0]
        return generate_text(
            llm.model,
            llm.params,
            llm.tokenizer,
            prompts,
            sampling,
            chat=teacher["chat"],
            seed=seed,
            batch_size=teacher["batch_size"],
        )

    return generate


def write_targets(
    out_dir: pathlib.Path, catalog: Catalog, tasks: Sequence[Task], make: MakeTargets, inputs: Mapping[str, Any]
) -> Step:
    """train.jsonl and test.jsonl from `make`, each checked against its side of the split; reused if unchanged."""
    paths = {split: out_dir / f"{split}.jsonl" for split in SPLITS}
    fingerprint_ = _hash(inputs)
    summary = _reusable(out_dir / "summary.json", fingerprint_, paths.values())
    if summary is not None:
        return Step(summary, True)
    (out_dir / "summary.json").unlink(missing_ok=True)  # a crash below must not leave a summary vouching for it
    by_name = {t.name: t for t in tasks}
    counts = {}
    for split in SPLITS:
        targets = make(split)
        if split == "train" and not targets:
            raise ValueError(f"no training targets for tasks {list(by_name)}")
        targets_lib.check_split(catalog, by_name, targets, split)
        targets_lib.write_jsonl(paths[split], targets)
        counts[split] = dict(collections.Counter(t.task for t in targets))
    summary = {"fingerprint": fingerprint_, "counts": counts, "inputs": dict(inputs)}
    atomic_write_json(out_dir / "summary.json", summary)
    return Step(summary, False)


def write_cavs(out_dir: pathlib.Path, catalog: Catalog, *, min_positives: int, l2: float, seed: int) -> Step:
    """CAVs of the catalogue's tags in every movie space, with held-out accuracy; reused if unchanged."""
    inputs = {
        "version": _VERSION,
        "catalog": fingerprint(catalog),
        "min_positives": min_positives,
        "l2": l2,
        "seed": seed,
    }
    spaces = sorted(catalog.movies.embeddings)
    paths = {space: out_dir / f"{space}.npz" for space in spaces}
    fingerprint_ = _hash(inputs)
    summary = _reusable(out_dir / "summary.json", fingerprint_, paths.values())
    if summary is not None:
        return Step(summary, True)
    (out_dir / "summary.json").unlink(missing_ok=True)
    if not catalog.tags:
        logging.info("the catalogue has no tags: no CAVs to learn")
    report = {}
    for space in spaces:
        learned = cavs.learn_cavs(
            catalog.movies.embeddings[space], catalog.tags, space, min_positives=min_positives, l2=l2, seed=seed
        )
        cavs.save_cavs(paths[space], space, list(learned.values()))
        accuracies = [c.accuracy for c in learned.values()]
        report[space] = {
            "mean_accuracy": float(np.mean(accuracies)) if accuracies else None,
            "concepts": {
                c.concept: {"accuracy": c.accuracy, "n_positive": c.n_positive, "gap": c.gap} for c in learned.values()
            },
        }
    for stale in out_dir.glob("*.npz"):
        if stale.stem not in paths:
            stale.unlink()
    summary = {"fingerprint": fingerprint_, "spaces": report, "inputs": inputs}
    atomic_write_json(out_dir / "summary.json", summary)
    return Step(summary, False)


def export(catalog: Catalog, path: pathlib.Path) -> bool:
    """Writes the catalogue as a bring-your-own folder; False (nothing written) if it already holds it."""
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):
        try:
            other = folder.read_folder(path)
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(f"prepare.export: {path} exists and is not a catalogue folder ({e}); remove it") from None
        if fingerprint(other) != fingerprint(catalog):
            raise ValueError(f"prepare.export: {path} holds another catalogue; remove it or choose another folder")
        return False
    folder.write_folder(catalog, path)
    return True


def run(config: Any, workdir: pathlib.Path, mesh=None, encoder=None) -> tuple[Catalog, list[Task]]:
    """The catalogue of any source, then its targets and CAVs under `workdir` (see the module doc).

    Returns the catalogue and the selected tasks, for the jobs (training, evaluation) that run `prepare` first;
    they pass their mesh and text encoder so neither is built twice.
    """
    from elm_jax import sharding
    from elm_jax.encoder import TextEncoder

    mesh = mesh or sharding.make_mesh(config.mesh)
    if encoder is None and config.data.source != "folder":
        encoder = TextEncoder.from_pretrained(config.encoder.checkpoint, mesh)
    catalog, raw = sources.load_catalog(config.data, encoder, workdir / "data", mesh)
    if config.prepare.export:  # before the slow steps, so a clash with an existing folder fails fast
        written = export(catalog, pathlib.Path(config.prepare.export))
        print(f"catalogue {'exported to' if written else 'already in'} {config.prepare.export}")
    registry = tasks_lib.registry(tasks_lib.load_task_file(config.eval.task_file) if config.eval.task_file else ())
    tasks = select_tasks(catalog, list(config.targets.tasks), registry)
    inputs, make = target_source(config, catalog, raw, tasks, registry, workdir / "targets" / "teacher", mesh)
    targets = write_targets(workdir / "targets", catalog, tasks, make, inputs)
    c = config.prepare.cavs
    cav_step = write_cavs(workdir / "cavs", catalog, min_positives=c.min_positives, l2=c.l2, seed=config.seed)

    def done(step: Step) -> str:
        return "reused" if step.reused else "written"

    counts = targets.summary["counts"]
    print(
        f"targets ({config.targets.source}, {done(targets)}): {sum(counts['train'].values())} train, "
        f"{sum(counts['test'].values())} test over {len(tasks)} tasks -> {workdir / 'targets'}"
    )
    for space, report in cav_step.summary["spaces"].items():
        accuracy = "-" if report["mean_accuracy"] is None else f"{report['mean_accuracy']:.3f}"
        print(f"cavs {space} ({done(cav_step)}): {len(report['concepts'])} concepts, mean held-out accuracy {accuracy}")
    return catalog, tasks


def run_once(config: Any, workdir: pathlib.Path, mesh=None, encoder=None) -> tuple[Catalog, list[Task]]:
    """`run` for multi-process jobs sharing a workdir: process 0 writes, the others then read what it wrote."""
    import jax
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return run(config, workdir, mesh, encoder)
    if jax.process_index() == 0:
        out = run(config, workdir, mesh, encoder)
    multihost_utils.sync_global_devices("elm_jax prepare")
    if jax.process_index() != 0:
        out = run(config, workdir, mesh, encoder)  # finds every output in place: reads, writes nothing
    return out
