"""Export our samples to VideoChat2-IT / LLaVA (ShareGPT) JSON, and import those into our schema.

- VideoChat2-IT: ``[{"video": path, "QA": [{"i": instruction, "q": question, "a": answer}], "start"?, "end"?}]``
  (one video per entry; clip boundaries become the entry's start/end span; a multi-video sample cannot be
  expressed and is reported as skipped, never dropped silently).
- LLaVA / ShareGPT: ``[{"id", "video": path | [paths], "conversations": [{"from": "human"|"gpt"|"system",
  "value": "<video>\\n..."}]}]``; each clip part becomes a ``<video>`` tag. We add a ``clips`` key (ignored
  by LLaVA loaders) so our exports re-import losslessly.

Imported whole-video clips (no start/end in the source) get ``"start": null, "end": null``: decode the whole
video (``videochat.video.read_clip(path, None, None)``).
"""

from __future__ import annotations

import os
import sys

import orjson

from .io import MANIFEST, REJECTS, iter_samples, write_atomic, write_samples

VIDEO_TAGS = ("<video>", "<image>")


def _text(content: list) -> str:
    return "\n".join(p["text"] for p in content if p.get("type") == "text")


def _turns(sample: dict):
    """(system text or None, [(user content, assistant text)])."""
    system, turns, pending = None, [], None
    for m in sample["messages"]:
        if m["role"] == "system":
            system = _text(m["content"])
        elif m["role"] == "user":
            pending = m["content"]
        elif m["role"] == "assistant" and pending is not None:
            turns.append((pending, _text(m["content"])))
            pending = None
    return system, turns


def to_videochat2(sample: dict) -> tuple[dict | None, str | None]:
    """One sample -> (VideoChat2-IT entry, None) or (None, reason it cannot be expressed)."""
    if len(sample["videos"]) != 1:
        return None, f"{len(sample['videos'])} videos in one sample (VideoChat2-IT entries hold one)"
    system, turns = _turns(sample)
    if not turns:
        return None, "no user/assistant turn"
    used = [p["clip"] for c, _ in turns for p in c if p.get("type") == "clip"]
    clips = [sample["clips"][i] for i in used] or sample["clips"]
    entry = {"video": sample["videos"][0]["path"],
             "QA": [{"i": system or "", "q": _text(c), "a": a} for c, a in turns]}
    starts = [c.get("start") for c in clips]
    ends = [c.get("end") for c in clips]
    if clips and None not in starts and None not in ends:
        entry["start"], entry["end"] = min(starts), max(ends)
    return entry, None


def to_llava(sample: dict) -> tuple[dict | None, str | None]:
    """One sample -> (LLaVA/ShareGPT entry, None); clip parts become ``<video>`` tags in order."""
    conv, order = [], []
    for m in sample["messages"]:
        parts = []
        for p in m["content"]:
            if p.get("type") == "clip":
                parts.append("<video>")
                order.append(p["clip"])
            else:
                parts.append(p["text"])
        role = {"user": "human", "assistant": "gpt", "system": "system"}[m["role"]]
        conv.append({"from": role, "value": "\n".join(parts)})
    paths = [v["path"] for v in sample["videos"]]
    return {"id": sample["id"], "video": paths[0] if len(paths) == 1 else paths, "conversations": conv,
            "clips": [sample["clips"][i] for i in order]}, None


