"""`hadskip export --label-names` and where a model dir's label names come from (hadskip.export.labels)."""

from __future__ import annotations

import json

import pytest

from hadskip.cli.main import main
from hadskip.export.labels import resolve_labels
from hadskip.export.spec import ExportError
from hadskip.runtime import Runtime
from hadskip.runtime.manifest import load_manifest
from hadskip.testing import tiny_run


@pytest.fixture(scope="module")
def bare_run(tmp_path_factory):
    """A tiny run whose task has integer labels without names (a folder task with 0/1 labels)."""
    run = tiny_run(tmp_path_factory.mktemp("labels") / "run", "bert")
    info = json.loads((run / "run.json").read_text())
    info["task"]["label_names"] = []
    (run / "run.json").write_text(json.dumps(info))
    return run


def test_bare_labels_are_ids_without_the_flag(bare_run, tmp_path):
    assert main(["export", str(bare_run), "-o", str(tmp_path / "m"), "--max-batch", "2", "--no-validate"]) == 0
    assert load_manifest(tmp_path / "m").labels == ["0", "1"]


def test_label_names_name_the_labels_in_order(bare_run, tmp_path):
    out = tmp_path / "m"
    assert main(["export", str(bare_run), "-o", str(out), "--max-batch", "2", "--no-validate",
                 "--label-names", " negative, positive"]) == 0
    manifest = load_manifest(out)
    assert manifest.labels == ["negative", "positive"]
    assert manifest.export["labels_from"] == "--label-names"
    with Runtime.load(out) as rt:  # the runtime answers with the names, label 0 = "negative"
        preds = rt.predict(["a good film", "a bad one"])
        assert set(preds.labels) <= {"negative", "positive"}
        assert [p.label for p in preds] == [["negative", "positive"][k] for k in preds.label_ids]
        assert list(preds[0].probs) == ["negative", "positive"]


def test_reordering_the_tasks_own_names_is_refused(tmp_path, capsys):
    run = tiny_run(tmp_path / "run", "bert")  # its task names labels label0, label1
    assert main(["export", str(run), "-o", str(tmp_path / "m"), "--label-names", "label1,label0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reorders the task's own labels" in err[0]
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("given, pattern", [("a,b,c", "gives 3 names"), ("a,,b", "non-empty"), ("a,a", "twice"),
                                            (",", "non-empty"), ([], "non-empty")])
def test_bad_label_names(given, pattern):
    with pytest.raises(ExportError, match=pattern):
        resolve_labels({"label_names": []}, {}, 2, given)


def test_label_names_from_a_classifiers_id2label():
    clf = {"architectures": ["BertForSequenceClassification"], "id2label": {"1": "POSITIVE", "0": "NEGATIVE"}}
    assert resolve_labels({"label_names": None}, clf, 2) == (["NEGATIVE", "POSITIVE"], "id2label")
    # transformers' defaults, a bare encoder's config, or another label count say nothing
    assert resolve_labels({}, {**clf, "id2label": {"0": "LABEL_0", "1": "LABEL_1"}}, 2)[1] == "ids"
    assert resolve_labels({}, {**clf, "architectures": ["BertModel"]}, 2)[1] == "ids"
    assert resolve_labels({}, clf, 3) == (["0", "1", "2"], "ids")
    # the task's own names come first; the flag before both
    assert resolve_labels({"label_names": ["neg", "pos"]}, clf, 2) == (["neg", "pos"], "task")
    assert resolve_labels({"label_names": ["neg", "pos"]}, clf, 2, "bad,good") == (["bad", "good"], "--label-names")
