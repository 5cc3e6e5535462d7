"""Reading and writing sample shards (the contract between data_tools and the trainer).

A built dataset is a folder ``DIR/`` holding ``manifest.json``, ``rejects.jsonl`` and
``DIR/{train,val}/shard-00000.jsonl[.zst|.gz]``: one sample (ARCHITECTURE.md §3) per line.
``iter_samples`` is the reader everyone else uses; it accepts a dataset folder, a shard file, or a glob
of either, so several builds (e.g. one per machine with ``--num-shards``) stream as one.
"""

from __future__ import annotations

import glob as _glob
import gzip
import io
import os
from pathlib import Path
from typing import BinaryIO, Iterator

import orjson

SPLITS = ("train", "val")
SHARD_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"


class SampleReadError(ValueError):
    """A sample line that is not valid JSON; the message names file and line."""


def open_binary(path: str | os.PathLike) -> BinaryIO:
    """Open a file for reading, transparently decompressing ``.gz`` and ``.zst`` by suffix."""
    p = str(path)
    if p.endswith(".gz"):
        return gzip.open(p, "rb")  # type: ignore[return-value]
    if p.endswith(".zst"):
        import zstandard

        raw = open(p, "rb")
        # read_across_frames: our shards (and other tools' files) may hold several concatenated frames.
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True))
    return open(p, "rb")


def is_shard(path: str | os.PathLike) -> bool:
    name = os.path.basename(str(path))
    return name.startswith("shard-") and name.endswith(SHARD_SUFFIXES)


def shard_files(dataset_dir: str | os.PathLike, split: str | None = None) -> list[Path]:
    """Shard files of one dataset folder, ``train`` before ``val``, each split in name order.

    A folder with shard files directly inside (no split sub-folders) is accepted too.
    """
    d = Path(dataset_dir)
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    out: list[Path] = []
    for s in SPLITS if split is None else (split,):
        sub = d / s
        if sub.is_dir():
            out += sorted(p for p in sub.iterdir() if is_shard(p))
    if not out and split is None:
        out = sorted(p for p in d.iterdir() if is_shard(p))
    return out


def resolve_shards(dir_or_glob: str | os.PathLike | list, split: str | None = None) -> list[Path]:
    """Expand a dataset folder, shard file, glob, or list of those into shard paths (deterministic order)."""
    if isinstance(dir_or_glob, (list, tuple)):
        out: list[Path] = []
        for item in dir_or_glob:
            out += resolve_shards(item, split)
        return out
    s = str(dir_or_glob)
    matches = sorted(_glob.glob(s)) if any(ch in s for ch in "*?[") else [s]
    if not matches:
        raise FileNotFoundError(f"no dataset matches {s!r}")
    out = []
    for m in matches:
        p = Path(m)
        if p.is_dir():
            out += shard_files(p, split)
        elif p.is_file():
            if split is None or p.parent.name == split:
                out.append(p)
        else:
            raise FileNotFoundError(f"no such dataset folder or shard file: {m}")
    return out


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line bytes without the newline) for each non-blank line of a (compressed) file."""
    with open_binary(path) as f:
        for i, line in enumerate(f, 1):
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield i, line


def iter_samples(dir_or_glob: str | os.PathLike | list, split: str | None = None) -> Iterator[dict]:
    """Yield sample dicts from ``DIR/{train,val}/shard-*.jsonl[.zst|.gz]`` (or shard files / globs).

    ``split=None`` yields every split (train first). Raises ``SampleReadError`` naming file and line on
    a line that is not a JSON object.
    """
    for path in resolve_shards(dir_or_glob, split):
        for lineno, line in iter_lines(path):
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                raise SampleReadError(f"{path}:{lineno}: invalid JSON ({e})") from None
            if not isinstance(obj, dict):
                raise SampleReadError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield obj


def read_manifest(dataset_dir: str | os.PathLike) -> dict:
    """The ``manifest.json`` of a built dataset folder."""
    p = Path(dataset_dir) / MANIFEST
    if not p.is_file():
        raise FileNotFoundError(f"{dataset_dir} has no {MANIFEST} (is it a folder made by `videochat data build`?)")
    return orjson.loads(p.read_bytes())


def compress(data: bytes, compression: str | None, level: int = 3) -> bytes:
    """Compress one shard's bytes: ``None`` (plain), ``"zst"`` or ``"gz"`` (gzip mtime fixed: byte-identical)."""
    if not compression:
        return data
    if compression == "zst":
        import zstandard

        return zstandard.ZstdCompressor(level=level).compress(data)
    if compression == "gz":
        return gzip.compress(data, compresslevel=min(max(level, 1), 9), mtime=0)
    raise ValueError(f"unknown compression {compression!r}; expected zst or gz")


def shard_suffix(compression: str | None) -> str:
    return ".jsonl" + (f".{compression}" if compression else "")


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write a file via a temporary name so a crash never leaves a half-written output."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, p)


def write_samples(path: str | os.PathLike, samples, compression: str | None = None) -> int:
    """Write sample dicts as one shard file (used by import and tests); returns the number written."""
    buf = bytearray()
    n = 0
    for s in samples:
        buf += orjson.dumps(s)
        buf += b"\n"
        n += 1
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, compress(bytes(buf), compression))
    return n
