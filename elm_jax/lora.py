"""LoRA (Hu et al., 2021) for stage 2 as a transformation of the parameter tree, not of the model.

The paper suggests it for efficiency in stage 2 (§2). Every LLM kernel whose path matches `targets` gets
factors A (inputs..., r) and B (r, outputs...) under `lora/<kernel path>`; the forward pass uses
W + (alpha / r) * A @ B. B starts at zero, so a fresh LoRA computes exactly the base model, and the base
kernels stay frozen: only `adapters_*` and `lora/*` are trainable. `apply_lora` is also how the factors are
folded into the kernels for export or decoding.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from elm_jax.models.layers import KERNEL_LAYOUT
from elm_jax.optim import SEP, path_regex

PREFIX = "lora"


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    rank: int
    alpha: float = 16.0
    targets: str = r"llm/layers.*/attn/(q|v)_kernel"  # regex over parameter paths

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"lora rank must be >= 1, got {self.rank}")
        path_regex(self.targets, "lora.targets")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def _targets(flat: dict[str, Any], cfg: LoraConfig) -> list[str]:
    pattern = path_regex(cfg.targets, "lora.targets")
    paths = [k for k in flat if pattern.fullmatch(k)]
    if not paths:
        raise ValueError(f"lora targets {cfg.targets!r} match no parameter")
    bad = [k for k in paths if k.rsplit(SEP, 1)[-1] not in KERNEL_LAYOUT]
    if bad:
        raise ValueError(f"lora target {bad[0]!r} is not a projection kernel ({', '.join(KERNEL_LAYOUT)})")
    return paths


def _split(path: str, shape: tuple[int, ...]) -> tuple[int, int]:
    """(number of leading stacked axes, number of input axes) of a kernel."""
    ndim, n_in = KERNEL_LAYOUT[path.rsplit(SEP, 1)[-1]]
    return len(shape) - ndim, n_in


def init_lora(boxed_params: Any, cfg: LoraConfig, rng: jax.Array) -> dict:
    """Fresh factors (boxed with logical axis names) for every target kernel of `boxed_params`.

    `boxed_params` may be abstract (from jax.eval_shape): only shapes, dtypes and axis names are read.
    """
    flat = traverse_util.flatten_dict(
        boxed_params, sep=SEP, is_leaf=lambda _, x: isinstance(x, nn.LogicallyPartitioned)
    )
    out = {}
    for i, path in enumerate(_targets(flat, cfg)):
        leaf = flat[path]
        value, names = (leaf.value, leaf.names) if isinstance(leaf, nn.LogicallyPartitioned) else (leaf, None)
        shape = tuple(value.shape)
        lead, n_in = _split(path, shape)
        names = names or (None,) * len(shape)
        a_shape = shape[: lead + n_in] + (cfg.rank,)
        b_shape = shape[:lead] + (cfg.rank,) + shape[lead + n_in :]
        fan_in = 1
        for d in shape[lead : lead + n_in]:
            fan_in *= d
        a = jax.random.normal(jax.random.fold_in(rng, i), a_shape, jnp.float32) / jnp.sqrt(fan_in)
        out[f"{PREFIX}{SEP}{path}{SEP}a"] = nn.LogicallyPartitioned(
            a.astype(value.dtype), names[: lead + n_in] + ("lora_rank",)
        )
        out[f"{PREFIX}{SEP}{path}{SEP}b"] = nn.LogicallyPartitioned(
            jnp.zeros(b_shape, value.dtype), names[:lead] + ("lora_rank",) + names[lead + n_in :]
        )
    return traverse_util.unflatten_dict(out, sep=SEP)


def _delta(a: jax.Array, b: jax.Array, lead: int, n_in: int) -> jax.Array:
    """A (lead..., in..., r) @ B (lead..., r, out...) -> (lead..., in..., out...)."""
    letters = "abcdefghijklmnopq"
    lead_s, in_s = letters[:lead], letters[lead : lead + n_in]
    out_s = letters[lead + n_in : lead + n_in + b.ndim - lead - 1]
    return jnp.einsum(f"{lead_s}{in_s}z,{lead_s}z{out_s}->{lead_s}{in_s}{out_s}", a, b)


def apply_lora(params: dict, cfg: LoraConfig) -> dict:
    """Params with every LoRA target kernel replaced by W + scale * A @ B and the `lora` subtree removed."""
    if PREFIX not in params:
        return params
    flat = traverse_util.flatten_dict(params, sep=SEP)
    factors = {k[len(PREFIX) + 1 :]: v for k, v in flat.items() if k.startswith(PREFIX + SEP)}
    out = {k: v for k, v in flat.items() if not k.startswith(PREFIX + SEP)}
    for path in {k.rsplit(SEP, 1)[0] for k in factors}:
        w = out[path]
        lead, n_in = _split(path, w.shape)
        delta = _delta(factors[f"{path}{SEP}a"], factors[f"{path}{SEP}b"], lead, n_in)
        out[path] = w + (cfg.scale * delta).astype(w.dtype)
    return traverse_util.unflatten_dict(out, sep=SEP)
