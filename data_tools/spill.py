"""Phase 1 of the build: read a task, validate, filter, and hash-partition its rows by video id into spill files.

Grouping clips by video over input that is not sorted needs all clips of a video together; hash
partitioning by video id into P spill files (one Arrow IPC file per task, one record batch per partition)
keeps memory bounded by the partition size, not the input size. Phase 2 reads partition p's batches from
every task file (memory-mapped) and never sees another partition's rows.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import orjson
import pyarrow as pa

from .annotations import CANONICAL, normalize
from .sources import Task, iter_task
from .templates import SALT_MACHINE, SALT_PARTITION, mix64

FLUSH_ROWS = 1_000_000  # rows buffered per task before partitioning (bounds memory on huge .gz files)
SPILL_SCHEMA = CANONICAL.append(pa.field("h", pa.uint64())).append(pa.field("task", pa.int32()))


_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def video_hashes(vid: pa.Array) -> np.ndarray:
    """Stable 64-bit hash per row of a string array: FNV-1a over the UTF-8 bytes, then a SplitMix64 finaliser.

    Vectorised over rows of equal byte length (YouTube ids all have 11 bytes: one [n, 11] block), so no
    Python call per row or per id.
    """
    from .textcols import _data, _offsets

    if isinstance(vid, pa.ChunkedArray):
        vid = vid.combine_chunks()
    n = len(vid)
    if n == 0:
        return np.zeros(0, np.uint64)
    offs = _offsets(vid)
    lens = np.diff(offs)
    data = _data(vid)
    h = np.full(n, _FNV_OFFSET, np.uint64)
    with np.errstate(over="ignore"):
        for L in np.unique(lens).tolist():
            if L == 0:
                continue
            rows = np.flatnonzero(lens == L) if len(lens) and (lens != L).any() else None
            if rows is None and offs[-1] - offs[0] == n * L:
                m = data[offs[0]: offs[-1]].reshape(n, L)
            else:
                rows = np.arange(n) if rows is None else rows
                m = data[offs[:-1][rows][:, None] + np.arange(L)]
            hh = np.full(len(m), _FNV_OFFSET, np.uint64)
            for c in range(L):
                hh = (hh ^ m[:, c]) * _FNV_PRIME
            if rows is None:
                h = hh
            else:
                h[rows] = hh
    return mix64(h ^ lens.astype(np.uint64))


def bucket(h: np.ndarray, salt: int, n: int) -> np.ndarray:
    """Independent bucket in [0, n) of each video hash, for a given salt."""
    if n <= 1:
        return np.zeros(len(h), np.int64)
    return (mix64(h ^ np.uint64(salt)) % np.uint64(n)).astype(np.int64)


@dataclass
class TaskResult:
    task_id: int
    lines: int = 0
    rows_in: int = 0
    rows_rejected: int = 0
    rows_filtered: int = 0
    rows_other_shards: int = 0
    rows_kept: int = 0
    batch_parts: list = field(default_factory=list)  # partition of each record batch, in file order
    reasons: Counter = field(default_factory=Counter)
    filtered: Counter = field(default_factory=Counter)


def run_task(task: Task, spill_dir: str, partitions: int, min_umt=None, min_aesthetic=None,
             num_shards: int = 1, shard_index: int = 0) -> TaskResult:
    """Read one task -> ``spill_dir/task-XXXXX.arrow`` (+ ``.rejects.jsonl``); return its counts."""
    res = TaskResult(task.task_id)
    base = os.path.join(spill_dir, f"task-{task.task_id:06d}")
    writer = None
    rej_f = None
    batch_idx = 0
    pending: list[pa.Table] = []
    pending_rows = 0

    def flush():
        """Write the pending rows as one record batch per partition (few, large batches: cheap to read)."""
        nonlocal writer, batch_idx, pending, pending_rows
        if not pending_rows:
            return
        table = pa.concat_tables(pending).combine_chunks()
        pending, pending_rows = [], 0
        h = table.column("h").to_numpy()
        part = bucket(h, SALT_PARTITION, partitions)
        if partitions > 1:
            table = table.take(pa.array(np.argsort(part, kind="stable")))
        table = table.append_column("task", pa.array(np.full(table.num_rows, task.task_id, np.int32)))
        counts = np.bincount(part, minlength=partitions)
        if writer is None:
            writer = pa.ipc.new_file(base + ".arrow", SPILL_SCHEMA)
        off = 0
        for p in np.flatnonzero(counts):
            n = int(counts[p])
            writer.write_batch(table.slice(off, n).combine_chunks().to_batches()[0])
            res.batch_parts.append(int(p))
            batch_idx += 1
            off += n

    try:
        for raw, n_lines in iter_task(task):
            res.lines += n_lines
            if raw is None:
                continue
            table, rejects = normalize(raw)
            # Rows that cannot be hashed to a video are this machine's only when it is shard 0.
            if rejects and shard_index == 0:
                if rej_f is None:
                    rej_f = open(base + ".rejects.jsonl", "wb")
                for line, reason, text in rejects:
                    rec = {"task": task.task_id, "line": line, "reason": reason}
                    if text is not None:
                        rec["text"] = text
                    rej_f.write(orjson.dumps(rec) + b"\n")
                    res.reasons[reason.split(":")[0]] += 1
                res.rows_in += len(rejects)
                res.rows_rejected += len(rejects)
            elif rejects:
                res.rows_other_shards += len(rejects)
            if table.num_rows == 0:
                continue
            h = video_hashes(table.column("vid").combine_chunks())
            keep = np.ones(table.num_rows, bool)
            if num_shards > 1:
                mine = bucket(h, SALT_MACHINE, num_shards) == shard_index
                res.rows_other_shards += int((~mine).sum())
                keep &= mine
            res.rows_in += int(keep.sum())
            for name, col, thr in (("min_umt", "umt", min_umt), ("min_aesthetic", "aes", min_aesthetic)):
                if thr is None:
                    continue
                v = table.column(col).to_numpy().astype(np.float64)  # null -> nan: fails the threshold
                fails = keep & ~(v >= thr)
                res.filtered[f"{'UMT_Score' if col == 'umt' else 'Aesthetic_Score'} < {thr}"] += int(fails.sum())
                res.rows_filtered += int(fails.sum())
                keep &= ~fails
            if not keep.all():
                table, h = table.filter(pa.array(keep)), h[keep]
            if table.num_rows == 0:
                continue
            res.rows_kept += table.num_rows
            pending.append(table.append_column("h", pa.array(h)))
            pending_rows += table.num_rows
            if pending_rows >= FLUSH_ROWS:
                flush()
        flush()
    finally:
        if writer is not None:
            writer.close()
        if rej_f is not None:
            rej_f.close()
    res.batch_parts = np.asarray(res.batch_parts, np.int32)  # compact in the parent at any scale
    pa.default_memory_pool().release_unused()
    return res


def partition_refs(results: list[TaskResult], partitions: int) -> list[np.ndarray]:
    """Per partition, an int32 array [k, 2] of (task_id, batch_index) in task order (compact at any scale)."""
    tasks = np.concatenate([np.full(len(r.batch_parts), r.task_id, np.int32) for r in results] or [np.zeros(0, np.int32)])
    bidx = np.concatenate([np.arange(len(r.batch_parts), dtype=np.int32) for r in results] or [np.zeros(0, np.int32)])
    parts = np.concatenate([np.asarray(r.batch_parts, np.int32) for r in results] or [np.zeros(0, np.int32)])
    order = np.argsort(parts, kind="stable")
    bounds = np.searchsorted(parts[order], np.arange(partitions + 1))
    pairs = np.stack([tasks[order], bidx[order]], 1)
    return [pairs[bounds[p]: bounds[p + 1]] for p in range(partitions)]


def read_partition(spill_dir: str, refs) -> pa.Table:
    """Concatenate the batches ``[(task_id, batch_index)]`` of one partition (memory-mapped reads)."""
    batches = []
    readers: dict[int, pa.ipc.RecordBatchFileReader] = {}
    for task_id, bi in np.asarray(refs, np.int64).reshape(-1, 2).tolist():
        r = readers.get(task_id)
        if r is None:
            r = pa.ipc.open_file(pa.memory_map(os.path.join(spill_dir, f"task-{task_id:06d}.arrow")))
            readers[task_id] = r
        batches.append(r.get_batch(bi))
    if not batches:
        return SPILL_SCHEMA.empty_table()
    return pa.Table.from_batches(batches, SPILL_SCHEMA).combine_chunks()
