"""Exports/imports (VideoChat2-IT, LLaVA), iter_samples, stats, validate (incl. --probe on real tiny videos)."""

import gzip

import numpy as np
import orjson
import pytest

from data_tools import fakedata
from data_tools.builder import BuildConfig, build
from data_tools.formats import export, import_
from data_tools.io import iter_samples, read_manifest, write_samples
from data_tools.stats import compute, plot
from data_tools.validate import check_sample, validate_annotations, validate_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("ds")
    lines = fakedata.chunk(np.random.default_rng(1), 30, clips_per_video=10, asr=True)
    (d / "ann.jsonl").write_bytes("".join(lines.to_pylist()).encode())
    build(BuildConfig(annotations=[str(d / "ann.jsonl")], out=str(d / "out"), formats=["a", "b", "c", "caption"],
                      progress=False, workers=1, val_fraction=0.2))
    return d / "out"


def _texts(s):
    """Text of each message (adjacent text parts joined: LLaVA strings cannot keep part boundaries)."""
    return [(m["role"], "\n".join(c["text"] for c in m["content"] if c["type"] == "text")) for m in s["messages"]]


def test_llava_export_import_round_trip_is_lossless(dataset, tmp_path):
    r = export(dataset, "llava", str(tmp_path / "llava.json"))
    assert r["skipped"] == 0
    entries = orjson.loads((tmp_path / "llava.json").read_bytes())
    assert all(e["conversations"][0]["from"] == "human" and "<video>" in e["conversations"][0]["value"]
               for e in entries if e["clips"])
    assert all(set(e) >= {"id", "video", "conversations"} for e in entries)
    c = import_(str(tmp_path / "llava.json"), "llava", str(tmp_path / "back"))
    assert c["rows_rejected"] == 0
    orig = {s["id"]: s for s in iter_samples(dataset)}
    back = list(iter_samples(tmp_path / "back"))
    assert len(back) == len(orig)
    for s in back:
        assert check_sample(s) == []
        o = orig[s["id"]]
        shown = [o["clips"][c["clip"]] for m in o["messages"] for c in m["content"] if c["type"] == "clip"]
        assert s["clips"] == shown  # clips as referenced, in order
        assert [v["path"] for v in s["videos"]] == [v["path"] for v in o["videos"]]
        assert _texts(s) == _texts(o)


def test_videochat2_export_import(dataset, tmp_path):
    r = export(dataset, "videochat2", str(tmp_path / "vc2.json"))
    n_multi = sum(1 for s in iter_samples(dataset) if len(s["videos"]) > 1)
    assert r["skipped"] == n_multi > 0  # (c) samples cannot be expressed: reported, not lost
    skipped = (tmp_path / "vc2.json.skipped.jsonl").read_bytes().splitlines()
    assert len(skipped) == n_multi and all(b"videos in one sample" in x for x in skipped)
    entries = orjson.loads((tmp_path / "vc2.json").read_bytes())
    for e in entries:
        assert set(e) >= {"video", "QA"} and all(set(q) == {"i", "q", "a"} for q in e["QA"])
        assert 0 <= e["start"] < e["end"]
    import_(str(tmp_path / "vc2.json"), "videochat2", str(tmp_path / "back"))
    back = list(iter_samples(tmp_path / "back"))
    assert len(back) == len(entries)
    for s, e in zip(back, entries):
        assert check_sample(s) == []
        assert [m["content"][-1]["text"] for m in s["messages"] if m["role"] == "assistant"] == [q["a"] for q in e["QA"]]
        assert s["clips"] == [{"video": 0, "start": e["start"], "end": e["end"]}]


def test_import_rejects_bad_entries_with_reasons(tmp_path):
    src = tmp_path / "in.json"
    src.write_bytes(orjson.dumps([
        {"video": "a.mp4", "QA": [{"i": "", "q": "what?", "a": "this"}]},
        {"video": "", "QA": [{"q": "x", "a": "y"}]},
        {"video": "b.mp4", "QA": []},
        {"video": "c.mp4", "QA": [{"q": "x", "a": "y"}], "start": 5, "end": 2},
        {"video": "d.mp4", "QA": [{"q": "x", "a": "y"}, {"q": "and?", "a": "z"}], "start": 1, "end": 2},
    ]))
    c = import_(str(src), "videochat2", str(tmp_path / "out"))
    assert c == {"rows_in": 5, "rows_used": 2, "rows_rejected": 3, "rows_filtered": 0}
    rej = [orjson.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_bytes().splitlines()]
    assert [r["line"] for r in rej] == [2, 3, 4] and all(r["reason"] for r in rej)
    whole, two = list(iter_samples(tmp_path / "out"))
    assert whole["clips"] == [{"video": 0, "start": None, "end": None}]  # whole video
    assert [m["role"] for m in two["messages"]] == ["user", "assistant"] * 2


