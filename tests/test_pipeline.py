"""`hadskip.pipeline(model_dir)`: transformers' text-classification call and return shapes on the runtime.

The shapes are checked against transformers' own TextClassificationPipeline on a tiny classifier with the
same label names, input by input, not against a reading of its docs."""

from __future__ import annotations

import numpy as np
import pytest

import hadskip
from hadskip.errors import HadSkipError

PAIR = {"text": "the plot", "text_pair": "was dull"}
CALLS = [  # (inputs, call kwargs)
    ("a good movie", {}), (["a good movie", "bad"], {}), (PAIR, {}), ([PAIR, "fun"], {}), ([], {}),
    ("a good movie", {"top_k": 1}), ("a good movie", {"top_k": 2}), ("a good movie", {"top_k": None}),
    ("a good movie", {"top_k": 5}), ("a good movie", {"top_k": 0}), (["a good movie", "bad"], {"top_k": 1}),
    (["a good movie", PAIR], {"top_k": None}), (PAIR, {"top_k": 2}), ("", {}),
]


@pytest.fixture(scope="module")
def pipe(model_dir):
    with hadskip.pipeline(model_dir) as p:
        yield p


@pytest.fixture(scope="module")
def hf_pipe(rt):
    """transformers' pipeline on a tiny random classifier labelled like the model dir."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from hadskip.testing import tiny_model

    _, tokenizer = tiny_model("bert", 2, 0)
    torch.manual_seed(0)
    names = rt.labels
    cfg = transformers.BertConfig(vocab_size=len(tokenizer) + 8, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=16, num_labels=len(names),
                                  id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    model = transformers.BertForSequenceClassification(cfg).eval()
    return lambda **init: transformers.pipeline("text-classification", model=model, tokenizer=tokenizer,
                                                device="cpu", **init)


def shape(x):
    """The nesting of an answer with each {"label", "score"} dict reduced to a marker (labels and scores differ
    between the two models)."""
    if isinstance(x, dict):
        assert set(x) == {"label", "score"} and isinstance(x["label"], str) and isinstance(x["score"], float), x
        return "D"
    assert isinstance(x, list), type(x)
    return [shape(v) for v in x]


@pytest.mark.parametrize("inputs, kwargs", CALLS, ids=[f"{i}" for i in range(len(CALLS))])
def test_answers_have_transformers_shapes(pipe, hf_pipe, inputs, kwargs):
    assert shape(pipe(inputs, **kwargs)) == shape(hf_pipe()(inputs, **kwargs))


@pytest.mark.parametrize("inputs", ["a good movie", ["a good movie", PAIR]])
def test_top_k_given_to_the_pipeline_has_transformers_shapes(model_dir, hf_pipe, inputs):
    with hadskip.pipeline("text-classification", model=model_dir, top_k=None) as ours:
        assert shape(ours(inputs)) == shape(hf_pipe(top_k=None)(inputs))


def test_scores_and_labels_are_the_runtimes(pipe, rt):
    texts = ["a good movie", ("the plot", "was dull"), "fun " * 40]
    preds = rt.predict(texts)
    top = pipe([texts[0], {"text": "the plot", "text_pair": "was dull"}, texts[2]])
    assert [d["label"] for d in top] == preds.labels
    np.testing.assert_allclose([d["score"] for d in top], preds.probabilities.max(axis=1))
    every = pipe(texts, top_k=None)
    for answer, p in zip(every, preds.probabilities, strict=True):
        assert [d["label"] for d in answer] == [rt.labels[i] for i in np.argsort(-p, kind="stable")]
        assert [d["score"] for d in answer] == sorted((d["score"] for d in answer), reverse=True)
        assert {d["label"]: d["score"] for d in answer} == pytest.approx(dict(zip(rt.labels, p.tolist(), strict=True)))
    assert pipe("a good movie", top_k=1) == [every[0][0]]


def test_budget_passes_through(pipe, rt, monkeypatch):
    seen = []
    real = type(rt).predict

    def spy(self, inputs, batch_size=32, budget=None, allow_empty=False):
        seen.append(budget)
        return real(self, inputs, batch_size=batch_size, allow_empty=allow_empty)

    monkeypatch.setattr(type(rt), "predict", spy)
    pipe("a good movie", budget=1.5)
    pipe(["a", "b"])
    assert seen == [1.5, None]


def test_budget_reaches_the_dial(pipe):
    # the tiny model dir has no dial: a budget is refused by the runtime's dial check, in one line
    with pytest.raises(HadSkipError, match="dial"):
        pipe("a good movie", budget=1.0)


@pytest.mark.parametrize("inputs, pattern", [
    ({"text": "a", "txt_pair": "b"}, "a pair is"), ([["a", "b"]], "input 0 is a list"), (3, "inputs is a int"),
    ([{"text": "a", "text_pair": 2}], '"text_pair" must be a string'),
])
def test_bad_inputs_are_one_line_errors(pipe, inputs, pattern):
    with pytest.raises(HadSkipError, match=pattern):
        pipe(inputs)


@pytest.mark.parametrize("top_k", [-1, True, 1.5, "2"])
def test_bad_top_k(pipe, top_k):
    with pytest.raises(HadSkipError, match="top_k must be"):
        pipe("a", top_k=top_k)


def test_a_hub_name_not_in_the_offline_cache_is_one_line(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)  # tests/test_hub.py loads hub names from a cache
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(HadSkipError, match="someone/some-model is not in the hub cache") as info:
        hadskip.pipeline("someone/some-model")
    assert "\n" not in str(info.value)
    with pytest.raises(HadSkipError, match="does not exist"):
        hadskip.pipeline(tmp_path / "nope")
    with pytest.raises(HadSkipError, match="text-classification"):
        hadskip.pipeline("fill-mask", model=tmp_path)
