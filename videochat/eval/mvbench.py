"""MVBench-style multiple choice (ref: VideoChat2's MVBench evaluation).

Record: `{"video", "question", "candidates": [...], "answer": <one of the candidates>, "start"?, "end"?}`.
Prompt, as the reference: system "Carefully watch the video ... select the best option that accurately
addresses the question."; user = clip, then "Question: <q>\\nOptions:\\n(A) <c0>\\n(B) <c1>...\\nOnly give
the best option."; the reply is primed with "Best option:(" and the generated text is read as
"(" + text. Greedy decoding. A reply is right when `extract_choice` finds the gold option; no letter, an
out-of-range letter or an ambiguous reply is wrong (counted in `no_choice`), never an error.
Metrics (percent): `accuracy` over all records, `task_mean_accuracy` (MVBench's headline: the mean of the
per-task accuracies), per task `accuracy`, `chance` (mean 1/#options), `n`, `correct`, `no_choice`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from videochat.eval.metrics import extract_choice, letter
from videochat.eval.records import BadRecord
from videochat.eval.tasks import Item, Task, common_fields, text_field

SYSTEM = ("Carefully watch the video and pay attention to the cause and sequence of events, the detail and "
          "movement of objects, and the action and pose of persons. Based on your observations, select the best "
          "option that accurately addresses the question.")
"""The reference MVBench system prompt."""
QUESTION_SUFFIX = "\nOnly give the best option."
ANSWER_PREFIX = "Best option:("
REPLY_PREFIX = "("


def format_question(question: str, candidates: list[str], suffix: str = QUESTION_SUFFIX) -> str:
    """"Question: q\\nOptions:\\n(A) c0\\n(B) c1" + suffix (the reference layout)."""
    lines = [f"Question: {question}", "Options:"] + [f"({letter(i)}) {c}" for i, c in enumerate(candidates)]
    return "\n".join(lines) + (suffix or "")


class MVBenchTask(Task):
    name = "mvbench"
    max_new_tokens = 16
    system_prompt = SYSTEM
    headline = "accuracy"

    def __init__(self, question_suffix: str = QUESTION_SUFFIX, answer_prefix: str = ANSWER_PREFIX):
        self.question_suffix = question_suffix
        self.answer_prefix = answer_prefix
        # the reply is read from the priming's trailing "(" on, as the reference does
        self.reply_prefix = REPLY_PREFIX if answer_prefix.endswith(REPLY_PREFIX) else ""

    def parse(self, rec: dict) -> Item:
        base = common_fields(rec)
        question = text_field(rec, "question")
        cands = rec.get("candidates")
        if not isinstance(cands, list) or len(cands) < 2 or not all(isinstance(c, (str, int, float)) for c in cands):
            raise BadRecord("'candidates' must be a list of at least 2 options")
        cands = [str(c).strip() for c in cands]
        if len(cands) > 26:
            raise BadRecord(f"{len(cands)} candidates; at most 26 (A-Z)")
        if len(set(cands)) != len(cands) or not all(cands):
            raise BadRecord("'candidates' has empty or repeated options")
        answer = rec.get("answer")
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        if not isinstance(answer, str) or answer.strip() not in cands:
            raise BadRecord(f"'answer' {answer!r} is not one of the candidates")
        gold = cands.index(answer.strip())
        return Item(**base, question=question, prompt=format_question(question, cands, self.question_suffix),
                    gold=f"({letter(gold)}) {cands[gold]}", answer_prefix=self.answer_prefix,
                    reply_prefix=self.reply_prefix, extra={"candidates": cands, "gold_index": gold})

    def score(self, item: Item, reply: str) -> dict[str, Any]:
        cands = item.extra["candidates"]
        choice = extract_choice(reply, cands)
        return {"choice": None if choice is None else letter(choice), "correct": choice == item.extra["gold_index"],
                "num_options": len(cands)}

    def aggregate(self, rows: list[dict]) -> dict[str, Any]:
        groups: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            groups[r["group"]].append(r)

        def summary(rs: list[dict]) -> dict[str, Any]:
            n = len(rs)
            correct = sum(bool(r["correct"]) for r in rs)
            return {"n": n, "correct": correct, "accuracy": 100.0 * correct / n if n else 0.0,
                    "chance": 100.0 * sum(1.0 / r["num_options"] for r in rs) / n if n else 0.0,
                    "no_choice": sum(r["choice"] is None for r in rs)}

        per = {g: summary(rs) for g, rs in sorted(groups.items())}
        overall = summary(rows)
        overall["task_mean_accuracy"] = sum(v["accuracy"] for v in per.values()) / len(per) if per else 0.0
        return {"overall": overall, "groups": per}
