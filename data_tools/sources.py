"""Annotation input files -> reading tasks -> pieces of canonical rows.

A task is a unit of parallel work: a byte range of a plain JSONL file (cut at newlines, which never occur
inside a JSON record), a run of row groups of a Parquet file, or a whole compressed / CSV file. Each task
yields pieces of ~16 MB; line numbers are relative to the task's first byte (``lines_before`` fixes them up once all tasks have
counted their newlines), so tasks run independently and in any order.
"""

from __future__ import annotations

import csv
import functools
import glob as _glob
import hashlib
import io
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.json as pj

from .annotations import Raw, iter_csv_records, iter_json_records, raw_from_records, raw_from_table
from .io import open_binary

PIECE_BYTES = 16 << 20
TASK_BYTES = 32 << 20  # small enough to balance 2+ workers on a 1 GB file
TASK_ROWS = 200_000  # Parquet: row groups are joined into tasks of at least this many rows
KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class Task:
    """A unit of reading work. ``start``/``end`` are byte offsets (plain JSONL), row-group indices (Parquet;
    end exclusive) or 0/-1 (the whole file)."""

    task_id: int
    file_idx: int
    path: str
    kind: str
    start: int = 0
    end: int = -1


def file_kind(path: str) -> str:
    p = path.lower()
    for comp in (".gz", ".zst"):
        if p.endswith(comp):
            p = p[: -len(comp)]
    for ext, kind in KINDS.items():
        if p.endswith(ext):
            return kind
    raise ValueError(f"{path}: unknown annotation format (expected .jsonl/.csv/.parquet, optionally .gz/.zst)")


def expand_inputs(patterns: list[str]) -> list[str]:
    """Globs -> sorted unique file list (order = file index in rejects and fingerprints)."""
    out: list[str] = []
    for pat in patterns:
        matches = sorted(_glob.glob(pat)) if any(c in pat for c in "*?[") else [pat]
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise FileNotFoundError(f"no annotation file matches {pat!r}")
        out += matches
    seen, uniq = set(), []
    for m in out:
        key = os.path.abspath(m)
        if key not in seen:
            seen.add(key)
            uniq.append(m)
    return uniq


def fingerprint(path: str) -> dict:
    """Quick content fingerprint: size + sha256 of the first and last MiB (reading all input twice costs)."""
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(size - (1 << 20))
            h.update(f.read())
    return {"path": path, "bytes": size, "sha256_head_tail": h.hexdigest()[:32]}


