"""Scoring functions of videochat.eval: letter extraction, SQuAD EM/F1, caption metrics, record parsing."""

import json
import math

import pytest

from videochat.eval.metrics import caption_metrics, exact_match, extract_choice, normalize_answer, token_f1
from videochat.eval.mvbench import MVBenchTask, format_question
from videochat.eval.records import BadRecord, DataError, flatten, load_records, parse_time
from videochat.eval.report import compare, flat_metrics, format_compare, markdown

CANDS = ["red", "green", "blue", "yellow"]


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("(B) green", 1),  # the reference layout: "(" + generated "B) green"
        ("(B)", 1),
        ("(b)", 1),  # lower case
        ("b", 1),
        ("B", 1),
        ("B.", 1),
        ("b.", 1),
        ("B) green", 1),
        ("B: green", 1),
        ("(B", 1),  # generation stopped right after the letter
        ("(C) blue, because the shape is blue", 2),  # extra text
        ("C blue", 2),
        ("Best option: (D)", 3),
        ("Best option:(D) yellow", 3),
        ("The answer is C", 2),
        ("I think (D) is right", 3),
        ("option d", 3),
        ("blue", 2),  # option text instead of a letter
        ("(blue", 2),  # "(" priming + option text
        ("It is yellow.", 3),
        ("A green square", 1),  # "A" is the article here, not option A
        ("a red circle", 0),  # the option text "red", not the article
        ("A", 0),
        ("(E)", None),  # out of range: wrong, not a crash
        ("Z. something", None),
        ("", None),  # no letter
        ("(", None),
        ("I don't know", None),
        ("green or blue", 1),  # the reply starts with an option: the first one named counts
        ("either (A) or (B)", None),  # two letters: ambiguous
        ("it is blue or yellow", None),  # two option texts: ambiguous
    ],
)
def test_extract_choice(reply, expected):
    assert extract_choice(reply, CANDS) == expected


def test_extract_choice_prefers_longest_option_text():
    cands = ["moves left", "moves left then right", "stays still"]
    assert extract_choice("(moves left then right", cands) == 1
    assert extract_choice("it moves left", cands) == 0


def test_mvbench_prompt_and_scoring():
    task = MVBenchTask()
    item = task.parse(flatten({"video": "v.mp4", "question": "What colour?", "candidates": CANDS, "answer": "blue",
                               "_source": "color", "_line": 3}))
    assert item.prompt == ("Question: What colour?\nOptions:\n(A) red\n(B) green\n(C) blue\n(D) yellow\n"
                           "Only give the best option.")
    assert item.prompt == format_question("What colour?", CANDS)
    assert item.gold == "(C) blue" and item.answer_prefix == "Best option:(" and item.reply_prefix == "("
    assert item.key == "color:3" and item.group == "color"
    assert task.score(item, "(C) blue")["correct"] is True
    assert task.score(item, "(c")["correct"] is True
    assert task.score(item, "(A) red")["correct"] is False
    row = task.score(item, "(nothing")
    assert row["correct"] is False and row["choice"] is None
    with pytest.raises(BadRecord, match="not one of the candidates"):
        task.parse(flatten({"video": "v.mp4", "question": "q", "candidates": CANDS, "answer": "pink"}))
    with pytest.raises(BadRecord, match="at least 2"):
        task.parse(flatten({"video": "v.mp4", "question": "q", "candidates": ["red"], "answer": "red"}))
    with pytest.raises(BadRecord, match="video"):
        task.parse(flatten({"question": "q", "candidates": CANDS, "answer": "red"}))


def test_mvbench_aggregate_hand_computed():
    rows = [{"group": "a", "correct": True, "choice": "A", "num_options": 4},
            {"group": "a", "correct": False, "choice": None, "num_options": 4},
            {"group": "b", "correct": True, "choice": "B", "num_options": 2},
            {"group": "b", "correct": True, "choice": "A", "num_options": 2},
            {"group": "b", "correct": False, "choice": "A", "num_options": 2}]
    agg = MVBenchTask().aggregate(rows)
    assert agg["groups"]["a"] == {"n": 2, "correct": 1, "accuracy": 50.0, "chance": 25.0, "no_choice": 1}
    assert agg["groups"]["b"]["accuracy"] == pytest.approx(200 / 3)
    assert agg["overall"]["accuracy"] == pytest.approx(60.0)  # 3 of 5
    assert agg["overall"]["task_mean_accuracy"] == pytest.approx((50 + 200 / 3) / 2)
    assert agg["overall"]["chance"] == pytest.approx(100 * (0.25 * 2 + 0.5 * 3) / 5)


def test_squad_normalisation_em_f1():
    assert normalize_answer("The  Red, circle!") == "red circle"
    assert normalize_answer("An apple a day") == "apple day"
    assert exact_match("The cat sat on the mat.", "a cat sat on mat") == 1.0
    assert exact_match("red", "blue") == 0.0
    assert exact_match("blue", ["red", "Blue."]) == 1.0
    # [red, square, moves, left] vs [red, circle, moves, left]: 3 common, P = R = 3/4
    assert token_f1("red square moves left", "the red circle moves left") == pytest.approx(0.75)
    # [red] vs [red, circle]: P = 1, R = 1/2, F1 = 2/3
    assert token_f1("red", "a red circle") == pytest.approx(2 / 3)
    assert token_f1("red red", "red circle") == pytest.approx(0.5)  # counts clip: 1 common, P = R = 1/2
    assert token_f1("green", ["red", "green circle"]) == pytest.approx(2 / 3)  # max over golds
    assert token_f1("", "red") == 0.0
    assert token_f1("the", "a") == 1.0  # both empty after normalisation