def export(dataset, to: str, out: str, split: str | None = None) -> dict:
    """Write ``out`` (a JSON array) from a dataset; skipped samples go to ``out.skipped.jsonl`` with reasons."""
    conv = {"videochat2": to_videochat2, "llava": to_llava}.get(to)
    if conv is None:
        raise ValueError(f"unknown export format {to!r}; expected videochat2 or llava")
    n_in = n_out = 0
    skipped = bytearray()
    buf = bytearray(b"[")
    for s in iter_samples(dataset, split):
        n_in += 1
        entry, reason = conv(s)
        if entry is None:
            skipped += orjson.dumps({"id": s.get("id"), "reason": reason}) + b"\n"
            continue
        buf += (b",\n" if n_out else b"\n") + orjson.dumps(entry)
        n_out += 1
    buf += b"\n]\n"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    write_atomic(out, bytes(buf))
    n_skip = n_in - n_out
    if n_skip:
        write_atomic(out + ".skipped.jsonl", bytes(skipped))
    return {"samples_in": n_in, "exported": n_out, "skipped": n_skip}


def _load_entries(path: str):
    """(index, entry) from a JSON array file or JSONL; broken JSONL lines come back as (index, Exception)."""
    with open(path, "rb") as f:
        data = f.read()
    if data.lstrip()[:1] == b"[":
        items = orjson.loads(data)
        yield from enumerate(items, 1)
        return
    for i, line in enumerate(data.splitlines(), 1):
        if line.strip():
            try:
                yield i, orjson.loads(line)
            except orjson.JSONDecodeError as e:
                yield i, ValueError(f"invalid JSON: {e}")


def _clip(c: dict | None) -> dict:
    c = c or {}
    return {"video": int(c.get("video", 0)), "start": _num(c.get("start")), "end": _num(c.get("end"))}


def _num(x):
    if x is None:
        return None
    v = float(x)
    if v < 0:
        raise ValueError(f"negative time {x!r}")
    return v


def from_videochat2(e: dict, idx: int, src: str) -> dict:
    if not isinstance(e, dict) or not isinstance(e.get("video"), str) or not e["video"]:
        raise ValueError("entry needs a non-empty string 'video'")
    qa = e.get("QA")
    if not isinstance(qa, list) or not qa:
        raise ValueError("entry needs a non-empty 'QA' list")
    clip = _clip({"start": e.get("start"), "end": e.get("end")})
    if clip["start"] is not None and clip["end"] is not None and clip["end"] <= clip["start"]:
        raise ValueError("end <= start")
    msgs = []
    for t, turn in enumerate(qa):
        if not isinstance(turn, dict) or not isinstance(turn.get("a"), str) or not isinstance(turn.get("q", ""), str):
            raise ValueError(f"QA[{t}] needs string 'q' and 'a'")
        q = "\n".join(x for x in (turn.get("i") or "", turn.get("q") or "") if x)
        content = ([{"type": "clip", "clip": 0}] if t == 0 else []) + ([{"type": "text", "text": q}] if q else [])
        if not content:
            raise ValueError(f"QA[{t}] has an empty question")
        msgs += [{"role": "user", "content": content}, {"role": "assistant", "content": [{"type": "text", "text": turn["a"]}]}]
    vid = os.path.splitext(os.path.basename(e["video"]))[0]
    return {"id": f"{os.path.basename(src)}#{idx}", "format": "qa", "videos": [{"video_id": vid, "path": e["video"]}],
            "clips": [clip], "messages": msgs}


