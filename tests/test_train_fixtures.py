"""Shared helpers of the train tests (imported by tests/test_train_*.py): a tiny sample set with real mp4
clips written by PyAV, and tiny train configs. Plus a check of the helpers themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

COLORS = {"red": (220, 40, 40), "green": (40, 190, 70), "blue": (50, 90, 235), "yellow": (235, 215, 50)}
ROOT = Path(__file__).resolve().parents[1]


def write_video(path: Path, color, frames: int = 16, size: int = 32, fps: int = 8, seed: int = 0) -> None:
    import av

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for i in range(frames):
            img = np.zeros((size, size, 3), np.uint8)
            x = (i * 2 + int(rng.integers(0, 4))) % (size - 8)
            img[8:20, x:x + 8] = color
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


def make_samples(root: Path, n_train: int = 8, n_val: int = 2) -> Path:
    """A sample set (`DIR/{train,val}/shard-00000.jsonl`, videos under DIR/videos) in the sample schema:
    one clip per sample, a question, the caption as the answer (the `caption` format)."""
    data = root / "samples"
    names = list(COLORS)
    for split, n in (("train", n_train), ("val", n_val)):
        rows = []
        for i in range(n):
            color = names[i % len(names)]
            rel = f"videos/{split}{i}.mp4"
            if not (data / rel).exists():
                write_video(data / rel, COLORS[color], seed=i)
            caption = f"a {color} square moves right" + (" fast" if i % 2 else "")
            rows.append({
                "id": f"{split}-{i}", "format": "caption",
                "videos": [{"video_id": f"{split}{i}", "path": rel}],
                "clips": [{"video": 0, "start": 0.0, "end": 2.0}],
                "messages": [
                    {"role": "user", "content": [{"type": "clip", "clip": 0},
                                                 {"type": "text", "text": "Describe the video."}]},
                    {"role": "assistant", "content": [{"type": "text", "text": caption}]},
                ],
            })
        (data / split).mkdir(parents=True, exist_ok=True)
        (data / split / "shard-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def tiny_overrides(data: Path, out: Path, recipe: str, steps: int = 4, **extra) -> list[str]:
    """CLI-style overrides on top of train/configs/<recipe>_tiny.yaml for a short deterministic run."""
    items = {
        "output_dir": str(out), "data.path": str(data), "data.video_root": str(data), "max_steps": steps,
        "save_every": 2, "eval_every": steps, "log_every": 1, "progress": False, "tensorboard": False,
        "engine.threads": 1,
    }
    items.update(extra)
    return [f"{k}={v}" if not isinstance(v, bool) else f"{k}={'true' if v else 'false'}" for k, v in items.items()]


def config_path(recipe: str) -> Path:
    return ROOT / "train" / "configs" / f"{recipe}_tiny.yaml"


def test_fixture_samples_are_readable(tmp_path):
    from data_tools.io import iter_samples

    data = make_samples(tmp_path, n_train=2, n_val=1)
    rows = list(iter_samples(data, split="train"))
    assert [r["id"] for r in rows] == ["train-0", "train-1"]
    assert (data / "videos" / "train0.mp4").stat().st_size > 0
