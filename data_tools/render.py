"""Phase 2b: samples -> JSON lines, assembled with Arrow string kernels (no Python object per clip).

Each row (clip) renders to a message unit ``P + B + S``: ``P`` and ``S`` come from small tables of
pre-rendered JSON pieces (opener, clip index, question phrasing ...) picked by index, ``B`` is the escaped
caption (or transcript + caption). Units are joined per window (``binary_join`` over list offsets), windows
per sample, and the sample line is one more concatenation. Numbers are laid out by ``strfmt``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from . import templates as T
from .strfmt import fmt_rows, seconds_fields

_S = pa.string()
SALT_DROP, SALT_KIND, SALT_Q, SALT_ASR, SALT_CTX, SALT_SUM, SALT_SUMQ, SALT_CAP = (
    0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7)
SUMMARY_P = 0.25  # a window of >= 3 clips ends with a "summarise so far" turn with this probability
USER = '{"role":"user","content":['
ASSISTANT_TEXT = '{"role":"assistant","content":[{"type":"text","text":"'
TEXT = '{"type":"text","text":"'
QUESTIONS = T.DESCRIBE + T.NEW_VIDEO + T.CHANGE + T.NEXT  # one table; kinds are ranges of it
Q_BASE = {"describe": 0, "new_video": len(T.DESCRIBE), "change": len(T.DESCRIBE) + len(T.NEW_VIDEO),
          "next": len(T.DESCRIBE) + len(T.NEW_VIDEO) + len(T.CHANGE)}


def esc(arr: pa.Array) -> pa.Array:
    """JSON-escape strings (without the surrounding quotes), as orjson would.

    One numpy byte scan finds the (rare) strings that need escaping; only those go through orjson.
    """
    from .textcols import _data, _offsets

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if len(arr) == 0:
        return arr
    offs = _offsets(arr)
    data = _data(arr)[offs[0]: offs[-1]]
    m = data < 32  # three SIMD comparisons: ~3x cheaper than a 256-entry table lookup per byte
    m |= data == ord('"')
    m |= data == ord("\\")
    if not m.any():
        return arr
    hits = np.flatnonzero(m)
    rows = np.unique(np.searchsorted(offs - offs[0], hits, side="right") - 1)
    fixed = [orjson.dumps(arr[int(i)].as_py()).decode()[1:-1] for i in rows]
    mask = np.zeros(len(arr), bool)
    mask[rows] = True
    return pc.replace_with_mask(arr, pa.array(mask), pa.array(fixed, _S))


def rtrim_dots(arr: pa.Array) -> pa.Array:
    """Strip trailing dots (templates add their own); a no-op pass is skipped when no string ends in '.'."""
    from .textcols import _data, _offsets

    if len(arr) == 0:
        return arr
    offs = _offsets(arr)
    ne = np.diff(offs) > 0
    if not (_data(arr)[offs[1:][ne] - 1] == ord(".")).any():
        return arr
    return pc.utf8_rtrim(arr, characters=".")  # escaping never ends in "."


def esc_str(s: str) -> str:
    return orjson.dumps(s).decode()[1:-1]


def cat(*parts) -> pa.Array:
    """Element-wise concatenation of string arrays / Python strings."""
    return pc.binary_join_element_wise(*[p if not isinstance(p, str) else pa.scalar(p, _S) for p in parts], "")


def join_groups(values: pa.Array, lengths: np.ndarray, sep: str) -> pa.Array:
    """Join consecutive runs of ``values`` (run sizes ``lengths``) with ``sep``."""
    offsets = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), values), sep)


def runs(arr: pa.Array, bounds: np.ndarray) -> pa.Array:
    """Concatenate consecutive runs of ``arr`` (run i = rows ``bounds[i]:bounds[i+1]``) without copying:
    the runs' bytes are already contiguous, so only the offsets are subsampled. No nulls allowed."""
    assert arr.null_count == 0
    offs = np.frombuffer(arr.buffers()[1], np.int32)[arr.offset: arr.offset + len(arr) + 1]
    data = arr.buffers()[2] or pa.py_buffer(b"")
    return pa.Array.from_buffers(_S, len(bounds) - 1, [None, pa.py_buffer(np.ascontiguousarray(offs[bounds])), data])


