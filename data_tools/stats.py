"""`videochat data stats DIR`: turns, clips per sample, words, dropped videos, formats; a histogram PNG."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import orjson

from .io import iter_samples


def sample_stats(s: dict) -> dict:
    """Per-sample figures: user turns, clips, clips shown (referenced), words of text, format."""
    refs = 0
    words = 0
    turns = 0
    for m in s["messages"]:
        if m["role"] == "user":
            turns += 1
        for p in m["content"]:
            if p.get("type") == "clip":
                refs += 1
            elif p.get("type") == "text":
                words += len(p["text"].split())
    return {"format": s.get("format", "?"), "turns": turns, "clips": len(s["clips"]), "shown": refs,
            "words": words, "videos": len(s["videos"])}


def _summary(x: np.ndarray) -> dict:
    if len(x) == 0:
        return {}
    return {"mean": round(float(x.mean()), 3), "min": int(x.min()), "p50": float(np.percentile(x, 50)),
            "p95": float(np.percentile(x, 95)), "max": int(x.max())}


def compute(dataset, split: str | None = None, limit: int | None = None) -> tuple[dict, dict]:
    """(summary dict, raw arrays) over the samples of a dataset."""
    from tqdm import tqdm

    cols = {k: [] for k in ("turns", "clips", "shown", "words")}
    fmts, splits = Counter(), Counter()
    for i, s in enumerate(tqdm(iter_samples(dataset, split), desc="stats", unit="sample", mininterval=1.0)):
        if limit is not None and i >= limit:
            break
        st = sample_stats(s)
        fmts[st["format"]] += 1
        for k in cols:
            cols[k].append(st[k])
    arr = {k: np.asarray(v, np.int64) for k, v in cols.items()}
    clips, shown = int(arr["clips"].sum()), int(arr["shown"].sum())
    summary = {
        "samples": len(arr["turns"]),
        "formats": dict(sorted(fmts.items())),
        "turns_per_sample": _summary(arr["turns"]),
        "clips_per_sample": _summary(arr["clips"]),
        "words_per_sample": _summary(arr["words"]),
        "clips": clips,
        "clips_video_dropped": clips - shown,
        "drop_fraction": round((clips - shown) / clips, 4) if clips else 0.0,
    }
    del splits
    return summary, arr


def plot(arr: dict, summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.5))
    for ax, key, title in zip(axes, ("turns", "clips", "words"), ("user turns", "clips", "words of text")):
        x = arr[key]
        if len(x):
            ax.hist(x, bins=min(50, max(1, int(x.max() - x.min() + 1))), color="#4477aa")
        ax.set_title(f"{title} per sample")
    f = summary["formats"]
    axes[3].bar(list(f), list(f.values()), color="#cc6677")
    axes[3].set_title("samples per format")
    fig.suptitle(f"{summary['samples']} samples, {summary['drop_fraction']:.1%} of clip videos dropped")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def register(sub) -> None:
    p = sub.add_parser("stats", help="statistics and a histogram PNG of a built dataset")
    p.add_argument("dataset", help="dataset folder (or shard glob)")
    p.add_argument("--split", choices=["train", "val"], default=None)
    p.add_argument("--png", default=None, help="histogram PNG (default DATASET/stats.png)")
    p.add_argument("--limit", type=int, default=None, help="only the first N samples")
    p.set_defaults(func=_main)


def _main(args) -> int:
    summary, arr = compute(args.dataset, args.split, args.limit)
    png = args.png or (os.path.join(args.dataset, "stats.png") if os.path.isdir(args.dataset) else "stats.png")
    plot(arr, summary, png)
    summary["png"] = png
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    return 0
