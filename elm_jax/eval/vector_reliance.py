"""Does the ELM read the vector? Held-out target loss with each example's own vector against a shuffled one.

Teacher-forced, so no generation is needed: the cross-entropy of held-out targets given their own vectors and
given the vectors of other held-out entities read through the same spaces (`train.shuffled_vectors`). Rows are
compared pairwise: the per-row gap (shuffled minus true, nats per target token) and the share of rows whose true
vector gives the lower loss, each with a bootstrap interval, per task and pooled. A model that ignores its
vector scores a gap of 0 and a share of 1/2 or less (ties count against it).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax import Array

from elm_jax.data import targets as targets_lib
from elm_jax.data.tasks import Task
from elm_jax.data.train_batches import BatchSpec, TrainSequence, collate, encode_targets, fitted_spec
from elm_jax.eval import metrics
from elm_jax.io_utils import atomic_write_json
from elm_jax.models.elm import ELM
from elm_jax.train import shuffled_vectors
from elm_jax.train_step import row_losses


def per_row_losses(
    fn: Callable[[Any, dict], tuple[Array, Array]],
    params: Any,
    sequences: Sequence[TrainSequence],
    spec: BatchSpec,
    pad_id: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(summed cross-entropy, target tokens) of every sequence, in order; `fn(params, batch)` scores a batch."""
    losses, counts = [], []
    for start in range(0, len(sequences), spec.global_batch):
        chunk = list(sequences[start : start + spec.global_batch])
        rows = len(chunk)
        loss, count = jax.device_get(fn(params, collate(chunk + [None] * (spec.global_batch - rows), spec, pad_id)))
        losses.append(loss[:rows])
        counts.append(count[:rows])
    return np.concatenate(losses), np.concatenate(counts)


def vector_reliance(
    model: ELM,
    params: Any,
    sequences: Sequence[TrainSequence],
    pad_id: int,
    *,
    batch_size: int = 8,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Per task (`TrainSequence.task`) and "all": losses with true and shuffled vectors, and the paired gap."""
    if len(sequences) < 2:
        raise ValueError("vector reliance needs at least 2 held-out sequences (to shuffle vectors between)")
    dims = tuple((name, cfg.input_dim) for name, cfg in model.config.adapters)
    spec = fitted_spec(sequences, dims, batch_size)
    # One compiled program for both passes (same shapes).
    fn = jax.jit(lambda p, b: row_losses(model, p, jax.tree.map(lambda x: x[0], b))[:2])
    true_loss, counts = per_row_losses(fn, params, sequences, spec, pad_id)
    shuffled_loss, _ = per_row_losses(fn, params, shuffled_vectors(sequences), spec, pad_id)
    counts = np.maximum(counts, 1.0)
    tasks = np.array([s.task for s in sequences])
    out = {}
    for name in [*sorted(set(tasks)), "all"]:
        rows = np.ones(len(tasks), bool) if name == "all" else tasks == name
        gap = (shuffled_loss[rows] - true_loss[rows]) / counts[rows]
        stats = metrics.summarise(
            {"gap": gap, "true_better": (gap > 0).astype(np.float64)},
            n_resamples=n_resamples,
            confidence=confidence,
            seed=seed,
        )
        out[name] = {
            "rows": int(rows.sum()),
            "loss": float(true_loss[rows].sum() / counts[rows].sum()),
            "loss_shuffled": float(shuffled_loss[rows].sum() / counts[rows].sum()),
            **stats,
        }
    return out


def format_table(result: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per task, then all."""
    lines = [
        "| task | rows | loss, true vectors | loss, shuffled | gap per token [CI] | rows better when true [CI] |",
        "|---|---|---|---|---|---|",
    ]
    ci = lambda s, f: f"{s['mean']:{f}} [{s['ci_low']:{f}}, {s['ci_high']:{f}}]"
    for name, r in result.items():
        lines.append(
            f"| {name} | {r['rows']} | {r['loss']:.3f} | {r['loss_shuffled']:.3f} | {ci(r['gap'], '.3f')} |"
            f" {ci(r['true_better'], '.2f')} |"
        )
    return "\n".join(lines)


def run(config: Any, elm: Any, tasks: Sequence[Task], workdir: pathlib.Path) -> dict[str, dict[str, Any]]:
    """The evaluate job's part: held-out targets (`workdir/targets/test.jsonl`) of those `tasks` the ELM was
    trained on, at most `eval.loss_examples_per_task` each (a seeded pick; 0: all), scored by `vector_reliance`
    and written to `workdir/eval/vector_reliance.json`. `elm` is a `trained.TrainedELM`."""
    e = config.eval
    registry = {t.name: t for t in elm.tasks}
    wanted = [t.name for t in tasks if t.name in registry]
    if not wanted:
        raise ValueError(f"eval.tasks has no task the ELM was trained on ({', '.join(registry)})")
    held_out = targets_lib.read_jsonl(pathlib.Path(workdir) / "targets" / "test.jsonl", elm.catalog, registry)
    rng = np.random.default_rng(config.seed)
    picked = []
    for name in wanted:
        rows = [t for t in held_out if t.task == name]
        keep = len(rows) if not e.loss_examples_per_task else min(e.loss_examples_per_task, len(rows))
        picked += [rows[i] for i in np.sort(rng.permutation(len(rows))[:keep])]
    sequences = encode_targets(
        elm.catalog,
        registry,
        picked,
        elm.llm.tokenizer,
        elm.model.config.space_names,
        tokens_per_slot=elm.model.config.tokens_per_slot,
        chat=config.elm.chat,
        max_len=config.train.max_len,
    )
    result = vector_reliance(
        elm.model,
        elm.params,
        sequences,
        elm.llm.tokenizer.pad_id,
        batch_size=e.batch_size,
        n_resamples=e.n_resamples,
        seed=config.seed,
    )
    atomic_write_json(pathlib.Path(workdir) / "eval" / "vector_reliance.json", result)
    return result
