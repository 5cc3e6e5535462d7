"""Vectorised string building for the JSON writer (numpy bytes -> Arrow string arrays).

``fmt_rows`` lays out rows made of constant byte strings and non-negative integers in a [rows, width]
byte matrix and compacts it into an Arrow string array: one pass over the output bytes, instead of an Arrow
cast + pad + concatenate pass per field.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

_POW10 = 10 ** np.arange(19, dtype=np.int64)


def digits(x: np.ndarray) -> np.ndarray:
    """Number of decimal digits of non-negative ints (0 has 1)."""
    x = np.asarray(x, np.int64)
    return np.maximum(np.searchsorted(_POW10, x, side="right"), 1)


def fmt_rows(fields: list, n: int) -> pa.Array:
    """Build ``n`` strings from ``fields``: ``bytes`` (constant), ``("int", arr)`` (decimal, no padding),
    ``("pad3", arr)`` (three digits, zero-padded) or ``("pad", arr, width)`` (at least ``width`` digits).

    Every field gets fixed columns (its widest value; numbers right-aligned) so all writes are contiguous
    rows of a column-major matrix; a validity mask drops the unused leading columns of short numbers.
    """
    if n == 0:
        return pa.array([], pa.string())
    layout = []
    width = 0
    for f in fields:
        if isinstance(f, bytes):
            layout.append((f, width, len(f)))
            width += len(f)
        elif f[0] in ("int", "pad3", "pad"):
            x = np.asarray(f[1], np.int64)
            pad = 3 if f[0] == "pad3" else (f[2] if f[0] == "pad" else 0)
            w = np.maximum(digits(x), pad) if pad else digits(x)
            maxd = int(w.max())
            layout.append(((f[0], x, w), width, maxd))
            width += maxd
        else:
            raise ValueError(f"unknown field {f[0]!r}")
    # Built column-major (each field write is contiguous), transposed once for the row-major compaction.
    m = np.empty((width, n), np.uint8)
    valid = np.ones((width, n), bool)
    total = np.zeros(n, np.int64)
    for f, c, w in layout:
        if isinstance(f, bytes):
            if w:
                m[c:c + w, :] = np.frombuffer(f, np.uint8)[:, None]
            total += w
            continue
        _, x, wd = f
        for d in range(w):  # d-th digit from the right, at column c + w - 1 - d
            m[c + w - 1 - d] = (x // _POW10[d]) % 10 + 48
            if d:
                valid[c + w - 1 - d] = d < wd
        total += wd
    data = np.ascontiguousarray(m.T)[np.ascontiguousarray(valid.T)]
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(total, out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data.tobytes())])


def seconds_fields(ms: np.ndarray) -> list:
    """Fields for a JSON number with exactly three decimals: ``12.500``."""
    ms = np.asarray(ms, np.int64)
    return [("int", ms // 1000), b".", ("pad3", ms % 1000)]
