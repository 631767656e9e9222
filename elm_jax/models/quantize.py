"""Post-training int8 quantization of a decoder for inference: a quarter of the weight bytes a decode step reads.

Symmetric and per output channel: each layer kernel gets codes round(w / s) in [-127, 127] with s = max |w| over
its input axes / 127, stored under the kernel's name with the scales under `<name>_scale`; the embedding table
gets one scale per vocabulary row, which serves both the lookup and the tied head. At run time every matmul
quantizes its input per row and accumulates in int32 (`layers.int8_einsum`): the dynamic W8A8 scheme of
LLM.int8() without its outlier split (which that paper found decisive from ~6.7B parameters; on SmolLM2 the
per-row activation scales are still most of the error, benchmarks/README.md). Norms, biases and the KV cache
stay in float.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import traverse_util

from elm_jax.lora import PREFIX as LORA_PREFIX
from elm_jax.models.decoder_config import DecoderConfig
from elm_jax.models.layers import KERNEL_LAYOUT, symmetric_int8

_SEP = "/"


def quantize_int8(config: DecoderConfig, params: dict) -> tuple[DecoderConfig, dict]:
    """(config, float params) -> (the config with quant="int8", int8 params for `Decoder` to apply)."""
    if config.quant != "none":
        raise ValueError(f"the decoder is already quantized (quant={config.quant!r})")
    if LORA_PREFIX in params:
        raise ValueError("fold the LoRA factors into the kernels first (elm_jax.lora.apply_lora)")
    return config.replace(quant="int8"), quantized_params(params)


@jax.jit
def quantized_params(params: dict) -> dict:
    """Float decoder params -> int8 codes and scales (what `quantize_int8` returns with the config)."""
    out = {}
    for path, w in traverse_util.flatten_dict(params, sep=_SEP).items():
        name = path.rsplit(_SEP, 1)[-1]
        if name in KERNEL_LAYOUT:
            ndim, n_in = KERNEL_LAYOUT[name]
            lead = w.ndim - ndim  # the scanned `layers` axis, if any
            input_axes = tuple(range(lead, lead + n_in))
        elif path == "embedding":  # (vocab, embed): one scale per token's row
            input_axes = (1,)
        elif path == "lm_head":  # (embed, vocab)
            input_axes = (0,)
        else:
            out[path] = w
            continue
        out[path], out[f"{path}_scale"] = _codes_and_scales(w, input_axes)
    return traverse_util.unflatten_dict(out, sep=_SEP)


def _codes_and_scales(w: jax.Array, input_axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    codes, scale = symmetric_int8(w, input_axes)
    return codes, jnp.squeeze(scale, input_axes)
