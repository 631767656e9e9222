"""An ELM as a training run left it: what evaluation and the query tools load from a workdir.

The model is rebuilt from the config (the LLM checkpoint, one adapter per embedding space the trained tasks
read), then each configured stage's checkpointed trainable parameters are laid over the pretrained ones in
order: stage 1's adapters, then stage 2's weights (all of them, or adapters + LoRA factors, folded in).
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Any

import flax.linen as nn
from jax.sharding import Mesh

from elm_jax import sharding as shd
from elm_jax import training_record
from elm_jax.checkpoint import abstract_like, latest_step, restore_params
from elm_jax.data.catalog import Catalog, fingerprint
from elm_jax.data.tasks import Task
from elm_jax.lora import apply_lora
from elm_jax.models.elm import ELM
from elm_jax.optim import merge, partition
from elm_jax.train import abstract_params, build_elm, param_shardings, stage_from_config
from elm_jax.weights.pretrained import LoadedDecoder


def restore_stages(
    model: ELM, params: dict, config: Any, workdir: pathlib.Path, mesh: Mesh, rules=shd.DEFAULT_RULES
) -> tuple[dict, list[tuple[str, int]], list[str]]:
    """`params` with every finished stage's trained weights laid over them, [(stage, step), ...] restored, and
    each one's training-run id (two trainings to the same step differ in it).

    Raises if a configured stage has no checkpoint or stopped before its last step.
    """
    done, runs = [], []
    for name in config.train.stages:
        stage = stage_from_config(name, config[name], config.seed)
        directory = pathlib.Path(workdir) / name / "checkpoints"
        step = latest_step(directory)
        if step != stage.optim.steps:
            found = "no checkpoint" if step is None else f"a checkpoint at step {step}"
            raise ValueError(
                f"{directory}: {name} has {found}, not its final step {stage.optim.steps}: run job=train first"
            )
        lora = stage.step.lora
        shardings = param_shardings(model, mesh, rules, lora)
        if lora is not None:  # the factors' shapes, for the restore target
            params = {**params, "lora": nn.unbox(abstract_params(model, lora))["lora"]}
        trainable, frozen = partition(params, stage.trainable)
        t_sh, _ = partition(shardings, stage.trainable)
        restored, meta = restore_params(directory, step, abstract_like(trainable, t_sh))
        params = merge(restored, frozen)
        params = apply_lora(params, lora) if lora else params
        done.append((name, step))
        runs.append(str(meta.get("run", "")))
        logging.info("restored %s step %d from %s", name, step, directory)
    return params, done, runs


@dataclasses.dataclass
class TrainedELM:
    model: ELM
    params: dict
    llm: LoadedDecoder  # the base LLM: tokenizer, and the text-only baseline
    catalog: Catalog
    tasks: list[Task]  # the tasks it was trained on
    stages: list[tuple[str, int]]  # (stage, step) restored; empty for an untrained ELM
    runs: list[str] = dataclasses.field(default_factory=list)  # the training-run id of each restored stage


def generation_settings(config: Any, sampling: Any, untrained: bool) -> dict[str, Any]:
    """The config's part of `generation_identity`: what a recorded evaluation is checked against before reuse."""
    return {
        "llm": config.llm.checkpoint,
        "untrained": bool(untrained),
        "chat": bool(config.elm.chat),
        "tokens_per_slot": config.elm.adapter.num_tokens,
        "sampling": dataclasses.asdict(sampling),
    }


def generation_identity(config: Any, elm: TrainedELM, sampling: Any, untrained: bool) -> dict[str, Any]:
    """What makes this ELM's texts: recorded with an evaluation and keyed into kept generations, so texts of an
    earlier model or sampling setting are never reused."""
    return {
        **generation_settings(config, sampling, untrained),
        "stages": [list(s) for s in elm.stages],
        "runs": list(elm.runs),
        "dtype": config.llm.dtype,
        "param_dtype": config.llm.param_dtype,
        "adapter": config.elm.adapter.to_dict(),  # an untrained ELM's fresh adapters come from these and the seed
        "seed": config.seed,
    }


def load(config: Any, workdir: pathlib.Path, mesh: Mesh, *, encoder=None, untrained: bool = False) -> TrainedELM:
    """The ELM trained in `workdir` by `config` (catalogue and targets prepared there, reused when done).

    `untrained=True` returns fresh adapters instead: the floor a trained ELM must beat.
    """
    from elm_jax.data import prepare
    from elm_jax.weights.pretrained import load_configured_decoder

    catalog, tasks = prepare.run_once(config, workdir, mesh, encoder)
    if not untrained:
        training_record.check(config, workdir, fingerprint(catalog))
    llm = load_configured_decoder(config.llm, mesh)
    model, params = build_elm(config, catalog, tasks, llm)
    stages: list[tuple[str, int]] = []
    runs: list[str] = []
    if not untrained:
        params, stages, runs = restore_stages(model, params, config, workdir, mesh)
    return TrainedELM(model, params, llm, catalog, tasks, stages, runs)
