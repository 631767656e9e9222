"""Decoder invariants: embeddings == ids, left padding, KV cache == recomputation, layouts and remat agree."""

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from elm_jax.models import layers
from elm_jax.models.decoder import Decoder, init_cache, positions_from_mask, separate_cache, separate_layers
from elm_jax.models.decoder_config import DecoderConfig, RopeConfig
from elm_jax.weights import hf
from tests import fixtures
from tests.reference import numpy_llm

# Mistral and Qwen2 with sliding windows of 4 (all layers / the second), so windows matter in short tests.
FAMILIES = {
    "llama": ("llama", {}),
    "gemma3": ("gemma3", {}),
    "mistral": ("mistral", dict(sliding_window=4)),
    "qwen2": ("qwen2", dict(use_sliding_window=True, sliding_window=4, max_window_layers=1)),
    "qwen3": ("qwen3", {}),
}


def _tiny(name, tmp_path_factory):
    family, kwargs = FAMILIES[name]
    return family, fixtures.write_hf_checkpoint(tmp_path_factory.mktemp(name), family, seed=1, **kwargs)


@pytest.fixture(scope="module", params=list(FAMILIES))
def any_family(request, tmp_path_factory):
    """(family, checkpoint dir) of every supported family: for what differs between them (attention)."""
    return _tiny(request.param, tmp_path_factory)


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def tiny(request, tmp_path_factory):
    """(family, checkpoint dir) of the two block layouts: for what only the layout could break (layers, remat)."""
    return _tiny(request.param, tmp_path_factory)


def _load(path, **overrides):
    config = hf.load_config(path, **overrides)
    return Decoder(config), hf.load_params(path, config)


