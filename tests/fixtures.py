"""Tiny random-weight checkpoints for fast tests: a Hugging Face folder, and the same model as a GGUF file.

The HF folder (config.json from the real transformers config classes, float32 safetensors, a byte-level BPE
tokenizer with a ChatML template) is what the loaders and the numpy oracle in `tests/reference` read. The GGUF
is written the way llama.cpp's `convert_hf_to_gguf.py` would write it, layout gotchas included, so GGUF
loaders can be tested against the HF weights without downloading anything.
"""

import json
import pathlib

import gguf
import numpy as np
import transformers
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2: pad, bos, eos
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# The tokenizer only knows the characters of these sentences (97 tokens leave no room for all 256 bytes).
TRAIN_TEXT = (
    "The capital of France is Paris.",
    "The cat sat on the mat, and the dog sat on the log.",
    "system\nYou are a helpful assistant.\nuser\nWhat is the capital of France?\nassistant\nIt is Paris!",
    "A movie about space travel; a film about astronauts; a recipe for lemon cake.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 2024.",
)
# Twelve short entity descriptions in the tiny tokenizers' alphabet, for catalogues of tiny end-to-end tests.
DESCRIPTIONS = (
    "a cat sat on the mat",
    "the dog sat on the log",
    "a film about astronauts",
    "a movie about space travel",
    "a recipe for lemon cake",
    "the capital of france is paris",
    "numbers one two three",
    "a helpful assistant",
    "the cat and the dog",
    "space travel to paris",
    "lemon cake for the dog",
    "astronauts sat on the log",
)

# rope_type -> the scaling entries of `rope_parameters` (llama3 values hit all three frequency bands at head_dim 8)
_ROPE_SCALING = {
    "default": {"rope_type": "default"},
    "linear": {"rope_type": "linear", "factor": 2.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
}
_DEFAULT_LAYERS = {"llama": 2, "gemma3": 6, "mistral": 2, "qwen2": 2, "qwen3": 2}  # gemma3: 5 sliding + 1 full
_LLAMA_LAYOUT_CONFIGS = {
    "llama": transformers.LlamaConfig,
    "mistral": transformers.MistralConfig,  # every layer slides when sliding_window is set
    "qwen2": transformers.Qwen2Config,  # q/k/v biases
    "qwen3": transformers.Qwen3Config,  # per-head q/k RMSNorm
}


def write_hf_checkpoint(
    out_dir: str | pathlib.Path,
    family: str,
    *,
    seed: int = 0,
    vocab: int = 97,
    hidden: int = 32,
    layers: int | None = None,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 8,
    mlp: int = 64,
    tie: bool = True,
    rope_type: str = "default",
    sharded: bool = False,
    **overrides,
) -> pathlib.Path:
    """Write a tiny random-weight HF checkpoint (`family` "llama", "mistral", "qwen2", "qwen3" or "gemma3") plus
    tokenizer; return the folder.

    `layers` defaults to 2 (6 for gemma3: layers 0-4 sliding, 5 full, the real Gemma 3 pattern); Mistral gets no
    sliding window unless `overrides` give one.
    Gemma 3 gets sliding_window 4 (so the window matters in short tests), query_pre_attn_scalar = 2 * head_dim
    (so a model that scales by head_dim is caught) and RoPE thetas 1e4 (sliding) / 1e6 (full); `rope_type`
    applies to Llama's RoPE and to Gemma's full-attention layers. `overrides` go to the config class last
    (e.g. layer_types, sliding_window, attn_logit_softcapping, final_logit_softcapping).
    Weights keep activations and logits O(1) (logit std ~1.7): projections N(0, 1/fan_in), norm scales near 1
    (stored near 0 for Gemma's `1 + w` layout), embeddings N(0, 0.15) and a final norm scale near 2. Larger
    embeddings make a random tied-head model mostly predict its input token, and greedy decoding then repeats
    one token, which would hide cache and position bugs.
    """
    if family not in _DEFAULT_LAYERS:
        raise ValueError(f"unknown family {family!r}")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gemma = family == "gemma3"
    layers = _DEFAULT_LAYERS[family] if layers is None else layers
    kwargs = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    rope = _ROPE_SCALING[rope_type]
    if gemma:
        kwargs.update(
            rms_norm_eps=1e-6,
            sliding_window=4,
            query_pre_attn_scalar=2 * head_dim,
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {**rope, "rope_theta": 1000000.0},
            },
        )
        config = transformers.Gemma3TextConfig(**{**kwargs, **overrides})
    else:
        kwargs.update(rms_norm_eps=1e-5, rope_parameters={**rope, "rope_theta": 10000.0})
        if family == "mistral":
            kwargs.update(sliding_window=None)
        config = _LLAMA_LAYOUT_CONFIGS[family](**{**kwargs, **overrides})
    config.save_pretrained(out)
    _write_tokenizer(out, vocab)
    weights = _random_weights(np.random.default_rng(seed), config, gemma)
    _save_weights(out, weights, sharded)
    return out


