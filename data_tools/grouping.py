"""Phase 2a: one partition's rows -> sorted, de-duplicated clips grouped into videos, windows and samples.

Everything here is vectorised over the partition (numpy / Arrow); Python loops run only over rare cases
(rows with identical times, windows over the word budget). Every decision that looks random is a hash of
(seed, video hash, window, clip), so the result does not depend on worker count or input order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .textcols import word_counts
from .templates import SALT_SPLIT, key, mix64, unit

SALT_FORMAT = 0x666F726D
SALT_ORDER = 0x6F726472


def sort_order(h: np.ndarray, start: np.ndarray, end: np.ndarray, vid: pa.Array) -> tuple[np.ndarray, bool]:
    """Row order by (video, start, end, input position) for rows given in input order -> (order, collided).

    Stable numpy sorts (timsort: near-linear on the already grouped, time-ordered input InternVid ships);
    the input position tie-break comes free from stability. If two different ids share a 64-bit hash
    (checked), the id string joins the sort key and ``collided`` tells callers to compare ids too.
    """
    o = np.argsort(h, kind="stable")
    hs, ss, es = h[o], start[o], end[o]
    same = hs[1:] == hs[:-1]
    if (same & ((ss[1:] < ss[:-1]) | ((ss[1:] == ss[:-1]) & (es[1:] < es[:-1])))).any():
        # Not already time-ordered within each video (unsorted input): the full three-key stable sort.
        o = np.argsort(end, kind="stable")
        o = o[np.argsort(start[o], kind="stable")]
        o = o[np.argsort(h[o], kind="stable")]
    if len(h) and len(np.unique(h)) != pc.count_distinct(vid).as_py():
        pos = np.argsort(o)  # rank of each row in the hash order, used as the final tie-break
        t = pa.table({"h": h, "vid": vid, "start": start, "end": end, "pos": pos})
        o = pc.sort_indices(t, sort_keys=[("h", "ascending"), ("vid", "ascending"), ("start", "ascending"),
                                          ("end", "ascending"), ("pos", "ascending")]).to_numpy()
        return o, True
    return o, False


def new_video_mask(h_sorted: np.ndarray, vid_sorted: pa.Array | None = None) -> np.ndarray:
    """Boolean: row starts a new video (rows sorted by video). Give the ids when hashes collided."""
    n = len(h_sorted)
    new = np.ones(n, bool)
    if n > 1:
        new[1:] = h_sorted[1:] != h_sorted[:-1]
        if vid_sorted is not None:
            new[1:] |= ~np.asarray(pc.equal(vid_sorted.slice(1), vid_sorted.slice(0, n - 1)))
    return new


def find_duplicates(new_video: np.ndarray, start: np.ndarray, end: np.ndarray, caption: pa.Array,
                    order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact duplicates (same video, start, end, caption) in sorted rows -> (mask, sorted index of kept row)."""
    n = len(start)
    dup = np.zeros(n, bool)
    first = np.full(n, -1, np.int64)
    if n < 2:
        return dup, first
    same = (start[1:] == start[:-1]) & (end[1:] == end[:-1]) & ~new_video[1:]
    if not same.any():
        return dup, first
    # Runs of rows sharing (video, start, end) are rare: compare captions in Python only there.
    seen: dict[str, int] = {}
    prev = -2
    for i in (np.flatnonzero(same) + 1).tolist():
        if i != prev + 1:
            seen = {caption[int(order[i - 1])].as_py(): i - 1}
        c = caption[int(order[i])].as_py()
        if c in seen:
            dup[i], first[i] = True, seen[c]
        else:
            seen[c] = i
        prev = i
    return dup, first


@dataclass
class Windows:
    """Windows of consecutive clips of one video (rows contiguous in the sorted table)."""

    start: np.ndarray  # first row of each window
    length: np.ndarray  # clips in each window
    local: np.ndarray  # window index within its video
    video: np.ndarray  # video ordinal of each window
    row_window: np.ndarray  # window of each row
    row_k: np.ndarray  # clip index within its window


