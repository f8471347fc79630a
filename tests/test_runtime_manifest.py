"""Issue 23: a real tiny model dir whose manifest, graphs or inputs are wrong gives one line, never a traceback
or a wrong answer: cross-checks of the manifest against the graphs and the tokenizer at load, empty-after-
normalisation text refused like empty text (Runtime.predict, `hadskip predict`, the server), and the CLI cases
of the attack run (`hadskip predict`, `hadskip triton-repo`)."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_runtime_support import cached_model

from hadskip.cli.main import main
from hadskip.runtime import Runtime
from hadskip.runtime.manifest import MANIFEST, ManifestError, file_table
from hadskip.runtime import text as text_module


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return cached_model(tmp_path_factory, "bert", 0)[1]


@pytest.fixture(scope="module")
def roberta(tmp_path_factory) -> Path:
    return cached_model(tmp_path_factory, "roberta", 0)[1]


def copy_with(src: Path, dst: Path, edit=None, rehash: bool = False) -> Path:
    """A copy of model dir src with `edit(data, dir)` applied to its manifest (files re-hashed if asked)."""
    shutil.copytree(src, dst)
    data = json.loads((dst / MANIFEST).read_text())
    if edit is not None:
        edit(data, dst)
    if rehash:
        data["files"] = file_table(dst, list(data["files"]))
    (dst / MANIFEST).write_text(json.dumps(data))
    return dst


def swap_files(a: str, b: str):
    def edit(data, d):
        x, y = (d / a).read_bytes(), (d / b).read_bytes()
        (d / a).write_bytes(y)
        (d / b).write_bytes(x)
    return edit


def setter(path: str, value):
    def edit(data, d):
        *parents, last = path.split(".")
        for key in parents:
            data = data[key]
        data[last] = value
    return edit


def one_line_error(call) -> str:
    with pytest.raises(ManifestError) as err:
        call()
    assert "\n" not in str(err.value)
    return str(err.value)


# --- the graphs and the tokenizer against the manifest ---

@pytest.mark.parametrize("a,b,message", [
    ("embeddings.onnx", "head.onnx", r"the embeddings unit embeddings\.onnx takes inputs hidden; embeddings graphs "
                                     r"take input_ids"),
    ("layers/00.onnx", "gates/00.onnx", r"the layer unit layers/00\.onnx outputs gate_logits; layer graphs output "
                                        r"hidden_out"),
    ("head.onnx", "gates/01.onnx", r"the (head unit head\.onnx outputs gate_logits; head graphs output logits|gate "
                                   r"unit gates/01\.onnx outputs logits; gate graphs output gate_logits)"),
])
def test_a_graph_in_another_units_place_is_refused_at_load(bert, tmp_path, a, b, message):
    d = copy_with(bert, tmp_path / "m", swap_files(a, b), rehash=True)
    assert re.search(message, one_line_error(lambda: Runtime.load(d)))


def test_hidden_size_and_label_count_are_checked_against_the_graphs(bert, tmp_path):
    d = copy_with(bert, tmp_path / "hidden", setter("backbone.hidden_size", 64))
    assert "has output hidden of size 32 in its last axis; the manifest says 64" in one_line_error(
        lambda: Runtime.load(d))
    three = setter("labels", ["a", "b", "c"])
    d = copy_with(bert, tmp_path / "labels", lambda data, dd: (three(data, dd), setter("task.num_labels", 3)(data, dd)))
    assert "the head unit head.onnx has output logits of size 2 in its last axis; the manifest says 3" in (
        one_line_error(lambda: Runtime.load(d)))


def test_max_seq_len_beyond_the_position_table_is_refused_at_load(roberta, tmp_path):
    # RoBERTa's positions start at pad + 1: the table (max_position_embeddings) holds one row fewer tokens than
    # it has rows, which the manifest's own fields cannot tell; the embeddings graph does
    table = json.loads((roberta / MANIFEST).read_text())["backbone"]["max_position_embeddings"]
    d = copy_with(roberta, tmp_path / "over", setter("max_seq_len", table))
    message = one_line_error(lambda: Runtime.load(d))
    assert f"fails on max_seq_len {table} tokens" in message and "position_embeddings" in message
    ok = copy_with(roberta, tmp_path / "at", setter("max_seq_len", table - 1))
    with Runtime.load(ok) as rt:  # the longest input the table takes still runs
        assert rt.predict(["a " * 400])[0].tokens == table - 1


def test_token_types_on_a_model_without_a_type_table_are_refused(roberta, tmp_path):
    d = copy_with(roberta, tmp_path / "types", setter("backbone.token_types", True))
    assert "token_type_embeddings" in one_line_error(lambda: Runtime.load(d))


def test_a_tokenizer_larger_than_the_embedding_table_is_refused(bert, tmp_path):
    d = copy_with(bert, tmp_path / "vocab", setter("backbone.vocab_size", 50))
    assert re.search(r"tokenizer\.json gives token ids up to \d+, beyond backbone\.vocab_size 50",
                     one_line_error(lambda: Runtime.load(d)))


def test_a_pad_id_outside_the_vocabulary_is_refused(bert, tmp_path):
    vocab = json.loads((bert / MANIFEST).read_text())["backbone"]["vocab_size"]
    d = copy_with(bert, tmp_path / "pad", setter("backbone.pad_token_id", vocab))
    assert "pad_token_id" in one_line_error(lambda: Runtime.load(d))


def test_duplicate_labels_are_refused_not_merged(bert, tmp_path):
    d = copy_with(bert, tmp_path / "dup", setter("labels", ["same", "same"]))
    assert 'labels must be unique, "same" appears twice' in one_line_error(lambda: Runtime.load(d))


# --- empty text: no tokens after the tokenizer's normalisation ---

EMPTY = ["", "   ", "\x00\x00", "\u200b\u200b\u200b", "\x01\x02\x7f", "\u200b \x00\t\ufeff"]


@pytest.mark.parametrize("text", EMPTY, ids=[ascii(t) for t in EMPTY])
def test_text_without_tokens_is_refused_by_predict(bert, text):
    with Runtime.load(bert) as rt:
        with pytest.raises(text_module.EmptyTextError, match=r"input 1 is empty text") as err:
            rt.predict(["a good movie", text, ("fine", text), "ok"])
        assert err.value.indices == [1, 2] and "\n" not in str(err.value)
        assert rt.predict([text], allow_empty=True)[0].tokens == 2  # evaluation keeps a dataset as it is


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> dict:
    from test_text_bounded import BUILDERS, tokenizer_file

    from hadskip.runtime.text import TextEncoder

    tmp = str(tmp_path_factory.mktemp("tokenizers"))
    return {name: TextEncoder(tokenizer_file(name, tmp), 16, max_chars=64) for name in BUILDERS}


IGNORABLE = " \t\n\r\x00\x01\x1f\x7f\u200b\u200d\ufeff\u00ad\ufffd\u0301"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.sampled_from(IGNORABLE + "ab .,!"), max_size=90), name=st.sampled_from(
    ["wordpiece", "byte-bpe", "unigram", "no-post"]))
def test_empty_means_the_tokenizer_gives_no_token(encoders, text, name):
    # what vanishes is the tokenizer's call (byte-level BPE keeps control characters as tokens): the flag must
    # be what the tokenizer itself says about the text the encoder reads (all of it, or its max_chars cut)
    enc = encoders[name]
    got = enc.encode([text, ("ok", text)])
    oracle = len(enc.tokenizer.encode(enc.cap(text), add_special_tokens=False).ids) == 0
    assert got.empty.tolist() == [oracle, oracle]


def test_predict_cli_gives_empty_text_entries_for_text_without_tokens(bert, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("a good movie\n\u200b\u200b\n\x01\x02\nbad\n", encoding="utf-8")
    dst = tmp_path / "out.jsonl"
    assert main(["predict", str(bert), "-i", str(src), "-o", str(dst), "--quiet"]) == 0
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert out[1] == {"index": 1, "error": "empty text"} and out[2] == {"index": 2, "error": "empty text"}
    with Runtime.load(bert) as rt:
        want = rt.predict(["a good movie", "bad"])
    assert [out[0]["probs"], out[3]["probs"]] == [p.probs for p in want]


def test_the_server_answers_422_for_text_without_tokens(bert):
    pytest.importorskip("fastapi")
    from starlette.testclient import TestClient

    from hadskip.runtime.serve import ServeConfig, create_app

    rt = Runtime.load(bert)
    with TestClient(create_app(ServeConfig(), lambda: rt, model_name="tiny"), base_url="http://localhost") as client:
        deadline = time.monotonic() + 120  # the model loads in the background; a busy machine is slow at it
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.05)
        r = client.post("/predict", json={"inputs": ["a good movie", "\u200b\x01"]})
        assert r.status_code == 422 and "inputs[1] is empty" in r.json()["error"], r.text
        r = client.post("/predict", json={"inputs": ["a good movie"]})
        assert r.status_code == 200, r.text


# --- the CLI: one `error:` line and exit 2, never a traceback ---

def _no_files(data, d):
    del data["files"]


def _nested(data, d):
    data["tools"] = "NESTED"


CLI_CASES = [
    ("no-files", _no_files, False, r"lacks files"),
    ("duplicate-labels", setter("labels", ["x", "x"]), False, r"labels must be unique"),
    ("pad-out-of-vocab", setter("backbone.pad_token_id", 10**6), False, r"pad_token_id 1000000 is outside"),
    ("budget-out-of-range", setter("budget", 99), False, r"budget must be a number of layers within"),
    ("emb-is-head", swap_files("embeddings.onnx", "head.onnx"), True, r"embeddings unit embeddings\.onnx takes"),
    ("max-seq-len-over-table", setter("max_seq_len", 100_000), False, r"max_seq_len 100000 is over the limit"),
]
RAW_CASES = [  # (id, the text that replaces "NESTED" in the manifest, pattern)
    ("deep-nesting", "[" * 100_000 + "]" * 100_000, r"nests deeper than 64 levels"),
    ("huge-integer", "7" * 4301, r"an integer of 4301 digits"),
    ("budget-nan", None, r"budget must be a finite number, got nan"),
]


def _bad_dir(src: Path, root: Path, case: str) -> Path:
    d = root / case
    if d.exists():
        return d
    for name, edit, rehash, _ in CLI_CASES:
        if name == case:
            return copy_with(src, d, edit, rehash)
    name, raw, _ = next(c for c in RAW_CASES if c[0] == case)
    if raw is None:
        copy_with(src, d, setter("budget", float("nan")))  # json.dumps writes NaN
    else:
        copy_with(src, d, _nested)
        (d / MANIFEST).write_text((d / MANIFEST).read_text().replace('"NESTED"', raw))
    return d


# triton-repo checks the manifest and the hashes, not the graphs (Runtime.load in the Triton instance does)
ARGV = [(command, c[0], c[-1]) for c in CLI_CASES + RAW_CASES for command in ("predict", "triton-repo")
        if not (command == "triton-repo" and c[0] == "emb-is-head")]


@pytest.mark.parametrize("command,case,pattern", ARGV, ids=[f"{a[0]}-{a[1]}" for a in ARGV])
def test_cli_refuses_a_bad_model_dir_in_one_line(bert, tmp_path_factory, capsys, command, case, pattern):
    root = tmp_path_factory.getbasetemp() / "issue23-cli"
    d = _bad_dir(bert, root, case)
    txt = root / "in.txt"
    txt.write_text("a good movie\n")
    out = tmp_path_factory.mktemp("repo")
    argv = ["predict", str(d), "-i", str(txt)] if command == "predict" else ["triton-repo", str(d), "--out",
                                                                               str(out / "repo")]
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]), lines[0]


def test_triton_fails_only_the_request_with_text_without_tokens(bert, monkeypatch):
    # Triton's python backend module, faked: requests are {input name: (B, 1) bytes}; an execution batches them
    import numpy as np

    from test_runtime_support import fake_triton

    fake_triton(monkeypatch)
    from hadskip.triton.model import TritonPythonModel

    model = TritonPythonModel()
    model.runtime, model.max_batch, model.max_text_bytes = Runtime.load(bert), 8, 1 << 20

    def request(*texts):
        return {"TEXT": np.array([[t.encode()] for t in texts], dtype=object)}

    out = model.execute([request("a good movie", "bad"), request("fine", "\u200b\x01"), request("dull")])
    assert out[1].error is not None and out[1].error.code == "INVALID_ARG"
    assert "TEXT[1] is empty" in out[1].error.message
    want = model.runtime.predict(["a good movie", "bad", "dull"])
    assert out[0].error is None and out[2].error is None
    got = np.concatenate([out[0].outputs["PROBS"], out[2].outputs["PROBS"]])
    assert np.array_equal(got, want.probabilities)
