"""Tiny random models and tasks for tests, benchmarks of the plumbing, and examples (needs torch).

`tiny_run(path, arch="bert")` writes a real run dir (random weights, a small WordPiece tokenizer built
in code) in well under a second, so parity tests over every supported encoder family (hadskip.modeling.families:
BERT, RoBERTa, ELECTRA with an embedding projection, DistilBERT, DeBERTa-v3-shaped, ModernBERT) need no download.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

WORDS = ("good great fine fun bad awful dull boring movie film plot actor story scene the a an is was "
         "not very really quite and but of to it this that with for on in").split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# name -> (hidden, heads, layers, intermediate); "tinybert" keeps TinyBERT's head size 26 (312/12)
TINY_SHAPES = {
    "bert": (32, 4, 3, 48),
    "roberta": (48, 4, 3, 64),
    "tinybert": (312, 12, 2, 64),
    "electra": (32, 4, 4, 48),  # embedding_size 24: the embeddings_project (24 -> 32) is part of the unit
    "distilbert": (32, 4, 4, 48),
    "deberta-v2": (32, 4, 4, 48),  # DeBERTa-v3's layout: relative positions (log buckets), no absolute ones
    "modernbert": (32, 4, 4, 48),  # rotary; layers 1 and 3 local with a window of +-MODERNBERT_WINDOW // 2 tokens
}
ELECTRA_EMBEDDING_SIZE = 24
MODERNBERT_WINDOW = 8  # local_attention of the tiny ModernBERT: shorter than most test inputs, so the window matters


def tiny_tokenizer():
    """A fast BERT-style tokenizer over a small vocabulary (transformers PreTrainedTokenizerFast)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,!?'-")
    vocab_list = SPECIALS + list(WORDS) + letters + ["##" + c for c in letters]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_max_length=512,
                                   # BERT's inputs: transformers 5 leaves token_type_ids out of a generic fast
                                   # tokenizer's default model_input_names
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])


