"""Reading evaluation data files into plain records, whatever their layout.

`load_records(source)` accepts:
- a JSON file holding a list of records (MVBench's per-task layout), or `{"task": [records]}`;
- a JSONL file (one record per line; a line that is not a JSON object becomes a rejected record);
- a directory: every `*.json` / `*.jsonl` inside, in name order (MVBench's `json/` folder: one file per task);
- a list of dicts (the Python API).
Each record gets `_source` (file stem, or "records") and `_line` (1-based position in its file) and keeps
its own fields. Sample-schema rows (`messages` + `clips` + `videos`) and InternVid annotation rows
(`YoutubeID`, `Start_timestamp`, `End_timestamp`, `Caption`) are mapped to the flat layout
(`video`, `start`, `end`, `question`, `answer` / `caption`) by `flatten`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["BadRecord", "load_records", "flatten", "parse_time", "DataError"]


class DataError(ValueError):
    """The data file as a whole cannot be read (missing, not JSON, wrong top-level layout)."""


class BadRecord(ValueError):
    """One record that cannot be evaluated; the message is its reason (reported and counted, not raised)."""


def parse_time(value: Any, name: str) -> float | None:
    """Seconds from a number or an "HH:MM:SS(.mmm)" / "MM:SS" / "12.5" string; None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise BadRecord(f"{name} must be seconds or HH:MM:SS.mmm, got {value!r}")
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):
        try:
            parts = [float(p) for p in value.strip().split(":")]
        except ValueError:
            raise BadRecord(f"{name} must be seconds or HH:MM:SS.mmm, got {value!r}") from None
        if not 1 <= len(parts) <= 3:
            raise BadRecord(f"{name} must be seconds or HH:MM:SS.mmm, got {value!r}")
        out = 0.0
        for p in parts:
            out = out * 60 + p
    else:
        raise BadRecord(f"{name} must be seconds or HH:MM:SS.mmm, got {type(value).__name__}")
    if out != out or out < 0 or out == float("inf"):
        raise BadRecord(f"{name} must be a finite time >= 0, got {value!r}")
    return out


def _read_file(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    stem = path.name.split(".")[0]
    if path.suffix == ".jsonl":
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                rec = {"_error": f"line is not JSON ({e.msg} at column {e.colno})"}
            if not isinstance(rec, dict):
                rec = {"_error": f"line is a JSON {type(rec).__name__}, not an object"}
            rows.append({**rec, "_source": stem, "_line": i})
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()) and data:
        groups = data.items()  # {"task": [records]}
    elif isinstance(data, list):
        groups = [(stem, data)]
    else:
        raise DataError(f"{path}: expected a JSON list of records (or {{task: [records]}}), got {type(data).__name__}")
    rows = []
    for name, items in groups:
        for i, rec in enumerate(items, 1):
            if not isinstance(rec, dict):
                rec = {"_error": f"item is a JSON {type(rec).__name__}, not an object"}
            rows.append({**rec, "_source": str(name), "_line": i})
    return rows


def load_records(source: str | os.PathLike | list[dict]) -> list[dict]:
    """Records from a file, a directory of files or a list (see the module docstring); `DataError` when
    the source as a whole is unusable."""
    if isinstance(source, (list, tuple)):
        return [({**r} if isinstance(r, dict) else {"_error": f"record is a {type(r).__name__}, not a dict"})
                | {"_source": (r.get("_source") if isinstance(r, dict) else None) or "records", "_line": i}
                for i, r in enumerate(source, 1)]
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".json", ".jsonl"))
        if not files:
            raise DataError(f"{path}: no .json or .jsonl files in this directory")
        return [r for f in files for r in _read_file(f)]
    if not path.is_file():
        raise DataError(f"{path}: no such file or directory")
    return _read_file(path)


def _text_of(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content.strip()
    return " ".join(p.get("text", "").strip() for p in content or [] if isinstance(p, dict) and p.get("type") == "text")


def flatten(rec: dict) -> dict:
    """Map sample-schema and InternVid annotation rows to the flat evaluation layout; others unchanged."""
    if "_error" in rec:
        raise BadRecord(rec["_error"])
    if "messages" in rec and "clips" in rec and "videos" in rec and "video" not in rec:
        try:
            msgs = rec["messages"]
            user = next(m for m in msgs if m.get("role") == "user")
            assistant = next((m for m in msgs if m.get("role") == "assistant"), None)
            parts = user["content"] if isinstance(user["content"], list) else []
            clip_ids = [p["clip"] for p in parts if isinstance(p, dict) and p.get("type") == "clip"]
            if len(clip_ids) != 1:
                raise BadRecord(f"the first user turn must reference exactly one clip, found {len(clip_ids)}")
            clip = rec["clips"][clip_ids[0]]
            video = rec["videos"][clip["video"]]
        except (KeyError, IndexError, TypeError, StopIteration, AttributeError) as e:
            raise BadRecord(f"malformed sample-schema record ({type(e).__name__}: {e})") from None
        out = {k: v for k, v in rec.items() if k.startswith("_") or k == "id"}
        out.update(video=video.get("path") or video.get("video_id"), start=clip.get("start"), end=clip.get("end"),
                   question=_text_of(user))
        if assistant is not None:
            out["answer"] = _text_of(assistant)
        return out
    if "YoutubeID" in rec and "video" not in rec:
        out = {k: v for k, v in rec.items() if k.startswith("_") or k == "id"}
        out.update(video=str(rec["YoutubeID"]), start=rec.get("Start_timestamp"), end=rec.get("End_timestamp"),
                   caption=rec.get("Caption"))
        return out
    return rec
