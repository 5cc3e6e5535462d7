"""Phase 2 of the build for one partition: spill batches -> sample shards (``part-*`` files) + rejects."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from .grouping import (assign_formats, find_duplicates, make_windows, new_video_mask, row_words, sort_order,
                       split_mask, window_keys)
from .directio import DirectWriter, drain
from .io import SPLITS, shard_suffix
from .render import Rows, caption_keys, cat, esc, render_captions, render_windows
from .spill import read_partition
from .templates import mix64
from .videos import load_partition

SALT_ORDER = 0x6F726472
CHUNK_SAMPLES = 8192  # samples rendered at a time (bounds phase-2 memory independently of partition size)


@dataclass
class PartitionJob:
    """Everything a worker needs for one partition (picklable)."""

    partition: int
    refs: np.ndarray  # int32 [k, 2]: (task_id, batch_index) of this partition's spill batches
    video_batches: list | None  # batch indices in the video index, None = no index
    spill_dir: str
    seed: int
    formats: list
    drop_video_p: float
    max_clips: int
    max_words: int | None
    val_fraction: float
    shard_size: int
    compression: str | None
    allow_missing: bool
    videos_label: str
    default_ext: str
    files: list  # input file paths
    task_file: np.ndarray  # file index of each task
    task_line_offsets: np.ndarray  # lines before each task in its file

    def where(self, task: int, line: int) -> tuple[str, int]:
        """(file, line number in the file) of a row."""
        return self.files[self.task_file[task]], int(self.task_line_offsets[task] + line)


def _string_bytes(arr: pa.Array) -> memoryview:
    """The bytes of a (sliced) string array's values: our lines are newline-terminated, so this is the file."""
    offs = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset: arr.offset + len(arr) + 1]
    data = arr.buffers()[2]
    if data is None or len(arr) == 0:
        return memoryview(b"")
    return memoryview(data)[int(offs[0]): int(offs[-1])]


def _reject(job, task, line, reason, vid=None) -> bytes:
    file, ln = job.where(task, line)
    rec = {"file": file, "line": ln, "reason": reason}
    if vid is not None:
        rec["video_id"] = vid
    return orjson.dumps(rec) + b"\n"


