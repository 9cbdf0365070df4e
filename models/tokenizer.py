"""Text tokenizer (HF `tokenizers`, from `tokenizer.json`) and the chat layout of lfm2-audio-model.md 4.1.

Each piece of a chat is tokenized separately with special-token strings parsed, exactly as the
reference's `ChatState.add_text` does, because BPE across a join can differ.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

__all__ = ["SPECIAL_TOKENS", "SpecialIds", "TextStream", "TextTokenizer", "build_byte_tokenizer",
           "write_tokenizer_files"]

# The low ids of the LFM2 vocabulary. The ids the model logic relies on (0, 1, 6, 7, 128, 130) are
# looked up by string at load time and checked, so a tokenizer that disagrees fails loudly.
SPECIAL_TOKENS: dict[int, str] = {
    0: "<|pad|>", 1: "<|startoftext|>", 2: "<|endoftext|>", 3: "<|fim_pre|>", 4: "<|fim_mid|>",
    5: "<|fim_suf|>", 6: "<|im_start|>", 7: "<|im_end|>", 8: "<|tool_list_start|>", 9: "<|tool_list_end|>",
    10: "<|tool_call_start|>", 11: "<|tool_call_end|>", 12: "<|tool_response_start|>",
    13: "<|tool_response_end|>", 128: "<|audio_start|>", 129: "<|text_start|>", 130: "<|text_end|>",
    131: "<|mixed_start|>", 132: "<|mixed_end|>",
}
_RESERVED_OFFSET = 10  # <|reserved_123|> is id 133


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    bos: int
    im_start: int
    im_end: int
    audio_start: int
    text_end: int


class TextTokenizer:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tok = tokenizer
        ids = {name: tokenizer.token_to_id(token) for name, token in (
            ("pad", "<|pad|>"), ("bos", "<|startoftext|>"), ("im_start", "<|im_start|>"),
            ("im_end", "<|im_end|>"), ("audio_start", "<|audio_start|>"), ("text_end", "<|text_end|>"))}
        missing = [name for name, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer.json lacks the LFM2-Audio special tokens {missing}")
        self.special = SpecialIds(**ids)
        # The generation loops compare against these ids literally (reference: 7, 128, 130).
        expected = SpecialIds(pad=0, bos=1, im_start=6, im_end=7, audio_start=128, text_end=130)
        if self.special != expected:
            raise ValueError(f"special token ids {self.special} differ from LFM2-Audio's {expected}")
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        # Function calls are written between these (LFM2's chat template); None if the vocabulary lacks them.
        start, end = tokenizer.token_to_id("<|tool_call_start|>"), tokenizer.token_to_id("<|tool_call_end|>")
        self.tool_call: tuple[int, int] | None = (start, end) if start is not None and end is not None else None

    @classmethod
    def from_dir(cls, directory: str | Path) -> TextTokenizer:
        return cls(Tokenizer.from_file(str(Path(directory) / "tokenizer.json")))

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], *, skip_special: bool = True) -> str:
        return self.tok.decode(ids, skip_special_tokens=skip_special)

    # Chat layout: <|startoftext|> then turns of <|im_start|>{role}\n ... <|im_end|>\n
    def start(self) -> list[int]:
        return self.encode("<|startoftext|>")

    def turn_start(self, role: str) -> list[int]:
        return self.encode(f"<|im_start|>{role}\n")

    def turn_end(self) -> list[int]:
        return self.encode("<|im_end|>\n")


class TextStream:
    """Turns generated ids into text deltas that always add up to the decode of all ids so far."""

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        # Trailing U+FFFD may be a character whose other bytes are still to come: hold it back. What
        # precedes it can no longer change.
        text = self.tokenizer.decode(self.ids).rstrip("\ufffd")
        delta, self.text = text[len(self.text):], max(text, self.text, key=len)
        return delta

    def flush(self) -> str:
        """Whatever is still held back, at the end of the stream."""
        text = self.tokenizer.decode(self.ids)
        delta, self.text = text[len(self.text):], text
        return delta


def build_byte_tokenizer(vocab_size: int = 512) -> Tokenizer:
    """A byte-level tokenizer with LFM2's special tokens at LFM2's ids: ids below 256 are special or
    reserved tokens, the 256 byte symbols follow, and any further ids are reserved tokens, so that
    every id of a random model decodes to something."""
    assert vocab_size >= 512
    byte_symbols = list(pre_tokenizers.ByteLevel.alphabet())
    byte_symbols.sort(key=lambda ch: _byte_of_symbol()[ch])
    vocab: dict[str, int] = {}
    for i in range(256):
        vocab[SPECIAL_TOKENS.get(i, f"<|reserved_{i - _RESERVED_OFFSET}|>")] = i
    for j, sym in enumerate(byte_symbols):
        vocab[sym] = 256 + j
    for i in range(512, vocab_size):
        vocab[f"<|reserved_{i - _RESERVED_OFFSET}|>"] = i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    specials = [t for t, i in vocab.items() if i < 256 or i >= 512]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tok


def _byte_of_symbol() -> dict[str, int]:
    # GPT-2's byte <-> printable-unicode table, which ByteLevel uses.
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def write_tokenizer_files(tok: Tokenizer, directory: str | Path) -> None:
    """tokenizer.json plus the small HF files that let `AutoTokenizer` (the reference) load it."""
    directory = Path(directory)
    tok.save(str(directory / "tokenizer.json"))
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|pad|>"}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 32768,
              "clean_up_tokenization_spaces": False, **special}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