def sparse(values: pa.Array, rows: np.ndarray, n: int) -> pa.Array:
    """Length-``n`` strings: ``values[i]`` at ``rows[i]`` (sorted, unique), "" elsewhere, without copying bytes."""
    assert values.null_count == 0
    voffs = np.frombuffer(values.buffers()[1], np.int32)[values.offset: values.offset + len(values) + 1]
    lens = np.zeros(n, np.int32)
    lens[rows] = np.diff(voffs)
    offs = np.empty(n + 1, np.int32)
    offs[0] = voffs[0]
    np.cumsum(lens, out=offs[1:])
    offs[1:] += voffs[0]
    data = values.buffers()[2] or pa.py_buffer(b"")
    return pa.Array.from_buffers(_S, n, [None, pa.py_buffer(offs), data])


def table(strings: list[str]) -> pa.Array:
    return pa.array(strings, _S)


def choose(pool: list, h: np.ndarray) -> pa.Array:
    """Pick a (pre-escaped) phrasing per hash."""
    return table([esc_str(s) for s in pool]).take(pa.array(T.pick(h, len(pool))))


def replace(arr: pa.Array, idx: np.ndarray, values: pa.Array) -> pa.Array:
    """``arr`` with positions ``idx`` (sorted) replaced by ``values``."""
    mask = np.zeros(len(arr), bool)
    mask[idx] = True
    return pc.replace_with_mask(arr, pa.array(mask), values)


@dataclass
class Rows:
    """A partition's kept rows: numeric columns in sorted order, strings in input order + ``order``."""

    order: np.ndarray  # sorted position -> input row
    h: np.ndarray
    start: np.ndarray
    end: np.ndarray
    vid: pa.Array
    caption: pa.Array
    asr: pa.Array
    path_of: Callable[[np.ndarray], pa.Array]  # sorted positions -> escaped video paths


@functools.lru_cache(maxsize=8)
def _prefixes(J: int):
    """Pre-rendered unit prefixes/suffixes. Index formulas are in render_windows."""
    nq, na, nc = len(QUESTIONS), len(T.ASR), len(T.CONTEXT)
    qs = [esc_str(q) for q in QUESTIONS]
    P = []
    for op in (0, 1):
        for j in range(J):
            head = (USER if op else "") + '{"type":"clip","clip":%d},' % j + TEXT
            for q in qs:
                P.append(head + q + '"}]},' + ASSISTANT_TEXT)
                P.append(head + q + '"}]},' + ASSISTANT_TEXT + esc_str(T.CHANGE_ANSWER[0]))
    base1 = len(P)
    for op in (0, 1):
        for j in range(J):
            for pre, _ in T.ASR:
                P.append((USER if op else "") + '{"type":"clip","clip":%d},' % j + TEXT + esc_str(pre))
    base2 = len(P)
    for op in (0, 1):
        for pre, _ in T.CONTEXT:
            P.append((USER if op else "") + TEXT + esc_str(pre))
    S = ['"}]}', esc_str(T.CHANGE_ANSWER[2]) + '"}]}'] + [esc_str(suf) + '"}' for _, suf in T.CONTEXT]
    MID = []
    for _, suf in T.ASR:
        for q in qs:
            MID.append(esc_str(suf) + "\\n" + q + '"}]},' + ASSISTANT_TEXT)
            MID.append(esc_str(suf) + "\\n" + q + '"}]},' + ASSISTANT_TEXT + esc_str(T.CHANGE_ANSWER[0]))
    assert len(P) == base2 + 2 * nc and len(MID) == 2 * na * nq
    # Second half: the same prefixes after the "," that separates a sample's message units.
    return table(P + ["," + x for x in P]), base1, base2, table(S), table(MID), len(P)


