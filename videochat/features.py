"""Frozen-encoder feature cache and `videochat features extract`.

The ViCLIP encoder is frozen in the align and instruct stages, so its tokens for a clip never change:
encode each distinct clip once, store the tokens, and train from them (no video decoding, no ViCLIP
forward). Layout of a cache folder:

    OUT/cache.json                  model fingerprint, frames per clip, sampling ("middle"), [S, C], transform
    OUT/index.jsonl                 one line per clip: key, shard, frame times (relative to the clip start)
    OUT/shards/features-00000.safetensors   fp16 tensors [S, C] named by key
    OUT/rejects.jsonl               clips that could not be decoded, with the reason

A clip's key hashes (video path as written in the samples, window, frames, sampling, model fingerprint).
Shards are written whole (temporary name, then rename) before their index lines are appended, so an
interrupted extraction loses at most the shard in progress and a re-run resumes with the clips missing.
The fingerprint hashes the vision encoder's config, weights, feature layer and the frame transform: a
cache made by another encoder is refused, not silently mixed.

Training from the cache uses `middle` sampling by construction (one deterministic set of frames per clip;
`rand` augmentation would need a fresh decode every epoch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

CACHE_JSON, INDEX, REJECTS, SHARDS = "cache.json", "index.jsonl", "rejects.jsonl", "shards"
_SHARD_RE = re.compile(r"features-(\d{5,})\.safetensors$")


class FeatureCacheError(RuntimeError):
    """A cache folder that is missing, inconsistent, or made by a different model."""


def clip_key(video: str, start: float | None, end: float | None, num_frames: int, sampling: str, fingerprint: str) -> str:
    """Stable key of one clip's features (times rounded to the millisecond)."""
    def r(x):
        return None if x is None else round(float(x), 3)

    blob = json.dumps([str(video), r(start), r(end), int(num_frames), sampling, fingerprint], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:40]


def model_fingerprint(model, transform) -> str:
    """Hash of what determines the cached tokens: ViCLIP config + weights, feature layer, frame transform."""
    from videochat.config import to_dict

    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(to_dict(model.config.viclip), sort_keys=True).encode())
    h.update(f"layer={model.config.vision_feature_layer};frames={model.config.num_frames};{transform!r}".encode())
    for name, t in sorted(model.viclip.state_dict().items()):
        if name.startswith("text_encoder."):
            continue  # the chat model drops the text tower; it never touches video tokens
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


