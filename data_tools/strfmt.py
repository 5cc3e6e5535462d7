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
    ``("pad3", arr)`` (three digits, zero-padded), ``("pad", arr, width)`` (at least ``width`` digits) or
    ``("opt", bytes, mask)`` (constant bytes where ``mask`` is true, nothing elsewhere).

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
        elif f[0] == "opt":
            layout.append((f, width, len(f[1])))
            width += len(f[1])
        elif f[0] in ("int", "pad3", "pad"):
            x = np.asarray(f[1], np.int64)
            pad = 3 if f[0] == "pad3" else (f[2] if f[0] == "pad" else 0)
            w = np.maximum(digits(x), pad) if pad else digits(x)
            maxd = int(w.max())
            if x.max(initial=0) < 2**32:  # 32-bit division is ~2x cheaper than 64-bit
                x = x.astype(np.uint32)
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
        if f[0] == "opt":
            m[c:c + w, :] = np.frombuffer(f[1], np.uint8)[:, None]
            valid[c:c + w, :] = f[2]
            total += w * f[2]
            continue
        _, x, wd = f
        q, ten = x, x.dtype.type(10)
        for d in range(w):  # d-th digit from the right, at column c + w - 1 - d
            q, r = np.divmod(q, ten)
            m[c + w - 1 - d] = r + 48
            if d:
                valid[c + w - 1 - d] = d < wd
        total += wd
    data = m.T[valid.T]  # row-major compaction straight from the transposed views (no transposed copies)
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(total, out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def seconds_fields(ms: np.ndarray) -> list:
    """Fields for a JSON number with exactly three decimals: ``12.500``."""
    ms = np.asarray(ms, np.int64)
    return [("int", ms // 1000), b".", ("pad3", ms % 1000)]
