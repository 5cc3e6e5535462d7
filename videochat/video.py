"""Video decoding and frame sampling: one reader for training, evaluation and serving.

`read_clip(path, start, end, num_frames, sampling)` returns `Clip.frames` uint8 [T, H, W, 3] (RGB, display
orientation) and each frame's presentation time in seconds from the start of the video stream.

Backends: decord (default), PyAV (automatic fallback when decord is missing, fails on a file, or the file
carries rotation metadata, which decord 0.6 mishandles), torchcodec (optional, `backend="torchcodec"`).
Every backend samples through the same function on the same per-frame timeline, so they return the same
frames (tested).

Sampling over the window `[start, end]` (clamped to the video; `Clip.clamped` says so), T = `num_frames`:
- `middle`: split the window into T equal time segments, take the frame shown at each segment's centre
  (eval / serving; deterministic);
- `rand`: one uniformly random time inside each segment (training; `seed` makes it reproducible);
- `fps:X`: X frames per second of window (segment centres), capped at `num_frames` (fewer frames for short
  windows; the cap spreads them evenly over the whole window);
- `all`: every frame of the window (from the frame shown at `start` to the one shown at `end`; `num_frames`
  is ignored). `subsample(clip, T, sampling, seed)` then draws any of the modes above from it in memory,
  returning exactly what `read_clip` would (same timeline, same sampling function): decode a short clip
  once, sample it every epoch (`viclip.cache_frames`).
"The frame shown at time t" is the last frame whose timestamp is <= t, so variable frame rate is handled
exactly and a window shorter than T frames simply repeats frames. Each distinct frame is decoded once.

Every failure to read a file (missing, empty, not a video, corrupt, truncated, window past the end) raises
`VideoDecodeError` naming the path and the reason; codec log spam is silenced.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np


__all__ = [
    "VideoDecodeError",
    "ClipWindowError",
    "VideoNotFoundError",
    "VideoInfo",
    "Clip",
    "FrameTransform",
    "read_clip",
    "probe",
    "sample_times",
    "frame_indices_at",
    "parse_sampling",
    "available_backends",
]



def __getattr__(name: str):
    # FrameTransform lives in videochat.transforms (torch); imported on first use so that `probe` /
    # `read_clip` users (data validation, tools) do not pay for importing torch.
    if name == "FrameTransform":
        from videochat.transforms import FrameTransform

        return FrameTransform
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_EPS = 1e-6  # seconds; absorbs float rounding when a sample time lands exactly on a frame timestamp


class VideoDecodeError(Exception):
    """A video that cannot be read: missing, empty, not a video, corrupt, truncated, or a bad window."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read video {self.path!r}: {reason}")

    def __reduce__(self):  # picklable (DataLoader workers under spawn / forkserver) with its two arguments
        return type(self), (self.path, self.reason)


class VideoNotFoundError(VideoDecodeError, FileNotFoundError):
    """The video file does not exist (also a `FileNotFoundError`)."""


class ClipWindowError(VideoDecodeError):
    """The requested `[start, end]` window does not overlap the video (or start > end)."""


@dataclass(frozen=True)
class VideoInfo:
    """Stream facts from the container header (cheap; no full decode).

    `width`/`height` are in display orientation (swapped for 90/270 degree rotation metadata).
    `duration` may overstate a truncated file; `read_clip` works from the frames actually present.
    """

    duration: float
    fps: float
    num_frames: int
    width: int
    height: int
    rotation: int = 0
    """Counter-clockwise degrees the frames are turned for display (0, 90, 180, -90)."""
    codec: str = ""


@dataclass
class Clip:
    """T sampled frames of a window and where they came from."""

    frames: np.ndarray
    """uint8 [T, H, W, 3] RGB, display orientation."""
    timestamps: list[float]
    """Presentation time of each frame, seconds from the start of the video stream."""
    clamped: bool
    """True when the requested window reached outside the video and was cut to it."""
    start: float = 0.0
    """Effective window start after clamping (seconds)."""
    end: float = 0.0
    """Effective window end after clamping (seconds)."""
    indices: list[int] = field(default_factory=list)
    """Frame index (presentation order) of each frame."""
    backend: str = ""
    """Which backend decoded it."""
    timeline: list[float] = field(default_factory=list)
    """Each frame's time on the video's frame timeline (what sampling searches). Equal to `timestamps`
    unless the decoder substituted the next frame for one that did not decode."""

    def relative_times(self, ndigits: int = 1) -> list[float]:
        """Frame times relative to the window start, rounded (what the prompt states, as VideoChat2)."""
        return [round(t - self.start, ndigits) for t in self.timestamps]


