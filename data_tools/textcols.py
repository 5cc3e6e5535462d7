"""Vectorised operations on Arrow string columns, straight on their byte buffers (numpy).

Timestamps in the InternVid form ``HH:MM:SS.mmm`` are decoded from an [n, 12] byte block; word counts
are a byte scan. Both are ~10-40x cheaper than the equivalent Arrow regex kernels.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_TS_RE = r"^\d+(:\d+){0,2}(\.\d*)?$"


def _offsets(arr: pa.Array) -> np.ndarray:
    """int64 value offsets of a (possibly sliced) string array."""
    return np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset: arr.offset + len(arr) + 1].astype(np.int64)


def _data(arr: pa.Array) -> np.ndarray:
    buf = arr.buffers()[2]
    return np.frombuffer(buf, dtype=np.uint8) if buf is not None else np.zeros(0, np.uint8)


def parse_seconds(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised ``"[HH:][MM:]SS[.fff]"`` -> (milliseconds int64, valid bool). Nulls are invalid.

    The InternVid form ``HH:MM:SS.mmm`` (12 bytes) is decoded straight from the bytes with numpy; any other
    form goes through Arrow's regex / split kernels.
    """
    n = len(strings)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks()
    ms = np.zeros(n, np.int64)
    ok = np.zeros(n, bool)
    rest = np.ones(n, bool)
    if pa.types.is_string(strings.type):
        offs = _offsets(strings)
        fixed = (np.diff(offs) == 12) & strings.is_valid().to_numpy(zero_copy_only=False)
        if fixed.any():
            data = _data(strings)
            if fixed.all():  # the common case: a contiguous [n, 12] block of bytes
                m = data[offs[0]: offs[-1]].reshape(n, 12)
            else:
                m = data[offs[:-1][fixed][:, None] + np.arange(12)]
            d = m[:, [0, 1, 3, 4, 6, 7, 9, 10, 11]] - np.uint8(48)  # digits; other bytes wrap to > 9
            good = (d <= 9).all(1) & (m[:, 2] == 58) & (m[:, 5] == 58) & (m[:, 8] == 46)
            val = np.zeros(len(m), np.int64)
            for col, weight in enumerate((36000000, 3600000, 600000, 60000, 10000, 1000, 100, 10, 1)):
                val += d[:, col] * np.int64(weight)
            fi = np.flatnonzero(fixed)
            ms[fi[good]] = val[good]
            ok[fi[good]] = True
            rest[fi[good]] = False
    if rest.any():
        ri = np.flatnonzero(rest)
        sub = strings.take(pa.array(ri)) if len(ri) < n else strings
        ms[ri], ok[ri] = _parse_seconds_general(sub)
    return ms, ok


def _parse_seconds_general(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    s = pc.utf8_trim_whitespace(strings)
    valid = pc.fill_null(pc.match_substring_regex(s, _TS_RE), False)
    s = pc.if_else(valid, s, "0")
    parts = pc.split_pattern(s, ":")
    offsets = parts.offsets.to_numpy()
    lens = np.diff(offsets)
    flat = pc.cast(parts.values, pa.float64()).to_numpy(zero_copy_only=False)
    n = len(s)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    row = np.repeat(np.arange(n), lens)
    pos = np.arange(len(flat)) - offsets[:-1][row]
    weight = np.power(60.0, (lens[row] - 1 - pos).astype(np.float64))
    secs = np.add.reduceat(flat * weight, offsets[:-1].astype(np.int64))
    ms = np.rint(secs * 1000.0)
    ok = valid.to_numpy(zero_copy_only=False) & (ms < 2**53)
    return np.where(ok, ms, 0).astype(np.int64), ok


def word_counts(text: pa.Array) -> np.ndarray:
    """Words per string, counted as runs of non-space bytes after a space (nulls count 0).

    A byte scan with numpy: Arrow's regex counting costs ~40x more and this only feeds a word budget.
    """
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    n = len(text)
    if n == 0:
        return np.zeros(0, np.int64)
    offs = _offsets(text)
    data = _data(text)[offs[0]: offs[-1]]
    offs = offs - offs[0]
    lens = np.diff(offs)
    if len(data) == 0:
        return np.zeros(n, np.int64)
    ws = data <= 32  # space, tab, newline, other control bytes
    starts = ~ws
    starts[1:] &= ws[:-1]
    # A word that starts at a string's first byte counts even if the previous string ended in a non-space.
    nonempty = lens > 0
    heads = offs[:-1][nonempty]
    starts[heads] = ~ws[heads]
    out = np.zeros(n, np.int64)
    out[nonempty] = np.add.reduceat(starts.view(np.uint8), heads, dtype=np.int32)
    out[~text.is_valid().to_numpy(zero_copy_only=False)] = 0
    return out
