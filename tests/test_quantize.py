"""int8 inference: exact integer matmuls, weights within half a step, close to float, decoding == recompute."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from elm_jax import generate as gen
from elm_jax.lora import LoraConfig, init_lora
from elm_jax.models.decoder import Decoder, abstract_params
from elm_jax.models.layers import KERNEL_LAYOUT, int8_einsum
from elm_jax.models.quantize import quantize_int8
from elm_jax.weights import hf
from tests import fixtures


@pytest.fixture(scope="module", params=[("llama", True), ("gemma3", False)])
def tiny(request, tmp_path_factory):
    """(config, float params): a scanned Llama with a tied head, an unscanned Gemma 3 with its own head."""
    family, scan = request.param
    path = fixtures.write_hf_checkpoint(tmp_path_factory.mktemp(family), family, tie=family == "llama", seed=3)
    config = hf.load_config(path, scan_layers=scan)
    return config, hf.load_params(path, config)


def _representable(shape, n_contract, seed):
    """Inputs that int8 holds exactly: integers in [-127, 127] with a 127 in every row, times a row scale."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(-127, 128, shape).astype(np.float32)
    codes[..., 0] = 127.0
    row_shape = shape[: len(shape) - n_contract] + (1,) * n_contract
    return codes * rng.uniform(0.01, 2.0, row_shape).astype(np.float32)


@pytest.mark.parametrize(
    "spec, x_shape, w_shape, n_contract",
    [
        ("btd,dhk->bthk", (2, 3, 16), (16, 4, 8), 1),
        ("bthk,hkd->btd", (2, 3, 4, 8), (4, 8, 16), 2),
        ("...d,vd->...v", (5, 16), (32, 16), 1),  # the tied head: one scale per vocabulary row
    ],
)
def test_int8_einsum_is_exact_for_representable_inputs(spec, x_shape, w_shape, n_contract):
    x = _representable(x_shape, n_contract, 0)
    rng = np.random.default_rng(1)
    codes = rng.integers(-127, 128, w_shape).astype(np.int8)
    tied = spec == "...d,vd->...v"
    scale = rng.uniform(0.001, 0.1, w_shape[:1] if tied else w_shape[n_contract:]).astype(np.float32)
    dequantized = codes.astype(np.float64) * (scale[:, None] if tied else scale)
    expected = np.einsum(spec, x.astype(np.float64), dequantized)
    got = np.asarray(int8_einsum(spec, jnp.asarray(x), jnp.asarray(codes), jnp.asarray(scale), n_contract))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    # One row goes through the two-row padding and gives the batch's first row.
    one = np.asarray(int8_einsum(spec, jnp.asarray(x[:1]), jnp.asarray(codes), jnp.asarray(scale), n_contract))
    np.testing.assert_array_equal(one, got[:1])


def test_weights_round_to_the_nearest_step_of_their_channel(tiny):
    config, params = tiny
    qconfig, qparams = quantize_int8(config, params)
    assert qconfig.quant == "int8" and qconfig.replace(quant="none") == config
    # The tree is the one an int8 Decoder declares (names, shapes, dtypes), so logical-axis sharding rules apply.
    want = nn.unbox(abstract_params(qconfig))
    assert jax.tree.structure(want) == jax.tree.structure(qparams)
    for w, q in zip(jax.tree.leaves(want), jax.tree.leaves(qparams)):
        assert (w.shape, w.dtype) == (q.shape, q.dtype)
    stacked = 1 if config.scan_layers else 0
    layer = lambda tree: tree["layers"] if config.scan_layers else tree["layers_0"]
    checked = 0
    for module in ("attn", "mlp"):
        for name, w in layer(params)[module].items():
            if name not in KERNEL_LAYOUT:
                continue
            codes, scale = layer(qparams)[module][name], layer(qparams)[module][f"{name}_scale"]
            n_in = KERNEL_LAYOUT[name][1]
            axes = tuple(range(stacked, stacked + n_in))
            s = np.expand_dims(np.asarray(scale), axes)
            w, codes = np.asarray(w), np.asarray(codes).astype(np.float32)
            assert np.all(np.abs(codes * s - w) <= s / 2 * (1 + 1e-6)), name
            np.testing.assert_array_equal(np.abs(codes).max(axis=axes), 127)  # each channel's largest weight
            checked += 1
    assert checked == 7
    embedding, codes, scale = params["embedding"], qparams["embedding"], qparams["embedding_scale"]
    assert np.all(np.abs(np.asarray(codes, np.float32) * scale[:, None] - embedding) <= scale[:, None] / 2 * 1.000001)
    if not config.tie_embeddings:
        assert qparams["lm_head"].dtype == jnp.int8 and qparams["lm_head_scale"].shape == (config.vocab_size,)


