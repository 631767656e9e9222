"""NumPy reference forward pass for Llama-layout (Llama, Mistral, Qwen2, Qwen3) and Gemma 3 decoders on Hugging
Face-named float32 weights.

This is the test oracle for the Flax model: plain, batched, recompute-everything numpy that follows the
transformers implementations line by line (the single-sequence version in models.md §2.6 matches
transformers+torch to 4e-5; the Mistral/Qwen additions were checked against transformers 5.23 + torch 2.13
on the tiny fixtures). Weights are a dict `name -> np.ndarray` in PyTorch `(out, in)` layout exactly as in a
HF `model.safetensors`; the config is a HF config dict (`AutoConfig.from_pretrained(d).to_dict()`).
"""

import math
from collections.abc import Collection

import numpy as np

_MASKED = np.finfo(np.float32).min  # like HF: finite, so fully masked (padding) rows stay NaN-free


def _is_gemma(config: dict) -> bool:
    return config["model_type"] == "gemma3_text"


def _head_dim(config: dict) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float, gemma: bool) -> np.ndarray:
    """RMSNorm; HF Gemma stores the scale as an offset from 1 (`x_normed * (1 + w)`)."""
    x = x.astype(np.float32)
    normed = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return normed * (1.0 + w) if gemma else normed * w