def _ids(batch: int, length: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(3, 97, (batch, length)).astype(np.int32)


def _left_padded(batch: int, length: int, seed: int, padding: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Random ids and a mask whose row r starts with padding[r] pad positions."""
    mask = np.ones((batch, length), bool)
    for row, n in padding.items():
        mask[row, :n] = False
    return _ids(batch, length, seed), mask


def test_embeddings_input_equals_token_input(tiny):
    model, params = _load(tiny[1])
    ids = _ids(2, 9)
    from_ids, _ = model.apply({"params": params}, ids)
    emb = model.apply({"params": params}, ids, method=Decoder.embed)
    from_emb, _ = model.apply({"params": params}, embeddings=emb)
    np.testing.assert_array_equal(from_ids, from_emb)


def test_gemma_embed_is_scaled(tmp_path):
    model, params = _load(fixtures.write_hf_checkpoint(tmp_path, "gemma3"))
    emb = model.apply({"params": params}, np.array([[5]]), method=Decoder.embed)
    np.testing.assert_allclose(emb[0, 0], params["embedding"][5] * np.sqrt(32), rtol=1e-6)


@pytest.mark.parametrize("scan", [True, False])
def test_matches_numpy_reference_with_left_padding(any_family, scan):
    family, path = any_family
    model, params = _load(path, scan_layers=scan)
    ids, mask = _left_padded(3, 12, seed=0, padding={1: 4, 2: 9})  # row 2: beyond gemma's window of 4
    logits, _ = model.apply({"params": params}, ids, mask=mask)
    ref = numpy_llm.forward(fixtures.load_hf_weights(path), fixtures.load_hf_config(path), ids=ids, mask=mask)
    np.testing.assert_allclose(np.where(mask[..., None], logits, 0), np.where(mask[..., None], ref, 0), atol=1e-4)


@pytest.mark.parametrize("scan", [True, False])
def test_kv_cache_decoding_matches_full_recomputation(any_family, scan):
    model, params = _load(any_family[1], scan_layers=scan)
    ids, mask = _left_padded(2, 11, seed=3, padding={0: 2})
    full, _ = model.apply({"params": params}, ids, mask=mask)
    cache = init_cache(model.config, batch=2, max_len=16)
    step, cache = model.apply({"params": params}, ids[:, :5], mask=mask[:, :5], cache=cache)
    pieces = [step]
    for t in range(5, 11):  # one token at a time, past gemma's sliding window
        step, cache = model.apply({"params": params}, ids[:, t : t + 1], cache=cache)
        pieces.append(step)
    incremental = np.concatenate(pieces, axis=1)
    np.testing.assert_allclose(incremental[mask], np.asarray(full)[mask], atol=1e-5)
    assert int(cache["end"]) == 11
    np.testing.assert_array_equal(cache["positions"][0, :11], [-1, -1] + list(range(9)))


@pytest.mark.parametrize("scan", [True, False])
def test_prefill_builds_the_cache_that_cached_calls_would(any_family, scan):
    model, params = _load(any_family[1], scan_layers=scan)
    ids, mask = _left_padded(2, 7, seed=4, padding={1: 3})
    emb = model.apply({"params": params}, ids, method=Decoder.embed)
    hidden, cache = model.apply({"params": params}, emb, mask, 12, method=Decoder.prefill)
    ref_hidden, ref_cache = model.apply(
        {"params": params}, embeddings=emb, mask=mask, cache=init_cache(model.config, 2, 12), return_hidden=True
    )
    np.testing.assert_allclose(hidden[mask], ref_hidden[mask], atol=1e-5)  # padding rows attend differently
    assert jax.tree.structure(cache) == jax.tree.structure(ref_cache)
    np.testing.assert_array_equal(cache["positions"], ref_cache["positions"])
    assert int(cache["end"]) == int(ref_cache["end"]) == 7
    used = (np.asarray(cache["positions"]) >= 0)[:, None, :, None]  # padding slots are never attended
    for ours, ref in zip(jax.tree.leaves((cache["k"], cache["v"])), jax.tree.leaves((ref_cache["k"], ref_cache["v"]))):
        assert ours.shape == ref.shape
        np.testing.assert_allclose(np.where(used, ours, 0), np.where(used, ref, 0), atol=1e-5)
    np.testing.assert_array_equal(cache["positions"][1], [-1] * 3 + list(range(4)) + [-1] * 5)
    separated = separate_cache(model.config, cache)  # what generation decodes with
    assert isinstance(separated["k"], tuple) and len(separated["k"]) == model.config.num_layers
    np.testing.assert_array_equal(separated["v"][1], cache["v"][1])
    with pytest.raises(ValueError, match="cache_size 6 is smaller than the prompt's 7 tokens"):
        model.apply({"params": params}, emb, mask, 6, method=Decoder.prefill)


def test_scanned_and_unscanned_layouts_compute_the_same(tiny):
    scanned, p_scan = _load(tiny[1], scan_layers=True)
    unscanned, p_loop = _load(tiny[1], scan_layers=False)
    assert "layers" in p_scan and "layers_0" in p_loop
    np.testing.assert_array_equal(p_scan["layers"]["mlp"]["up_kernel"][1], p_loop["layers_1"]["mlp"]["up_kernel"])
    separated = separate_layers(scanned.config, p_scan)  # what generation decodes with
    assert jax.tree.structure(separated) == jax.tree.structure(p_loop)
    jax.tree.map(np.testing.assert_array_equal, separated, p_loop)
    ids = _ids(2, 7)
    np.testing.assert_allclose(
        scanned.apply({"params": p_scan}, ids)[0], unscanned.apply({"params": p_loop}, ids)[0], atol=1e-5
    )


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
def test_gated_mlp_backward_matches_autodiff(activation):
    act = layers._ACTIVATIONS[activation]
    keys = jax.random.split(jax.random.key(0), 5)
    x = jax.random.normal(keys[0], (2, 5, 8))
    weights = tuple(jax.random.normal(k, s) for k, s in zip(keys[1:4], [(8, 12), (8, 12), (12, 8)]))
    d_out = jax.random.normal(keys[4], (2, 5, 8))
    plain = lambda x, wg, wu, wd: (act(x @ wg) * (x @ wu)) @ wd
    out, vjp = jax.vjp(lambda *a: layers.gated_mlp(act, *a), x, *weights)
    ref_out, ref_vjp = jax.vjp(plain, x, *weights)
    np.testing.assert_allclose(out, ref_out, rtol=1e-6)
    for ours, ref in zip(vjp(d_out), ref_vjp(d_out), strict=True):
        assert ours.shape == ref.shape
        np.testing.assert_allclose(ours, ref, rtol=2e-5, atol=2e-5)


def _equations(fn, *args, primitive: str) -> list:
    """Every `primitive` equation in fn's jaxpr, nested jaxprs included."""
    found = []

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == primitive:
                found.append(eqn)
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                visit(sub)

    visit(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def _dot_dtypes(fn, *args) -> set[tuple[str, str, str]]:
    """(lhs, rhs, result) dtypes of every dot in fn's jaxpr, nested jaxprs included."""
    eqns = _equations(fn, *args, primitive="dot_general")
    return {tuple(str(v.aval.dtype) for v in (*eqn.invars, *eqn.outvars)) for eqn in eqns}


# What XLA:CPU runs on its AMX bfloat16 kernel; a bfloat16 result, or float32 operands, take its float32 path.
BF16_DOT = {("bfloat16", "bfloat16", "float32")}


EINSUMS = [
    ("btd,dhk->bthk", (2, 3, 8), (8, 4, 5)),
    ("bthk,hkd->btd", (2, 3, 4, 5), (4, 5, 8)),
    ("btkgd,bskd->bkgts", (2, 3, 2, 2, 4), (2, 5, 2, 4)),
    ("...d,vd->...v", (2, 3, 8), (11, 8)),
]


@pytest.mark.parametrize("out_dtype", [None, "float32"])
@pytest.mark.parametrize("spec,a_shape,b_shape", EINSUMS)
def test_low_precision_einsum_keeps_backward_dots_in_bfloat16(spec, a_shape, b_shape, out_dtype):
    keys = jax.random.split(jax.random.key(0), 3)
    a, b = jax.random.normal(keys[0], a_shape), jax.random.normal(keys[1], b_shape)
    d_out = jax.random.normal(keys[2], jnp.einsum(spec, a, b).shape)
    ref = jax.vjp(lambda a, b: jnp.einsum(spec, a, b), a, b)[1](d_out)
    a16, b16 = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
    out, vjp = jax.vjp(lambda a, b: layers.einsum(spec, a, b, out_dtype), a16, b16)
    assert out.dtype == (out_dtype or "bfloat16")
    for ours, want in zip(vjp(d_out.astype(out.dtype)), ref, strict=True):
        assert ours.dtype == jnp.bfloat16
        np.testing.assert_allclose(ours.astype(np.float32), want, atol=0.02 * float(jnp.max(jnp.abs(want))))
    # The point of it: autodiff of a float32-accumulated einsum would give the backward dots float32 operands.
    grads = jax.grad(lambda a, b: jnp.sum(layers.einsum(spec, a, b, out_dtype).astype(jnp.float32)), (0, 1))
    assert _dot_dtypes(grads, a16, b16) == BF16_DOT
    np.testing.assert_array_equal(layers.einsum(spec, a, b), jnp.einsum(spec, a, b))  # float32: unchanged


@pytest.mark.parametrize("spec,a_shape,b_shape", EINSUMS)
def test_mixed_einsum_multiplies_in_bfloat16_and_returns_each_cotangent_in_its_operands_dtype(spec, a_shape, b_shape):
    keys = jax.random.split(jax.random.key(1), 3)
    a, b = jax.random.normal(keys[0], a_shape), jax.random.normal(keys[1], b_shape)
    d_out = jax.random.normal(keys[2], jnp.einsum(spec, a, b).shape)
    b16 = b.astype(jnp.bfloat16)
    ref_out, ref_vjp = jax.vjp(lambda a, b: jnp.einsum(spec, a, b), a.astype(jnp.bfloat16).astype(jnp.float32), b)
    out, vjp = jax.vjp(lambda a, b: layers.einsum(spec, a, b, "float32"), a, b16)
    np.testing.assert_allclose(out, ref_out, atol=0.02 * float(jnp.max(jnp.abs(ref_out))))
    (d_a, d_b), (want_a, want_b) = vjp(d_out), ref_vjp(d_out)
    assert (d_a.dtype, d_b.dtype) == (jnp.float32, jnp.bfloat16)  # a float32 input keeps its cotangent unrounded
    for ours, want in ((d_a, want_a), (d_b, want_b)):
        np.testing.assert_allclose(ours.astype(np.float32), want, atol=0.02 * float(jnp.max(jnp.abs(want))))
    grads = jax.grad(lambda a, b: jnp.sum(layers.einsum(spec, a, b, "float32")), (0, 1))
    assert _dot_dtypes(grads, a, b16) == BF16_DOT


def test_bfloat16_gated_mlp_runs_every_dot_on_bfloat16_operands_into_float32():
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], (2, 5, 8))
    weights = tuple(jax.random.normal(k, s) / 3 for k, s in zip(keys[1:], [(8, 12), (8, 12), (12, 8)]))
    loss = lambda *a: jnp.sum(layers.gated_mlp(jax.nn.silu, *a).astype(jnp.float32) ** 2)
    args16 = [w.astype(jnp.bfloat16) for w in (x, *weights)]
    assert _dot_dtypes(jax.grad(loss, range(4)), *args16) == BF16_DOT
    for ours, want in zip(jax.grad(loss, range(4))(*args16), jax.grad(loss, range(4))(x, *weights), strict=True):
        assert ours.dtype == jnp.bfloat16
        np.testing.assert_allclose(ours.astype(np.float32), want, atol=0.03 * float(jnp.max(jnp.abs(want))))


def test_bfloat16_decoder_gradient_runs_every_dot_on_bfloat16_operands_into_float32(tiny):
    f32, params = _load(tiny[1])
    bf16 = Decoder(f32.config.replace(dtype="bfloat16"))
    ids = _ids(2, 8)

    def loss(p):
        logits, _ = bf16.apply({"params": p}, ids)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, ids[..., None], -1)[..., 0])

    assert _dot_dtypes(jax.grad(loss), params) == BF16_DOT


