"""Tokenised task splits as PyTorch batches, padded per batch to the longest row (not to max_len)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hadskip.errors import HadSkipError


@dataclass
class Encoded:
    """A tokenised split: variable-length id lists (no padding yet) and labels."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


def encode_split(split, tokenizer, max_len: int) -> Encoded:
    """Tokenise a hadskip.data Split (texts, optional pairs, labels) with truncation to max_len."""
    args = (split.texts, split.pairs) if split.pairs is not None else (split.texts,)
    enc = tokenizer(*args, truncation=True, max_length=max_len, return_token_type_ids=True)
    return Encoded(enc["input_ids"], enc["token_type_ids"], np.asarray(split.labels, dtype=np.int64))


def pad_id(tokenizer) -> int:
    """The id a batch is padded with: the tokenizer's pad token, 0 where it has none."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def collate(enc: Encoded, idx: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    """Rows `idx` of `enc`, right-padded to their longest row."""
    rows = [enc.input_ids[i] for i in idx]
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
    tt = torch.zeros((len(rows), t), dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    for j, i in enumerate(idx):
        n = len(enc.input_ids[i])
        ids[j, :n] = torch.tensor(enc.input_ids[i])
        tt[j, :n] = torch.tensor(enc.token_type_ids[i])
        mask[j, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt,
            "labels": torch.from_numpy(enc.labels[idx])}


class BatchIterable(torch.utils.data.IterableDataset):
    """Batches of one epoch. Training shuffles, then groups rows of similar length inside windows of
    50 batches (less padding, still random); eval goes in length order. `epoch` seeds the shuffle.

    Data-parallel training shards whole batches: process `rank` of `world` takes every world-th batch of the
    same seeded order (each process pads its own batches, so accelerate's batch dispatching, which needs
    equal shapes, is not used), and every process gets the same number of batches."""

    def __init__(self, enc: Encoded, batch_size: int, pad_id: int, shuffle: bool, seed: int = 0,
                 rank: int = 0, world: int = 1):
        self.enc, self.batch_size, self.pad_id, self.shuffle, self.seed = enc, batch_size, pad_id, shuffle, seed
        self.rank, self.world = rank, world
        self.epoch = 0
        if self._num_batches() < world:
            raise HadSkipError(f"{len(enc)} training examples make {self._num_batches()} batches of {batch_size}, "
                               f"fewer than the {world} processes; use more data or a smaller batch size")

    def batch_indices(self) -> list[np.ndarray]:
        n, bs = len(self.enc), self.batch_size
        lengths = np.fromiter((len(r) for r in self.enc.input_ids), dtype=np.int64, count=n)
        if not self.shuffle:
            order = np.argsort(lengths, kind="stable")
            return [order[i:i + bs] for i in range(0, n, bs)]
        rng = np.random.default_rng(self.seed + self.epoch)
        order = rng.permutation(n)
        window = bs * 50
        chunks = []
        for s in range(0, n, window):
            w = order[s:s + window]
            w = w[np.argsort(lengths[w], kind="stable")]
            chunks += [w[i:i + bs] for i in range(0, len(w), bs)]
        rng.shuffle(chunks)
        return chunks

    def _num_batches(self) -> int:
        return (len(self.enc) + self.batch_size - 1) // self.batch_size

    def __len__(self) -> int:
        return max(1, self._num_batches() // self.world)

    def __iter__(self):
        batches = self.batch_indices()
        if self.world > 1:
            batches = batches[self.rank::self.world][:len(self)]
        for idx in batches:
            yield collate(self.enc, idx, self.pad_id)


def loader(enc: Encoded, batch_size: int, pad_id: int, shuffle: bool, seed: int = 0, rank: int = 0,
           world: int = 1):
    """A DataLoader over BatchIterable (batch_size=None: the iterable yields whole batches)."""
    ds = BatchIterable(enc, batch_size, pad_id, shuffle, seed, rank, world)
    return torch.utils.data.DataLoader(ds, batch_size=None)
