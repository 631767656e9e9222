"""Mesh construction, logical-axis -> mesh-axis rules, and sharded == unsharded forward / decoding.

conftest.py gives 8 simulated CPU devices, so the (data=2, fsdp=2, tensor=2) mesh is real GSPMD partitioning.
"""

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from elm_jax import sharding as shd
from elm_jax.models.decoder import Decoder, abstract_params, init_cache
from elm_jax.models.quantize import quantize_int8
from elm_jax.weights import hf
from tests import fixtures
from tests.reference import numpy_llm

MESH_222 = {"data": 2, "fsdp": 2, "tensor": 2}


@pytest.fixture(scope="module")
def mesh() -> jax.sharding.Mesh:
    return shd.make_mesh(MESH_222)


# ------------------------------------------------------------------------------------------- make_mesh
@pytest.mark.parametrize(
    "shape, want",
    [
        ({"data": -1}, (8, 1, 1)),
        ({"fsdp": -1}, (1, 8, 1)),
        ({"data": 2, "fsdp": -1, "tensor": 2}, (2, 2, 2)),
        ({"tensor": 4, "data": -1}, (2, 1, 4)),
        (MESH_222, (2, 2, 2)),
        ({"data": 1, "fsdp": 8}, (1, 8, 1)),
    ],
)
def test_make_mesh_shapes(shape, want):
    m = shd.make_mesh(shape)
    assert m.axis_names == shd.MESH_AXES
    assert tuple(m.shape[a] for a in shd.MESH_AXES) == want
    assert m.devices.size == len(jax.devices()) == 8


def test_make_mesh_on_a_device_subset():
    m = shd.make_mesh({"tensor": -1}, devices=jax.devices()[:2])
    assert dict(m.shape) == {"data": 1, "fsdp": 1, "tensor": 2}
    assert set(m.devices.flat) == set(jax.devices()[:2])


@pytest.mark.parametrize(
    "shape, match",
    [
        ({"data": -1, "fsdp": -1}, "at most one axis may be -1"),
        ({"data": 2, "model": 4}, r"\['model'\].*unknown"),
        ({"data": 3}, "needs 3 devices, have 8"),
        ({"data": 2, "fsdp": 2}, "needs 4 devices, have 8"),
        ({"data": 4, "fsdp": 4}, "needs 16 devices, have 8"),
        ({"data": 3, "fsdp": -1}, "8 devices are not divisible by 3"),
    ],
)
def test_make_mesh_errors(shape, match):
    with pytest.raises(ValueError, match=match):
        shd.make_mesh(shape)


# ------------------------------------------------------------------------------------------- spec_for
def test_spec_for_basic(mesh):
    assert shd.spec_for((32, 64), ("embed", "mlp"), mesh) == P("fsdp", "tensor")
    assert shd.spec_for((4, 32, 64), ("layers", "embed", "mlp"), mesh) == P(None, "fsdp", "tensor")
    assert shd.spec_for((128, 32), ("vocab", "embed"), mesh) == P("tensor", "fsdp")
    assert shd.spec_for((8,), ("norm",), mesh) == P(None)
    assert shd.spec_for((8, 4), ("batch", None), mesh) == P(("data", "fsdp"), None)
    assert shd.spec_for((8, 4), ("no_such_axis", "embed"), mesh) == P(None, "fsdp")


def test_spec_for_replicates_non_divisible_dims(mesh):
    # SmolLM2: 3 KV heads on tensor=2 -> that dim replicated, the rest still sharded.
    assert shd.spec_for((32, 3, 8), ("embed", "kv_heads", "head_dim"), mesh) == P("fsdp", None, None)
    assert shd.spec_for((97, 32), ("vocab", "embed"), mesh) == P(None, "fsdp")
    assert shd.spec_for((33, 64), ("embed", "mlp"), mesh) == P(None, "tensor")
    # A batch of 6 is not divisible by data x fsdp = 4: replicated rather than partially sharded.
    assert shd.spec_for((6, 4), ("batch", None), mesh) == P(None, None)


