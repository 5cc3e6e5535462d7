"""videochat.video: sampling against hand-computed values, backend parity, edge-case files, bad files."""

from __future__ import annotations

import os

import numpy as np
import pytest
from test_video_util import bigbuckbunny, corner_colours, frame_index, make_quadrant_video, make_video

from videochat import video_backends as vb
from videochat.video import (
    Clip,
    ClipWindowError,
    VideoDecodeError,
    VideoNotFoundError,
    frame_indices_at,
    probe,
    read_clip,
    sample_times,
    subsample,
)

BACKENDS = ["decord", "pyav"] if vb.HAVE_DECORD else ["pyav"]


@pytest.fixture(scope="module")
def vid(tmp_path_factory):
    """30 frames at 10 fps (3.0 s), frame i grey 8*i."""
    return make_video(tmp_path_factory.mktemp("v") / "grey.mp4")


# ------------------------------------------------------------------ pure sampling


def test_sample_times_middle_rand_fps_hand_computed():
    assert sample_times(0.0, 2.0, 8, "middle") == pytest.approx([0.125, 0.375, 0.625, 0.875, 1.125, 1.375, 1.625, 1.875])
    ft = np.arange(30) / 10.0
    assert frame_indices_at(ft, sample_times(0.0, 2.0, 8, "middle")) == [1, 3, 6, 8, 11, 13, 16, 18]
    # fps:2 over 2 s -> 4 centres; fps:100 is capped at num_frames and equals middle
    assert sample_times(0.0, 2.0, 8, "fps:2") == pytest.approx([0.25, 0.75, 1.25, 1.75])
    assert sample_times(0.0, 2.0, 8, "fps:100") == pytest.approx(sample_times(0.0, 2.0, 8, "middle"))
    assert sample_times(1.0, 1.2, 8, "fps:2") == pytest.approx([1.1])  # at least one frame
    # rand: one time inside each segment, reproducible from the seed, different across seeds
    r1 = sample_times(0.0, 2.0, 8, "rand", np.random.default_rng(0))
    assert r1 == sample_times(0.0, 2.0, 8, "rand", np.random.default_rng(0))
    assert r1 != sample_times(0.0, 2.0, 8, "rand", np.random.default_rng(1))
    for k, t in enumerate(r1):
        assert 0.25 * k <= t < 0.25 * (k + 1)
    # exact frame boundaries pick that frame (no float off-by-one), times before the first frame pick it
    assert frame_indices_at(ft, [0.3, 0.29999, -1.0, 99.0]) == [3, 2, 0, 29]
    for bad in ("mid", "fps:", "fps:-1", "fps:x"):
        with pytest.raises(ValueError):
            sample_times(0, 1, 8, bad)


