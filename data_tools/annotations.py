"""Clip annotation rows (InternVid schema) -> canonical Arrow batches, with a reason for every rejected row.

Two paths produce the same canonical columns:
- fast: pyarrow's JSON / CSV readers on a whole piece (~16 MB) and vectorised validation;
- exact: a per-line parser (orjson / csv), used for a piece the fast reader refuses (broken JSON, mixed
  types, non-UTF-8, blank lines, quoted newlines ...), so every bad line gets its own line number and reason.

Canonical columns: ``vid`` str, ``start_ms`` / ``end_ms`` int64 (milliseconds), ``caption`` str (trimmed),
``asr`` str|null, ``umt`` / ``aes`` float64|null, ``line`` int64 (line number relative to the reading task).
Timestamps are ``"HH:MM:SS.mmm"`` / ``"MM:SS"`` / ``"SS.s"`` strings or numbers of seconds.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from .textcols import _data, _offsets, parse_seconds  # noqa: F401  (parse_seconds re-exported)

ALIASES = {
    "vid": ("youtubeid", "youtube_id", "video_id", "videoid", "vid", "video"),
    "start": ("start_timestamp", "start", "start_time", "start_sec"),
    "end": ("end_timestamp", "end", "end_time", "end_sec"),
    "caption": ("caption", "text", "description"),
    "asr": ("asr", "asr_text", "transcript", "subtitle"),
    "umt": ("umt_score", "umt"),
    "aes": ("aesthetic_score", "aesthetic", "aes"),
}
# Names used in reasons (the InternVid spelling).
DISPLAY = {"vid": "YoutubeID", "start": "Start_timestamp", "end": "End_timestamp", "caption": "Caption",
           "asr": "ASR", "umt": "UMT_Score", "aes": "Aesthetic_Score"}
CANONICAL = pa.schema([
    ("vid", pa.string()), ("start_ms", pa.int64()), ("end_ms", pa.int64()), ("caption", pa.string()),
    ("asr", pa.string()), ("umt", pa.float64()), ("aes", pa.float64()), ("line", pa.int64()),
])
_NUM_RE = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"


def column_map(names) -> dict[str, str]:
    """Map canonical field -> the input column that holds it (aliases matched case-insensitively)."""
    lower = {n.lower(): n for n in reversed(list(names))}
    out = {}
    for field, aliases in ALIASES.items():
        for a in aliases:
            if a in lower:
                out[field] = lower[a]
                break
    return out


class Raw:
    """Un-validated columns of one piece: timestamps as a string and a float column (one of them null)."""

    def __init__(self, n, line, vid, start_s, start_f, end_s, end_f, caption, asr, umt, aes, rejects=None):
        self.n, self.line = n, line
        self.vid, self.caption, self.asr, self.umt, self.aes = vid, caption, asr, umt, aes
        self.start_s, self.start_f, self.end_s, self.end_f = start_s, start_f, end_s, end_f
        self.rejects = rejects or []  # (line, reason, text) found while parsing


def _nulls(n, typ):
    return pa.nulls(n, typ)


def raw_from_table(table: pa.Table, line: np.ndarray) -> Raw | None:
    """Columns of a fast-reader table, or None when a column has a type the fast path does not take."""
    n = table.num_rows
    cmap = column_map(table.column_names)
    cols = {}
    for field in ("vid", "caption", "asr"):
        if field not in cmap:
            cols[field] = _nulls(n, pa.string())
            continue
        c = table.column(cmap[field]).combine_chunks()
        if pa.types.is_null(c.type):
            c = _nulls(n, pa.string())
        elif pa.types.is_large_string(c.type):
            c = c.cast(pa.string())
        elif not pa.types.is_string(c.type):
            return None
        cols[field] = c
    for field in ("start", "end"):
        if field not in cmap:
            cols[field + "_s"], cols[field + "_f"] = _nulls(n, pa.string()), _nulls(n, pa.float64())
            continue
        c = table.column(cmap[field]).combine_chunks()
        if pa.types.is_string(c.type) or pa.types.is_large_string(c.type):
            cols[field + "_s"], cols[field + "_f"] = c.cast(pa.string()), _nulls(n, pa.float64())
        elif pa.types.is_integer(c.type) or pa.types.is_floating(c.type) or pa.types.is_null(c.type):
            cols[field + "_s"], cols[field + "_f"] = _nulls(n, pa.string()), c.cast(pa.float64())
        else:
            return None
    for field in ("umt", "aes"):
        if field not in cmap:
            cols[field] = _nulls(n, pa.float64())
            continue
        c = table.column(cmap[field]).combine_chunks()
        if pa.types.is_integer(c.type) or pa.types.is_floating(c.type) or pa.types.is_null(c.type):
            cols[field] = c.cast(pa.float64())
        elif pa.types.is_string(c.type):  # CSV: numbers arrive as text; "" means absent
            ok = pc.match_substring_regex(c, _NUM_RE)
            if not pc.all(pc.or_(ok, pc.equal(c, ""))).as_py():
                return None  # a non-numeric score: let the exact path name the line
            cols[field] = pc.if_else(ok, c, pa.scalar(None, pa.string())).cast(pa.float64())
        else:
            return None
    return Raw(n, line, cols["vid"], cols["start_s"], cols["start_f"], cols["end_s"], cols["end_f"],
               cols["caption"], cols["asr"], cols["umt"], cols["aes"])


def _py_ts(v, name):
    """Exact-path timestamp value -> (str|None, float|None, reason|None)."""
    if v is None:
        return None, None, None
    if isinstance(v, bool):
        return None, None, f"{name} is not a string or number: {v!r}"
    if isinstance(v, (int, float)):
        return None, float(v), None
    if isinstance(v, str):
        return v, None, None
    return None, None, f"{name} is not a string or number: {_short(v)}"


def _py_score(v, name):
    if v is None or v == "":
        return None, None
    if isinstance(v, bool):
        return None, f"{name} is not a number: {v!r}"
    if isinstance(v, (int, float)):
        return float(v), None
    if isinstance(v, str):
        try:
            return float(v), None
        except ValueError:
            pass
    return None, f"{name} is not a number: {_short(v)}"


def _short(v, limit=80) -> str:
    s = v if isinstance(v, str) else repr(v)
    return repr(s[:limit] + ("..." if len(s) > limit else ""))


def raw_from_records(records) -> Raw:
    """Exact path: ``records`` yields (line, dict | None, reason | None, text). Builds a Raw + parse rejects."""
    line, vid, ss, sf, es, ef, cap, asr, umt, aes = ([] for _ in range(10))
    rejects = []
    for ln, obj, reason, text in records:
        if reason is None:
            cmap = column_map(obj.keys())
            vals = {f: obj.get(c) for f, c in cmap.items()}
            for f in ("vid", "caption", "asr"):
                v = vals.get(f)
                if v is not None and not isinstance(v, str):
                    if f == "vid" and isinstance(v, int) and not isinstance(v, bool):
                        vals[f] = str(v)
                    else:
                        reason = f"{DISPLAY[f]} is not a string: {_short(v)}"
                        break
        if reason is None:
            s_s, s_f, reason = _py_ts(vals.get("start"), DISPLAY["start"])
        if reason is None:
            e_s, e_f, reason = _py_ts(vals.get("end"), DISPLAY["end"])
        if reason is None:
            u, reason = _py_score(vals.get("umt"), DISPLAY["umt"])
        if reason is None:
            a, reason = _py_score(vals.get("aes"), DISPLAY["aes"])
        if reason is not None:
            rejects.append((ln, reason, text))
            continue
        line.append(ln)
        vid.append(vals.get("vid"))
        cap.append(vals.get("caption"))
        asr.append(vals.get("asr"))
        ss.append(s_s), sf.append(s_f), es.append(e_s), ef.append(e_f), umt.append(u), aes.append(a)
    s, f = pa.string(), pa.float64()
    return Raw(len(line), np.asarray(line, dtype=np.int64), pa.array(vid, s), pa.array(ss, s), pa.array(sf, f),
               pa.array(es, s), pa.array(ef, f), pa.array(cap, s), pa.array(asr, s), pa.array(umt, f),
               pa.array(aes, f), rejects)


def iter_json_records(piece: bytes, first_line: int):
    """Exact JSONL path: (line, obj, reason, text) per non-blank line of ``piece``."""
    for i, raw in enumerate(piece.split(b"\n")):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        ln = first_line + i
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                yield ln, None, "not valid UTF-8", _text(raw)
                continue
            yield ln, None, f"invalid JSON: {e}", _text(raw)
            continue
        if not isinstance(obj, dict):
            yield ln, None, f"not a JSON object: {type(obj).__name__}", _text(raw)
            continue
        yield ln, obj, None, None


def iter_csv_records(piece: bytes, header: list[str], first_line: int):
    """Exact CSV path: ``piece`` holds data rows only (no header); first_line is the file line of its first byte."""
    try:
        text = piece.decode("utf-8")
    except UnicodeDecodeError:
        # Decode line by line so only the bad lines are rejected.
        text = None
    if text is None:
        for i, raw in enumerate(piece.split(b"\n")):
            try:
                line_text = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield first_line + i, None, "not valid UTF-8", _text(raw)
                continue
            yield from iter_csv_records(line_text.encode() + b"\n", header, first_line + i)
        return
    reader = csv.reader(io.StringIO(text, newline=""))
    prev = 0
    for row in reader:
        ln = first_line + prev  # the line where this record starts
        prev = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            yield ln, None, f"expected {len(header)} CSV fields, got {len(row)}", _text(",".join(row).encode())
            continue
        yield ln, dict(zip(header, row)), None, None


def _text(raw: bytes, limit: int = 200) -> str:
    return raw[:limit].decode("utf-8", "replace")


class _Reasons:
    """First reason per bad row (bad rows are rare: reasons are kept in a dict, the mask in numpy)."""

    def __init__(self, n: int):
        self.bad = np.zeros(n, bool)
        self.why: dict[int, str] = {}

    def mark(self, mask: np.ndarray, reason) -> None:
        """Flag rows in ``mask`` not yet flagged; ``reason`` is a string or a function of the row index."""
        new = mask & ~self.bad
        if new.any():
            for i in np.flatnonzero(new).tolist():
                self.why[i] = reason(i) if callable(reason) else reason
            self.bad |= new


def _timestamps(s: pa.Array, f: pa.Array, name: str, r: _Reasons) -> np.ndarray:
    """Milliseconds from a string column and a float column (one of them null per row); flag bad rows."""
    n = len(s)
    ms = np.zeros(n, np.int64)
    has_s = s.is_valid().to_numpy(zero_copy_only=False) if s.null_count < n else np.zeros(n, bool)
    has_f = f.is_valid().to_numpy(zero_copy_only=False) if f.null_count < n else np.zeros(n, bool)
    ok = np.zeros(n, bool)
    if has_s.any():
        ms_s, ok_s = parse_seconds(s)
        ms[has_s], ok[has_s] = ms_s[has_s], ok_s[has_s]
    fv = None
    if has_f.any():
        fv = f.to_numpy(zero_copy_only=False).astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            ms_f = np.rint(fv * 1000.0)
            ok_f = has_f & np.isfinite(ms_f) & (ms_f >= 0) & (ms_f < 2**53)
        ms[has_f] = np.where(ok_f, ms_f, 0)[has_f].astype(np.int64)
        ok[has_f] = ok_f[has_f]

    def why(i: int) -> str:
        if has_s[i]:
            v = s[i].as_py()
            if v.strip() == "":
                return f"missing {name}"
            kind = "negative" if v.strip().startswith("-") else "unparsable"
            return f"{kind} {name}: {_short(v)}"
        if has_f[i]:
            return f"negative {name}: {fv[i]!r}" if fv[i] < 0 else f"unparsable {name}: {fv[i]!r}"
        return f"missing {name}"

    r.mark(~ok, why)
    return ms


def _needs_trim(arr: pa.Array) -> bool:
    """Does any string start or end with whitespace (ASCII, or a non-ASCII byte that may be Unicode space)?"""
    if len(arr) == 0 or arr.null_count == len(arr):
        return False
    offs = _offsets(arr)
    lens = np.diff(offs)
    ne = lens > 0
    data = _data(arr)
    first, last = data[offs[:-1][ne]], data[offs[1:][ne] - 1]
    return bool(((first <= 32) | (first >= 0x80) | (last <= 32) | (last >= 0x80)).any())


def _trim(arr: pa.Array) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return pc.utf8_trim_whitespace(arr) if _needs_trim(arr) else arr


def _empty(arr: pa.Array) -> np.ndarray:
    """Non-null empty strings."""
    return (np.diff(_offsets(arr)) == 0) & arr.is_valid().to_numpy(zero_copy_only=False)


def normalize(raw: Raw) -> tuple[pa.Table, list[tuple[int, str, str | None]]]:
    """Validate a Raw piece -> (canonical table of good rows, rejects [(line, reason, text)])."""
    n = raw.n
    r = _Reasons(n)
    vid, cap = _trim(raw.vid), _trim(raw.caption)
    for arr, name in ((vid, "YoutubeID"), (cap, "Caption")):
        if arr.null_count:
            r.mark(np.asarray(pc.is_null(arr)), f"missing {name}")
    start = _timestamps(raw.start_s, raw.start_f, "Start_timestamp", r)
    end = _timestamps(raw.end_s, raw.end_f, "End_timestamp", r)
    r.mark(end <= start, "End_timestamp <= Start_timestamp")
    r.mark(_empty(vid), "empty YoutubeID")
    r.mark(_empty(cap), "empty Caption")
    for arr, name in ((raw.umt, "UMT_Score"), (raw.aes, "Aesthetic_Score")):
        if arr.null_count < len(arr):
            v = arr.to_numpy(zero_copy_only=False).astype(np.float64)
            r.mark(arr.is_valid().to_numpy(zero_copy_only=False) & ~np.isfinite(v), f"{name} is not finite")
    rejects = list(raw.rejects)
    if r.why:
        rejects += [(int(raw.line[i]), why, None) for i, why in r.why.items()]
        rejects.sort(key=lambda x: x[0])
    asr = raw.asr
    if asr.null_count < len(asr):
        asr = _trim(asr)
        empty = _empty(asr)
        if empty.any():
            asr = pc.if_else(pa.array(empty), pa.scalar(None, pa.string()), asr)
    cols = [vid, pa.array(start), pa.array(end), cap, asr, raw.umt, raw.aes, pa.array(np.asarray(raw.line, np.int64))]
    table = pa.Table.from_arrays(cols, schema=CANONICAL)
    if r.bad.any():
        table = table.filter(pa.array(~r.bad))
    return table, rejects
