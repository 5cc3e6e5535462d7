"""Clip captioning scored with corpus metrics (`videochat.eval.metrics.caption_metrics`).

Record: `{"video", "caption": str | [str, ...] (or "answer" / "captions"), "start"?, "end"?, "question"?}`,
or an InternVid annotation row (`YoutubeID`, `Start_timestamp`, `End_timestamp`, `Caption`; the video is
`<root>/<YoutubeID>.<ext>`). The prompt is the record's `question`, else "Describe this video clip." (the
first phrasing of the training data's describe pool). Per sample: `bleu` = sacrebleu sentence BLEU (0-100,
for reading; not averaged into the corpus score). Metrics: corpus `bleu`, `cider`, `rouge_l` (0-100 scale),
overall and per group. `correct` is not defined for captions (null).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from videochat.eval.metrics import caption_metrics, caption_tokenize
from videochat.eval.records import BadRecord
from videochat.eval.tasks import Item, Task, common_fields, text_field

DEFAULT_PROMPT = "Describe this video clip."


class CaptionTask(Task):
    name = "caption"
    max_new_tokens = 64
    system_prompt = None
    headline = "cider"

    def __init__(self, prompt: str = DEFAULT_PROMPT):
        self.prompt = prompt

    def parse(self, rec: dict) -> Item:
        base = common_fields(rec)
        refs = rec.get("caption", rec.get("captions", rec.get("answer")))
        refs = [refs] if isinstance(refs, str) else refs
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
            raise BadRecord("'caption' must be a string or a list of strings")
        refs = [r.strip() for r in refs if caption_tokenize(r)]
        if not refs:
            raise BadRecord("'caption' has no words")
        prompt = text_field(rec, "question", "prompt", required=False) or self.prompt
        return Item(**base, question=prompt, prompt=prompt, gold=refs[0] if len(refs) == 1 else refs)

    def score(self, item: Item, reply: str) -> dict[str, Any]:
        import sacrebleu

        refs = [item.gold] if isinstance(item.gold, str) else list(item.gold)
        return {"correct": None, "bleu": float(sacrebleu.sentence_bleu(reply, refs).score)}

    def aggregate(self, rows: list[dict]) -> dict[str, Any]:
        groups: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            groups[r["group"]].append(r)

        def summary(rs: list[dict]) -> dict[str, Any]:
            out: dict[str, Any] = {"n": len(rs)}
            out.update(caption_metrics([r["prediction"] for r in rs], [r["answer"] for r in rs]))
            return out

        return {"overall": summary(rows), "groups": {g: summary(rs) for g, rs in sorted(groups.items())}}
