"""A deterministic, resumable, rank-sharded batch sampler.

The batch order of epoch e is a pure function of (seed, e, lengths, world size): resuming only needs the
epoch and how many batches of it were consumed, which every checkpoint stores. Skipping consumed batches
touches indices only (no decoding), so a resume at step 10k starts immediately.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


class ResumableBatchSampler:
    """Yields lists of dataset indices for this rank.

    With `lengths` and `group_by_length`, indices are shuffled, cut into mega-batches of
    `50 * batch_size * world_size`, sorted by length inside each, then cut into global batches whose order is
    shuffled again (the LLaVA / HF length-grouped scheme): similar lengths share a batch, the order stays random.
    Each global batch is split across ranks, so all ranks step together; the tail that cannot fill a global
    batch is dropped (the next epoch's permutation covers it).
    """

    def __init__(self, num_samples: int, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 lengths: Sequence[int] | None = None, group_by_length: bool = False):
        if num_samples < batch_size * world_size:
            raise ValueError(f"{num_samples} samples cannot fill one global batch of "
                             f"{batch_size} x {world_size} ranks; lower batch_size or add data")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.group_by_length = group_by_length and lengths is not None
        self.epoch = 0
        self.start_batch = 0

    def __len__(self) -> int:
        """Batches per epoch (per rank; equal on every rank)."""
        return self.num_samples // (self.batch_size * self.world_size)

    def set_position(self, epoch: int, batch: int) -> None:
        """Continue at batch `batch` of epoch `epoch` (from a checkpoint's state.json)."""
        self.epoch, self.start_batch = epoch, batch

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        """All global batches of an epoch (each `batch_size * world_size` indices)."""
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(self.num_samples)
        g = self.batch_size * self.world_size
        if self.group_by_length:
            mega = 50 * g
            chunks = [perm[i:i + mega] for i in range(0, len(perm), mega)]
            perm = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks])
        n = len(perm) // g
        batches = [perm[i * g:(i + 1) * g] for i in range(n)]
        if self.group_by_length:
            order = rng.permutation(n)
            batches = [batches[i] for i in order]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.global_batches(self.epoch)
        for b in batches[self.start_batch:]:
            mine = b[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
            yield [int(i) for i in mine]
        self.start_batch = 0
