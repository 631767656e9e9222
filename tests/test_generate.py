"""The jitted sampler: greedy parity with the reference, batching, stop tokens, sampling filters, compiles."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from elm_jax import generate as gen
from elm_jax.models.decoder import Decoder
from elm_jax.tokenizer import Tokenizer
from elm_jax.weights import hf
from tests import fixtures
from tests.reference import numpy_llm


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def tiny(request, tmp_path_factory):
    path = fixtures.write_hf_checkpoint(tmp_path_factory.mktemp(request.param), request.param, seed=2)
    config = hf.load_config(path)
    return path, Decoder(config), hf.load_params(path, config)


def _generate(model, params, prompts, sampling, stop_ids=(), seed=0):
    ids, mask = gen.left_pad(prompts, pad_id=0)
    emb = model.apply({"params": params}, ids, method=Decoder.embed)
    tokens, lengths = gen.generate(model, params, emb, mask, jax.random.key(seed), sampling, stop_ids, pad_id=0)
    return np.asarray(tokens), np.asarray(lengths)


def test_greedy_matches_reference_and_batching_does_not_change_rows(tiny):
    path, model, params = tiny
    prompts = [[5, 17, 33, 8, 61, 12, 9], [40, 2 + 1], [70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81]]
    sampling = gen.SamplingConfig(max_new_tokens=10)
    batch_tokens, lengths = _generate(model, params, prompts, sampling)
    weights, config = fixtures.load_hf_weights(path), fixtures.load_hf_config(path)
    for row, prompt in enumerate(prompts):
        expected = numpy_llm.greedy(weights, config, prompt, 10)
        np.testing.assert_array_equal(batch_tokens[row], expected)
        single, _ = _generate(model, params, [prompt], sampling)
        np.testing.assert_array_equal(single[0], expected)
    np.testing.assert_array_equal(lengths, [10, 10, 10])
    # Scanned stacks are sliced into separate layers to decode: the same tokens as layers loaded separate.
    assert model.config.scan_layers
    config = hf.load_config(path, scan_layers=False)
    loaded_separate, _ = _generate(Decoder(config), hf.load_params(path, config), prompts, sampling)
    np.testing.assert_array_equal(loaded_separate, batch_tokens)


def test_bfloat16_decoding_is_greedy_recomputation_of_the_bfloat16_model(tiny):
    """bfloat16 weights and compute, dots accumulated in float32 (`layers.einsum`), decoded through the cache:
    the tokens full bfloat16 forward passes pick, on a batch with several query heads per KV head."""
    _, model, params = tiny
    config = model.config.replace(dtype="bfloat16", param_dtype="bfloat16")
    assert config.num_heads > config.num_kv_heads
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    rng, n = np.random.default_rng(0), 4
    prompts = [list(rng.integers(3, config.vocab_size, rng.integers(2, 9))) for _ in range(8)]
    ids, mask = gen.left_pad(prompts, pad_id=0)
    embeddings = Decoder(config).apply({"params": params}, ids, method=Decoder.embed)
    sampling = gen.SamplingConfig(max_new_tokens=n)
    tokens, _ = gen.generate(Decoder(config), params, embeddings, mask, jax.random.key(0), sampling)
    expected = fixtures.greedy_by_recomputation(config, params, embeddings, mask, n)
    np.testing.assert_array_equal(np.asarray(tokens), expected)


def test_stop_token_ends_a_row_and_pads_the_rest(tiny):
    _, model, params = tiny
    prompts = [[5, 17, 33, 8], [40, 41]]
    free, _ = _generate(model, params, prompts, gen.SamplingConfig(max_new_tokens=8))
    stop = int(free[0, 3])  # the 4th token row 0 generates becomes a stop token
    first_hit = int(np.argmax(free[0] == stop))
    tokens, lengths = _generate(model, params, prompts, gen.SamplingConfig(max_new_tokens=8), stop_ids=(stop,))
    assert lengths[0] == first_hit + 1
    np.testing.assert_array_equal(tokens[0, : first_hit + 1], free[0, : first_hit + 1])
    assert (tokens[0, first_hit + 1 :] == 0).all()
    row1_hits = np.flatnonzero(free[1] == stop)
    assert lengths[1] == (row1_hits[0] + 1 if row1_hits.size else 8)


def test_rows_that_only_pad_a_batch_do_not_keep_it_decoding(tiny):
    """Batches are padded to a fixed size; an all-padding row must count as finished from the start, or every
    partial batch decodes to max_new_tokens after its real rows have stopped."""
    _, model, params = tiny
    free, _ = _generate(model, params, [[5, 17, 33, 8]], gen.SamplingConfig(max_new_tokens=6))
    ids, mask = gen.left_pad([[5, 17, 33, 8], [9]], pad_id=0)
    mask[1] = 0  # the second row is padding only
    emb = model.apply({"params": params}, ids, method=Decoder.embed)
    sampling = gen.SamplingConfig(max_new_tokens=6)
    tokens, lengths = gen.generate(model, params, emb, mask, jax.random.key(0), sampling, (int(free[0, 0]),), pad_id=0)
    assert int(lengths[0]) == 1
    assert (np.asarray(tokens)[:, 1:] == 0).all()  # the loop ended after the first token


def test_sampling_with_top_k_1_or_tiny_top_p_is_greedy(tiny):
    _, model, params = tiny
    prompts = [[5, 17, 33, 8], [40, 41]]
    greedy, _ = _generate(model, params, prompts, gen.SamplingConfig(max_new_tokens=6))
    for sampling in (
        gen.SamplingConfig(max_new_tokens=6, temperature=1.5, top_k=1),
        gen.SamplingConfig(max_new_tokens=6, temperature=1.0, top_p=1e-6),
    ):
        sampled, _ = _generate(model, params, prompts, sampling, seed=7)
        np.testing.assert_array_equal(sampled, greedy)


def test_sampling_is_seeded_and_varies(tiny):
    _, model, params = tiny
    sampling = gen.SamplingConfig(max_new_tokens=12, temperature=2.0)
    a, _ = _generate(model, params, [[5, 17, 33]], sampling, seed=1)
    b, _ = _generate(model, params, [[5, 17, 33]], sampling, seed=1)
    c, _ = _generate(model, params, [[5, 17, 33]], sampling, seed=2)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_top_k_and_top_p_keep_exactly_the_expected_tokens():
    logits = jnp.log(jnp.array([[0.4, 0.3, 0.2, 0.1]] * 4000))
    keys = jax.random.key(0)
    top_k = gen.sample_token(logits, keys, gen.SamplingConfig(temperature=1.0, top_k=2))
    assert set(np.unique(top_k)) == {0, 1}
    top_p = gen.sample_token(logits, keys, gen.SamplingConfig(temperature=1.0, top_p=0.5))
    assert set(np.unique(top_p)) == {0, 1}  # 0.4 < 0.5, so the second token is needed to reach 0.5
    free = np.bincount(gen.sample_token(logits, keys, gen.SamplingConfig(temperature=1.0)), minlength=4) / 4000
    np.testing.assert_allclose(free, [0.4, 0.3, 0.2, 0.1], atol=0.03)


@pytest.mark.parametrize(
    "bad", [dict(max_new_tokens=0), dict(temperature=-1.0), dict(top_k=-2), dict(top_p=0.0), dict(top_p=1.5)]
)
def test_sampling_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        gen.SamplingConfig(**bad)


def test_generate_text_compiles_once_per_length_bucket(tiny):
    path, model, params = tiny
    tokenizer = Tokenizer.from_dir(path)
    sampling = gen.SamplingConfig(max_new_tokens=5)
    texts = gen.generate_text(
        model, params, tokenizer, ["The cat", "The capital of France is", "Paris"], sampling, batch_size=2
    )
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    fn = gen._compiled_generate(model.config, sampling, tokenizer.stop_ids, tokenizer.pad_id)
    assert fn._cache_size() == 1  # 3 prompts, 2 calls, one (rows, length) bucket
    chat = gen.generate_text(model, params, tokenizer, ["What is the capital of France?"], sampling, chat=True)
    assert len(chat) == 1


@pytest.mark.parametrize("batch_size", [0, -1, 2.0])
def test_generate_text_names_a_bad_batch_size(tiny, batch_size):
    path, model, params = tiny
    with pytest.raises(ValueError, match=r"batch_size \(prompts per generate call\) must be an int >= 1"):
        gen.generate_text(model, params, Tokenizer.from_dir(path), ["x"], gen.SamplingConfig(), batch_size=batch_size)


def test_left_pad_rejects_prompts_that_do_not_fit():
    with pytest.raises(ValueError, match="prompt 1 has 0 tokens"):
        gen.left_pad([[1, 2], []], pad_id=0)
    with pytest.raises(ValueError, match="prompt 0 has 3 tokens"):
        gen.left_pad([[1, 2, 3]], pad_id=0, length=2)
    ids, mask = gen.left_pad([[7, 8, 9], [4]], pad_id=0, rows=3)
    assert ids.shape == (3, 16) and mask.sum(1).tolist() == [3, 1, 0]
    assert ids[0, -3:].tolist() == [7, 8, 9]


def test_decode_loop_updates_the_kv_cache_in_place(tiny):
    """A copy of each layer's cache per step cost batch-8 SmolLM2 decoding ~1/6 of its time on CPU."""
    _, model, params = tiny
    cfg, batch, prompt_len, new = model.config, 2, 16, 6
    emb = jnp.zeros((batch, prompt_len, cfg.hidden_size), jnp.float32)
    mask = jnp.ones((batch, prompt_len), bool)
    fn = gen._compiled_generate(cfg, gen.SamplingConfig(max_new_tokens=new), (), 0)
    hlo = fn.lower(params, emb, mask, jax.random.key(0)).compile().as_text()
    bodies = re.findall(r"body=%?([\w.-]+)", hlo)
    assert bodies, "no decode loop found in the compiled program"
    cache_shape = f"f32[{batch},{cfg.num_kv_heads},{prompt_len + new},{cfg.head_dim}]{{"
    for body in bodies:
        block = re.search(rf"^%?{re.escape(body)} .*?^}}", hlo, re.S | re.M).group(0)
        copies = [line for line in block.splitlines() if cache_shape in line and " copy(" in line]
        assert not copies, copies[:2]
