"""What a workdir's trained weights depend on, recorded when training starts and checked before they are used.

Jobs rebuild the model from the config they are given and lay the checkpointed weights over it. A setting
changed since training (another LLM, adapter width or activation, chat prompts, catalogue, tasks, which
weights a stage trains) would otherwise load weights into a model they were not trained for, silently when
the shapes still fit. The record makes that an error that names each field.
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


def weight_settings(config: Any, catalog_fingerprint: str) -> dict[str, Any]:
    """{config field: value} of everything the trained weights depend on; the catalogue by its content."""
    out = {"catalog": catalog_fingerprint, "llm.checkpoint": config.llm.checkpoint, "train.stages": config.train.stages}
    out.update(_flat("elm", config.elm))
    out.update(_flat("targets.tasks", config.targets.tasks))
    for name in config.train.stages:
        out[f"{name}.trainable"] = config[name].trainable
        out.update(_flat(f"{name}.lora", config[name].lora))
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def _differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = sorted(set(recorded) | set(current))
    return [
        f"{k}: trained with {recorded.get(k, '(unset)')!r}, now {current.get(k, '(unset)')!r}"
        for k in keys
        if recorded.get(k) != current.get(k)
    ]


def check(config: Any, workdir: pathlib.Path, catalog_fingerprint: str) -> None:
    """Raises ValueError naming every field that differs from the record (a workdir without one passes)."""
    path = pathlib.Path(workdir) / RECORD
    if not path.is_file():
        logging.warning("%s: no record of the training settings; the config is trusted to match them", path)
        return
    differ = _differences(json.loads(path.read_text()), weight_settings(config, catalog_fingerprint))
    if differ:
        raise ValueError(
            f"{path}: this workdir's weights were trained with other settings (catalog: the prepared data, from data.*"
            " and encoder.*); pass the training values (--config.<field>=...) or use a new --workdir:\n  "
            + "\n  ".join(differ)
        )


def check_or_write(config: Any, workdir: pathlib.Path, catalog_fingerprint: str, trained: bool) -> None:
    """Before training: checks the record when a stage has `trained` (checkpoints to resume or reuse), else writes
    it afresh (one process writes; workdirs are shared between hosts)."""
    if trained and (pathlib.Path(workdir) / RECORD).is_file():
        check(config, workdir, catalog_fingerprint)
    elif jax.process_index() == 0:
        atomic_write_json(pathlib.Path(workdir) / RECORD, weight_settings(config, catalog_fingerprint))
