"""Backbone resolution: offline alias, local folders, hub names (through a local hub cache stand-in), errors."""

import json
import os
import subprocess
import sys

import pytest

from hadskip.modeling.backbone import build_gated, resolve
from hadskip.errors import HadSkipError
from hadskip.testing import hub_cache_standin, tiny_backbone_dir


def test_local_folder_bert_and_roberta(tmp_path):
    for arch in ("bert", "roberta"):
        folder = tiny_backbone_dir(tmp_path / arch, arch)
        model, tok = build_gated(str(folder), num_labels=3)
        assert model.config.model_type == arch and model.config.num_labels == 3
        assert tok.is_fast


@pytest.mark.parametrize("name, arch", [
    ("bert-base-uncased", "bert"), ("distilbert-base-uncased", "distilbert"),
    ("google/electra-small-discriminator", "electra"), ("microsoft/deberta-v3-small", "deberta-v2"),
    ("answerdotai/ModernBERT-base", "modernbert"), ("FacebookAI/roberta-base", "roberta"),
])
def test_hub_name_through_the_hub_cache(tmp_path, name, arch):
    """A hub name goes to transformers' hub loading, for every family; a hub cache laid out like a real download
    stands in for the network (HF_HUB_OFFLINE makes any real network call fail loudly instead). A subprocess,
    because the hub settings are read when transformers is imported."""
    src = tiny_backbone_dir(tmp_path / "src", arch)
    cache = tmp_path / "hub"
    hub_cache_standin(cache, name, src)
    code = ("from hadskip.modeling.backbone import build_gated, resolve\n"
            f"assert resolve({name!r}) == {name!r}\n"
            f"m, _ = build_gated({name!r}, num_labels=2)\n"
            "print(m.config.backbone, m.config.model_type, m.num_layers)\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "home"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from hadskip.testing import tiny_model

    assert proc.stdout.split() == [name, tiny_model(arch)[0].config.model_type,
                                   str(tiny_model(arch)[0].num_layers)]


def test_unknown_name_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(HadSkipError, match="unknown backbone 'no-such-model-xyz'"):
        build_gated("no-such-model-xyz", 2)
    with pytest.raises(HadSkipError, match="does not exist"):
        resolve("./missing/folder")


def test_non_bert_architecture_is_refused(tmp_path):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2, "n_embd": 32,
                                                    "n_head": 2, "vocab_size": 100}))
    with pytest.raises(HadSkipError, match="'gpt2' model; hadskip supports the encoder model types bert, "):
        build_gated(str(folder), 2)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HadSkipError, match="no config.json"):
        resolve(str(empty))


def test_offline_minilm_alias_resolves_to_the_wheel_folder():
    pytest.importorskip("transformers")
    path = resolve("minilm-l6")
    cfg = json.loads(open(f"{path}/config.json").read())
    assert cfg["num_hidden_layers"] == 6 and cfg["hidden_size"] == 384
