"""`videochat data build`: determinism, each format's structure, drops, split leakage, windows, counts, videos."""

import filecmp
import math
import os

import numpy as np
import orjson
import pytest

from data_tools import fakedata
from data_tools.builder import BuildConfig, BuildError, build
from data_tools.io import iter_samples, read_manifest
from data_tools.templates import POOLS
from data_tools.validate import check_sample


def write_rows(path, n_videos=40, clips=12, asr=False, seed=0):
    rng = np.random.default_rng(seed)
    lines = fakedata.chunk(rng, n_videos, clips_per_video=clips, asr=asr)
    with open(path, "wb") as f:
        for s in lines.to_pylist():
            f.write(s.encode())
    return len(lines)


@pytest.fixture(scope="module")
def ann(tmp_path_factory):
    d = tmp_path_factory.mktemp("ann")
    p = d / "ann.jsonl"
    n = write_rows(p, asr=True)
    return p, n


def cfg(ann_path, out, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("workers", 1)
    return BuildConfig(annotations=[str(ann_path)], out=str(out), **kw)


def shard_bytes(out):
    files = sorted(os.path.relpath(os.path.join(dp, f), out) for dp, _, fs in os.walk(out) for f in fs
                   if f.startswith("shard-"))
    return {f: open(os.path.join(out, f), "rb").read() for f in files}


def test_rebuild_is_byte_identical_for_any_worker_count(ann, tmp_path):
    p, _ = ann
    kw = dict(formats=["a", "b", "c", "caption"], partitions=3, shard_size=50, compression="zst", seed=7)
    build(cfg(p, tmp_path / "w1", **kw))
    build(cfg(p, tmp_path / "w1again", **kw))
    build(cfg(p, tmp_path / "w2", workers=2, **kw))
    ref = shard_bytes(tmp_path / "w1")
    assert len(ref) > 3
    assert shard_bytes(tmp_path / "w1again") == ref
    assert shard_bytes(tmp_path / "w2") == ref
    for name in ("rejects.jsonl",):
        assert filecmp.cmp(tmp_path / "w1" / name, tmp_path / "w2" / name, shallow=False)
    m1, m2 = read_manifest(tmp_path / "w1"), read_manifest(tmp_path / "w2")
    m1["args"].pop("out"), m2["args"].pop("out")
    assert m1 == m2
    # A different seed changes wording/drops but not the rows used.
    m3 = build(cfg(p, tmp_path / "s8", **{**kw, "seed": 8}))
    assert shard_bytes(tmp_path / "s8") != ref
    assert m3["counts"]["rows_used"] == m1["counts"]["rows_used"]


def _clip_parts(msg):
    return [c["clip"] for c in msg["content"] if c["type"] == "clip"]


def test_format_structure(ann, tmp_path):
    p, n = ann
    build(cfg(p, tmp_path / "o", formats=["a", "b", "c", "caption"], drop_video_p=0.0, val_fraction=0.0))
    samples = list(iter_samples(tmp_path / "o"))
    by = {}
    for s in samples:
        assert check_sample(s) == [], s["id"]
        by.setdefault(s["format"], []).append(s)
    assert set(by) == {"a", "b", "c", "caption"}
    assert len(by["caption"]) == n
    for s in by["caption"]:
        assert len(s["clips"]) == 1 and len(s["messages"]) == 2
        assert s["messages"][0]["content"][0] == {"type": "clip", "clip": 0}
    for f in ("a", "b"):
        for s in by[f]:
            assert len(s["videos"]) == 1
            starts = [c["start"] for c in s["clips"]]
            assert starts == sorted(starts)
            shown = [c for m in s["messages"] for c in _clip_parts(m)]
            assert shown == list(range(len(s["clips"])))  # p=0: every clip shown, in order
            # each clip's user turn is answered by an assistant turn
            for i, m in enumerate(s["messages"]):
                if _clip_parts(m):
                    assert s["messages"][i + 1]["role"] == "assistant"
    assert all(any("\n" in c["text"] and '"' in c["text"] for m in s["messages"] if m["role"] == "user"
                   for c in m["content"] if c["type"] == "text") for s in by["b"])  # transcript + question
    for s in by["c"]:
        assert len(s["videos"]) == 2 and s["videos"][0]["video_id"] != s["videos"][1]["video_id"]
        vids = [c["video"] for c in s["clips"]]
        assert vids == sorted(vids) and set(vids) == {0, 1}
    # Question wording comes from the pools; many different phrasings are used.
    questions = {c["text"] for s in by["a"] for m in s["messages"] if m["role"] == "user"
                 for c in m["content"] if c["type"] == "text"}
    assert len(questions & set(POOLS["describe"])) >= 5


def test_drop_probability_within_statistical_bound(tmp_path):
    p = tmp_path / "a.jsonl"
    write_rows(p, n_videos=150, clips=20, seed=3)
    for drop in (0.0, 0.3, 1.0):
        m = build(cfg(p, tmp_path / f"d{drop}", formats=["a"], drop_video_p=drop, val_fraction=0.0))
        clips, dropped = m["counts"]["clips_in_interleaved"], m["counts"]["clips_video_dropped"]
        sd = math.sqrt(drop * (1 - drop) / clips)
        assert abs(dropped / clips - drop) <= 4 * sd + 1e-9, (drop, dropped, clips)
        shown = sum(len(_clip_parts(mm)) for s in iter_samples(tmp_path / f"d{drop}") for mm in s["messages"])
        assert shown == clips - dropped
        if drop == 1.0:  # every clip is text context; each window closes with a summary question
            for s in iter_samples(tmp_path / f"d{drop}"):
                assert check_sample(s) == []


def test_split_by_video_has_no_leakage(ann, tmp_path):
    p, _ = ann
    m = build(cfg(p, tmp_path / "o", formats=["a", "c", "caption"], val_fraction=0.3))
    train = {v["video_id"] for s in iter_samples(tmp_path / "o", "train") for v in s["videos"]}
    val = {v["video_id"] for s in iter_samples(tmp_path / "o", "val") for v in s["videos"]}
    assert train and val and not (train & val)
    assert 0.1 < len(val) / (len(train) + len(val)) < 0.5
    assert m["samples"]["val"]["total"] == sum(1 for _ in iter_samples(tmp_path / "o", "val"))


def test_windows_respect_clip_and_word_budgets(ann, tmp_path):
    p, _ = ann
    build(cfg(p, tmp_path / "o", formats=["a"], max_clips=5, max_words=40, drop_video_p=0.0))
    for s in iter_samples(tmp_path / "o"):
        assert len(s["clips"]) <= 5
        answers = [c["text"] for m in s["messages"] if m["role"] == "assistant" for c in m["content"]]
        words = sum(len(a.split()) for a in answers[: len(s["clips"])])  # captions (a change answer quotes two)
        assert len(s["clips"]) == 1 or words <= 2 * 40


def test_counts_reconcile_and_every_reject_is_listed(tmp_path):
    good = {"YoutubeID": "v1", "Start_timestamp": "00:00:01.000", "End_timestamp": "00:00:02.000", "Caption": "ok",
            "UMT_Score": 0.8}
    lines = [orjson.dumps(good), orjson.dumps(good),  # exact duplicate
             orjson.dumps({**good, "Start_timestamp": "00:00:03.000", "End_timestamp": "00:00:04.000", "UMT_Score": 0.1}),
             orjson.dumps({**good, "Start_timestamp": "00:00:05.000", "End_timestamp": "00:00:06.000", "UMT_Score": 0.9}),
             b"{not json", orjson.dumps({**good, "End_timestamp": "00:00:00.500"}),
             orjson.dumps({**good, "YoutubeID": "absent"}), b'{"YoutubeID":"v1","Caption":"\xc3\x28"}']
    p = tmp_path / "a.jsonl"
    p.write_bytes(b"\n".join(lines) + b"\n")
    vids = tmp_path / "videos"
    (vids / "sub").mkdir(parents=True)
    (vids / "sub" / "v1.webm").write_bytes(b"x")
    m = build(cfg(p, tmp_path / "o", videos=str(vids), min_umt=0.5, formats=["caption"]))
    c = m["counts"]
    assert c["rows_in"] == len(lines) == c["rows_used"] + c["rows_rejected"] + c["rows_filtered"]
    assert (c["rows_used"], c["rows_rejected"], c["rows_filtered"]) == (2, 5, 1)
    rejects = [orjson.loads(x) for x in (tmp_path / "o" / "rejects.jsonl").read_bytes().splitlines()]
    assert len(rejects) == c["rows_rejected"]
    assert {r["line"] for r in rejects} == {2, 5, 6, 7, 8}
    assert all(r["file"] == str(p) and r["reason"] for r in rejects)
    assert any("video not found" in r["reason"] for r in rejects)
    assert any(r["reason"] == f"exact duplicate of {p}:1" for r in rejects)
    samples = list(iter_samples(tmp_path / "o"))
    assert len(samples) == 2 and {s["videos"][0]["path"] for s in samples} == {os.path.join("sub", "v1.webm")}
    # --allow-missing keeps the clip of the absent video; without a score threshold nothing is filtered.
    m2 = build(cfg(p, tmp_path / "o2", videos=str(vids), allow_missing=True, formats=["caption"]))
    assert (m2["counts"]["rows_used"], m2["counts"]["rows_filtered"]) == (4, 0)
    assert {s["videos"][0]["path"] for s in iter_samples(tmp_path / "o2")} == {"sub/v1.webm", "absent.mp4"}


def test_machine_shards_partition_the_videos(ann, tmp_path):
    p, n = ann
    seen, rows = [], 0
    for i in range(3):
        m = build(cfg(p, tmp_path / f"m{i}", num_shards=3, shard_index=i, formats=["caption"], val_fraction=0))
        rows += m["counts"]["rows_in"]
        seen.append({s["videos"][0]["video_id"] for s in iter_samples(tmp_path / f"m{i}")})
    assert rows == n
    assert all(seen) and not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])