def test_unknown_activation_is_named(tmp_path):
    model, params = _load(fixtures.write_hf_checkpoint(tmp_path, "llama"))
    relu = Decoder(model.config.replace(activation="relu"))
    with pytest.raises(ValueError, match="activation 'relu' is not one of silu, gelu_tanh"):
        relu.apply({"params": params}, _ids(1, 3))


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_changes_neither_loss_nor_gradients(tiny, policy):
    base, params = _load(tiny[1])
    remat = Decoder(base.config.replace(remat_policy=policy))
    ids = _ids(2, 8)

    def loss(model, p):
        logits, _ = model.apply({"params": p}, ids)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, ids[..., None], -1)[..., 0])

    (l0, g0), (l1, g1) = (jax.value_and_grad(lambda p, m=m: loss(m, p))(params) for m in (base, remat))
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g0, g1)


def test_bfloat16_compute_stays_close_to_float32(tiny):
    f32, params = _load(tiny[1])
    bf16 = Decoder(f32.config.replace(dtype="bfloat16"))
    ids = _ids(2, 8)
    a, b = f32.apply({"params": params}, ids)[0], bf16.apply({"params": params}, ids)[0]
    assert b.dtype == jnp.float32  # logits stay float32 for a stable softmax
    assert np.mean(np.argmax(a, -1) == np.argmax(b, -1)) > 0.9
    assert float(jnp.max(jnp.abs(a - b))) < 0.1 * float(jnp.max(jnp.abs(a)))


