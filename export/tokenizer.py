"""The model dir's tokenizer.json: the run's fast tokenizer with truncation and padding baked in.

The runtime calls `tokenizers.Tokenizer.from_file(...).encode_batch(texts)` and must get the ids the HF
tokenizer gave in training (`tokenizer(texts, truncation=True, max_length=max_len)`, padded to the longest
row): truncation to max_len with the HF strategy and side, right padding with the pad id and pad type id.
"""

from __future__ import annotations

from pathlib import Path

from hadskip.export.spec import ExportError


def write_tokenizer(run_dir: str | Path, hf_tokenizer, max_len: int, dst: str | Path) -> dict:
    """Write dst (tokenizer.json); returns what the manifest records about tokenisation."""
    from tokenizers import Tokenizer

    src = Path(run_dir) / "tokenizer" / "tokenizer.json"
    if not src.is_file():
        raise ExportError(f"{src} is missing: the runtime needs a fast tokenizer (tokenizers-library format)")
    tok = Tokenizer.from_file(str(src))
    pad_id = hf_tokenizer.pad_token_id
    if pad_id is None:
        raise ExportError(f"the tokenizer in {src.parent} has no pad token; export needs one for padded batches")
    strategy = "longest_first"  # what `truncation=True` means in transformers
    tok.enable_truncation(max_length=max_len, strategy=strategy, direction=hf_tokenizer.truncation_side)
    tok.enable_padding(direction=hf_tokenizer.padding_side, pad_id=pad_id, pad_type_id=hf_tokenizer.pad_token_type_id,
                       pad_token=hf_tokenizer.pad_token)
    tok.save(str(dst))
    return {"max_length": max_len, "truncation": strategy, "truncation_side": hf_tokenizer.truncation_side,
            "padding": "longest", "padding_side": hf_tokenizer.padding_side, "pad_id": pad_id,
            "pad_token": hf_tokenizer.pad_token}