def inv_freq(rope: dict, head_dim: int) -> np.ndarray:
    """RoPE inverse frequencies for one `rope_parameters` entry ('default', 'linear' or 'llama3').

    Same math as transformers' `_compute_{default,linear_scaling,llama3}_rope_parameters`, in float64.
    """
    inv = 1.0 / rope["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    kind = rope.get("rope_type", "default")
    if kind == "default":
        return inv
    if kind == "linear":
        return inv / rope["factor"]
    if kind == "llama3":
        factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
        old_ctx = rope["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old_ctx / low, inv / factor, inv)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
        return np.where(is_medium, smoothed, scaled)
    raise ValueError(f"unsupported rope_type {kind!r}")


def _rope_cos_sin(positions: np.ndarray, freqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin of shape (B, T, 1, head_dim) in the HF layout (frequencies repeated for both halves)."""
    ang = positions[..., None].astype(np.float64) * freqs
    ang = np.concatenate([ang, ang], axis=-1)[:, :, None, :]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def _apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x: (B, T, H, hd); HF `rotate_half` (NeoX) convention."""
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def _attention(q, k, v, allowed, scale: float) -> np.ndarray:
    """q: (B,T,H,hd), k/v: (B,T,Hkv,hd), allowed: (B,T,T) bool. GQA by repeating the KV heads."""
    rep = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, rep, axis=2), np.repeat(v, rep, axis=2)
    s = np.einsum("bqhd,bkhd->bhqk", q, k) * np.float32(scale)
    s = np.where(allowed[:, None], s, _MASKED)
    return np.einsum("bhqk,bkhd->bqhd", _softmax(s), v)


def forward(
    weights: dict,
    config: dict,
    ids: np.ndarray | None = None,
    embeds: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Float32 logits (B, T, vocab) for every position of a causal LM.

    Give either `ids` (B, T) or `embeds` (B, T, D). `embeds` are used as given (HF `inputs_embeds`: for Gemma
    they must already carry the sqrt(hidden_size) scale that the ids path applies). `mask` (B, T) marks real
    tokens with 1 and (left) padding with 0: positions are `cumsum(mask) - 1` (clipped at 0), padding keys are
    masked out, attention is causal by index, and sliding layers mask keys with `q_pos - k_pos >= window`.
    Outputs at padding positions are meaningless (finite).
    """
    gemma = _is_gemma(config)
    eps = config["rms_norm_eps"]
    n_head, n_kv, hd = config["num_attention_heads"], config["num_key_value_heads"], _head_dim(config)
    emb = weights["model.embed_tokens.weight"]
    if embeds is None:
        x = emb[ids]
        if gemma:
            x = x * np.float32(math.sqrt(config["hidden_size"]))
    else:
        x = np.asarray(embeds, np.float32)
    B, T, _ = x.shape
    mask = np.ones((B, T), bool) if mask is None else np.asarray(mask).astype(bool)
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)

    causal = np.tril(np.ones((T, T), bool))[None] & mask[:, None, :]
    layer_types = config.get("layer_types") or ["full_attention"] * config["num_hidden_layers"]
    if config["model_type"] == "mistral" and config.get("sliding_window"):  # Mistral: every layer slides
        layer_types = ["sliding_attention"] * config["num_hidden_layers"]
    rope = config["rope_parameters"]  # Gemma 3: one entry per layer type
    cos_sin = {t: _rope_cos_sin(pos, inv_freq(rope[t] if gemma else rope, hd)) for t in set(layer_types)}  # Qwen,
    # Mistral: one RoPE for all layers
    scale = config["query_pre_attn_scalar"] ** -0.5 if gemma else hd**-0.5

    def norm(h, name):
        return _rms_norm(h, weights[name], eps, gemma)

    def linear(h, name):
        bias = weights.get(name.replace(".weight", ".bias"))  # Qwen2's q/k/v projections
        return h @ weights[name].T + (0 if bias is None else bias)

    for i, kind in enumerate(layer_types):
        p = f"model.layers.{i}."
        h = norm(x, p + "input_layernorm.weight")
        q = linear(h, p + "self_attn.q_proj.weight").reshape(B, T, n_head, hd)
        k = linear(h, p + "self_attn.k_proj.weight").reshape(B, T, n_kv, hd)
        v = linear(h, p + "self_attn.v_proj.weight").reshape(B, T, n_kv, hd)
        if p + "self_attn.q_norm.weight" in weights:  # Gemma 3, Qwen3: per-head RMSNorm before RoPE
            q, k = norm(q, p + "self_attn.q_norm.weight"), norm(k, p + "self_attn.k_norm.weight")
        cos, sin = cos_sin[kind]
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        allowed = causal
        if kind == "sliding_attention":
            allowed = causal & ((pos[:, :, None] - pos[:, None, :]) < config["sliding_window"])
        o = _attention(q, k, v, allowed, scale).reshape(B, T, n_head * hd)
        o = linear(o, p + "self_attn.o_proj.weight")
        if gemma:  # sandwich norms around both sub-blocks
            x = x + norm(o, p + "post_attention_layernorm.weight")
            h = norm(x, p + "pre_feedforward_layernorm.weight")
            m = _gelu_tanh(linear(h, p + "mlp.gate_proj.weight")) * linear(h, p + "mlp.up_proj.weight")
            x = x + norm(linear(m, p + "mlp.down_proj.weight"), p + "post_feedforward_layernorm.weight")
        else:  # Llama's post_attention_layernorm is the pre-MLP norm
            x = x + o
            h = norm(x, p + "post_attention_layernorm.weight")
            m = _silu(linear(h, p + "mlp.gate_proj.weight")) * linear(h, p + "mlp.up_proj.weight")
            x = x + linear(m, p + "mlp.down_proj.weight")

    x = norm(x, "model.norm.weight")
    head = emb if config.get("tie_word_embeddings") else weights["lm_head.weight"]
    logits = x @ head.T
    cap = config.get("final_logit_softcapping")
    if cap is not None:
        logits = np.tanh(logits / cap) * cap
    return logits.astype(np.float32)


def greedy(weights: dict, config: dict, ids: list[int], n_new: int, stop_ids: Collection[int] = ()) -> list[int]:
    """Greedy continuation of one prompt (recomputes the whole sequence each step: slow but obviously right).

    Returns up to `n_new` new token ids; stops after emitting a token in `stop_ids` (which is included).
    """
    seq, out = list(ids), []
    for _ in range(n_new):
        nxt = int(np.argmax(forward(weights, config, ids=np.array([seq]))[0, -1]))
        out.append(nxt)
        seq.append(nxt)
        if nxt in stop_ids:
            break
    return out
