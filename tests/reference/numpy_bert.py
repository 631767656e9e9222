"""NumPy BERT sentence encoder (mean pooling + L2 norm) on HF-named float32 weights.

Test oracle for the Flax encoder; follows models.md §3 (matches sentence-transformers all-MiniLM-L6-v2 run
through torch to 7e-8). Weights use the HF `BertModel` names (`embeddings.*`, `encoder.layer.{i}.*`), in
PyTorch `(out, in)` layout; an optional `bert.` prefix (BertFor* exports) is accepted.
"""

import math

import numpy as np


def _layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz-Stegun 7.1.26 (|err| < 1.5e-7); avoids a scipy dependency."""
    s, a = np.sign(x), np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t
    return s * (1.0 - poly * np.exp(-a * a))


def _gelu_erf(x: np.ndarray) -> np.ndarray:
    """BERT's "gelu" is the exact (erf) GELU, not the tanh approximation."""
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def encode(weights: dict, config: dict, ids: np.ndarray, mask: np.ndarray, pooling: str = "mean") -> np.ndarray:
    """L2-normalised pooled sentence embeddings (B, hidden) for right-padded `ids` (B, T), `mask` 1=real.

    Token type ids are all 0 and positions are 0..T-1, as in sentence-transformers. `pooling` is one of
    sentence-transformers' modes "mean" (all-MiniLM-L6-v2's), "cls" (first token) or "max" (over real tokens).
    """
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in weights else ""

    def w(name):
        return weights[prefix + name]

    def linear(h, name):
        return h @ w(name + ".weight").T + w(name + ".bias")

    eps, n_head = config["layer_norm_eps"], config["num_attention_heads"]
    B, T = ids.shape
    maskf = np.asarray(mask, np.float32)
    x = (
        w("embeddings.word_embeddings.weight")[ids]
        + w("embeddings.position_embeddings.weight")[:T][None]
        + w("embeddings.token_type_embeddings.weight")[0]
    )
    x = _layer_norm(x, w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"), eps)
    D = x.shape[-1]
    hd = D // n_head
    bias = (1.0 - maskf)[:, None, None, :] * np.float32(-1e9)  # (B, 1, 1, T): padding keys get no weight

    def heads(h):
        return h.reshape(B, T, n_head, hd).transpose(0, 2, 1, 3)

    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (heads(linear(x, p + f"attention.self.{n}")) for n in ("query", "key", "value"))
        s = q @ k.transpose(0, 1, 3, 2) / np.float32(math.sqrt(hd)) + bias
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = (s @ v).transpose(0, 2, 1, 3).reshape(B, T, D)
        x = _layer_norm(
            x + linear(a, p + "attention.output.dense"),
            w(p + "attention.output.LayerNorm.weight"),
            w(p + "attention.output.LayerNorm.bias"),
            eps,
        )
        h = _gelu_erf(linear(x, p + "intermediate.dense"))
        x = _layer_norm(
            x + linear(h, p + "output.dense"), w(p + "output.LayerNorm.weight"), w(p + "output.LayerNorm.bias"), eps
        )
    if pooling == "cls":
        emb = x[:, 0]
    elif pooling == "max":
        emb = np.where(maskf[..., None] > 0, x, -np.inf).max(1)
    elif pooling == "mean":
        emb = (x * maskf[..., None]).sum(1) / np.clip(maskf.sum(1, keepdims=True), 1e-9, None)
    else:
        raise ValueError(f"unknown pooling {pooling!r}")
    return (emb / np.linalg.norm(emb, axis=-1, keepdims=True)).astype(np.float32)
