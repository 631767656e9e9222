"""The ELM: adapter outputs land exactly at the soft positions, per space; ELM generation; adapter scaling."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from elm_jax import generate as gen
from elm_jax.data.prompts import Query, encode_prompt
from elm_jax.models.adapter import Adapter, AdapterConfig, rescale_output, standardize_inputs
from elm_jax.models.decoder import Decoder
from elm_jax.models.decoder_config import DecoderConfig
from elm_jax.models.elm import ELM, ELMConfig
from elm_jax.tokenizer import Tokenizer
from elm_jax.weights import hf
from tests import fixtures


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = fixtures.write_hf_checkpoint(tmp_path_factory.mktemp("llm"), "llama", seed=4)
    decoder_config = hf.load_config(path)
    adapters = (
        ("behavioral", AdapterConfig(3, 32, 16, num_tokens=2)),
        ("semantic", AdapterConfig(5, 32, 16, num_tokens=2)),
    )
    model = ELM(ELMConfig(decoder_config, adapters))
    batch = _batch()
    params = nn.unbox(model.init(jax.random.key(0), *batch)["params"])
    params["llm"] = hf.load_params(path, decoder_config)
    return model, params, Tokenizer.from_dir(path)


def _batch():
    tokens = jnp.array([[7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 18]], jnp.int32)
    soft_index = jnp.array([[-1, 0, 1, -1, 2, 3], [-1, -1, 0, 1, -1, -1]], jnp.int32)
    rng = np.random.default_rng(0)
    vectors = {
        "behavioral": jnp.asarray(rng.standard_normal((2, 2, 3)), jnp.float32),
        "semantic": jnp.asarray(rng.standard_normal((2, 2, 5)), jnp.float32),
    }
    slot_space = jnp.array([[1, 0], [0, 0]], jnp.int32)  # row 0: semantic then behavioral slot
    return tokens, soft_index, vectors, slot_space


def test_soft_positions_receive_their_slots_adapter_output(tiny):
    model, params, _ = tiny
    tokens, soft_index, vectors, slot_space = _batch()
    emb = model.apply({"params": params}, tokens, soft_index, vectors, slot_space, method=ELM.embed_inputs)
    text = Decoder(model.config.decoder).apply({"params": params["llm"]}, tokens, method=Decoder.embed)
    adapt = {
        name: Adapter(cfg).apply({"params": params[f"adapters_{name}"]}, vectors[name])
        for name, cfg in model.config.adapters
    }
    np.testing.assert_allclose(emb[0, 1:3], adapt["semantic"][0, 0], atol=1e-6)  # slot 0 of row 0: semantic
    np.testing.assert_allclose(emb[0, 4:6], adapt["behavioral"][0, 1], atol=1e-6)  # slot 1 of row 0: behavioral
    np.testing.assert_allclose(emb[1, 2:4], adapt["behavioral"][1, 0], atol=1e-6)
    text_mask = np.asarray(soft_index) < 0
    np.testing.assert_array_equal(np.asarray(emb)[text_mask], np.asarray(text)[text_mask])


def test_a_batch_without_slots_is_plain_text(tiny):
    model, params, _ = tiny
    tokens = _batch()[0]
    vectors = {"behavioral": jnp.zeros((2, 0, 3)), "semantic": jnp.zeros((2, 0, 5))}
    emb = model.apply(
        {"params": params},
        tokens,
        jnp.full(tokens.shape, -1),
        vectors,
        jnp.zeros((2, 0), jnp.int32),
        method=ELM.embed_inputs,
    )
    text = Decoder(model.config.decoder).apply({"params": params["llm"]}, tokens, method=Decoder.embed)
    np.testing.assert_array_equal(np.asarray(emb), np.asarray(text))


def test_only_adapters_see_the_vectors(tiny):
    model, params, _ = tiny
    tokens, soft_index, vectors, slot_space = _batch()
    logits, _ = model.apply({"params": params}, tokens, soft_index, vectors, slot_space)
    shifted = {k: v + 1.0 for k, v in vectors.items()}
    logits2, _ = model.apply({"params": params}, tokens, soft_index, shifted, slot_space)
    assert not np.allclose(logits[:, 1:], logits2[:, 1:])
    np.testing.assert_array_equal(logits[:, 0], logits2[:, 0])  # causal: before any slot nothing changes


def test_generate_elm_text_equals_generation_from_assembled_embeddings(tiny):
    model, params, tokenizer = tiny
    prompt = encode_prompt(tokenizer, "The cat sat on {movie}.", tokens_per_slot=2)
    rng = np.random.default_rng(1)
    queries = [Query(prompt, (rng.standard_normal(5).astype(np.float32),), ("semantic",)) for _ in range(3)]
    sampling = gen.SamplingConfig(max_new_tokens=6)
    texts = gen.generate_elm_text(model, params, tokenizer, queries, sampling, batch_size=2)
    assert len(texts) == 3
    # The same, assembled by hand for query 2 alone.
    length = gen.bucket(len(prompt.tokens))
    tokens, mask = gen.left_pad([prompt.tokens], tokenizer.pad_id, length, rows=2)
    soft = np.full((2, length), -1, np.int32)
    soft[0, length - len(prompt.tokens) :] = prompt.soft_index
    vectors = {"semantic": np.zeros((2, 1, 5), np.float32), "behavioral": np.zeros((2, 1, 3), np.float32)}
    vectors["semantic"][0, 0] = queries[2].vectors[0]
    slot_space = np.ones((2, 1), np.int32)
    emb = model.apply({"params": params}, tokens, soft, vectors, slot_space, method=ELM.embed_inputs)
    decoder = Decoder(model.config.decoder)
    rng_key = jax.random.split(jax.random.key(0))[1]
    out, lengths = gen.generate(
        decoder, params["llm"], emb, mask, rng_key, sampling, tokenizer.stop_ids, tokenizer.pad_id
    )
    ids = [t for t in np.asarray(out)[0, : int(lengths[0])] if t not in tokenizer.stop_ids]
    assert texts[2] == tokenizer.decode(ids)


def test_generate_elm_text_rejects_an_unknown_space(tiny):
    model, params, tokenizer = tiny
    prompt = encode_prompt(tokenizer, "The cat {movie}.")
    with pytest.raises(ValueError, match="space 'visual'"):
        gen.generate_elm_text(
            model, params, tokenizer, [Query(prompt, (np.zeros(5),), ("visual",))], gen.SamplingConfig(max_new_tokens=2)
        )


def test_rescale_output_matches_the_target_norm():
    config = AdapterConfig(input_dim=6, output_dim=12, hidden_dim=8, num_tokens=3)
    x = jax.random.normal(jax.random.key(1), (64, 6))
    params = nn.unbox(Adapter(config).init(jax.random.key(0), x)["params"])
    scaled = rescale_output(params, config, x, target_norm=0.7)
    out = Adapter(config).apply({"params": scaled}, x)
    assert out.shape == (64, 3, 12)
    np.testing.assert_allclose(jnp.mean(jnp.linalg.norm(out, axis=-1)), 0.7, rtol=1e-5)


def test_standardized_inputs_make_the_adapter_blind_to_a_common_offset_and_scale():
    """A space whose vectors share a big common component maps like its standardized version; stats get no gradient."""
    config = AdapterConfig(input_dim=6, output_dim=12, hidden_dim=8)
    x = jax.random.normal(jax.random.key(1), (64, 6))
    shifted = 0.05 * x + jnp.linspace(1.0, 3.0, 6)  # small spread around a large shared mean, like sentence vectors
    params = nn.unbox(Adapter(config).init(jax.random.key(0), x)["params"])
    a, b = standardize_inputs(params, x), standardize_inputs(params, shifted)
    np.testing.assert_allclose(
        Adapter(config).apply({"params": b}, shifted), Adapter(config).apply({"params": a}, x), atol=1e-4
    )
    np.testing.assert_allclose(b["input_std"], 0.05 * jnp.std(x, axis=0), rtol=1e-4)
    grads = jax.grad(lambda p: jnp.sum(Adapter(config).apply({"params": p}, shifted) ** 2))(b)
    assert not jnp.any(grads["input_mean"]) and not jnp.any(grads["input_std"])
    assert jnp.any(grads["fc1"]["kernel"])
    constant = standardize_inputs(params, jnp.ones((8, 6)).at[:, 0].set(jnp.arange(8.0)))
    assert jnp.all(constant["input_std"][1:] > 0)  # a dimension that never varies gets the floor, not 0


def test_config_validation():
    dec = DecoderConfig(
        family="llama", vocab_size=8, hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=4, mlp_dim=8
    )
    with pytest.raises(ValueError, match="outputs 4 dims; the LLM needs 8"):
        ELMConfig(dec, (("semantic", AdapterConfig(3, 4)),))
    with pytest.raises(ValueError, match="sorted"):
        ELMConfig(dec, (("semantic", AdapterConfig(3, 8)), ("behavioral", AdapterConfig(3, 8))))
    with pytest.raises(ValueError, match="same number of soft tokens"):
        ELMConfig(dec, (("a", AdapterConfig(3, 8, num_tokens=1)), ("b", AdapterConfig(3, 8, num_tokens=2))))
    with pytest.raises(ValueError, match="activation"):
        AdapterConfig(3, 8, activation="swish")