def make_windows(new_video: np.ndarray, words: np.ndarray, max_clips: int, max_words: int | None) -> Windows:
    """Split each video into the fewest balanced windows under ``max_clips`` clips and ``max_words`` words.

    Balanced (7,7,6 rather than 8,8,4) by clip count; a video whose balanced windows break the word budget
    is cut greedily instead (a single clip over budget gets a window of its own).
    """
    n = len(new_video)
    vstart = np.flatnonzero(new_video)
    vlen = np.diff(np.append(vstart, n))
    row_video = np.repeat(np.arange(len(vstart)), vlen)
    k = np.arange(n) - vstart[row_video]
    nw = -(-vlen // max_clips)
    if max_words:
        wsum = np.add.reduceat(words, vstart) if n else np.zeros(0, np.int64)
        nw = np.maximum(nw, -(-wsum // max_words))
    nw = np.clip(nw, 1, vlen)
    local = (k * nw[row_video]) // vlen[row_video]
    if max_words and n:
        new_win = new_video | np.r_[True, local[1:] != local[:-1]]
        ws = np.flatnonzero(new_win)
        over = (np.add.reduceat(words, ws) > max_words) & (np.diff(np.append(ws, n)) > 1)
        for v in np.unique(row_video[ws[over]]):
            a, b = vstart[v], vstart[v] + vlen[v]
            local[a:b] = _greedy(words[a:b], max_clips, max_words)
    new_win = new_video | np.r_[True, local[1:] != local[:-1]] if n else new_video
    wstart = np.flatnonzero(new_win)
    wlen = np.diff(np.append(wstart, n))
    row_window = np.repeat(np.arange(len(wstart)), wlen)
    return Windows(wstart, wlen, local[wstart], row_video[wstart], row_window, np.arange(n) - wstart[row_window])


def _greedy(words: np.ndarray, max_clips: int, max_words: int) -> np.ndarray:
    out = np.empty(len(words), np.int64)
    w, used, clips = 0, 0, 0
    for i, x in enumerate(words.tolist()):
        if clips and (clips >= max_clips or used + x > max_words):
            w, used, clips = w + 1, 0, 0
        out[i] = w
        used += x
        clips += 1
    return out


@dataclass
class Samples:
    """Samples of one split: each is 1 window (a, b) or 2 windows of different videos (c), in output order."""

    items: np.ndarray  # window ids in output order (a c-sample's two windows are adjacent)
    item_pos: np.ndarray  # 0, or 1 for the second window of a c-sample
    sample_of_item: np.ndarray  # sample ordinal of each item
    fmt: np.ndarray  # format letter per sample (object array)
    skey: np.ndarray  # uint64 ordering key per sample

    def slice(self, a: int, b: int) -> "Samples":
        """Samples a..b (their items are contiguous)."""
        lo, hi = np.searchsorted(self.sample_of_item, [a, b], side="left")
        return Samples(self.items[lo:hi], self.item_pos[lo:hi], self.sample_of_item[lo:hi] - a, self.fmt[a:b],
                       self.skey[a:b])


def split_mask(h: np.ndarray, val_fraction: float) -> np.ndarray:
    """True where the video goes to val: a hash of the video id alone (no leakage, seed-independent)."""
    if val_fraction <= 0:
        return np.zeros(len(h), bool)
    return unit(mix64(h ^ np.uint64(SALT_SPLIT))) < val_fraction


def assign_formats(win: Windows, wkey: np.ndarray, has_asr: np.ndarray, in_split: np.ndarray,
                   formats: list[str]) -> Samples:
    """Pick a format per window of one split (hash), pair the c-windows, build the sample list."""
    abc = [f for f in formats if f in ("a", "b", "c")]
    ids = np.flatnonzero(in_split)
    empty = np.zeros(0, np.int64)
    if not abc or len(ids) == 0:
        return Samples(empty, empty, empty, np.zeros(0, object), np.zeros(0, np.uint64))
    choice = np.asarray(abc, dtype=object)[((mix64(wkey[ids] ^ np.uint64(SALT_FORMAT)) >> np.uint64(33))
                                            % np.uint64(len(abc))).astype(np.int64)]
    choice[(choice == "b") & ~has_asr[ids]] = "a"  # (b) needs a transcript
    cand = ids[choice == "c"]
    cand = cand[np.argsort(wkey[cand], kind="stable")]
    first, second = cand[0:len(cand) - 1:2], cand[1:len(cand):2]
    good = win.video[first] != win.video[second]  # two different videos
    first, second = first[good], second[good]
    single = ids[choice != "c"]
    single_fmt = choice[choice != "c"]
    demoted = np.setdiff1d(cand, np.concatenate([first, second]))  # odd one out / same video -> (a)
    single = np.concatenate([single, demoted])
    single_fmt = np.concatenate([single_fmt, np.full(len(demoted), "a", object)])
    skey = np.concatenate([wkey[single], wkey[first]])
    fmt = np.concatenate([single_fmt, np.full(len(first), "c", object)])
    # Output order: by sample key (a deterministic shuffle within the partition).
    order = np.argsort(mix64(skey ^ np.uint64(SALT_ORDER)), kind="stable")
    nsingle = len(single)
    heads = np.concatenate([single, first])[order]
    is_pair = order >= nsingle
    seconds = np.concatenate([np.full(nsingle, -1), second])[order]
    sizes = 1 + is_pair.astype(np.int64)
    items = np.empty(int(sizes.sum()), np.int64)
    pos = np.zeros(len(items), np.int64)
    starts = np.cumsum(sizes) - sizes
    items[starts] = heads
    items[starts[is_pair] + 1] = seconds[is_pair]
    pos[starts[is_pair] + 1] = 1
    sample_of_item = np.repeat(np.arange(len(sizes)), sizes)
    return Samples(items, pos, sample_of_item, fmt[order], skey[order])


def window_keys(seed: int, h_win: np.ndarray, local: np.ndarray) -> np.ndarray:
    """The per-window hash every later choice derives from: key(seed, video, window)."""
    return key(np.uint64(seed & 0xFFFFFFFFFFFFFFFF), h_win, local.astype(np.uint64))


def row_words(caption: pa.Array, asr: pa.Array) -> np.ndarray:
    return word_counts(caption) + word_counts(asr)
