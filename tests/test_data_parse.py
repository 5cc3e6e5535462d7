"""Annotation parsing: timestamp forms, input formats, rejects with reasons, a property-based fuzz."""

import csv
import gzip
import math

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_tools.annotations import iter_json_records, normalize, raw_from_records
from data_tools.textcols import parse_seconds, word_counts
from data_tools.builder import BuildConfig, build
from data_tools.io import iter_samples
from data_tools.sources import Task, _json_piece, iter_task


def rows(n_videos=6, clips=5, asr=False):
    out = []
    for v in range(n_videos):
        for c in range(clips):
            r = {"YoutubeID": f"vid{v:03d}", "Start_timestamp": f"00:00:{2 * c:02d}.250",
                 "End_timestamp": f"00:00:{2 * c + 1:02d}.750", "Caption": f"video {v} clip {c} shows a thing",
                 "UMT_Score": 0.3 + 0.01 * c, "Aesthetic_Score": 4.0 + c}
            if asr:
                r["ASR"] = f"words spoken in clip {c}"
            out.append(r)
    return out


def test_parse_seconds_forms():
    ms, ok = parse_seconds(pa.array(["00:01:02.500", "1:02:03", "62.5", "05:07", " 00:00:01.000 ", "0", "x1",
                                     "-00:00:01.000", "", None, "00:00:0a.000"]))
    assert ms[:6].tolist() == [62500, 3723000, 62500, 307000, 1000, 0]
    assert ok.tolist() == [True] * 6 + [False] * 5


def test_numeric_and_string_timestamps_agree():
    text = [{"YoutubeID": "v", "Start_timestamp": "00:00:12.500", "End_timestamp": "00:00:17.000", "Caption": "c"},
            {"YoutubeID": "v", "Start_timestamp": 12.5, "End_timestamp": 17, "Caption": "c"}]
    piece = b"".join(orjson.dumps(r) + b"\n" for r in text)
    table, rejects = normalize(_json_piece(piece, 1))  # mixed types: the exact path
    assert rejects == []
    assert table.column("start_ms").to_pylist() == [12500, 12500]
    assert table.column("end_ms").to_pylist() == [17000, 17000]


def test_rejects_every_bad_row_with_a_reason():
    lines = [
        b'{"YoutubeID":"v","Start_timestamp":"00:00:01.000","End_timestamp":"00:00:02.000","Caption":"ok"}',
        b'{"YoutubeID":"v","Start_timestamp":"00:00:01.000"',  # broken JSON
        b'{"Start_timestamp":"00:00:01.000","End_timestamp":"00:00:02.000","Caption":"no id"}',
        b'{"YoutubeID":"v","Start_timestamp":"soon","End_timestamp":"00:00:02.000","Caption":"x"}',
        b'{"YoutubeID":"v","Start_timestamp":-3,"End_timestamp":"00:00:02.000","Caption":"x"}',
        b'{"YoutubeID":"v","Start_timestamp":"00:00:05.000","End_timestamp":"00:00:02.000","Caption":"x"}',
        b'{"YoutubeID":"v","Start_timestamp":"00:00:01.000","End_timestamp":"00:00:02.000","Caption":"   "}',
        b'{"YoutubeID":"v","Start_timestamp":"00:00:01.000","End_timestamp":"00:00:02.000","Caption":"\xff\xfe"}',
        b'[1, 2]',
        b'{"YoutubeID":"v","Start_timestamp":"00:00:01.000","End_timestamp":"00:00:02.000","Caption":7}',
        b'{"YoutubeID":"v","Start_timestamp":"00:00:01.000","End_timestamp":"00:00:02.000"}',
    ]
    table, rejects = normalize(_json_piece(b"\n".join(lines) + b"\n", 1))
    assert table.num_rows == 1
    reasons = {line: reason for line, reason, _ in rejects}
    assert sorted(reasons) == list(range(2, 12))
    assert reasons[2].startswith("invalid JSON")
    assert reasons[3] == "missing YoutubeID"
    assert reasons[4].startswith("unparsable Start_timestamp")
    assert reasons[5].startswith("negative Start_timestamp")
    assert reasons[6] == "End_timestamp <= Start_timestamp"
    assert reasons[7] == "empty Caption"
    assert reasons[8] == "not valid UTF-8"
    assert reasons[9].startswith("not a JSON object")
    assert reasons[10].startswith("Caption is not a string")
    assert reasons[11] == "missing Caption"


def _write(path, data, fmt):
    if fmt == "jsonl":
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in data))
    elif fmt == "jsonl.gz":
        path.write_bytes(gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in data)))
    elif fmt == "jsonl.zst":
        import zstandard

        path.write_bytes(zstandard.ZstdCompressor().compress(b"".join(orjson.dumps(r) + b"\n" for r in data)))
    elif fmt == "csv":
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(data[0]), lineterminator="\n")
            w.writeheader()
            w.writerows(data)
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(data), path)


