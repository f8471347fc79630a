"""Up-front training checks and the token-type rule (issue 9, items 8, 9 and 11).

- --max-len beyond the backbone's position table is refused before training, for BERT (positions 0..T-1)
  and RoBERTa (positions from padding_idx + 1), with one line and no run dir left behind;
- refused backbones and budgets beyond the layers leave no run dir behind;
- a backbone with a single token type trains on a pair task, and the runtime (torch and ONNX) encodes
  pairs for it the same way (every token type 0).
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from hadskip.modeling.backbone import check_max_len, max_tokens
from hadskip.modeling.checkpoint import read_info, write_info
from hadskip.cli.main import main
from hadskip.errors import HadSkipError
from hadskip.modeling.families import family
from hadskip.runtime.text import manifest_token_types
from hadskip.testing import tiny_backbone_dir, tiny_run, tiny_sentences, tiny_task_dir, tiny_tokenizer
from hadskip.training.config import HadSkipConfig, TrainConfig
from hadskip.training.finetune import finetune
from hadskip.training.stages import train_hadskip


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    torch.set_num_threads(1)
    return tmp_path_factory.mktemp("checks")


@pytest.fixture(scope="module")
def backbones(root):
    return {arch: tiny_backbone_dir(root / arch, arch) for arch in ("bert", "roberta")}


@pytest.fixture(scope="module")
def task(root):
    return tiny_task_dir(root / "task", n_train=16, n_eval=8)


def _ft(backbone, task, out, **kw):
    base = dict(backbone=str(backbone), task=str(task), out=str(out), max_len=32, batch_size=8, epochs=1,
                progress=False)
    return TrainConfig(**{**base, **kw})


def test_position_table_sizes():
    # the tiny backbones have 130 position rows and pad_token_id 0
    assert max_tokens({"model_type": "bert", "max_position_embeddings": 512}) == 512
    assert max_tokens({"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}) == 512
    assert max_tokens({"model_type": "xlm-roberta", "max_position_embeddings": 130, "pad_token_id": 0}) == 129
    check_max_len(512, {"model_type": "bert", "max_position_embeddings": 512}, "b")
    with pytest.raises(HadSkipError, match=r"padding_idx \+ 1 = 2\); use --max-len 512 or less"):
        check_max_len(513, {"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}, "r")


@pytest.mark.parametrize("arch, too_long", [("bert", 131), ("roberta", 130)])
def test_max_len_beyond_the_position_table_is_refused_before_training(backbones, task, root, arch, too_long,
                                                                       capsys):
    out = root / f"too-long-{arch}"
    with pytest.raises(HadSkipError, match=rf"--max-len {too_long} is more than backbone .* can take"):
        finetune(_ft(backbones[arch], task, out, max_len=too_long))
    assert not out.exists()
    hs = root / f"too-long-hs-{arch}"
    rc = main(["train", "--backbone", str(backbones[arch]), "--task", str(task), "--max-len", str(too_long),
               "--out", str(hs), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: --max-len"), err
    assert not hs.exists()


def test_refused_backbone_leaves_no_run_dir(root, task, capsys):
    gpt = root / "gpt2"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    for cmd in ("finetune", "train"):
        out = root / f"refused-{cmd}"
        assert main([cmd, "--backbone", str(gpt), "--task", str(task), "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is a 'gpt2' model" in err[0]
        assert not out.exists()


def test_impossible_budget_leaves_no_run_dir(root, backbones, task, capsys):
    teacher = tiny_run(root / "teacher", "bert")  # 3 layers
    write_info(teacher, replace(read_info(teacher), kind="finetune"))
    for extra in (["--teacher", str(teacher)], ["--backbone", str(backbones["bert"])]):
        out = root / f"budget-{len(extra[1])}"
        assert main(["train", *extra, "--task", str(task), "--budget", "4", "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["error: budget 4.0 is more than the backbone's 3 layers"]
        assert not out.exists()
    not_a_teacher = tiny_run(root / "hadskip-run", "bert")
    out = root / "wrong-teacher"
    with pytest.raises(HadSkipError, match="is a 'hadskip' run, not a finetune run"):
        train_hadskip(HadSkipConfig(teacher=str(not_a_teacher), task=str(task), out=str(out), progress=False))
    assert not out.exists()


# --- item 9: one token-type rule -----------------------------------------------------------------------------


def test_the_token_type_rule():
    def uses(model_type, n):
        return family(model_type).uses_token_types({} if n is None else {"type_vocab_size": n})

    assert uses("bert", 2) and uses("bert", None) and uses("electra", 2)
    assert not uses("bert", 1) and not uses("electra", 1)
    assert not uses("roberta", 1) and not uses("roberta", 2) and not uses("distilbert", None)
    # the runtime reads the exporter's answer; older manifests keep the rule they were exported under
    assert manifest_token_types({"model_type": "roberta", "token_types": True})
    assert not manifest_token_types({"model_type": "bert", "token_types": False})
    assert manifest_token_types({"model_type": "bert", "type_vocab_size": 2})
    assert manifest_token_types({"model_type": "bert"})
    assert not manifest_token_types({"model_type": "bert", "type_vocab_size": 1})
    assert not manifest_token_types({"model_type": "roberta", "type_vocab_size": 2})


def _single_type_backbone(path: Path) -> Path:
    from transformers import BertConfig, BertModel

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    hf = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=48, max_position_embeddings=64, type_vocab_size=1,
                              pad_token_id=tok.pad_token_id))
    hf.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _pair_task(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i, split in enumerate(("train", "dev", "test")):
        first, second = tiny_sentences(12, seed=i), tiny_sentences(12, seed=10 + i)
        with open(path / f"{split}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["text", "text_pair", "label"])
            w.writerows([a, b, int("good" in a)] for a, b in zip(first, second, strict=True))
    return path


def test_single_token_type_backbone_on_a_pair_task_trains_and_runs(root):
    from hadskip.export import export_model
    from hadskip.runtime import Runtime

    backbone = _single_type_backbone(root / "single-type")
    out = root / "single-type-run"
    finetune(_ft(backbone, _pair_task(root / "pairs"), out, batch_size=4))  # crashed: token type 1 of 1
    pairs = [("the plot was dull", "but the actor was good"), ("fun", "a great film")]
    with Runtime.load(out, backend="torch", device="cpu") as rt:
        torch_probs = rt.predict(pairs).probabilities
        assert all((t == 0).all() for t in rt.encode(pairs).type_ids)
    model_dir = export_model(out, root / "single-type-model", validate=False, progress=False).out_dir
    with Runtime.load(model_dir) as rt:
        np.testing.assert_allclose(rt.predict(pairs).probabilities, torch_probs, atol=1e-5)


def test_train_without_a_task_uses_its_teachers_task(root, backbones, task, capsys):
    """`hadskip train --teacher RUN` without --task trained on rotten-tomatoes whatever the teacher's task was
    (with two labels on both sides nothing complained): the teacher's task, folder and columns, is the default."""
    teacher = root / "own-task-teacher"
    finetune(_ft(backbones["bert"], task, teacher, epochs=0.5))
    out = root / "own-task-student"
    assert main(["train", "--teacher", str(teacher), "--budget", "2", "--stage2-epochs", "0.2", "--phase-epochs",
                 "0.2", "--final-phase-epochs", "0.2", "--batch-size", "8", "--out", str(out), "--quiet"]) == 0
    info = read_info(out)
    assert info.task["source"]["task"] == str(task) and info.task["name"] == read_info(teacher).task["name"]
    assert info.metrics["dev"] is not None
