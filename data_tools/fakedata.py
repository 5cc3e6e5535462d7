"""InternVid-style annotation rows for tests and the build benchmark (random text, no videos).

Rows look like the release: ``YoutubeID, Start_timestamp, End_timestamp ("HH:MM:SS.mmm"), Caption,
Aesthetic_Score, UMT_Score`` (+ optional ``ASR``), ~33 clips per video, clips mostly under 10 s. Generated in
vectorised chunks (numpy + Arrow strings), so the benchmark can write tens of millions of rows quickly.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from .render import cat
from .strfmt import fmt_rows

WORDS = ("a man woman person dog cat child group of people is are playing running walking talking cooking "
         "in on at the with near a red blue green small large car street park kitchen room field beach "
         "guitar ball table water tree building screen camera video shows holding wearing shirt").split()
_ID_CHARS = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", np.uint8)


def _captions(rng, n_pool: int = 4096) -> pa.Array:
    return pa.array([" ".join(rng.choice(WORDS, size=rng.integers(4, 16))) for _ in range(n_pool)], pa.string())


def _ids(rng, n: int, start: int) -> pa.Array:
    """n distinct 11-character ids (a random prefix + a per-video counter keeps them unique)."""
    m = _ID_CHARS[rng.integers(0, 64, size=(n, 11))]
    k = np.arange(start, start + n)
    for d in range(5):  # last 5 chars encode the counter: unique across 64**5 videos
        m[:, 10 - d] = _ID_CHARS[(k >> (6 * d)) & 63]
    offs = np.arange(0, 11 * n + 1, 11, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offs), pa.py_buffer(m.tobytes())])


def _hms(ms: np.ndarray) -> list:
    return [("pad", ms // 3600000, 2), b":", ("pad", ms // 60000 % 60, 2), b":", ("pad", ms // 1000 % 60, 2), b".",
            ("pad3", ms % 1000)]


def chunk(rng, n_videos: int, video_start: int = 0, clips_per_video: float = 33.0, asr: bool = False,
          seconds: bool = False) -> pa.Array:
    """JSON lines (newline-terminated strings) for ``n_videos`` videos, clips in time order per video."""
    counts = np.maximum(1, rng.poisson(clips_per_video, n_videos))
    n = int(counts.sum())
    vid_of = np.repeat(np.arange(n_videos), counts)
    dur = rng.integers(1000, 10000, n)
    gap = rng.integers(0, 5000, n)
    step = dur + gap
    csum = np.cumsum(step)
    first = np.cumsum(counts) - counts
    start = csum - step - (csum - step)[first][vid_of]
    end = start + dur
    ids = _ids(rng, n_videos, video_start).take(pa.array(vid_of))
    caps = _captions(rng).take(pa.array(rng.integers(0, 4096, n)))
    if seconds:
        times = fmt_rows([b'","Start_timestamp":', ("int", start // 1000), b".", ("pad3", start % 1000),
                          b',"End_timestamp":', ("int", end // 1000), b".", ("pad3", end % 1000), b',"Caption":"'], n)
    else:
        times = fmt_rows([b'","Start_timestamp":"', *_hms(start), b'","End_timestamp":"', *_hms(end),
                          b'","Caption":"'], n)
    scores = fmt_rows([b'","Aesthetic_Score":', ("int", rng.integers(3, 7, n)), b".", ("pad3", rng.integers(0, 1000, n)),
                       b',"UMT_Score":0.', ("pad3", rng.integers(200, 500, n))], n)
    parts = ['{"YoutubeID":"', ids, times, caps, scores]
    if asr:
        parts += [',"ASR":"', _captions(rng).take(pa.array(rng.integers(0, 4096, n))), '"']
    return cat(*parts, "}\n")


def write_jsonl(path: str, rows: int, seed: int = 0, shuffle: bool = False, asr: bool = False,
                videos_per_chunk: int = 20_000) -> int:
    """Write about ``rows`` rows (whole videos) to a JSONL file; returns the exact row count."""
    rng = np.random.default_rng(seed)
    written = v = 0
    with open(path, "wb") as f:
        while written < rows:
            nv = max(1, min(videos_per_chunk, int((rows - written) / 33) + 1))
            lines = chunk(rng, nv, v, asr=asr)
            if written + len(lines) > rows:
                lines = lines.slice(0, rows - written)
            if shuffle:  # unsorted input: clips of a video scattered within the chunk
                lines = lines.take(pa.array(rng.permutation(len(lines))))
            from .partition import _string_bytes

            f.write(_string_bytes(lines.combine_chunks() if isinstance(lines, pa.ChunkedArray) else lines))
            written += len(lines)
            v += nv
    return written