def from_llava(e: dict, idx: int, src: str) -> dict:
    if not isinstance(e, dict) or not isinstance(e.get("conversations"), list) or not e["conversations"]:
        raise ValueError("entry needs a non-empty 'conversations' list")
    paths = e.get("video")
    paths = [paths] if isinstance(paths, str) else paths
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
        raise ValueError("entry needs 'video': a path or a list of paths")
    given = e.get("clips")
    msgs, clips = [], []
    for t, turn in enumerate(e["conversations"]):
        role = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}.get(
            turn.get("from") if isinstance(turn, dict) else None)
        if role is None or not isinstance(turn.get("value"), str):
            raise ValueError(f"conversations[{t}] needs 'from' (human/gpt/system) and a string 'value'")
        content = []
        text = turn["value"]
        for tag in VIDEO_TAGS[1:]:
            text = text.replace(tag, VIDEO_TAGS[0])
        pieces = text.split(VIDEO_TAGS[0])
        for n, piece in enumerate(pieces):
            if n:
                if role != "user":
                    raise ValueError(f"conversations[{t}]: a video tag outside a human turn")
                k = len(clips)
                clips.append(_clip(given[k] if isinstance(given, list) and k < len(given)
                                   else {"video": min(k, len(paths) - 1)}))
                content.append({"type": "clip", "clip": k})
            if piece.strip("\n"):
                content.append({"type": "text", "text": piece.strip("\n")})
        msgs.append({"role": role, "content": content or [{"type": "text", "text": ""}]})
    if any(c["video"] >= len(paths) for c in clips):
        raise ValueError("a clip refers to a video index beyond 'video'")
    videos = [{"video_id": os.path.splitext(os.path.basename(p))[0], "path": p} for p in paths]
    return {"id": str(e.get("id", f"{os.path.basename(src)}#{idx}")), "format": "qa", "videos": videos,
            "clips": clips, "messages": msgs}


def import_(path: str, frm: str, out: str) -> dict:
    """Import a VideoChat2-IT / LLaVA JSON(L) file into ``out`` (train split), with manifest and rejects."""
    conv = {"videochat2": from_videochat2, "llava": from_llava}.get(frm)
    if conv is None:
        raise ValueError(f"unknown import format {frm!r}; expected videochat2 or llava")
    samples, rejects = [], bytearray()
    n_in = 0
    for idx, e in _load_entries(path):
        n_in += 1
        try:
            if isinstance(e, Exception):
                raise e
            samples.append(conv(e, idx, path))
        except (ValueError, TypeError, KeyError) as err:
            rejects += orjson.dumps({"file": path, "line": idx, "reason": str(err)}) + b"\n"
    os.makedirs(os.path.join(out, "train"), exist_ok=True)
    n = write_samples(os.path.join(out, "train", "shard-00000.jsonl"), samples)
    write_atomic(os.path.join(out, REJECTS), bytes(rejects))
    counts = {"rows_in": n_in, "rows_used": n, "rows_rejected": n_in - n, "rows_filtered": 0}
    manifest = {"schema_version": 1, "tool": "videochat data import", "args": {"path": path, "from": frm},
                "counts": counts, "samples": {"train": {"total": n, "qa": n}, "val": {"total": 0}},
                "shards": {"train": [{"file": "train/shard-00000.jsonl", "samples": n}], "val": []}}
    write_atomic(os.path.join(out, MANIFEST), orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    return counts


def register(sub) -> None:
    e = sub.add_parser("export", help="export a built dataset to VideoChat2-IT or LLaVA JSON")
    e.add_argument("dataset", help="dataset folder (or shard glob)")
    e.add_argument("--to", required=True, choices=["videochat2", "llava"])
    e.add_argument("--out", required=True, help="output .json file")
    e.add_argument("--split", choices=["train", "val"], default=None)
    e.set_defaults(func=_export)
    i = sub.add_parser("import", help="import a VideoChat2-IT or LLaVA JSON(L) file into our schema")
    i.add_argument("path")
    i.add_argument("--from", dest="frm", required=True, choices=["videochat2", "llava"])
    i.add_argument("--out", required=True, help="output dataset folder")
    i.set_defaults(func=_import)


def _export(args) -> int:
    r = export(args.dataset, args.to, args.out, args.split)
    print(orjson.dumps(r).decode())
    if r["skipped"]:
        print(f"{r['skipped']} samples could not be expressed; see {args.out}.skipped.jsonl", file=sys.stderr)
    return 0


def _import(args) -> int:
    r = import_(args.path, args.frm, args.out)
    print(orjson.dumps(r).decode())
    if r["rows_rejected"]:
        print(f"{r['rows_rejected']} entries rejected; see {os.path.join(args.out, REJECTS)}", file=sys.stderr)
    return 0
