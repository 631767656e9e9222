"""Hugging Face checkpoint folders (config.json + *.safetensors) <-> decoder config and params.

This is the one canonical on-disk format: GGUF files are converted into such a folder once
(`elm_jax.weights.gguf`). Tensors are memory-mapped and each device's shard is cut on the host
and placed straight on that device, so a model never has to fit on a single device. `save_params` writes
params back in the same layout (what transformers reads), shard file by shard file.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from elm_jax.io_utils import atomic_dir
from elm_jax.models.decoder import abstract_params
from elm_jax.models.decoder_config import DecoderConfig
from elm_jax.sharding import to_host

_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"


def load_config(ckpt_dir: str | os.PathLike, **overrides: Any) -> DecoderConfig:
    """DecoderConfig from `config.json` (parsed by transformers, so HF defaults apply)."""
    import transformers  # deferred: importing transformers costs ~1 s

    path = pathlib.Path(ckpt_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in checkpoint folder {ckpt_dir}")
    try:
        hf = transformers.AutoConfig.from_pretrained(str(ckpt_dir))
    except (ValueError, KeyError) as e:
        raise ValueError(f"{path}: cannot parse the model config: {e}") from e
    return DecoderConfig.from_hf(hf, **overrides)


class SafetensorsFolder:
    """Name -> numpy array over one or several (index.json) memory-mapped safetensors files."""

    def __init__(self, ckpt_dir: str | os.PathLike):
        self.dir = pathlib.Path(ckpt_dir)
        if (self.dir / _INDEX).is_file():
            weight_map = _read_weight_map(self.dir / _INDEX)
        elif (self.dir / _SINGLE).is_file():
            weight_map = None
        else:
            raise FileNotFoundError(f"no {_SINGLE} or {_INDEX} in checkpoint folder {self.dir}")
        self._files: dict[str, Any] = {}
        if weight_map is None:
            handle = self._open(_SINGLE)
            self.file_of = {name: _SINGLE for name in handle.keys()}
        else:
            self.file_of = dict(weight_map)

    def _open(self, filename: str):
        if filename not in self._files:
            path = self.dir / filename
            if not path.is_file():
                raise FileNotFoundError(f"checkpoint shard {path} is missing (listed in {_INDEX})")
            try:
                self._files[filename] = safe_open(str(path), framework="numpy")
            except SafetensorError as e:
                raise ValueError(f"{path}: not a readable safetensors file: {e}") from None
        return self._files[filename]

    def __contains__(self, name: str) -> bool:
        return name in self.file_of

    def get(self, name: str) -> np.ndarray:
        if name not in self.file_of:
            raise KeyError(f"tensor {name!r} is not in the checkpoint at {self.dir}")
        try:
            return self._open(self.file_of[name]).get_tensor(name)
        except SafetensorError as e:
            raise ValueError(f"{self.dir / self.file_of[name]} (tensor {name!r}, from {_INDEX}): {e}") from None


def _read_weight_map(index: pathlib.Path) -> dict[str, str]:
    """The index's tensor -> shard file map; shard files must lie in the checkpoint folder itself."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{index}: not a safetensors index with a weight_map ({type(e).__name__}: {e})") from None
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index}: weight_map is not an object of tensor name -> shard file")
    for name, filename in weight_map.items():
        if not isinstance(filename, str) or pathlib.PurePath(filename).name != filename or filename in ("", ".", ".."):
            raise ValueError(f"{index}: tensor {name!r} points to {filename!r}; shards must be files in this folder")
    return weight_map


def _hf_layer_names(config: DecoderConfig) -> dict[tuple[str, ...], tuple[str, Callable]]:
    """Our per-layer param path -> (HF name under `layers.{i}.`, HF->ours layout transform)."""
    d, h, kvh, hd = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
    t = lambda w: w.T
    names = {
        ("attn", "q_kernel"): ("self_attn.q_proj.weight", lambda w: w.T.reshape(d, h, hd)),
        ("attn", "k_kernel"): ("self_attn.k_proj.weight", lambda w: w.T.reshape(d, kvh, hd)),
        ("attn", "v_kernel"): ("self_attn.v_proj.weight", lambda w: w.T.reshape(d, kvh, hd)),
        ("attn", "o_kernel"): ("self_attn.o_proj.weight", lambda w: w.T.reshape(h, hd, d)),
        ("mlp", "gate_kernel"): ("mlp.gate_proj.weight", t),
        ("mlp", "up_kernel"): ("mlp.up_proj.weight", t),
        ("mlp", "down_kernel"): ("mlp.down_proj.weight", t),
        ("attn_norm", "scale"): ("input_layernorm.weight", None),
    }
    if config.family == "llama":
        names[("mlp_norm", "scale")] = ("post_attention_layernorm.weight", None)
    else:
        names[("mlp_norm", "scale")] = ("pre_feedforward_layernorm.weight", None)
        names[("post_attn_norm", "scale")] = ("post_attention_layernorm.weight", None)
        names[("post_mlp_norm", "scale")] = ("post_feedforward_layernorm.weight", None)
    if config.qk_norm:
        names[("attn", "q_norm", "scale")] = ("self_attn.q_norm.weight", None)
        names[("attn", "k_norm", "scale")] = ("self_attn.k_norm.weight", None)
    if config.qkv_bias:
        names[("attn", "q_bias")] = ("self_attn.q_proj.bias", lambda w: w.reshape(h, hd))
        names[("attn", "k_bias")] = ("self_attn.k_proj.bias", lambda w: w.reshape(kvh, hd))
        names[("attn", "v_bias")] = ("self_attn.v_proj.bias", lambda w: w.reshape(kvh, hd))
    return names


