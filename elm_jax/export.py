"""A trained ELM as files other tools read, with no elm_jax, JAX or Orbax needed to use them.

    workdir/export/llm/        the LLM as a Hugging Face folder: stage 2's weights (LoRA folded in), float32,
                               with the source checkpoint's config, tokenizer and chat template
    workdir/export/adapters/   adapters.safetensors + adapters.json (`elm_jax.checkpoint.export_adapters`)
    workdir/export/elm.json    how prompts are built: chat or plain, soft tokens per slot, the trained tasks'
                               templates and the embedding space each slot reads

An adapter maps a vector v to its soft tokens as
    h = act(((v - input_mean) / input_std) @ fc1.kernel + fc1.bias)
    tokens = (h @ fc2.kernel + fc2.bias).reshape(num_tokens, hidden_size)
(act: "gelu" is GELU's tanh approximation), and the soft tokens replace the input embeddings at the slot
positions as they are (no embedding scale: Gemma's sqrt(hidden_size) applies to real tokens only). A prompt is
the task template, rendered inside the chat template when `chat` is true, with each `{slot}` (and the space
before it) replaced by `tokens_per_slot` positions.
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Sequence
from typing import Any

import jax

from elm_jax import sharding as shd
from elm_jax.checkpoint import export_adapters
from elm_jax.data.tasks import Task
from elm_jax.io_utils import atomic_dir, atomic_write_json
from elm_jax.models.elm import ELMConfig
from elm_jax.weights import hf

FORMAT_VERSION = 1


def write(
    out: str | pathlib.Path,
    params: dict,
    config: ELMConfig,
    llm_dir: str | pathlib.Path,
    tasks: Sequence[Task],
    chat: bool,
) -> pathlib.Path:
    """Writes the export folder `out` whole or not at all. Every process calls it; process 0 writes."""
    out = pathlib.Path(out)
    primary = jax.process_index() == 0
    with atomic_dir(out) if primary else contextlib.nullcontext(out) as tmp:
        hf.save_params(tmp / "llm", params["llm"], config.decoder, llm_dir)
        export_adapters(tmp / "adapters", params, config.adapters)
        if primary:
            spaces = {name for name, _ in config.adapters}
            manifest = {
                "format_version": FORMAT_VERSION,
                "llm": "llm",
                "adapters": "adapters",
                "chat": bool(chat),
                "tokens_per_slot": config.tokens_per_slot,
                "tasks": {
                    t.name: {"template": t.template, "entity": t.entity, "spaces": dict(t.spaces)}
                    for t in tasks
                    if set(t.spaces.values()) <= spaces
                },
            }
            atomic_write_json(tmp / "elm.json", manifest)
    return out


def run(config: Any, workdir: pathlib.Path) -> pathlib.Path:
    """The `export` job: the ELM trained in `workdir` -> `workdir/export`."""
    from elm_jax import trained

    elm = trained.load(config, workdir, shd.make_mesh(config.mesh))
    return write(workdir / "export", elm.params, elm.model.config, elm.llm.path, elm.tasks, config.elm.chat)