# ------------------------------------------------------------------ read_clip on generated files


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_clip_middle_indices_timestamps_pixels(vid, backend):
    clip = read_clip(vid, 0.0, 2.0, 8, "middle", backend=backend)
    assert clip.frames.dtype == np.uint8 and clip.frames.shape == (8, 48, 64, 3)
    assert clip.indices == [1, 3, 6, 8, 11, 13, 16, 18]
    assert [frame_index(f) for f in clip.frames] == clip.indices
    assert clip.timestamps == pytest.approx([0.1, 0.3, 0.6, 0.8, 1.1, 1.3, 1.6, 1.8])
    assert not clip.clamped and clip.backend == backend
    whole = read_clip(vid, num_frames=4, backend=backend)  # None/None = whole video: [0, 3.0]
    assert whole.indices == [3, 11, 18, 26] and (whole.start, whole.end) == pytest.approx((0.0, 3.0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_rand_sampling_seeded_and_inside_segments(vid, backend):
    a = read_clip(vid, 0.5, 2.5, 8, "rand", seed=7, backend=backend)
    b = read_clip(vid, 0.5, 2.5, 8, "rand", seed=7, backend=backend)
    assert a.indices == b.indices and np.array_equal(a.frames, b.frames)
    times = sample_times(0.5, 2.5, 8, "rand", np.random.default_rng(7))
    assert a.indices == frame_indices_at(np.arange(30) / 10.0, times)
    assert [frame_index(f) for f in a.frames] == a.indices
    seeds = {tuple(read_clip(vid, 0.5, 2.5, 8, "rand", seed=s, backend=backend).indices) for s in range(5)}
    assert len(seeds) > 1


def test_backend_parity_on_generated_clips(vid, tmp_path):
    if not vb.HAVE_DECORD:
        pytest.skip("decord not installed")
    colourful = make_video(
        tmp_path / "c.mp4", num_frames=40, width=96, height=64,
        frame_fn=lambda i: np.random.default_rng(i).integers(0, 255, (64, 96, 3), dtype=np.uint8),
    )
    for path in (vid, colourful):
        for window, sampling, seed in (((0.0, 2.0), "middle", None), ((0.7, 2.9), "rand", 3), ((None, None), "fps:3", None)):
            d = read_clip(path, *window, 8, sampling, seed=seed, backend="decord")
            p = read_clip(path, *window, 8, sampling, seed=seed, backend="pyav")
            assert d.indices == p.indices
            assert d.timestamps == pytest.approx(p.timestamps, abs=1e-5)
            assert np.array_equal(d.frames, p.frames)


@pytest.mark.parametrize("backend", BACKENDS)
def test_windows_past_end_short_clips_and_fps(vid, backend):
    past = read_clip(vid, 2.5, 5.0, 4, backend=backend)
    assert past.clamped and past.end == pytest.approx(3.0) and past.start == 2.5
    assert past.indices == [25, 26, 28, 29]  # centres 2.5625, 2.6875, 2.8125, 2.9375
    neg = read_clip(vid, -1.0, 1.0, 4, backend=backend)
    assert neg.clamped and neg.start == 0.0 and neg.indices == [1, 3, 6, 8]
    # a window with fewer frames than T repeats frames, in order, and stays inside the window
    short = read_clip(vid, 1.0, 1.25, 8, backend=backend)
    assert len(short.frames) == 8 and short.indices == sorted(short.indices)
    assert set(short.indices) == {10, 11, 12} and [frame_index(f) for f in short.frames] == short.indices
    assert short.indices == [10, 10, 10, 11, 11, 11, 12, 12]  # centres 1.0156, 1.0469, ... 1.2344
    assert short.relative_times() == [0.0, 0.0, 0.0, 0.1, 0.1, 0.1, 0.2, 0.2]
    assert read_clip(vid, 0.0, 1.0, 8, "fps:2", backend=backend).indices == [2, 7]
    with pytest.raises(ClipWindowError, match="past the end"):
        read_clip(vid, 3.5, 6.0, backend=backend)
    with pytest.raises(ClipWindowError, match="after its end"):
        read_clip(vid, 2.0, 1.0, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_variable_frame_rate(tmp_path, backend):
    pts = [0, 100, 150, 400, 450, 1000, 1100, 1900, 2000, 2500]
    path = make_video(tmp_path / "vfr.mp4", num_frames=10, pts_ms=pts)
    clip = read_clip(path, 0.0, 2.4, 8, backend=backend)
    # centres 0.15, 0.45, ..., 2.25 -> last frame with pts <= centre
    assert clip.indices == [2, 4, 4, 5, 6, 6, 7, 8]
    assert clip.timestamps == pytest.approx([0.15, 0.45, 0.45, 1.0, 1.1, 1.1, 1.9, 2.0])
    assert [frame_index(f) for f in clip.frames] == clip.indices


def test_rotation_metadata_is_applied(tmp_path):
    plain = make_quadrant_video(tmp_path / "plain.mp4")
    rot = make_quadrant_video(tmp_path / "rot90.mp4", rotation=90)  # 90 degrees counter-clockwise
    assert (probe(plain).width, probe(plain).height, probe(plain).rotation) == (64, 48, 0)
    info = probe(rot)
    assert (info.width, info.height, info.rotation) == (48, 64, 90)
    clip = read_clip(rot, num_frames=2)  # auto: decord mishandles rotation, PyAV is used
    assert clip.frames.shape == (2, 64, 48, 3) and clip.backend == "pyav"
    # a counter-clockwise quarter turn moves top-right to top-left, top-left to bottom-left, ...
    assert corner_colours(clip.frames[0]) == {"tl": (0, 255, 0), "tr": (255, 255, 255), "bl": (255, 0, 0), "br": (0, 0, 255)}
    upright = read_clip(plain, num_frames=1).frames[0]
    assert corner_colours(upright) == {"tl": (255, 0, 0), "tr": (0, 255, 0), "bl": (0, 0, 255), "br": (255, 255, 255)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_grayscale_and_odd_sizes(tmp_path, backend):
    gray = make_video(tmp_path / "gray.mkv", codec="ffv1", pix_fmt="gray")
    clip = read_clip(gray, 0.0, 2.0, 8, backend=backend)
    assert clip.frames.shape == (8, 48, 64, 3) and [frame_index(f) for f in clip.frames] == clip.indices
    assert np.array_equal(clip.frames[..., 0], clip.frames[..., 2])
    odd = make_video(tmp_path / "odd.mp4", width=63, height=47, pix_fmt="yuv444p")
    clip = read_clip(odd, 0.0, 2.0, 8, backend=backend)
    assert clip.frames.shape == (8, 47, 63, 3) and [frame_index(f) for f in clip.frames] == clip.indices
    assert (probe(odd).width, probe(odd).height) == (63, 47)


def test_auto_falls_back_to_pyav(vid, tmp_path, monkeypatch):
    ts = make_video(tmp_path / "g.ts", fmt="mpegts")  # decord 0.6 fails on this MPEG-TS; PyAV must not
    clip = read_clip(ts, 0.0, 2.0, 8)
    assert clip.backend == "pyav" and clip.indices == [1, 3, 6, 8, 11, 13, 16, 18]
    assert [frame_index(f) for f in clip.frames] == clip.indices
    from videochat import video as V

    assert any(v[0] == str(ts) for v in V._DECORD_FAILED)  # remembered: the next clip skips decord
    assert read_clip(ts, 1.0, 2.0, 2).backend == "pyav"

    def broken(req):
        raise RuntimeError("simulated decord failure")

    monkeypatch.setattr(vb, "read_decord", broken)
    clip = read_clip(vid, 0.0, 2.0, 8)
    assert clip.backend == "pyav" and clip.indices == [1, 3, 6, 8, 11, 13, 16, 18]
    monkeypatch.setattr(vb, "HAVE_DECORD", False)
    assert read_clip(vid, 0.0, 2.0, 8).backend == "pyav"


def test_real_h264_sample_both_backends():
    path = bigbuckbunny()
    info = probe(path)
    assert (info.width, info.height, info.num_frames) == (1280, 720, 132) and info.fps == pytest.approx(25.0)
    clips = [read_clip(path, 1.0, 3.0, 4, backend=b) for b in BACKENDS]
    for c in clips:
        assert c.frames.shape == (4, 720, 1280, 3) and c.indices == [31, 43, 56, 68]
        assert c.timestamps == pytest.approx([1.24, 1.72, 2.24, 2.72])
    if len(clips) == 2:
        assert np.array_equal(clips[0].frames, clips[1].frames)


# ------------------------------------------------------------------ bad files


def _bad_files(tmp_path):
    real = open(bigbuckbunny(), "rb").read()
    (tmp_path / "truncated.mp4").write_bytes(real[: len(real) // 2])
    (tmp_path / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 50)
    # an audio-only file: a valid container without a video stream
    import av

    with av.open(str(tmp_path / "audio.mp4"), "w") as c:
        s = c.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for pk in list(s.encode(frame)) + list(s.encode()):
            c.mux(pk)
    return {
        "truncated.mp4": "not a readable video",
        "random.mp4": "not a readable video",
        "empty.mp4": "empty file",
        "text.mp4": "not a readable video",
        "audio.mp4": "no video stream",
        "missing.mp4": "no such file",
    }


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_bad_files_raise_one_error_type_without_log_spam(tmp_path, capfd, backend):
    for name, reason in _bad_files(tmp_path).items():
        path = tmp_path / name
        with pytest.raises(VideoDecodeError) as ei:
            read_clip(path, 0.0, 1.0, backend=backend)
        assert str(path) in str(ei.value) and reason in str(ei.value), str(ei.value)
        with pytest.raises(VideoDecodeError):
            probe(path)
    with pytest.raises(VideoNotFoundError):
        read_clip(tmp_path / "missing.mp4")
    with pytest.raises(FileNotFoundError):  # also a FileNotFoundError, for callers that expect one
        probe(tmp_path / "missing.mp4")
    out, err = capfd.readouterr()
    assert err == "" and out == ""


def test_truncated_stream_after_a_good_header(tmp_path, capfd):
    """moov first (faststart), media data cut: frames before the cut still read, after it -> error."""
    full = make_video(
        tmp_path / "fs.mp4", num_frames=60, width=96, height=64, options={"movflags": "faststart"},
        frame_fn=lambda i: np.random.default_rng(i).integers(0, 255, (64, 96, 3), dtype=np.uint8),
    )
    data = full.read_bytes()
    cut = tmp_path / "fs_cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    for backend in ("auto", *BACKENDS):
        try:
            head = read_clip(cut, 0.0, 0.5, 2, backend=backend)
        except VideoDecodeError:  # decord alone gives up on the whole file; auto falls back to PyAV
            assert backend == "decord"
        else:
            assert np.array_equal(head.frames, read_clip(full, 0.0, 0.5, 2, backend="pyav").frames)
        with pytest.raises(VideoDecodeError, match="fs_cut.mp4"):
            read_clip(cut, 5.0, 5.9, 4, backend=backend)
    assert capfd.readouterr().err == ""


def test_bad_arguments_are_value_errors(vid):
    with pytest.raises(ValueError):
        read_clip(vid, sampling="nearest")
    with pytest.raises(ValueError):
        read_clip(vid, num_frames=0)
    with pytest.raises(ValueError):
        read_clip(vid, backend="opencv")
    assert os.path.exists(vid)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_frames_then_subsample_equals_read_clip(vid, backend):
    """sampling `all` returns every frame of the window; `subsample` draws from it exactly what `read_clip`
    returns for the same window, mode and seed."""
    whole = read_clip(vid, 0.45, 2.05, backend=backend, sampling="all")
    assert whole.indices == list(range(4, 21))  # the frame shown at 0.45 s (0.4) .. at 2.05 s (2.0)
    assert [frame_index(f) for f in whole.frames] == whole.indices
    for sampling, n in (("rand", 4), ("middle", 6), ("fps:3", 8)):
        for seed in range(4):
            want = read_clip(vid, 0.45, 2.05, n, sampling, seed=seed, backend=backend)
            got = subsample(whole, n, sampling, seed)
            assert got.indices == want.indices and got.timestamps == want.timestamps
            assert np.array_equal(got.frames, want.frames) and (got.start, got.end) == (want.start, want.end)
    with pytest.raises(ValueError, match="window_indices"):
        sample_times(0.0, 1.0, 4, "all")


def test_subsample_searches_the_timeline_not_substituted_stamps():
    """When the decoder substituted the next frame for one that did not decode (PyAV on a damaged file),
    the decoded stamps repeat; sampling must still follow the frame timeline, as `read_clip` does."""
    import pickle

    frames = np.arange(5, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    clip = Clip(frames, [0.0, 0.1, 0.3, 0.3, 0.4], False, 0.0, 0.5, [0, 1, 2, 3, 4], "pyav",
                timeline=[0.0, 0.1, 0.2, 0.3, 0.4])
    got = subsample(clip, 5, "middle")  # times 0.05, 0.15, ..., 0.45 -> timeline frames 0..4
    assert got.indices == [0, 1, 2, 3, 4] and got.timestamps == [0.0, 0.1, 0.3, 0.3, 0.4]
    assert got.timeline == [0.0, 0.1, 0.2, 0.3, 0.4]
    err = pickle.loads(pickle.dumps(ClipWindowError("/v.mp4", "past the end")))  # crosses to DataLoader workers
    assert isinstance(err, ClipWindowError) and (err.path, err.reason) == ("/v.mp4", "past the end")