def _prefix(folder: SafetensorsFolder) -> str:
    """'model.' for plain decoders; multimodal checkpoints nest the decoder deeper."""
    for name in folder.file_of:
        if name.endswith("embed_tokens.weight"):
            return name[: -len("embed_tokens.weight")]
    raise ValueError(f"checkpoint at {folder.dir} has no '*embed_tokens.weight' tensor: not a decoder LLM")


def _head_name(folder: SafetensorsFolder, prefix: str) -> str:
    outer = prefix[: -len("model.")] if prefix.endswith("model.") else ""
    for name in (outer + "lm_head.weight", "lm_head.weight"):
        if name in folder:
            return name
    raise ValueError(f"checkpoint at {folder.dir} has untied embeddings but no lm_head.weight")


def load_params(ckpt_dir: str | os.PathLike, config: DecoderConfig, shardings: Any = None) -> dict:
    """Params tree for `Decoder(config)`, each leaf placed on `shardings` (default: this process's first device).

    Raises ValueError naming the tensor when a shape disagrees with the config.
    """
    folder = SafetensorsFolder(ckpt_dir)
    prefix = _prefix(folder)
    abstract = nn.unbox(abstract_params(config))
    dtype = np.dtype(config.param_dtype) if config.param_dtype != "bfloat16" else jax.numpy.bfloat16
    layer_names = _hf_layer_names(config)

    def read(name: str, transform: Callable | None, expected: tuple[int, ...]) -> np.ndarray:
        w = folder.get(name)
        try:
            ours = transform(w) if transform is not None else w
        except ValueError:  # a reshape that cannot hold: the checkpoint disagrees with config.json
            ours = None
        if ours is None or tuple(ours.shape) != tuple(expected):
            raise ValueError(
                f"{folder.dir}: tensor {name} has shape {tuple(w.shape)}, which does not fit "
                f"the config (expected {tuple(expected)} in elm_jax layout)"
            )
        return ours.astype(dtype)

    def place(shape, sharding, fetch: Callable[[tuple], np.ndarray]) -> jax.Array:
        sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.make_array_from_callback(tuple(shape), sharding, fetch)

    def top(name: str, transform: Callable | None, leaf, sharding) -> jax.Array:
        return place(leaf.shape, sharding, lambda idx: read(name, transform, leaf.shape)[idx])

    def stacked(hf_suffix: str, transform, leaf, sharding) -> jax.Array:
        def fetch(idx):
            layers = range(config.num_layers)[idx[0]]
            return np.stack(
                [read(f"{prefix}layers.{i}.{hf_suffix}", transform, leaf.shape[1:])[idx[1:]] for i in layers]
            )

        return place(leaf.shape, sharding, fetch)

    get_sharding = lambda path: _lookup(shardings, path) if shardings is not None else None
    params: dict[str, Any] = {
        "embedding": top(prefix + "embed_tokens.weight", None, abstract["embedding"], get_sharding(("embedding",))),
        "final_norm": {
            "scale": top(
                prefix + "norm.weight", None, abstract["final_norm"]["scale"], get_sharding(("final_norm", "scale"))
            )
        },
    }
    if not config.tie_embeddings:
        params["lm_head"] = top(
            _head_name(folder, prefix), lambda w: w.T, abstract["lm_head"], get_sharding(("lm_head",))
        )
    for path, (hf_suffix, transform) in layer_names.items():
        if config.scan_layers:
            leaf = _lookup(abstract["layers"], path)
            _assign(params, ("layers",) + path, stacked(hf_suffix, transform, leaf, get_sharding(("layers",) + path)))
        else:
            for i in range(config.num_layers):
                name = f"layers_{i}"
                leaf = _lookup(abstract[name], path)
                value = top(f"{prefix}layers.{i}.{hf_suffix}", transform, leaf, get_sharding((name,) + path))
                _assign(params, (name,) + path, value)
    return params


