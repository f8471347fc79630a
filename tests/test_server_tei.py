"""`serve-local --api tei`: text-embeddings-inference's /predict grammar, answers, errors, routes and /info, over
real HTTP on 127.0.0.1 (the helpers of test_server.py), and huggingface_hub's InferenceClient unchanged."""

from __future__ import annotations

import math

import pytest

from hadskip.runtime.serve import ServeConfig, create_app
from tests.test_server import Hooked, Served, serve

pytest.importorskip("uvicorn")

# TEI's own request examples (README.md "Sequence Classification"; docs/openapi.json PredictRequest/PredictInput
# descriptions: "a single string, a pair of strings or a batch of mixed single and pairs of strings"), at
# github.com/huggingface/text-embeddings-inference (commit 0d124dc). Each with the answer shape TEI gives:
# "single" -> [{"label", "score"}, ...]; "batch" -> one such list per input.
TEI_EXAMPLES = [
    ({"inputs": "I like you."}, "single", ["I like you."]),
    ({"inputs": "What is Deep Learning?"}, "single", ["What is Deep Learning?"]),
    ({"inputs": ["I like you.", "I love you."]}, "single", [("I like you.", "I love you.")]),
    ({"inputs": [["I like you."], ["I hate pineapples"]]}, "batch", ["I like you.", "I hate pineapples"]),
    ({"inputs": [["I like you."], ["I like you.", "I love you."]]}, "batch",
     ["I like you.", ("I like you.", "I love you.")]),
    ({"inputs": "I like you.", "truncate": False, "truncation_direction": "right", "raw_scores": False}, "single",
     ["I like you."]),
]


@pytest.fixture(scope="module")
def server(rt):
    class Passing(Hooked):  # passes the budget / max_layers the batcher sends
        def predict(self, rows, batch_size=32, **kw):
            return self.rt.predict(rows, batch_size=batch_size, **kw)

    app = create_app(ServeConfig(api="tei", max_inputs=4, graceful_timeout_s=5), lambda: Passing(rt), "tiny")
    with Served(app) as srv:
        yield srv


def expected(rt, rows, raw=False):
    preds = rt.predict(rows)
    out = []
    for n in range(len(preds)):
        scores = preds.logits[n] if raw else preds.probabilities[n]
        out.append(sorted(zip(rt.labels, (float(s) for s in scores), strict=True), key=lambda p: -p[1]))
    return out


def check(answer, want):
    assert [p["label"] for p in answer] == [label for label, _ in want]
    assert all(math.isclose(p["score"], s, rel_tol=1e-5, abs_tol=1e-6) for p, (_, s) in zip(answer, want, strict=True))
    assert set(answer[0]) == {"label", "score"}


@pytest.mark.parametrize("body,shape,rows", TEI_EXAMPLES)
@pytest.mark.parametrize("path", ["/predict", "/", "/invocations"])
def test_tei_examples_replayed(server, rt, body, shape, rows, path):
    r = server.client.post(path, json=body)
    assert r.status_code == 200, r.text
    want = expected(rt, rows)
    if shape == "single":
        check(r.json(), want[0])
    else:
        assert len(r.json()) == len(want)
        for got, w in zip(r.json(), want, strict=True):
            check(got, w)
    assert len(r.headers["x-hadskip-layers"].split(",")) == len(rows)


def test_raw_scores_are_logits(server, rt):
    r = server.client.post("/predict", json={"inputs": "I like you.", "raw_scores": True})
    assert r.status_code == 200
    check(r.json(), expected(rt, ["I like you."], raw=True)[0])


def test_unknown_fields_ignored_and_extras_opt_in(server, rt):
    r = server.client.post("/predict", json={"inputs": "I like you.", "parameters": {"top_k": 2}, "x": 1})
    assert r.status_code == 200
    cap = server.client.post("/predict", json={"inputs": "I like you.", "hadskip": {"max_layers": 0}})
    assert cap.status_code == 200 and cap.headers["x-hadskip-layers"] == "0"


def test_truncate(server, rt):
    long = " ".join(["word"] * (4 * rt.max_seq_len))
    r = server.client.post("/predict", json={"inputs": long})
    assert r.status_code == 422 and r.json()["error_type"] == "Validation"
    ok = server.client.post("/predict", json={"inputs": long, "truncate": True})
    assert ok.status_code == 200
    check(ok.json(), expected(rt, [long])[0])


@pytest.mark.parametrize("body,status,kind", [
    ({"inputs": []}, 422, "Validation"),
    ({"inputs": ["a", "b", "c"]}, 422, "Validation"),  # a list of strings is one text or one pair
    ({"inputs": [["a", "b", "c"]]}, 422, "Validation"),
    ({"inputs": [["a"]] * 5}, 422, "Validation"),  # over max_client_batch_size
    ({"inputs": "a", "truncation_direction": "up"}, 422, "Validation"),
    ({"inputs": "a", "raw_scores": "yes"}, 422, "Validation"),
    ({"text": "a"}, 422, "Validation"),
])
def test_tei_errors(server, body, status, kind):
    r = server.client.post("/predict", json=body)
    assert r.status_code == status and r.json()["error_type"] == kind and set(r.json()) == {"error", "error_type"}


def test_tei_routes_and_info(server, rt):
    for path in ("/", "/ping", "/health"):
        assert server.client.get(path).status_code == 200
    info = server.client.get("/info").json()
    for key in ("model_id", "model_dtype", "served_model_name", "max_concurrent_requests", "max_input_length",
                "max_batch_tokens", "max_client_batch_size", "auto_truncate", "tokenization_workers", "version"):
        assert key in info
    assert info["model_type"]["classifier"]["id2label"] == {str(n): x for n, x in enumerate(rt.labels)}
    assert info["max_input_length"] == rt.max_seq_len and info["max_client_batch_size"] == 4
    assert info["hadskip"]["num_layers"] == rt.num_layers


def test_inference_client_text_and_pair(server, rt, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants
    from huggingface_hub.utils import reset_sessions

    # a loopback server, not the hub: another test's offline mode (HF_HUB_OFFLINE, and the offline session it
    # left cached) must not refuse it
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    reset_sessions()
    client = hub.InferenceClient(base_url=server.url)
    top = client.text_classification("I like you.")
    want = expected(rt, ["I like you."])[0]
    assert top.label == want[0][0] and math.isclose(top.score, want[0][1], rel_tol=1e-5)
    pair = client.text_classification(["I like you.", "I love you."])  # TEI reads a 2-list as a pair
    want = expected(rt, [("I like you.", "I love you.")])[0]
    assert pair.label == want[0][0] and math.isclose(pair.score, want[0][1], rel_tol=1e-5)


def test_default_api_unchanged(rt):
    srv, _ = serve(rt)
    with srv:
        r = srv.client.post("/predict", json={"inputs": ["a", "b"]})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 2  # two texts, as before
        assert srv.client.post("/", json={"inputs": "a"}).status_code in (404, 405)
