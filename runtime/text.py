"""Texts -> token ids with the model dir's tokenizer.json (tokenizers library; no transformers).

Each input is truncated to max_seq_len (and says so); padding is per batch, right-sided, to the longest row,
done by `pad_batch` after `predict` has sorted the inputs by length.
Not included: stride/sliding windows over long texts (a truncated input is classified on its first tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from tokenizers import Tokenizer

from hadskip.errors import HadSkipError

TextInput = Union[str, tuple[str, str]]
# model dirs exported before the manifest recorded backbone.token_types: these were the only types without them
_LEGACY_NO_TOKEN_TYPES = ("roberta", "xlm-roberta", "camembert")


def manifest_token_types(backbone: dict) -> bool:
    """Whether the model reads the tokenizer's token types (1 on a pair's second text), from the manifest's
    backbone facts: `token_types`, which the exporter writes from the encoder family's rule
    (hadskip.families). Model dirs from before that field: the rule they were exported under (no token types
    for a type vocabulary under 2 or the RoBERTa types; None, not recorded, counts as BERT's two)."""
    if isinstance(backbone.get("token_types"), bool):
        return backbone["token_types"]
    n = backbone.get("type_vocab_size")
    return backbone.get("model_type") not in _LEGACY_NO_TOKEN_TYPES and not (isinstance(n, int) and n < 2)


@dataclass
class Encoded:
    """Token ids of N inputs, unpadded."""

    ids: list[np.ndarray]  # N x (n_i,) int64
    type_ids: list[np.ndarray]  # N x (n_i,) int64
    truncated: np.ndarray  # (N,) bool: the input was longer than max_seq_len

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))


class TextEncoder:
    """Wraps tokenizers.Tokenizer with the model's truncation and padding rules."""

    def __init__(self, tokenizer_file: str | Path, max_seq_len: int, pad_token_id: int | None = None,
                 zero_token_types: bool = False):
        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # tokenizers raises a bare Exception for unreadable files
            raise HadSkipError(f"cannot read tokenizer {tokenizer_file}: {exc}") from exc
        self.max_seq_len = int(max_seq_len)
        padding = self.tokenizer.padding or {}
        self.tokenizer.no_padding()  # padding is ours: per batch, after sorting by length, always on the right
        trunc = self.tokenizer.truncation or {}  # keep the exported strategy and side; the length is the model's
        self.tokenizer.enable_truncation(self.max_seq_len, strategy=trunc.get("strategy", "longest_first"),
                                         direction=trunc.get("direction", "right"))
        if pad_token_id is None:
            pad_token_id = padding.get("pad_id")
        if pad_token_id is None:
            pad_token_id = next((i for t in ("[PAD]", "<pad>") if (i := self.tokenizer.token_to_id(t)) is not None),
                                0)
        self.pad_token_id = int(pad_token_id)
        self.zero_token_types = zero_token_types

    def encode(self, inputs: Sequence[TextInput]) -> Encoded:
        batch = [_check_input(x, n) for n, x in enumerate(inputs)]
        encs = self.tokenizer.encode_batch(batch) if batch else []
        ids = [np.asarray(e.ids, dtype=np.int64) for e in encs]
        types = [np.zeros(len(e.ids), dtype=np.int64) if self.zero_token_types
                 else np.asarray(e.type_ids, dtype=np.int64) for e in encs]
        truncated = np.array([bool(e.overflowing) for e in encs], dtype=bool)
        return Encoded(ids, types, truncated)

    def pad_batch(self, enc: Encoded, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input_ids, attention_mask, token_type_ids), each (B, T) int64, right-padded to the longest row."""
        t = max(1, max(len(enc.ids[r]) for r in rows))
        ids = np.full((len(rows), t), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(rows), t), dtype=np.int64)
        types = np.zeros((len(rows), t), dtype=np.int64)
        for j, r in enumerate(rows):
            n = len(enc.ids[r])
            ids[j, :n], types[j, :n], mask[j, :n] = enc.ids[r], enc.type_ids[r], 1
        return ids, mask, types


def _check_input(x, n: int):
    if isinstance(x, str):
        return x
    if isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(s, str) for s in x):
        return tuple(x)
    raise HadSkipError(f"input {n} must be a string or a (text, text_pair) pair of strings, got {type(x).__name__}")
