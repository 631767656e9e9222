"""Transformer building blocks shared by the Llama-layout (Llama, Mistral, Qwen) and Gemma 3 decoders.

Parameters carry logical axis names (MaxText style); `elm_jax.sharding` maps them to mesh axes.
Logical names: vocab, embed, heads, kv_heads, head_dim, mlp, norm, layers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from elm_jax.models.decoder_config import DecoderConfig

Array = jax.Array
_MASKED = -1e30  # finite, so fully-masked (padding) query rows give a uniform softmax instead of NaN


# Each layer kernel's (number of axes, number of leading input axes), before any scanned `layers` axis: what
# LoRA factorizes and int8 quantization scales over.
KERNEL_LAYOUT = {
    "q_kernel": (3, 1),
    "k_kernel": (3, 1),
    "v_kernel": (3, 1),
    "o_kernel": (3, 2),  # (heads, head_dim) -> embed
    "gate_kernel": (2, 1),
    "up_kernel": (2, 1),
    "down_kernel": (2, 1),
}


def _param(module: nn.Module, name: str, init: Any, shape: tuple[int, ...], axes: tuple[str, ...], dtype: Any):
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


class RMSNorm(nn.Module):
    """RMSNorm computed in float32; Gemma's variant scales by (1 + w) with w initialised at 0."""

    eps: float
    plus_one: bool = False
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        init = nn.initializers.zeros if self.plus_one else nn.initializers.ones
        scale = _param(self, "scale", init, (x.shape[-1],), ("norm",), self.param_dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        scale = scale.astype(jnp.float32)
        return (y * (1.0 + scale if self.plus_one else scale)).astype(x.dtype)


def einsum(spec: str, a: Array, b: Array, out_dtype: Any = None) -> Array:
    """A matmul einsum(spec, a, b) accumulated in float32, cast to `out_dtype` (default: a's dtype).

    Why not jnp.einsum: XLA:CPU computes a bfloat16 dot with a bfloat16 result in float32 (215 GFLOP/s on the
    2-core AMX Xeon), but one with a float32 result on its AMX kernel (1,265 GFLOP/s); and autodiff's transposed
    dots would get float32 cotangents. So with low-precision operands the forward asks for a float32 result and
    the backward casts the cotangent to the operands' dtype before its two dots. float32 operands: jnp.einsum.
    Mixed operands multiply in the narrower dtype, and each cotangent comes back in its own operand's dtype: a
    float32 input (attention's probabilities) gets its cotangent unrounded, with no bfloat16 round trip.
    `spec` names every axis ("->" included) and each input axis appears in the other input or the output. Batch
    axes need care: XLA:CPU sends some batched dots to a fallback without bfloat16 x bfloat16 -> float32, which
    raises UNIMPLEMENTED (attention over the KV cache's (B, kv_heads, slots, head_dim) layout at decode); plain
    matmuls, and attention's products without a cache in 1,056 shapes probed, all reach the AMX kernel.
    """
    out_dtype = jnp.dtype(a.dtype if out_dtype is None else out_dtype)
    if a.dtype == jnp.float32 and b.dtype == jnp.float32:
        return jnp.einsum(spec, a, b).astype(out_dtype)
    return _low_precision_einsum(spec, out_dtype, (jnp.dtype(a.dtype), jnp.dtype(b.dtype)), a, b)


def _f32_einsum(spec: str, a: Array, b: Array) -> Array:
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _accumulated(spec: str, a: Array, b: Array, dtype: Any) -> Array:
    return _f32_einsum(spec, a, b).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _low_precision_einsum(spec: str, out_dtype: Any, dtypes: tuple, a: Array, b: Array) -> Array:
    return _low_precision_einsum_fwd(spec, out_dtype, dtypes, a, b)[0]


def _low_precision_einsum_fwd(spec, out_dtype, dtypes, a, b):
    compute = min(dtypes, key=lambda d: d.itemsize)
    a, b = a.astype(compute), b.astype(compute)
    return _accumulated(spec, a, b, out_dtype), (a, b)


def _low_precision_einsum_bwd(spec, out_dtype, dtypes, residuals, d_out):
    a, b = residuals  # both in the compute dtype
    d_out = d_out.astype(a.dtype)
    inputs, out = spec.split("->")
    spec_a, spec_b = inputs.split(",")
    d_a = _accumulated(f"{out},{spec_b}->{spec_a}", d_out, b, dtypes[0])
    d_b = _accumulated(f"{spec_a},{out}->{spec_b}", a, d_out, dtypes[1])
    return d_a, d_b


_low_precision_einsum.defvjp(_low_precision_einsum_fwd, _low_precision_einsum_bwd)


def symmetric_int8(x: Array, axes: tuple[int, ...]) -> tuple[Array, Array]:
    """int8 codes round(x / s) and float32 scales s = max |x| over `axes` / 127, kept as size-1 axes (1 where
    all of x is 0): the one grid both weights (models/quantize.py) and matmul inputs are put on."""
    x = x.astype(jnp.float32)
    scale = jnp.max(jnp.abs(x), axis=axes, keepdims=True) / 127.0
    scale = jnp.where(scale == 0, 1.0, scale)
    return jnp.round(x / scale).astype(jnp.int8), scale


def int8_einsum(spec: str, x: Array, codes: Array, scale: Array, n_contract: int) -> Array:
    """float32 einsum(spec, x, codes * scale), x quantized to int8 per row and the dot accumulated in int32.

    x's last `n_contract` axes are the contracted ones, with at least one row axis before them; `scale` has the
    shape of the output's trailing (kernel) axes. A single row is padded to two: XLA:CPU sends a one-row int8 dot
    to a generic loop that ran a SmolLM2 decode step's matmuls 8x slower than two rows (120 against 14 ms on the
    2-core Intel VM).
    """
    lead = x.shape[: x.ndim - n_contract]
    single = math.prod(lead) == 1
    if single:
        x = jnp.concatenate([x, jnp.zeros_like(x)], axis=0)
    x_codes, x_scale = symmetric_int8(x, tuple(range(x.ndim - n_contract, x.ndim)))
    acc = jnp.einsum(spec, x_codes, codes, preferred_element_type=jnp.int32)
    row_scale = x_scale.reshape(x_scale.shape[: x.ndim - n_contract] + (1,) * (acc.ndim - len(lead)))
    out = acc.astype(jnp.float32) * row_scale * scale
    return out[:1] if single else out


def kernel_einsum(
    module: nn.Module,
    name: str,
    spec: str,
    x: Array,
    shape: tuple[int, ...],
    axes: tuple[str, ...],
    init: Any,
) -> Array:
    """einsum(spec, x, kernel) with the kernel (its KERNEL_LAYOUT input axes first) declared as param `name`.

    In an int8 model (`config.quant`) the param holds int8 codes and `{name}_scale` one float32 scale per output
    channel (models/quantize.py); otherwise it is a float kernel cast to the compute dtype.
    """
    cfg = module.config
    if cfg.quant == "int8":
        n_contract = KERNEL_LAYOUT[name][1]
        codes = _param(module, name, nn.initializers.zeros, shape, axes, jnp.int8)
        scale = _param(
            module, f"{name}_scale", nn.initializers.ones, shape[n_contract:], axes[n_contract:], jnp.float32
        )
        return int8_einsum(spec, x, codes, scale, n_contract).astype(cfg.dtype)
    kernel = _param(module, name, init, shape, axes, jnp.dtype(cfg.param_dtype))
    return einsum(spec, x, kernel.astype(cfg.dtype))


def rope_tables(positions: Array, inv_freq: Any, num_positions: int | None = None) -> tuple[Array, Array]:
    """cos/sin of shape (B, T, head_dim // 2) for integer positions (B, T).

    With `num_positions` (every position is known to lie in [0, num_positions)) the tables are computed once
    per position and gathered. Why: XLA:CPU fuses cos/sin into each RoPE application and recomputes them per
    element, 18 times per value for SmolLM2's queries (9 heads, both halves); those fusions took ~10% of a bfloat16
    stage-1 step, and the gathered tables (same values) made the step ~10% faster.
    """
    inv_freq = jnp.asarray(inv_freq, jnp.float32)
    if num_positions is None:
        angles = positions.astype(jnp.float32)[..., None] * inv_freq
        return jnp.cos(angles), jnp.sin(angles)
    angles = jnp.arange(num_positions, dtype=jnp.float32)[:, None] * inv_freq
    return tuple(jnp.take(table, positions, axis=0, mode="clip") for table in (jnp.cos(angles), jnp.sin(angles)))


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """Rotate-half (NeoX / Hugging Face) convention; x is (B, T, heads, head_dim)."""
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x.dtype)


