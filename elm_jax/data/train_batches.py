"""Training targets -> fixed-shape token batches for the ELM (prompt with soft slots, then the target).

A training sequence is the task's prompt (slots where names stand, chat-templated for chat models) followed
by the target text and an end-of-turn token (none for a target cut at `max_len`, which did not end there); the
loss covers only the target and that final token. Rows are
right-padded to one length so a run compiles once.

Batches are a pure function of (seed, step): step i takes rows [i * B, (i + 1) * B) of a stream of seeded
per-epoch permutations. Resuming at a step therefore replays the data exactly, and each host can build only
its own rows of the global batch (`host_rows`), which multi-host runs assemble into global arrays.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from elm_jax.data.catalog import Catalog
from elm_jax.data.prompts import encode_prompt
from elm_jax.data.targets import Target, to_example
from elm_jax.data.tasks import Task
from elm_jax.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class TrainSequence:
    tokens: np.ndarray  # (n,) int32: prompt, target, end token (none when the target was cut to fit)
    soft_index: np.ndarray  # (n,) int32: -1 for text, else slot * k + j
    target_start: int  # index of the first target token
    vectors: tuple[np.ndarray, ...]  # one domain vector per slot
    spaces: tuple[int, ...]  # index into the ELM's space names, per slot
    task: str = ""  # the task it was encoded from: held-out losses are reported per task too


def encode_targets(
    catalog: Catalog,
    tasks: Mapping[str, Task],
    targets: Sequence[Target],
    tokenizer: Tokenizer,
    space_names: Sequence[str],
    *,
    tokens_per_slot: int,
    chat: bool,
    max_len: int,
) -> list[TrainSequence]:
    """One sequence per target; targets longer than `max_len` allows are cut, without an end token (and counted
    in the log)."""
    if not tokenizer.stop_ids:
        raise ValueError("the tokenizer has no end-of-text token to end training targets with")
    end = tokenizer.stop_ids[0]  # the tokenizer's own end token (SmolLM2-Instruct: <|im_end|>)
    prompts = {}
    out, cut = [], 0
    texts = tokenizer.encode_batch([t.text if chat else " " + t.text for t in targets]) if targets else []
    for target, text_ids in zip(targets, texts, strict=True):
        task = tasks.get(target.task)
        if task is None:
            raise ValueError(f"target for unknown task {target.task!r}")
        if task.name not in prompts:
            prompts[task.name] = encode_prompt(tokenizer, task.template, tokens_per_slot, chat)
        prompt = prompts[task.name]
        missing = [task.spaces[s] for s in task.slots if task.spaces[s] not in space_names]
        if missing:
            raise ValueError(
                f"task {task.name!r} needs embedding space {missing[0]!r}; the ELM has {list(space_names)}"
            )
        table = catalog.table(task.entity)
        rows = to_example(catalog, task, target).rows
        text_ids = [i for i in text_ids if i != tokenizer.bos_id]
        room = max_len - len(prompt.tokens)
        if room < 2:
            raise ValueError(f"task {task.name!r}: its prompt has {len(prompt.tokens)} tokens; max_len={max_len}")
        # A whole target ends with the end token; a cut one does not (it must not teach stopping mid-sentence).
        whole = len(text_ids) < room
        text_ids = text_ids + [end] if whole else text_ids[:room]
        cut += not whole
        tokens = np.asarray(prompt.tokens + text_ids, np.int32)
        soft = np.asarray(prompt.soft_index + [-1] * len(text_ids), np.int32)
        vectors = tuple(table.embeddings[task.spaces[s]][r] for s, r in zip(task.slots, rows, strict=True))
        spaces = tuple(space_names.index(task.spaces[s]) for s in task.slots)
        out.append(TrainSequence(tokens, soft, len(prompt.tokens), vectors, spaces, task.name))
    if cut:
        logging.warning("%d of %d targets were cut to fit max_len=%d", cut, len(targets), max_len)
    return out


@dataclasses.dataclass(frozen=True)
class BatchSpec:
    """The fixed shapes of every batch: (accum_steps, micro_batch, seq_len) plus the slot layout."""

    global_batch: int
    seq_len: int
    space_dims: tuple[tuple[str, int], ...]  # (space name, dim), in the ELM's space order
    max_slots: int
    accum_steps: int = 1
    # The most target tokens in any row. The LM head (vocab-wide logits) runs on this many positions per row
    # instead of all seq_len: prompts and padding need no logits. None: seq_len - 1.
    target_len: int | None = None

    def __post_init__(self):
        if self.global_batch % self.accum_steps:
            raise ValueError(f"global_batch={self.global_batch} is not a multiple of accum_steps={self.accum_steps}")
        if self.target_len is not None and not 1 <= self.target_len < self.seq_len:
            raise ValueError(f"target_len={self.target_len} must be in [1, seq_len={self.seq_len})")

    @property
    def target_window(self) -> int:
        return self.target_len or self.seq_len - 1

    @property
    def micro_batch(self) -> int:
        return self.global_batch // self.accum_steps


def fitted_spec(
    sequences: Sequence[TrainSequence],
    space_dims: tuple[tuple[str, int], ...],
    global_batch: int,
    accum_steps: int = 1,
    max_len: int | None = None,
) -> BatchSpec:
    """The smallest shapes that hold every sequence: lengths rounded up to 16 (at most `max_len`) and target
    windows to 8, so that one program compiles for all of them."""
    longest = max(len(s.tokens) for s in sequences)
    target = max(len(s.tokens) - s.target_start for s in sequences)
    seq_len = -(-longest // 16) * 16
    seq_len = min(seq_len, max_len) if max_len else seq_len
    return BatchSpec(
        global_batch=global_batch,
        seq_len=seq_len,
        space_dims=space_dims,
        max_slots=max(len(s.spaces) for s in sequences),
        accum_steps=accum_steps,
        target_len=min(-(-target // 8) * 8, seq_len - 1),
    )


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def example_indices(n: int, seed: int, step: int, global_batch: int) -> np.ndarray:
    """Indices of the examples in step `step`'s global batch (epochs are seeded permutations, concatenated)."""
    if n == 0:
        raise ValueError("no training examples")
    start = step * global_batch
    out = []
    while len(out) < global_batch:
        epoch, offset = divmod(start + len(out), n)
        out.extend(epoch_order(n, seed, epoch)[offset : offset + global_batch - len(out)].tolist())
    return np.asarray(out, np.int64)


