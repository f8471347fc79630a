"""`hadskip train --teacher` with a fine-tuned transformers sequence classifier (folder or hub name) as stage I:
its head, id2label and tokenizer kept, no re-fine-tuning (hadskip.modeling.hf_classifier,
hadskip.training.teacher_import)."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hadskip.cli.main import main
from hadskip.errors import HadSkipError
from hadskip.modeling.checkpoint import load_run, read_info
from hadskip.modeling.hf_classifier import load_hf_classifier
from hadskip.testing import hub_cache_standin, tiny_backbone_dir, tiny_model, tiny_sentences, tiny_task_dir
from hadskip.training.config import HadSkipConfig
from hadskip.training.stages import train_hadskip

NAMES = {0: "negative", 1: "positive"}


def hf_classifier_dir(path: Path, arch: str = "bert", num_labels: int = 2, id2label: dict | None = None,
                      seed: int = 1) -> Path:
    """A stand-in for a user's fine-tuned classifier: transformers' own XForSequenceClassification of a tiny
    config, every weight random (head included, large enough that its logits differ clearly), saved with
    save_pretrained next to its tokenizer."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    model, tokenizer = tiny_model(arch)
    d = dict(model.config.hf_config)
    d.pop("architectures", None)
    config = AutoConfig.for_model(d.pop("model_type"), **d)
    config.num_labels = num_labels
    if id2label is not None:
        config.id2label, config.label2id = dict(id2label), {v: k for k, v in id2label.items()}
    torch.manual_seed(seed)
    hf = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.3)
    hf.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _reference_logits(folder, texts, pairs=None):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    hf = AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok(texts, pairs, padding=True, return_tensors="pt")
    takes = inspect.signature(hf.forward).parameters
    with torch.no_grad():
        return enc, hf(**{k: v for k, v in enc.items() if k in takes}).logits


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "modernbert"])
def test_imported_logits_equal_transformers_classifier(tmp_path, arch):
    folder = hf_classifier_dir(tmp_path / "clf", arch, num_labels=3)
    texts = tiny_sentences(6, 3)
    enc, ref = _reference_logits(folder, texts, tiny_sentences(6, 4) if arch == "bert" else None)
    model, tok = load_hf_classifier(str(folder))
    assert tok.is_fast and model.config.num_labels == 3
    with torch.no_grad():
        ours = model(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"), gates="off").logits
    assert ref.abs().max() > 0.1  # a head that says something
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_hub_name_through_the_hub_cache(tmp_path):
    """A hub name loads through transformers' hub loading; a hub cache laid out like a real download stands in
    for the network (HF_HUB_OFFLINE=1). A subprocess: the hub settings are read when transformers is imported."""
    name = "acme/tiny-sentiment"
    src = hf_classifier_dir(tmp_path / "src", "bert", id2label=NAMES)
    cache = tmp_path / "hub"
    hub_cache_standin(cache, name, src)
    code = ("import torch\n"
            "from hadskip.modeling.hf_classifier import classifier_location, load_hf_classifier\n"
            "from transformers import AutoModelForSequenceClassification\n"
            f"assert classifier_location({name!r}) == {name!r}\n"
            f"m, tok = load_hf_classifier({name!r})\n"
            f"hf = AutoModelForSequenceClassification.from_pretrained({name!r}, attn_implementation='eager').eval()\n"
            "enc = tok(['a good film', 'not fun at all really'], padding=True, return_tensors='pt')\n"
            "with torch.no_grad():\n"
            "    a = m(enc['input_ids'], enc['attention_mask'], enc['token_type_ids'], gates='off').logits\n"
            "    b = hf(**enc).logits\n"
            "torch.testing.assert_close(a, b, atol=1e-5, rtol=0)\n"
            "print(m.config.backbone, m.config.hf_config['id2label'])\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "home"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=180,
                          check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[0] == name and "positive" in proc.stdout


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """HF classifier folder (id2label negative/positive) as teacher -> train (tiny epochs) on a folder task with
    0/1 labels."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("hfteacher")
    clf = hf_classifier_dir(root / "clf", "bert", id2label=NAMES)
    task = tiny_task_dir(root / "task", n_train=32, n_eval=16)
    cfg = HadSkipConfig(task=str(task), teacher=str(clf), out=str(root / "run"), budget=2.0, max_len=32,
                        batch_size=16, stage2_epochs=0.5, phase_epochs=0.5, final_phase_epochs=0.5, progress=False)
    metrics = train_hadskip(cfg)
    return {"root": root, "clf": clf, "task": task, "run": root / "run", "metrics": metrics}


def test_chain_classifier_teacher_train_export_predict_labels_by_name(chain, tmp_path):
    run = chain["run"]
    info = read_info(run)
    assert info.kind == "hadskip" and info.budget == 2.0
    teacher_dir = run / "stages" / "teacher-import"
    assert Path(info.extra["teacher"]) == teacher_dir
    tinfo = read_info(teacher_dir)
    assert tinfo.kind == "finetune" and tinfo.extra["imported_from"] == str(chain["clf"])
    assert tinfo.metrics["epoch"] == 0  # imported, not fine-tuned
    # the teacher run holds the classifier unchanged (no re-fine-tuning)
    teacher, tok, _ = load_run(teacher_dir)
    enc, ref = _reference_logits(chain["clf"], tiny_sentences(5, 9))
    with torch.no_grad():
        got = teacher(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], gates="off").logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    done = json.loads((run / "progress.json").read_text())["done"]  # a recorded stage: --resume skips it
    assert done["teacher-import"] == str(teacher_dir) and "stage1" not in done

    from hadskip.runtime import Runtime
    from hadskip.runtime.manifest import load_manifest

    out = tmp_path / "model"
    assert main(["export", str(run), "-o", str(out), "--max-batch", "2", "--no-validate"]) == 0
    assert load_manifest(out).labels == ["negative", "positive"]
    with Runtime.load(out) as rt:
        preds = rt.predict(["a good film", "a dull boring plot"])
        assert set(preds.labels) <= {"negative", "positive"}
        assert list(preds[0].probs) == ["negative", "positive"]


def _cfg(tmp_path, **kw):
    base = dict(task=str(tiny_task_dir(tmp_path / "task", n_train=16, n_eval=8)), out=str(tmp_path / "run"),
                budget=2.0, max_len=32, batch_size=8, progress=False)
    base.update(kw)
    return HadSkipConfig(**base)


def test_no_task_with_a_classifier_teacher_is_one_line(tmp_path):
    clf = hf_classifier_dir(tmp_path / "clf")
    cfg = _cfg(tmp_path, teacher=str(clf))
    cfg.task = None
    with pytest.raises(HadSkipError, match="records no task: give --task") as err:
        train_hadskip(cfg)
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()


def test_label_count_mismatch_is_refused(tmp_path):
    clf = hf_classifier_dir(tmp_path / "clf", num_labels=3)
    with pytest.raises(HadSkipError, match="has 3 labels, task .* has 2"):
        train_hadskip(_cfg(tmp_path, teacher=str(clf)))


def test_plain_backbone_is_not_a_teacher(tmp_path):
    backbone = tiny_backbone_dir(tmp_path / "bb")
    with pytest.raises(HadSkipError, match="not a fine-tuned sequence classifier") as err:
        train_hadskip(_cfg(tmp_path, teacher=str(backbone)))
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()


def test_unsupported_family_is_refused_before_the_run_dir(tmp_path):
    folder = tmp_path / "albert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "albert",
                                                    "architectures": ["AlbertForSequenceClassification"]}))
    with pytest.raises(HadSkipError, match="shares one set of layer weights") as err:
        train_hadskip(_cfg(tmp_path, teacher=str(folder)))
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()


def test_max_len_beyond_the_classifier_positions(tmp_path):
    clf = hf_classifier_dir(tmp_path / "clf")
    with pytest.raises(HadSkipError, match="--max-len 4096 is more than"):
        train_hadskip(_cfg(tmp_path, teacher=str(clf), max_len=4096))
    assert not (tmp_path / "run").exists()


def test_cli_error_for_an_unknown_teacher(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    task = tiny_task_dir(tmp_path / "task", n_train=8, n_eval=4)
    code = main(["train", "--teacher", "no-such-user/no-such-model", "--task", str(task), "--out",
                 str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    from huggingface_hub.utils import reset_sessions

    reset_sessions()  # the HTTP session made in offline mode is cached: later tests must not inherit it
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --teacher no-such-user/no-such-model")
