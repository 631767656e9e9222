"""Architecture hyper-parameters of the decoder LLM, and their mapping from Hugging Face configs.

One frozen dataclass covers the Llama block layout (SmolLM2, Llama 2/3, Mistral, Qwen2/2.5, Qwen3) and the
Gemma 3 family, so the Flax module has no per-family subclasses: every difference is a field.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

LLAMA_LAYOUT = ("llama", "mistral", "qwen2", "qwen3")  # pre-norm blocks, SwiGLU, RoPE: the "llama" family
SUPPORTED_MODEL_TYPES = (*LLAMA_LAYOUT, "gemma3_text", "gemma3")
_LAYER_TYPES = ("full_attention", "sliding_attention")
QUANT_MODES = ("none", "int8")


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding frequencies; `kind` follows transformers' `rope_type`."""

    theta: float = 10000.0
    kind: str = "default"  # default | linear | llama3
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192

    def inv_freq(self, head_dim: int) -> np.ndarray:
        """Inverse frequencies (head_dim // 2,), float64, computed on the host once per trace."""
        inv = 1.0 / (self.theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
        if self.kind == "default":
            return inv
        if self.kind == "linear":
            return inv / self.factor
        if self.kind == "llama3":
            low_wavelen = self.original_max_position / self.low_freq_factor
            high_wavelen = self.original_max_position / self.high_freq_factor
            wavelen = 2 * math.pi / inv
            smooth = (self.original_max_position / wavelen - self.low_freq_factor) / (
                self.high_freq_factor - self.low_freq_factor
            )
            scaled = np.where(wavelen > low_wavelen, inv / self.factor, inv)
            mid = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
            return np.where(mid, (1 - smooth) * inv / self.factor + smooth * inv, scaled)
        raise ValueError(f"rope_type {self.kind!r} is not supported (default, linear, llama3)")

    @classmethod
    def from_hf(cls, params: Mapping[str, Any]) -> RopeConfig:
        kind = params.get("rope_type", params.get("type", "default"))
        if kind not in ("default", "linear", "llama3"):
            raise ValueError(f"rope_type {kind!r} is not supported (default, linear, llama3)")
        return cls(
            theta=float(params["rope_theta"]),
            kind=kind,
            factor=float(params.get("factor", 1.0)),
            low_freq_factor=float(params.get("low_freq_factor", 1.0)),
            high_freq_factor=float(params.get("high_freq_factor", 4.0)),
            original_max_position=int(params.get("original_max_position_embeddings", 8192)),
        )


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Everything the Flax decoder needs to know; hashable so it can be a static jit argument."""

    family: str  # "llama" | "gemma3"
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    rms_eps: float = 1e-5
    activation: str = "silu"  # silu | gelu_tanh
    rope: RopeConfig = RopeConfig()
    local_rope: RopeConfig = RopeConfig()  # used by sliding-window layers
    sliding_window: int | None = None
    global_layers: tuple[bool, ...] = ()  # per layer: full attention (True) or sliding window
    query_scale: float = 1.0
    qk_norm: bool = False  # RMSNorm over each head's queries and keys before RoPE (Gemma 3, Qwen3)
    qkv_bias: bool = False  # biases on the query, key and value projections (Qwen2)
    sandwich_norms: bool = False  # Gemma: extra norms after attention and after the MLP
    norm_plus_one: bool = False  # Gemma RMSNorm multiplies by (1 + w)
    embed_scale: float = 1.0  # Gemma multiplies token embeddings by sqrt(hidden_size)
    tie_embeddings: bool = True
    final_logit_softcap: float | None = None
    # Execution knobs: they change speed and memory, never the function computed.
    dtype: str = "float32"  # activations / matmul inputs
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"  # none | full | dots | dots_no_batch
    # Inference-only approximation (models/quantize.py): "int8" kernels and embedding hold int8 codes with
    # per-output-channel float32 scales, and each matmul quantizes its input per row.
    quant: str = "none"  # none | int8

    def __post_init__(self):
        if self.family not in ("llama", "gemma3"):
            raise ValueError(f"family {self.family!r} is not supported (llama, gemma3)")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.global_layers and len(self.global_layers) != self.num_layers:
            raise ValueError(f"global_layers has {len(self.global_layers)} entries for {self.num_layers} layers")
        if not all(self.global_layers) and self.sliding_window is None:
            raise ValueError("sliding-window layers need `sliding_window`")
        if self.quant not in QUANT_MODES:
            raise ValueError(f"quant {self.quant!r} is not one of {', '.join(QUANT_MODES)}")

    @property
    def layer_is_global(self) -> tuple[bool, ...]:
        return self.global_layers or (True,) * self.num_layers

    def replace(self, **changes: Any) -> DecoderConfig:
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        attn = self.hidden_size * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        attn += self.head_dim * (self.num_heads + 2 * self.num_kv_heads) if self.qkv_bias else 0
        mlp = 3 * self.hidden_size * self.mlp_dim
        norms = self.hidden_size * (4 if self.sandwich_norms else 2) + (2 * self.head_dim if self.qk_norm else 0)
        embed = self.vocab_size * self.hidden_size * (1 if self.tie_embeddings else 2)
        return self.num_layers * (attn + mlp + norms) + embed + self.hidden_size

    @classmethod
    def from_hf(cls, hf: Any, **overrides: Any) -> DecoderConfig:
        """Maps a transformers config (Llama, Mistral, Qwen2, Qwen3, Gemma3Text or a Gemma3Config) to ours."""
        model_type = getattr(hf, "model_type", None)
        if model_type == "gemma3":  # multimodal wrapper: the decoder lives in text_config
            hf, model_type = hf.text_config, "gemma3_text"
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
        common = dict(
            vocab_size=hf.vocab_size,
            hidden_size=hf.hidden_size,
            num_layers=hf.num_hidden_layers,
            num_heads=hf.num_attention_heads,
            num_kv_heads=hf.num_key_value_heads or hf.num_attention_heads,
            head_dim=head_dim,
            mlp_dim=hf.intermediate_size,
            rms_eps=hf.rms_norm_eps,
            tie_embeddings=bool(hf.tie_word_embeddings),
        )
        if model_type in LLAMA_LAYOUT:
            if getattr(hf, "hidden_act", "silu") != "silu":
                raise ValueError(f"{model_type} hidden_act {hf.hidden_act!r} is not supported (silu)")
            if getattr(hf, "attention_bias", False) or getattr(hf, "mlp_bias", False):
                raise ValueError(f"{model_type} checkpoints with attention_bias / mlp_bias are not supported")
            n = hf.num_hidden_layers
            if model_type == "mistral":  # every layer slides when the config has a window (Mistral 7B v0.1)
                types = ["sliding_attention" if hf.sliding_window else "full_attention"] * n
            else:  # Qwen: layer_types derived from use_sliding_window / max_window_layers; Llama: none
                types = list(getattr(hf, "layer_types", None) or ["full_attention"] * n)
            unknown = sorted(set(types) - set(_LAYER_TYPES))
            if unknown:
                raise ValueError(f"{model_type} layer types {unknown} are not supported ({', '.join(_LAYER_TYPES)})")
            sliding = "sliding_attention" in types
            rope = RopeConfig.from_hf(hf.rope_parameters)
            cfg = cls(
                family="llama",
                activation="silu",
                rope=rope,
                local_rope=rope,
                sliding_window=hf.sliding_window if sliding else None,
                global_layers=tuple(t == "full_attention" for t in types) if sliding else (),
                query_scale=head_dim**-0.5,
                qk_norm=model_type == "qwen3",
                qkv_bias=model_type == "qwen2",
                **common,
            )
        else:
            types = list(hf.layer_types)
            rope_params = hf.rope_parameters
            cfg = cls(
                family="gemma3",
                activation="gelu_tanh",
                rope=RopeConfig.from_hf(rope_params["full_attention"]),
                local_rope=RopeConfig.from_hf(rope_params["sliding_attention"]),
                sliding_window=hf.sliding_window,
                global_layers=tuple(t == "full_attention" for t in types),
                query_scale=float(hf.query_pre_attn_scalar) ** -0.5,
                qk_norm=True,
                sandwich_norms=True,
                norm_plus_one=True,
                embed_scale=float(np.float32(math.sqrt(hf.hidden_size))),
                # No attn_logit_softcapping: Gemma 3 replaced it by query-key norms, and transformers' Gemma 3
                # ignores the field its config still carries.
                final_logit_softcap=hf.final_logit_softcapping,
                **common,
            )
        return cfg.replace(**overrides)