def host_rows(spec: BatchSpec, process_index: int, process_count: int) -> np.ndarray:
    """Which rows of the flat global batch this host builds: a contiguous block of every micro-batch."""
    if spec.micro_batch % process_count:
        raise ValueError(f"micro batch {spec.micro_batch} is not divisible by {process_count} processes")
    per = spec.micro_batch // process_count
    return np.concatenate(
        [a * spec.micro_batch + process_index * per + np.arange(per) for a in range(spec.accum_steps)]
    )


def collate(sequences: Sequence[TrainSequence | None], spec: BatchSpec, pad_id: int) -> dict[str, np.ndarray]:
    """Right-padded arrays of shape (accum_steps, rows / accum_steps, ...); a None row is empty (no loss)."""
    rows, t, a = len(sequences), spec.seq_len, spec.accum_steps
    tokens = np.full((rows, t), pad_id, np.int32)
    soft = np.full((rows, t), -1, np.int32)
    mask = np.zeros((rows, t), bool)
    # Positions whose logits predict a target token (t predicts t + 1), left-aligned; -1 pads the window.
    target_index = np.full((rows, spec.target_window), -1, np.int32)
    vectors = {name: np.zeros((rows, spec.max_slots, dim), np.float32) for name, dim in spec.space_dims}
    slot_space = np.zeros((rows, spec.max_slots), np.int32)
    names = [name for name, _ in spec.space_dims]
    for i, s in enumerate(sequences):
        if s is None:
            continue
        n = len(s.tokens)
        if n > t:
            raise ValueError(f"sequence {i} has {n} tokens; seq_len={t}")
        tokens[i, :n], soft[i, :n], mask[i, :n] = s.tokens, s.soft_index, True
        if n - s.target_start > spec.target_window:
            raise ValueError(f"sequence {i} has {n - s.target_start} target tokens; target_len={spec.target_window}")
        target_index[i, : n - s.target_start] = np.arange(s.target_start - 1, n - 1)
        for slot, (space, vector) in enumerate(zip(s.spaces, s.vectors, strict=True)):
            vectors[names[space]][i, slot] = vector
            slot_space[i, slot] = space
    split = lambda x: x.reshape(a, rows // a, *x.shape[1:])
    return {
        "tokens": split(tokens),
        "soft_index": split(soft),
        "mask": split(mask),
        "target_index": split(target_index),
        "slot_space": split(slot_space),
        "vectors": {name: split(v) for name, v in vectors.items()},
    }


class Batches:
    """Deterministic batches over a fixed list of sequences; `host_batch(step)` is this host's share."""

    def __init__(
        self,
        sequences: Sequence[TrainSequence],
        spec: BatchSpec,
        pad_id: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
    ):
        too_long = [i for i, s in enumerate(sequences) if len(s.tokens) > spec.seq_len]
        if too_long:
            raise ValueError(f"{len(too_long)} sequences are longer than seq_len={spec.seq_len}")
        self.sequences, self.spec, self.pad_id, self.seed = list(sequences), spec, pad_id, seed
        self.rows = host_rows(spec, process_index, process_count)

    def __len__(self) -> int:
        return len(self.sequences)

    def host_batch(self, step: int) -> dict[str, np.ndarray]:
        picked = example_indices(len(self.sequences), self.seed, step, self.spec.global_batch)[self.rows]
        return collate([self.sequences[i] for i in picked], self.spec, self.pad_id)

    def eval_batches(self, sequences: Sequence[TrainSequence]) -> Iterator[dict[str, np.ndarray]]:
        """Every one of `sequences` once, in order, in this host's rows of full-size batches (the last one
        padded with empty rows that carry no loss)."""
        for start in range(0, len(sequences), self.spec.global_batch):
            idx = start + self.rows
            yield collate([sequences[i] if i < len(sequences) else None for i in idx], self.spec, self.pad_id)

    def epoch(self, step: int) -> float:
        return step * self.spec.global_batch / len(self.sequences)
