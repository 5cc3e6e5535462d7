"""`videochat features extract --model DIR --samples DIR --out DIR`: fill a `FeatureCache` (resumable).

Every distinct clip referenced by the samples is decoded once (`middle` sampling), transformed, encoded by
the model's frozen ViCLIP (`VideoChatModel.vision_features`) and stored as fp16 tokens. Clips already in
the cache are skipped, so re-running after an interruption continues where it stopped. Clips whose video
cannot be read go to `OUT/rejects.jsonl` with the reason; counts in = cached + extracted + rejected.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from videochat.features import REJECTS, FeatureCache, model_fingerprint


class _Clips(Dataset):
    """Distinct clips to encode: decode + transform in DataLoader workers."""

    def __init__(self, todo: list[tuple[str, str, float | None, float | None]], video_root, num_frames, transform):
        self.todo, self.root, self.num_frames, self.transform = todo, video_root, num_frames, transform

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from videochat.video import VideoDecodeError, read_clip

        key, video, start, end = self.todo[i]
        path = video if self.root is None or os.path.isabs(video) else os.path.join(self.root, video)
        row = {"key": key, "video": video, "start": start, "end": end}
        try:
            clip = read_clip(path, start, end, self.num_frames, "middle")
        except VideoDecodeError as e:
            return {**row, "error": str(e)}
        return {**row, "frames": self.transform(clip.frames), "times": clip.relative_times(ndigits=6)}


def collect_clips(samples, cache: FeatureCache, split: str | None = None):
    """-> (distinct clips not yet cached [(key, video, start, end)], number of distinct clips, malformed)."""
    from videochat.data import load_samples, referenced_clips

    seen: set[str] = set()
    todo, malformed = [], []
    for n, sample in enumerate(load_samples(samples, split)):
        try:
            for ci in referenced_clips(sample["messages"]):
                clip = sample["clips"][ci]
                video = sample["videos"][int(clip["video"])]["path"]
                key = cache.key(video, clip.get("start"), clip.get("end"))
                if key not in seen:
                    seen.add(key)
                    if key not in cache:
                        todo.append((key, video, clip.get("start"), clip.get("end")))
        except (KeyError, IndexError, TypeError, ValueError) as e:
            malformed.append({"id": sample.get("id", n) if isinstance(sample, dict) else n, "reason": f"malformed sample: {e!r}"})
    return todo, len(seen), malformed


def extract(model, samples, out: str | os.PathLike, *, video_root=None, split: str | None = None, batch_size: int = 8,
            num_workers: int = 0, shard_size: int = 256, progress: bool = True, transform=None) -> dict[str, Any]:
    """Encode the samples' clips not yet in the cache at `out`; returns the counts."""
    from tqdm.auto import tqdm

    from videochat.transforms import FrameTransform

    cfg = model.config
    transform = transform or FrameTransform.from_config(cfg)
    shape = (1 + cfg.num_frames * cfg.viclip.num_patches, cfg.viclip.width)
    cache = FeatureCache.create(out, fingerprint=model_fingerprint(model, transform), num_frames=cfg.num_frames,
                                feature_shape=shape, transform=repr(transform), model=str(getattr(model, "name_or_path", "")))
    todo, distinct, malformed = collect_clips(samples, cache, split)
    counts = {"clips": distinct, "cached_before": distinct - len(todo), "extracted": 0, "rejected": 0,
              "malformed_samples": len(malformed)}
    rejects = open(Path(out) / REJECTS, "a", encoding="utf-8")
    for row in malformed:
        rejects.write(json.dumps(row) + "\n")
    loader = DataLoader(_Clips(todo, video_root, cfg.num_frames, transform), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=list, persistent_workers=False)
    bar = tqdm(total=len(todo), unit="clip", desc="features", disable=not progress)
    try:
        for batch in loader:
            good = [b for b in batch if "error" not in b]
            for b in batch:
                if "error" in b:
                    rejects.write(json.dumps({k: b[k] for k in ("key", "video", "start", "end")} | {"reason": b["error"]}) + "\n")
                    counts["rejected"] += 1
            if good:
                feats = model.vision_features(torch.stack([b["frames"] for b in good]))  # [n, S, C]
                for b, f in zip(good, feats):
                    cache.add(b["key"], f, b["times"], video=b["video"], start=b["start"], end=b["end"])
            if cache.pending >= shard_size:
                counts["extracted"] += cache.flush()
            bar.update(len(batch))
        counts["extracted"] += cache.flush()
    finally:
        bar.close()
        rejects.close()
    return counts


def _cmd_extract(args: argparse.Namespace) -> int:
    from videochat.features import FeatureCacheError
    from videochat.model import VideoChatModel

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = VideoChatModel.from_pretrained(args.model, device=device, dtype=args.dtype)
    model.eval()
    try:
        counts = extract(model, args.samples, args.out, video_root=args.videos, split=args.split,
                         batch_size=args.batch_size, num_workers=args.num_workers, shard_size=args.shard_size,
                         progress=not args.no_progress)
    except FeatureCacheError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(counts))
    todo = counts["clips"] - counts["cached_before"]
    if todo and counts["rejected"] > args.max_bad_fraction * todo:
        print(f"error: {counts['rejected']} of {todo} clips could not be decoded (> max_bad_fraction="
              f"{args.max_bad_fraction}); see {Path(args.out) / REJECTS}", file=sys.stderr)
        return 1
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("features", help="pre-compute frozen ViCLIP features for a sample set",
                              description="Frozen-encoder feature cache (train without decoding videos).")
    sub = p.add_subparsers(dest="features_command", metavar="ACTION")
    e = sub.add_parser("extract", help="encode every distinct clip once (resumable)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--model", required=True, help="a VideoChatModel folder (save_pretrained / export)")
    e.add_argument("--samples", required=True, help="dataset folder, shard file or glob")
    e.add_argument("--out", required=True, help="cache folder (created; re-run to resume)")
    e.add_argument("--videos", default=None, help="root for relative video paths in the samples")
    e.add_argument("--split", default=None, choices=["train", "val"], help="only this split (default: all)")
    e.add_argument("--batch-size", type=int, default=8, help="clips per encoder forward")
    e.add_argument("--num-workers", type=int, default=2, help="DataLoader workers decoding videos")
    e.add_argument("--shard-size", type=int, default=256, help="clips per shard file (the unit of resume)")
    e.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    e.add_argument("--dtype", default=None, help="model dtype override (float32 | bfloat16 | float16)")
    e.add_argument("--max-bad-fraction", type=float, default=0.01, help="exit 1 when more clips than this fail")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=_cmd_extract)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
