"""GGUF (llama.cpp) files -> a Hugging Face checkpoint folder, converted once and cached.

GGUF parsing is slow (Gemma's 262k-token vocab takes ~12 s) and its layouts differ from Hugging
Face's in ways that silently ruin quality, so we undo them here, once, and from then on load the
folder like any user-supplied checkpoint:

* llama.cpp permutes the rows of Llama's Q/K projections for interleaved RoPE; we un-permute them
  (Gemma is not permuted).
* Gemma norm weights are stored as (1 + w); Hugging Face stores w.
* Gemma 3 GGUFs omit the sliding-window layer pattern and the local RoPE base. Like llama.cpp we
  assume every 6th layer is global and the local base is 10000, and that query_pre_attn_scalar
  equals head_dim (true for Gemma 3 270M/1B/4B/12B; 27B, known by its 62 layers, uses hidden_size / heads).
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import tempfile
from typing import Any

import numpy as np

from elm_jax.io_utils import make_shared

_LAYER = re.compile(r"blk\.(\d+)\.(.+)\.weight$")
_COMMON = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_PER_ARCH = {
    "llama": {**_COMMON, "ffn_norm": "post_attention_layernorm"},
    "gemma3": {
        **_COMMON,
        "ffn_norm": "pre_feedforward_layernorm",
        "post_attention_norm": "post_attention_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
        "attn_q_norm": "self_attn.q_norm",
        "attn_k_norm": "self_attn.k_norm",
    },
}
GEMMA3_SLIDING_PATTERN = 6
GEMMA3_LOCAL_ROPE_THETA = 10000.0


def _unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's row permutation (interleaved-pair RoPE -> rotate-half RoPE)."""
    out, inp = w.shape
    return w.reshape(n_heads, out // n_heads // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def _field(reader: Any, key: str, path: str, default: Any = ...) -> Any:
    if key in reader.fields:
        return reader.fields[key].contents()
    if default is ...:
        raise ValueError(f"{path}: GGUF metadata field {key!r} is missing")
    return default


def _hf_config(reader: Any, path: str, vocab_size: int, tied: bool) -> Any:
    import transformers

    arch = _field(reader, "general.architecture", path)
    get = lambda key, default=...: _field(reader, f"{arch}.{key}", path, default)
    n_layers, n_heads, d = get("block_count"), get("attention.head_count"), get("embedding_length")
    head_dim = get("attention.key_length", d // n_heads)
    scaling = get("rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise ValueError(f"{path}: rope scaling {scaling!r} from GGUF is not supported; convert from the HF checkpoint")
    rope = {"rope_type": "default", "rope_theta": float(get("rope.freq_base", 10000.0))}
    if scaling == "linear":
        rope.update(rope_type="linear", factor=float(get("rope.scaling.factor")))
    common = dict(
        vocab_size=vocab_size,
        hidden_size=d,
        intermediate_size=get("feed_forward_length"),
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=get("attention.head_count_kv", n_heads),
        head_dim=head_dim,
        rms_norm_eps=float(f"{get('attention.layer_norm_rms_epsilon'):.6g}"),  # stored as float32
        max_position_embeddings=get("context_length"),
        tie_word_embeddings=tied,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id", path, None),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id", path, None),
        pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id", path, None),
    )
    if arch == "llama":
        return transformers.LlamaConfig(rope_parameters=rope, **common)
    layer_types = [
        "full_attention" if (i + 1) % GEMMA3_SLIDING_PATTERN == 0 else "sliding_attention" for i in range(n_layers)
    ]
    return transformers.Gemma3TextConfig(
        layer_types=layer_types,
        sliding_window=get("attention.sliding_window"),
        rope_parameters={
            "full_attention": rope,
            "sliding_attention": {"rope_type": "default", "rope_theta": GEMMA3_LOCAL_ROPE_THETA},
        },
        # GGUF does not store it: head_dim for every Gemma 3 but 27B (62 layers), which scales by
        # hidden_size / heads; llama.cpp tells them apart by the layer count too.
        query_pre_attn_scalar=d // n_heads if n_layers == 62 else head_dim,
        hidden_activation="gelu_pytorch_tanh",
        **common,
    )


def gguf_to_hf_tensors(reader: Any, path: str) -> dict[str, np.ndarray]:
    """Dequantized float32 tensors under Hugging Face names and layouts."""
    from gguf.quants import dequantize

    arch = _field(reader, "general.architecture", path)
    names = _PER_ARCH[arch]
    n_heads = _field(reader, f"{arch}.attention.head_count", path)
    n_kv = _field(reader, f"{arch}.attention.head_count_kv", path, n_heads)
    out: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        w = np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        if t.name == "token_embd.weight":
            out["model.embed_tokens.weight"] = w
        elif t.name == "output_norm.weight":
            out["model.norm.weight"] = w - 1.0 if arch == "gemma3" else w
        elif t.name == "output.weight":
            out["lm_head.weight"] = w
        elif (m := _LAYER.match(t.name)) and m.group(2) in names:
            i, kind = m.group(1), m.group(2)
            if arch == "llama" and kind in ("attn_q", "attn_k"):
                w = _unpermute_qk(w, n_heads if kind == "attn_q" else n_kv)
            if arch == "gemma3" and kind.endswith("norm"):
                w = w - 1.0
            out[f"model.layers.{i}.{names[kind]}.weight"] = w
        else:
            raise ValueError(f"{path}: tensor {t.name!r} is not supported for architecture {arch!r}")
    return out


def _check_complete(tensors: dict[str, np.ndarray], arch: str, n_layers: int, path: str) -> None:
    """Every tensor the config will promise is there (a truncated or partial file converts "fine" otherwise)."""
    expected = ["model.embed_tokens.weight", "model.norm.weight"]
    expected += [f"model.layers.{i}.{name}.weight" for i in range(n_layers) for name in _PER_ARCH[arch].values()]
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise ValueError(f"{path}: {len(missing)} tensor(s) missing for {n_layers} {arch} layers, first {missing[0]!r}")


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> pathlib.Path:
    """Writes config.json, model.safetensors and tokenizer files; atomic (all or nothing)."""
    import gguf
    from safetensors.numpy import save_file

    from elm_jax.weights.gguf_tokenizer import save_gguf_tokenizer

    gguf_path, out_dir = pathlib.Path(gguf_path), pathlib.Path(out_dir)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file {gguf_path} does not exist")
    try:
        reader = gguf.GGUFReader(str(gguf_path))
    except (ValueError, OSError) as e:
        raise ValueError(f"{gguf_path}: not a readable GGUF file: {e}") from e
    arch = _field(reader, "general.architecture", str(gguf_path))
    if arch not in _PER_ARCH:
        raise ValueError(f"{gguf_path}: architecture {arch!r} is not supported ({', '.join(_PER_ARCH)})")
    parts = _field(reader, "split.count", str(gguf_path), 1)
    if parts > 1:
        raise ValueError(
            f"{gguf_path}: one of {parts} parts of a split GGUF; merge them into one file first "
            "(llama.cpp: llama-gguf-split --merge FIRST_PART OUT.gguf)"
        )
    tensors = gguf_to_hf_tensors(reader, str(gguf_path))
    _check_complete(tensors, arch, _field(reader, f"{arch}.block_count", str(gguf_path)), str(gguf_path))
    config = _hf_config(
        reader,
        str(gguf_path),
        vocab_size=tensors["model.embed_tokens.weight"].shape[0],
        tied="lm_head.weight" not in tensors,
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        config.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt", "source": gguf_path.name})
        save_gguf_tokenizer(reader, tmp)
        make_shared(tmp)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if not (out_dir / "config.json").is_file():
                raise
            shutil.rmtree(tmp)  # another process finished first; keep its copy
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
