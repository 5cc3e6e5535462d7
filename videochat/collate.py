"""Batching for `videochat.data`: the padding collator and a seeded, resumable length-grouped sampler."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import os

import numpy as np
import torch
from torch.utils.data import Sampler

IGNORE_INDEX = -100
_CLIP_KEYS = ("clip_frames", "clip_features")


class Collator:
    """Pad items from `SampleDataset` into a batch.

    Returns `{"input_ids" [B, L], "attention_mask" [B, L], "labels" [B, L] (-100 on padding),
    "clip_frames" [N, T, 3, S, S] | "clip_features" [N, S_tok, C] (clips of all items, batch-major, in order
    of appearance; absent when the batch has no clip), "num_clips" [B], "ids", "skipped"}`.
    `None` items (a wrapper that drops samples) are left out; a batch of only `None` collates to `None`.
    `padding_side="left"` is for generation; `pad_to_multiple_of` rounds L up (tensor-core friendly shapes).
    """

    def __init__(self, pad_id: int, pad_to_multiple_of: int | None = None, padding_side: str = "right"):
        if pad_id is None:
            raise ValueError("Collator needs a pad id (tokenizer.pad_token_id, or eos when there is no pad token)")
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        self.pad_id, self.multiple, self.side = int(pad_id), pad_to_multiple_of, padding_side

    def __call__(self, items: Sequence[dict | None]) -> dict[str, Any] | None:
        items = [it for it in items if it is not None]
        if not items:
            return None
        length = max(len(it["input_ids"]) for it in items)
        if self.multiple:
            length = int(math.ceil(length / self.multiple) * self.multiple)
        b = len(items)
        ids = torch.full((b, length), self.pad_id, dtype=torch.long)
        labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((b, length), dtype=torch.long)
        for i, it in enumerate(items):
            n = len(it["input_ids"])
            sl = slice(0, n) if self.side == "right" else slice(length - n, length)
            ids[i, sl] = torch.as_tensor(it["input_ids"], dtype=torch.long)
            labels[i, sl] = torch.as_tensor(it["labels"], dtype=torch.long)
            mask[i, sl] = 1
        batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        keys = {k for it in items for k in _CLIP_KEYS if k in it}
        if len(keys) > 1:
            raise ValueError("a batch mixes decoded frames and cached features; use one kind per dataset")
        if keys:
            key = keys.pop()
            clips = [it[key] for it in items if it[key].shape[0] > 0]
            if clips:
                batch[key] = torch.cat(clips, dim=0)
        batch["num_clips"] = torch.tensor([int(it.get("num_clips", 0)) for it in items], dtype=torch.long)
        batch["ids"] = [it.get("id") for it in items]
        batch["skipped"] = [s for it in items for s in it.get("skipped", [])]
        return batch


class LengthGroupedSampler(Sampler[int]):
    """Shuffled indices in which every run of `batch_size` has similar lengths (less padding).

    Per epoch (seeded by `(seed, epoch)`): shuffle, cut into mega-batches of
    `batch_size * num_replicas * mega_batch_mult`, sort each by length (longest first), cut into global
    batches of `batch_size * num_replicas`, shuffle the global batches but put the longest one first (an
    out-of-memory shows at step 1, not hours in); rank r takes the r-th `batch_size` slice of each.
    Without `drop_last` the index list is padded by wrapping around so every rank has the same count.

    Exact resume: `set_epoch(epoch, start=k)` makes the next iteration skip this rank's first `k` indices
    (k = batches done this epoch * batch_size); `state_dict()` / `load_state_dict()` carry (epoch, start).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, seed: int = 0, mega_batch_mult: int = 50,
                 shuffle: bool = True, num_replicas: int | None = None, rank: int | None = None,
                 drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size, self.seed, self.mult = int(batch_size), int(seed), max(1, int(mega_batch_mult))
        self.shuffle, self.drop_last = shuffle, drop_last
        self.rank, self.num_replicas = _dist_info(rank, num_replicas)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} not in [0, {self.num_replicas})")
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "start": self.start, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if "seed" in state and int(state["seed"]) != self.seed:
            raise ValueError(f"sampler state was saved with seed {state['seed']}, this sampler has {self.seed}")
        self.set_epoch(state["epoch"], state.get("start", 0))

    def _global_step(self) -> int:
        return self.batch_size * self.num_replicas

    def num_samples(self) -> int:
        """Indices this rank yields per full epoch."""
        n, g = len(self.lengths), self._global_step()
        steps = n // g if self.drop_last else math.ceil(n / g)
        return steps * self.batch_size

    def indices(self) -> list[int]:
        """This rank's full index list for the current epoch (before `start` is applied)."""
        n, g = len(self.lengths), self._global_step()
        if n == 0:
            return []
        rng = np.random.default_rng([self.seed, self.epoch])
        perm = rng.permutation(n) if self.shuffle else np.arange(n)
        total = (n // g) * g if self.drop_last else math.ceil(n / g) * g
        if total > n:
            perm = np.concatenate([perm, np.resize(perm, total - n)])
        perm = perm[:total]
        mega = g * self.mult
        batches = []
        for m in range(0, total, mega):
            chunk = perm[m : m + mega]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches += [chunk[j : j + g] for j in range(0, len(chunk), g)]
        if self.shuffle and len(batches) > 1:
            longest = int(np.argmax([self.lengths[b].max() for b in batches]))
            order = [longest] + [int(i) for i in rng.permutation(len(batches)) if i != longest]
            batches = [batches[i] for i in order]
        r0 = self.rank * self.batch_size
        return [int(i) for b in batches for i in b[r0 : r0 + self.batch_size]]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start :])

    def __len__(self) -> int:
        return max(0, self.num_samples() - self.start)


def _dist_info(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return int(rank), int(world_size)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