def _random_weights(rng: np.random.Generator, c: transformers.PretrainedConfig, gemma: bool) -> dict:
    def normal(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def dense(n_out, n_in):
        return normal((n_out, n_in), n_in**-0.5)

    def norm(n, scale=1.0):
        return normal((n,), 0.1) + np.float32(scale - 1.0 if gemma else scale)

    d, hd, f = c.hidden_size, c.head_dim, c.intermediate_size
    q_out, kv_out = c.num_attention_heads * hd, c.num_key_value_heads * hd
    w = {"model.embed_tokens.weight": normal((c.vocab_size, d), 0.15)}
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(d)
        w[p + "self_attn.q_proj.weight"] = dense(q_out, d)
        w[p + "self_attn.k_proj.weight"] = dense(kv_out, d)
        w[p + "self_attn.v_proj.weight"] = dense(kv_out, d)
        w[p + "self_attn.o_proj.weight"] = dense(d, q_out)
        w[p + "post_attention_layernorm.weight"] = norm(d)
        if c.model_type == "qwen2":  # drawn apart, so the other weights are the Llama fixture's of this seed
            biases = np.random.default_rng([i, 7])
            for name, n in (("q", q_out), ("k", kv_out), ("v", kv_out)):
                w[p + f"self_attn.{name}_proj.bias"] = (biases.standard_normal(n) * 0.1).astype(np.float32)
        if gemma or c.model_type == "qwen3":
            w[p + "self_attn.q_norm.weight"] = norm(hd)
            w[p + "self_attn.k_norm.weight"] = norm(hd)
        if gemma:
            w[p + "pre_feedforward_layernorm.weight"] = norm(d)
            w[p + "post_feedforward_layernorm.weight"] = norm(d)
        w[p + "mlp.gate_proj.weight"] = dense(f, d)
        w[p + "mlp.up_proj.weight"] = dense(f, d)
        w[p + "mlp.down_proj.weight"] = dense(d, f)
    w["model.norm.weight"] = norm(d, scale=2.0)
    if not c.tie_word_embeddings:
        w["lm_head.weight"] = normal((c.vocab_size, d), 0.15)
    return w


def _save_weights(out: pathlib.Path, weights: dict, sharded: bool) -> None:
    """One `model.safetensors`, or two shards plus the standard `model.safetensors.index.json`."""
    meta = {"format": "pt"}
    if not sharded:
        save_file(weights, str(out / "model.safetensors"), metadata=meta)
        return
    names = list(weights)
    files = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    halves = (names[: len(names) // 2], names[len(names) // 2 :])
    for file, part in zip(files, halves):
        save_file({n: weights[n] for n in part}, str(out / file), metadata=meta)
    index = {
        "metadata": {"total_size": sum(a.nbytes for a in weights.values())},
        "weight_map": {n: file for file, part in zip(files, halves) for n in part},
    }
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _write_tokenizer(out: pathlib.Path, vocab: int) -> None:
    """Byte-level BPE trained on TRAIN_TEXT to at most `vocab` tokens, saved as a transformers fast tokenizer."""
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    tk.train_from_iterator(TRAIN_TEXT, trainer)
    if tk.get_vocab_size() > vocab:
        raise ValueError(f"vocab={vocab} is smaller than the tokenizer's alphabet ({tk.get_vocab_size()} tokens)")
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token=SPECIAL_TOKENS[0],
        bos_token=SPECIAL_TOKENS[1],
        eos_token=SPECIAL_TOKENS[2],
        chat_template=CHAT_TEMPLATE,
    )
    fast.save_pretrained(out)


def load_hf_weights(hf_dir: str | pathlib.Path) -> dict[str, np.ndarray]:
    """All tensors of a HF folder (single `model.safetensors` or sharded with an index), by HF name."""
    d = pathlib.Path(hf_dir)
    index = d / "model.safetensors.index.json"
    if not index.exists():
        return load_file(str(d / "model.safetensors"))
    weights = {}
    for file in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        weights.update(load_file(str(d / file)))
    return weights


def load_hf_config(hf_dir: str | pathlib.Path) -> dict:
    """The HF config as a plain dict (transformers 5 keys, e.g. `rope_parameters`), as the numpy oracle takes it."""
    return transformers.AutoConfig.from_pretrained(str(hf_dir)).to_dict()


# HF per-layer module -> llama.cpp tensor name (models.md §2.3). Llama's `post_attention_layernorm` is its pre-MLP
# norm (ffn_norm); Gemma's is the post-attention sandwich norm (post_attention_norm).
_GGUF_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "post_attention_layernorm": "ffn_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_GGUF_GLOBAL_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def _gguf_name(hf_name: str, gemma: bool) -> str:
    base = hf_name.removesuffix(".weight")
    if base in _GGUF_GLOBAL_NAMES:
        return _GGUF_GLOBAL_NAMES[base] + ".weight"
    _, _, layer, module = base.split(".", 3)  # model.layers.{i}.{module}
    if gemma and module == "post_attention_layernorm":
        return f"blk.{layer}.post_attention_norm.weight"
    return f"blk.{layer}.{_GGUF_LAYER_NAMES[module]}.weight"


def _permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K row permutation for Llama (per head: rotate_half halves -> interleaved pairs).

    Inverse of models.md `unpermute_qk`: `w.reshape(n_head, hd//2, 2, in).swapaxes(1, 2).reshape(out, in)`.
    """
    n_out, n_in = w.shape
    return w.reshape(n_head, 2, n_out // n_head // 2, n_in).swapaxes(1, 2).reshape(n_out, n_in)


def _check_gguf_expressible(config: dict, gemma: bool) -> None:
    """Refuse checkpoints whose config a GGUF cannot carry, so loaders' hard-coded assumptions hold."""
    hd = config["head_dim"]
    if not gemma:
        if config["rope_parameters"].get("rope_type", "default") != "default":
            raise ValueError("only rope_type 'default' is written to GGUF")
        return
    n = config["num_hidden_layers"]
    real_pattern = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)]
    rope = config["rope_parameters"]
    scalar = config["hidden_size"] // config["num_attention_heads"] if n == 62 else hd  # as llama.cpp infers it
    problems = [
        config["layer_types"] != real_pattern and "layer_types must be every 6th layer full",
        rope["sliding_attention"].get("rope_theta") != 10000.0 and "sliding rope_theta must be 10000",
        any(r.get("rope_type", "default") != "default" for r in rope.values()) and "rope_type must be default",
        config["query_pre_attn_scalar"] != scalar and f"query_pre_attn_scalar must be {scalar} for {n} layers",
        (config.get("attn_logit_softcapping") or config.get("final_logit_softcapping")) and "no softcapping",
    ]
    problems = [p for p in problems if p]
    if problems:
        raise ValueError("gemma3 checkpoint not expressible as GGUF: " + "; ".join(problems))


