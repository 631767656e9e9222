"""M_ELM = ((E_0 x E_A)^H, M_0): the decoder LLM with one adapter per embedding space (paper §2).

A prompt is token ids plus "soft slots": positions where an entity's name would stand receive adapter
outputs instead of token embeddings. Several spaces (e.g. semantic movie vectors, behavioral user vectors)
each have their own adapter; a prompt may hold several slots (pair tasks).

Batch layout (all arrays; built on the host by `elm_jax.data.prompts`):
  tokens      (B, T) int32   text tokens; values at soft positions are ignored
  soft_index  (B, T) int32   -1 for text, else s * k + j: soft token j of slot s (k tokens per slot)
  vectors     {space: (B, S, dim)}   the domain embeddings of each slot, zeros where unused
  slot_space  (B, S) int32   which space (index into `space_names`) fills each slot
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from elm_jax.models.adapter import Adapter, AdapterConfig, rescale_output, standardize_inputs
from elm_jax.models.decoder import Cache, Decoder
from elm_jax.models.decoder_config import DecoderConfig

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ELMConfig:
    decoder: DecoderConfig
    adapters: tuple[tuple[str, AdapterConfig], ...]  # (space name, config), sorted by name

    def __post_init__(self):
        if not self.adapters:
            raise ValueError("an ELM needs at least one adapter")
        names = [name for name, _ in self.adapters]
        if names != sorted(set(names)):
            raise ValueError(f"adapter spaces must be unique and sorted by name, got {names}")
        for name, cfg in self.adapters:
            if cfg.output_dim != self.decoder.hidden_size:
                raise ValueError(
                    f"adapter {name!r} outputs {cfg.output_dim} dims; the LLM needs {self.decoder.hidden_size}"
                )
        if len({cfg.num_tokens for _, cfg in self.adapters}) != 1:
            raise ValueError("all adapters must emit the same number of soft tokens per embedding")

    @property
    def space_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.adapters)

    @property
    def tokens_per_slot(self) -> int:
        return self.adapters[0][1].num_tokens


class ELM(nn.Module):
    config: ELMConfig

    def setup(self):
        self.llm = Decoder(self.config.decoder)
        self.adapters = {name: Adapter(cfg) for name, cfg in self.config.adapters}

    def soft_tokens(self, vectors: dict[str, Array], slot_space: Array) -> Array:
        """(B, S * k, D): each slot's vector through its own space's adapter."""
        b, s = slot_space.shape
        out = None
        for i, name in enumerate(self.config.space_names):
            tokens = self.adapters[name](vectors[name])  # (B, S, k, D)
            out = tokens if out is None else jnp.where((slot_space == i)[..., None, None], tokens, out)
        return out.reshape(b, s * self.config.tokens_per_slot, out.shape[-1])  # explicit: s may be 0

    def embed_inputs(self, tokens: Array, soft_index: Array, vectors: dict[str, Array], slot_space: Array) -> Array:
        """Input embeddings with adapter outputs at the soft positions (the paper's E_0 x E_A)."""
        text = self.llm.embed(tokens)
        soft = self.soft_tokens(vectors, slot_space).astype(text.dtype)
        picked = jnp.take_along_axis(soft, jnp.maximum(soft_index, 0)[..., None], axis=1)
        return jnp.where((soft_index >= 0)[..., None], picked, text)

    def __call__(
        self,
        tokens: Array,
        soft_index: Array,
        vectors: dict[str, Array],
        slot_space: Array,
        mask: Array | None = None,
        cache: Cache | None = None,
        return_hidden: bool = False,
    ) -> tuple[Array, Cache | None]:
        """Logits (B, T, vocab), or the final-norm hidden states with `return_hidden` (see `logits`)."""
        embeddings = self.embed_inputs(tokens, soft_index, vectors, slot_space)
        return self.llm(embeddings=embeddings, mask=mask, cache=cache, return_hidden=return_hidden)

    def logits(self, hidden: Array) -> Array:
        """The LM head on chosen hidden states, e.g. only where a loss is taken."""
        return self.llm.logits(hidden)


def token_embedding_norm(decoder_config: DecoderConfig, llm_params) -> float:
    """Mean L2 norm of the LLM's input token embeddings (E_0 outputs, Gemma's sqrt(d) scale included)."""
    norms = jnp.linalg.norm(llm_params["embedding"].astype(jnp.float32), axis=-1) * decoder_config.embed_scale
    return float(jnp.mean(norms))


def init_params(config: ELMConfig, llm_params, samples: dict[str, Array], rng: Array) -> dict:
    """Fresh adapters around pretrained LLM params, their outputs scaled like real token embeddings.

    `samples` holds the domain vectors of each space (or a representative sample): the adapter standardizes
    its inputs with their statistics, and its last layer is scaled so that their soft tokens have the mean
    norm of the LLM's token embeddings.
    """
    target = token_embedding_norm(config.decoder, llm_params)
    params = {"llm": llm_params}
    for i, (name, cfg) in enumerate(config.adapters):
        x = jnp.asarray(samples[name], jnp.float32)
        fresh = nn.unbox(Adapter(cfg).init(jax.random.fold_in(rng, i), x[:1])["params"])
        params[f"adapters_{name}"] = rescale_output(standardize_inputs(fresh, x), cfg, x, target)
    return params