def _cache_einsum(spec: str, a: Array, b: Array, out_dtype: Any) -> Array:
    a = a.astype(b.dtype)  # float32 probabilities x compute-dtype values: both in the compute dtype
    if out_dtype == jnp.float32:
        return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)
    return jnp.einsum(spec, a, b)


def _write_kv(cached: Array, new: Array, start: Array) -> Array:
    """New keys or values (B, T, kv_heads, head_dim) into a cache's (B, kv_heads, slots, head_dim) at `start`."""
    return jax.lax.dynamic_update_slice(cached, jnp.swapaxes(new, 1, 2).astype(cached.dtype), (0, 0, start, 0))


class Attention(nn.Module):
    """Grouped-query attention over the current tokens or, with a KV cache, over the cache they are written into.

    With a cache the new keys and values go in first and the tokens attend over the whole updated cache: the old
    cache's only reader is that write, so XLA updates it in place inside the decode loop. Attending to the old
    cache and writing afterwards made XLA copy every layer's cache twice per decode step.
    """

    config: DecoderConfig

    @nn.compact
    def __call__(self, x: Array, shared: dict, is_global: Array, cache: tuple[Array, Array] | None):
        cfg = self.config
        dtype, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        init = nn.initializers.lecun_normal()
        d, h, kvh, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

        x = x.astype(dtype)
        project = lambda name, heads, axis: kernel_einsum(
            self, name, "btd,dhk->bthk", x, (d, heads, hd), ("embed", axis, "head_dim"), init
        )
        q, k, v = (
            project("q_kernel", h, "heads"),
            project("k_kernel", kvh, "kv_heads"),
            project("v_kernel", kvh, "kv_heads"),
        )
        if cfg.qkv_bias:
            zeros = nn.initializers.zeros
            q = q + _param(self, "q_bias", zeros, (h, hd), ("heads", "head_dim"), pdt).astype(dtype)
            k = k + _param(self, "k_bias", zeros, (kvh, hd), ("kv_heads", "head_dim"), pdt).astype(dtype)
            v = v + _param(self, "v_bias", zeros, (kvh, hd), ("kv_heads", "head_dim"), pdt).astype(dtype)
        if cfg.qk_norm:
            q = RMSNorm(cfg.rms_eps, cfg.norm_plus_one, pdt, name="q_norm")(q)
            k = RMSNorm(cfg.rms_eps, cfg.norm_plus_one, pdt, name="k_norm")(k)
        cos = jnp.where(is_global, shared["cos_global"], shared["cos_local"])
        sin = jnp.where(is_global, shared["sin_global"], shared["sin_local"])
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        b, t = x.shape[:2]
        q = (q * jnp.asarray(cfg.query_scale, dtype)).reshape(b, t, kvh, h // kvh, hd)
        window_ok = lambda qp, kp: is_global | (qp - kp < (cfg.sliding_window or 0))
        q_pos = shared["positions"][:, :, None]

        if cache is None:
            keys, values, layout = k, v, "bskd"
            key_pos, key_ok = shared["positions"], jnp.tril(jnp.ones((t, t), bool))[None] & shared["mask"][:, None, :]
        else:  # keys and values (B, kv_heads, slots, head_dim): see init_cache
            keys, values = (_write_kv(c, new, shared["cache_end"]) for c, new in zip(cache, (k, v)))
            layout, key_pos = "bksd", shared["cache_positions"]  # written slots hold positions, others -1
            key_ok = (key_pos[:, None, :] >= 0) & (key_pos[:, None, :] <= q_pos)
        # Without a cache (training, scoring, prefill) both products go through `einsum`, accumulated in float32
        # with bfloat16 backward dots. With one, XLA:CPU would send some of them to a dot that lacks bfloat16 x
        # bfloat16 -> float32 (probabilities x values at one position, grouped query heads): plain einsums.
        product = einsum if cache is None else _cache_einsum
        s = product(f"btkgd,{layout}->bkgts", q, keys.astype(dtype), jnp.float32)
        ok = key_ok & window_ok(q_pos, key_pos[:, None, :])  # (B, T, S)
        probs = jax.nn.softmax(jnp.where(ok[:, None, None], s, _MASKED), axis=-1)  # float32 (see `einsum`)
        out = product(f"bkgts,{layout}->btkgd", probs, values.astype(dtype), dtype)
        out = out.reshape(b, t, h, hd)
        new_kv = (k, v) if cache is None else (keys, values)
        o_axes = ("heads", "head_dim", "embed")
        return kernel_einsum(self, "o_kernel", "bthk,hkd->btd", out, (h, hd, d), o_axes, init), new_kv


def _gelu_tanh(x: Array) -> Array:
    return jax.nn.gelu(x, approximate=True)


_ACTIVATIONS = {"silu": jax.nn.silu, "gelu_tanh": _gelu_tanh}


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def gated_mlp(activation: Callable[[Array], Array], x: Array, w_gate: Array, w_up: Array, w_down: Array) -> Array:
    """(activation(x @ w_gate) * (x @ w_up)) @ w_down, with a hand-written backward pass.

    Why by hand: XLA:CPU lays the weight-gradient dots out with the contracting (token) axis minor, so autodiff's
    backward transposed each mlp-wide (1536 on SmolLM2) elementwise product into a strided copy, fused with
    reads of the stacked scan residuals: on the 2-core Intel VM those copies took 1.9 s of a 7.3 s stage-2 step.
    Here each weight gradient transposes only an embed-wide operand (576) and the backward saves two mlp-wide
    residuals, not four: a scanned 30-layer SmolLM2 MLP's forward + backward took 2.4 s against 4.5 s.
    """
    return _gated_mlp_fwd(activation, x, w_gate, w_up, w_down)[0]


def _gated_mlp_fwd(activation, x, w_gate, w_up, w_down):
    # Dots accumulate in float32 (why: see `einsum`), the elementwise math runs on their float32 results, and
    # only matmul inputs and saved residuals take the compute dtype.
    gate, up = (_f32_einsum("...d,dm->...m", x, w) for w in (w_gate, w_up))
    out = _accumulated("...m,md->...d", (activation(gate) * up).astype(x.dtype), w_down, x.dtype)
    return out, (x, gate.astype(x.dtype), up.astype(x.dtype), w_gate, w_up, w_down)


def _gated_mlp_bwd(activation, residuals, d_out):
    x, gate, up, w_gate, w_up, w_down = residuals
    gate, up = gate.astype(jnp.float32), up.astype(jnp.float32)
    act, act_vjp = jax.vjp(activation, gate)
    d_hidden = _f32_einsum("...d,md->...m", d_out, w_down)
    d_up = (d_hidden * act).astype(x.dtype)
    d_gate = act_vjp(d_hidden * up)[0].astype(x.dtype)
    d_x = (_f32_einsum("...m,dm->...d", d_up, w_up) + _f32_einsum("...m,dm->...d", d_gate, w_gate)).astype(x.dtype)
    tokens = lambda a: a.reshape(-1, a.shape[-1])  # (..., features) -> (tokens, features)
    x_t = tokens(x)
    d_w_gate = _accumulated("td,tm->dm", x_t, tokens(d_gate), w_gate.dtype)
    d_w_up = _accumulated("td,tm->dm", x_t, tokens(d_up), w_up.dtype)
    hidden = tokens((act * up).astype(x.dtype))
    d_w_down = _accumulated("td,tm->dm", tokens(d_out), hidden, w_down.dtype).T  # (mlp, embed), as w_down
    return d_x, d_w_gate, d_w_up, d_w_down


gated_mlp.defvjp(_gated_mlp_fwd, _gated_mlp_bwd)


class MLP(nn.Module):
    config: DecoderConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        dtype, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        init = nn.initializers.lecun_normal()
        if cfg.activation not in _ACTIVATIONS:
            raise ValueError(f"activation {cfg.activation!r} is not one of {', '.join(_ACTIVATIONS)}")
        activation = _ACTIVATIONS[cfg.activation]
        if cfg.quant == "int8":  # inference only, so no hand-written backward
            d, m = cfg.hidden_size, cfg.mlp_dim
            up = lambda name: kernel_einsum(self, name, "...d,dm->...m", x, (d, m), ("embed", "mlp"), init)
            hidden = activation(up("gate_kernel")) * up("up_kernel")
            return kernel_einsum(self, "down_kernel", "...m,md->...d", hidden, (m, d), ("mlp", "embed"), init)
        wg = _param(self, "gate_kernel", init, (cfg.hidden_size, cfg.mlp_dim), ("embed", "mlp"), pdt)
        wu = _param(self, "up_kernel", init, (cfg.hidden_size, cfg.mlp_dim), ("embed", "mlp"), pdt)
        wd = _param(self, "down_kernel", init, (cfg.mlp_dim, cfg.hidden_size), ("mlp", "embed"), pdt)
        weights = (w.astype(dtype) for w in (wg, wu, wd))
        return gated_mlp(activation, x.astype(dtype), *weights)


class Block(nn.Module):
    """One pre-norm transformer layer (with Gemma's sandwich norms when configured)."""

    config: DecoderConfig

    @nn.compact
    def __call__(self, x: Array, layer_in: dict, shared: dict) -> tuple[Array, tuple[Array, Array]]:
        cfg = self.config
        norm = lambda name: RMSNorm(cfg.rms_eps, cfg.norm_plus_one, jnp.dtype(cfg.param_dtype), name=name)
        cache = layer_in.get("cache_kv")
        h, new_kv = Attention(cfg, name="attn")(norm("attn_norm")(x), shared, layer_in["is_global"], cache)
        if cfg.sandwich_norms:
            h = norm("post_attn_norm")(h)
        x = x + h.astype(x.dtype)
        h = MLP(cfg, name="mlp")(norm("mlp_norm")(x))
        if cfg.sandwich_norms:
            h = norm("post_mlp_norm")(h)
        return x + h.astype(x.dtype), new_kv