def render_windows(rows: Rows, win, wkey: np.ndarray, smp, drop_p: float):
    """Render the samples ``smp`` (grouping.Samples) -> (one newline-terminated JSON line per sample, stats)."""
    items = smp.items
    lens = win.length[items]
    starts = win.start[items]
    total = int(lens.sum())
    item_of_row = np.repeat(np.arange(len(items)), lens)
    k = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)
    perm = starts[item_of_row] + k  # sorted positions, in output order
    src = pa.array(rows.order[perm])
    nsamp = len(smp.fmt)
    sample_lens = np.bincount(smp.sample_of_item, weights=lens, minlength=nsamp).astype(np.int64)
    j = np.arange(total) - np.repeat(np.cumsum(sample_lens) - sample_lens, sample_lens)
    ikey = wkey[items][item_of_row]
    kk = k.astype(np.uint64)
    pos = smp.item_pos[item_of_row]

    cap = esc(rows.caption.take(src))
    cap_trim = rtrim_dots(cap)
    dropped = T.unit(T.key(ikey, kk, SALT_DROP)) < drop_p if drop_p > 0 else np.zeros(total, bool)
    opener = ((k == 0) | ~(np.r_[False, dropped[:-1]] & (k > 0))).astype(np.int64)
    change = (k > 0) & (T.unit(T.key(ikey, kk, SALT_KIND)) < 0.5) & ~dropped
    qh = T.key(ikey, kk, SALT_Q)
    first_kind = np.where(pos == 1, Q_BASE["new_video"], Q_BASE["describe"])
    qn = np.where(k == 0, np.where(pos == 1, len(T.NEW_VIDEO), len(T.DESCRIBE)),
                  np.where(change, len(T.CHANGE), len(T.NEXT)))
    qbase = np.where(k == 0, first_kind, np.where(change, Q_BASE["change"], Q_BASE["next"]))
    qi = qbase + np.minimum((T.unit(qh) * qn).astype(np.int64), qn - 1)
    J = int(j.max()) + 1 if total else 1
    P, base1, base2, S, MID, n_p = _prefixes(J)
    nq, nc, na = len(QUESTIONS), len(T.CONTEXT), len(T.ASR)
    ci = T.pick(T.key(ikey, kk, SALT_CTX), nc)
    chg = change.astype(np.int64)
    pidx = np.where(dropped, base2 + opener * nc + ci, ((opener * J + j) * nq + qi) * 2 + chg)
    sidx = np.where(dropped, 2 + ci, chg)

    # A unit is P [asr + mid] [previous caption + "; now, "] body S [closing turn]. The optional parts are
    # built for their rows only and spread out as zero-copy "sparse" columns; one concatenation makes the units.
    trimmed = dropped | change
    body = pc.if_else(pa.array(trimmed), cap_trim, cap) if cap_trim is not cap and trimmed.any() else cap
    extra = []
    is_b = (smp.fmt[smp.sample_of_item] == "b")[item_of_row]
    asr_rows = np.flatnonzero(is_b & ~dropped)
    if len(asr_rows):
        asr = rows.asr.take(pa.array(rows.order[perm[asr_rows]]))
        has = np.asarray(pc.is_valid(asr))
        asr_rows, asr = asr_rows[has], asr.filter(pa.array(has))
    if len(asr_rows):
        ai = T.pick(T.key(ikey[asr_rows], kk[asr_rows], SALT_ASR), na)
        r = asr_rows
        pidx[r] = base1 + (opener[r] * J + j[r]) * na + ai
        mid = MID.take(pa.array((ai * nq + qi[r]) * 2 + chg[r]))
        extra.append(sparse(cat(esc(asr), mid), r, total))
    ch = np.flatnonzero(change)
    if len(ch):
        extra.append(sparse(cat(cap_trim.take(pa.array(ch - 1)), esc_str(T.CHANGE_ANSWER[1])), ch, total))
    pidx += n_p * (j > 0)  # every unit but a sample's first starts with ","

    # Per item: an optional closing "summarise so far" turn (required when its last clip was dropped),
    # appended to the item's last unit.
    last = np.cumsum(lens) - 1
    last_dropped = dropped[last] if total else np.zeros(0, bool)
    ik = wkey[items]
    want_sum = last_dropped | ((lens >= 3) & (T.unit(T.key(ik, SALT_SUM)) < SUMMARY_P))
    tail = []
    if want_sum.any():
        sel = np.flatnonzero(want_sum)
        fa, fb, fc = (esc_str(x) for x in T.SUMMARY_ANSWER)
        s_ans = join_groups(cap_trim.filter(pa.array(np.repeat(want_sum, lens))), lens[sel], fb)
        s_q = choose(T.SUMMARY, T.key(ik[sel], SALT_SUMQ))
        head = pc.if_else(pa.array(last_dropped[sel]), ",", "," + USER)
        tail.append(sparse(cat(head, TEXT, s_q, '"}]},' + ASSISTANT_TEXT + fa, s_ans, fc + '"}]}'), last[sel], total))
    # Sample sections: per-row / per-item strings that carry their own separators, joined by offsets. The
    # sample's head (id ... '"messages":[') and "]}\n" go into its first / last unit, so the units' bytes
    # are the output lines and they are copied once (no final per-line concatenation over the messages).
    row_bounds = np.zeros(nsamp + 1, np.int64)
    np.cumsum(sample_lens, out=row_bounds[1:])
    per_sample = np.bincount(smp.sample_of_item, minlength=nsamp)
    item_bounds = np.zeros(nsamp + 1, np.int64)
    np.cumsum(per_sample, out=item_bounds[1:])
    clip_frag = fmt_rows([("opt", b",", j > 0), b'{"video":', ("int", pos), b',"start":',
                          *seconds_fields(rows.start[perm]), b',"end":', *seconds_fields(rows.end[perm]), b"}"], total)
    vid_e = esc(rows.vid.take(pa.array(rows.order[starts])))
    second = pa.array(smp.item_pos == 1)
    item_video = cat(pc.if_else(second, ',{"video_id":"', '{"video_id":"'), vid_e, '","path":"', rows.path_of(starts), '"}')
    item_id = cat(pc.if_else(second, "+", ""), vid_e, fmt_rows([b"#w", ("int", win.local[items])], len(items)))
    head = cat('{"id":"', runs(item_id, item_bounds), '","format":"', pa.array(smp.fmt.astype(str), _S),
               '","videos":[', runs(item_video, item_bounds), '],"clips":[', runs(clip_frag, row_bounds),
               '],"messages":[')
    close = pa.Array.from_buffers(_S, nsamp, [None, pa.py_buffer(np.arange(0, 3 * nsamp + 1, 3, dtype=np.int32)),
                                              pa.py_buffer(b"]}\n" * nsamp)])
    unit_ = cat(sparse(head, row_bounds[:-1], total), P.take(pa.array(pidx)), *extra, body, S.take(pa.array(sidx)),
                *tail, sparse(close, row_bounds[1:] - 1, total))
    lines = runs(unit_, row_bounds)
    stats = {"clips": total, "clips_dropped": int(dropped.sum()), "summary_turns": int(want_sum.sum()),
             "turns": int((~dropped).sum() + want_sum.sum())}
    return lines, stats