def test_bad_arguments_are_refused(ann, tmp_path):
    p, _ = ann
    with pytest.raises(BuildError, match="format"):
        build(cfg(p, tmp_path / "o", formats=["z"]))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "precious.txt").write_text("x")
    with pytest.raises(BuildError, match="not empty"):
        build(cfg(p, tmp_path / "busy"))


def test_cli_build(ann, tmp_path, capsys):
    from videochat.cli import main

    p, n = ann
    rc = main(["data", "build", "--annotations", str(p), "--out", str(tmp_path / "o"), "--formats", "a,caption",
               "--quiet", "--workers", "1", "--compress", "gz"])
    assert rc == 0
    assert f"{n} in" in capsys.readouterr().out
    assert sum(1 for _ in iter_samples(tmp_path / "o")) == read_manifest(tmp_path / "o")["samples"]["train"]["total"] \
        + read_manifest(tmp_path / "o")["samples"]["val"]["total"]


def test_chunked_rendering_does_not_change_output(ann, tmp_path, monkeypatch):
    import data_tools.partition as part

    p, _ = ann
    kw = dict(formats=["a", "b", "c", "caption"], shard_size=37)
    build(cfg(p, tmp_path / "big", **kw))
    monkeypatch.setattr(part, "CHUNK_SAMPLES", 7)
    build(cfg(p, tmp_path / "small", **kw))
    assert shard_bytes(tmp_path / "small") == shard_bytes(tmp_path / "big")
    assert len(shard_bytes(tmp_path / "big")) > 5


