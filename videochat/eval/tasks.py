"""What the three tasks share: the `Item` an evaluation record becomes, the `Task` interface, the registry.

A task turns a flat record (`videochat.eval.records.flatten`) into an `Item` (the prompt text after the
clip, an optional answer priming, the gold answer) or raises `BadRecord`; `score(item, reply)` gives one
sample's fields (`prediction`, `correct`, ...); `aggregate(rows)` gives the metrics, overall and per group
(the task file, or the record's own `task` / `task_type` field).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from videochat.eval.records import BadRecord, parse_time

__all__ = ["Item", "Task", "get_task", "TASK_NAMES", "record_key", "fingerprint", "common_fields"]

TASK_NAMES = ("mvbench", "qa", "caption")


@dataclass
class Item:
    """One evaluable record."""

    key: str
    """Stable identity in the predictions file (record `id`, else `<file stem>:<line>`)."""
    group: str
    """Sub-task the record is scored under (MVBench task file, or the record's `task` field)."""
    video: str
    """Video path as given (relative to the video root, or absolute)."""
    start: float | None
    """Window start in seconds (None: the video's start)."""
    end: float | None
    """Window end in seconds (None: the video's end)."""
    question: str
    """The question as shown in per-sample records."""
    prompt: str
    """User text placed after the clip in the prompt."""
    gold: Any
    """Gold answer: a string, or a list of acceptable strings / reference captions."""
    answer_prefix: str | None = None
    """Text that primes the reply (MVBench "Best option:("); the model continues after it."""
    reply_prefix: str = ""
    """Prepended to the generated text before scoring (MVBench: "(", the end of the priming)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Task-specific fields (MVBench: `candidates`, `gold_index`)."""
    fingerprint: str = ""
    """Hash of the record's content: a resumed run refuses predictions made for different data."""


def record_key(rec: dict) -> str:
    rid = rec.get("id")
    if isinstance(rid, (str, int)) and not isinstance(rid, bool) and str(rid).strip():
        return f"{rec.get('_source', 'records')}/{rid}"
    return f"{rec.get('_source', 'records')}:{rec.get('_line', 0)}"


def fingerprint(rec: dict) -> str:
    body = {k: v for k, v in rec.items() if k not in ("_line",)}
    return hashlib.sha1(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def common_fields(rec: dict) -> dict[str, Any]:
    """key, group, video, start, end, fingerprint of a flat record (raises `BadRecord`)."""
    video = rec.get("video")
    if not isinstance(video, str) or not video.strip():
        raise BadRecord("missing 'video' (a path relative to the video root)")
    start = parse_time(rec.get("start"), "start")
    end = parse_time(rec.get("end"), "end")
    if start is not None and end is not None and end <= start:
        raise BadRecord(f"end {end:g}s is not after start {start:g}s")
    group = rec.get("task") or rec.get("task_type") or rec.get("_source") or "records"
    return {"key": record_key(rec), "group": str(group), "video": video.strip(), "start": start, "end": end,
            "fingerprint": fingerprint(rec)}


def text_field(rec: dict, *names: str, required: bool = True) -> str | None:
    for n in names:
        v = rec.get(n)
        if isinstance(v, str) and v.strip():
            return v.strip()
    if required:
        raise BadRecord(f"missing or empty {' / '.join(repr(n) for n in names)}")
    return None


class Task:
    """Interface of a task (see the module docstring)."""

    name = ""
    max_new_tokens = 32
    """Default generation budget."""
    system_prompt: str | None = None
    """Default system prompt (None: the model config's)."""
    headline = ""
    """The metric `compare` and the chart lead with."""

    def parse(self, rec: dict) -> Item:
        raise NotImplementedError

    def score(self, item: Item, reply: str) -> dict[str, Any]:
        raise NotImplementedError

    def aggregate(self, rows: list[dict]) -> dict[str, Any]:
        raise NotImplementedError


def get_task(name: str, **options: Any) -> Task:
    """A task by name (`mvbench`, `qa`, `caption`) with its options."""
    if name == "mvbench":
        from videochat.eval.mvbench import MVBenchTask

        return MVBenchTask(**options)
    if name == "qa":
        from videochat.eval.qa import QATask

        return QATask(**options)
    if name == "caption":
        from videochat.eval.caption import CaptionTask

        return CaptionTask(**options)
    raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASK_NAMES)}")
