"""The compiled JSONL scanner: where it accepts a piece, its rows equal the exact per-line path's."""

import errno
import itertools
import os
import time

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_tools import directio
from data_tools.annotations import iter_json_records, normalize, raw_from_records
from data_tools.directio import DirectWriter
from data_tools.jsonscan import scan_piece


def lines_of(piece: bytes) -> int:
    return piece.count(b"\n") + (0 if piece.endswith(b"\n") else 1)


def exact(piece: bytes):
    return normalize(raw_from_records(iter_json_records(piece, 1)))


def same_as_exact(piece: bytes, must_accept: bool = False) -> bool:
    """True when the scanner took the piece (and then its rows and rejects equal the exact path's)."""
    raw = scan_piece(piece, 1, lines_of(piece))
    if raw is None:
        assert not must_accept, "the scanner gave up on a piece it should take"
        return False
    table, rejects = normalize(raw)
    t2, r2 = exact(piece)
    assert signed(table.to_pylist()) == signed(t2.to_pylist())
    assert [(a, b) for a, b, _ in rejects] == [(a, b) for a, b, _ in r2]
    return True


def signed(rows):
    """Rows with floats as their repr (so -0.0 and 0.0 differ)."""
    return [{k: repr(v) if isinstance(v, float) else v for k, v in r.items()} for r in rows]


INTERNVID = (b'{"YoutubeID":"pI3snIAAAAA","Start_timestamp":"00:00:00.000","End_timestamp":"00:00:03.606",'
             b'"Caption":"a small group talking","Aesthetic_Score":4.554,"UMT_Score":0.268}\n')


def test_accepts_internvid_rows_and_decodes_escapes():
    rows = [
        INTERNVID,
        b'{"YoutubeID": "x1", "Start_timestamp": 1.5, "End_timestamp": 3, "Caption": "say \\"hi\\" \\\\ \\/ \\t",'
        b' "Aesthetic_Score": null, "UMT_Score": -0.0}\r\n',
        b'{"YoutubeID":"x2","Caption":"caf\\u00e9 \\ud83d\\ude00 \xe4\xb8\xad \\n end","Start_timestamp":"1:02",'
        b'"End_timestamp":"65.5","UMT_Score":1E2}\n',  # keys in another order, one missing
        b'{}\n',
        b'  {"YoutubeID":"x3","Start_timestamp":"00:00:01.000","End_timestamp":"00:00:00.500","Caption":"",'
        b'"Aesthetic_Score":1e-3,"UMT_Score":12345678901234567890}  \n',
    ]
    piece = b"".join(rows)
    assert same_as_exact(piece, must_accept=True)
    raw = scan_piece(piece, 1, 5)
    assert raw.caption[1].as_py() == 'say "hi" \\ / \t'
    assert raw.caption[2].as_py() == "caf\u00e9 \U0001F600 \u4e2d \n end"
    assert raw.start_f[1].as_py() == 1.5 and raw.start_s[1].as_py() is None
    assert raw.umt[2].as_py() == 100.0 and raw.aes[1].as_py() is None
    assert raw.vid[3].as_py() is None  # {} -> all missing -> rejected downstream, as on the exact path
    _, rejects = normalize(raw)
    assert [r[0] for r in rejects] == [4, 5]


def test_ignored_keys_take_any_flat_value():
    piece = (b'{"YoutubeID":"a","Caption":"c","Start_timestamp":0,"End_timestamp":2,"lang":"en","ok":true,'
             b'"n":-350.25,"z":null}\n'
             b'{"YoutubeID":"b","Caption":"d","Start_timestamp":0,"End_timestamp":2,"lang":"fr","ok":false,'
             b'"n":7,"z":"s"}')  # no final newline
    assert same_as_exact(piece, must_accept=True)


