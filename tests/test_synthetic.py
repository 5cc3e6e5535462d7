"""The synthetic world: determinism, InternVid layout, balanced held-out set, and captions that match the pixels."""

import collections
import json
import re

import av
import numpy as np
import pytest

from data_tools import synthetic as syn

SMALL = dict(train_videos=4, heldout_repeats=1, events_per_video=(3, 5), two_object_prob=0.4)


def decode_all(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def parse_ts(s: str) -> float:
    h, m, rest = s.split(":")
    return int(h) * 3600 + int(m) * 60 + float(rest)


def measure(frame: np.ndarray):
    """(mean colour, centroid (x, y), fill ratio of the bounding box) of the non-background pixels."""
    diff = np.abs(frame.astype(int) - np.array(syn.BACKGROUND)).sum(-1)
    mask = diff > 120
    ys, xs = np.nonzero(mask)
    assert len(xs) > 20, "no object visible"
    fill = mask.sum() / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
    return frame[mask].mean(0), np.array([xs.mean(), ys.mean()]), fill


def nearest_color(rgb, names):
    return min(names, key=lambda n: np.abs(np.array(syn.COLORS[n]) - rgb).sum())


def shape_from_fill(fill: float) -> str:
    # circle pi/4 = 0.785, square 1.0, triangle 0.5 (pixelised and codec-blurred, so wide margins)
    return "triangle" if fill < 0.65 else "circle" if fill < 0.92 else "square"


def motion_from(delta, size) -> str:
    dx, dy = delta
    if max(abs(dx), abs(dy)) < 0.05 * size:
        return "still"
    if abs(dx) > abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    cfg = syn.WorldConfig(seed=3, **SMALL)
    return out, cfg, syn.generate_world(out, cfg, progress=False)


def test_plan_is_deterministic_and_seeded():
    a = syn.plan_world(syn.WorldConfig(seed=1, **SMALL))
    b = syn.plan_world(syn.WorldConfig(seed=1, **SMALL))
    c = syn.plan_world(syn.WorldConfig(seed=2, **SMALL))
    assert a == b
    assert a != c


def test_generate_twice_is_identical(world, tmp_path):
    out, cfg, _ = world
    syn.generate_world(tmp_path, cfg, progress=False)
    for rel in ("annotations/train.jsonl", "annotations/heldout.jsonl", "heldout/mvbench.json",
                "heldout/qa.json", "qa/train/shard-00000.jsonl", "world.json"):
        assert (out / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel
    vid = "syn_train_00001.mp4"
    np.testing.assert_array_equal(decode_all(out / "videos" / vid), decode_all(tmp_path / "videos" / vid))


def test_internvid_layout(world):
    out, cfg, summary = world
    rows = [json.loads(line) for line in (out / "annotations" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == summary["train_events"] > 0
    by_video = collections.defaultdict(list)
    for r in rows:
        assert set(r) == {"YoutubeID", "Start_timestamp", "End_timestamp", "Caption"}
        for k in ("Start_timestamp", "End_timestamp"):
            assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d\d\d", r[k])
        t0, t1 = parse_ts(r["Start_timestamp"]), parse_ts(r["End_timestamp"])
        assert 2.0 <= t1 - t0 <= 4.0
        by_video[r["YoutubeID"]].append((t0, t1))
        assert (out / "videos" / f"{r['YoutubeID']}.mp4").is_file()
    for vid, spans in by_video.items():  # events tile the source video in order
        assert spans[0][0] == 0.0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert len(decode_all(out / "videos" / f"{vid}.mp4")) == round(spans[-1][1] * cfg.fps)
    assert syn.timestamp(3723.5) == "01:02:03.500"


def test_captions_match_pixels(world):
    """Decode the first and last frame of every event: colour, shape and motion agree with the caption."""
    out, cfg, _ = world
    train, heldout = syn.plan_world(cfg)
    rows = [json.loads(line) for f in ("train", "heldout")
            for line in (out / "annotations" / f"{f}.jsonl").read_text().splitlines()]
    captions = {(r["YoutubeID"], r["Start_timestamp"]): r["Caption"] for r in rows}
    checked = 0
    for vid, events in {**train, **heldout}.items():
        frames = decode_all(out / "videos" / f"{vid}.mp4")
        for e in events:
            caption = captions[(vid, syn.timestamp(e.first_frame / cfg.fps))]
            first, last = frames[e.first_frame], frames[e.first_frame + e.num_frames - 1]
            words = caption.split()
            if " and " in caption:  # two objects: both colours are on screen
                colors = {words[1], caption.split(" and ")[1].split()[1]}
                present = {n for n in cfg.colors
                           if (np.abs(first.astype(int) - syn.COLORS[n]).sum(-1) < 60).sum() > 20}
                assert colors <= present, (caption, present)
                continue
            color, shape = words[1], words[2]
            motion = "still" if words[-1] == "still" else words[-1]
            rgb, c0, fill = measure(first)
            _, c1, _ = measure(last)
            assert nearest_color(rgb, cfg.colors) == color, caption
            assert shape_from_fill(fill) == shape, (caption, fill)
            assert motion_from(c1 - c0, cfg.size) == motion, (caption, c1 - c0)
            checked += 1
    assert checked >= 60


def test_heldout_is_balanced_and_in_eval_formats(world):
    out, cfg, summary = world
    qs = [json.loads(line) for line in (out / "heldout" / "questions.jsonl").read_text().splitlines()]
    assert len(qs) == summary["heldout_questions"] == 3 * len(cfg.colors) * len(cfg.shapes) * len(cfg.motions)
    for attr in syn.ATTRIBUTES:
        counts = collections.Counter(q["answer"] for q in qs if q["attribute"] == attr)
        assert set(counts) == set(syn.candidates(attr, cfg)) and len(set(counts.values())) == 1, counts
    train_ids = {json.loads(line)["YoutubeID"] for line in (out / "annotations" / "train.jsonl").open()}
    assert not train_ids & {q["video"][:-4] for q in qs}, "held-out videos must be separate files"
    mv = json.loads((out / "heldout" / "mvbench.json").read_text())
    assert all(set(m) == {"task", "video", "question", "candidates", "answer", "start", "end"} and m["answer"] in
               m["candidates"] for m in mv)
    qa = json.loads((out / "heldout" / "qa.json").read_text())
    assert len(qa) == len(mv) and {"video", "question", "answer"} <= set(qa[0])
    assert summary["chance"] == {"color_acc": 0.25, "shape_acc": 1 / 3, "motion_acc": 0.2}


def test_training_qa_samples_follow_the_schema(world):
    out, cfg, _ = world
    samples = [json.loads(line) for line in (out / "qa" / "train" / "shard-00000.jsonl").open()]
    assert samples and len(samples) % 3 == 0
    s = samples[0]
    assert s["format"] == "qa" and s["messages"][0]["content"][0] == {"type": "clip", "clip": 0}
    assert s["messages"][1]["content"][0]["text"] in {*cfg.colors, *cfg.shapes, *cfg.motions}
    assert (out / "videos" / s["videos"][0]["path"]).is_file()


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="colors"):
        syn.WorldConfig(colors=["red", "mauve"])
    with pytest.raises(ValueError, match="size"):
        syn.WorldConfig(size=31)


def test_heldout_clips_are_single_events(world):
    out, cfg, _ = world
    rows = [json.loads(line) for line in (out / "heldout" / "clips.jsonl").read_text().splitlines()]
    assert len(rows) == cfg.heldout_clips
    for r in rows[:3]:
        frames = decode_all(out / r["clip"])
        assert 2 * cfg.fps <= len(frames) <= 4 * cfg.fps
        rgb, c0, fill = measure(frames[0])
        _, c1, _ = measure(frames[-1])
        assert nearest_color(rgb, cfg.colors) == r["color"]
        assert shape_from_fill(fill) == r["shape"]
        assert motion_from(c1 - c0, cfg.size) == r["motion"]
