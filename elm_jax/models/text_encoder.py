"""BERT sentence encoder (sentence-transformers style) as one Flax linen module.

ELM's inputs are embeddings of entities and texts; this module computes them on the same devices and mesh
as the LLM, so encoding an evaluation set needs neither torch nor a host round-trip per batch. It matches
sentence-transformers' `Transformer -> Pooling [-> Normalize]` pipeline for Hugging Face `BertModel`
checkpoints: post-LN layers, exact-erf GELU, absolute positions, token type 0 everywhere.

Logical parameter axes: vocab, embed, heads, head_dim, mlp, norm (position and token-type tables are
replicated: they are small and indexed by position, not by a sharded id).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from elm_jax.models.layers import _param

Array = jax.Array

POOLING_MODES = ("mean", "cls", "max")
# transformers' ACT2FN names -> JAX; BERT's "gelu" is the exact erf form, not the tanh approximation.
_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Architecture plus the sentence-transformers head; hashable so jit can key compiled programs on it."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    activation: str = "gelu"
    max_seq_length: int = 512  # inputs are truncated to this many tokens, specials included
    pooling: str = "mean"  # mean | cls | max
    normalize: bool = True  # sentence-transformers' Normalize module: unit-length outputs
    dtype: str = "float32"  # compute dtype; pooling and normalisation always run in float32
    param_dtype: str = "float32"

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling {self.pooling!r} is not supported ({', '.join(POOLING_MODES)})")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"hidden_act {self.activation!r} is not supported ({', '.join(_ACTIVATIONS)})")
        if not 1 <= self.max_seq_length <= self.max_position_embeddings:
            raise ValueError(
                f"max_seq_length {self.max_seq_length} must be in [1, max_position_embeddings "
                f"{self.max_position_embeddings}]"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf(
        cls, hf_config: Any, max_seq_length: int, pooling: str = "mean", normalize: bool = True, **overrides: Any
    ) -> EncoderConfig:
        """From a transformers `BertConfig`; absolute position embeddings only (what `BertModel` saves)."""
        position_type = getattr(hf_config, "position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(f"position_embedding_type {position_type!r} is not supported (absolute)")
        return cls(
            vocab_size=hf_config.vocab_size,
            hidden_size=hf_config.hidden_size,
            num_layers=hf_config.num_hidden_layers,
            num_heads=hf_config.num_attention_heads,
            mlp_dim=hf_config.intermediate_size,
            max_position_embeddings=hf_config.max_position_embeddings,
            type_vocab_size=hf_config.type_vocab_size,
            layer_norm_eps=hf_config.layer_norm_eps,
            activation=hf_config.hidden_act,
            max_seq_length=max_seq_length,
            pooling=pooling,
            normalize=normalize,
            **overrides,
        )


class LayerNorm(nn.Module):
    """Post-LN LayerNorm in float32 (BERT's eps is 1e-12, far below float16/bfloat16 resolution)."""

    eps: float
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d = x.shape[-1]
        scale = _param(self, "scale", nn.initializers.ones, (d,), ("norm",), self.param_dtype)
        bias = _param(self, "bias", nn.initializers.zeros, (d,), ("norm",), self.param_dtype)
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


class EncoderLayer(nn.Module):
    """Bidirectional self-attention and MLP, each followed by residual add + LayerNorm (post-LN)."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, x: Array, key_ok: Array) -> Array:
        cfg = self.config
        dtype, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        d, h, hd, f = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.mlp_dim
        init, zeros = nn.initializers.lecun_normal(), nn.initializers.zeros
        p = lambda name, i, shape, axes: _param(self, name, i, shape, axes, pdt).astype(dtype)
        # float32 means float32: GPUs would otherwise multiply in TF32 (~1e-3 relative error).
        precision = jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None
        einsum = lambda spec, a, b: jnp.einsum(spec, a, b, precision=precision, preferred_element_type=dtype)

        def project(name: str) -> Array:  # (B, heads, T, head_dim): XLA:CPU's batched matmuls want heads leading
            w = p(f"{name}_kernel", init, (d, h, hd), ("embed", "heads", "head_dim"))
            bias = p(f"{name}_bias", zeros, (h, hd), ("heads", "head_dim"))
            return einsum("btd,dhk->bhtk", x, w) + bias[None, :, None, :]

        q, k, v = project("q") * jnp.asarray(1.0 / math.sqrt(hd), dtype), project("k"), project("v")
        scores = jnp.einsum("bhtk,bhsk->bhts", q, k, precision=precision, preferred_element_type=jnp.float32)
        # Finite fill: a padding row (no real key) gets a uniform softmax instead of NaN.
        scores = jnp.where(key_ok[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
        attn = einsum("bhts,bhsk->bhtk", probs, v)
        wo = p("o_kernel", init, (h, hd, d), ("heads", "head_dim", "embed"))
        attn = einsum("bhtk,hkd->btd", attn, wo) + p("o_bias", zeros, (d,), ("embed",))
        x = LayerNorm(cfg.layer_norm_eps, pdt, name="attn_norm")(x + attn)

        hidden = einsum("btd,df->btf", x, p("wi_kernel", init, (d, f), ("embed", "mlp")))
        hidden = _ACTIVATIONS[cfg.activation](hidden + p("wi_bias", zeros, (f,), ("mlp",)))
        out = einsum("btf,fd->btd", hidden, p("wo_kernel", init, (f, d), ("mlp", "embed")))
        out = out + p("wo_bias", zeros, (d,), ("embed",))
        return LayerNorm(cfg.layer_norm_eps, pdt, name="mlp_norm")(x + out)


def pool(tokens: Array, mask: Array, mode: str) -> Array:
    """sentence-transformers' Pooling on right-padded (B, T, D) float32 states; mask (B, T) bool."""
    if mode == "cls":
        return tokens[:, 0]
    if mode == "max":
        return jnp.max(jnp.where(mask[..., None], tokens, jnp.finfo(tokens.dtype).min), axis=1)
    counts = jnp.maximum(jnp.sum(mask, axis=1, keepdims=True, dtype=tokens.dtype), 1e-9)
    return jnp.sum(jnp.where(mask[..., None], tokens, 0.0), axis=1) / counts


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
    """torch.nn.functional.normalize: x / max(|x|, eps), so all-padding rows stay 0 instead of NaN."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class TextEncoderModel(nn.Module):
    """(B, T) right-padded token ids and mask -> (B, hidden) float32 sentence embeddings."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, ids: Array, mask: Array) -> Array:
        cfg = self.config
        dtype, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        d, t = cfg.hidden_size, ids.shape[1]
        embed_init = nn.initializers.normal(0.02)
        words = _param(self, "word_embeddings", embed_init, (cfg.vocab_size, d), ("vocab", "embed"), pdt)
        positions = _param(self, "position_embeddings", embed_init, (cfg.max_position_embeddings, d), (None, None), pdt)
        types = _param(self, "token_type_embeddings", embed_init, (cfg.type_vocab_size, d), (None, None), pdt)
        x = jnp.take(words, ids, axis=0) + positions[:t][None] + types[0]
        x = LayerNorm(cfg.layer_norm_eps, pdt, name="embed_norm")(x.astype(dtype))
        mask = mask.astype(bool)
        for i in range(cfg.num_layers):
            x = EncoderLayer(cfg, name=f"layers_{i}")(x, mask)
        pooled = pool(x.astype(jnp.float32), mask, cfg.pooling)
        return l2_normalize(pooled) if cfg.normalize else pooled


def abstract_params(config: EncoderConfig) -> Any:
    """Shapes and logical axes of every parameter (boxed ShapeDtypeStructs), without allocating."""
    dummy = jnp.zeros((1, 1), jnp.int32)
    return jax.eval_shape(lambda: TextEncoderModel(config).init(jax.random.key(0), dummy, dummy)["params"])
