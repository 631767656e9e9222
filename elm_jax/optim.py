"""Which parameters train (regex rules on parameter paths) and the optimizer that updates them.

One mechanism decides trainability: a regex over "/"-joined parameter paths such as
`adapters_semantic/fc1/kernel` or `llm/layers/attn/q_kernel`. Matching leaves form the *trainable* tree,
the rest the *frozen* tree. Only the trainable tree is differentiated, given to the optimizer and saved in
training checkpoints, so frozen weights get no gradient, no optimizer state, and stay bit-identical
(optax.masked alone would pass raw gradients through as updates).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import optax
from flax import traverse_util

SEP = "/"


def _flat(tree: Any) -> dict[str, Any]:
    return traverse_util.flatten_dict(tree, sep=SEP) if tree else {}


def partition(params: Any, trainable: str) -> tuple[dict, dict]:
    """(trainable, frozen) subtrees of a nested param dict; `trainable` is matched with re.fullmatch."""
    pattern = re.compile(trainable)
    flat = _flat(params)
    picked = {k: v for k, v in flat.items() if pattern.fullmatch(k)}
    if not picked:
        raise ValueError(f"trainable={trainable!r} matches no parameter; paths look like {next(iter(flat), '?')!r}")
    rest = {k: v for k, v in flat.items() if k not in picked}
    return traverse_util.unflatten_dict(picked, sep=SEP), traverse_util.unflatten_dict(rest, sep=SEP)


def merge(*trees: Any) -> dict:
    """Inverse of `partition`: one nested dict from disjoint subtrees."""
    out: dict[str, Any] = {}
    for tree in trees:
        out.update(_flat(tree))
    return traverse_util.unflatten_dict(out, sep=SEP)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float
    steps: int
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | constant (after warmup)
    end_fraction: float = 0.1  # cosine ends at this fraction of the peak rate
    b1: float = 0.9
    b2: float = 0.999
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # global norm; 0 disables

    def __post_init__(self):
        if self.learning_rate <= 0 or self.steps < 1 or not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(
                f"optimizer: need learning_rate > 0, steps >= 1 and 0 <= warmup_steps <= steps; got {self}"
            )
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"optimizer schedule {self.schedule!r} is not one of cosine, constant")


def learning_rate(cfg: OptimConfig) -> optax.Schedule:
    warmup = optax.linear_schedule(0.0, cfg.learning_rate, max(cfg.warmup_steps, 1))
    decay_steps = max(cfg.steps - cfg.warmup_steps, 1)
    if cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(cfg.learning_rate, decay_steps, alpha=cfg.end_fraction)
    else:
        after = optax.constant_schedule(cfg.learning_rate)
    return optax.join_schedules([warmup, after], [cfg.warmup_steps]) if cfg.warmup_steps else after


def _decay_mask(params: Any) -> Any:
    """Weight decay on matrices only: norms, biases and scalars are left alone."""
    return traverse_util.unflatten_dict({k: v.ndim >= 2 for k, v in _flat(params).items()}, sep=SEP)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """AdamW with warmup + cosine (or constant) schedule and global-norm clipping."""
    adam = optax.adamw(learning_rate(cfg), cfg.b1, cfg.b2, weight_decay=cfg.weight_decay, mask=_decay_mask)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adam) if cfg.grad_clip else adam
