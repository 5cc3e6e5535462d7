"""A compiled one-pass scanner for JSONL pieces of flat annotation records (the common case), with numba.

pyarrow's JSON reader costs ~1 µs per InternVid row (~200 bytes), about 40% of a build's CPU. Annotation
files are machine-written flat objects with the same keys on every line, so one pass over the bytes can
decode exactly the fields the builder uses, straight into Arrow buffers: ~0.2 µs per row.

The scanner is strict and gives up on the whole piece at the first thing it does not handle (nested
values, ``true``/``false`` or a number where text is needed, a key the first line lacks, a duplicate
key, alias conflicts, blank lines, invalid JSON or UTF-8, lone surrogates, numbers that overflow); the
caller then uses pyarrow's reader or the exact per-line path, which give every bad line its reason. So
a piece it accepts yields the same ``Raw`` as the exact path (``annotations.raw_from_records``): this
is what ``tests/test_data_jsonscan.py`` checks, with hypothesis.

The compiled part is in ``data_tools.jsonkernels``; this module maps the first line's keys to fields and
turns the scan into Arrow arrays.
"""

from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from .annotations import ALIASES, Raw, column_map
from .jsonkernels import PLAIN, WORDS, scan

FIELDS = ("vid", "start", "end", "caption", "asr", "umt", "aes")
TEXT_FIELDS = (0, 1, 2, 3, 4)  # may hold strings
NUMBER_FIELDS = (1, 2, 5, 6)  # may hold numbers
_ALIAS_OF = {a: f for f, names in ALIASES.items() for a in names}


def _keys_of(piece) -> list[str] | None:
    """The first line's keys, when the scanner can take them: a flat object, plain keys, one key per field."""
    nl = bytes(piece[: 1 << 16]).find(b"\n")
    first = bytes(piece[: nl if nl >= 0 else None])
    try:
        obj = orjson.loads(first)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not obj or len(obj) > 62:
        return None
    keys = list(obj)
    if any('"' in k or "\\" in k or not k.isascii() or not k.isprintable() for k in keys):
        return None
    per_field = {}
    for k in keys:  # two keys that are aliases of one field: per-row alias choice -> the exact path
        f = _ALIAS_OF.get(k.lower())
        if f is not None and per_field.setdefault(f, k) != k:
            return None
    return keys


def _strings(data: np.ndarray, offs: np.ndarray, valid: np.ndarray) -> pa.Array:
    n = len(valid)
    nulls = n - int(np.count_nonzero(valid))
    if nulls == n:
        return pa.nulls(n, pa.string())
    bitmap = None if nulls == 0 else pa.py_buffer(np.packbits(valid, bitorder="little"))
    values = pa.py_buffer(data[: int(offs[-1])].copy())  # a copy: the scan buffers are large and short-lived
    return pa.Array.from_buffers(pa.string(), n, [bitmap, pa.py_buffer(offs), values], null_count=nulls)


def scan_piece(piece, first_line: int, n_lines: int) -> Raw | None:
    """The piece's rows as a ``Raw`` (same as the exact path), or None when the scanner gives up."""
    if n_lines == 0 or len(piece) >= 2**31 - 1:
        return None
    keys = _keys_of(piece)
    if keys is None:
        return None
    cmap = column_map(keys)
    field_of = {col: FIELDS.index(f) for f, col in cmap.items()}
    enc = [k.encode() for k in keys]
    key_offs = np.zeros(len(enc) + 1, np.int64)
    np.cumsum([len(k) for k in enc], out=key_offs[1:])
    key_bytes = np.frombuffer(b"".join(enc), np.uint8)
    key_field = np.array([field_of.get(k, -1) for k in keys], np.int64)
    buf = np.frombuffer(piece, np.uint8)
    text_out = np.empty((7, len(buf)), np.uint8)  # untouched rows cost address space only
    num_out = np.empty((7, len(buf)), np.uint8)
    text_offs = np.zeros((7, n_lines + 1), np.int32)
    num_offs = np.zeros((7, n_lines + 1), np.int32)
    kind = np.empty((7, n_lines), np.int8)
    done = scan(buf, n_lines, key_bytes, key_offs, key_field, text_out, num_out, text_offs, num_offs, kind,
                WORDS, PLAIN, np.zeros(7, np.int64), np.zeros(7, np.int64))
    if done != n_lines:
        return None
    text = {}
    for f in TEXT_FIELDS:
        text[f] = _strings(text_out[f], text_offs[f], kind[f] == 1)
    nums = {}
    for f in NUMBER_FIELDS:
        valid = kind[f] == 2
        if not valid.any():
            nums[f] = pa.nulls(n_lines, pa.float64())
            continue
        try:
            v = pc.cast(_strings(num_out[f], num_offs[f], valid), pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        if not np.isfinite(v.to_numpy(zero_copy_only=False)[valid]).all():  # e.g. 1e999: the exact path decides
            return None
        nums[f] = v
    line = np.arange(first_line, first_line + n_lines, dtype=np.int64)
    return Raw(n_lines, line, text[0], text[1], nums[1], text[2], nums[2], text[3], text[4], nums[5], nums[6])


# Compile (or load from numba's cache) at import: the build's forkserver imports this module once, so its
# workers start with the scanner ready.
scan_piece(b'{"YoutubeID":"a","Caption":"b \\u00e9\\"","Start_timestamp":1.5,"x":[]}\n', 1, 1)