def test_hash_collisions_keep_videos_apart(ann, tmp_path, monkeypatch):
    import data_tools.spill as spill

    p, n = ann
    ref = build(cfg(p, tmp_path / "ref", formats=["a"], drop_video_p=0.0, val_fraction=0.0))
    monkeypatch.setattr(spill, "video_hashes", lambda vid: np.full(len(vid), 42, np.uint64))  # all collide
    m = build(cfg(p, tmp_path / "col", formats=["a"], drop_video_p=0.0, val_fraction=0.0))
    assert m["counts"]["windows"] == ref["counts"]["windows"] and m["counts"]["rows_used"] == n
    for s in iter_samples(tmp_path / "col"):
        assert len(s["videos"]) == 1 and s["id"].startswith(s["videos"][0]["video_id"] + "#w")
        assert [c["start"] for c in s["clips"]] == sorted(c["start"] for c in s["clips"])


def test_make_windows_budgets_and_balance():
    from data_tools.grouping import make_windows

    rng = np.random.default_rng(0)
    lens = rng.integers(1, 40, 200)
    new = np.zeros(lens.sum(), bool)
    new[np.cumsum(lens) - lens] = True
    words = rng.integers(1, 30, lens.sum())
    for max_clips, max_words in ((8, None), (5, 60), (3, 10)):
        w = make_windows(new, words, max_clips, max_words)
        assert w.start[0] == 0 and (np.diff(np.append(w.start, len(new))) == w.length).all()
        assert (w.length <= max_clips).all()
        assert new[w.start[w.local == 0]].all() and not new[w.start[w.local > 0]].any()
        sums = np.add.reduceat(words, w.start)
        if max_words:
            assert ((sums <= max_words) | (w.length == 1)).all()
        else:  # fewest windows, balanced to within one clip
            per_video = np.bincount(w.video)
            assert (per_video == -(-lens // max_clips)).all()
            for v in range(len(lens)):
                ls = w.length[w.video == v]
                assert ls.max() - ls.min() <= 1


def test_trailing_dots_and_escapes_in_captions(tmp_path):
    rows = [{"YoutubeID": 'v"1', "Start_timestamp": f"00:00:0{i}.000", "End_timestamp": f"00:00:0{i}.500",
             "Caption": f'A "dog" \\ runs {i}.'} for i in range(6)]
    p = tmp_path / "a.jsonl"
    p.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    build(cfg(p, tmp_path / "o", formats=["a"], drop_video_p=0.5, seed=3, val_fraction=0.0))
    (s,) = list(iter_samples(tmp_path / "o"))
    assert s["videos"][0]["video_id"] == 'v"1' and check_sample(s) == []
    texts = [c["text"] for m in s["messages"] for c in m["content"] if c["type"] == "text"]
    assert any('A "dog" \\ runs' in t for t in texts)
    assert not any(".." in t for t in texts)


def test_empty_and_all_rejected_inputs(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "bad.jsonl").write_bytes(b"{nope\n[]\n")
    m = build(BuildConfig(annotations=[str(tmp_path / "*.jsonl")], out=str(tmp_path / "o"), progress=False,
                          workers=1, formats=["a", "caption"]))
    assert m["counts"]["rows_in"] == 2 == m["counts"]["rows_rejected"]
    assert m["samples"]["train"]["total"] == 0 and list(iter_samples(tmp_path / "o")) == []


def test_input_order_does_not_change_output(ann, tmp_path):
    p, _ = ann
    lines = p.read_bytes().splitlines(keepends=True)
    rng = np.random.default_rng(5)
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_bytes(b"".join(lines[i] for i in rng.permutation(len(lines))))
    kw = dict(formats=["a", "b", "c", "caption"], partitions=2)
    build(cfg(p, tmp_path / "sorted", **kw))
    build(cfg(shuffled, tmp_path / "shuf", **kw))
    assert shard_bytes(tmp_path / "shuf") == shard_bytes(tmp_path / "sorted")


def test_video_map_file(tmp_path):
    rows_ = [{"YoutubeID": v, "Start_timestamp": "00:00:01.000", "End_timestamp": "00:00:02.000", "Caption": "c"}
             for v in ("a1", "b2", "c3")]
    p = tmp_path / "a.jsonl"
    p.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows_))
    (tmp_path / "map.csv").write_text("video_id,path\na1,x/a1.mkv\nb2,/abs/b2.mp4\n")
    m = build(cfg(p, tmp_path / "o", video_map=str(tmp_path / "map.csv"), formats=["caption"], val_fraction=0))
    assert (m["counts"]["rows_used"], m["counts"]["rows_rejected"]) == (2, 1)
    assert {s["videos"][0]["path"] for s in iter_samples(tmp_path / "o")} == {"x/a1.mkv", "/abs/b2.mp4"}
    (tmp_path / "map.json").write_bytes(orjson.dumps({"a1": "a.mp4", "b2": "b.mp4", "c3": "c.mp4"}))
    m = build(cfg(p, tmp_path / "o2", video_map=str(tmp_path / "map.json"), formats=["caption"], val_fraction=0))
    assert m["counts"]["rows_used"] == 3


def test_allow_missing_with_no_video_found_at_all(tmp_path):
    p = tmp_path / "a.jsonl"
    n = write_rows(p, n_videos=5, clips=4)
    (tmp_path / "videos").mkdir()
    m = build(cfg(p, tmp_path / "o", videos=str(tmp_path / "videos"), allow_missing=True, formats=["a", "caption"],
                  partitions=3))
    assert m["counts"]["rows_rejected"] == 0 and m["counts"]["rows_used"] == n
    assert all(v["path"] == v["video_id"] + ".mp4" for s in iter_samples(tmp_path / "o") for v in s["videos"])


def test_default_partitions_split_evenly_over_common_worker_counts():
    from data_tools.builder import ROWS_PER_PARTITION, default_partitions

    assert default_partitions(0) == default_partitions(ROWS_PER_PARTITION) == 1
    assert default_partitions(ROWS_PER_PARTITION + 1) == 8
    assert default_partitions(8 * ROWS_PER_PARTITION) == 8
    assert default_partitions(8 * ROWS_PER_PARTITION + 1) == 16
    assert default_partitions(5_000_000) == 16
