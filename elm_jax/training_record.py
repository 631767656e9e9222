"""What a workdir's trained weights depend on, recorded when training starts and checked before they are used.

Jobs rebuild the model from the config they are given and lay the checkpointed weights over it. A setting
changed since training (another LLM, adapter width or activation, chat prompts, catalogue, tasks, which
weights a stage trains) would otherwise load weights into a model they were not trained for, silently when
the shapes still fit. The record makes that an error that names each field.

`workdir/trained_with.json` holds three parts: `weights` (shared by every stage), `stages` (each trained
stage's own fields; a config may load fewer stages, or train a new one later) and `stream` (what fixes the
training data stream, checked only when training goes on from the checkpoints).
"""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Any

import jax

from elm_jax.io_utils import atomic_write_json

RECORD = "trained_with.json"


def _flat(prefix: str, value: Any) -> dict[str, Any]:
    if hasattr(value, "items"):
        return {k: v for key, sub in value.items() for k, v in _flat(f"{prefix}.{key}", sub).items()}
    return {prefix: list(value) if isinstance(value, tuple) else value}


def settings(config: Any, catalog_fingerprint: str) -> dict[str, dict]:
    """The record of `config`: {"weights": {field: value}, "stages": {stage: {field: value}}, "stream": {...}}."""
    weights = {
        "catalog": catalog_fingerprint,
        "llm.checkpoint": config.llm.checkpoint,
        "llm.scan_layers": config.llm.scan_layers,  # the checkpoints' parameter layout: stacked or per layer
    }
    weights.update(_flat("elm", config.elm))
    weights.update(_flat("targets.tasks", config.targets.tasks))
    stages = {
        name: {f"{name}.trainable": config[name].trainable, **_flat(f"{name}.lora", config[name].lora)}
        for name in config.train.stages
    }
    stream = {
        "seed": config.seed,
        "train.batch_size": config.train.batch_size,
        "train.max_len": config.train.max_len,
        **_flat("targets.source", config.targets.source),
        **_flat("targets.per_task", config.targets.per_task),
        **_flat("targets.file", config.targets.file),
    }
    return {"weights": weights, "stages": stages, "stream": stream}


def _differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Fields whose value changed; a field the record lacks was not tracked yet when it was written."""
    return [
        f"{k}: trained with {recorded[k]!r}, now {current.get(k, '(unset)')!r}"
        for k in sorted(recorded)
        if recorded[k] != current.get(k)
    ]


def check(config: Any, workdir: pathlib.Path, catalog_fingerprint: str, *, resuming: bool = False) -> None:
    """Raises ValueError naming every field that differs from the record (a workdir without one passes).
    `resuming`: training goes on from these checkpoints, so the data stream must match too."""
    path = pathlib.Path(workdir) / RECORD
    if not path.is_file():
        logging.warning("%s: no record of the training settings; the config is trusted to match them", path)
        return
    _check(path, json.loads(path.read_text()), settings(config, catalog_fingerprint), resuming)


def _check(path: pathlib.Path, recorded: dict, current: dict, resuming: bool) -> None:
    differ = _differences(recorded.get("weights", {}), current["weights"])
    for name, fields in current["stages"].items():
        if name in recorded.get("stages", {}):  # a stage not trained yet has nothing to disagree with
            differ += _differences(recorded["stages"][name], fields)
    if resuming:
        differ += _differences(recorded.get("stream", {}), current["stream"])
    if differ:
        raise ValueError(
            f"{path}: this workdir's weights were trained with other settings (catalog: the prepared data, from data.*"
            " and encoder.*); pass the training values (--config.<field>=...) or use a new --workdir:\n  "
            + "\n  ".join(differ)
        )


def check_or_write(config: Any, workdir: pathlib.Path, catalog_fingerprint: str, trained: bool) -> None:
    """Before training. With checkpoints to resume or reuse (`trained`): checks the record, then adds the stages
    this config trains for the first time. Without: writes it afresh. One process writes (workdirs are shared)."""
    path = pathlib.Path(workdir) / RECORD
    current = settings(config, catalog_fingerprint)
    if trained and path.is_file():
        recorded = json.loads(path.read_text())
        _check(path, recorded, current, resuming=True)
        current["stages"] = {**recorded.get("stages", {}), **current["stages"]}
    if jax.process_index() == 0:
        atomic_write_json(path, current)
