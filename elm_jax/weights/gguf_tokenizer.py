"""Hugging Face tokenizer folder from a GGUF file's metadata, without torch.

`AutoTokenizer.from_pretrained(..., gguf_file=...)` imports torch, so we read the metadata with `gguf`
and hand it to transformers' torch-free `convert_gguf_tokenizer` (a private API; pinned by the tests).
"""

import os

import gguf
from tokenizers import pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

# GGUF `tokenizer.ggml.<key>` -> the name convert_gguf_tokenizer expects.
_TOKENIZER_KEYS = {
    "model": "tokenizer_type",
    "pre": "pre_tokenizer_type",
    "tokens": "tokens",
    "scores": "scores",
    "token_type": "token_type",
    "merges": "merges",
    "precompiled_charsmap": "precompiled_charsmap",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
    "unknown_token_id": "unk_token_id",
    "padding_token_id": "pad_token_id",
    "add_space_prefix": "add_prefix_space",
}
_SPECIAL_TOKENS = {
    "bos_token": "bos_token_id",
    "eos_token": "eos_token_id",
    "unk_token": "unk_token_id",
    "pad_token": "pad_token_id",
}


def save_gguf_tokenizer(reader: gguf.GGUFReader, out_dir: str | os.PathLike) -> None:
    """Write tokenizer.json + tokenizer_config.json (BOS rule and chat template included) to `out_dir`."""
    fields = reader.fields
    source = getattr(reader.data, "filename", "<GGUF>")
    for key in ("general.architecture", "tokenizer.ggml.model", "tokenizer.ggml.tokens"):
        if key not in fields:
            raise ValueError(f"{source}: GGUF metadata has no {key!r}, so no tokenizer can be built from it.")
    meta = {
        name: fields[f"tokenizer.ggml.{key}"].contents()
        for key, name in _TOKENIZER_KEYS.items()
        if f"tokenizer.ggml.{key}" in fields
    }
    backend, _ = convert_gguf_tokenizer(fields["general.architecture"].contents(), meta)
    if meta.get("pre_tokenizer_type") == "smollm":
        # The GGUF only names SmolLM's pre-tokenizer; its original tokenizer.json splits every digit first.
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )

    def flag(key: str, default: bool) -> bool:
        return bool(fields[key].contents()) if key in fields else default

    tokens = meta["tokens"]
    specials = {name: tokens[meta[key]] for name, key in _SPECIAL_TOKENS.items() if key in meta}
    chat_template = fields["tokenizer.chat_template"].contents() if "tokenizer.chat_template" in fields else None
    PreTrainedTokenizerFast(
        tokenizer_object=backend,
        # llama.cpp adds BOS to a sentencepiece ("llama") vocabulary whose file does not say otherwise.
        add_bos_token=flag("tokenizer.ggml.add_bos_token", meta["tokenizer_type"] == "llama"),
        add_eos_token=flag("tokenizer.ggml.add_eos_token", False),
        clean_up_tokenization_spaces=False,  # decode must give back the exact text
        chat_template=chat_template,
        **specials,
    ).save_pretrained(out_dir)