# Files of a checkpoint folder that hold weights; everything else (config, tokenizer, chat template) is copied.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt")


def _to_hf(ours: np.ndarray, path: tuple[str, ...]) -> np.ndarray:
    """Inverse of the loader's layout transforms (`_hf_layer_names`)."""
    name = path[-1]
    if name in ("q_kernel", "k_kernel", "v_kernel"):  # (d, heads, head_dim) -> (heads * head_dim, d)
        return ours.reshape(ours.shape[0], -1).T
    if name == "o_kernel":  # (heads, head_dim, d) -> (d, heads * head_dim)
        return ours.reshape(-1, ours.shape[-1]).T
    if name.endswith("kernel") or name == "lm_head":
        return ours.T
    if name.endswith("bias"):  # (heads, head_dim) -> (heads * head_dim,)
        return ours.reshape(-1)
    return ours


def _hf_tensors(config: DecoderConfig) -> dict[str, tuple[tuple[str, ...], int | None]]:
    """HF tensor name -> (our param path, layer index into a scanned stack or None), in checkpoint order."""
    out = {"model.embed_tokens.weight": (("embedding",), None)}
    for i in range(config.num_layers):
        for path, (hf_suffix, _) in _hf_layer_names(config).items():
            ours = (("layers",) + path, i) if config.scan_layers else ((f"layers_{i}",) + path, None)
            out[f"model.layers.{i}.{hf_suffix}"] = ours
    out["model.norm.weight"] = (("final_norm", "scale"), None)
    if not config.tie_embeddings:
        out["lm_head.weight"] = (("lm_head",), None)
    return out


def _host_value(x: jax.Array, layer: int | None) -> np.ndarray:
    """One (layer of a) param as float32 numpy on this host, gathered from other hosts' shards if need be."""
    return to_host(_layer_of(x, layer) if layer is not None else x)  # jitted slice: the stack may span hosts


@jax.jit
def _layer_of(stack: jax.Array, layer: int) -> jax.Array:
    return stack[layer]


def save_params(
    out_dir: str | os.PathLike,
    params: dict,
    config: DecoderConfig,
    source_dir: str | os.PathLike,
    *,
    max_shard_bytes: int = 4 * 2**30,
) -> pathlib.Path:
    """Writes `params` of `Decoder(config)` as a Hugging Face folder: float32 safetensors (an index and shards
    above `max_shard_bytes`) beside the config, tokenizer and chat template copied from `source_dir`, the folder
    the model was loaded from. The folder appears whole or not at all; one process writes, all take part."""
    source = pathlib.Path(source_dir)
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in {source}, the folder the model was loaded from")
    names = _hf_tensors(config)
    sizes = {}
    for name, (path, layer) in names.items():
        shape = _lookup(params, path).shape
        sizes[name] = 4 * int(np.prod(shape[1:] if layer is not None else shape))
    shards: list[list[str]] = [[]]
    filled = 0
    for name in names:
        if shards[-1] and filled + sizes[name] > max_shard_bytes:
            shards.append([])
            filled = 0
        shards[-1].append(name)
        filled += sizes[name]
    files = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
    )
    primary = jax.process_index() == 0
    with atomic_dir(out_dir) if primary else contextlib.nullcontext() as tmp:
        for file, shard in zip(files, shards):
            tensors = {n: _host_value(_lookup(params, names[n][0]), names[n][1]) for n in shard}
            tensors = {n: np.ascontiguousarray(_to_hf(w, names[n][0])) for n, w in tensors.items()}
            if primary:
                save_file(tensors, str(tmp / file), metadata={"format": "pt"})
        if primary:
            if len(shards) > 1:
                index = {
                    "metadata": {"total_size": sum(sizes.values())},
                    "weight_map": {n: f for f, shard in zip(files, shards) for n in shard},
                }
                (tmp / _INDEX).write_text(json.dumps(index, indent=2) + "\n")
            for f in sorted(source.iterdir()):
                if f.is_file() and not f.name.endswith(_WEIGHT_SUFFIXES) and f.name != _INDEX:
                    shutil.copy2(f, tmp / f.name)
            (tmp / "config.json").write_text(json.dumps(_decoder_only(tmp / "config.json"), indent=2) + "\n")
    return pathlib.Path(out_dir)


def _decoder_only(config_path: pathlib.Path) -> dict:
    """The source's config.json for the exported decoder: float32, and a multimodal Gemma 3's text part alone
    (the export holds only its decoder, under the plain `model.` prefix)."""
    hf_config = json.loads(config_path.read_text())
    if "text_config" in hf_config:
        hf_config = {**hf_config["text_config"], "model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"]}
    for key in ("torch_dtype", "dtype"):
        hf_config[key] = "float32"
    return hf_config


def _lookup(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _assign(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value