def test_init_gives_logical_axes_for_every_param():
    config = DecoderConfig(
        family="llama",
        vocab_size=64,
        hidden_size=16,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        head_dim=8,
        mlp_dim=32,
        tie_embeddings=False,
    )
    boxed = Decoder(config).init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
    names = {x.names for x in leaves}
    assert ("layers", "embed", "mlp") in names and ("embed", "vocab") in names
    assert config.num_params() == sum(x.value.size for x in leaves)


@pytest.mark.parametrize("kind", ["default", "linear", "llama3"])
def test_rope_frequencies_match_reference(kind):
    params = {
        "rope_type": kind,
        "rope_theta": 5e5,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256,
    }
    np.testing.assert_allclose(RopeConfig.from_hf(params).inv_freq(64), numpy_llm.inv_freq(params, 64), rtol=1e-12)


def test_rope_tables_gathered_per_position_equal_the_direct_ones():
    _, mask = _left_padded(3, 9, 0, {1: 4, 2: 8})
    positions = positions_from_mask(jnp.asarray(mask))
    inv_freq = RopeConfig.from_hf({"rope_theta": 1e4}).inv_freq(16)
    for direct, gathered in zip(layers.rope_tables(positions, inv_freq), layers.rope_tables(positions, inv_freq, 9)):
        assert gathered.shape == (3, 9, 8)
        np.testing.assert_array_equal(gathered, direct)


def test_uncached_forward_computes_rope_once_per_position_not_per_token(tiny):
    # Why it matters: XLA:CPU recomputes per-token cos/sin inside every RoPE fusion (see layers.rope_tables).
    model, params = _load(tiny[1])
    ids, mask = _left_padded(3, 7, 0, {1: 2})
    forward = lambda p: model.apply({"params": p}, ids, mask=mask)[0]
    for primitive in ("sin", "cos"):
        shapes = {eqn.invars[0].aval.shape for eqn in _equations(forward, params, primitive=primitive)}
        assert shapes == {(7, model.config.head_dim // 2)}


def test_config_rejects_inconsistent_fields():
    base = dict(vocab_size=8, hidden_size=8, num_layers=2, num_heads=3, num_kv_heads=2, head_dim=4, mlp_dim=8)
    with pytest.raises(ValueError, match="num_kv_heads"):
        DecoderConfig(family="llama", **base)
    with pytest.raises(ValueError, match="family"):
        DecoderConfig(family="gpt2", **{**base, "num_heads": 2})
    with pytest.raises(ValueError, match="sliding_window"):
        DecoderConfig(family="gemma3", global_layers=(False, True), **{**base, "num_heads": 2})
    with pytest.raises(ValueError, match="rope_type"):
        RopeConfig.from_hf({"rope_type": "yarn", "rope_theta": 1.0})