@pytest.mark.parametrize("second", [
    b'{"YoutubeID":"b","Caption":"d","Start_timestamp":0,"End_timestamp":2,"x":[1]}',  # nested value
    b'{"YoutubeID":"b","Caption":"d","Start_timestamp":0,"End_timestamp":2,"new_key":1}',  # key not in line 1
    b'{"YoutubeID":"b","Caption":"d","Caption":"e","Start_timestamp":0,"End_timestamp":2}',  # duplicate key
    b'{"YoutubeID":"b","Caption":"\\ud83d","Start_timestamp":0,"End_timestamp":2}',  # lone surrogate
    b'{"YoutubeID":"b","Caption":"\xff\xfe","Start_timestamp":0,"End_timestamp":2}',  # not UTF-8
    b'{"YoutubeID":"b","Caption":"\xed\xa0\x80","Start_timestamp":0,"End_timestamp":2}',  # UTF-8 surrogate
    b'{"YoutubeID":"b","Caption":"\xc0\xaf","Start_timestamp":0,"End_timestamp":2}',  # overlong
    b'{"YoutubeID":"b","Caption":"tab\there","Start_timestamp":0,"End_timestamp":2}',  # raw control byte
    b'{"YoutubeID":"b","Caption":true,"Start_timestamp":0,"End_timestamp":2}',  # bool where text is needed
    b'{"YoutubeID":7,"Caption":"d","Start_timestamp":0,"End_timestamp":2}',  # a numeric id
    b'{"YoutubeID":"b","Caption":"d","Start_timestamp":0,"End_timestamp":2,"UMT_Score":"0.5"}',  # score as text
    b'{"YoutubeID":"b","Caption":"d","Start_timestamp":1e999,"End_timestamp":2}',  # overflows to inf
    b'{"YoutubeID":"b","Caption":"d","Start_timestamp":01,"End_timestamp":2}',  # leading zero
    b'{"YoutubeID":"b","Caption":"d","Start_timestamp":0,"End_timestamp":2,}',  # trailing comma
    b'{"YoutubeID":"b","Caption":"d","Start_timestamp":0,"End_timestamp":2} x',  # junk after the object
    b'   ',  # a blank line
    b'{"YoutubeID":"b","Caption":"d","Start_timestamp":0,"End_timestamp":2',  # truncated
])
def test_gives_up_on_what_it_does_not_handle(second):
    first = b'{"YoutubeID":"a","Caption":"c","Start_timestamp":0,"End_timestamp":2,"x":1,"UMT_Score":0.1}\n'
    piece = first + second + b"\n"
    assert scan_piece(piece, 1, lines_of(piece)) is None
    assert same_as_exact(first, must_accept=True)


def test_number_edge_cases_match_the_exact_path():
    head = b'{"YoutubeID":"a","Caption":"c","Start_timestamp":0,"End_timestamp":2,"UMT_Score":1,"x":0}\n'
    for val in (b"-0", b"-0.0", b"-0e0", b"0", b"12345678901234567890123", b"4.9e-324", b"1e-400"):
        piece = head + b'{"YoutubeID":"a","Caption":"c","Start_timestamp":0,"End_timestamp":2,"UMT_Score":%s}\n' % val
        assert same_as_exact(piece, must_accept=True), val
    # An ignored value that overflows a double makes orjson refuse the line: the scanner must not accept it.
    for val in (b"1e400", b"-1e400", b"9" * 400, b"1.7976931348623159e308"):
        piece = head + b'{"YoutubeID":"a","Caption":"c","Start_timestamp":0,"End_timestamp":2,"x":%s}\n' % val
        assert scan_piece(piece, 1, 2) is None, val
    assert scan_piece(head + b'{"YoutubeID":"a","x":%s}\n' % (b"9" * 300), 1, 2) is not None


def test_gives_up_on_first_lines_it_cannot_map():
    for first in (b'\xef\xbb\xbf' + INTERNVID,  # byte-order mark
                  b'{"YoutubeID":"a","video_id":"b","Caption":"c"}\n',  # two aliases of one field
                  b'{"Caption":"c","\\u0041":1}\n',  # an escaped key
                  b'[1, 2]\n'):
        assert scan_piece(first, 1, 1) is None


_text = st.text(st.characters(codec="utf-8"), max_size=12)
class Num(bytes):
    """Number text written as it is (JSON number forms orjson does not produce: 1E+5, -0, 20-digit ints)."""


_number = st.one_of(st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False),
                    st.from_regex(rb"\A-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?\Z").map(Num))
_value = st.one_of(_text, _number, st.none(), st.booleans(), st.just([1]))
_KEYS = ["YoutubeID", "Start_timestamp", "End_timestamp", "Caption", "ASR", "UMT_Score", "Aesthetic_Score", "other"]
_TS = st.one_of(st.sampled_from(["00:00:01.500", "00:01:00.000", "3", "1:02", "x", ""]), _number, st.none())
_row = st.fixed_dictionaries({}, optional={
    "YoutubeID": st.one_of(st.sampled_from(["v1", "v2"]), _value), "Start_timestamp": _TS, "End_timestamp": _TS,
    "Caption": st.one_of(_text, _value), "ASR": st.one_of(_text, st.none()), "UMT_Score": st.one_of(_number, _value),
    "Aesthetic_Score": _number, "other": _value})
_spaces = st.sampled_from([b"", b" ", b"\t", b"  \r"])


def _dump(row, ws):
    """A JSON object with the row's keys in dict order and ``ws`` around every token."""
    parts = [ws + orjson.dumps(k) + ws + b":" + ws + (v if isinstance(v, Num) else orjson.dumps(v)) + ws
             for k, v in row.items()]
    return ws + b"{" + b",".join(parts) + b"}" + ws


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_row, _spaces), min_size=1, max_size=8), st.booleans())
def test_fuzz_agrees_with_the_exact_path(rows, full_first):
    if full_first:  # a first line with every key: later lines may then leave any out
        rows = [({k: None for k in _KEYS}, b"")] + rows
    piece = b"\n".join(_dump(r, ws) for r, ws in rows) + b"\n"
    same_as_exact(piece)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["v1", "v2", "v3"]), _text, _text, st.floats(0, 1e6), st.floats(0, 1e6),
                          st.floats(allow_nan=False, allow_infinity=False)), min_size=1, max_size=10))
