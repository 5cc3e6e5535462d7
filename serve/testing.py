"""Small helpers shared by the serve tests and `benchmarks/bench_serve.py`: test videos, a free port."""

from __future__ import annotations

import socket
from fractions import Fraction
from pathlib import Path

import numpy as np


def write_test_video(
    path: str | Path,
    num_frames: int = 16,
    fps: int = 8,
    size: tuple[int, int] = (64, 48),
    seed: int = 0,
    codec: str = "mpeg4",
) -> Path:
    """Write a short video with PyAV: a coloured square moving over a gradient (container from the suffix).

    `size` is (width, height). Frames differ from each other, so frame sampling is visible in thumbnails.
    """
    import av

    path = Path(path)
    w, h = size
    rng = np.random.default_rng(seed)
    colour = rng.integers(64, 256, size=3, dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        for i in range(num_frames):
            img = np.zeros((h, w, 3), dtype=np.uint8)
            img[..., 0] = (xx * 255 // max(w - 1, 1)).astype(np.uint8)
            img[..., 2] = (yy * 255 // max(h - 1, 1)).astype(np.uint8)
            side = max(4, min(w, h) // 3)
            x0 = int((w - side) * i / max(num_frames - 1, 1))
            y0 = (h - side) // 2
            img[y0 : y0 + side, x0 : x0 + side] = colour
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now (loopback by default)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


_TINY_DIR: Path | None = None


def tiny_model_dir() -> Path:
    """A folder holding `videochat_tiny(seed=0).save_pretrained(...)`, written once per process (tests,
    benchmark) into a private temp folder that is removed at exit."""
    global _TINY_DIR
    if _TINY_DIR is None or not (_TINY_DIR / "config.json").is_file():
        import atexit
        import shutil
        import tempfile

        from videochat.builders import videochat_tiny

        root = Path(tempfile.mkdtemp(prefix="videochat-tiny-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        videochat_tiny(seed=0).save_pretrained(root / "model")
        _TINY_DIR = root / "model"
    return _TINY_DIR
