"""Text <-> token ids for a decoder checkpoint folder (torch-free; transformers only loads tokenizer files)."""

import os
from collections.abc import Sequence
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

# End-of-turn / end-of-text tokens of common chat formats; generation stops on whichever the vocab has.
_STOP_TOKENS = ("<|im_end|>", "<end_of_turn>", "<eos>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>")


class Tokenizer:
    """Text <-> ids for a decoder checkpoint folder; wraps transformers.AutoTokenizer (torch-free)."""

    def __init__(self, hf: PreTrainedTokenizerBase) -> None:
        self._hf = hf
        self.bos_id: int | None = hf.bos_token_id
        # The post-processor (tokenizer.json) decides BOS; an empty text shows whether it adds one.
        self._adds_bos = self.bos_id is not None and hf("")["input_ids"][:1] == [self.bos_id]
        eos = hf.eos_token_id
        self.pad_id: int = next((i for i in (hf.pad_token_id, eos) if i is not None), 0)
        self.vocab_size: int = len(hf)
        vocab = hf.get_vocab()
        stops = ([eos] if eos is not None else []) + [vocab[t] for t in _STOP_TOKENS if t in vocab]
        self.stop_ids: tuple[int, ...] = tuple(dict.fromkeys(stops))

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> "Tokenizer":
        """Load tokenizer.json / tokenizer_config.json from a local folder (never the Hub)."""
        folder = Path(path)
        if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
            raise FileNotFoundError(f"{folder}: no tokenizer.json or tokenizer_config.json in this folder")
        return cls(AutoTokenizer.from_pretrained(folder, local_files_only=True))

    def _fix_bos(self, ids: list[int]) -> list[int]:
        # Text that already starts with the BOS string (e.g. a rendered Gemma chat prompt) must not get a second one.
        return ids[1:] if self._adds_bos and ids[1:2] == [self.bos_id] else ids

    def encode(self, text: str, *, bos: bool = True) -> list[int]:
        """Ids with BOS iff the model's tokenizer adds it, never doubled; `bos=False` for text that continues a
        sequence (a prompt segment after a soft slot, a training target): then no special token is added."""
        if not bos:
            return self._hf(text, add_special_tokens=False)["input_ids"]
        return self._fix_bos(self._hf(text)["input_ids"])

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` for many texts at once (the Rust backend runs them in parallel)."""
        texts = list(texts)
        return [self._fix_bos(ids) for ids in self._hf(texts)["input_ids"]] if texts else []

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @property
    def has_chat_template(self) -> bool:
        return self._hf.chat_template is not None

    def chat_prompt(self, user: str, system: str | None = None) -> str:
        """One-turn prompt rendered with the model's chat template, ending in the assistant's generation prompt."""
        if not self.has_chat_template:
            raise ValueError("this tokenizer has no chat template (a base model?); use plain text prompts")
        messages = ([{"role": "system", "content": system}] if system is not None else []) + [
            {"role": "user", "content": user}
        ]
        return self._hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