def test_all_input_formats_build_identically(tmp_path):
    data = rows(asr=True)
    data[3]["Caption"] = 'has "quotes", commas\nand a newline'
    outputs = {}
    for fmt in ("jsonl", "jsonl.gz", "jsonl.zst", "csv", "parquet"):
        src = tmp_path / f"ann.{fmt}"
        _write(src, data, fmt)
        out = tmp_path / f"out-{fmt.replace('.', '-')}"
        m = build(BuildConfig(annotations=[str(src)], out=str(out), formats=["a", "b", "c", "caption"],
                              progress=False, workers=1, val_fraction=0.2))
        assert m["counts"]["rows_in"] == len(data) and m["counts"]["rows_rejected"] == 0, (fmt, m["counts"])
        outputs[fmt] = [orjson.dumps(s) for s in iter_samples(out)]
    ref = outputs.pop("jsonl")
    assert ref
    for fmt, got in outputs.items():
        assert got == ref, fmt
    assert any('has \\"quotes\\", commas\\nand a newline' in s.decode() for s in ref)


def test_csv_line_numbers_and_bad_fields(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text('YoutubeID,Start_timestamp,End_timestamp,Caption\n'
                 'v1,00:00:01.000,00:00:02.000,"multi\nline caption"\n'
                 'v1,00:00:03.000,00:00:02.000,backwards\n'
                 'v1,00:00:04.000\n'
                 'v1,00:00:05.000,00:00:06.000,fine\n')
    recs = []
    for raw, _ in iter_task(Task(0, 0, str(p), "csv")):
        if raw is not None:
            t, rej = normalize(raw)
            recs += rej
            assert t.column("caption").to_pylist() == ["multi\nline caption", "fine"]
    assert [(ln, r) for ln, r, _ in recs] == [(4, "End_timestamp <= Start_timestamp"), (5, "expected 4 CSV fields, got 2")]


def test_word_counts():
    assert word_counts(pa.array(["a b  c", " x ", "", None, "héllo wörld"])).tolist() == [3, 1, 0, 0, 2]


# --- property-based fuzz of the row parser -----------------------------------------------------------------

_ts = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.from_regex(r"\A\d{1,2}:\d{2}:\d{2}\.\d{3}\Z"), st.from_regex(r"\A-?\d{0,3}(:\d{1,2}){0,3}(\.\d{0,4})?\Z"),
    st.text(max_size=8),
)
_row = st.fixed_dictionaries(
    {"YoutubeID": st.one_of(st.text(max_size=12), st.integers(0, 99), st.none()),
     "Start_timestamp": _ts, "End_timestamp": _ts,
     "Caption": st.one_of(st.text(max_size=30), st.none(), st.integers(-1000, 1000))},
    optional={"ASR": st.one_of(st.text(max_size=10), st.none()), "UMT_Score": st.one_of(st.floats(), st.none())},
)
_line = st.one_of(_row.map(lambda r: orjson.dumps(r, option=orjson.OPT_NON_STR_KEYS) if _finite(r) else b"{}"),
                  st.binary(max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b))


def _finite(r):
    return all(not (isinstance(v, float) and not math.isfinite(v)) for v in r.values())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_line, min_size=1, max_size=12))
def test_fuzz_row_parser(lines):
    piece = b"\n".join(lines) + b"\n"
    nonblank = [i + 1 for i, ln in enumerate(lines) if ln.strip()]
    fast = _json_piece(piece, 1)
    table, rejects = normalize(fast)
    # Every non-blank line is accepted or rejected exactly once, with a reason.
    lines_out = sorted(table.column("line").to_pylist() + [ln for ln, _, _ in rejects])
    assert lines_out == nonblank
    assert all(isinstance(r, str) and r for _, r, _ in rejects)
    s, e = np.asarray(table.column("start_ms")), np.asarray(table.column("end_ms"))
    assert (s >= 0).all() and (e > s).all()
    assert all(c.strip() for c in table.column("caption").to_pylist())
    # The exact (per-line) path agrees with whatever path the piece took.
    t2, r2 = normalize(raw_from_records(iter_json_records(piece, 1)))
    assert t2.to_pylist() == table.to_pylist()
    assert [(a, b) for a, b, _ in r2] == [(a, b) for a, b, _ in rejects]


@pytest.mark.parametrize("value,ms", [("00:00:00.001", 1), ("99:59:59.999", 359999999), ("1.0005", 1000)])
def test_timestamp_edges(value, ms):
    got, ok = parse_seconds(pa.array([value]))
    assert ok[0] and abs(int(got[0]) - ms) <= 1


