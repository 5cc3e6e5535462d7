"""Decoding backends behind `videochat.video.read_clip` (decord, PyAV, optional torchcodec).

Each backend builds the file's per-frame timeline (presentation times, seconds from the stream start),
hands it to the shared sampler in `videochat.video`, and decodes only the selected frames. Keeping the
sampling outside the backends is what makes them return identical frames.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

import av
import av.error

from videochat import video as _v
from videochat.video import VideoDecodeError, VideoInfo

try:  # decord is optional: no wheels for every platform (aarch64, macOS arm64)
    import decord

    decord.logging.set_level(decord.logging.QUIET)  # its bundled FFmpeg would print per-file errors
    HAVE_DECORD = True
except Exception:  # pragma: no cover - depends on the platform
    decord = None
    HAVE_DECORD = False

try:  # pragma: no cover - torchcodec is not installed in CI
    import torchcodec.decoders  # noqa: F401

    HAVE_TORCHCODEC = True
except Exception:
    HAVE_TORCHCODEC = False

# PyAV leaves libav logging off unless asked; keep it that way even if another library turned it on.
try:
    av.logging.set_level(None)
except Exception:  # pragma: no cover - very old PyAV
    pass


@dataclass
class Request:
    """One `read_clip` call, as the backends see it."""

    path: str
    start: float | None
    end: float | None
    num_frames: int
    sampling: str
    seed: int | None
    num_threads: int
    info: VideoInfo


def _select(req: Request, frame_times: np.ndarray, duration: float | None = None) -> tuple[list[int], float, float, bool]:
    """Indices into `frame_times` (sorted) of the frames to return, and the effective window."""
    if duration is None:
        duration = _v.timeline_duration(frame_times, req.info.fps)
    s, e, clamped = _v.resolve_window(req.path, req.start, req.end, duration, declared=req.info.duration)
    if req.sampling == "all":
        return _v.window_indices(frame_times, s, e), s, e, clamped
    rng = np.random.default_rng(req.seed)
    times = _v.sample_times(s, e, req.num_frames, req.sampling, rng)
    return _v.frame_indices_at(frame_times, times), s, e, clamped


def _reason(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[-1][:300]


# --------------------------------------------------------------------------------------------------
# PyAV
# --------------------------------------------------------------------------------------------------


def pyav_probe(path: str) -> VideoInfo:
    """Header facts plus one decoded frame (which proves the file decodes and carries the rotation)."""
    try:
        with av.open(path, metadata_errors="ignore") as c:
            if not c.streams.video:
                raise VideoDecodeError(path, "no video stream in the file")
            s = c.streams.video[0]
            fps = float(s.average_rate or s.guessed_rate or s.base_rate or 0.0)
            if s.duration and s.time_base:
                duration = float(s.duration * s.time_base)
            elif c.duration:
                duration = c.duration / av.time_base
            else:
                duration = 0.0
            num_frames = int(s.frames) or (int(round(duration * fps)) if fps else 0)
            first = next(iter(c.decode(s)), None)
            if first is None:
                raise VideoDecodeError(path, "the video stream has no decodable frame")
            rotation = int(first.rotation or 0)
            w, h = first.width, first.height
            if rotation % 180:
                w, h = h, w
            return VideoInfo(duration, fps, num_frames, w, h, rotation, s.codec_context.name)
    except VideoDecodeError:
        raise
    except (av.error.FFmpegError, StopIteration, ValueError, UnicodeDecodeError, IndexError) as e:
        raise VideoDecodeError(path, f"not a readable video ({_reason(e)})") from None


def _pyav_timeline(req: Request, c, s) -> tuple[np.ndarray, list[int], list[int], float]:
    """(frame times in seconds, sorted pts, sorted keyframe pts, duration) from one demux pass (no decoding)."""
    path = req.path
    pts: list[int] = []
    keys: list[int] = []
    missing = 0
    try:
        for pk in c.demux(s):
            if pk.size == 0:
                continue  # the flush packet at EOF
            ts = pk.pts if pk.pts is not None else pk.dts
            if ts is None:
                missing += 1
                continue
            pts.append(ts)
            if pk.is_keyframe:
                keys.append(ts)
    except av.error.FFmpegError:
        pass  # a truncated file: the frames demuxed so far form the timeline; later ones are gone
    if missing and not pts:
        raise VideoDecodeError(path, "the video packets carry no timestamps")
    if not pts:
        raise VideoDecodeError(path, "no video packets (empty or truncated stream)")
    pts_sorted = sorted(set(pts))
    start = s.start_time if s.start_time is not None else pts_sorted[0]
    tb = float(s.time_base)
    times = np.round((np.asarray(pts_sorted, dtype=np.float64) - start) * tb, 6)
    return times, pts_sorted, sorted(set(keys)), _v.timeline_duration(times, req.info.fps)


_TIMELINES: OrderedDict = OrderedDict()  # (backend, path, size, mtime) -> per-frame timeline
_TIMELINES_MAX = 256  # later clips of a recently read video skip the demux pass / timestamp query
_TIMELINES_LOCK = threading.Lock()


def _cached_timeline(kind: str, path: str, compute):
    st = os.stat(path)
    key = (kind, path, st.st_size, st.st_mtime_ns)
    with _TIMELINES_LOCK:
        hit = _TIMELINES.get(key)
        if hit is not None:
            _TIMELINES.move_to_end(key)
            return hit
    hit = compute()
    with _TIMELINES_LOCK:
        _TIMELINES[key] = hit
        while len(_TIMELINES) > _TIMELINES_MAX:
            _TIMELINES.popitem(last=False)
    return hit


def read_pyav(req: Request) -> _v.Clip:
    path = req.path
    try:
        try:
            return _read_pyav_once(req, allow_seek=True)
        except _SeekFailed:  # some containers (MPEG-TS, broken indexes) seek badly: decode from the start
            return _read_pyav_once(req, allow_seek=False)
    except VideoDecodeError:
        raise
    except (av.error.FFmpegError, ValueError, IndexError) as e:
        raise VideoDecodeError(path, f"decode failed ({_reason(e)})") from None


class _SeekFailed(Exception):
    """A seek landed after its target or found nothing: fall back to sequential decoding."""


def _read_pyav_once(req: Request, allow_seek: bool) -> _v.Clip:
    with av.open(req.path, metadata_errors="ignore") as c:
        s = c.streams.video[0]
        cc = s.codec_context
        cc.thread_count = req.num_threads
        cc.thread_type = "SLICE" if req.num_threads == 1 else "AUTO"
        times, pts_sorted, keys, duration = _cached_timeline("pyav", req.path, lambda: _pyav_timeline(req, c, s))
        idx, ws, we, clamped = _select(req, times, duration)
        targets = sorted({pts_sorted[i] for i in idx})
        if not allow_seek:
            c.seek(0)  # back to the start after the demux pass (a byte-0 rewind every demuxer supports)
        decoded = _pyav_decode(req.path, c, s, targets, keys, allow_seek)
        start = s.start_time if s.start_time is not None else pts_sorted[0]
        tb = float(s.time_base)
    frames = np.stack([decoded[pts_sorted[i]][0] for i in idx])
    stamps = [round(float((decoded[pts_sorted[i]][1] - start) * tb), 6) for i in idx]
    return _v.Clip(frames, stamps, clamped, ws, we, list(idx), "pyav", [float(times[i]) for i in idx])


def _pyav_decode(
    path: str, c, s, targets: list[int], keys: list[int], allow_seek: bool
) -> dict[int, tuple[np.ndarray, int]]:
    """Decode the frames at `targets` (sorted pts) -> {pts: (rgb [H, W, 3], decoded pts)}.

    With `allow_seek`: seek to the keyframe before a target and decode forward, re-seeking only when a
    keyframe lies between the current frame and the next target. Raises `_SeekFailed` when a seek lands
    after its target or on nothing; without `allow_seek` decodes sequentially from where `c` stands."""
    out: dict[int, tuple[np.ndarray, int]] = {}
    ti = 0
    need_seek = allow_seek
    while ti < len(targets):
        if need_seek:
            k = bisect.bisect_right(keys, targets[ti]) - 1
            c.seek(int(keys[k] if k >= 0 else targets[ti]), stream=s, backward=True, any_frame=False)
        fresh, need_seek = allow_seek, False
        for fr in c.decode(s):
            p = fr.pts
            if p is None:
                continue
            if fresh and p > targets[ti]:
                raise _SeekFailed
            fresh = False
            if p < targets[ti]:
                continue
            arr = None
            while ti < len(targets) and targets[ti] <= p:  # < p: that frame is missing, take the next one
                if arr is None:
                    arr = fr.to_ndarray(format="rgb24")
                    if fr.rotation:
                        arr = np.rot90(arr, k=int(fr.rotation) // 90)
                out[targets[ti]] = (arr, p)
                ti += 1
            if ti == len(targets):
                break
            k = bisect.bisect_right(keys, p)
            if allow_seek and k < len(keys) and keys[k] <= targets[ti]:
                need_seek = True  # jumping to that keyframe is cheaper than decoding up to it
                break
        if ti < len(targets) and not need_seek:
            if allow_seek:
                raise _SeekFailed
            t = float((targets[ti] - (s.start_time or 0)) * s.time_base)
            raise VideoDecodeError(path, f"truncated or corrupt: no frame decodes at or after {t:.3f}s")
    return out


# --------------------------------------------------------------------------------------------------
# decord
# --------------------------------------------------------------------------------------------------


def _decord_timeline(req: Request, vr) -> tuple[np.ndarray, np.ndarray, float]:
    """(sorted frame times, decord index of each, duration)."""
    raw = np.round(np.asarray(vr.get_frame_timestamp(np.arange(len(vr)))[:, 0], dtype=np.float64), 6)  # float32 noise
    order = np.argsort(raw, kind="stable")  # decord indexes frames in presentation order; make sure
    times = raw[order]
    return times, order, _v.timeline_duration(times, req.info.fps)


def read_decord(req: Request) -> _v.Clip:
    vr = decord.VideoReader(req.path, ctx=decord.cpu(0), num_threads=req.num_threads)
    times, order, duration = _cached_timeline("decord", req.path, lambda: _decord_timeline(req, vr))
    idx, ws, we, clamped = _select(req, times, duration)
    src = [int(order[i]) for i in idx]
    unique = sorted(set(src))
    batch = vr.get_batch(unique)
    batch = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)
    h, w = req.info.height, req.info.width
    if batch.ndim != 4 or batch.shape[1:] != (h, w, 3) or batch.dtype != np.uint8:
        raise RuntimeError(f"decord returned frames of shape {batch.shape}, expected (*, {h}, {w}, 3)")
    if src == unique:
        frames = batch  # the common case: distinct frames in order, no copy
    else:
        pos = {f: k for k, f in enumerate(unique)}
        frames = batch[[pos[f] for f in src]]
    stamps = [float(times[i]) for i in idx]
    return _v.Clip(frames, stamps, clamped, ws, we, list(idx), "decord", stamps)


# --------------------------------------------------------------------------------------------------
# torchcodec (optional; used only when asked for)
# --------------------------------------------------------------------------------------------------


def read_torchcodec(req: Request) -> _v.Clip:  # pragma: no cover - torchcodec is not installed in CI
    from torchcodec.decoders import VideoDecoder

    if req.sampling == "all":
        raise ValueError("sampling 'all' is implemented for the decord and pyav backends")
    try:
        dec = VideoDecoder(req.path, seek_mode="exact", num_ffmpeg_threads=req.num_threads or 1)
        md = dec.metadata
        begin = float(md.begin_stream_seconds or 0.0)
        duration = float(md.end_stream_seconds) - begin
        s, e, clamped = _v.resolve_window(req.path, req.start, req.end, duration, declared=req.info.duration)
        times = _v.sample_times(s, e, req.num_frames, req.sampling, np.random.default_rng(req.seed))
        batch = dec.get_frames_played_at(seconds=[begin + t for t in times])
    except VideoDecodeError:
        raise
    except Exception as e:
        raise VideoDecodeError(req.path, f"torchcodec: {_reason(e)}") from None
    frames = batch.data.permute(0, 2, 3, 1).contiguous().numpy()
    stamps = [float(t) - begin for t in batch.pts_seconds.tolist()]
    fps = float(md.average_fps or req.info.fps or 1.0)
    idx = [int(round(t * fps)) for t in stamps]
    return _v.Clip(frames, stamps, clamped, s, e, idx, "torchcodec")
