"""The ELM adapter E_A: a domain embedding -> k soft tokens in the LLM's token-embedding space.

The paper uses a two-layer MLP and one token per embedding (§4, footnote 4 leaves k > 1 to future work);
width, activation and k are configurable here. The output scale matters: an adapter whose outputs are far
larger or smaller than real token embeddings starts training in a region the frozen LLM has never seen
(a failure seen in public reproductions), so `rescale_output` matches the output norm to the LLM's typical
token-embedding norm at initialisation.

Inputs are standardized per dimension with fixed statistics of the space's vectors (`input_mean`,
`input_std`, set by `standardize_inputs`, never trained). Sentence-encoder vectors share a large common
component (the default catalogue's MiniLM plot vectors: mean pairwise cosine 0.33, per-dimension std 0.04),
so without it the adapter starts out mapping every entity to nearly the same soft token and Adam's steps
are tiny against what distinguishes entities. The statistics live in the params, so checkpoints and
exported adapters carry them, and every caller (training, CAV moves, raw vectors) standardizes the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

_ACTIVATIONS = {"gelu": jax.nn.gelu, "relu": jax.nn.relu, "silu": jax.nn.silu, "tanh": jnp.tanh}


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    """One embedding space's adapter (e.g. "semantic" movie vectors, "behavioral" user vectors)."""

    input_dim: int
    output_dim: int  # the LLM's hidden size
    hidden_dim: int = 1024
    activation: str = "gelu"
    num_tokens: int = 1  # soft tokens per embedding
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"adapter activation {self.activation!r} is not one of {', '.join(_ACTIVATIONS)}")
        for name in ("input_dim", "output_dim", "hidden_dim", "num_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"adapter {name} must be >= 1, got {getattr(self, name)}")


class Adapter(nn.Module):
    config: AdapterConfig

    @nn.compact
    def __call__(self, vectors: Array) -> Array:
        """(..., input_dim) -> (..., num_tokens, output_dim)."""
        cfg = self.config
        dtype, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        dense = lambda features, axes, name: nn.Dense(
            features,
            dtype=dtype,
            param_dtype=pdt,
            name=name,
            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]),
        )
        stat = lambda name, init: jax.lax.stop_gradient(
            self.param(name, nn.with_logical_partitioning(init, ("adapter_in",)), (cfg.input_dim,), pdt)
        )
        x = (vectors - stat("input_mean", nn.initializers.zeros)) / stat("input_std", nn.initializers.ones)
        h = _ACTIVATIONS[cfg.activation](dense(cfg.hidden_dim, ("adapter_in", "adapter_hidden"), "fc1")(x))
        out = dense(cfg.num_tokens * cfg.output_dim, ("adapter_hidden", "embed"), "fc2")(h)
        return out.reshape(*vectors.shape[:-1], cfg.num_tokens, cfg.output_dim)


def standardize_inputs(params: Any, sample_vectors: Array) -> Any:
    """Sets the fixed input statistics to the per-dimension mean and std of `sample_vectors` (N, input_dim).

    A dimension that barely varies gets the floor std (1e-3 of the mean std), so it is not blown up into noise.
    """
    x = jnp.asarray(sample_vectors, jnp.float32)
    std = jnp.std(x, axis=0)
    std = jnp.maximum(std, 1e-3 * jnp.maximum(jnp.mean(std), 1e-12))
    dtype = params["input_std"].dtype
    return {**params, "input_mean": jnp.mean(x, axis=0).astype(dtype), "input_std": std.astype(dtype)}


def rescale_output(params: Any, config: AdapterConfig, sample_vectors: Array, target_norm: float) -> Any:
    """Scales fc2 so the mean soft-token norm on `sample_vectors` equals `target_norm` (fc2's bias starts at 0)."""
    out = Adapter(config).apply({"params": params}, sample_vectors)
    scale = target_norm / jnp.maximum(jnp.mean(jnp.linalg.norm(out.astype(jnp.float32), axis=-1)), 1e-12)
    fc2 = {**params["fc2"], "kernel": params["fc2"]["kernel"] * scale.astype(params["fc2"]["kernel"].dtype)}
    return {**params, "fc2": fc2}
