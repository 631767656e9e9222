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


def path_regex(pattern: str, field: str) -> re.Pattern:
    """A config's regex over parameter paths, or an error naming its field."""
    try:
        return re.compile(pattern)
    except (re.error, TypeError) as e:
        raise ValueError(f"{field}: {pattern!r} is not a valid regex ({e})") from None


def partition(params: Any, trainable: str) -> tuple[dict, dict]:
    """(trainable, frozen) subtrees of a nested param dict; `trainable` is matched with re.fullmatch."""
    pattern = path_regex(trainable, "trainable")
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


def is_rule(rule: Any) -> bool:
    """A (regex, number) pair, as lr_multipliers holds them."""
    return (
        isinstance(rule, tuple | list)
        and len(rule) == 2
        and isinstance(rule[0], str)
        and isinstance(rule[1], int | float)
        and not isinstance(rule[1], bool)
    )


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
    # (regex, factor) pairs over parameter paths, first match wins, others 1: e.g. a fresh adapter learning
    # faster than the pretrained LLM it is fine-tuned with, (("adapters_.*", 20.0),).
    lr_multipliers: tuple[tuple[str, float], ...] = ()

    def __post_init__(self):
        if self.learning_rate <= 0 or self.steps < 1 or not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(
                f"optimizer: need learning_rate > 0, steps >= 1 and 0 <= warmup_steps <= steps; got {self}"
            )
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"optimizer schedule {self.schedule!r} is not one of cosine, constant")
        for rule in self.lr_multipliers:
            if not is_rule(rule) or not float(rule[1]) > 0:
                raise ValueError(f"lr_multipliers: each rule is (regex, factor > 0), got {rule!r}")
            path_regex(rule[0], "lr_multipliers")


def learning_rate(cfg: OptimConfig) -> optax.Schedule:
    warmup = optax.linear_schedule(0.0, cfg.learning_rate, max(cfg.warmup_steps, 1))
    decay_steps = max(cfg.steps - cfg.warmup_steps, 1)
    if cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(cfg.learning_rate, decay_steps, alpha=cfg.end_fraction)
    else:
        after = optax.constant_schedule(cfg.learning_rate)
    return optax.join_schedules([warmup, after], [cfg.warmup_steps]) if cfg.warmup_steps else after


def decay_mask(params: Any) -> Any:
    """Weight decay on weight matrices only (kernels, the embedding and head, LoRA factors), by name: norms,
    biases and the adapters' input statistics are left alone, also where scanned layers stack them into 2-D."""
    decays = lambda path: path.endswith("kernel") or path.rsplit(SEP, 1)[-1] in ("embedding", "lm_head", "a", "b")
    return traverse_util.unflatten_dict({k: decays(k) for k in _flat(params)}, sep=SEP)


def _scale_by_rules(rules: tuple[tuple[str, float], ...]) -> optax.GradientTransformation:
    """Multiplies each leaf's update by the factor of the first rule whose regex fullmatches its path."""
    compiled = [(path_regex(pattern, "lr_multipliers"), float(factor)) for pattern, factor in rules]

    def factor(path: str) -> float:
        return next((f for pattern, f in compiled if pattern.fullmatch(path)), 1.0)

    def scale(updates: Any, params: Any = None) -> Any:
        del params
        flat = {k: v * factor(k) for k, v in _flat(updates).items()}
        return traverse_util.unflatten_dict(flat, sep=SEP)

    return optax.stateless(scale)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """AdamW with warmup + cosine (or constant) schedule, global-norm clipping and per-path lr multipliers.

    The chain has the same three links whatever the settings (identity for no clipping, no rules), so its
    state keeps one structure and a run resumes with clipping or lr_multipliers changed."""
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip else optax.identity(),
        optax.adamw(learning_rate(cfg), cfg.b1, cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask),
        _scale_by_rules(cfg.lr_multipliers),
    )
