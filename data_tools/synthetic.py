"""A seeded synthetic video world: coloured shapes that move, with exact captions and held-out questions.

The embedded default of the project (no weights or datasets can be downloaded): short events of one or two
objects (>= 3 shapes, >= 4 colours, >= 5 motions) rendered at low resolution, concatenated into longer
source videos written as real mp4 files, plus

- `annotations/{train,heldout}.jsonl` in the InternVid layout (`YoutubeID`, `Start_timestamp`,
  `End_timestamp` as "HH:MM:SS.mmm", `Caption`), videos under `videos/<YoutubeID>.mp4`;
- `qa/train/shard-00000.jsonl`: colour / shape / motion questions about training events, in the sample schema;
- `heldout/questions.jsonl` (+ the same as samples in `heldout/samples/`), `heldout/mvbench.json` and
  `heldout/qa.json` (the evaluator's formats) about separate held-out videos; a few held-out events also as
  stand-alone clips `heldout/clips/*.mp4` (listed with their attributes in `heldout/clips.jsonl`).

Held-out events enumerate every (colour, shape, motion) combination equally often, so a model that answers
from the question text alone scores exactly chance. Everything is a pure function of `WorldConfig`
(the same config writes byte-identical annotations and frames).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 50),
    "purple": (150, 60, 200),
    "white": (235, 235, 235),
}
"""Palette (RGB). Saturated, far apart, so colour survives yuv420p chroma subsampling."""
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("left", "right", "up", "down", "still")
MOTION_PHRASE = {"left": "moves left", "right": "moves right", "up": "moves up", "down": "moves down",
                 "still": "stays still"}
BACKGROUND = (24, 24, 24)
QUESTIONS = {
    "color": "What colour is the shape?",
    "shape": "What shape is it?",
    "motion": "Which way does it move?",
}
"""One fixed question per attribute: the wording carries no information about the answer."""
ATTRIBUTES = tuple(QUESTIONS)


@dataclass
class WorldConfig:
    """Sizes and seed of a synthetic world (`videochat demo` picks these per mode)."""

    seed: int = 0
    """Seed of everything random: layout, attributes, positions."""
    size: int = 64
    """Frame side in pixels (square frames)."""
    fps: int = 8
    """Frames per second of the written videos."""
    colors: list[str] = field(default_factory=lambda: ["red", "green", "blue", "yellow"])
    """Colours used (names from `COLORS`)."""
    shapes: list[str] = field(default_factory=lambda: list(SHAPES))
    """Shapes used (from `SHAPES`)."""
    motions: list[str] = field(default_factory=lambda: list(MOTIONS))
    """Motions used (from `MOTIONS`)."""
    train_videos: int = 60
    """Training source videos."""
    heldout_repeats: int = 1
    """Held-out events = every (colour, shape, motion) combination this many times."""
    events_per_video: tuple[int, int] = (4, 8)
    """Events per source video (inclusive range)."""
    event_seconds: tuple[float, float] = (2.0, 4.0)
    """Event duration range; durations are whole multiples of 0.5 s."""
    two_object_prob: float = 0.25
    """Probability that a training event shows two objects (held-out events always show one)."""
    radius: float = 0.2
    """Object radius as a fraction of the frame side (0.2: a 13 px object in the demo's 32 px ViCLIP frames;
    at 0.14 circles and squares were hard to tell apart at that size)."""
    travel: float = 0.4
    """Distance a moving object travels during its event, as a fraction of the frame side."""
    codec: str = "libx264"
    """Video codec (libx264 or mpeg4)."""
    heldout_clips: int = 12
    """Held-out events also written as stand-alone short mp4s (`heldout/clips/`) to upload in the chat app."""

    def __post_init__(self) -> None:
        for name, pool, valid in (("colors", self.colors, COLORS), ("shapes", self.shapes, SHAPES),
                                  ("motions", self.motions, MOTIONS)):
            bad = [v for v in pool if v not in valid]
            if bad or len(set(pool)) != len(pool) or len(pool) < 2:
                raise ValueError(f"WorldConfig.{name}={pool!r}: need >= 2 distinct values from {list(valid)}")
        if self.size < 32 or self.size % 2:
            raise ValueError(f"WorldConfig.size={self.size}: need an even side >= 32")


@dataclass
class Obj:
    """One object of an event: attributes and its straight path (pixel centres at the first/last frame)."""

    color: str
    shape: str
    motion: str
    start: tuple[float, float]
    end: tuple[float, float]

    @property
    def phrase(self) -> str:
        return f"a {self.color} {self.shape} {MOTION_PHRASE[self.motion]}"


@dataclass
class Event:
    """A clip of a source video: frames [first_frame, first_frame + num_frames)."""

    video_id: str
    first_frame: int
    num_frames: int
    objects: list[Obj]

    @property
    def caption(self) -> str:
        return " and ".join(o.phrase for o in self.objects)

    def times(self, fps: int) -> tuple[float, float]:
        return self.first_frame / fps, (self.first_frame + self.num_frames) / fps


def timestamp(seconds: float) -> str:
    """Seconds -> "HH:MM:SS.mmm" (the InternVid annotation format)."""
    ms = int(round(seconds * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def parse_timestamp(s: str) -> float:
    """"HH:MM:SS.mmm" -> seconds (inverse of `timestamp`)."""
    h, m, rest = s.split(":")
    return int(h) * 3600 + int(m) * 60 + float(rest)


# --------------------------------------------------------------------------------------------------
# Planning (pure, seeded)
# --------------------------------------------------------------------------------------------------


def _path(rng: np.random.Generator, cfg: WorldConfig, motion: str) -> tuple[tuple[float, float], tuple[float, float]]:
    r = cfg.radius * cfg.size
    lo, hi = r + 1.0, cfg.size - 1.0 - r
    d = cfg.travel * cfg.size
    dx, dy = {"left": (-d, 0), "right": (d, 0), "up": (0, -d), "down": (0, d), "still": (0, 0)}[motion]
    x0 = rng.uniform(max(lo, lo - dx), min(hi, hi - dx))
    y0 = rng.uniform(max(lo, lo - dy), min(hi, hi - dy))
    return (x0, y0), (x0 + dx, y0 + dy)


def _swept_box(o: Obj, r: float) -> tuple[float, float, float, float]:
    xs, ys = (o.start[0], o.end[0]), (o.start[1], o.end[1])
    return min(xs) - r, min(ys) - r, max(xs) + r, max(ys) + r


def _overlap(a: tuple, b: tuple) -> bool:
    return not (a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1])


def _objects(rng: np.random.Generator, cfg: WorldConfig, attrs: list[tuple[str, str, str]]) -> list[Obj] | None:
    r = cfg.radius * cfg.size + 1.0
    objs: list[Obj] = []
    for color, shape, motion in attrs:
        for _ in range(50):  # two objects must not touch anywhere along their paths
            o = Obj(color, shape, motion, *_path(rng, cfg, motion))
            if not any(_overlap(_swept_box(o, r), _swept_box(p, r)) for p in objs):
                objs.append(o)
                break
        else:
            return None
    return objs


def _duration(rng: np.random.Generator, cfg: WorldConfig) -> int:
    half = int(round(cfg.fps / 2))  # durations in whole half-seconds keep timestamps exact at 8 fps
    lo, hi = (int(round(s * 2)) for s in cfg.event_seconds)
    return int(rng.integers(lo, hi + 1)) * half


def plan_world(cfg: WorldConfig) -> tuple[dict[str, list[Event]], dict[str, list[Event]]]:
    """(train, heldout): video id -> its events in temporal order. Deterministic in `cfg`."""
    rng = np.random.default_rng(cfg.seed)
    train: dict[str, list[Event]] = {}
    for v in range(cfg.train_videos):
        vid, frame, events = f"syn_train_{v:05d}", 0, []
        for _ in range(int(rng.integers(cfg.events_per_video[0], cfg.events_per_video[1] + 1))):
            objs = None
            while objs is None:
                n = 2 if rng.random() < cfg.two_object_prob else 1
                colors = rng.choice(cfg.colors, n, replace=False)
                shapes = rng.choice(cfg.shapes, n, replace=n > len(cfg.shapes))
                motions = rng.choice(cfg.motions, n)
                objs = _objects(rng, cfg, [(str(c), str(s), str(m)) for c, s, m in zip(colors, shapes, motions)])
            events.append(Event(vid, frame, _duration(rng, cfg), objs))
            frame += events[-1].num_frames
        train[vid] = events
    # held-out: every combination equally often (balanced answers), shuffled, one object per event
    combos = list(itertools.product(cfg.colors, cfg.shapes, cfg.motions)) * cfg.heldout_repeats
    order = rng.permutation(len(combos))
    heldout: dict[str, list[Event]] = {}
    i, v = 0, 0
    while i < len(combos):
        vid, frame, events = f"syn_heldout_{v:05d}", 0, []
        for _ in range(int(rng.integers(cfg.events_per_video[0], cfg.events_per_video[1] + 1))):
            if i >= len(combos):
                break
            objs = _objects(rng, cfg, [combos[order[i]]])
            events.append(Event(vid, frame, _duration(rng, cfg), objs))  # type: ignore[arg-type]
            frame += events[-1].num_frames
            i += 1
        heldout[vid] = events
        v += 1
    return train, heldout


# --------------------------------------------------------------------------------------------------
# Rendering and writing
# --------------------------------------------------------------------------------------------------


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """Boolean [size, size] mask of a shape centred at pixel (cx, cy) with radius r."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    if shape == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    if shape == "square":
        h = 0.85 * r
        return (np.abs(xx - cx) <= h) & (np.abs(yy - cy) <= h)
    if shape == "triangle":  # apex up, base at cy + r, half-width r at the base
        return (yy >= cy - r) & (yy <= cy + r) & (np.abs(xx - cx) <= (yy - (cy - r)) / 2)
    raise ValueError(f"unknown shape {shape!r}")