def run_partition(job: PartitionJob) -> dict:
    """Process one partition; returns counts and the written part files [(split, name, samples)]."""
    t = read_partition(job.spill_dir, job.refs)  # input order: (task, line)
    vid = t.column("vid").combine_chunks()
    caption = t.column("caption").combine_chunks()
    h0 = t.column("h").to_numpy()
    s0, e0 = t.column("start_ms").to_numpy(), t.column("end_ms").to_numpy()
    task0, line0 = t.column("task").to_numpy(), t.column("line").to_numpy()
    order, collided = sort_order(h0, s0, e0, vid)
    h, start, end = h0[order], s0[order], e0[order]
    res = {"partition": job.partition, "rows_rejected": 0, "reasons": {}, "files": [],
           "samples": {s: {} for s in SPLITS}, "clips": 0, "clips_dropped": 0, "turns": 0, "windows": 0}
    rej = bytearray()
    drop = np.zeros(len(order), bool)
    new_video = new_video_mask(h, vid.take(pa.array(order)) if collided else None)
    dup, first = find_duplicates(new_video, start, end, caption, order)
    if dup.any():
        for i in np.flatnonzero(dup):
            f = order[first[i]]
            file, ln = job.where(task0[f], line0[f])
            rej += _reject(job, task0[order[i]], line0[order[i]], f"exact duplicate of {file}:{ln}")
        res["reasons"]["exact duplicate"] = int(dup.sum())
        drop |= dup
    path_idx = None
    if job.video_batches is not None:
        ivid, ipath = load_partition(os.path.join(job.spill_dir, "videos.arrow"), job.video_batches)
        found = pc.index_in(vid, value_set=ivid)
        missing = np.asarray(pc.is_null(found))[order] & ~drop
        path_idx = pc.fill_null(found, -1).to_numpy()  # input row -> index in ipath
        ipath_e = esc(ipath)
        if missing.any():
            if not job.allow_missing:
                for i in np.flatnonzero(missing):
                    r = order[i]
                    rej += _reject(job, task0[r], line0[r], f"video not found under {job.videos_label}", vid[int(r)].as_py())
                res["reasons"]["video not found"] = int(missing.sum())
                drop |= missing
    res["rows_rejected"] = int(drop.sum())
    if rej:
        with open(os.path.join(job.spill_dir, f"part-{job.partition:06d}.rejects.jsonl"), "wb") as f:
            f.write(rej)
    if drop.any():
        keep = ~drop
        order, h, start, end = order[keep], h[keep], start[keep], end[keep]
        new_video = new_video_mask(h, vid.take(pa.array(order)) if collided else None)
    res["rows_used"] = len(order)

    def path_of(sorted_pos: np.ndarray) -> pa.Array:
        """Escaped video path per sorted row: from the index, else ``<id><ext>`` (unchecked / --allow-missing)."""
        rows_in = order[sorted_pos]
        pi = path_idx[rows_in] if path_idx is not None else None
        if pi is not None and (pi >= 0).all():
            return ipath_e.take(pa.array(pi))
        default = cat(esc(vid.take(pa.array(rows_in))), job.default_ext)
        if pi is None or not (pi >= 0).any():
            return default
        return pc.if_else(pa.array(pi >= 0), ipath_e.take(pa.array(np.maximum(pi, 0))), default)

    asr = t.column("asr").combine_chunks()
    rows = Rows(order, h, start, end, vid, caption, asr, path_of)
    vstart = np.flatnonzero(new_video)
    row_video = np.cumsum(new_video) - 1
    k_video = np.arange(len(order)) - vstart[row_video] if len(order) else np.zeros(0, np.int64)
    abc = any(f in ("a", "b", "c") for f in job.formats)
    if abc:
        win = make_windows(new_video, row_words(caption, asr)[order], job.max_clips, job.max_words)
        wkey = window_keys(job.seed, h[win.start], win.local)
        asr_ok = np.asarray(pc.is_valid(asr))[order].astype(np.int64)
        has_asr = (np.add.reduceat(asr_ok, win.start) > 0) if len(order) else np.zeros(0, bool)
    val_row = split_mask(h, job.val_fraction)
    for split in SPLITS:
        counts = res["samples"][split]
        if abc:
            in_split = val_row[win.start] if split == "val" else ~val_row[win.start]
            smp = assign_formats(win, wkey, has_asr, in_split, job.formats)  # sorted by order key
            okey_a = mix64(smp.skey ^ np.uint64(SALT_ORDER))
            res["windows"] += len(smp.items)
            for f, n in zip(*np.unique(smp.fmt.astype(str), return_counts=True)):
                counts[str(f)] = counts.get(str(f), 0) + int(n)
        else:
            smp, okey_a = None, np.zeros(0, np.uint64)
        sel = np.zeros(0, np.int64)
        okey_c = np.zeros(0, np.uint64)
        if "caption" in job.formats:
            sel = np.flatnonzero(val_row if split == "val" else ~val_row)
            okey_c = mix64(caption_keys(rows, sel, k_video, job.seed) ^ np.uint64(SALT_ORDER))
            o = np.argsort(okey_c, kind="stable")
            sel, okey_c = sel[o], okey_c[o]
            counts["caption"] = counts.get("caption", 0) + len(sel)
        # Merge the two key-ordered streams; render in chunks of samples so memory stays bounded.
        is_a = np.argsort(np.concatenate([okey_a, okey_c]), kind="stable") < len(okey_a)
        writer = _ShardWriter(job, split)
        ia = ic = 0
        for c0 in range(0, len(is_a), CHUNK_SAMPLES):
            flags = is_a[c0:c0 + CHUNK_SAMPLES]
            na = int(flags.sum())
            nc = len(flags) - na
            parts = []
            if na:
                lines, stats = render_windows(rows, win, wkey, smp.slice(ia, ia + na), job.drop_video_p)
                for key_ in ("clips", "clips_dropped", "turns"):
                    res[key_] += stats[key_]
                parts.append(lines)
            if nc:
                parts.append(render_captions(rows, sel[ic:ic + nc], k_video, job.seed))
            if na and nc:
                pos = np.where(flags, np.cumsum(flags) - 1, na + np.cumsum(~flags) - 1)
                lines = pa.concat_arrays(parts).take(pa.array(pos))
            else:
                lines = parts[0]
            writer.add(lines)
            ia, ic = ia + na, ic + nc
        res["files"] += writer.close()
    drain()  # every part file is complete on disk before the parent renames it
    pa.default_memory_pool().release_unused()
    return res


class _ShardWriter:
    """Part files of at most ``shard_size`` samples, streamed (and compressed) as chunks arrive."""

    def __init__(self, job: PartitionJob, split: str):
        self.job, self.split = job, split
        self.files: list = []
        self.f = self.raw = None
        self.n = 0

    def _open(self):
        name = f"part-{self.job.partition:06d}-{self.split}-{len(self.files):05d}{shard_suffix(self.job.compression)}"
        self.raw = DirectWriter(os.path.join(self.job.spill_dir, name))
        if self.job.compression == "zst":
            import zstandard

            self.f = zstandard.ZstdCompressor(level=3).stream_writer(self.raw, closefd=False)
        elif self.job.compression == "gz":
            import gzip

            self.f = gzip.GzipFile(filename="", mode="wb", fileobj=self.raw, mtime=0)
        else:
            self.f = self.raw
        self.files.append([self.split, name, 0])
        self.n = 0

    def _close_one(self):
        if self.f is not self.raw:
            self.f.close()
        self.raw.close(wait=False)  # the I/O thread finishes the file; run_partition drains before returning
        self.files[-1][2] = self.n
        self.f = self.raw = None

    def add(self, lines: pa.Array) -> None:
        a = 0
        while a < len(lines):
            if self.f is None:
                self._open()
            take = min(self.job.shard_size - self.n, len(lines) - a)
            self.f.write(_string_bytes(lines.slice(a, take)))
            self.n += take
            a += take
            if self.n >= self.job.shard_size:
                self._close_one()

    def close(self) -> list:
        if self.f is not None:
            self._close_one()
        return [tuple(x) for x in self.files]