def test_iter_samples_reads_compressed_shards_globs_and_splits(tmp_path):
    s = {"id": "x", "format": "a", "videos": [], "clips": [], "messages": []}
    write_samples(tmp_path / "d1" / "train" / "shard-00000.jsonl.zst", [s, s], compression="zst")
    write_samples(tmp_path / "d1" / "val" / "shard-00000.jsonl.gz", [s], compression="gz")
    (tmp_path / "d2" / "train").mkdir(parents=True)
    (tmp_path / "d2" / "train" / "shard-00000.jsonl").write_bytes(orjson.dumps(s) + b"\n\n")
    assert len(list(iter_samples(tmp_path / "d1"))) == 3
    assert len(list(iter_samples(tmp_path / "d1", "val"))) == 1
    assert len(list(iter_samples(str(tmp_path / "d*")))) == 4
    assert gzip.decompress((tmp_path / "d1" / "val" / "shard-00000.jsonl.gz").read_bytes()).count(b"\n") == 1


def test_stats_and_histogram(dataset, tmp_path):
    summary, arr = compute(dataset)
    assert summary["samples"] == sum(1 for _ in iter_samples(dataset))
    assert set(summary["formats"]) == {"a", "b", "c", "caption"}
    m = read_manifest(dataset)
    assert summary["clips_video_dropped"] == m["counts"]["clips_video_dropped"] > 0  # none in caption samples
    assert summary["clips"] == m["counts"]["clips_in_interleaved"] + m["samples"]["train"]["caption"] \
        + m["samples"]["val"]["caption"]
    plot(arr, summary, str(tmp_path / "h.png"))
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def test_validate_dataset_flags_schema_errors(tmp_path):
    good = {"id": "g", "format": "a", "videos": [{"video_id": "v", "path": "v.mp4"}],
            "clips": [{"video": 0, "start": 1.0, "end": 2.0}],
            "messages": [{"role": "user", "content": [{"type": "clip", "clip": 0}, {"type": "text", "text": "q"}]},
                         {"role": "assistant", "content": [{"type": "text", "text": "a"}]}]}
    bad = orjson.loads(orjson.dumps(good))
    bad["id"] = "b"
    bad["messages"][0]["content"][0]["clip"] = 3
    write_samples(tmp_path / "d" / "train" / "shard-00000.jsonl", [good, bad])
    problems = []
    counts = validate_dataset(tmp_path / "d", emit=problems.append)
    assert counts == {"samples": 2, "samples_bad": 1}
    assert problems[0]["id"] == "b" and "clip 3" in problems[0]["reason"]


def _tiny_video(path, seconds=2, fps=5):
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for i in range(seconds * fps):
            for pk in s.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), 20 * i % 256, np.uint8), format="rgb24")):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)


def test_validate_annotations_with_probe(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    _tiny_video(videos / "ok.mp4")
    _tiny_video(videos / "short.mp4")
    (videos / "broken.mp4").write_bytes(b"not a video at all")
    rows = [("ok", "00:00:00.000", "00:00:01.500"), ("short", "00:00:00.000", "00:00:09.000"),
            ("broken", "00:00:00.000", "00:00:01.000"), ("gone", "00:00:00.000", "00:00:01.000")]
    ann = tmp_path / "a.jsonl"
    ann.write_bytes(b"".join(orjson.dumps({"YoutubeID": v, "Start_timestamp": s, "End_timestamp": e, "Caption": "c"})
                             + b"\n" for v, s, e in rows) + b"{oops\n")
    problems = []
    counts = validate_annotations([str(ann)], videos=str(videos), probe=True, emit=problems.append)
    assert counts["rows"] == 5 and counts["rows_rejected"] == 1
    assert counts["videos_missing"] == 1 and counts["videos_undecodable"] == 1
    assert counts["videos_times_beyond_duration"] == 1
    by = {p.get("video_id", p.get("line")): p["reason"] for p in problems}
    assert "not found" in by["gone"] and "not decodable" in by["broken"] and "lasts" in by["short"]
    assert 5 in by  # the broken JSON line