def test_spec_for_never_uses_a_mesh_axis_twice(mesh):
    assert shd.spec_for((4, 4), ("heads", "kv_heads"), mesh) == P("tensor", None)
    assert shd.spec_for((4, 4), ("mlp", "mlp"), mesh) == P("tensor", None)
    # Batch takes (data, fsdp) first, so embed may not reuse fsdp.
    assert shd.spec_for((8, 32), ("batch", "embed"), mesh) == P(("data", "fsdp"), None)
    # ... but when batch could not be sharded, fsdp is still free for embed.
    assert shd.spec_for((6, 32), ("batch", "embed"), mesh) == P(None, "fsdp")
    rules = (("a", ("data", "tensor")), ("b", ("tensor", "fsdp")))
    assert shd.spec_for((4, 4), ("a", "b"), mesh, rules) == P(("data", "tensor"), "fsdp")
    for spec in (
        shd.spec_for((4, 4, 4), names, mesh)
        for names in [("embed", "embed", "embed"), ("batch", "embed", "mlp"), ("vocab", "heads", "embed")]
    ):
        used = [a for entry in spec if entry for a in ((entry,) if isinstance(entry, str) else entry)]
        assert len(used) == len(set(used)), spec


def test_spec_for_skips_size_one_mesh_axes():
    m = shd.make_mesh({"data": -1})
    assert shd.spec_for((32, 64), ("embed", "mlp"), m) == P(None, None)
    assert shd.spec_for((8, 4), ("batch", None), m) == P("data", None)


def test_first_rule_wins(mesh):
    rules = (("embed", "tensor"), ("embed", "fsdp"))
    assert shd.spec_for((32,), ("embed",), mesh, rules) == P("tensor")


def test_batch_sharding_and_divisor(mesh):
    assert shd.batch_sharding(mesh, 2).spec == P(("data", "fsdp"), None)
    assert shd.batch_sharding(mesh, 3).spec == P(("data", "fsdp"), None, None)
    assert shd.batch_divisor(mesh) == 4
    data_only = shd.make_mesh({"data": 2, "tensor": 4})
    assert shd.batch_sharding(data_only, 2).spec == P("data", None)
    assert shd.batch_divisor(data_only) == 2
    assert shd.batch_divisor(shd.make_mesh({"tensor": -1})) == 1


def test_logical_shardings_cover_every_param(mesh, tmp_path):
    config = hf.load_config(fixtures.write_hf_checkpoint(tmp_path, "gemma3", vocab=128))
    boxed = abstract_params(config)
    shardings = shd.logical_shardings(boxed, mesh)
    assert jax.tree.structure(shardings) == jax.tree.structure(nn.unbox(boxed))
    assert all(isinstance(s, NamedSharding) and s.mesh == mesh for s in jax.tree.leaves(shardings))
    layers = shardings["layers"]
    assert layers["mlp"]["gate_kernel"].spec == P(None, "fsdp", "tensor")
    assert layers["attn"]["o_kernel"].spec == P(None, "tensor", None, "fsdp")
    assert layers["attn"]["q_norm"]["scale"].spec == P(None, None)
    assert shardings["embedding"].spec == P("tensor", "fsdp")


# ------------------------------------------------------------------------------------------- sharded == unsharded
# Left-padded batch of 4 with 4 different lengths (one row unpadded), so every batch shard sees padding differently.
LENGTHS = (11, 7, 3, 9)
T = max(LENGTHS)
VOCAB = 128  # divisible by tensor=2, so the embedding is sharded on both of its dims


def _batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    mask = np.stack([np.arange(T) >= T - n for n in LENGTHS]).astype(np.int32)
    ids = np.where(mask, rng.integers(3, VOCAB, (len(LENGTHS), T)), 0)
    return ids, mask


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def model(request, tmp_path_factory, mesh):
    """(config, single-device params, mesh-sharded params, checkpoint folder) of a tiny model."""
    ckpt = fixtures.write_hf_checkpoint(
        tmp_path_factory.mktemp(request.param), request.param, vocab=VOCAB, tie=request.param == "gemma3", seed=4
    )
    config = hf.load_config(ckpt)
    params = hf.load_params(ckpt, config)
    sharded = jax.device_put(params, shd.logical_shardings(abstract_params(config), mesh))
    return config, params, sharded, pathlib.Path(ckpt)