def estimate_rows(path: str) -> int:
    """Rough row count for choosing the number of partitions (deterministic: depends on the file only)."""
    kind = file_kind(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    size = os.path.getsize(path)
    factor = 6 if path.endswith((".gz", ".zst")) else 1  # typical text compression ratio
    return size * factor // 150


def plan_tasks(paths: list[str], task_bytes: int | None = None) -> list[Task]:
    """Reading tasks in input order: byte ranges of plain JSONL files (cut after a newline), runs of row groups
    of Parquet files (>= `TASK_ROWS` rows each), whole other files."""
    task_bytes = task_bytes or TASK_BYTES
    tasks: list[Task] = []
    for fi, path in enumerate(paths):
        kind = file_kind(path)
        if kind == "parquet":
            tasks += _parquet_tasks(len(tasks), fi, path)
            continue
        size = os.path.getsize(path)
        if kind != "jsonl" or path.endswith((".gz", ".zst")) or size <= task_bytes:
            tasks.append(Task(len(tasks), fi, path, kind))
            continue
        with open(path, "rb") as f:
            start = 0
            while start < size:
                f.seek(min(start + task_bytes, size))
                f.readline()  # advance to the end of the line we landed in
                end = min(f.tell(), size)
                tasks.append(Task(len(tasks), fi, path, kind, start, end))
                start = end
    return tasks


def _parquet_tasks(first_id: int, fi: int, path: str) -> list[Task]:
    """One task per run of consecutive row groups holding >= TASK_ROWS rows (a single-file Parquet input
    keeps every worker busy; a file with one row group is one task)."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    tasks, start, rows = [], 0, 0
    for g in range(meta.num_row_groups):
        rows += meta.row_group(g).num_rows
        if rows >= TASK_ROWS or g == meta.num_row_groups - 1:
            tasks.append(Task(first_id + len(tasks), fi, path, "parquet", start, g + 1))
            start, rows = g + 1, 0
    return tasks or [Task(first_id, fi, path, "parquet")]


def _range_pieces(path: str, start: int, end: int):
    """(piece, lines) for a byte range of a plain file, cut after the last newline of each ~16 MB read.

    Pieces are memoryviews of one buffer that is refilled in place (``readinto``; only the short tail after
    the cut moves), so there is no join or slice copy per piece. A piece is only valid until the next one:
    the readers copy what they keep.
    """
    buf = bytearray(PIECE_BYTES)
    have, left = 0, end - start
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        while True:
            while have < len(buf) and left > 0:
                with memoryview(buf) as mv:
                    n = f.readinto(mv[have: have + min(len(buf) - have, left)])
                if not n:
                    left = 0
                    break
                have, left = have + n, left - n
            if have == 0:
                return
            cut = buf.rfind(b"\n", 0, have) + 1 if left > 0 else have
            if cut <= 0:  # one line longer than the buffer: a bigger one (a piece may still be viewed)
                bigger = bytearray(2 * len(buf))
                bigger[:have] = buf[:have]
                buf = bigger
                continue
            nl = _line_count(buf, cut)
            with memoryview(buf) as mv:
                yield mv[:cut], nl
            buf[: have - cut] = buf[cut:have]
            have -= cut


def _cut_pieces(blocks, csv_quotes: bool = False):
    """Re-cut a stream of byte blocks at newlines (and, for CSV, outside quoted fields).

    Only the short tail after a block's last newline is carried over (no quadratic re-copying).
    """
    pending: list[bytes] = []
    size = 0
    for b in blocks:
        pending.append(b)
        size += len(b)
        if size < PIECE_BYTES:
            continue
        cut = b.rfind(b"\n") + 1
        if cut <= 0:
            continue
        buf = b"".join(pending) if len(pending) > 1 else b
        cut += len(buf) - len(b)
        if csv_quotes and buf.count(b'"', 0, cut) % 2:
            pending, size = [buf], len(buf)  # inside a quoted multi-line field: read on
            continue
        yield buf[:cut] if cut < len(buf) else buf
        rest = buf[cut:]
        pending, size = ([rest], len(rest)) if rest else ([], 0)
    if size:
        yield b"".join(pending)


def _line_count(buf, end: int | None = None) -> int:
    """Lines in ``buf[:end]`` (a last line without a newline counts). The newlines are counted with one numpy
    compare: ~4x faster than ``bytes.count`` (which took 3% of a build)."""
    end = len(buf) if end is None else end
    newlines = int(np.count_nonzero(np.frombuffer(buf, np.uint8, count=end) == 10))
    return newlines + (0 if end and buf[end - 1] == 10 else 1)


@functools.cache
def _scanner():
    """``jsonscan.scan_piece``, imported on first use (numba's import and JIT cache load take ~0.7 s)."""
    from .jsonscan import scan_piece

    return scan_piece


def _json_piece(piece: bytes, first_line: int, n_lines: int | None = None) -> Raw:
    """The compiled scanner for pieces of flat records with the first line's keys; else pyarrow's reader when
    it parses the piece into exactly one row per line (a blank line, which pyarrow skips, makes the counts
    differ); otherwise the exact per-line path. All three give the same rows."""
    n_lines = _line_count(piece) if n_lines is None else n_lines
    raw = _scanner()(piece, first_line, n_lines)
    if raw is not None:
        return raw
    try:
        table = pj.read_json(pa.py_buffer(piece), read_options=pj.ReadOptions(use_threads=False, block_size=len(piece) + 1))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        table = None
    return _table_or_exact(table, first_line, n_lines, lambda: iter_json_records(bytes(piece), first_line))


def _csv_piece(piece: bytes, header: list[str], first_line: int, n_lines: int | None = None) -> Raw:
    """As ``_json_piece``; a quoted newline or a blank line makes the counts differ -> the exact csv path."""
    n_lines = _line_count(piece) if n_lines is None else n_lines
    try:
        table = pcsv.read_csv(
            io.BytesIO(piece),
            read_options=pcsv.ReadOptions(column_names=header, use_threads=False, block_size=len(piece) + 1),
            convert_options=pcsv.ConvertOptions(column_types={h: pa.string() for h in header}),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        table = None
    return _table_or_exact(table, first_line, n_lines, lambda: iter_csv_records(piece, header, first_line))


def _table_or_exact(table, first_line: int, n_lines: int, exact_records) -> Raw:
    """The pyarrow table when it holds exactly one row per line and converts cleanly; else the exact
    per-line records from `exact_records()` (which reject bad lines with their line numbers)."""
    if table is not None and table.num_rows == n_lines:
        raw = raw_from_table(table, np.arange(first_line, first_line + n_lines, dtype=np.int64))
        if raw is not None:
            return raw
    return raw_from_records(exact_records())


def iter_task(task: Task):
    """Yield (Raw | None, lines in the piece) for a task; line numbers relative to the task start (first = 1).

    The caller sums the second item to know how many lines the task covered (None: a CSV header line).
    """
    if task.kind == "jsonl":
        line = 1
        if task.end >= 0:  # plain file: pieces are views of one reused buffer
            for piece, nl in _range_pieces(task.path, task.start, task.end):
                yield _json_piece(piece, line, nl), nl
                line += nl
            return
        for piece in _cut_pieces(_iter_file(task.path)):
            nl = _line_count(piece)
            yield _json_piece(piece, line, nl), nl
            line += nl
    elif task.kind == "csv":
        blocks = _iter_file(task.path)
        first = b""
        for b in blocks:  # the header line
            first += b
            if b"\n" in first:
                break
        nl = first.find(b"\n")
        head, rest = (first, b"") if nl < 0 else (first[:nl], first[nl + 1:])
        header = next(csv.reader([head.decode("utf-8", "replace").rstrip("\r")]), [])
        if not header:
            raise ValueError(f"{task.path}: empty CSV (no header line)")

        def chain():
            if rest:
                yield rest
            yield from blocks

        line = 2
        yield None, 1  # the header line
        for piece in _cut_pieces(chain(), csv_quotes=True):
            nl = _line_count(piece)
            yield _csv_piece(piece, header, line, nl), nl
            line += nl
    elif task.kind == "parquet":
        import pyarrow.parquet as pq

        row = 1
        f = pq.ParquetFile(task.path)
        groups = range(task.start, task.end) if task.end >= 0 else None
        for batch in f.iter_batches(batch_size=1 << 17, row_groups=groups):
            table = pa.Table.from_batches([batch])
            lines = np.arange(row, row + table.num_rows, dtype=np.int64)
            raw = raw_from_table(table, lines)
            if raw is None:
                recs = ((int(ln), obj, None, None) for ln, obj in zip(lines, table.to_pylist()))
                raw = raw_from_records(recs)
            yield raw, table.num_rows
            row += table.num_rows
    else:  # pragma: no cover - file_kind guards this
        raise ValueError(task.kind)


def _iter_file(path: str):
    with open_binary(path) as f:
        while True:
            b = f.read(PIECE_BYTES)
            if not b:
                break
            yield b