def test_fuzz_well_formed_rows_are_accepted(rows):
    piece = b"".join(orjson.dumps({"YoutubeID": v, "Caption": c, "ASR": a, "Start_timestamp": s,
                                   "End_timestamp": e, "UMT_Score": u}) + b"\n" for v, c, a, s, e, u in rows)
    assert same_as_exact(piece, must_accept=True)


# --- DirectWriter -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 16384, 16385, 3 * 16384 + 123])
@pytest.mark.parametrize("direct", [True, False])
def test_direct_writer_writes_exact_bytes(tmp_path, size, direct):
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    w = DirectWriter(path, direct=direct, chunk=16384)
    pos = 0
    steps = itertools.cycle((1, 5000, 7, 20000, 3))  # writes that straddle chunk and block boundaries
    while pos < size:
        k = next(steps)
        w.write(data[pos: pos + k])
        pos = min(size, pos + k)
        assert w.tell() == pos
    w.close()
    assert path.read_bytes() == data


def test_direct_writer_falls_back_when_direct_io_fails(tmp_path, monkeypatch):
    real_write = os.write
    calls = []
    data = os.urandom(50_000)
    path = tmp_path / "f.bin"
    w = DirectWriter(path, chunk=16384)

    def einval_once(fd, buf):  # only for this file: os.write is patched process-wide
        if fd == w.fd and not calls:
            calls.append(1)
            raise OSError(errno.EINVAL, "direct I/O refused")
        return real_write(fd, buf)

    monkeypatch.setattr(directio.os, "write", einval_once)
    with w:
        w.write(data)
    assert calls and path.read_bytes() == data


def test_direct_writer_background_close_and_errors(tmp_path, monkeypatch):
    """close(wait=False) + drain() completes files; a real write error (not EINVAL) is raised, not hidden."""
    datas = [os.urandom(n) for n in (0, 100, 70_000)]
    for i, d in enumerate(datas):
        w = DirectWriter(tmp_path / f"{i}.bin", chunk=16384, buffers=2)
        w.write(d)
        w.close(wait=False)
    directio.drain()
    assert [(tmp_path / f"{i}.bin").read_bytes() for i in range(3)] == datas

    real_write = os.write
    w = DirectWriter(tmp_path / "full.bin", chunk=16384)

    def no_space(fd, buf):  # only for this file: os.write is patched process-wide (pytest writes with it too)
        if fd == w.fd:
            raise OSError(errno.ENOSPC, "no space left")
        return real_write(fd, buf)

    monkeypatch.setattr(directio.os, "write", no_space)
    with pytest.raises(OSError, match="no space"):
        w.write(os.urandom(100_000))  # the 5th chunk waits for the 1st, which failed
    with pytest.raises(OSError, match="no space"):  # sticky: a failed file never closes cleanly
        w.close()
    with pytest.raises(OSError):
        os.fstat(w.fd)  # but its descriptor is closed


def test_direct_writer_in_a_forked_child(tmp_path):
    """A child forked after the parent wrote gets its own I/O thread and buffers (no hang, no sharing)."""
    with DirectWriter(tmp_path / "parent.bin", chunk=16384) as w:
        w.write(b"p" * 40_000)
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only if its own write round-trips
        try:
            data = os.urandom(40_000)
            with DirectWriter(tmp_path / "child.bin", chunk=16384) as w:
                w.write(data)
            os._exit(0 if (tmp_path / "child.bin").read_bytes() == data else 1)
        except BaseException:
            os._exit(2)
    deadline = time.time() + 30
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        pytest.fail("the forked child hung writing")
    assert os.waitstatus_to_exitcode(status) == 0
    assert (tmp_path / "parent.bin").read_bytes() == b"p" * 40_000


def test_direct_writer_refuses_misuse(tmp_path):
    with pytest.raises(ValueError):
        DirectWriter(tmp_path / "a.bin", chunk=1000)
    w = DirectWriter(tmp_path / "b.bin", chunk=16384)
    w.close()
    with pytest.raises(ValueError):
        w.write(b"x")


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no tmpfs at /dev/shm")
def test_direct_writer_on_tmpfs_is_buffered(tmp_path):
    path = f"/dev/shm/videochat-test-{os.getpid()}.bin"
    data = os.urandom(40_000)
    try:
        w = DirectWriter(path, chunk=16384)
        w.write(data)
        w.close()
        with open(path, "rb") as f:
            assert f.read() == data
    finally:
        os.remove(path)
