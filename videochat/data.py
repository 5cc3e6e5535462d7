"""Training data: sample shards -> rendered ids + labels + clip tensors (map-style and streaming).

Item (a dict): `input_ids` [L] long, `labels` [L] long (-100 off assistant turns), `clip_frames`
[n, T, 3, S, S] float (or `clip_features` [n, S_tok, C] fp16 with a feature cache), `num_clips` n, `id`,
`skipped` (bad samples passed over to produce this one: `[{"id", "reason"}]`). `n` counts clip *slots* in
order of appearance; a clip referenced twice is decoded once and appears twice.

Per sample: each referenced clip is decoded once (`videochat.video.read_clip`), transformed with the
model's `FrameTransform`, its frame times (relative to the clip start) go to the renderer, and
`videochat.conversation.render` produces ids, labels and slots. With a `FeatureCache` the cached ViCLIP
tokens (and frame times) are used instead and the video is never opened.

Bad samples (missing / undecodable video, bad window, malformed sample, render error, too long, cache
miss, `no_targets`: nothing left to learn from, i.e. no assistant turn or every label -100, which would make
the loss 0/0 = NaN) are never fatal: logged, counted in `dataset.stats`, listed in the next item's `skipped`.
- `SampleDataset[i]` returns the next good sample after i (i+1, i+2, ... wrapping), deterministically,
  so every batch stays full (DDP ranks stay in step);
- `StreamingSampleDataset` simply moves on.
Past `max_bad_fraction` (checked once `bad_check_after` samples were seen, or all of a small set) the job
stops with `TooManyBadSamples` naming the counts and the commonest reasons.

Sampling: `rand` (default, training) draws frame times from a seed derived from (seed, epoch, index, clip),
so a resumed run sees the same frames; `middle` for eval. With a feature cache the cache's sampling
(`middle`) is used: cached features are deterministic by construction.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from videochat.collate import Collator, LengthGroupedSampler  # noqa: F401  (re-exported)
from videochat.config import VideoChatConfig
from videochat.conversation import ConversationError, render
from videochat.transforms import FrameTransform
from videochat.video import VideoDecodeError, read_clip

try:
    import orjson

    _dumps, _loads = orjson.dumps, orjson.loads
except ImportError:  # pragma: no cover - orjson comes with data_tools
    import json

    def _dumps(obj):
        return json.dumps(obj, separators=(",", ":")).encode()

    _loads = json.loads

__all__ = [
    "SampleDataset", "StreamingSampleDataset", "Collator", "LengthGroupedSampler", "TooManyBadSamples", "BadSample",
    "SkipBadSamples", "BadSampleTracker",
    "PackedSamples", "load_samples", "referenced_clips", "approx_length",
]

log = logging.getLogger(__name__)
_TIME_DIGITS = 1  # frame times in the prompt ("sampled at 0.3, 1.1, ... seconds"), same for cache and decoding
_WARN_FIRST = 20  # log the first N bad samples per process at WARNING, the rest at DEBUG


class TooManyBadSamples(RuntimeError):
    """More than `max_bad_fraction` of the samples seen were bad: the data (or the video root) is wrong."""


class BadSample(Exception):
    """One sample that cannot be used; `reason` is short and human-readable."""

    def __init__(self, sample_id: str, reason: str, kind: str = "BadSample", transient: bool = False):
        super().__init__(f"{sample_id}: {reason}")
        self.sample_id, self.reason, self.kind = sample_id, reason, kind
        self.transient = transient  # an I/O hiccup (plain OSError: NFS timeout, EIO) that may not recur


_BAD_ERRORS = (VideoDecodeError, ConversationError, KeyError, IndexError, TypeError, ValueError, OSError)


class PackedSamples:
    """Samples kept as one bytes buffer + offsets (not a list of dicts): no per-object refcounts, so
    forked DataLoader workers share the memory instead of copying it page by page."""

    def __init__(self, samples: Iterable[dict | bytes]):
        chunks, offsets, n = [], [0], 0
        for s in samples:
            b = bytes(s) if isinstance(s, (bytes, bytearray, memoryview)) else _dumps(s)
            chunks.append(b)
            n += len(b)
            offsets.append(n)
        self._buf = np.frombuffer(b"".join(chunks), dtype=np.uint8) if n else np.zeros(0, np.uint8)
        self._off = np.asarray(offsets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._off) - 1

    def __getitem__(self, i: int) -> dict:
        """The sample dict; a line that is not a JSON object gives `{"id": "line <i>", "_error": reason}`."""
        try:
            obj = _loads(self._buf[self._off[i] : self._off[i + 1]].tobytes())
        except ValueError as e:
            return {"id": f"line {i}", "_error": f"invalid JSON ({e})"}
        return obj if isinstance(obj, dict) else {"id": f"line {i}", "_error": "not a JSON object"}


def raw_lines(samples: Any, split: str | None = None) -> Iterator[bytes]:
    """The undecoded lines of a dataset folder / shard / glob (parsed lazily, per item)."""
    from data_tools.io import iter_lines, resolve_shards

    for path in resolve_shards(samples, split):
        for _, line in iter_lines(path):
            yield line


def _is_paths(samples: Any) -> bool:
    return isinstance(samples, (str, os.PathLike)) or (
        isinstance(samples, (list, tuple)) and bool(samples) and isinstance(samples[0], (str, os.PathLike))
    )


def load_samples(samples: Any, split: str | None = None) -> Iterable[dict]:
    """A list/iterable of sample dicts, or a dataset folder / shard file / glob (read with data_tools.io)."""
    if _is_paths(samples):
        from data_tools.io import iter_samples

        return iter_samples(samples, split)
    return samples


def referenced_clips(messages: list) -> list[int]:
    """Clip indices referenced by `{"type": "clip"}` parts, first appearance order, no repeats."""
    seen: dict[int, None] = {}
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "clip":
                    seen.setdefault(int(part["clip"]), None)
    return list(seen)


def approx_length(sample: dict, tokens_per_clip: int, chars_per_token: float = 3.5) -> int:
    """Cheap token-count estimate (no tokenizer, no video) for length-grouped batching."""
    n_chars, n_clips = 0, 0
    for m in sample.get("messages", []):
        content = m.get("content", "")
        parts = content if isinstance(content, list) else [{"type": "text", "text": str(content)}]
        for p in parts:
            if p.get("type") == "clip":
                n_clips += 1
            else:
                n_chars += len(str(p.get("text", "")))
        n_chars += 16  # role markers
    return int(n_chars / chars_per_token) + n_clips * (tokens_per_clip + 24)


class _Processor:
    """Turns one sample dict into an item (shared by both dataset kinds); raises `BadSample`."""

    def __init__(self, tokenizer, cfg: VideoChatConfig, video_root, sampling, seed, feature_cache, max_length,
                 transform: FrameTransform | None, backend: str):
        from videochat.video import parse_sampling

        if parse_sampling(sampling)[0] in ("fps", "all"):
            raise ValueError(f"{sampling} sampling gives a variable frame count; training batches need middle or rand")
        self.tokenizer, self.cfg = tokenizer, cfg
        self.video_root = None if video_root is None else os.fspath(video_root)
        self.sampling, self.seed, self.max_length, self.backend = sampling, int(seed), max_length, backend
        if isinstance(feature_cache, (str, os.PathLike)):  # a cache folder (train configs give a path)
            from videochat.features import FeatureCache

            feature_cache = FeatureCache(feature_cache)
        self.cache = feature_cache
        if feature_cache is not None and sampling != feature_cache.sampling:
            log.info("feature cache in use: clips use the cache's %r sampling, not %r", feature_cache.sampling, sampling)
        self.transform = transform or FrameTransform.from_config(cfg)
        self.epoch = 0

    def video_path(self, sample: dict, clip: dict) -> str:
        path = sample["videos"][int(clip["video"])]["path"]
        if self.video_root is not None and not os.path.isabs(path):
            return os.path.join(self.video_root, path)
        return path

    def clip_seed(self, index: int, clip: int) -> int:
        return int(np.random.SeedSequence([self.seed, self.epoch, index, clip]).generate_state(1)[0])

    def __call__(self, sample: dict, index: int) -> dict:
        sid = str(sample.get("id", index)) if isinstance(sample, dict) else str(index)
        try:
            return self._process(sample, index, sid)
        except BadSample:
            raise
        except _BAD_ERRORS as e:
            # VideoDecodeError (incl. VideoNotFoundError, an OSError too) is a verdict on the file; any other
            # OSError is the storage talking and may succeed next time
            transient = isinstance(e, OSError) and not isinstance(e, VideoDecodeError)
            raise BadSample(sid, _reason(e), type(e).__name__, transient=transient) from None

    def _process(self, sample: dict, index: int, sid: str) -> dict:
        if "_error" in sample:
            raise BadSample(sid, sample["_error"], "InvalidJSON")
        messages = sample["messages"]
        clips = sample.get("clips", [])
        used = referenced_clips(messages)
        tensors: dict[int, torch.Tensor] = {}
        times: dict[int, list[float]] = {}
        for ci in used:
            if not 0 <= ci < len(clips):
                raise BadSample(sid, f"message references clip {ci} but the sample has {len(clips)} clips", "BadClipIndex")
            clip = clips[ci]
            if self.cache is not None:
                rel = sample["videos"][int(clip["video"])]["path"]
                hit = self.cache.get(rel, clip.get("start"), clip.get("end"), self.cfg.num_frames)
                if hit is None:
                    raise BadSample(sid, f"clip {ci} ({rel} {clip.get('start')}-{clip.get('end')}) is not in the "
                                    f"feature cache {self.cache.root} (run `videochat features extract`)", "CacheMiss")
                tensors[ci], times[ci] = hit[0], [round(t, _TIME_DIGITS) for t in hit[1]]
            else:
                c = read_clip(self.video_path(sample, clip), clip.get("start"), clip.get("end"), self.cfg.num_frames,
                              self.sampling, seed=self.clip_seed(index, ci), backend=self.backend)
                tensors[ci], times[ci] = self.transform(c.frames), c.relative_times(_TIME_DIGITS)
        r = render(
            messages, self.tokenizer, template=self.cfg.template, tokens_per_clip=self.cfg.tokens_per_clip,
            placeholder_token=self.cfg.placeholder_token,
            clip_times=times if self.cfg.frame_times_in_prompt else None,
            system_prompt=self.cfg.system_prompt, max_length=self.max_length, num_clips=len(clips),
        )
        if all(label == -100 for label in r.labels[1:]):  # position 0 is never a target (labels shift by one)
            raise BadSample(sid, "no_targets: no assistant token to learn from (no assistant turn, or every label "
                            "is -100); its loss would be 0/0", "no_targets")
        order = [slot.clip for slot in r.clip_slots]
        key = "clip_features" if self.cache is not None else "clip_frames"
        if order:
            stacked = torch.stack([tensors[ci] for ci in order])
        elif self.cache is not None:
            stacked = torch.zeros(0, *self.cache.feature_shape, dtype=torch.float16)
        else:
            s = self.transform.image_size
            stacked = torch.zeros(0, self.cfg.num_frames, 3, s, s)
        return {
            "input_ids": torch.tensor(r.input_ids, dtype=torch.long),
            "labels": torch.tensor(r.labels, dtype=torch.long),
            key: stacked,
            "num_clips": len(order),
            "id": sid,
            "skipped": [],
        }


def _reason(e: BaseException) -> str:
    if isinstance(e, VideoDecodeError):
        return str(e)
    if isinstance(e, KeyError):
        return f"malformed sample: missing key {e}"
    return f"{type(e).__name__}: {str(e)[:300]}"


class BadSampleTracker:
    """Counts seen / bad samples and reasons, logs bad ones, enforces the bad fraction."""

    def __init__(self, max_bad_fraction: float, check_after: int, log_path: str | None = None):
        self.max_bad_fraction, self.check_after, self.log_path = float(max_bad_fraction), int(check_after), log_path
        self.seen = 0
        self.bad = 0
        self.reasons: Counter = Counter()

    @property
    def stats(self) -> dict[str, Any]:
        return {"seen": self.seen, "good": self.seen - self.bad, "bad": self.bad, "reasons": dict(self.reasons)}

    def good(self, total: int | None = None) -> None:
        self.seen += 1
        if self.bad:  # the fraction is judged as soon as enough samples were seen, good or bad
            self.check(total)

    def record(self, err: BadSample, total: int | None = None) -> None:
        self.seen += 1
        self.bad += 1
        self.reasons[err.kind] += 1
        level = logging.WARNING if self.bad <= _WARN_FIRST else logging.DEBUG
        log.log(level, "skipping bad sample %s: %s", err.sample_id, err.reason)
        if self.log_path:
            with open(self.log_path, "ab") as f:  # one short append per bad sample; safe across workers
                f.write(_dumps({"id": err.sample_id, "reason": err.reason, "pid": os.getpid()}) + b"\n")
        self.check(total)

    def check(self, total: int | None = None) -> None:
        threshold = self.check_after if total is None else min(self.check_after, total)
        if self.seen >= max(1, threshold) and self.bad > self.max_bad_fraction * self.seen:
            common = ", ".join(f"{r!r} x{n}" for r, n in self.reasons.most_common(3))
            raise TooManyBadSamples(
                f"{self.bad} of {self.seen} samples were bad ({self.bad / self.seen:.1%} > max_bad_fraction="
                f"{self.max_bad_fraction:.1%}); commonest reasons: {common}. Check the video root and the data "
                f"(`videochat data validate`)."
            )


class SkipBadSamples:
    """Bad-sample handling for map-style datasets (SampleDataset, the viclip recipe's caption clips).

    A subclass implements `_load(i) -> item dict` raising `BadSample`, calls `_init_bad_samples(...)` and gets
    `__getitem__`: sample `index`, or when it is bad the next good one after it (wrapping), deterministically,
    so every batch stays full (DDP ranks stay in step). Only `index`'s own failure is counted and listed in the
    item's `skipped`: the ones passed over are counted when their own index comes up, so every bad sample is
    counted once per epoch even across DataLoader workers. Past `max_bad_fraction` -> `TooManyBadSamples`.
    Failures are remembered per process (a bad file is not decoded twice), except transient I/O errors."""

    def _init_bad_samples(self, max_bad_fraction: float, bad_check_after: int, max_tries: int,
                          bad_sample_log: str | None) -> None:
        self.tracker = BadSampleTracker(max_bad_fraction, bad_check_after, bad_sample_log)
        self.max_tries = int(max_tries)
        self._known_bad: dict[int, BadSample] = {}

    def _load(self, i: int) -> dict:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    @property
    def stats(self) -> dict[str, Any]:
        """Counts in this process (`seen == good + bad`); with DataLoader workers, aggregate `skipped`."""
        return self.tracker.stats

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        index = int(index)
        skipped = []
        for k in range(min(self.max_tries, n)):
            i = (index + k) % n
            if i in self._known_bad:
                err = self._known_bad[i]
            else:
                try:
                    item = self._load(i)
                except BadSample as e:
                    err = e
                    if not e.transient:
                        self._known_bad[i] = e
                else:
                    if k == 0:
                        self.tracker.good(total=n)
                    item["skipped"] = skipped
                    return item
            if k == 0:
                skipped.append({"id": err.sample_id, "reason": err.reason})
                self.tracker.record(err, total=n)
        raise TooManyBadSamples(f"samples {index}..{index + min(self.max_tries, n) - 1} (mod {n}) are all bad; "
                                f"last: {err.reason}")


class SampleDataset(SkipBadSamples, Dataset):
    """Map-style dataset over samples (a list of dicts, or a dataset folder / shard / glob). Bad samples:
    `SkipBadSamples` (item `index`, or the next good one after it)."""

    def __init__(self, samples, tokenizer, cfg: VideoChatConfig, video_root=None, sampling: str = "rand", seed: int = 0,
                 feature_cache=None, max_length: int | None = None, max_bad_fraction: float = 0.01, *,
                 split: str | None = None, transform: FrameTransform | None = None, backend: str = "auto",
                 bad_check_after: int = 200, max_tries: int = 64, bad_sample_log: str | None = None):
        # shard lines are stored as read (no parse + re-serialise of millions of samples at start-up)
        self.samples = PackedSamples(raw_lines(samples, split) if _is_paths(samples) else samples)
        self.proc = _Processor(tokenizer, cfg, video_root, sampling, seed, feature_cache, max_length, transform, backend)
        self._init_bad_samples(max_bad_fraction, bad_check_after, max_tries, bad_sample_log)

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, i: int) -> dict:
        return self.proc(self.samples[i], i)

    def set_epoch(self, epoch: int) -> None:
        """New `rand` frame draws per epoch (also call `LengthGroupedSampler.set_epoch`)."""
        self.proc.epoch = int(epoch)

    def lengths(self) -> list[int]:
        """Approximate token lengths (for `LengthGroupedSampler`)."""
        tpc = self.proc.cfg.tokens_per_clip
        out = []
        for i in range(len(self)):
            try:
                out.append(approx_length(self.samples[i], tpc))
            except (AttributeError, TypeError, ValueError):  # malformed: it will be skipped when loaded
                out.append(0)
        return out


from videochat.data_stream import StreamingSampleDataset  # noqa: E402,F401  (re-exported; imports this module)
