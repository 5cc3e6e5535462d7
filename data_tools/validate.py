"""`videochat data validate`: check annotations (rows, videos present, decodable, times within duration)
and/or a built dataset's samples against the schema.

Problems are written as JSON lines (``--report``, default stdout summary only) with file/line or sample id
and a reason; the exit code is 1 when anything is wrong.
"""

from __future__ import annotations

import os
import sys
from collections import Counter

import orjson

from .annotations import normalize
from .sources import expand_inputs, plan_tasks, iter_task

DURATION_TOLERANCE_S = 0.5  # annotation end times may round up past the last frame


def check_sample(s) -> list[str]:
    """Schema problems of one sample (ARCHITECTURE.md §3 / INTERFACES.md); empty list when fine."""
    if not isinstance(s, dict):
        return ["not a JSON object"]
    errs = []
    for key, typ in (("id", str), ("format", str), ("videos", list), ("clips", list), ("messages", list)):
        if not isinstance(s.get(key), typ):
            errs.append(f"'{key}' missing or not a {typ.__name__}")
    if errs:
        return errs
    for i, v in enumerate(s["videos"]):
        if not isinstance(v, dict) or not isinstance(v.get("video_id"), str) or not isinstance(v.get("path"), str):
            errs.append(f"videos[{i}] needs string video_id and path")
    for i, c in enumerate(s["clips"]):
        if not isinstance(c, dict) or not isinstance(c.get("video"), int) or not 0 <= c["video"] < len(s["videos"]):
            errs.append(f"clips[{i}].video is not an index into videos")
            continue
        st, en = c.get("start"), c.get("end")
        if (st is None) != (en is None):
            errs.append(f"clips[{i}] has only one of start/end")
        elif st is not None and not (isinstance(st, (int, float)) and isinstance(en, (int, float)) and 0 <= st < en):
            errs.append(f"clips[{i}] needs 0 <= start < end (seconds), got {st!r}, {en!r}")
    seen = set()
    roles = []
    for i, m in enumerate(s["messages"]):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), list):
            errs.append(f"messages[{i}] needs role system/user/assistant and a content list")
            continue
        roles.append(m["role"])
        for p in m["content"]:
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str):
                continue
            if isinstance(p, dict) and p.get("type") == "clip" and isinstance(p.get("clip"), int):
                if not 0 <= p["clip"] < len(s["clips"]):
                    errs.append(f"messages[{i}] refers to clip {p['clip']} of {len(s['clips'])}")
                elif m["role"] != "user":
                    errs.append(f"messages[{i}]: clip in a {m['role']} message")
                elif p["clip"] in seen:
                    errs.append(f"clip {p['clip']} shown twice")
                seen.add(p["clip"])
                continue
            errs.append(f"messages[{i}] has a bad content part {str(p)[:60]}")
    body = roles[1:] if roles[:1] == ["system"] else roles
    if not body or body != ["user", "assistant"] * (len(body) // 2):
        errs.append("messages must alternate user/assistant (after an optional system) and end with assistant")
    return errs


def validate_annotations(patterns, videos=None, video_map=None, probe=False, emit=None) -> dict:
    """Check annotation rows, and (with videos) presence, decodability and times; ``emit(problem)`` per issue."""
    from tqdm import tqdm

    emit = emit or (lambda p: None)
    paths = expand_inputs(patterns)
    tasks = plan_tasks(paths)
    counts = Counter()
    max_end: dict[str, float] = {}
    line_base: dict[int, int] = {}
    for t in tqdm(tasks, desc="rows", unit="task"):
        base = line_base.get(t.file_idx, 0) if t.end >= 0 else 0
        lines = 0
        for raw, n in iter_task(t):
            lines += n
            if raw is None:
                continue
            table, rejects = normalize(raw)
            counts["rows"] += table.num_rows + len(rejects)
            counts["rows_rejected"] += len(rejects)
            for line, reason, _ in rejects:
                emit({"file": t.path, "line": base + line, "reason": reason})
            if videos or video_map:
                for v, e in zip(table.column("vid").to_pylist(), table.column("end_ms").to_pylist()):
                    if e > max_end.get(v, -1):
                        max_end[v] = e
        line_base[t.file_idx] = base + lines
    if videos or video_map:
        from .videos import read_map, scan_root

        index = {}
        for v, p, r in (read_map(video_map) if video_map else scan_root(videos)):
            if v not in index or r < index[v][1]:
                index[v] = (p, r)
        counts["videos"] = len(max_end)
        probe_fn = _probe_fn() if probe else None
        for v in tqdm(sorted(max_end), desc="videos", unit="video"):
            if v not in index:
                counts["videos_missing"] += 1
                emit({"video_id": v, "reason": f"video not found under {video_map or videos}"})
                continue
            if probe_fn is None:
                continue
            path = index[v][0] if os.path.isabs(index[v][0]) else os.path.join(videos or "", index[v][0])
            try:
                info = probe_fn(path)
            except Exception as e:  # VideoDecodeError and friends: report, go on
                counts["videos_undecodable"] += 1
                emit({"video_id": v, "path": path, "reason": f"not decodable: {e}"})
                continue
            end_s = max_end[v] / 1000.0
            if info.duration is not None and end_s > info.duration + DURATION_TOLERANCE_S:
                counts["videos_times_beyond_duration"] += 1
                emit({"video_id": v, "path": path,
                      "reason": f"clip ends at {end_s:.3f}s but the video lasts {info.duration:.3f}s"})
    return dict(counts)


def _probe_fn():
    try:
        from videochat.video import probe
    except ImportError as e:
        raise RuntimeError(f"--probe needs videochat.video.probe, which cannot be imported: {e}") from None
    return probe


def validate_dataset(dataset, videos=None, emit=None) -> dict:
    from .io import iter_samples

    emit = emit or (lambda p: None)
    counts = Counter()
    for s in iter_samples(dataset):
        counts["samples"] += 1
        errs = check_sample(s)
        if videos and not errs:
            for v in s["videos"]:
                p = v["path"] if os.path.isabs(v["path"]) else os.path.join(videos, v["path"])
                if not os.path.exists(p):
                    errs.append(f"video file missing: {p}")
        if errs:
            counts["samples_bad"] += 1
            emit({"id": s.get("id"), "reason": "; ".join(errs)})
    return dict(counts)


def register(sub) -> None:
    p = sub.add_parser("validate", help="check annotations (and videos) or a built dataset")
    p.add_argument("--annotations", nargs="+", metavar="GLOB", help="annotation files/globs to check")
    p.add_argument("--dataset", help="a built dataset folder to check against the sample schema")
    p.add_argument("--videos", help="video root: check every annotated video is present")
    p.add_argument("--video-map", help="id -> path mapping file instead of scanning --videos")
    p.add_argument("--probe", action="store_true", help="decode each video (videochat.video.probe); check times")
    p.add_argument("--report", help="write every problem as a JSON line here (default: stderr, first 20)")
    p.set_defaults(func=_main)


def _main(args) -> int:
    if not args.annotations and not args.dataset:
        print("error: give --annotations and/or --dataset", file=sys.stderr)
        return 2
    problems = 0
    out = open(args.report, "wb") if args.report else None

    def emit(p):
        nonlocal problems
        problems += 1
        if out is not None:
            out.write(orjson.dumps(p) + b"\n")
        elif problems <= 20:
            print(orjson.dumps(p).decode(), file=sys.stderr)

    result = {}
    try:
        if args.annotations:
            result["annotations"] = validate_annotations(args.annotations, args.videos, args.video_map, args.probe, emit)
        if args.dataset:
            result["dataset"] = validate_dataset(args.dataset, args.videos, emit)
    except (RuntimeError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if out is not None:
            out.close()
    result["problems"] = problems
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 1 if problems else 0
