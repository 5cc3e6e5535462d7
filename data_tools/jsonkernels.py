"""Compiled (numba) kernels of the JSONL scanner: one pass over a piece of flat JSON objects.

``scan`` fills per-field byte buffers, offsets and value kinds; ``data_tools.jsonscan`` turns them into
Arrow arrays and decides what the scanner may take (see its docstring for the contract).
Fields (rows of the output arrays): 0 vid, 1 start, 2 end, 3 caption, 4 asr, 5 umt, 6 aes.
Value kinds: 0 missing / null, 1 string, 2 number.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# The scanner indexes with unsigned integers in its hot loops (``_u``): numba then skips the negative-index
# wraparound it otherwise adds to every access. It runs without numba's reference counting (``_nrt=False``):
# the atomic increments around array arguments cost more than the scan itself.
_u = np.uint64


@njit(cache=True, nogil=True, _nrt=False)
def _hex(c):
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


@njit(cache=True, nogil=True, _nrt=False)
def _u4(buf, i, end):
    """Value of the 4 hex digits at buf[i:i+4], or -1."""
    if i + 4 > end:
        return -1
    v = 0
    for k in range(4):
        d = _hex(buf[i + k])
        if d < 0:
            return -1
        v = v * 16 + d
    return v


@njit(cache=True, nogil=True, _nrt=False)
def _string(buf, i, end, out, f, o, copy, plain):
    """Decode the JSON string whose opening quote is at buf[i-1]. Writes the UTF-8 bytes to out[f, o:] when
    ``copy`` (a 2-D output and a row index, not a row view: views cost reference counting per call).
    Returns (index after the closing quote, new o), or (-1, o) on anything invalid."""
    while i < end:
        # The common case: a run of plain ASCII bytes, found with one table lookup per byte, then copied.
        s = i
        while i < end and plain[buf[_u(i)]]:
            i += 1
        if copy:
            for k in range(i - s):
                out[_u(f), _u(o + k)] = buf[_u(s + k)]
            o += i - s
        if i >= end:
            break
        c = buf[i]
        if c == 34:  # closing quote
            return i + 1, o
        if c < 32:
            return -1, o
        if c == 92:  # backslash escape
            if i + 1 >= end:
                return -1, o
            e = buf[i + 1]
            i += 2
            if e == 34 or e == 92 or e == 47:
                b = e
            elif e == 110:
                b = 10
            elif e == 116:
                b = 9
            elif e == 114:
                b = 13
            elif e == 98:
                b = 8
            elif e == 102:
                b = 12
            elif e == 117:
                cp = _u4(buf, i, end)
                if cp < 0:
                    return -1, o
                i += 4
                if 0xD800 <= cp <= 0xDBFF:  # a surrogate pair, or give up
                    if i + 6 > end or buf[i] != 92 or buf[i + 1] != 117:
                        return -1, o
                    lo = _u4(buf, i + 2, end)
                    if lo < 0xDC00 or lo > 0xDFFF:
                        return -1, o
                    i += 6
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
                elif 0xDC00 <= cp <= 0xDFFF:
                    return -1, o
                if copy:
                    if cp < 0x80:
                        out[f, o] = cp
                        o += 1
                    elif cp < 0x800:
                        out[f, o] = 0xC0 | (cp >> 6)
                        out[f, o + 1] = 0x80 | (cp & 0x3F)
                        o += 2
                    elif cp < 0x10000:
                        out[f, o] = 0xE0 | (cp >> 12)
                        out[f, o + 1] = 0x80 | ((cp >> 6) & 0x3F)
                        out[f, o + 2] = 0x80 | (cp & 0x3F)
                        o += 3
                    else:
                        out[f, o] = 0xF0 | (cp >> 18)
                        out[f, o + 1] = 0x80 | ((cp >> 12) & 0x3F)
                        out[f, o + 2] = 0x80 | ((cp >> 6) & 0x3F)
                        out[f, o + 3] = 0x80 | (cp & 0x3F)
                        o += 4
                continue
            else:
                return -1, o
            if copy:
                out[f, o] = b
                o += 1
            continue
        # A multi-byte UTF-8 sequence: validate it (no overlongs, surrogates or code points > U+10FFFF).
        if 0xC2 <= c <= 0xDF:
            n, lo, hi = 1, 0x80, 0xBF
        elif c == 0xE0:
            n, lo, hi = 2, 0xA0, 0xBF
        elif c == 0xED:
            n, lo, hi = 2, 0x80, 0x9F
        elif 0xE1 <= c <= 0xEF:
            n, lo, hi = 2, 0x80, 0xBF
        elif c == 0xF0:
            n, lo, hi = 3, 0x90, 0xBF
        elif 0xF1 <= c <= 0xF3:
            n, lo, hi = 3, 0x80, 0xBF
        elif c == 0xF4:
            n, lo, hi = 3, 0x80, 0x8F
        else:
            return -1, o
        if i + n >= end:
            return -1, o
        b1 = buf[i + 1]
        if b1 < lo or b1 > hi:
            return -1, o
        for k in range(2, n + 1):
            if buf[i + k] < 0x80 or buf[i + k] > 0xBF:
                return -1, o
        if copy:
            for k in range(n + 1):
                out[f, o + k] = buf[i + k]
            o += n + 1
        i += n + 1
    return -1, o


@njit(cache=True, nogil=True, _nrt=False)
def _number(buf, i, end):
    """End index of the JSON number starting at buf[i], or -1."""
    if i < end and buf[i] == 45:  # '-'
        i += 1
    if i >= end:
        return -1
    if buf[i] == 48:  # '0'
        i += 1
    elif 49 <= buf[i] <= 57:
        i = _digits(buf, i, end)
    else:
        return -1
    if i < end and buf[i] == 46:  # '.' and at least one digit
        j = _digits(buf, i + 1, end)
        if j == i + 1:
            return -1
        i = j
    if i < end and (buf[i] == 101 or buf[i] == 69):  # 'e' / 'E', a sign, at least one digit
        i += 1
        if i < end and (buf[i] == 43 or buf[i] == 45):
            i += 1
        j = _digits(buf, i, end)
        if j == i:
            return -1
        i = j
    return i


@njit(cache=True, nogil=True, _nrt=False)
def _digits(buf, i, end):
    """End of the run of ASCII digits that starts at buf[i]."""
    while i < end and 48 <= buf[i] <= 57:
        i += 1
    return i


@njit(cache=True, nogil=True, _nrt=False)
def _ws(buf, i, end):
    while i < end and (buf[i] == 32 or buf[i] == 9 or buf[i] == 13):
        i += 1
    return i


@njit(cache=True, nogil=True, _nrt=False)
def _literal(buf, i, end, words, a, b):
    """buf[i:] starts with words[a:b]."""
    if i + b - a > end:
        return False
    for k in range(b - a):
        if buf[i + k] != words[a + k]:
            return False
    return True


@njit(cache=True, nogil=True, _nrt=False)
def _key_is(buf, ks, end, key_bytes, key_offs, k):
    """buf[ks:] holds known key k followed by its closing quote (known keys have no quote or escape)."""
    a, b = key_offs[k], key_offs[k + 1]
    if ks + b - a >= end or buf[ks + b - a] != 34:
        return False
    for t in range(b - a):
        if buf[_u(ks + t)] != key_bytes[_u(a + t)]:
            return False
    return True


@njit(cache=True, nogil=True, _nrt=False)
def _key(buf, ks, end, key_bytes, key_offs, guess):
    """Index of the known key that starts at buf[ks] (``guess`` first: keys usually come in the first line's
    order), or -1."""
    nkeys = len(key_offs) - 1
    g = guess if guess < nkeys else 0
    if _key_is(buf, ks, end, key_bytes, key_offs, g):
        return g
    for k in range(nkeys):
        if k != g and _key_is(buf, ks, end, key_bytes, key_offs, k):
            return k
    return -1


@njit(cache=True, nogil=True, _nrt=False)
def _may_overflow(buf, i, j):
    """Could the JSON number buf[i:j] overflow a double (an exponent, or over 300 integer digits)?"""
    digits = 0
    frac = False
    for b in range(i, j):
        c = buf[b]
        if c == 101 or c == 69:  # 'e' / 'E'
            return True
        if c == 46:  # '.': the integer part ends
            frac = True
        elif not frac:
            digits += 1
    return digits > 300


WORDS = np.frombuffer(b"nulltruefalse", np.uint8)
PLAIN = np.zeros(256, np.bool_)
PLAIN[32:128] = True
PLAIN[[34, 92]] = False  # quote, backslash


@njit(cache=True, nogil=True, _nrt=False)
def scan(buf, n_rows, key_bytes, key_offs, key_field, text_out, num_out, text_offs, num_offs, kind, words, plain,
         to, no):
    """Scan ``n_rows`` newline-separated flat JSON objects in ``buf``.

    key_bytes/key_offs: the known keys (raw bytes, no escapes); key_field: the field (0-6) each key feeds,
    -1 for an ignored key. Outputs: text_out [7, len(buf)] / num_out [7, len(buf)] bytes, their offsets
    text_offs / num_offs [7, n_rows + 1] (int32), kind [7, n_rows] (0 null, 1 string, 2 number).
    words: b"nulltruefalse"; plain: bool [256], the bytes a string run copies as they are; to / no: int64 [7],
    scratch (bytes written per field).
    Returns the number of rows scanned: n_rows on success, less when it gave up (at that row).
    """
    end = len(buf)
    to[:] = 0
    no[:] = 0
    i = 0
    for row in range(n_rows):
        for f in range(7):
            kind[f, row] = 0
        seen = 0
        nxt = 0
        i = _ws(buf, i, end)
        if i >= end or buf[i] != 123:  # '{'
            return row
        i = _ws(buf, i + 1, end)
        if i < end and buf[i] == 125:  # '}': an empty object
            i += 1
        else:
            while True:
                if i >= end or buf[i] != 34:
                    return row
                # The key: usually the next key of the first line, else any known key (an escaped or
                # unknown key -> give up).
                key = _key(buf, i + 1, end, key_bytes, key_offs, nxt)
                if key < 0 or (seen >> key) & 1:
                    return row
                seen |= 1 << key
                nxt = key + 1
                i = _ws(buf, i + 2 + key_offs[key + 1] - key_offs[key], end)  # after the closing quote
                if i >= end or buf[i] != 58:  # ':'
                    return row
                i = _ws(buf, i + 1, end)
                if i >= end:
                    return row
                f = key_field[key]
                c = buf[i]
                if c == 34:  # a string
                    if f == 5 or f == 6:  # a score given as text: the other paths convert and check it
                        return row
                    if f >= 0:
                        i, o = _string(buf, i + 1, end, text_out, f, to[f], True, plain)
                        to[f] = o
                        kind[f, row] = 1
                    else:
                        i, o = _string(buf, i + 1, end, text_out, 0, 0, False, plain)
                    if i < 0:
                        return row
                elif c == 45 or 48 <= c <= 57:  # a number
                    j = _number(buf, i, end)
                    if j < 0:
                        return row
                    if f == 1 or f == 2 or f == 5 or f == 6:
                        if j - i == 2 and buf[i] == 45 and buf[i + 1] == 48:
                            i += 1  # the integer -0 is 0 (an int for orjson), not the float -0.0
                        o = no[f]
                        for b in range(j - i):
                            num_out[_u(f), _u(o + b)] = buf[_u(i + b)]
                        no[f] = o + j - i
                        kind[f, row] = 2
                    elif f >= 0:  # a number where text is needed (vid, caption, asr)
                        return row
                    elif _may_overflow(buf, i, j):  # ignored, but orjson refuses a line with such a number
                        return row
                    i = j
                elif c == 110 and _literal(buf, i, end, words, 0, 4):  # null
                    i += 4
                elif f < 0 and c == 116 and _literal(buf, i, end, words, 4, 8):  # true, in an ignored field
                    i += 4
                elif f < 0 and c == 102 and _literal(buf, i, end, words, 8, 13):  # false, in an ignored field
                    i += 5
                else:  # nested values, true/false where a field is needed, invalid JSON
                    return row
                i = _ws(buf, i, end)
                if i < end and buf[i] == 44:  # ','
                    i = _ws(buf, i + 1, end)
                    continue
                if i < end and buf[i] == 125:  # '}'
                    i += 1
                    break
                return row
        i = _ws(buf, i, end)
        if i < end:
            if buf[i] != 10:
                return row
            i += 1
        elif row != n_rows - 1:
            return row
        for f in range(7):
            text_offs[f, row + 1] = to[f]
            num_offs[f, row + 1] = no[f]
    if i != end:  # bytes after the last expected row
        return n_rows - 1 if n_rows else 0
    return n_rows
