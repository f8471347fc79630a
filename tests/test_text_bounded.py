"""TextEncoder at bounded cost (runtime/text.py), against full tokenization + the tokenizers library's own
truncation, for three tokenizer families built here (WordPiece/BERT, byte-level BPE/RoBERTa, Unigram/Metaspace
like XLM-R; no download, no torch), both truncation sides, odd and even room, over thousands of generated
inputs (hypothesis): texts from fragments that stress the cut (whitespace runs, combining marks, control
characters, CJK, emoji, typed special tokens, giant words), long and short, alone and in pairs.

The oracle is a fresh Tokenizer with the library's truncation on the same texts, each first cut to what the
encoder reads (`TextEncoder.cap`; the cut itself is checked too). Plus: the encoder hands the tokenizer at most
3 x max_chars characters per text (the doubling reads) whatever the input's length, never enables the library's
truncation (whose overflow windows made a pair's cost quadratic), and answers bad inputs with one HadSkipError
line.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from hadskip.errors import HadSkipError
from hadskip.runtime.text import TextEncoder, longest_first

WORDS = ("good great fine fun bad awful dull boring movie film plot actor story scene the a an is was not very "
         "really quite and but of to it this that with for on in running jumped unbelievable").split()
FRAGMENTS = WORDS + [
    " ", " ", " ", "  ", "\t", "\n", "\r\n", "   \n ", "\u00a0", "\u3000", "\u2003", "\u200b", "\u0301", "e\u0301",
    "\u00e9", "\u0130", "\u00df", "\u4e2d\u6587", "\u4e2d", "\U0001f600", "\U0001f44d\U0001f3fd", "\x00", "\x0b",
    "\x1c", "\x7f", "\ufffd", ".", ",", "!", "?", "'s", "'", "-", "...", "##", "[SEP]", "[sep]", "[CLS]", "<mask>",
    "<s>", "</s>", "[MASK]x", "x[MASK]", "123", "4.5", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "supercalifragilisticexpialidocious", "\u0645\u0631\u062d\u0628\u0627", "\u05e9\u05dc\u05d5\u05dd",
]
CORPUS = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] + ["".join(FRAGMENTS) * 2]


def _wordpiece() -> Tokenizer:
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,!?'-")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(specials + WORDS + letters + ["##" + c for c in letters]))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=40))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.add_special_tokens(specials)
    return tok


def _byte_bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                      ("<s>", tok.token_to_id("<s>")))
    return tok


def _unigram() -> Tokenizer:
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" {2,}", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    specials = ["<pad>", "<unk>", "<s>", "</s>", "<mask>"]
    tok.train_from_iterator(CORPUS, trainers.UnigramTrainer(vocab_size=150, special_tokens=specials,
                                                            unk_token="<unk>", show_progress=False))
    s, e = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", s), ("</s>", e)])
    return tok


def _no_post_processor() -> Tokenizer:
    tok = _byte_bpe()
    tok.post_processor = None
    return tok


BUILDERS = {"wordpiece": _wordpiece, "byte-bpe": _byte_bpe, "unigram": _unigram, "no-post": _no_post_processor}
# (tokenizer, max_seq_len, side, max_chars): odd and even room for single texts and pairs, both sides, and a
# small max_chars so that the cut at max_chars is reached by generated texts
CASES = [("wordpiece", 12, "right", 240), ("wordpiece", 15, "left", 300), ("byte-bpe", 13, "right", 260),
         ("byte-bpe", 16, "left", 320), ("unigram", 14, "right", 280), ("no-post", 11, "right", 220)]


@functools.lru_cache(maxsize=None)
def tokenizer_file(name: str, tmp: str) -> str:
    path = f"{tmp}/{name}.json"
    BUILDERS[name]().save(path)
    return path


@functools.lru_cache(maxsize=None)
def setup(case: tuple, tmp: str) -> tuple[TextEncoder, Tokenizer, Tokenizer]:
    """(encoder, oracle with the library's truncation, the same tokenizer without truncation)."""
    name, max_len, side, max_chars = case
    tok = Tokenizer.from_file(tokenizer_file(name, tmp))
    tok.enable_truncation(max_len, strategy="longest_first", direction=side)
    path = f"{tmp}/{name}-{side}.json"
    tok.save(path)
    enc = TextEncoder(path, max_len, max_chars=max_chars)
    oracle = Tokenizer.from_file(path)
    full = Tokenizer.from_file(path)
    full.no_truncation()
    return enc, oracle, full


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> str:
    """A folder for the tokenizers, all built here first (not inside a timed hypothesis example)."""
    path = str(tmp_path_factory.mktemp("tokenizers"))
    for case in CASES:
        setup(case, path)
    return path


texts = st.one_of(
    st.lists(st.sampled_from(FRAGMENTS), max_size=60).map("".join),
    st.lists(st.sampled_from(FRAGMENTS), max_size=200).map(" ".join),
    st.builds(lambda f, k, g: f * k + g, st.sampled_from(FRAGMENTS), st.integers(1, 300),
              st.lists(st.sampled_from(WORDS), max_size=30).map(" ".join)),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=300),
)
inputs = st.one_of(texts, st.tuples(texts, texts))
PROPERTY = settings(max_examples=300, deadline=2000, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def select(whole, keep: list[int], left: bool) -> tuple[list[int], list[int]]:
    """HF truncation applied to a full (untruncated) encoding: keep[s] tokens of sequence s, from its start
    (right truncation) or its end (left), and every special token."""
    seq = np.array([-1 if s is None else s for s in whole.sequence_ids])
    rank = np.zeros(len(seq), dtype=int)
    for s in (0, 1):
        where = np.flatnonzero(seq == s)
        rank[where] = np.arange(len(where))[::-1] if left else np.arange(len(where))
    chosen = seq == -1
    for s, k in enumerate(keep):
        chosen |= (seq == s) & (rank < k)
    return np.asarray(whole.ids)[chosen].tolist(), np.asarray(whole.type_ids)[chosen].tolist()


def check_one(case, tmp, x) -> None:
    enc, oracle, full = setup(case, tmp)
    sides = [x] if isinstance(x, str) else list(x)
    capped = [enc.cap(t) for t in sides]
    for t, c in zip(sides, capped, strict=True):  # the cut: a prefix (suffix) of at most max_chars characters
        assert len(c) <= enc.max_chars and (t.startswith(c) if not enc.left else t.endswith(c))
        assert c == t or len(c) > enc.max_chars // 2 - enc.added_len
    got = enc.encode([x])
    ids, types, truncated = got.ids[0].tolist(), got.type_ids[0].tolist(), bool(got.truncated[0])
    assert len(ids) <= enc.max_seq_len and len(types) == len(ids)
    dropped_text = any(c != t and (t[len(c):] if not enc.left else t[:len(t) - len(c)]).strip()
                       for t, c in zip(sides, capped, strict=True))
    whole = full.encode(*capped)  # no truncation: linear cost, reliable sequence ids
    counts = [len(full.encode(c, add_special_tokens=False).ids) for c in capped]
    room = enc.room[len(sides)]
    keep = [min(counts[0], room)] if len(sides) == 1 else list(longest_first(*counts, room))
    want = select(whole, keep, enc.left)
    if max(counts) <= 40:  # the reference rule is the library's (its overflow windows are cheap at this size)
        lib = oracle.encode(*capped)
        assert want == (lib.ids, lib.type_ids)
    allowed = [want]
    if len(sides) == 2 and min(len(t) for t in sides) > enc.exact_chars and 2 * min(counts) > room:
        # two long texts over half the room: the text with more characters keeps the odd token
        allowed.append(select(whole, list(longest_first(room + 1 + int(len(sides[0]) > len(sides[1])),
                                                        room + 1, room)), enc.left))
    assert (ids, types) in allowed, (x, capped, ids, allowed)
    assert truncated == (sum(counts) > room or dropped_text)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
@PROPERTY
@given(x=inputs)
def test_matches_full_tokenization(tmp, case, x):
    check_one(case, tmp, x)


@pytest.mark.parametrize("case", CASES[:3], ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
@settings(max_examples=60, deadline=5000, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(x=st.one_of(st.tuples(texts, st.integers(20, 400)), st.tuples(texts, texts, st.integers(20, 400))))
def test_long_inputs_read_a_bounded_amount(tmp, case, x):
    """Inputs up to ~100k characters (a generated text repeated): the tokenizer sees at most 3 x max_chars
    characters per text, and the result still follows the oracle on what was read."""
    *parts, k = x
    sides = [p * k for p in parts]
    enc = setup(case, tmp)[0]
    spy = Spy(enc.tokenizer)
    enc.tokenizer = spy
    try:
        check_one(case, tmp, sides[0] if len(sides) == 1 else tuple(sides))
    finally:
        enc.tokenizer = spy.inner
    assert spy.chars <= 3 * enc.max_chars * len(sides)


class Spy:
    """Counts the characters handed to the tokenizer."""

    def __init__(self, inner):
        self.inner, self.chars = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, text, *args, **kw):
        self.chars += len(text) + (len(args[0]) if args and isinstance(args[0], str) else 0)
        return self.inner.encode(text, *args, **kw)

    def encode_batch(self, batch, *args, **kw):
        self.chars += sum(len(b) if isinstance(b, str) else sum(map(len, b)) for b in batch)
        return self.inner.encode_batch(batch, *args, **kw)


@pytest.mark.parametrize("x", [
    ("good movie " * 6000, "bad film " * 6000),  # 2 x 60k characters: 2 GB and seconds with overflow windows
    "fun " * 250_000,  # 1 MB
    " " * 500_000 + "good",  # characters that become no tokens
    "a" * 500_000,  # one giant word
    "\U0001f600" * 200_000,  # characters that become several byte-level tokens
])
def test_work_is_bounded_by_max_seq_len_not_the_input(tmp, x):
    for name in ("wordpiece", "byte-bpe"):
        tok = Tokenizer.from_file(tokenizer_file(name, tmp))
        tok.enable_truncation(16)
        path = f"{tmp}/{name}-bounded.json"
        tok.save(path)
        enc = TextEncoder(path, 16)  # the default max_chars: 64 x max_seq_len
        spy = Spy(enc.tokenizer)
        enc.tokenizer = spy
        got = enc.encode([x, "good movie"])
        sides = 1 if isinstance(x, str) else 2
        assert spy.chars <= 3 * enc.max_chars * sides + len("good movie")
        assert enc.tokenizer.truncation is None  # the library's truncation (and its overflow windows) is never on
        assert bool(got.truncated[0]) and not got.truncated[1] and len(got.ids[0]) <= 16


def test_truncation_for_normal_inputs_is_unchanged(tmp):
    """Hand-picked cases around the pair rule's edges (ties, odd room, one side short), against the library."""
    enc, oracle, _ = setup(("wordpiece", 12, "right", 768), tmp)  # room 9 for a pair, 10 for one text
    for a in range(0, 14):
        for b in range(0, 14):
            x = (" ".join(["good"] * a) or "x", " ".join(["bad"] * b) or "y")
            want = oracle.encode(*x)
            got = enc.encode([x])
            assert got.ids[0].tolist() == want.ids and got.type_ids[0].tolist() == want.type_ids, (a, b)
            assert bool(got.truncated[0]) == (max(a, 1) + max(b, 1) > 9)


@pytest.mark.parametrize("bad", [[3], [None], [("a",)], [("a", "b", "c")], [("a", 3)], [b"bytes"], ["a \ud800 b"],
                                 [("ok", "\udfff")]])
def test_bad_inputs_are_one_line_errors(tmp, bad):
    enc = setup(CASES[0], tmp)[0]
    with pytest.raises(HadSkipError) as info:
        enc.encode(bad)
    assert "\n" not in str(info.value) and str(info.value).startswith("input 0")


def test_an_impossible_max_seq_len_is_refused(tmp):
    with pytest.raises(HadSkipError, match="no room"):
        TextEncoder(tokenizer_file("wordpiece", tmp), 3)