def test_small_pieces_and_tasks_keep_rows_and_line_numbers(tmp_path, monkeypatch):
    """Byte-range tasks and piece cuts (JSONL), quote-aware cuts (CSV): same rows, same file line numbers."""
    import data_tools.sources as src

    data = rows(n_videos=5, clips=6)
    for i in (3, 11, 20):
        data[i]["Caption"] = f'line one\nline "two", {i}'
    bad_line = b'{"YoutubeID": "v", "Start_timestamp": "zz", "End_timestamp": 1, "Caption": "x"}'
    jl = tmp_path / "a.jsonl"
    jl.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in data[:17]) + bad_line + b"\n"
                   + b"".join(orjson.dumps(r) + b"\n" for r in data[17:]))
    cs = tmp_path / "a.csv"
    _write(cs, data, "csv")
    ref = {}
    for label, piece, task in (("big", 16 << 20, 32 << 20), ("small", 300, 700)):
        monkeypatch.setattr(src, "PIECE_BYTES", piece)
        monkeypatch.setattr(src, "TASK_BYTES", task)
        m = build(BuildConfig(annotations=[str(jl), str(cs)], out=str(tmp_path / label), workers=1, progress=False,
                              formats=["caption"], val_fraction=0.0))
        assert m["counts"]["rows_in"] == 2 * len(data) + 1
        rej = [orjson.loads(x) for x in (tmp_path / label / "rejects.jsonl").read_bytes().splitlines()]
        samples = sorted(orjson.dumps(s) for s in iter_samples(tmp_path / label))
        ref[label] = (rej, samples, len(src.plan_tasks([str(jl)])))
    assert ref["small"][2] > 3 and ref["big"][2] == 1
    assert ref["small"][:2] == ref["big"][:2]
    dup = [r for r in ref["big"][0] if r["reason"].startswith("exact duplicate")]
    assert len(dup) == len(data)  # the CSV repeats every JSONL row; the first occurrence (JSONL) is kept
    assert {r["line"] for r in ref["big"][0] if r["file"] == str(jl)} == {18}


def test_range_pieces_cut_at_newlines_and_grow(tmp_path, monkeypatch):
    """The reused-buffer reader: pieces end at newlines, a line longer than the buffer grows it, a missing
    final newline still counts a line, and the concatenated pieces are the byte range."""
    import data_tools.sources as src

    lines = [b"x" * n for n in (5, 40, 3, 0, 90, 7)]
    data = b"\n".join(lines)  # no trailing newline
    p = tmp_path / "f.jsonl"
    p.write_bytes(data)
    monkeypatch.setattr(src, "PIECE_BYTES", 16)
    got, n = [], 0
    for piece, nl in src._range_pieces(str(p), 0, len(data)):
        b = bytes(piece)
        assert b.endswith(b"\n") or len(b"".join(got)) + len(b) == len(data)
        got.append(b)
        n += nl
    assert b"".join(got) == data and n == len(lines)


def test_runs_and_sparse_join_without_copies():
    from data_tools.render import runs, sparse
    from data_tools.strfmt import fmt_rows

    a = pa.array(["a", "bc", "", "d", "ef"])
    assert runs(a, np.array([0, 2, 2, 5])).to_pylist() == ["abc", "", "def"]
    assert runs(a.slice(1), np.array([0, 1, 4])).to_pylist() == ["bc", "def"]
    assert sparse(pa.array(["X", "YZ"]), np.array([1, 3]), 5).to_pylist() == ["", "X", "", "YZ", ""]
    assert fmt_rows([("opt", b",", np.array([False, True])), b"[", ("int", np.array([7, 12])), b"]"],
                    2).to_pylist() == ["[7]", ",[12]"]


def test_parquet_row_group_tasks_keep_rows_and_row_numbers(tmp_path, monkeypatch):
    """A Parquet file is read as runs of row groups (parallel tasks): same samples and the same reported row
    numbers as one whole-file task."""
    import data_tools.sources as src

    data = rows(n_videos=6, clips=7)
    data[30]["End_timestamp"] = "00:00:00.000"  # end <= start: rejected with its row number
    path = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist(data), path, row_group_size=8)
    assert pq.ParquetFile(path).metadata.num_row_groups == 6
    ref = {}
    for label, task_rows in (("whole", 10**9), ("groups", 10)):
        monkeypatch.setattr(src, "TASK_ROWS", task_rows)
        m = build(BuildConfig(annotations=[str(path)], out=str(tmp_path / label), workers=1, progress=False,
                              formats=["caption"], val_fraction=0.0))
        assert m["counts"]["rows_in"] == len(data)
        rej = [orjson.loads(x) for x in (tmp_path / label / "rejects.jsonl").read_bytes().splitlines()]
        ref[label] = (rej, sorted(orjson.dumps(s) for s in iter_samples(tmp_path / label)),
                      [(t.start, t.end) for t in src.plan_tasks([str(path)])])
    assert ref["whole"][2] == [(0, 6)] and ref["groups"][2] == [(0, 2), (2, 4), (4, 6)]
    assert ref["groups"][:2] == ref["whole"][:2]
    assert [r["line"] for r in ref["whole"][0]] == [31]
