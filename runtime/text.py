"""Texts -> token ids with the model dir's tokenizer.json (tokenizers library; no transformers).

Each input is truncated to max_seq_len (and says so); padding is per batch, right-sided, to the longest row,
done by `pad_batch` after `predict` has sorted the inputs by length.

Bounded cost. The work per input is bounded by max_seq_len, not by the input's length: a text is never
tokenized whole. It is read up to a character budget, cut there, and tokenized without truncation; more is read
(the budget doubles) only while the tokens read so far cannot decide the result, and never more than
`max_chars` (default 64 x max_seq_len) characters per text. Truncation (the HF rule the model was trained with,
longest_first for pairs) is applied to those tokens here, and the special tokens come from the tokenizer's own
post-processor. The tokenizer's overflow windows are never built (for a pair they are every combination of the
windows of both texts: memory quadratic in the length).

Why a cut is safe (the tokens before it are the first tokens of the whole text), whatever the budget:
  1. the cut is at the start of a run of ' ', '\\t', '\\n', '\\r' when there is one in the second half of the
     window (else inside a word), and it is moved back until no added token (e.g. "[SEP]" typed in a text) could
     span it, so the text splits into the same added-token and plain segments as the whole text does;
  2. the tokens of the last word (pre-token) before the cut are dropped: a normalizer or pre-tokenizer that looks
     ahead (NFC composition, "strip accents", a byte-level regex's lookahead, a word cut in half) changes only
     the piece that touches the cut, and the model (WordPiece, BPE, Unigram) tokenizes each piece on its own;
  3. reading stops once such tokens decide the truncation (room = max_seq_len - special tokens): room + 1 of
     them for a text alone, about half the room for each text of a pair (see _undecided), so a text whose
     characters become many tokens needs no more reading, and one whose characters become none (runs of
     spaces, control or combining characters, a single giant word) is read until max_chars.
The property tests (tests/test_text_bounded.py) check this against full tokenization for WordPiece, byte-level
BPE and Unigram/Metaspace tokenizers over thousands of generated texts. "left" truncation mirrors all of it.

The result equals full tokenization + HF truncation of the inputs after cutting each text to `max_chars`
characters (at the start of a whitespace run in its second half when there is one), with one exception: when
both texts of a pair are over half the room and the room is odd, HF gives the odd token to the text with more
tokens, which only reading both whole would tell; when both have more than max_chars / 4 characters, the text
with more characters counts as the longer (on a tie, the second, as in HF). So such a pair of long texts may
differ from HF by one token at the end of one text.
`truncated` is true when tokens were dropped or when the max_chars cut dropped anything but whitespace.
`empty` is true when a text of the input has no tokens at all: it is empty, or the tokenizer's normalisation
drops all of it (whitespace, NUL, control or zero-width characters for WordPiece; which characters vanish
depends on the tokenizer, so only it can tell). Such an input would be classified as the special tokens alone;
`Runtime.predict` refuses it with EmptyTextError, as the server and `hadskip predict` refuse empty text.
Not included: stride/sliding windows over long texts (a truncated input is classified on its first tokens).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from tokenizers import Encoding, Tokenizer

from hadskip.errors import HadSkipError

TextInput = Union[str, tuple[str, str]]
STRATEGIES = ("longest_first", "only_first", "only_second")
CUT_SPACE = " \t\n\r"  # whitespace to every normalizer and pre-tokenizer of the BERT/RoBERTa families
CHARS_PER_TOKEN_CAP = 64  # max_chars = 64 x max_seq_len
FIRST_CHARS_PER_TOKEN = 8  # the first read of a text: 8 characters per token it may need to know
_TEXT = re.compile(r"\S")
# model dirs exported before the manifest recorded backbone.token_types: these were the only types without them
_LEGACY_NO_TOKEN_TYPES = ("roberta", "xlm-roberta", "camembert")


def manifest_token_types(backbone: dict) -> bool:
    """Whether the model reads the tokenizer's token types (1 on a pair's second text), from the manifest's
    backbone facts: `token_types`, which the exporter writes from the encoder family's rule
    (hadskip.modeling.families). Model dirs from before that field: the rule they were exported under (no token types
    for a type vocabulary under 2 or the RoBERTa types; None, not recorded, counts as BERT's two)."""
    if isinstance(backbone.get("token_types"), bool):
        return backbone["token_types"]
    n = backbone.get("type_vocab_size")
    return backbone.get("model_type") not in _LEGACY_NO_TOKEN_TYPES and not (isinstance(n, int) and n < 2)


class EmptyTextError(HadSkipError):
    """Inputs with a text that has no tokens (empty, or nothing left after the tokenizer's normalisation);
    `indices` lists them all (0-based, input order), so a caller serving many requests can refuse only those."""

    def __init__(self, indices: Sequence[int]):
        self.indices = [int(i) for i in indices]
        more = f" (and {len(self.indices) - 1} more)" if len(self.indices) > 1 else ""
        super().__init__(f"input {self.indices[0]} is empty text: no tokens after the tokenizer's normalisation "
                         f"(only whitespace, control or zero-width characters?){more}")


@dataclass
class Encoded:
    """Token ids of N inputs, unpadded."""

    ids: list[np.ndarray]  # N x (n_i,) int64
    type_ids: list[np.ndarray]  # N x (n_i,) int64
    truncated: np.ndarray  # (N,) bool: the input was longer than max_seq_len (or max_chars characters)
    empty: np.ndarray | None = None  # (N,) bool: a text of the input has no tokens (None: not recorded)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))


@dataclass
class _Read:
    """One text read up to a budget: `enc` holds the tokens of text[start:end] (no special tokens)."""

    text: str
    budget: int
    enc: Encoding | None = None
    start: int = 0
    end: int = 0
    size: int = 0  # tokens in the window
    whole: bool = False  # the window is all there is to read (the whole text, or its max_chars cut)
    dropped: bool = False  # the max_chars cut dropped non-whitespace text
    known: int = 0  # tokens of the window that are the first (right) / last (left) tokens of the whole text

    @property
    def count(self) -> int:
        """The exact token count when `whole`, else a lower bound (> room once settled)."""
        return self.size if self.whole else self.known


def longest_first(a: int, b: int, room: int) -> tuple[int, int]:
    """Tokens kept of a pair of lengths (a, b) in `room` tokens: the tokenizers library's longest_first rule
    (the shorter keeps what it can up to half; on a tie the second text keeps the odd token)."""
    if a + b <= room:
        return a, b
    swap = a > b
    n1, n2 = (b, a) if swap else (a, b)  # n1: the shorter
    n2 = n1 if n1 > room else max(n1, room - n1)
    if n1 + n2 > room:
        n1 = room // 2
        n2 = n1 + room % 2
    if swap:
        n1, n2 = n2, n1
    return min(a, n1), min(b, n2)


class TextEncoder:
    """Wraps tokenizers.Tokenizer with the model's truncation and padding rules, at a cost bounded by
    max_seq_len per input (see the module docstring)."""

    def __init__(self, tokenizer_file: str | Path, max_seq_len: int, pad_token_id: int | None = None,
                 zero_token_types: bool = False, max_chars: int | None = None):
        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # tokenizers raises a bare Exception for unreadable files
            raise HadSkipError(f"cannot read tokenizer {tokenizer_file}: {exc}") from exc
        self.max_seq_len = int(max_seq_len)
        padding = self.tokenizer.padding or {}
        self.tokenizer.no_padding()  # padding is ours: per batch, after sorting by length, always on the right
        trunc = self.tokenizer.truncation or {}  # keep the exported strategy and side; the length is the model's
        self.tokenizer.no_truncation()  # truncation is ours too: the library's builds overflow windows
        self.strategy = trunc.get("strategy", "longest_first")
        self.left = trunc.get("direction", "right") == "left"
        if self.strategy not in STRATEGIES:
            raise HadSkipError(f"tokenizer truncation strategy {self.strategy!r} is not one of {STRATEGIES}")
        self.room = {n: self.max_seq_len - self.tokenizer.num_special_tokens_to_add(n == 2) for n in (1, 2)}
        if min(self.room.values()) < 1:
            raise HadSkipError(f"max_seq_len {self.max_seq_len} leaves no room for text after the special tokens")
        self.max_chars = int(max_chars or CHARS_PER_TOKEN_CAP * self.max_seq_len)
        self.exact_chars = self.max_chars // 4  # pairs of texts up to this long follow HF to the token
        self.first_chars = {n: min(self.max_chars, FIRST_CHARS_PER_TOKEN * (self.room[n] // n + 2)) for n in (1, 2)}
        added = {t.content for t in self.tokenizer.get_added_tokens_decoder().values() if t.content}
        self.added = [re.compile(re.escape(t), re.IGNORECASE) for t in sorted(added)]
        self.added_len = max((len(t) for t in added), default=0)
        self.untyped_pairs = self.tokenizer.post_processor is None  # then the pair's tokens get type 1 from us
        if pad_token_id is None:
            pad_token_id = padding.get("pad_id")
        if pad_token_id is None:
            pad_token_id = next((i for t in ("[PAD]", "<pad>") if (i := self.tokenizer.token_to_id(t)) is not None),
                                0)
        self.pad_token_id = int(pad_token_id)
        self.zero_token_types = zero_token_types

    # -- encoding -------------------------------------------------------------------------------------------
    def encode(self, inputs: Sequence[TextInput]) -> Encoded:
        batch = [_check_input(x, n) for n, x in enumerate(inputs)]
        groups = [[_Read(t, self.first_chars[1]) for t in (x,)] if isinstance(x, str) else
                  [_Read(t, self.first_chars[2]) for t in x] for x in batch]
        windows = [self._window(r, n) for n, g in enumerate(groups) for r in g]
        if len(windows) > 8:  # the library's parallel batch costs more than it saves on a few texts
            encs = self.tokenizer.encode_batch(windows, add_special_tokens=False)
        else:
            encs = [self.tokenizer.encode(w, add_special_tokens=False) for w in windows]
        for r, e in zip((r for g in groups for r in g), encs, strict=True):
            self._take(r, e)
        ids, types, truncated, empty = [], [], [], []
        for n, g in enumerate(groups):
            while grow := self._undecided(g):
                for r in grow:
                    r.budget = self.max_chars if r.known == 0 else min(self.max_chars, 2 * r.budget)
                    self._take(r, self.tokenizer.encode(self._window(r, n), add_special_tokens=False))
            i, t, cut = self._assemble(g, n)
            ids.append(i)
            types.append(np.zeros_like(i) if self.zero_token_types else t)
            truncated.append(cut)
            empty.append(any(r.count == 0 for r in g))  # a text with no token is read whole (to max_chars)
        return Encoded(ids, types, np.array(truncated, dtype=bool), np.array(empty, dtype=bool))

    def _window(self, r: _Read, index: int) -> str:
        """The part of r.text to tokenize for r.budget characters: all of it, or up to a safe cut."""
        text, n = r.text, len(r.text)
        r.dropped = False
        if n <= r.budget:
            r.start, r.end, r.whole = 0, n, True
        else:
            p = self._cut(text, r.budget)
            r.start, r.end = (p, n) if self.left else (0, p)
            r.whole = r.budget >= self.max_chars
            if r.whole:  # the max_chars cut: what it drops is never read, only searched for non-whitespace
                r.dropped = (_TEXT.search(text, 0, p) if self.left else _TEXT.search(text, p)) is not None
        window = text[r.start:r.end]
        try:
            window.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate (e.g. from a JSON "\ud800" escape)
            raise HadSkipError(f"input {index} is not valid Unicode (a lone surrogate at character "
                               f"{r.start + exc.start})") from None
        return window

    def cap(self, text: str) -> str:
        """The part of `text` that is ever read: all of it up to max_chars characters, else its max_chars cut."""
        if len(text) <= self.max_chars:
            return text
        p = self._cut(text, self.max_chars)
        return text[p:] if self.left else text[:p]

    def _cut(self, text: str, budget: int) -> int:
        """Where to cut `text` (longer than budget) to keep at most `budget` characters: at the edge of the
        whitespace run nearest the far end of the kept window if that edge keeps over half of it, else exactly
        `budget` characters; then moved toward the kept side until no added token can span the cut.
        Right truncation keeps text[:p]; left keeps text[p:]."""
        n, half = len(text), budget // 2
        if self.left:
            w0 = n - budget - 1
            window = text[w0:]
            j = min((i for i in (window.find(c) for c in CUT_SPACE) if i >= 0), default=-1)
            p = w0 + j + len(window[j:]) - len(window[j:].lstrip(CUT_SPACE)) if j >= 0 else n
            if n - p <= half:
                p = n - budget
            while self.added and (span := self._added_across(text, p)):
                p = span[1]
            return p
        window = text[:budget + 1]
        p = max(window.rfind(c) for c in CUT_SPACE)
        if p > half:
            p = len(window[:p].rstrip(CUT_SPACE))  # the start of that run
        if p <= half:
            p = budget
        while self.added and (span := self._added_across(text, p)):
            p = span[0]
        return p

    def _added_across(self, text: str, p: int) -> tuple[int, int] | None:
        """(start, end) of an added token occurring across position p (start < p < end), if any.
        Case-insensitive, as added tokens may be matched after lowercasing."""
        lo, hi = max(0, p - self.added_len), p + self.added_len
        for rx in self.added:
            m = rx.search(text, lo, hi)
            while m is not None and m.start() < p:
                if m.end() > p:
                    return m.start(), m.end()
                m = rx.search(text, m.start() + 1, hi)
        return None

    def _take(self, r: _Read, enc: Encoding) -> None:
        """Keep the window's tokens; count those that are surely the whole text's (all but the last word)."""
        r.enc, r.size = enc, len(enc)
        if r.whole:
            r.known = r.size
            return
        words = enc.word_ids
        if not words:
            r.known = 0
            return
        edge = words[0] if self.left else words[-1]
        k = next((i for i, w in enumerate(words[::-1] if not self.left else words) if w != edge), len(words))
        r.known = len(words) - k

    def _undecided(self, g: list[_Read]) -> list[_Read]:
        """The texts of one input that must be read further before its truncation is known. A text not read
        whole has more than `known` tokens; the longest_first rule (see `longest_first`) then needs: for a text
        alone, known > room; for a pair, that both are cut and how much the shorter keeps: both known over
        half the room (they split it), or the whole one shorter than the other's known and their sum over the
        room. Where the room is odd the longer text keeps the odd token: a whole text and a longer cut one are
        read until the cut one is known to be longer, two cut texts until one is whole if it has at most
        exact_chars characters; for two longer ones see _keep."""
        room = self.room[len(g)]
        if len(g) == 1 or self.strategy != "longest_first":
            return [r for r in g if not r.whole and r.known <= room]
        a, b = g
        if a.whole and b.whole:
            return []
        if not a.whole and not b.whole:
            if 2 * min(a.known, b.known) <= room:
                return [r for r in g if 2 * r.known <= room]
            return [] if room % 2 == 0 else [r for r in g if len(r.text) <= self.exact_chars]  # else see _keep
        exact, bound = (a, b) if a.whole else (b, a)
        e, k = exact.count, bound.known
        if k + e <= room:  # maybe no truncation at all
            return [bound]
        if e < k:  # the whole one is the shorter: it keeps min(e, half the room), the other the rest
            return []
        if 2 * k > room and room % 2 == 0:  # both over half the room: they split it evenly
            return []
        return [bound]  # which one is shorter (or, for an odd room, longer) is not known yet

    def _keep(self, g: list[_Read], n: int) -> list[int]:
        room = self.room[len(g)]
        counts = [r.count for r in g]
        if len(g) == 1:
            return [min(counts[0], room)]
        a, b = counts
        if self.strategy == "longest_first":
            if not g[0].whole and not g[1].whole:  # both over the room: the one with more characters counts as
                a, b = room + 1 + int(len(g[0].text) > len(g[1].text)), room + 1  # the longer (module docstring)
            return list(longest_first(a, b, room))
        target = 0 if self.strategy == "only_first" else 1
        other = counts[1 - target]
        if a + b <= room:
            return counts
        if not g[1 - target].whole or other >= room:
            raise HadSkipError(f"input {n}: its {'second' if target == 0 else 'first'} text alone fills the "
                               f"{room} tokens ({self.strategy} truncation cuts only the other)")
        keep = [0, 0]
        keep[target], keep[1 - target] = room - other, other
        return keep

    def _assemble(self, g: list[_Read], n: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """Special tokens from the tokenizer's post-processor around the kept tokens of each text."""
        keep = self._keep(g, n)
        sizes = [r.size for r in g]
        cut = any(k < r.count or not r.whole or r.dropped for r, k in zip(g, keep, strict=True))
        out = self.tokenizer.post_process(g[0].enc, g[1].enc if len(g) == 2 else None, add_special_tokens=True)
        ids = np.asarray(out.ids, dtype=np.int64)
        types = np.asarray(out.type_ids, dtype=np.int64)
        if keep == sizes and not (self.untyped_pairs and len(g) == 2):  # nothing to drop: the common case
            return ids, types, cut
        special = np.asarray(out.special_tokens_mask, dtype=bool)
        content = np.flatnonzero(~special)
        if len(content) != sum(sizes):
            raise HadSkipError("the tokenizer's post-processor changed the text tokens; it is not supported")
        chosen = special.copy()
        at = 0
        for size, k in zip(sizes, keep, strict=True):
            pos = content[at:at + size]
            chosen[pos[size - k:] if self.left else pos[:k]] = True
            at += size
        if self.untyped_pairs and len(g) == 2:
            types[content[sizes[0]:]] = 1
        return ids[chosen], types[chosen], cut

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
