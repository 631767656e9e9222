"""Texts -> sentence embeddings with a BERT sentence-transformer (e.g. all-MiniLM-L6-v2) in JAX.

ELM needs an embedding for every entity and text it trains or evaluates on; this computes them on the
LLM's devices without torch. Texts are tokenised in one call, sorted by length so batches hold similar
lengths, and padded to (fixed rows, bucketed length) shapes: a whole evaluation compiles the forward pass
once per length bucket, not once per batch.

Length buckets are powers of two and 1.5x powers of two (16, 24, 32, 48, ...): against powers of two alone
they cut padded tokens by 18% on benchmarks/encoder.py's sentences for at most twice the compilations.
On CPU each batch runs as a loop over sub-batches of ~512 tokens inside the compiled program: XLA:CPU is
~1.4x slower per token once a call's activations outgrow the caches (64 x 128 tokens of MiniLM).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from elm_jax import sharding as shd
from elm_jax.generate import bucket
from elm_jax.models.text_encoder import EncoderConfig, TextEncoderModel, abstract_params
from elm_jax.weights import sentence_encoder as st

_CPU_CHUNK_TOKENS = 512


def length_bucket(n: int, max_len: int) -> int:
    """Padded length for a batch whose longest text has n tokens: 16, 24, 32, 48, 64, 96, ... capped at max_len."""
    power = bucket(n)
    return min(power * 3 // 4 if power >= 32 and n <= power * 3 // 4 else power, max_len)


def _chunk_rows(rows: int, length: int, chunk_tokens: int) -> int:
    """Largest divisor of `rows` with at most `chunk_tokens` tokens (at least 1 row)."""
    chunk = max(1, min(rows, chunk_tokens // length))
    while rows % chunk:
        chunk -= 1
    return chunk


def _compile_forward(model: TextEncoderModel, chunk_tokens: int | None):
    """jit of (params, ids, mask) -> embeddings; with chunk_tokens, a lax.map over row chunks of that size."""

    def forward(params, ids, mask):
        rows, length = ids.shape
        chunk = rows if chunk_tokens is None else _chunk_rows(rows, length, chunk_tokens)
        if chunk == rows:
            return model.apply({"params": params}, ids, mask)
        split = lambda a: a.reshape(rows // chunk, chunk, length)
        out = jax.lax.map(lambda xs: model.apply({"params": params}, *xs), (split(ids), split(mask)))
        return out.reshape(rows, -1)

    return jax.jit(forward)


class TextEncoder:
    """A loaded sentence encoder: `encode(texts)` -> (N, D) float32, matching sentence-transformers."""

    def __init__(
        self,
        config: EncoderConfig,
        params: Any,
        tokenizer: Any,
        *,
        lowercase: bool = False,
        mesh: jax.sharding.Mesh | None = None,
        path: pathlib.Path | None = None,
    ) -> None:
        """`tokenizer`: a transformers fast tokenizer; its own padding/truncation settings are replaced."""
        self.config = config
        self.params = params
        self.mesh = mesh
        self.path = path
        self._lowercase = lowercase
        self._tokenizer = tokenizer.backend_tokenizer
        # tokenizer.json files often pin padding/truncation (MiniLM's: fixed 128); sentence-transformers
        # truncates at max_seq_length and pads per batch, which `encode` does itself.
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(config.max_seq_length)
        self._pad_id = tokenizer.pad_token_id or 0
        # Sub-batching only helps CPU caches; on a mesh the rows are already split across devices.
        chunk_tokens = _CPU_CHUNK_TOKENS if mesh is None and jax.default_backend() == "cpu" else None
        self._forward = _compile_forward(TextEncoderModel(config), chunk_tokens)

    @classmethod
    def from_pretrained(
        cls, spec: str | os.PathLike, mesh: jax.sharding.Mesh | None = None, **overrides: Any
    ) -> TextEncoder:
        """A name from `elm_jax.weights.sentence_encoder.ENCODERS` (e.g. "all-minilm-l6-v2") or a folder.

        With a mesh, params are sharded by their logical axes and batches over the mesh's batch axes.
        `overrides` set EncoderConfig fields such as dtype.
        """
        folder = st.resolve_encoder(spec)
        info = st.read_encoder_folder(folder, **overrides)
        shardings = shd.logical_shardings(abstract_params(info.config), mesh) if mesh is not None else None
        params = st.load_encoder_params(info.model_dir, info.config, shardings)
        return cls(info.config, params, info.tokenizer, lowercase=info.lowercase, mesh=mesh, path=folder)

    @property
    def dim(self) -> int:
        return self.config.hidden_size

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids with specials, truncated to max_seq_length (as sentence-transformers tokenises)."""
        texts = [t.lower() for t in texts] if self._lowercase else list(texts)
        return [e.ids for e in self._tokenizer.encode_batch(texts)]

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """(N, D) float32 embeddings in input order; rows are unit vectors when the model normalises (MiniLM).

        Every batch has the same number of rows (`batch_size`, or fewer when N is smaller, rounded up to the
        mesh's batch divisor) and a bucketed length (`length_bucket`).
        """
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts, not a single string")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        ids = self.tokenize(texts)
        lengths = np.array([len(t) for t in ids])
        order = np.argsort(-lengths, kind="stable")  # longest first, as sentence-transformers does
        divisor = shd.batch_divisor(self.mesh) if self.mesh is not None else 1
        rows = -(-min(batch_size, bucket(len(ids), minimum=1)) // divisor) * divisor
        placement = shd.batch_sharding(self.mesh, 2) if self.mesh is not None else None
        outputs = []
        for start in range(0, len(ids), rows):
            members = order[start : start + rows]
            length = length_bucket(int(lengths[members].max()), self.config.max_seq_length)
            batch = np.full((rows, length), self._pad_id, np.int32)
            mask = np.zeros((rows, length), np.int32)
            for row, i in enumerate(members):
                batch[row, : lengths[i]] = ids[i]
                mask[row, : lengths[i]] = 1
            batch_dev, mask_dev = (jax.device_put(a, placement) if placement else jnp.asarray(a) for a in (batch, mask))
            outputs.append((len(members), self._forward(self.params, batch_dev, mask_dev)))  # async: overlaps the host
        sorted_out = np.concatenate([np.asarray(out)[:n] for n, out in outputs])
        result = np.empty_like(sorted_out)
        result[order] = sorted_out
        return result