def caption_keys(rows: Rows, sel: np.ndarray, k_video: np.ndarray, seed: int) -> np.ndarray:
    """The per-sample hash of caption samples (sorted rows ``sel``): key(seed, video, clip index)."""
    return T.key(np.uint64(seed & 0xFFFFFFFFFFFFFFFF), rows.h[sel], k_video[sel].astype(np.uint64), SALT_CAP)


def render_captions(rows: Rows, sel: np.ndarray, k_video: np.ndarray, seed: int) -> pa.Array:
    """One ``caption`` sample per sorted row in ``sel``: [clip, describe question] -> caption."""
    if len(sel) == 0:
        return pa.array([], _S)
    src = pa.array(rows.order[sel])
    skey = caption_keys(rows, sel, k_video, seed)
    vid_e = esc(rows.vid.take(src))
    cap = esc(rows.caption.take(src))
    q = choose(T.DESCRIBE, T.key(skey, SALT_Q))
    mid = fmt_rows([b"#c", ("int", k_video[sel])], len(sel))
    clip = fmt_rows([b'"}],"clips":[{"video":0,"start":', *seconds_fields(rows.start[sel]), b',"end":',
                     *seconds_fields(rows.end[sel]), b'}],"messages":[', USER.encode(),
                     b'{"type":"clip","clip":0},', TEXT.encode()], len(sel))
    return cat('{"id":"', vid_e, mid, '","format":"caption","videos":[{"video_id":"', vid_e, '","path":"',
               rows.path_of(sel), clip, q, '"}]},', ASSISTANT_TEXT, cap, '"}]}]}\n')