# --------------------------------------------------------------------------------------------------
# Sampling: pure functions on a frame timeline (tested against hand-computed values)
# --------------------------------------------------------------------------------------------------


def parse_sampling(sampling: str) -> tuple[str, float | None]:
    """`"middle"|"rand"|"all"|"fps:X"` -> (mode, X or None); raises ValueError for anything else."""
    if sampling in ("middle", "rand", "all"):
        return sampling, None
    if sampling.startswith("fps:"):
        try:
            fps = float(sampling[4:])
        except ValueError:
            fps = float("nan")
        if not math.isfinite(fps) or fps <= 0:
            raise ValueError(f"sampling {sampling!r}: fps:X needs a positive number X")
        return "fps", fps
    raise ValueError(f"unknown sampling {sampling!r} (expected middle, rand, all or fps:X)")


def sample_times(
    start: float, end: float, num_frames: int, sampling: str = "middle", rng: np.random.Generator | None = None
) -> list[float]:
    """Sample times (seconds) inside `[start, end]` for one clip; see the module docstring for the modes."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    mode, fps = parse_sampling(sampling)
    if mode == "all":
        raise ValueError("sampling 'all' depends on the frame timeline: use window_indices()")
    span = max(0.0, end - start)
    n = num_frames
    if mode == "fps":
        n = min(num_frames, max(1, int(math.floor(span * fps + _EPS))))
    seg = span / n
    if mode == "rand":
        rng = rng if rng is not None else np.random.default_rng()
        offsets = rng.random(n)
    else:
        offsets = np.full(n, 0.5)
    return [start + (k + float(offsets[k])) * seg for k in range(n)]


def frame_indices_at(frame_times: np.ndarray, times: list[float]) -> list[int]:
    """Index of the frame shown at each time: the last frame with timestamp <= t (the first frame if t
    precedes it). `frame_times` is sorted ascending (presentation order)."""
    idx = np.searchsorted(frame_times, np.asarray(times, dtype=np.float64) + _EPS, side="right") - 1
    return np.clip(idx, 0, len(frame_times) - 1).astype(int).tolist()


def window_indices(frame_times: np.ndarray, start: float, end: float) -> list[int]:
    """Every frame shown during `[start, end]` (sampling `all`): the frame shown at `start` through the
    frame shown at `end`. Any time in the window maps to one of them, so `subsample` is exact."""
    first, last = frame_indices_at(frame_times, [start, end])
    return list(range(first, last + 1))


def subsample(clip: "Clip", num_frames: int, sampling: str = "middle", seed: int | None = None) -> "Clip":
    """Sample `num_frames` frames from a clip read with sampling `all`, in memory: the same frames, times
    and indices that `read_clip` returns for the window the clip was read with (same mode and seed)."""
    times = sample_times(clip.start, clip.end, num_frames, sampling, np.random.default_rng(seed))
    timeline = clip.timeline or clip.timestamps
    local = frame_indices_at(np.asarray(timeline, dtype=np.float64), times)
    return Clip(clip.frames[local], [clip.timestamps[i] for i in local], clip.clamped, clip.start, clip.end,
                [clip.indices[i] for i in local], clip.backend, [timeline[i] for i in local])


def resolve_window(
    path: str, start: float | None, end: float | None, duration: float, declared: float | None = None
) -> tuple[float, float, bool]:
    """Clamp `[start, end]` to `[0, duration]`; raise `ClipWindowError` when nothing is left."""
    s = 0.0 if start is None else float(start)
    e = duration if end is None else float(end)
    if not (math.isfinite(s) and math.isfinite(e)):
        raise ClipWindowError(path, f"window [{start}, {end}] is not finite")
    if s > e:
        raise ClipWindowError(path, f"window start {s:.3f}s is after its end {e:.3f}s")
    if s >= duration:
        hint = ""
        if declared is not None and declared > duration + 0.5 and s < declared:
            hint = f" (the header says {declared:.3f}s: the file looks truncated)"
        raise ClipWindowError(path, f"window [{s:.3f}, {e:.3f}]s starts past the end of the video ({duration:.3f}s){hint}")
    clamped = s < 0 or e > duration + 1e-3
    return max(0.0, s), min(e, duration), clamped


def timeline_duration(frame_times: np.ndarray, fps: float | None = None) -> float:
    """End of the last frame: its timestamp plus one typical frame duration."""
    if len(frame_times) == 0:
        return 0.0
    if len(frame_times) > 1:
        step = float(np.median(np.diff(frame_times)))
    else:
        step = 1.0 / fps if fps else 0.0
    return float(frame_times[-1]) + max(step, 0.0)


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def available_backends() -> list[str]:
    """Installed decoding backends, in the order `backend="auto"` tries them (torchcodec only on request)."""
    from videochat import video_backends as vb

    return [name for name, ok in (("decord", vb.HAVE_DECORD), ("pyav", True), ("torchcodec", vb.HAVE_TORCHCODEC)) if ok]


def _check_file(path: str) -> os.stat_result:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise VideoNotFoundError(path, "no such file") from None
    except OSError as e:
        raise VideoDecodeError(path, f"cannot stat: {e.strerror or e}") from None
    if not os.path.isfile(path):
        raise VideoDecodeError(path, "not a regular file")
    if st.st_size == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    return st


@functools.lru_cache(maxsize=4096)
def _probe_cached(path: str, size: int, mtime_ns: int) -> VideoInfo:
    from videochat import video_backends as vb

    return vb.pyav_probe(path)


def probe(path: str | os.PathLike) -> VideoInfo:
    """Duration, fps, frame count, display size and rotation of a video (cached per file version).

    Raises `VideoDecodeError` for a missing, empty, non-video or undecodable file (it decodes one frame).
    """
    p = os.fspath(path)
    st = _check_file(p)
    return _probe_cached(p, st.st_size, st.st_mtime_ns)  # keyed by file version: an edited file is re-probed


def read_clip(
    path: str | os.PathLike,
    start: float | None = None,
    end: float | None = None,
    num_frames: int = 8,
    sampling: str = "middle",
    seed: int | None = None,
    backend: str = "auto",
    *,
    num_threads: int | None = None,
) -> Clip:
    """Decode `num_frames` frames of the window `[start, end]` (seconds; None = the whole video).

    `seed` fixes `rand` sampling (None: fresh randomness). `backend`: auto | decord | pyav | torchcodec;
    `auto` uses decord and falls back to PyAV when decord is missing, fails, or the file is rotated.
    `num_threads`: decoder threads (None: 1 inside DataLoader workers, else the backend's default).
    Returns `Clip(frames uint8 [T, H, W, 3], timestamps, clamped, ...)`; raises `VideoDecodeError`.
    """
    from videochat import video_backends as vb

    p = os.fspath(path)
    parse_sampling(sampling)  # fail fast on a bad mode (a caller bug: ValueError, not VideoDecodeError)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if backend not in ("auto", "decord", "pyav", "torchcodec"):
        raise ValueError(f"unknown backend {backend!r} (auto, decord, pyav, torchcodec)")
    info = probe(p)  # validates the file cheaply before any backend touches it (no decord log spam)
    if num_threads is None:
        num_threads = 1 if _in_dataloader_worker() else 0
    request = vb.Request(p, start, end, num_frames, sampling, seed, num_threads, info)

    if backend == "torchcodec":
        if not vb.HAVE_TORCHCODEC:
            raise RuntimeError("backend='torchcodec' requested but torchcodec is not installed")
        return vb.read_torchcodec(request)
    version = (p, *_file_version(p))
    use_decord = backend == "decord" or (
        backend == "auto" and vb.HAVE_DECORD and info.rotation == 0 and version not in _DECORD_FAILED
    )
    if backend == "decord" and not vb.HAVE_DECORD:
        raise RuntimeError("backend='decord' requested but decord is not installed (pip install decord)")
    if use_decord:
        try:
            return vb.read_decord(request)
        except ClipWindowError:
            raise  # the window is wrong, not the decoder: PyAV would say the same
        except Exception as e:  # decord failed on this file: PyAV decides whether it is really bad
            if backend == "decord":
                raise VideoDecodeError(p, f"decord: {_short(e)}") from None
            decord_reason = _short(e)
            if len(_DECORD_FAILED) > 4096:
                _DECORD_FAILED.clear()
            _DECORD_FAILED.add(version)  # next clips of this file go straight to PyAV
            try:
                return vb.read_pyav(request)
            except VideoDecodeError as e2:
                raise type(e2)(p, f"{e2.reason} (decord also failed: {decord_reason})") from None
    return vb.read_pyav(request)


_DECORD_FAILED: set[tuple] = set()  # file versions decord could not read


def _file_version(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _short(e: BaseException, limit: int = 200) -> str:
    msg = str(e).strip().splitlines()
    text = msg[-1] if msg else type(e).__name__
    return f"{type(e).__name__}: {text[:limit]}"


def _in_dataloader_worker() -> bool:
    if "torch" not in sys.modules:  # no torch, no DataLoader: do not import it just to ask
        return False
    try:
        import torch.utils.data

        return torch.utils.data.get_worker_info() is not None
    except Exception:  # pragma: no cover - torch is a hard dependency
        return False