class FeatureCache:
    """Read (and, for the extractor, write) a feature cache folder.

    `get(video, start, end, num_frames)` -> `(features fp16 [S, C], frame_times)` or None; safe in forked
    DataLoader workers (shard files are memory-mapped lazily per process).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        meta_path = self.root / CACHE_JSON
        if not meta_path.is_file():
            raise FeatureCacheError(f"{self.root}: no {CACHE_JSON} (not a feature cache; make one with "
                                    "`videochat features extract`)")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        self.fingerprint: str = self.meta["fingerprint"]
        self.sampling: str = self.meta["sampling"]
        self.num_frames: int = int(self.meta["num_frames"])
        self.feature_shape: tuple[int, int] = tuple(self.meta["feature_shape"])  # type: ignore[assignment]
        self._index: dict[str, tuple[int, list[float]]] = {}
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_rows: list[dict] = []
        self.reload()

    @classmethod
    def create(cls, root: str | os.PathLike, *, fingerprint: str, num_frames: int, feature_shape: tuple[int, int],
               transform: str = "", sampling: str = "middle", model: str = "") -> "FeatureCache":
        """Open `root` for extraction, creating it if needed; refuses a cache made with other settings."""
        root = Path(root)
        meta = {"version": 1, "fingerprint": fingerprint, "num_frames": int(num_frames), "sampling": sampling,
                "feature_shape": [int(x) for x in feature_shape], "dtype": "float16", "transform": transform,
                "model": model}
        path = root / CACHE_JSON
        if path.is_file():
            old = json.loads(path.read_text(encoding="utf-8"))
            for k in ("fingerprint", "num_frames", "sampling", "feature_shape"):
                if old.get(k) != meta[k]:
                    raise FeatureCacheError(
                        f"{root} holds features with {k}={old.get(k)!r}, this extraction has {meta[k]!r} "
                        f"(a different model or settings): use another --out folder")
        else:
            (root / SHARDS).mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(CACHE_JSON + ".tmp")
            tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        return cls(root)

    # ---------------------------------------------------------------- reading

    def reload(self) -> None:
        """(Re)read the index; lines whose shard file is missing (an interrupted write) are ignored."""
        self._index.clear()
        path = self.root / INDEX
        if not path.is_file():
            return
        present = {int(m.group(1)) for p in (self.root / SHARDS).glob("features-*.safetensors")
                   if (m := _SHARD_RE.search(p.name))}
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a torn last line from a crash mid-append
                if row.get("shard") in present:
                    self._index[row["key"]] = (int(row["shard"]), [float(t) for t in row["times"]])

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def key(self, video: str, start: float | None, end: float | None, num_frames: int | None = None) -> str:
        return clip_key(video, start, end, num_frames or self.num_frames, self.sampling, self.fingerprint)

    def get(self, video: str, start: float | None, end: float | None, num_frames: int | None = None):
        """`(features fp16 [S, C], frame times)` of a clip, or None when it is not cached."""
        if num_frames is not None and num_frames != self.num_frames:
            raise FeatureCacheError(f"{self.root} holds {self.num_frames}-frame clips, asked for {num_frames}")
        return self.get_key(self.key(video, start, end))

    def get_key(self, key: str):
        hit = self._index.get(key)
        if hit is None:
            return None
        shard, times = hit
        return self._handle(shard).get_tensor(key), list(times)

    def _handle(self, shard: int):
        from safetensors import safe_open

        if os.getpid() != self._pid:  # a forked worker: do not share the parent's mmaps
            self._handles, self._pid = {}, os.getpid()
        h = self._handles.get(shard)
        if h is None:
            if len(self._handles) >= 256:
                self._handles.pop(next(iter(self._handles)))
            h = self._handles[shard] = safe_open(str(self._shard_path(shard)), framework="pt")
        return h

    def _shard_path(self, shard: int) -> Path:
        return self.root / SHARDS / f"features-{shard:05d}.safetensors"

    # ---------------------------------------------------------------- writing (the extractor)

    def add(self, key: str, features: torch.Tensor, times: list[float], **info: Any) -> None:
        """Buffer one clip's features [S, C] (stored fp16); written by `flush`."""
        if tuple(features.shape) != self.feature_shape:
            raise FeatureCacheError(f"features of shape {tuple(features.shape)}, cache holds {self.feature_shape}")
        self._pending[key] = features.detach().to("cpu", torch.float16).contiguous()
        self._pending_rows.append({"key": key, "times": [round(float(t), 6) for t in times], **info})

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> int:
        """Write buffered features as one new shard, then index them; returns how many were written."""
        from safetensors.torch import save_file

        if not self._pending:
            return 0
        existing = [int(m.group(1)) for p in (self.root / SHARDS).glob("features-*.safetensors*")
                    if (m := re.search(r"features-(\d{5,})", p.name))]
        shard = max(existing, default=-1) + 1
        path = self._shard_path(shard)
        tmp = path.with_name(path.name + ".tmp")
        save_file(self._pending, str(tmp), metadata={"fingerprint": self.fingerprint})
        os.replace(tmp, path)
        index = self.root / INDEX
        torn = False
        if index.is_file() and index.stat().st_size:
            with open(index, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"  # a crash mid-append: end that line so ours stay parseable
        with open(index, "a", encoding="utf-8") as f:
            if torn:
                f.write("\n")
            for row in self._pending_rows:
                f.write(json.dumps({**row, "shard": shard}, separators=(",", ":")) + "\n")
                self._index[row["key"]] = (shard, row["times"])
            f.flush()
            os.fsync(f.fileno())
        n = len(self._pending)
        self._pending, self._pending_rows = {}, []
        return n


def register(subparsers) -> None:
    """`videochat features extract ...` (see `videochat.features_extract`)."""
    from videochat.features_extract import register as _register

    _register(subparsers)
