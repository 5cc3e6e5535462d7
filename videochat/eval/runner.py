"""The evaluation loop: decode clips, render prompts, batched greedy generation, resumable predictions.

    results = evaluate(model, "mvbench", "heldout/mvbench.json", video_root="videos", out_dir="eval/mvbench")

Every record ends up in `OUT/predictions.jsonl` as one line: `status: "ok"` with its prediction and score,
or `status: "rejected"` with a reason (missing or undecodable video, malformed record, prompt too long).
Lines are flushed and fsync'd batch by batch, so a killed run loses at most the batch in flight: run the
same command again and the records already predicted are read back, not recomputed (a half-written last
line is dropped). `OUT/run.json` pins the settings that change predictions; resuming with different
settings or different data is refused (use `overwrite=True` / `--overwrite`, or another `--out`).
Rejected records are retried on a resume (the file may have been fixed). Counts: in = scored + rejected.

Generation: prompts rendered by `videochat.conversation.render(..., add_generation_prompt=True,
answer_prefix=...)`, clips sampled with `read_clip(..., sampling="middle")` and frame times stated as in
training; batches left-padded; greedy. The next batch is decoded in threads while the current one generates.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from videochat.eval.records import BadRecord, DataError, flatten, load_records
from videochat.eval.store import (
    PREDICTIONS,
    RUN_FILE,
    EvalError,
    check_run,
    model_fingerprint,
    resume,
    write_lines,
)
from videochat.eval.tasks import Item, Task, get_task, record_key

log = logging.getLogger(__name__)

__all__ = ["evaluate", "EvalError", "resolve_video", "video_roots", "PREDICTIONS", "RUN_FILE", "VIDEO_EXTENSIONS"]

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".gif", ".flv")


def video_roots(video_root: str | os.PathLike | dict | None) -> dict[str, str] | str | None:
    """`video_root` as given, or, for a `.json` file, its `{group: folder}` mapping (MVBench keeps each
    task's videos in another dataset's folder; relative folders are taken from the mapping file's folder;
    the key "*" is the fallback)."""
    if isinstance(video_root, dict):
        return {str(k): os.fspath(v) for k, v in video_root.items()}
    if video_root is not None and str(video_root).endswith(".json") and os.path.isfile(video_root):
        try:
            data = json.loads(Path(video_root).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise EvalError(f"{video_root}: cannot read the video folder mapping ({e})") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise EvalError(f"{video_root}: expected a JSON object {{task: video folder}}")
        base = Path(video_root).resolve().parent
        return {str(k): str(base / v) for k, v in data.items()}
    return None if video_root is None else os.fspath(video_root)


def resolve_video(root: str | os.PathLike | dict | None, video: str, group: str | None = None) -> str:
    """`root/video` (`root[group]` / `root["*"]` for a mapping), or `video` when absolute or without a root;
    an id without extension (InternVid rows) gets the first existing `root/<id><ext>`. A missing file is
    returned as is (decoding then reports it)."""
    if isinstance(root, dict):
        root = root.get(group or "", root.get("*"))
    path = video if root is None or os.path.isabs(video) else os.path.join(os.fspath(root), video)
    if os.path.exists(path) or Path(path).suffix.lower() in VIDEO_EXTENSIONS:
        return path
    for ext in VIDEO_EXTENSIONS:
        if os.path.exists(path + ext):
            return path + ext
    return path


@dataclass
class _Prepared:
    item: Item
    input_ids: list[int]
    frames: torch.Tensor  # [T, 3, S, S]
    stop_strings: list[str]


def _reject_row(key: str, group: str, video: Any, reason: str, fp: str = "") -> dict[str, Any]:
    return {"key": key, "group": group, "video": video, "status": "rejected", "reason": reason, "fingerprint": fp}


class _Run:
    def __init__(self, model, task: Task, video_root, *, batch_size: int, max_new_tokens: int,
                 num_frames: int, system_prompt: str | None, workers: int, progress: bool):
        from videochat.video import FrameTransform

        self.model, self.task, self.root = model, task, video_root
        self.batch_size, self.max_new_tokens, self.num_frames = batch_size, max_new_tokens, num_frames
        self.system_prompt, self.workers, self.progress = system_prompt, workers, progress
        self.cfg = model.config
        self.tok = model.tokenizer
        if self.tok is None:
            raise EvalError("the model has no tokenizer; load it with VideoChatModel.from_pretrained")
        self.transform = FrameTransform.from_config(self.cfg)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        self.pad_id = 0 if pad is None else int(pad)
        context = getattr(getattr(model.llm, "config", None), "max_position_embeddings", None)
        self.max_length = context - max_new_tokens if context and context > max_new_tokens else None
        vis = model.viclip.vision_encoder.conv1.weight
        self.vision_device, self.vision_dtype = vis.device, vis.dtype
        self.ids_device = model.llm.get_input_embeddings().weight.device
        # one tokenizer shared by the decode threads and the main thread: fast tokenizers may raise
        # "Already borrowed" when used concurrently, so tokenizer calls are serialised (they are cheap)
        self.tok_lock = threading.Lock()

    # ------------------------------------------------------------------ one record -> prompt + frames
    def prepare(self, item: Item) -> _Prepared | dict[str, Any]:
        from videochat.conversation import ConversationError, render
        from videochat.video import VideoDecodeError, read_clip

        try:
            clip = read_clip(resolve_video(self.root, item.video, item.group), item.start, item.end, self.num_frames,
                             sampling="middle")
            times = {0: clip.relative_times()} if self.cfg.frame_times_in_prompt else None
            messages = [{"role": "user", "content": [{"type": "clip", "clip": 0}, {"type": "text", "text": item.prompt}]}]
            with self.tok_lock:
                r = render(messages, self.tok, template=self.cfg.template, tokens_per_clip=self.cfg.tokens_per_clip,
                           placeholder_token=self.cfg.placeholder_token, clip_times=times,
                           system_prompt=self.system_prompt or None, add_generation_prompt=True,
                           max_length=self.max_length, answer_prefix=item.answer_prefix)
            frames = torch.as_tensor(self.transform(clip.frames))
        except VideoDecodeError as e:
            return _reject_row(item.key, item.group, item.video, f"video: {e.reason}", item.fingerprint)
        except ConversationError as e:
            return _reject_row(item.key, item.group, item.video, f"prompt: {e}", item.fingerprint)
        except (OSError, ValueError, RuntimeError, MemoryError) as e:  # decoders raise their own types on odd files
            return _reject_row(item.key, item.group, item.video, f"{type(e).__name__}: {str(e)[:300]}",
                               item.fingerprint)
        return _Prepared(item, r.input_ids, frames, r.stop_strings)

    # ------------------------------------------------------------------ a batch -> replies
    @torch.inference_mode()
    def generate(self, batch: list[_Prepared]) -> list[str]:
        from videochat.conversation import strip_stop

        length = max(len(p.input_ids) for p in batch)
        ids = torch.full((len(batch), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        for i, p in enumerate(batch):  # left padding: every prompt ends where generation starts
            ids[i, length - len(p.input_ids):] = torch.tensor(p.input_ids, dtype=torch.long)
            mask[i, length - len(p.input_ids):] = 1
        frames = torch.stack([p.frames for p in batch]).to(self.vision_device, self.vision_dtype)  # [B, T, 3, S, S]
        embeds = self.model.encode_clips(frames)  # [B, Q, D]: one clip per prompt, batch-major
        out = self.model.generate(ids.to(self.ids_device), attention_mask=mask.to(self.ids_device),
                                  clip_embeds=embeds, max_new_tokens=self.max_new_tokens, do_sample=False,
                                  num_beams=1, temperature=None, top_p=None, top_k=None)
        with self.tok_lock:
            texts = self.tok.batch_decode(out, skip_special_tokens=True)
        return [strip_stop(t, p.stop_strings) for t, p in zip(texts, batch)]

    def row(self, p: _Prepared, generated: str) -> dict[str, Any]:
        it = p.item
        prediction = (it.reply_prefix + generated) if it.reply_prefix else generated
        row = {"key": it.key, "group": it.group, "video": it.video, "start": it.start, "end": it.end,
               "question": it.question, "answer": it.gold, "prediction": prediction, "generated": generated}
        row.update(self.task.score(it, prediction))
        row.update(status="ok", fingerprint=it.fingerprint)
        return row

    def run(self, items: list[Item], write) -> int:
        """Predict `items`, calling `write(rows)` after every batch; returns how many were generated."""
        from tqdm import tqdm

        batches = [items[i:i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        done = right = total = 0
        bar = tqdm(total=len(items), desc=f"eval {self.task.name}", unit="sample", disable=not self.progress)
        with ThreadPoolExecutor(max_workers=max(1, self.workers), thread_name_prefix="eval-decode") as pool:
            nxt = [pool.submit(self.prepare, it) for it in batches[0]] if batches else []
            for b in range(len(batches)):
                cur = [f.result() for f in nxt]
                nxt = [pool.submit(self.prepare, it) for it in batches[b + 1]] if b + 1 < len(batches) else []
                good = [p for p in cur if isinstance(p, _Prepared)]
                rows = [p for p in cur if isinstance(p, dict)]
                if good:
                    rows += [self.row(p, g) for p, g in zip(good, self.generate(good))]
                    done += len(good)
                write(rows)
                scored = [r["correct"] for r in rows if isinstance(r.get("correct"), bool)]
                right += sum(scored)
                total += len(scored)
                bar.update(len(cur))
                if total:
                    bar.set_postfix(correct=f"{100 * right / total:.1f}%", refresh=False)
        bar.close()
        return done


def _load_model(model, device, dtype):
    if isinstance(model, (str, os.PathLike)):
        from videochat.model import VideoChatModel

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype is None and torch.device(device).type == "cuda":
            dtype = "bfloat16"
        try:
            return VideoChatModel.from_pretrained(model, device=device, dtype=dtype), os.fspath(model)
        except (FileNotFoundError, ValueError) as e:
            raise EvalError(f"cannot load the model from {model}: {e}") from None
    return model, getattr(model, "name_or_path", type(model).__name__)


def evaluate(
    model: Any,
    task: str | Task,
    records: str | os.PathLike | list[dict],
    video_root: str | os.PathLike | dict | None,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    num_frames: int | None = None,
    system_prompt: str | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    workers: int = 2,
    progress: bool = True,
    device: str | None = None,
    dtype: str | None = None,
    task_options: dict[str, Any] | None = None,
    report: bool = True,
) -> dict[str, Any]:
    """Evaluate `model` (a `VideoChatModel` or a folder for `from_pretrained`) on `records` (a file, a
    directory of task files, or a list of dicts) whose videos live under `video_root` (a folder, or
    `{task: folder}` as a dict or a `.json` file, "*" the fallback); write
    `out_dir/{predictions.jsonl, run.json, results.json, results.md, results.png}` and return the results
    dict (as `results.json`). `max_new_tokens` / `system_prompt` default to the task's (MVBench: 16 and the
    reference system prompt; qa / caption: the model config's system prompt); `system_prompt=""` uses none.
    `num_frames` defaults to the model config's. `limit` evaluates the first N records only. Raises
    `EvalError` (bad source, conflicting resume) and `DataError`; bad records are reported, never raised.
    """
    t0 = time.time()
    task_obj = get_task(task, **(task_options or {})) if isinstance(task, str) else task
    if batch_size < 1:
        raise EvalError(f"batch_size must be >= 1, got {batch_size}")
    try:
        raw = load_records(records)
    except DataError as e:
        raise EvalError(str(e)) from None
    if limit is not None:
        raw = raw[: max(0, int(limit))]
    model, model_name = _load_model(model, device, dtype)
    was_training = model.training
    model.eval()
    try:
        return _evaluate(model, model_name, task_obj, raw, records, video_root, Path(out_dir), t0,
                         batch_size=batch_size, max_new_tokens=max_new_tokens, num_frames=num_frames,
                         system_prompt=system_prompt, overwrite=overwrite, workers=workers, progress=progress,
                         report=report)
    finally:
        model.train(was_training)


def _parse_items(task: Task, raw: list[dict]) -> tuple[list[Item], dict[str, dict]]:
    """Records -> evaluable items and rejection rows (malformed or duplicate records), by key."""
    items: list[Item] = []
    rejected: dict[str, dict] = {}
    seen: set[str] = set()
    for rec in raw:
        key, item = record_key(rec), None
        if key in seen:
            key, reason = f"{key}@{rec.get('_line')}", f"duplicate record key {key!r}"
        else:
            try:
                item, reason = task.parse(flatten(rec)), None
            except BadRecord as e:
                reason = str(e)
        seen.add(key)
        if item is None:
            rejected[key] = _reject_row(key, str(rec.get("_source", "records")),
                                        rec.get("video", rec.get("YoutubeID")), f"record: {reason}")
        else:
            items.append(item)
    return items, rejected


def _evaluate(model, model_name, task_obj: Task, raw, records, video_root, out: Path, t0: float, *, batch_size,
              max_new_tokens, num_frames, system_prompt, overwrite, workers, progress, report) -> dict[str, Any]:
    from videochat.eval.report import write_reports

    roots = video_roots(video_root)
    max_new = int(max_new_tokens or task_obj.max_new_tokens)
    frames = int(num_frames or model.config.num_frames)
    system = task_obj.system_prompt if system_prompt is None else system_prompt
    if system is None:
        system = model.config.system_prompt
    items, rejected = _parse_items(task_obj, raw)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"task": task_obj.name, "num_frames": frames, "max_new_tokens": max_new, "system_prompt": system,
                "template": model.config.template, "sampling": "middle",
                "task_options": {k: v for k, v in sorted(vars(task_obj).items()) if isinstance(v, (str, int, float))},
                "model_fingerprint": model_fingerprint(model)}
    check_run(out, settings, model_name, overwrite)
    pred_path = out / PREDICTIONS
    done = resume(pred_path, items)
    pending = [it for it in items if it.key not in done]
    new_rows: list[dict] = []
    with open(pred_path, "a", encoding="utf-8") as f:
        write_lines(f, list(rejected.values()))

        def write(rows: list[dict]) -> None:
            write_lines(f, rows)
            new_rows.extend(rows)

        runner = _Run(model, task_obj, roots, batch_size=batch_size, max_new_tokens=max_new,
                      num_frames=frames, system_prompt=system, workers=workers, progress=progress)
        generated = runner.run(pending, write)

    for r in new_rows:
        (done if r["status"] == "ok" else rejected)[r["key"]] = r
    ok_rows = [done[it.key] for it in items if it.key in done]
    rejects = list(rejected.values())
    agg = task_obj.aggregate(ok_rows) if ok_rows else {"overall": {"n": 0}, "groups": {}}
    seconds = time.time() - t0
    results = {
        "task": task_obj.name,
        "headline": task_obj.headline,
        "model": model_name,
        "data": os.fspath(records) if isinstance(records, (str, os.PathLike)) else f"{len(raw)} records (Python list)",
        "videos": video_root if isinstance(video_root, dict) or video_root is None else os.fspath(video_root),
        "counts": {"in": len(raw), "scored": len(ok_rows), "rejected": len(rejects)},
        "metrics": agg["overall"],
        "groups": agg["groups"],
        "rejected": [{"key": r["key"], "video": r.get("video"), "reason": r["reason"]} for r in rejects],
        "settings": {**settings, "batch_size": batch_size},
        "timing": {"seconds": round(seconds, 3), "generated": generated, "resumed": len(ok_rows) - generated,
                   "generated_per_s": round(generated / seconds, 3) if seconds > 0 else None},
    }
    if results["counts"]["in"] != results["counts"]["scored"] + results["counts"]["rejected"]:
        raise AssertionError(f"count mismatch: {results['counts']}")  # a bug, never bad data
    if report:
        write_reports(results, out)
    return results
