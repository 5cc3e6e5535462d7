"""Open-ended video QA scored by SQuAD-style normalised exact match and token F1.

Record: `{"video", "question", "answer": str | [str, ...], "start"?, "end"?}` (also sample-schema rows:
the first user turn's text and clip, the first assistant turn as the answer). The prompt is the clip then
the bare question (the model config's system prompt, if any). Per sample: `exact_match` (0/1), `f1`
(0-1), `correct` = exact match. Metrics (percent): `exact_match`, `f1`, overall and per group.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from videochat.eval.metrics import exact_match, normalize_answer, token_f1
from videochat.eval.records import BadRecord
from videochat.eval.tasks import Item, Task, common_fields, text_field


class QATask(Task):
    name = "qa"
    max_new_tokens = 32
    system_prompt = None
    headline = "f1"

    def __init__(self, question_suffix: str = ""):
        self.question_suffix = question_suffix

    def parse(self, rec: dict) -> Item:
        base = common_fields(rec)
        question = text_field(rec, "question", "q")
        answer = rec.get("answer", rec.get("answers", rec.get("a")))
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        golds = [answer] if isinstance(answer, str) else answer
        if not isinstance(golds, list) or not golds or not all(isinstance(g, str) for g in golds):
            raise BadRecord("'answer' must be a string or a list of strings")
        golds = [g.strip() for g in golds]
        if not any(normalize_answer(g) for g in golds):
            raise BadRecord(f"'answer' {answer!r} is empty after normalisation")
        return Item(**base, question=question, prompt=question + self.question_suffix,
                    gold=golds[0] if len(golds) == 1 else golds)

    def score(self, item: Item, reply: str) -> dict[str, Any]:
        em = exact_match(reply, item.gold)
        return {"correct": bool(em), "exact_match": em, "f1": token_f1(reply, item.gold)}

    def aggregate(self, rows: list[dict]) -> dict[str, Any]:
        groups: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            groups[r["group"]].append(r)

        def summary(rs: list[dict]) -> dict[str, Any]:
            n = len(rs)
            return {"n": n, "exact_match": 100.0 * sum(r["exact_match"] for r in rs) / n if n else 0.0,
                    "f1": 100.0 * sum(r["f1"] for r in rs) / n if n else 0.0}

        return {"overall": summary(rows), "groups": {g: summary(rs) for g, rs in sorted(groups.items())}}
