"""Text generation: one jitted prefill plus a `lax.while_loop` decode over a fixed-size KV cache.

The whole loop is a single compiled program (no Python per token, no recompilation per step). Prompts
are embeddings, so ELM soft tokens and ordinary text prompts go through the same path. Batches are
left-padded and padded to shape buckets so a long run compiles a handful of times.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from elm_jax.data.prompts import EncodedPrompt, Query, pad_prompts
from elm_jax.models.decoder import Decoder, separate_cache, separate_layers
from elm_jax.models.decoder_config import QUANT_MODES, DecoderConfig
from elm_jax.models.elm import ELM, ELMConfig
from elm_jax.models.quantize import quantized_params
from elm_jax.tokenizer import Tokenizer

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    # "int8": decode with int8 weights and activations (models/quantize.py), quantized inside each call; on the
    # 2-core VM SmolLM2 decoded 1.5x (batch 1) and 2x (batch 8) faster, at +0.005 nats per token.
    quant: str = "none"  # none | int8

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.quant not in QUANT_MODES:
            raise ValueError(f"quant must be one of {', '.join(QUANT_MODES)}, got {self.quant!r}")


def sample_token(logits: Array, rng: Array, sampling: SamplingConfig) -> Array:
    """(B, V) float32 logits -> (B,) int32 tokens: greedy, or temperature with top-k / top-p."""
    if sampling.temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / sampling.temperature
    if sampling.top_k:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sampling.top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
        keep = (cum - jax.nn.softmax(sorted_logits, axis=-1)) < sampling.top_p
        cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.cache
def _compiled_generate(config: DecoderConfig, sampling: SamplingConfig, stop_ids: tuple[int, ...], pad_id: int):
    if sampling.quant == "int8":
        if config.quant != "none":
            raise ValueError(f"sampling quant={sampling.quant!r} needs float params; the decoder is {config.quant}")
        config = config.replace(quant="int8")
    prefill_config = dataclasses.replace(config, remat_policy="none")
    decode_config = dataclasses.replace(config, scan_layers=False, remat_policy="none")
    model = Decoder(decode_config)
    n_new = sampling.max_new_tokens
    stops = jnp.asarray(stop_ids or (-1,), jnp.int32)

    def run(params, embeddings: Array, mask: Array, rng: Array) -> tuple[Array, Array]:
        b, t = mask.shape
        if sampling.quant == "int8":  # prefill and decode: one model for prompt and continuation
            params = quantized_params(params)
        # Prefill as the model is laid out (scanned: one layer to compile); decode as separate layers.
        hidden, cache = Decoder(prefill_config).apply(
            {"params": params}, embeddings, mask, t + n_new, method=Decoder.prefill
        )
        cache = separate_cache(config, cache)
        variables = {"params": separate_layers(config, params)}  # once per call, not per layer and step
        # Prompts are left-padded, so the last position is every row's last prompt token: the vocab-wide head
        # runs there only (on every position it is ~a fifth of SmolLM2's prefill FLOPs, for nothing).
        logits = model.apply(variables, hidden[:, -1], method=Decoder.logits)
        next_pos = jnp.sum(mask.astype(jnp.int32), axis=1)
        rng, key = jax.random.split(rng)
        first = sample_token(logits, key, sampling)
        tokens = jnp.full((b, n_new), pad_id, jnp.int32).at[:, 0].set(first)
        done = jnp.isin(first, stops) | ~jnp.any(mask, axis=1)  # rows that only pad a batch are never waited for

        def cond(state):
            step, _, done, *_ = state
            return (step < n_new) & ~jnp.all(done)

        def body(state):
            step, tokens, done, cache, pos, rng = state
            prev = tokens[:, step - 1]
            logits, cache = model.apply(variables, prev[:, None], positions=pos[:, None], cache=cache)
            rng, key = jax.random.split(rng)
            tok = jnp.where(done, pad_id, sample_token(logits[:, 0], key, sampling))
            tokens = tokens.at[:, step].set(tok)
            return step + 1, tokens, done | jnp.isin(tok, stops), cache, pos + 1, rng

        state = (jnp.int32(1), tokens, done, cache, next_pos, rng)
        _, tokens, *_ = jax.lax.while_loop(cond, body, state)
        # Length up to and including the first stop token.
        is_stop = jnp.isin(tokens, stops)
        lengths = jnp.where(is_stop.any(axis=1), jnp.argmax(is_stop, axis=1) + 1, n_new)
        return tokens, lengths

    return jax.jit(run)


def generate(
    model: Decoder,
    params,
    embeddings: Array,
    mask: Array,
    rng: Array,
    sampling: SamplingConfig,
    stop_ids: Sequence[int] = (),
    pad_id: int = 0,
) -> tuple[Array, Array]:
    """Continues left-padded prompt embeddings (B, T, D); returns tokens (B, N) and lengths (B,).

    Tokens after a row's first stop token are `pad_id`; `lengths` counts the stop token itself.

    Scanned layers decode as separate ones (`separate_layers`, once per call): slicing each layer's weights
    out of the stack at every step nearly doubled an H100's step time, and on this project's 2-core Intel Xeon
    VM SmolLM2 took 71 against 40 ms per step at batch 1 (80 against 73 at batch 8). The prompt is prefilled
    with the layers as the model has them (`Decoder.prefill`): scanned, only the decode loop is unrolled, and
    SmolLM2's programs there compile in 4-6 s against 7-8 s with an unrolled prefill. The price of separate layers
    is that compile time and a second copy of the layer weights during the call.
    """
    fn = _compiled_generate(model.config, sampling, tuple(int(s) for s in stop_ids), int(pad_id))
    return fn(params, embeddings, mask, rng)


@functools.cache
def _compiled_embed(config: DecoderConfig):
    model = Decoder(config)
    return jax.jit(lambda params, ids: model.apply({"params": params}, ids, method=Decoder.embed))


@functools.cache
def _compiled_elm_embed(config: ELMConfig):
    model = ELM(config)
    return jax.jit(lambda params, *batch: model.apply({"params": params}, *batch, method=ELM.embed_inputs))


def _completions(tokenizer: Tokenizer, tokens: Array, lengths: Array, rows: int) -> list[str]:
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    return [tokenizer.decode([t for t in tokens[r, : lengths[r]] if t not in tokenizer.stop_ids]) for r in range(rows)]


def generate_text(
    model: Decoder,
    params,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    sampling: SamplingConfig,
    *,
    chat: bool = False,
    seed: int = 0,
    batch_size: int = 8,
) -> list[str]:
    """Plain-text prompts -> completions (without the stop token), `batch_size` prompts per call."""
    _check_batch_size(batch_size)
    encoded = [tokenizer.encode(tokenizer.chat_prompt(p) if chat else p) for p in prompts]
    length = bucket(max(len(e) for e in encoded))
    rng = jax.random.key(seed)
    out: list[str] = []
    for start in range(0, len(encoded), batch_size):
        ids, mask = left_pad(encoded[start : start + batch_size], tokenizer.pad_id, length, rows=batch_size)
        embeddings = _compiled_embed(model.config)(params, ids)
        rng, key = jax.random.split(rng)
        tokens, lengths = generate(model, params, embeddings, mask, key, sampling, tokenizer.stop_ids, tokenizer.pad_id)
        out += _completions(tokenizer, tokens, lengths, min(batch_size, len(encoded) - start))
    return out


def generate_elm_text(
    model: ELM,
    params,
    tokenizer: Tokenizer,
    queries: Sequence[Query],
    sampling: SamplingConfig,
    *,
    seed: int = 0,
    batch_size: int = 8,
) -> list[str]:
    """Prompts with embedding slots -> completions: the ELM's answer about the given vectors."""
    _check_batch_size(batch_size)
    config = model.config
    length = bucket(max(len(q.prompt.tokens) for q in queries))
    n_slots = max(len(q.vectors) for q in queries)
    dims = {name: cfg.input_dim for name, cfg in config.adapters}
    decoder = Decoder(config.decoder)
    rng = jax.random.key(seed)
    out: list[str] = []
    for start in range(0, len(queries), batch_size):
        chunk = queries[start : start + batch_size]
        batch = pad_prompts([q.prompt for q in chunk], tokenizer.pad_id, length, rows=batch_size)
        vectors = {name: np.zeros((batch_size, n_slots, dim), np.float32) for name, dim in dims.items()}
        slot_space = np.zeros((batch_size, n_slots), np.int32)
        for row, q in enumerate(chunk):
            for slot, (space, vector) in enumerate(zip(q.spaces, q.vectors, strict=True)):
                if space not in dims:
                    raise ValueError(f"query {start + row} uses embedding space {space!r}; the ELM has {sorted(dims)}")
                vectors[space][row, slot] = vector
                slot_space[row, slot] = config.space_names.index(space)
        embeddings = _compiled_elm_embed(config)(params, batch["tokens"], batch["soft_index"], vectors, slot_space)
        rng, key = jax.random.split(rng)
        tokens, lengths = generate(
            decoder, params["llm"], embeddings, batch["mask"], key, sampling, tokenizer.stop_ids, tokenizer.pad_id
        )
        out += _completions(tokenizer, tokens, lengths, len(chunk))
    return out


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size (prompts per generate call) must be an int >= 1, got {batch_size!r}")


def bucket(n: int, minimum: int = 16) -> int:
    """Next power of two >= n (at least `minimum`): the shapes the sampler compiles for."""
    return max(minimum, 1 << max(0, (n - 1).bit_length()))


def left_pad(
    token_lists: Sequence[Sequence[int]], pad_id: int, length: int | None = None, rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads plain prompts to (rows, length) ids and a mask; extra rows are all padding."""
    length = length or bucket(max(len(t) for t in token_lists))
    for i, toks in enumerate(token_lists):
        if not toks:
            raise ValueError(f"prompt {i} has 0 tokens")
    batch = pad_prompts(
        [EncodedPrompt(list(t), [-1] * len(t), []) for t in token_lists], pad_id, length, rows or len(token_lists)
    )
    return batch["tokens"], batch["mask"]
