"""Where the source videos are: ``<YoutubeID>.<ext>`` under a root (scanned once) or an id -> path mapping file.

The index is hash-partitioned by video id like the annotation rows, so a partition worker loads only its
own slice (memory does not grow with the number of videos).
"""

from __future__ import annotations

import os

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from .spill import bucket, video_hashes
from .templates import SALT_PARTITION

VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".flv", ".mpeg", ".mpg", ".ts", ".3gp", ".wmv")
INDEX_SCHEMA = pa.schema([("vid", pa.string()), ("path", pa.string()), ("rank", pa.int32())])
BATCH = 500_000


def scan_root(root: str):
    """Yield (video_id, path relative to root, extension rank) for every video file under ``root``."""
    rank = {e: i for i, e in enumerate(VIDEO_EXTS)}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            r = rank.get(ext.lower())
            if r is not None and not name.startswith("."):
                yield stem, os.path.relpath(os.path.join(dirpath, name), root), r


def read_map(path: str):
    """Yield (video_id, path, 0) from a mapping file: CSV with columns video_id,path (header), a JSON object
    {id: path}, or JSONL lines {"video_id": ..., "path": ...}."""
    if path.endswith(".csv"):
        import pyarrow.csv as pcsv

        t = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(column_types={"video_id": pa.string(),
                                                                                  "path": pa.string()}))
        cols = {c.lower(): c for c in t.column_names}
        if "video_id" not in cols or "path" not in cols:
            raise ValueError(f"{path}: a video map CSV needs columns video_id,path; found {t.column_names}")
        for v, p in zip(t.column(cols["video_id"]).to_pylist(), t.column(cols["path"]).to_pylist()):
            yield v, p, 0
        return
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".json"):
        obj = orjson.loads(data)
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: a video map JSON must be an object {{video_id: path}}")
        for v, p in obj.items():
            yield str(v), str(p), 0
        return
    for i, line in enumerate(data.splitlines(), 1):
        if line.strip():
            rec = orjson.loads(line)
            if "video_id" not in rec or "path" not in rec:
                raise ValueError(f"{path}:{i}: a video map line needs video_id and path")
            yield str(rec["video_id"]), str(rec["path"]), 0


def build_index(entries, out_path: str, partitions: int) -> dict[int, list[int]]:
    """Write the (vid, path, rank) entries partitioned by video hash -> {partition: [batch indices]}."""
    refs: dict[int, list[int]] = {}
    writer = pa.ipc.new_file(out_path, INDEX_SCHEMA)
    bi = 0
    try:
        while True:
            chunk = [e for _, e in zip(range(BATCH), entries)]
            if not chunk:
                break
            vids, paths, ranks = zip(*chunk)
            t = pa.table([pa.array(vids, pa.string()), pa.array(paths, pa.string()), pa.array(ranks, pa.int32())],
                         schema=INDEX_SCHEMA)
            part = bucket(video_hashes(t.column("vid").combine_chunks()), SALT_PARTITION, partitions)
            order = np.argsort(part, kind="stable")
            t = t.take(pa.array(order))
            counts = np.bincount(part, minlength=partitions)
            off = 0
            for p in np.flatnonzero(counts):
                writer.write_batch(t.slice(off, int(counts[p])).combine_chunks().to_batches()[0])
                refs.setdefault(int(p), []).append(bi)
                bi += 1
                off += int(counts[p])
            if len(chunk) < BATCH:
                break
    finally:
        writer.close()
    return refs


def load_partition(index_path: str, batches: list[int]) -> tuple[pa.Array, pa.Array]:
    """(video ids, paths) of one partition, one entry per id (preferred extension first, then path)."""
    if not batches:
        return pa.array([], pa.string()), pa.array([], pa.string())
    r = pa.ipc.open_file(pa.memory_map(index_path))
    t = pa.Table.from_batches([r.get_batch(i) for i in batches], INDEX_SCHEMA)
    t = t.take(pc.sort_indices(t, sort_keys=[("vid", "ascending"), ("rank", "ascending"), ("path", "ascending")]))
    vid = t.column("vid").combine_chunks()
    n = len(vid)
    first = np.ones(n, bool)
    if n > 1:
        first[1:] = ~np.asarray(pc.equal(vid.slice(1), vid.slice(0, n - 1)))
    mask = pa.array(first)
    return vid.filter(mask), t.column("path").combine_chunks().filter(mask)