def tiny_model(arch: str = "bert", num_labels: int = 2, seed: int = 0, vocab_size: int | None = None,
               gate_spread: float = 3.0, shape: tuple[int, int, int, int] | None = None, positions: int = 130):
    """(GatedEncoder, tokenizer) of a tiny random config; gates get random weights large enough that
    their decisions vary across inputs and sit clearly away from the tie. `shape` (hidden, heads, layers,
    intermediate) overrides TINY_SHAPES[arch] (a family's layout at another size, e.g. for benchmarks);
    `positions` is the position table's size."""
    import torch
    from transformers import AutoModel, BertConfig, DebertaV2Config, DistilBertConfig, ElectraConfig, RobertaConfig

    from hadskip.modeling.encoder import GatedEncoder, ModelConfig

    tokenizer = tiny_tokenizer()
    hidden, heads, layers, inter = shape or TINY_SHAPES[arch]
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size or len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, intermediate_size=inter, max_position_embeddings=positions,
                  pad_token_id=tokenizer.pad_token_id)
    if arch == "roberta":
        cfg = RobertaConfig(type_vocab_size=1, **common)
    elif arch == "electra":
        cfg = ElectraConfig(embedding_size=ELECTRA_EMBEDDING_SIZE if shape is None else hidden // 2, **common)
    elif arch == "distilbert":
        cfg = DistilBertConfig(vocab_size=common["vocab_size"], dim=hidden, n_heads=heads, n_layers=layers,
                               hidden_dim=inter, max_position_embeddings=positions,
                               pad_token_id=tokenizer.pad_token_id)
    elif arch == "modernbert":
        from transformers import ModernBertConfig

        cfg = ModernBertConfig(global_attn_every_n_layers=2, local_attention=MODERNBERT_WINDOW,
                               cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
                               bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                               **{k: v for k, v in common.items() if k != "pad_token_id"},
                               pad_token_id=tokenizer.pad_token_id)
    elif arch == "deberta-v2":
        cfg = DebertaV2Config(type_vocab_size=0, relative_attention=True, position_buckets=16,
                              max_relative_positions=-1, pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm",
                              share_att_key=True, position_biased_input=False, **common)
    else:
        cfg = BertConfig(**common)
    hf = AutoModel.from_config(cfg, attn_implementation="eager")
    c = hf.config
    config = ModelConfig(backbone=f"tiny-{arch}", model_type=c.model_type, num_layers=layers, hidden_size=hidden,
                         num_heads=heads, num_labels=num_labels, gate_hidden=16, hf_config=c.to_dict())
    model = GatedEncoder(config, hf)
    with torch.no_grad():
        for gate in model.gates:
            gate.fc1.weight.mul_(gate_spread * 4)
            gate.fc2.weight.mul_(gate_spread * 4)
            gate.fc2.bias.zero_()
    return model.eval(), tokenizer


def tiny_run(path: str | Path, arch: str = "bert", num_labels: int = 2, seed: int = 0, max_len: int = 32,
             budget: float | None = 2.0, **model_options) -> Path:
    """Write a run dir holding a tiny random gated model (see hadskip.modeling.checkpoint); model_options go to
    tiny_model (shape, positions, ...)."""
    from hadskip.modeling.checkpoint import RunInfo, save_run

    model, tokenizer = tiny_model(arch, num_labels, seed, **model_options)
    task = {"name": "tiny", "text_col": "text", "pair_col": None, "label_col": "label",
            "num_labels": num_labels, "metric": "accuracy",
            "label_names": [f"label{i}" for i in range(num_labels)]}
    return save_run(path, model, tokenizer, RunInfo(task=task, max_len=max_len, kind="hadskip", budget=budget))


def tiny_sentences(n: int, seed: int = 0, min_words: int = 1, max_words: int = 20) -> list[str]:
    """Random sentences over the tiny vocabulary, of varied length (so batches need padding)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))) for _ in range(n)]


def tiny_task_dir(path: str | Path, n_train: int = 64, n_eval: int = 24, seed: int = 0) -> Path:
    """A local CSV task (train/dev/test) whose label is learnable: 1 if a positive word occurs."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    positive = {"good", "great", "fine", "fun"}
    for i, (split, n) in enumerate((("train", n_train), ("dev", n_eval), ("test", n_eval))):
        rows = tiny_sentences(n, seed + i, 2, 12)
        with open(path / f"{split}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["text", "label"])
            for r in rows:
                w.writerow([r, int(any(word in positive for word in r.split()))])
    return path


def tiny_backbone_dir(path: str | Path, arch: str = "bert", seed: int = 0) -> Path:
    """A local stand-in for a hub backbone: a tiny random transformers model + tokenizer saved with
    save_pretrained, loadable by name like `bert-base-uncased` would be."""
    from hadskip.modeling.backbone import empty_hf_model

    from hadskip.modeling.checkpoint import load_weights
    from hadskip.modeling.families import base_state

    model, tokenizer = tiny_model(arch, seed=seed)
    hf = empty_hf_model(model.config.hf_config)
    state = base_state(model)
    if model.family.head_init:  # BERT's pooler: what head.dense starts from when the backbone is loaded
        state.update({f"{model.family.head_init}.{k}": v for k, v in model.head.dense.state_dict().items()})
    load_weights(hf, state, "tiny backbone weights do not map onto the transformers model")
    path = Path(path)
    hf.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def hub_cache_standin(cache: str | Path, name: str, src: str | Path,
                      commit: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """Lay the files of folder `src` (its subfolders too) out in `cache` as the hub cache holds a download of
    repo `name` at `commit` (refs/main): each file a blob under blobs/ (named by its sha256) and a relative
    symlink to it in snapshots/COMMIT/, so hub loading with HF_HUB_OFFLINE=1 and HF_HUB_CACHE=cache finds it
    without a network and sees the links a real download makes. Returns the snapshot folder."""
    import hashlib
    import os

    repo = Path(cache) / ("models--" + name.replace("/", "--"))
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for f in sorted(Path(src).rglob("*")):
        if not f.is_file():
            continue
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snap / f.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


def tiny_teacher(root: str | Path, n_train: int = 64, n_eval: int = 24) -> dict:
    """{"root", "backbone", "task", "teacher"}: a tiny backbone folder, a learnable folder task and a teacher
    fine-tuned on it (2 epochs), under `root` (the start of every training test)."""
    from hadskip.training.config import TrainConfig
    from hadskip.training.finetune import finetune

    root = Path(root)
    backbone = tiny_backbone_dir(root / "backbone")
    task = tiny_task_dir(root / "task", n_train=n_train, n_eval=n_eval)
    teacher = root / "ft"
    metrics = finetune(TrainConfig(backbone=str(backbone), task=str(task), out=str(teacher), max_len=32,
                                   batch_size=16, epochs=2, lr=1e-3, progress=False))
    return {"root": root, "backbone": backbone, "task": task, "teacher": teacher, "metrics": metrics}


def id_batch(rng, b: int, t: int = 12, vocab: int = 60):
    """(ids, mask, token types) of b right-padded rows of random word ids, lengths 1..t (row 0 has t)."""
    import numpy as np

    lengths = rng.integers(1, t + 1, size=b)
    lengths[0] = t
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask == 1, rng.integers(5, vocab, size=(b, t)), 0)
    return ids, mask, np.zeros_like(ids)


class GateMargins:
    """Wraps a backend's run_gate to keep each gate's margins (logit_open - logit_closed, float64), per call."""

    def __init__(self, backend):
        self.backend, self.seen = backend, []
        self.run_gate = backend.run_gate
        backend.run_gate = self

    def __call__(self, i, h, mask):
        import numpy as np

        z = self.run_gate(i, h, mask)
        self.seen.append(z[:, 1].astype(np.float64) - z[:, 0])
        return z