def test_int8_model_stays_close_to_the_float_one(tiny):
    config, params = tiny
    qconfig, qparams = quantize_int8(config, params)
    ids = np.random.default_rng(0).integers(3, config.vocab_size, (2, 9)).astype(np.int32)
    logits = lambda c, p: np.asarray(jax.jit(lambda p, x: Decoder(c).apply({"params": p}, x)[0])(p, ids))
    ref, got = logits(config, params), logits(qconfig, qparams)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.05
    assert np.mean(got.argmax(-1) == ref.argmax(-1)) >= 0.8


def test_int8_generation_is_greedy_recomputation_of_the_int8_model(tiny):
    """`SamplingConfig(quant="int8")` decodes with the cache exactly what full int8 forward passes pick, and on
    enough prompts that differs from what the float model picks (so the check tells the two apart).

    Prompts come as embeddings (here from the float table, as ELM prompts do); generated tokens are embedded by
    the int8 model itself.
    """
    config, params = tiny
    qconfig, qparams = quantize_int8(config, params)
    rng, n = np.random.default_rng(0), 4
    prompts = [list(rng.integers(3, config.vocab_size, rng.integers(2, 9))) for _ in range(32)]
    ids, mask = gen.left_pad(prompts, pad_id=0)
    prompt_embeddings = Decoder(config).apply({"params": params}, ids, method=Decoder.embed)
    sampling = gen.SamplingConfig(max_new_tokens=n, quant="int8")
    tokens, _ = gen.generate(Decoder(config), params, prompt_embeddings, mask, jax.random.key(0), sampling)
    expected = fixtures.greedy_by_recomputation(qconfig, qparams, prompt_embeddings, mask, n)
    np.testing.assert_array_equal(np.asarray(tokens), expected)
    float_tokens = fixtures.greedy_by_recomputation(config, params, prompt_embeddings, mask, n)
    assert (expected != float_tokens).any(axis=1).sum() >= 1


def test_bad_quantization_requests_are_named(tiny):
    config, params = tiny
    with pytest.raises(ValueError, match="quant 'int4' is not one of none, int8"):
        config.replace(quant="int4")
    with pytest.raises(ValueError, match="quant must be one of none, int8"):
        gen.SamplingConfig(quant="fp8")
    qconfig, qparams = quantize_int8(config, params)
    with pytest.raises(ValueError, match="already quantized"):
        quantize_int8(qconfig, qparams)
    with pytest.raises(ValueError, match="needs float params"):
        ids, mask = gen.left_pad([[5, 6]], pad_id=0)
        emb = Decoder(qconfig).apply({"params": qparams}, ids, method=Decoder.embed)
        gen.generate(Decoder(qconfig), qparams, emb, mask, jax.random.key(0), gen.SamplingConfig(quant="int8"))
    boxed = {"llm": abstract_params(config)}
    lora = init_lora(boxed, LoraConfig(rank=2, targets=r"llm/layers.*/attn/q_kernel"), jax.random.key(0))
    with pytest.raises(ValueError, match="apply_lora"):
        quantize_int8(config, {**params, "lora": lora["lora"]})
