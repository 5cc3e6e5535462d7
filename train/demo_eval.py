"""Held-out evaluation of the demo model through the real evaluator (`videochat.eval`, open QA).

Each held-out question asks for one attribute (colour / shape / motion) of a single-object event in a video
the model never saw; the record's `task` is the attribute, so the evaluator's per-group exact match
(greedy, SQuAD-normalised) is the per-attribute accuracy. The no-video ablation runs the same evaluation
with the projector's output (the clip embeddings spliced into the LLM input) replaced by zeros: the
held-out answers are balanced, so a model that answers from the question text alone scores chance.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from data_tools.synthetic import ATTRIBUTES, chance


class zero_clip_embeddings:
    """Context manager: every clip embedding the model computes is replaced by zeros ([N, Q, D])."""

    def __init__(self, model):
        self.model = model
        self.handle = None

    def __enter__(self):
        self.handle = self.model.projector.register_forward_hook(lambda m, args, out: torch.zeros_like(out))
        return self.model

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def accuracies(results: dict) -> dict[str, float]:
    """`{color_acc, shape_acc, motion_acc}` from an evaluator results dict (groups = attributes)."""
    out = {}
    for a in ATTRIBUTES:
        group = results["groups"].get(a)
        if not group or not group.get("n"):
            raise ValueError(f"the evaluation scored no {a!r} question (rejected: {results['rejected'][:3]})")
        out[f"{a}_acc"] = round(group["exact_match"] / 100.0, 4)
    return out


def evaluate_heldout(p: dict[str, Path], s, progress: bool = True, batch_size: int = 32) -> dict:
    """Evaluate DIR/export on the held-out questions with and without video; writes DIR/eval/*."""
    from videochat.eval.runner import evaluate
    from videochat.model import VideoChatModel

    model = VideoChatModel.from_pretrained(p["export"], device="cpu").eval()
    records = str(p["world"] / "heldout" / "qa.json")
    kw = dict(video_root=str(p["videos"]), batch_size=batch_size, progress=progress, overwrite=True, device="cpu")
    with_video = evaluate(model, "qa", records, out_dir=p["eval"] / "heldout", **kw)
    with zero_clip_embeddings(model):
        no_video = evaluate(model, "qa", records, out_dir=p["eval"] / "no_video", **kw)
    for name, res in (("heldout", with_video), ("no_video", no_video)):
        if res["counts"]["rejected"]:
            raise ValueError(f"{name}: {res['counts']['rejected']} held-out records rejected: {res['rejected'][:3]}")
    out = {"heldout": accuracies(with_video), "ablation_no_video": accuracies(no_video), "chance": chance(s.world),
           "heldout_questions": with_video["counts"]["scored"],
           "eval_seconds": round(with_video["timing"]["seconds"] + no_video["timing"]["seconds"], 1)}
    (p["eval"] / "summary.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def example_dialogues(eval_dir: Path, n: int) -> list[dict]:
    """The first `n` held-out events' rows (question, gold, prediction) from the evaluator's predictions, with
    and without video, grouped by event."""
    def rows(name):
        return [json.loads(line) for line in (eval_dir / name / "predictions.jsonl").read_text().splitlines()
                if line.strip()]

    blind = {r["key"]: r for r in rows("no_video")}
    events: dict[tuple, list[dict]] = {}
    for r in rows("heldout"):
        if r.get("status") != "ok":
            continue
        k = (r["video"], r["start"], r["end"])
        if k not in events and len(events) >= n:
            continue
        events.setdefault(k, []).append({"group": r["group"], "question": r["question"], "answer": r["answer"],
                                         "prediction": r["prediction"],
                                         "blind": blind.get(r["key"], {}).get("prediction", "")})
    return [{"video": k[0], "start": k[1], "end": k[2], "turns": v} for k, v in events.items()]
