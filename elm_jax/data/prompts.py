"""Prompt templates with embedding slots -> token ids plus soft-token positions (the ELM batch layout).

A template names its slots in braces, e.g. "Compare the movies {movie1} and {movie2}.": the paper places the
domain vector exactly where the entity's name would stand (§2, Fig. 2). The space before a slot is dropped,
because in running text that space belongs to the name's first token (" Titanic"), which the soft token
replaces. For chat models the template is rendered inside the chat template first.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

from elm_jax.tokenizer import Tokenizer

SLOT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def slot_names(template: str) -> list[str]:
    """Slot names in order of appearance (a name may not repeat: each slot takes its own vector)."""
    names = SLOT.findall(template)
    if len(set(names)) != len(names):
        raise ValueError(f"template {template!r} repeats a slot name")
    return names


@dataclasses.dataclass(frozen=True)
class EncodedPrompt:
    tokens: list[int]
    soft_index: list[int]  # -1 for text, else slot * k + j
    slots: list[str]  # slot names, in the order their vectors must be given


def encode_prompt(tokenizer: Tokenizer, template: str, tokens_per_slot: int = 1, chat: bool = False) -> EncodedPrompt:
    """Token ids with `tokens_per_slot` placeholder positions per slot, and where they are."""
    names = slot_names(template)
    text = tokenizer.chat_prompt(template) if chat else template
    parts = SLOT.split(text)  # [text, name, text, name, ..., text]
    if parts[1::2] != names:
        raise ValueError(f"the chat template altered the slots of {template!r}")
    tokens: list[int] = []
    soft: list[int] = []
    for i, segment in enumerate(parts[0::2]):
        if i < len(names):
            segment = segment.rstrip(" ")
        ids = tokenizer.encode(segment, bos=(i == 0)) if segment or i == 0 else []
        tokens += ids
        soft += [-1] * len(ids)
        if i < len(names):
            tokens += [tokenizer.pad_id] * tokens_per_slot
            soft += [i * tokens_per_slot + j for j in range(tokens_per_slot)]
    return EncodedPrompt(tokens, soft, names)


@dataclasses.dataclass(frozen=True)
class Query:
    """An encoded prompt and the domain vector (and its embedding space) for each of its slots."""

    prompt: EncodedPrompt
    vectors: tuple[np.ndarray, ...]
    spaces: tuple[str, ...]


def pad_prompts(prompts: Sequence[EncodedPrompt], pad_id: int, length: int, rows: int) -> dict[str, np.ndarray]:
    """Left-pads encoded prompts to (rows, length): tokens, soft_index and the attention mask."""
    tokens = np.full((rows, length), pad_id, np.int32)
    soft = np.full((rows, length), -1, np.int32)
    mask = np.zeros((rows, length), bool)
    for i, p in enumerate(prompts):
        n = len(p.tokens)
        if n > length:
            raise ValueError(f"prompt {i} has {n} tokens; must be 1..{length}")
        tokens[i, length - n :] = p.tokens
        soft[i, length - n :] = p.soft_index
        mask[i, length - n :] = True
    return {"tokens": tokens, "soft_index": soft, "mask": mask}