def test_params_really_sharded(model, mesh):
    config, _, sharded, _ = model
    gate = sharded["layers"]["mlp"]["gate_kernel"]
    assert gate.sharding.spec == P(None, "fsdp", "tensor")
    assert gate.addressable_shards[0].data.shape == (config.num_layers, config.hidden_size // 2, config.mlp_dim // 2)
    assert sharded["embedding"].sharding.spec == P("tensor", "fsdp")
    assert sharded["layers"]["attn"]["k_kernel"].sharding.spec == P(None, "fsdp", "tensor", None)
    specs = [leaf.sharding.spec for leaf in jax.tree.leaves(sharded)]
    assert sum(any(s is not None for s in spec) for spec in specs) >= len(specs) // 2
    assert all(leaf.sharding.mesh == mesh for leaf in jax.tree.leaves(sharded))


def _put_batch(mesh, *arrays):
    return [jax.device_put(a, shd.batch_sharding(mesh, a.ndim)) for a in arrays]


def test_sharded_forward_equals_unsharded(model, mesh):
    config, params, sharded, ckpt = model
    ids, mask = _batch()
    forward = jax.jit(lambda p, x, m: Decoder(config).apply({"params": p}, x, mask=m)[0])
    single = np.asarray(forward(params, ids, mask))
    ids_s, mask_s = _put_batch(mesh, ids, mask)
    assert ids_s.sharding.spec == P(("data", "fsdp"), None)
    out = forward(sharded, ids_s, mask_s)
    assert len(out.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(out), single, atol=1e-5, rtol=0)
    # And both are right, at real (non-padding) positions.
    oracle = numpy_llm.forward(fixtures.load_hf_weights(ckpt), fixtures.load_hf_config(ckpt), ids=ids, mask=mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(single[real], oracle[real], atol=1e-4, rtol=0)


def test_sharded_cached_decoding_equals_unsharded(model, mesh):
    """Prefill of the padded batch into a KV cache, then one decode step: sharded == single device == oracle."""
    config, params, sharded, ckpt = model
    ids, mask = _batch()
    batch, max_len = ids.shape[0], T + 2

    @jax.jit
    def prefill_and_step(p, x, m, cache):
        dec = Decoder(config)
        logits, cache = dec.apply({"params": p}, x, mask=m, cache=cache)
        nxt = jnp.argmax(logits[:, -1], axis=-1)[:, None]
        step_logits, cache = dec.apply({"params": p}, nxt, mask=jnp.ones_like(nxt), cache=cache)
        return logits, nxt, step_logits, cache

    single = jax.device_get(prefill_and_step(params, ids, mask, init_cache(config, batch, max_len)))

    cache_sharding = {
        "k": NamedSharding(mesh, P(None, ("data", "fsdp"))),
        "v": NamedSharding(mesh, P(None, ("data", "fsdp"))),
        "positions": shd.batch_sharding(mesh, 2),
        "end": NamedSharding(mesh, P()),
    }
    cache = jax.device_put(init_cache(config, batch, max_len), cache_sharding)
    out = prefill_and_step(sharded, *_put_batch(mesh, ids, mask), cache)
    assert len(out[3]["k"].sharding.device_set) == 8
    out = jax.device_get(out)

    np.testing.assert_allclose(out[0], single[0], atol=1e-5, rtol=0)  # prefill logits
    np.testing.assert_array_equal(out[1], single[1])  # greedy token
    np.testing.assert_allclose(out[2], single[2], atol=1e-5, rtol=0)  # decode-step logits
    for key in ("k", "v"):
        np.testing.assert_allclose(out[3][key], single[3][key], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(out[3]["positions"], single[3]["positions"])
    assert int(out[3]["end"]) == int(single[3]["end"]) == T + 1
    np.testing.assert_array_equal(out[3]["positions"][:, T], np.array(LENGTHS))  # each row's next position

    # The decode step sees the same context as a full recompute of the extended sequence.
    full_ids = np.concatenate([ids, single[1]], axis=1)
    full_mask = np.concatenate([mask, np.ones((batch, 1), np.int32)], axis=1)
    oracle = numpy_llm.forward(
        fixtures.load_hf_weights(ckpt), fixtures.load_hf_config(ckpt), ids=full_ids, mask=full_mask
    )
    np.testing.assert_allclose(single[2][:, 0], oracle[:, -1], atol=1e-4, rtol=0)


def test_int8_model_shards_by_the_same_rules(model, mesh):
    """Quantizing sharded params keeps them sharded (scales along their kernel's output axes); forward == one device."""
    config, params, sharded, _ = model
    qconfig, qparams = quantize_int8(config, params)
    _, q_sharded = quantize_int8(config, sharded)
    want = shd.logical_shardings(abstract_params(qconfig), mesh)
    assert q_sharded["layers"]["mlp"]["gate_kernel"].sharding.spec == P(None, "fsdp", "tensor")
    assert want["layers"]["mlp"]["gate_kernel_scale"].spec == P(None, "tensor")
    for got, expected in zip(jax.tree.leaves(q_sharded), jax.tree.leaves(qparams)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    q_sharded = jax.device_put(q_sharded, want)
    ids, mask = _batch()
    forward = jax.jit(lambda p, x, m: Decoder(qconfig).apply({"params": p}, x, mask=m)[0])
    single = np.asarray(forward(qparams, ids, mask))
    out = forward(q_sharded, *_put_batch(mesh, ids, mask))
    assert len(out.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(out), single, atol=1e-4, rtol=0)
