"""`StreamingSampleDataset`: the iterable twin of `videochat.data.SampleDataset` for sets too large to index.

Same items, same bad-sample handling (skipped, logged, counted, `TooManyBadSamples` past the fraction),
but samples are read line by line from the shards and split over ranks and DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from videochat.collate import _dist_info
from videochat.config import VideoChatConfig
from videochat.data import BadSample, BadSampleTracker, _is_paths, _loads, _Processor
from videochat.transforms import FrameTransform


class StreamingSampleDataset(IterableDataset):
    """Iterable dataset over shards too large to index: sharded over ranks and DataLoader workers.

    Each (rank, worker) takes every `world*workers`-th line (shard files are never all held in memory).
    `skip` resumes: this (rank, worker) stream drops its first `skip` samples. `shuffle_buffer` > 0 shuffles
    through a seeded buffer of that many samples (deterministic for a given seed / epoch / sharding).
    Ranks may yield different counts (a modulo split, and bad samples are skipped per rank): under DDP a
    rank that runs out first leaves the others waiting in a collective, so training uses `SampleDataset`.
    """

    def __init__(self, samples, tokenizer, cfg: VideoChatConfig, video_root=None, sampling: str = "rand", seed: int = 0,
                 feature_cache=None, max_length: int | None = None, max_bad_fraction: float = 0.01, *,
                 split: str | None = None, rank: int | None = None, world_size: int | None = None,
                 shuffle_buffer: int = 0, skip: int = 0, transform: FrameTransform | None = None,
                 backend: str = "auto", bad_check_after: int = 200, bad_sample_log: str | None = None):
        self.source, self.split = samples, split
        self.proc = _Processor(tokenizer, cfg, video_root, sampling, seed, feature_cache, max_length, transform, backend)
        self.tracker = BadSampleTracker(max_bad_fraction, bad_check_after, bad_sample_log)
        self.rank, self.world_size = _dist_info(rank, world_size)
        self.shuffle_buffer, self.skip, self.seed = int(shuffle_buffer), int(skip), int(seed)

    @property
    def stats(self) -> dict[str, Any]:
        return self.tracker.stats

    def set_epoch(self, epoch: int) -> None:
        self.proc.epoch = int(epoch)

    def _lines(self) -> Iterator[tuple[int, dict]]:
        wi = get_worker_info()
        nw, wid = (wi.num_workers, wi.id) if wi is not None else (1, 0)
        total, me = self.world_size * nw, self.rank * nw + wid
        if _is_paths(self.source):
            from data_tools.io import iter_lines, resolve_shards

            k = 0
            for path in resolve_shards(self.source, self.split):
                for _, line in iter_lines(path):
                    if k % total == me:  # parse only our own lines
                        try:
                            obj = _loads(line)
                        except ValueError as e:
                            obj = {"id": f"{path}:{k}", "_error": f"invalid JSON ({e})"}
                        if not isinstance(obj, dict):
                            obj = {"id": f"{path}:{k}", "_error": "not a JSON object"}
                        yield k, obj
                    k += 1
        else:
            for k, s in enumerate(self.source):
                if k % total == me:
                    yield k, s

    def __iter__(self) -> Iterator[dict]:
        stream = self._lines()
        if self.shuffle_buffer > 0:
            stream = _shuffled(stream, self.shuffle_buffer, np.random.default_rng([self.seed, self.proc.epoch, self.rank]))
        skipped: list[dict] = []
        for n, (k, sample) in enumerate(stream):
            if n < self.skip:
                continue
            try:
                item = self.proc(sample, k)
            except BadSample as e:
                skipped.append({"id": e.sample_id, "reason": e.reason})
                self.tracker.record(e)
                continue
            self.tracker.good()
            item["skipped"], skipped = skipped, []
            yield item
        self.tracker.check(total=self.tracker.seen)  # a short stream is judged on all it had


def _shuffled(stream, size: int, rng: np.random.Generator):
    buf = []
    for x in stream:
        if len(buf) < size:
            buf.append(x)
            continue
        j = int(rng.integers(size))
        yield buf[j]
        buf[j] = x
    rng.shuffle(buf)
    yield from buf
