"""End-to-end evaluation of the tiny model on videos made in-test: all three tasks, the CLI, bad records,
resume after an interruption (an exception mid-run and a torn last line; a real SIGKILL in the slow test)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from videochat.builders import videochat_tiny
from videochat.cli import main as cli_main
from videochat.eval import EvalError, evaluate
from videochat.model import VideoChatModel

COLORS = {"red": (220, 40, 40), "green": (40, 190, 70), "blue": (50, 90, 235), "yellow": (235, 215, 50)}


def write_video(path: Path, color, seconds: float = 3.0, fps: int = 8, size: int = 32) -> None:
    import av

    with av.open(str(path), mode="w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for i in range(int(seconds * fps)):
            frame = np.full((size, size, 3), 20, np.uint8)
            x = (2 * i) % (size - 8)
            frame[8:20, x:x + 8] = color
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.fixture(scope="module", autouse=True)
def _one_thread_for_the_module(single_torch_thread_module):
    yield


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalworld")
    videos = root / "videos"
    videos.mkdir()
    for name, rgb in COLORS.items():
        write_video(videos / f"{name}.mp4", rgb)
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    model = videochat_tiny(seed=0)
    model.save_pretrained(root / "model")
    names = list(COLORS)
    mv = [{"video": f"{c}.mp4", "question": "What colour is the shape?", "candidates": names, "answer": c,
           "start": 0.5, "end": 2.5} for c in names * 2]
    bad = [{"video": "missing.mp4", "question": "q", "candidates": names, "answer": "red"},
           {"video": "broken.mp4", "question": "q", "candidates": names, "answer": "red"},
           {"video": "red.mp4", "question": "q", "candidates": names, "answer": "pink"},
           {"video": "red.mp4", "question": "q", "candidates": names, "answer": "red", "start": 9.0, "end": 12.0}]
    (root / "color.json").write_text(json.dumps(mv + bad))
    qa = [{"video": f"{c}.mp4", "question": "What colour is the shape?", "answer": c, "start": 0, "end": 3}
          for c in names]
    (root / "qa.json").write_text(json.dumps(qa + [{"video": "red.mp4", "answer": "red"}]))
    ann = [{"YoutubeID": c, "Start_timestamp": "00:00:00.000", "End_timestamp": "00:00:02.000",
            "Caption": f"a {c} square moves right"} for c in names]
    (root / "captions.jsonl").write_text("".join(json.dumps(a) + "\n" for a in ann) + '{"YoutubeID": "nope", "Caption": "x"}\n')
    return root


@pytest.fixture(scope="module")
def model(world):
    return VideoChatModel.from_pretrained(world / "model")


def _preds(out: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return {r["key"]: r for r in rows}


def test_cli_mvbench_end_to_end_and_compare(world, tmp_path, capsys):
    out = tmp_path / "mv"
    rc = cli_main(["eval", "--model", str(world / "model"), "--task", "mvbench", "--data", str(world / "color.json"),
                   "--videos", str(world / "videos"), "--out", str(out), "--batch-size", "3", "--no-progress"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["counts"] == {"in": 12, "scored": 8, "rejected": 4}
    reasons = {r["key"]: r["reason"] for r in res["rejected"]}
    assert "no such file" in reasons["color:9"]
    assert reasons["color:10"].startswith("video:")
    assert "not one of the candidates" in reasons["color:11"]
    assert "past the end" in reasons["color:12"]
    assert set(res["groups"]) == {"color"} and res["metrics"]["chance"] == pytest.approx(25.0)
    preds = _preds(out)
    assert len(preds) == 12
    ok = [r for r in preds.values() if r["status"] == "ok"]
    for r in ok:
        assert r["prediction"] == "(" + r["generated"]  # read from the priming's "(" on
        assert {"question", "answer", "prediction", "correct"} <= set(r)
    assert res["metrics"]["accuracy"] == pytest.approx(100 * sum(r["correct"] for r in ok) / 8)
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG" and "| color |" in (out / "results.md").read_text()
    printed = capsys.readouterr()
    assert "12 records = 8 scored + 4 rejected" in printed.out

    # compare against an edited copy
    other = json.loads(json.dumps(res))
    other["metrics"]["accuracy"] += 10
    (tmp_path / "b.json").write_text(json.dumps(other))
    assert cli_main(["eval", "compare", str(out), str(tmp_path / "b.json")]) == 0
    text = capsys.readouterr().out
    assert "+10.00" in text and "accuracy" in text
    assert cli_main(["eval", "compare", str(out), str(tmp_path / "nothing")]) == 2
    assert cli_main(["eval", "--task", "qa"]) == 2


def test_scoring_pipeline_counts_right_answers(world, model, tmp_path, monkeypatch):
    """With the LLM's generate replaced by one that always answers "B) green", exactly the green records
    (2 of 8) are right: the prompt ids, left padding, decoding and letter matching all line up."""
    tok = model.tokenizer
    seen = []

    def fake_generate(input_ids, attention_mask=None, clip_embeds=None, **kw):
        seen.append((input_ids.clone(), attention_mask.clone(), clip_embeds.shape))
        ids = tok("B) green", add_special_tokens=False)["input_ids"]
        return torch.tensor([ids] * input_ids.shape[0])

    monkeypatch.setattr(model, "generate", fake_generate)
    res = evaluate(model, "mvbench", world / "color.json", world / "videos", tmp_path / "o", batch_size=4,
                   progress=False)
    assert res["metrics"]["correct"] == 2 and res["metrics"]["accuracy"] == pytest.approx(25.0)
    q = model.tokens_per_clip
    for ids, mask, shape in seen:
        assert shape[0] == ids.shape[0] and shape[1] == q
        assert int((ids == model.placeholder_id).sum()) == ids.shape[0] * q  # one clip per prompt
        lengths = mask.sum(1)
        for row, n in zip(mask, lengths):  # left padding: ones at the end
            assert bool(row[-int(n):].all()) and not bool(row[: len(row) - int(n)].any())
        text = tok.decode(ids[0][mask[0].bool()])
        assert text.endswith("Best option:(") and "Only give the best option." in text
        assert "Carefully watch the video" in text


def test_qa_and_caption_end_to_end(world, model, tmp_path):
    (tmp_path / "roots.json").write_text(json.dumps({"qa": str(world / "videos"), "*": "elsewhere"}))
    qa = evaluate(model, "qa", world / "qa.json", tmp_path / "roots.json", tmp_path / "qa", batch_size=4,
                  progress=False, max_new_tokens=8)  # per-task video folders (MVBench's layout)
    assert qa["counts"] == {"in": 5, "scored": 4, "rejected": 1}
    assert "question" in qa["rejected"][0]["reason"]
    assert set(qa["metrics"]) >= {"exact_match", "f1"} and 0 <= qa["metrics"]["f1"] <= 100
    cap = evaluate(model, "caption", world / "captions.jsonl", world / "videos", tmp_path / "cap", batch_size=2,
                   progress=False, max_new_tokens=8)
    assert cap["counts"] == {"in": 5, "scored": 4, "rejected": 1}  # "nope" has no video
    assert "no such file" in cap["rejected"][0]["reason"]
    assert "bleu" in cap["metrics"] and all(r["prediction"] is not None for r in _preds(tmp_path / "cap").values()
                                            if r["status"] == "ok")


def test_resume_after_exception_and_torn_line(world, model, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = model.generate
    calls = {"n": 0}

    def failing(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill")
        return real(*a, **kw)

    monkeypatch.setattr(model, "generate", failing)
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, "mvbench", world / "color.json", world / "videos", out, batch_size=3, progress=False)
    partial = _preds(out)
    first = {k: r for k, r in partial.items() if r["status"] == "ok"}
    assert len(first) == 3 and not (out / "results.json").exists()
    with open(out / "predictions.jsonl", "a") as f:
        f.write('{"key": "color:7", "status": "ok", "predic')  # a write torn by the kill

    calls["n"] = 10
    batches = []
    monkeypatch.setattr(model, "generate", lambda ids, **kw: (batches.append(ids.shape[0]), real(ids, **kw))[1])
    res = evaluate(model, "mvbench", world / "color.json", world / "videos", out, batch_size=3, progress=False)
    assert sum(batches) == 5  # only the 5 records not yet predicted
    assert res["timing"] == {**res["timing"], "generated": 5, "resumed": 3}
    assert res["counts"] == {"in": 12, "scored": 8, "rejected": 4}
    final = _preds(out)
    for k, r in first.items():
        assert final[k] == r  # kept, not recomputed
    monkeypatch.setattr(model, "generate", real)
    fresh = evaluate(model, "mvbench", world / "color.json", world / "videos", tmp_path / "fresh", batch_size=8,
                     progress=False)
    assert fresh["metrics"] == res["metrics"]
    assert {k: r["generated"] for k, r in _preds(tmp_path / "fresh").items() if r["status"] == "ok"} == \
        {k: r["generated"] for k, r in final.items() if r["status"] == "ok"}

    # a resume with other settings, or over other data, is refused
    with pytest.raises(EvalError, match="different settings"):
        evaluate(model, "mvbench", world / "color.json", world / "videos", out, max_new_tokens=3, progress=False)
    edited = json.loads((world / "color.json").read_text())
    edited[0]["question"] = "Which colour?"
    (tmp_path / "color.json").write_text(json.dumps(edited))
    with pytest.raises(EvalError, match="different data"):
        evaluate(model, "mvbench", tmp_path / "color.json", world / "videos", out, progress=False)
    again = evaluate(model, "mvbench", tmp_path / "color.json", world / "videos", out, progress=False, overwrite=True,
                     limit=2)
    assert again["counts"] == {"in": 2, "scored": 2, "rejected": 0}
    # ... and so is one with another model (retrained weights in the same folder)
    other = videochat_tiny(seed=1).train()
    with pytest.raises(EvalError, match="another model"):
        evaluate(other, "mvbench", tmp_path / "color.json", world / "videos", out, progress=False, limit=2)
    res = evaluate(other, "mvbench", tmp_path / "color.json", world / "videos", tmp_path / "other", progress=False,
                   limit=2)
    assert res["counts"]["scored"] == 2 and other.training  # the caller's train mode is restored


@pytest.mark.slow
def test_resume_after_real_kill(world, tmp_path):
    out = tmp_path / "killed"
    data = tmp_path / "many.json"
    rows = json.loads((world / "color.json").read_text())[:8] * 3
    data.write_text(json.dumps([{**r, "id": i} for i, r in enumerate(rows)]))
    args = ["eval", "--model", str(world / "model"), "--task", "mvbench", "--data", str(data), "--videos",
            str(world / "videos"), "--out", str(out), "--batch-size", "1", "--no-progress", "--max-new-tokens", "24"]
    code = f"import sys; from videochat.cli import main; sys.exit(main({args!r}))"
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"})
    pred = out / "predictions.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if pred.is_file() and len(pred.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the evaluation finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = {k: r for k, r in _preds(out).items()}
    assert 2 <= len(kept) < 24
    assert cli_main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["counts"]["scored"] == 24 and res["timing"]["resumed"] >= len(kept)
    final = _preds(out)
    assert all(final[k] == r for k, r in kept.items())