def render_event(event: Event, cfg: WorldConfig) -> np.ndarray:
    """uint8 [num_frames, size, size, 3]; objects move linearly from `start` to `end`."""
    n, s, r = event.num_frames, cfg.size, cfg.radius * cfg.size
    frames = np.empty((n, s, s, 3), dtype=np.uint8)
    frames[:] = BACKGROUND
    for j in range(n):
        a = j / max(n - 1, 1)
        for o in event.objects:
            cx = o.start[0] + a * (o.end[0] - o.start[0])
            cy = o.start[1] + a * (o.end[1] - o.start[1])
            frames[j][shape_mask(o.shape, cx, cy, r, s)] = COLORS[o.color]
    return frames


def write_video(path: str | Path, frames_iter, size: int, fps: int, codec: str = "libx264") -> None:
    """Encode uint8 [H, W, 3] frames to an mp4 with PyAV (fast settings; a keyframe every second)."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        stream.gop_size = fps
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "12"}
        else:
            stream.bit_rate = 2_000_000
        for frame in frames_iter:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _annotation(e: Event, cfg: WorldConfig) -> dict:
    t0, t1 = e.times(cfg.fps)
    return {"YoutubeID": e.video_id, "Start_timestamp": timestamp(t0), "End_timestamp": timestamp(t1),
            "Caption": e.caption}


def answer(obj: Obj, attribute: str) -> str:
    """The gold answer word of `attribute` (color | shape | motion) for an object."""
    return {"color": obj.color, "shape": obj.shape, "motion": obj.motion}[attribute]


def qa_sample(e: Event, attribute: str, cfg: WorldConfig, sample_id: str) -> dict:
    """A one-turn question about a single-object event, in the sample schema."""
    t0, t1 = e.times(cfg.fps)
    return {"id": sample_id, "format": "qa", "videos": [{"video_id": e.video_id, "path": f"{e.video_id}.mp4"}],
            "clips": [{"video": 0, "start": t0, "end": t1}],
            "messages": [{"role": "user", "content": [{"type": "clip", "clip": 0},
                                                      {"type": "text", "text": QUESTIONS[attribute]}]},
                         {"role": "assistant", "content": [{"type": "text", "text": answer(e.objects[0], attribute)}]}]}


def candidates(attribute: str, cfg: WorldConfig) -> list[str]:
    return {"color": list(cfg.colors), "shape": list(cfg.shapes), "motion": list(cfg.motions)}[attribute]


def chance(cfg: WorldConfig) -> dict[str, float]:
    """Accuracy of a constant answer on the balanced held-out set, per attribute (`<attr>_acc`)."""
    return {f"{a}_acc": 1.0 / len(candidates(a, cfg)) for a in ATTRIBUTES}


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_jsonl(path: Path, rows) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            n += 1
    return n


def generate_world(out_dir: str | Path, cfg: WorldConfig | None = None, progress: bool = True) -> dict:
    """Write the whole world under `out_dir`; returns the summary also saved as `world.json`."""
    from tqdm import tqdm

    cfg = cfg or WorldConfig()
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    train, heldout = plan_world(cfg)
    videos = {**train, **heldout}
    for vid, events in tqdm(videos.items(), desc="world: videos", unit="video", disable=not progress):
        write_video(out / "videos" / f"{vid}.mp4", (f for e in events for f in render_event(e, cfg)),
                    cfg.size, cfg.fps, cfg.codec)
    n_train = _write_jsonl(out / "annotations" / "train.jsonl",
                           (_annotation(e, cfg) for es in train.values() for e in es))
    n_held = _write_jsonl(out / "annotations" / "heldout.jsonl",
                          (_annotation(e, cfg) for es in heldout.values() for e in es))
    # training QA: single-object events only (with two objects "the shape" would be ambiguous)
    singles = [e for es in train.values() for e in es if len(e.objects) == 1]
    n_qa = _write_jsonl(out / "qa" / "train" / "shard-00000.jsonl",
                        (qa_sample(e, a, cfg, f"qa-{e.video_id}-{e.first_frame}-{a}") for e in singles
                         for a in ATTRIBUTES))
    held_events = [e for es in heldout.values() for e in es]
    questions = []
    for e in held_events:
        t0, t1 = e.times(cfg.fps)
        for a in ATTRIBUTES:
            questions.append({"id": f"{e.video_id}-{e.first_frame}-{a}", "video": f"{e.video_id}.mp4",
                              "start": t0, "end": t1, "attribute": a, "question": QUESTIONS[a],
                              "answer": answer(e.objects[0], a), "candidates": candidates(a, cfg),
                              "caption": e.caption})
    _write_jsonl(out / "heldout" / "questions.jsonl", questions)
    clips = []
    for e in held_events[: cfg.heldout_clips]:  # one event per file: "the shape" is unambiguous in a chat
        name = f"{e.video_id}_{e.first_frame:05d}.mp4"
        write_video(_mkdir(out / "heldout" / "clips") / name, render_event(e, cfg), cfg.size, cfg.fps, cfg.codec)
        clips.append({"clip": f"heldout/clips/{name}", "caption": e.caption,
                      **{a: answer(e.objects[0], a) for a in ATTRIBUTES}})
    _write_jsonl(out / "heldout" / "clips.jsonl", clips)
    _write_jsonl(out / "heldout" / "samples" / "val" / "shard-00000.jsonl",
                 (qa_sample(e, a, cfg, f"{e.video_id}-{e.first_frame}-{a}") for e in held_events for a in ATTRIBUTES))
    # "task": the evaluator reports accuracy per task, i.e. per attribute
    mvbench = [{"task": q["attribute"], **{k: q[k] for k in ("video", "question", "candidates", "answer", "start", "end")}}
               for q in questions]
    (out / "heldout" / "mvbench.json").write_text(json.dumps(mvbench, indent=1) + "\n", encoding="utf-8")
    openqa = [{"task": q["attribute"], **{k: q[k] for k in ("video", "question", "answer", "start", "end")}}
              for q in questions]
    (out / "heldout" / "qa.json").write_text(json.dumps(openqa, indent=1) + "\n", encoding="utf-8")
    summary = {"config": json.loads(json.dumps(dataclasses.asdict(cfg))), "videos_dir": "videos",
               "train_videos": len(train), "train_events": n_train, "train_qa": n_qa,
               "heldout_videos": len(heldout), "heldout_events": n_held, "heldout_questions": len(questions),
               "seconds": sum(e.num_frames for es in videos.values() for e in es) / cfg.fps,
               "chance": chance(cfg)}
    (out / "world.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return summary


def world_text(cfg: WorldConfig) -> list[str]:
    """Every sentence the world can produce (captions, questions, answers): LLM / tokenizer pretraining text."""
    phrases = [Obj(c, s, m, (0, 0), (0, 0)).phrase for c in cfg.colors for s in cfg.shapes for m in cfg.motions]
    lines = list(phrases) + [f"{a} and {b}" for a, b in zip(phrases, phrases[7:] + phrases[:7])]
    lines += list(QUESTIONS.values()) + [w for a in ATTRIBUTES for w in candidates(a, cfg)]
    return lines