def test_caption_metrics_hand_computed():
    pytest.importorskip("sacrebleu")
    # hyp "the cat sat on the mat" vs ref "the cat sat on a mat": n-gram precisions 5/6, 3/5, 2/4, 1/3,
    # equal lengths (no brevity penalty): BLEU = (5/6 * 3/5 * 1/2 * 1/3) ** (1/4) = (1/12) ** 0.25
    m = caption_metrics(["the cat sat on the mat"], ["the cat sat on a mat"])
    assert m["bleu"] == pytest.approx(100 * (1 / 12) ** 0.25, abs=1e-6)
    assert caption_metrics(["a red circle moves left"], [["a red circle moves left"]])["bleu"] == pytest.approx(100)
    pytest.importorskip("pycocoevalcap")
    # ROUGE-L: LCS("a b c d", "a c d e") = 3, P = R = 3/4 -> F = 0.75 for any beta
    assert caption_metrics(["a b c d"], ["a c d e"])["rouge_l"] == pytest.approx(75.0)
    # CIDEr-D: identical captions that share no n-gram across the corpus: idf = log 2 everywhere,
    # cosine 1 for n = 1..4, no length penalty -> 10 per caption -> 1000 on the x100 scale
    same = caption_metrics(["red circle moves left", "blue square stays still"],
                           ["red circle moves left", "blue square stays still"])
    assert same["cider"] == pytest.approx(1000.0, rel=1e-6) and same["rouge_l"] == pytest.approx(100.0)
    wrong = caption_metrics(["green triangle", ""], ["red circle moves left", "blue square stays still"])
    assert wrong["cider"] == 0.0 and wrong["rouge_l"] == 0.0 and wrong["bleu"] == 0.0


def test_parse_time_and_records(tmp_path):
    assert parse_time("00:01:02.500", "t") == pytest.approx(62.5)
    assert parse_time(3, "t") == 3.0 and parse_time("4.5", "t") == 4.5 and parse_time(None, "t") is None
    for bad in ("abc", -1, True, "1:2:3:4"):
        with pytest.raises(BadRecord):
            parse_time(bad, "t")
    d = tmp_path / "json"
    d.mkdir()
    (d / "action.json").write_text(json.dumps([{"video": "a.mp4"}, 5]))
    (d / "object.jsonl").write_text('{"video": "b.mp4"}\nnot json\n\n[1]\n')
    rows = load_records(d)
    assert [(r["_source"], r["_line"]) for r in rows] == [("action", 1), ("action", 2), ("object", 1),
                                                         ("object", 2), ("object", 4)]
    assert sum("_error" in r for r in rows) == 3
    with pytest.raises(DataError, match="not valid JSON"):
        (tmp_path / "bad.json").write_text("{")
        load_records(tmp_path / "bad.json")
    with pytest.raises(DataError, match="no such file"):
        load_records(tmp_path / "missing.json")
    # InternVid annotation row and sample-schema row map to the flat layout
    iv = flatten({"YoutubeID": "abc", "Start_timestamp": "00:00:01.000", "End_timestamp": "00:00:03.000",
                  "Caption": "a red circle"})
    assert iv["video"] == "abc" and iv["caption"] == "a red circle" and iv["start"] == "00:00:01.000"
    s = flatten({"id": "x", "videos": [{"video_id": "v", "path": "v.mp4"}], "clips": [{"video": 0, "start": 1, "end": 2}],
                 "messages": [{"role": "user", "content": [{"type": "clip", "clip": 0}, {"type": "text", "text": "Q?"}]},
                              {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]})
    assert s == {"id": "x", "video": "v.mp4", "start": 1, "end": 2, "question": "Q?", "answer": "red"}


def test_compare_and_markdown():
    a = {"task": "mvbench", "headline": "accuracy", "counts": {"in": 3, "scored": 3, "rejected": 0},
         "metrics": {"n": 3, "accuracy": 50.0, "chance": 25.0}, "groups": {"color": {"n": 3, "accuracy": 50.0}},
         "rejected": []}
    b = json.loads(json.dumps(a))
    b["metrics"]["accuracy"] = 62.5
    b["groups"]["color"]["accuracy"] = 62.5
    b["groups"]["shape"] = {"n": 1, "accuracy": 10.0}
    assert flat_metrics(a) == {"accuracy": 50.0, "chance": 25.0, "color/accuracy": 50.0}
    rows = {k: (va, vb, d) for k, va, vb, d in compare(a, b)}
    assert rows["accuracy"] == (50.0, 62.5, 12.5)
    assert rows["shape/accuracy"] == (None, 10.0, None)
    text = format_compare(a, b)
    assert "+12.50" in text and "shape/accuracy" in text
    md = markdown(a)
    assert "| color | 3 | 50.00 | 0.00 |" not in md and "**accuracy: 50.00**" in md
    assert not math.isnan(rows["chance"][2]) and rows["chance"][2] == 0.0
