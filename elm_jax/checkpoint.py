"""Training checkpoints (Orbax) and the adapter-only export format.

A training checkpoint holds exactly the train state of `elm_jax.train_step` (step, trainable params,
optimizer state, RNG) plus JSON metadata (stage, step, examples seen, and the id of the training run, kept
across resumes, which tells apart two runs that reached the same step). Frozen weights are not in it: stage 1
saves only the adapters, and the pretrained LLM is named by the config (the settings the weights depend on
are recorded beside the stages, in `elm_jax.training_record`). Saves are asynchronous,
every `save_every` steps and at the end, keeping the last `keep`. Restores go into abstract targets that
carry the *current* mesh's shardings, so a run saved on 8 devices resumes on 4 or 1.

The exported adapter is portable: safetensors with the weights of each space's adapter plus a JSON config,
written atomically, readable without JAX, Orbax or the training config.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from elm_jax.io_utils import atomic_dir
from elm_jax.models.adapter import Adapter, AdapterConfig
from elm_jax.sharding import to_host

ADAPTER_WEIGHTS = "adapters.safetensors"
ADAPTER_CONFIG = "adapters.json"


class Checkpointer:
    """CheckpointManager for one training stage's state."""

    def __init__(self, directory: str | os.PathLike, save_every: int, keep: int = 2, async_save: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=max(save_every, 1),
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=async_save,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict, force: bool = False) -> bool:
        """Starts a save if the interval says so (or `force`); returns whether one started."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        return self._manager.save(step, args=args, force=force)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """(state, meta) at `step`, placed by the shardings in `abstract_state` (ShapeDtypeStructs)."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
        out = self._manager.restore(step, args=args)
        return out.state, out.meta

    def close(self) -> None:
        """Waits for pending saves; the manager cannot be used afterwards."""
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree` (arrays or abstract values) carrying `shardings`."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def export_adapters(
    path: str | os.PathLike, params: dict, adapters: tuple[tuple[str, AdapterConfig], ...]
) -> pathlib.Path:
    """Writes `adapters_<space>` params and their configs to folder `path`, atomically (all or nothing). Every
    process calls it (adapters sharded over hosts are gathered); process 0 writes."""
    path = pathlib.Path(path)
    tensors = {}
    for name, _ in adapters:
        key = f"adapters_{name}"
        if key not in params:
            raise ValueError(f"params have no adapter for space {name!r}")
        flat = traverse_util.flatten_dict(params[key], sep="/")
        tensors.update({f"{name}/{k}": to_host(v) for k, v in flat.items()})
    if jax.process_index() != 0:
        return path
    config = {"adapters": {name: dataclasses.asdict(cfg) for name, cfg in adapters}, "format_version": 1}
    with atomic_dir(path) as tmp:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS))
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


def import_adapters(path: str | os.PathLike) -> tuple[dict, tuple[tuple[str, AdapterConfig], ...]]:
    """(params with `adapters_<space>` subtrees, (space, AdapterConfig) pairs) from an exported folder."""
    path = pathlib.Path(path)
    for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
        if not (path / name).is_file():
            raise FileNotFoundError(f"adapter export {path}: {name} is missing")
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text())
        adapters = tuple((name, AdapterConfig(**c)) for name, c in sorted(config["adapters"].items()))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path / ADAPTER_CONFIG}: not an elm_jax adapter config ({e})") from e
    tensors = load_file(str(path / ADAPTER_WEIGHTS))
    params = {}
    for name, cfg in adapters:
        flat = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.split("/", 1)[0] == name}
        if not flat:
            raise ValueError(f"{path / ADAPTER_WEIGHTS}: no weights for adapter {name!r}")
        expected = _adapter_shapes(cfg)
        for key in sorted(expected.keys() | flat.keys()):
            got = flat[key].shape if key in flat else None
            if got != expected.get(key):
                raise ValueError(
                    f"{path / ADAPTER_WEIGHTS}: adapter {name!r} tensor {key} has shape {got}; "
                    f"its config ({ADAPTER_CONFIG}) needs {expected.get(key)}"
                )
        params[f"adapters_{name}"] = traverse_util.unflatten_dict(flat, sep="/")
    return params, adapters


def _adapter_shapes(cfg: AdapterConfig) -> dict[str, tuple[int, ...]]:
    """The shape of each parameter of an Adapter(cfg), by its "/"-joined path."""
    init = lambda: nn.unbox(Adapter(cfg).init(jax.random.key(0), jnp.zeros((1, cfg.input_dim))))["params"]
    return {k: v.shape for k, v in traverse_util.flatten_dict(jax.eval_shape(init), sep="/").items()}


def _reader(directory: str | os.PathLike) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        pathlib.Path(directory).absolute(),
        options=ocp.CheckpointManagerOptions(save_interval_steps=0, read_only=True, create=False),
    )


def latest_step(directory: str | os.PathLike) -> int | None:
    """The newest finished checkpoint's step in a stage's checkpoint folder (None if there is none)."""
    if not pathlib.Path(directory).is_dir():
        return None
    manager = _reader(directory)
    try:
        return manager.latest_step()
    finally:
        manager.close()


def restore_params(directory: str | os.PathLike, step: int, abstract_params: Any) -> tuple[Any, dict]:
    """Only the trainable params of a training checkpoint (no optimizer state is read), on the given shardings,
    and the checkpoint's metadata."""
    manager = _reader(directory)
    try:
        item = {"params": abstract_params}
        restore = ocp.args.PyTreeRestore(item, ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True)
        out = manager.restore(step, args=ocp.args.Composite(state=restore, meta=ocp.args.JsonRestore()))
        flat = traverse_util.flatten_dict(out.state["params"], sep="/")
        missing = [k for k, v in flat.items() if not isinstance(v, jax.Array)]  # partial_restore leaves placeholders
        if missing:
            raise ValueError(
                f"{directory} step {step} holds no {missing[0]} ({len(missing)} missing): the model asks for other "
                "parameters than were trained (a changed llm.scan_layers or LoRA setting?)"
            )
        return out.state["params"], dict(out.meta)
    finally:
        manager.close()
