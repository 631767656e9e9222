"""The embedding-conditioned decoder LLM (Llama-layout and Gemma 3 families) as one Flax linen module.

The forward pass takes input *embeddings*, not token ids: that is how ELM places adapter outputs
where an entity's name would stand. `embed` maps token ids into the same space (Gemma's sqrt(d)
scale included), so soft tokens and word tokens are interchangeable inputs.

Decoding state is an explicit pytree (`init_cache`) passed in and returned, never a Flax
collection, so the generation loop stays a pure function of (params, cache).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from elm_jax.models.decoder_config import DecoderConfig
from elm_jax.models.layers import Block, RMSNorm, einsum, int8_einsum, rope_tables

Array = jax.Array
Cache = dict[str, Array]

_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def init_cache(config: DecoderConfig, batch: int, max_len: int, dtype: Any = None) -> Cache:
    """Empty KV cache. `positions` is -1 for empty or padding slots; `end` is the next free slot.

    Keys and values are (batch, kv_heads, slots, head_dim) per layer, the layout attention's batched matmuls
    read directly (slots before heads cost a transpose of each layer's cache per decode step): stacked into
    one (layers, ...) array for scanned layers, a tuple of per-layer arrays otherwise, so that separate
    layers do not slice their cache out of a stack.
    """
    dtype = jnp.dtype(dtype or config.dtype)
    shape = (batch, config.num_kv_heads, max_len, config.head_dim)
    if config.scan_layers:
        empty = lambda: jnp.zeros((config.num_layers, *shape), dtype)
    else:
        empty = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
    return {
        "k": empty(),
        "v": empty(),
        "positions": jnp.full((batch, max_len), -1, jnp.int32),
        "end": jnp.zeros((), jnp.int32),
    }


def separate_layers(config: DecoderConfig, params: dict) -> dict:
    """Params of scanned (stacked) layers in the separate-layers layout (`scan_layers=False`), to decode with.

    A scanned decode step slices each layer's weights out of the stack: on an H100 that nearly doubled the
    step time of a 1B model against separate layers (benchmarks/README.md).
    """
    if not config.scan_layers:
        return params
    params = dict(params)
    stacked = params.pop("layers")
    for i in range(config.num_layers):
        params[f"layers_{i}"] = jax.tree.map(lambda a, i=i: a[i], stacked)
    return params


def separate_cache(config: DecoderConfig, cache: Cache) -> Cache:
    """A scanned model's cache (stacked keys and values) in the separate-layers layout (`separate_layers`)."""
    if not config.scan_layers:
        return cache
    unstack = lambda stacked: tuple(stacked[i] for i in range(config.num_layers))
    return {**cache, "k": unstack(cache["k"]), "v": unstack(cache["v"])}


def positions_from_mask(mask: Array, offset: Array | int = 0) -> Array:
    """Positions for left-padded rows: real tokens count 0, 1, ... after `offset` earlier tokens."""
    return (jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1 + jnp.asarray(offset)[..., None]).clip(min=0)


def abstract_params(config: DecoderConfig) -> Any:
    """Shapes and logical axes of every parameter (boxed ShapeDtypeStructs), without allocating."""
    init = lambda: Decoder(config).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
    return jax.eval_shape(init)


class Decoder(nn.Module):
    config: DecoderConfig

    def setup(self):
        cfg = self.config
        pdt = jnp.dtype(cfg.param_dtype)
        int8 = cfg.quant == "int8"  # codes with one scale per vocabulary row (models/quantize.py)
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(
                nn.initializers.zeros if int8 else nn.initializers.normal(0.02), ("vocab", "embed")
            ),
            (cfg.vocab_size, cfg.hidden_size),
            jnp.int8 if int8 else pdt,
        )
        if int8:
            self.embedding_scale = self.param(
                "embedding_scale", nn.with_logical_partitioning(nn.initializers.ones, ("vocab",)), (cfg.vocab_size,)
            )
        block = Block
        if cfg.remat_policy != "none":
            if cfg.remat_policy not in _REMAT_POLICIES:
                raise ValueError(f"remat_policy {cfg.remat_policy!r} is not one of none, {', '.join(_REMAT_POLICIES)}")
            block = nn.remat(Block, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            self.layers = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(0, nn.broadcast),
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg, name="layers")
        else:
            self.layers = [block(cfg, name=f"layers_{i}") for i in range(cfg.num_layers)]
        self.final_norm = RMSNorm(cfg.rms_eps, cfg.norm_plus_one, pdt)
        if not cfg.tie_embeddings:
            self.lm_head = self.param(
                "lm_head",
                nn.with_logical_partitioning(
                    nn.initializers.zeros if int8 else nn.initializers.lecun_normal(), ("embed", "vocab")
                ),
                (cfg.hidden_size, cfg.vocab_size),
                jnp.int8 if int8 else pdt,
            )
            if int8:
                self.lm_head_scale = self.param(
                    "lm_head_scale", nn.with_logical_partitioning(nn.initializers.ones, ("vocab",)), (cfg.vocab_size,)
                )

    def embed(self, tokens: Array) -> Array:
        """Token ids -> input embeddings (the LLM's E_0, Gemma's scale included)."""
        cfg = self.config
        x = jnp.take(self.embedding, tokens, axis=0)
        if cfg.quant == "int8":
            x = x.astype(jnp.float32) * jnp.take(self.embedding_scale, tokens, axis=0)[..., None]
        x = x.astype(cfg.dtype)
        return x * jnp.asarray(cfg.embed_scale, cfg.dtype) if cfg.embed_scale != 1.0 else x

    def __call__(
        self,
        tokens: Array | None = None,
        *,
        embeddings: Array | None = None,
        mask: Array | None = None,
        positions: Array | None = None,
        cache: Cache | None = None,
        return_hidden: bool = False,
    ) -> tuple[Array, Cache | None]:
        """Logits (B, T, vocab) in float32 for tokens or embeddings (B, T[, D]).

        mask (B, T): 1 for real tokens, 0 for (left) padding. With a cache, the T new tokens are written at
        slot `cache["end"]` and attend to every valid slot up to their own; the updated cache is returned.
        """
        cfg = self.config
        if (tokens is None) == (embeddings is None):
            raise ValueError("pass exactly one of `tokens` or `embeddings`")
        x = self.embed(tokens) if tokens is not None else embeddings.astype(cfg.dtype)
        b, t = x.shape[:2]
        mask = jnp.ones((b, t), bool) if mask is None else mask.astype(bool)
        # Positions counted from the mask without a cache lie in [0, t): RoPE tables of t rows suffice.
        num_positions = t if positions is None and cache is None else None
        if positions is None:
            offset = 0 if cache is None else jnp.max(cache["positions"], axis=1) + 1
            positions = positions_from_mask(mask, offset)
        shared = self._shared(positions, mask, num_positions)
        if cache is not None:  # the new tokens' slots, written before any layer attends over the cache
            start = cache["end"]
            new_positions = jnp.where(mask, positions, -1).astype(jnp.int32)
            shared["cache_positions"] = jax.lax.dynamic_update_slice(cache["positions"], new_positions, (0, start))
            shared["cache_end"] = start

        x, (new_k, new_v) = self._layers(x, shared, None if cache is None else (cache["k"], cache["v"]))
        new_cache = None
        if cache is not None:
            new_cache = {"k": new_k, "v": new_v, "positions": shared["cache_positions"], "end": start + t}
        x = self.final_norm(x)
        if return_hidden:
            return x, new_cache
        return self.logits(x), new_cache

    def prefill(self, embeddings: Array, mask: Array, cache_size: int) -> tuple[Array, Cache]:
        """Final-norm hidden states (B, T, D) of left-padded prompts and a `cache_size`-slot cache holding them.

        The prompt attends only to itself (no empty cache slots scored), and scanned layers stay scanned: a
        prompt is compute-bound, so the per-layer weight slice a scan costs is small next to its matmuls, and
        one scanned layer compiles far faster than the unrolled stack the decode loop runs.
        """
        cfg = self.config
        x = embeddings.astype(cfg.dtype)
        t = x.shape[1]
        if cache_size < t:
            raise ValueError(f"cache_size {cache_size} is smaller than the prompt's {t} tokens")
        mask = mask.astype(bool)
        positions = positions_from_mask(mask)
        x, (k, v) = self._layers(x, self._shared(positions, mask, t), None)
        # (B, T, kv_heads, head_dim) per layer -> the cache's (B, kv_heads, slots, head_dim), zeros after the prompt.
        slots = lambda a: jnp.pad(jnp.swapaxes(a, -3, -2), [(0, 0)] * (a.ndim - 2) + [(0, cache_size - t), (0, 0)])
        k, v = jax.tree.map(slots, (k, v))
        prompt_positions = jnp.where(mask, positions, -1).astype(jnp.int32)
        cache = {
            "k": k,
            "v": v,
            "positions": jnp.pad(prompt_positions, ((0, 0), (0, cache_size - t)), constant_values=-1),
            "end": jnp.asarray(t, jnp.int32),
        }
        return self.final_norm(x), cache

    def _shared(self, positions: Array, mask: Array, num_positions: int | None) -> dict:
        """What every layer reads besides its input: positions, mask and both RoPE tables (see `rope_tables`)."""
        cfg = self.config
        cos_g, sin_g = rope_tables(positions, cfg.rope.inv_freq(cfg.head_dim), num_positions)
        cos_l, sin_l = rope_tables(positions, cfg.local_rope.inv_freq(cfg.head_dim), num_positions)
        return dict(
            positions=positions, mask=mask, cos_global=cos_g, sin_global=sin_g, cos_local=cos_l, sin_local=sin_l
        )

    def _layers(self, x: Array, shared: dict, cache_kv: tuple[Any, Any] | None) -> tuple[Array, tuple[Any, Any]]:
        """All layers; returns the output and each layer's keys and values (the updated cache's, given one)."""
        is_global = jnp.asarray(np.array(self.config.layer_is_global))
        if self.config.scan_layers:
            layer_in = {"is_global": is_global}
            if cache_kv is not None:
                layer_in["cache_kv"] = cache_kv
            return self.layers(x, layer_in, shared)
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            layer_in = {"is_global": is_global[i]}
            if cache_kv is not None:
                layer_in["cache_kv"] = (cache_kv[0][i], cache_kv[1][i])
            x, (k, v) = layer(x, layer_in, shared)
            new_k.append(k)
            new_v.append(v)
        return x, (tuple(new_k), tuple(new_v))

    def logits(self, hidden: Array) -> Array:
        """Final-norm hidden states -> float32 logits (tied or separate head, optional softcap)."""
        cfg = self.config
        if cfg.quant == "int8":
            if cfg.tie_embeddings:
                logits = int8_einsum("...d,vd->...v", hidden, self.embedding, self.embedding_scale, 1)
            else:
                logits = int8_einsum("...d,dv->...v", hidden, self.lm_head, self.lm_head_scale, 1)
        elif cfg.tie_embeddings:
            logits = einsum("...d,vd->...v", hidden, self.embedding.astype(hidden.dtype), jnp.float32)
        else:
            logits = einsum("...d,dv->...v", hidden, self.lm_head.astype(hidden.dtype), jnp.float32)
        if cfg.final_logit_softcap:
            logits = jnp.tanh(logits / cfg.final_logit_softcap) * cfg.final_logit_softcap
        return logits