def write_gguf_from_hf(hf_dir: str | pathlib.Path, out_path: str | pathlib.Path) -> pathlib.Path:
    """Write the HF checkpoint in `hf_dir` as a GGUF file the way llama.cpp's converter would; return the path.

    Tensor names follow models.md §2.3; everything is F32 except `token_embd.weight`, which is Q8_0 so loaders
    must dequantize (needs hidden % 32 == 0). The converter's layout changes are applied:
    - llama: rows of `attn_q`/`attn_k` permuted per head (`_permute_qk`; K uses head_count_kv heads);
    - gemma3: every norm weight stored as `1 + w` (GGUF norms multiply by the stored weight directly).
    Tokenizer metadata is byte-level BPE (`tokenizer.ggml.model` "gpt2", pre "gpt-2") for both architectures,
    with the ChatML template.

    Like real Gemma 3 GGUFs, a gemma3 file does NOT record what a loader must assume: layer i is full
    attention iff (i + 1) % 6 == 0 (others slide with `gemma3.attention.sliding_window`), sliding layers use
    RoPE base 10000 (`rope.freq_base` is the full layers' base), queries are scaled by key_length**-0.5, there
    is no logit softcapping, and embeddings are multiplied by sqrt(embedding_length). So only gemma3 checkpoints
    that satisfy these are accepted (e.g. `write_hf_checkpoint(d, "gemma3", query_pre_attn_scalar=8)`);
    anything else raises ValueError. For llama only rope_type "default" is supported.
    """
    config, weights = load_hf_config(hf_dir), load_hf_weights(hf_dir)
    gemma = config["model_type"] == "gemma3_text"
    arch = "gemma3" if gemma else "llama"
    _check_gguf_expressible(config, gemma)
    hd = config["head_dim"]

    out = pathlib.Path(out_path)
    w = gguf.GGUFWriter(str(out), arch)
    w.add_name(pathlib.Path(hf_dir).name)
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_block_count(config["num_hidden_layers"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config["num_key_value_heads"])
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    if gemma:
        w.add_rope_freq_base(config["rope_parameters"]["full_attention"]["rope_theta"])
        w.add_sliding_window(config["sliding_window"])
    else:
        w.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
        w.add_vocab_size(config["vocab_size"])
    _add_tokenizer(w, hf_dir, config["vocab_size"])

    for name, arr in weights.items():
        if gemma and arr.ndim == 1:  # every 1-D tensor is a norm weight
            arr = arr + np.float32(1.0)
        elif not gemma and name.endswith("q_proj.weight"):
            arr = _permute_qk(arr, config["num_attention_heads"])
        elif not gemma and name.endswith("k_proj.weight"):
            arr = _permute_qk(arr, config["num_key_value_heads"])
        if name == "model.embed_tokens.weight":
            qtype = gguf.GGMLQuantizationType.Q8_0
            w.add_tensor(_gguf_name(name, gemma), gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(_gguf_name(name, gemma), np.ascontiguousarray(arr, np.float32))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def _add_tokenizer(w: gguf.GGUFWriter, hf_dir: str | pathlib.Path, vocab_size: int) -> None:
    """GGUF tokenizer metadata from the HF tokenizer; ids the tokenizer lacks become `[PAD{i}]` UNUSED tokens."""
    tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    by_id = {i: t for t, i in model["vocab"].items()}
    special = set(tok.all_special_tokens)
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    types = [
        gguf.TokenType.UNUSED
        if i not in by_id
        else gguf.TokenType.CONTROL
        if by_id[i] in special
        else gguf.TokenType.NORMAL
        for i in range(vocab_size)
    ]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model["merges"]])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_add_bos_token(False)
    w.add_chat_template(tok.chat_template)


BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0-4


def write_bert_checkpoint(
    out_dir: str | pathlib.Path,
    *,
    seed: int = 0,
    vocab: int = 160,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    mlp: int = 64,
    max_positions: int = 64,
    max_seq_length: int | None = 32,
    pooling: str = "mean",
    normalize: bool = True,
    prefix: str = "",
    sentence_transformers: bool = True,
) -> pathlib.Path:
    """Write a tiny random-weight BERT sentence-transformer folder (what `SentenceTransformer.save` writes).

    config.json from transformers.BertConfig, `BertModel`-named float32 safetensors (`prefix` e.g. "bert."
    as BertFor* exports have), a lowercasing WordPiece tokenizer trained on TRAIN_TEXT, and, unless
    `sentence_transformers` is False, modules.json (Transformer -> Pooling [-> Normalize]), 1_Pooling/config.json
    with the legacy `pooling_mode_*` flags and sentence_bert_config.json (`max_seq_length`, omitted when None).
    Embeddings are N(0, 1) so token and position both matter after the embedding LayerNorm; projections are
    N(0, 1/fan_in) and LayerNorm weights near 1, so activations stay O(1) through the layers.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = transformers.BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=mlp,
        max_position_embeddings=max_positions,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        hidden_act="gelu",
        pad_token_id=0,
    )
    config.save_pretrained(out)
    _write_wordpiece_tokenizer(out, vocab)
    rng = np.random.default_rng(seed)

    def normal(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    w = {
        "embeddings.word_embeddings.weight": normal((vocab, hidden), 1.0),
        "embeddings.position_embeddings.weight": normal((max_positions, hidden), 1.0),
        "embeddings.token_type_embeddings.weight": normal((2, hidden), 1.0),
        "embeddings.LayerNorm.weight": 1.0 + normal((hidden,), 0.1),
        "embeddings.LayerNorm.bias": normal((hidden,), 0.1),
    }
    dense = {"attention.self.query": (hidden, hidden), "attention.self.key": (hidden, hidden)}
    dense.update({"attention.self.value": (hidden, hidden), "attention.output.dense": (hidden, hidden)})
    dense.update({"intermediate.dense": (mlp, hidden), "output.dense": (hidden, mlp)})
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name, (n_out, n_in) in dense.items():
            w[p + name + ".weight"] = normal((n_out, n_in), n_in**-0.5)
            w[p + name + ".bias"] = normal((n_out,), 0.1)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[p + norm + ".weight"] = 1.0 + normal((hidden,), 0.1)
            w[p + norm + ".bias"] = normal((hidden,), 0.1)
    w["pooler.dense.weight"] = normal((hidden, hidden), hidden**-0.5)  # unused by sentence-transformers
    w["pooler.dense.bias"] = normal((hidden,), 0.1)
    save_file({prefix + k: v for k, v in w.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})

    if sentence_transformers:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if normalize:
            modules.append(
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
            )
        (out / "modules.json").write_text(json.dumps(modules, indent=2))
        (out / "1_Pooling").mkdir(exist_ok=True)
        flags = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens", "mean": "pooling_mode_mean_tokens"}
        pooling_config = {"word_embedding_dimension": hidden} | {flag: mode == pooling for mode, flag in flags.items()}
        (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config, indent=2))
        sbert = {"do_lower_case": False} | ({} if max_seq_length is None else {"max_seq_length": max_seq_length})
        (out / "sentence_bert_config.json").write_text(json.dumps(sbert, indent=2))
    return out


def _write_wordpiece_tokenizer(out: pathlib.Path, vocab: int) -> None:
    """BERT-style uncased WordPiece trained on TRAIN_TEXT, `[CLS] $A [SEP]` template; a transformers fast tokenizer."""
    tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab, special_tokens=list(BERT_SPECIAL_TOKENS), show_progress=False)
    tk.train_from_iterator(TRAIN_TEXT, trainer)
    if tk.get_vocab_size() > vocab:
        raise ValueError(f"vocab={vocab} is smaller than the WordPiece alphabet ({tk.get_vocab_size()} tokens)")
    cls_id, sep_id = tk.token_to_id("[CLS]"), tk.token_to_id("[SEP]")
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    fast.save_pretrained(out)


def tiny_run(root: str | pathlib.Path) -> tuple[pathlib.Path, list[str]]:
    """(workdir, CLI arguments) for a job on a tiny LLM, a tiny encoder and a tiny default catalogue."""
    root = pathlib.Path(root)
    llm = write_hf_checkpoint(root / "llm", "llama", vocab=300)
    encoder = write_bert_checkpoint(root / "encoder")
    work = root / "run"
    return work, [
        f"--workdir={work}",
        f"--config.llm.checkpoint={llm}",
        f"--config.encoder.checkpoint={encoder}",
        "--config.data.synthetic.n_movies=120",
        "--config.data.synthetic.n_users=80",
        "--config.data.catalog.wals.rank=8",
        "--config.data.catalog.wals.iterations=3",
    ]


def tiny_elm(directory: str | pathlib.Path) -> tuple:
    """(ELM, params, 24 sequences) around a tiny random Llama written to `directory`: one 4-d semantic adapter,
    and targets that are a function of the vector (so a trained adapter can learn them)."""
    import jax

    from elm_jax.data.train_batches import TrainSequence
    from elm_jax.models.adapter import AdapterConfig
    from elm_jax.models.elm import ELM, ELMConfig, init_params
    from elm_jax.weights import hf

    path = write_hf_checkpoint(directory, "llama", seed=3)
    decoder = hf.load_config(path)
    model = ELM(ELMConfig(decoder, (("semantic", AdapterConfig(4, decoder.hidden_size, 16)),)))
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((24, 4)).astype(np.float32)
    params = init_params(model.config, hf.load_params(path, decoder), {"semantic": vectors}, jax.random.key(1))
    sequences = []
    for i, v in enumerate(vectors):
        target = [10 + int(v[0] > 0), 20 + int(v[1] > 0), 30 + (i % 3)]
        prompt = [1, 5, 6, 0, 7]
        soft = np.asarray([-1, -1, -1, 0, -1] + [-1] * 4, np.int32)
        sequences.append(TrainSequence(np.asarray(prompt + target + [2], np.int32), soft, len(prompt), (v,), (0,)))
    return model, jax.device_get(params), sequences


def greedy_by_recomputation(config, params, prompt_embeddings, mask, n: int) -> np.ndarray:
    """n greedy tokens by full forward passes over a fixed-length buffer (causal: the empty slots after a
    position do not reach it), so one program serves every step: what cached decoding must reproduce."""
    import jax
    import jax.numpy as jnp

    from elm_jax.models.decoder import Decoder

    model, (rows, t) = Decoder(config), mask.shape
    full_mask = np.concatenate([mask, np.ones((rows, n), mask.dtype)], axis=1)
    forward = jax.jit(lambda e: model.apply({"params": params}, embeddings=e, mask=full_mask)[0])
    embed = jax.jit(lambda ids: model.apply({"params": params}, ids, method=Decoder.embed))
    embeddings = jnp.pad(prompt_embeddings, ((0, 0), (0, n), (0, 0)))
    tokens = []
    for i in range(n):
        token = forward(embeddings)[:, t + i - 1].argmax(-1)
        tokens.append(np.asarray(token))
        embeddings = embeddings.at[:, t + i].set(embed(token[:, None])[:, 0])
    return np.stack(tokens, axis=1)
