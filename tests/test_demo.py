"""`videochat demo --quick` end to end and its outputs.

The run is shared by the tests of this module: one quick demo builds the world, trains every stage through
the real recipes, exports and evaluates; the tests then check the bars (every attribute >= 2x chance), the
files the user is promised, and that the exported model loads in the chat session and answers a held-out
question.

In the default suite (`make test`, CI): the quick run takes ~2.5 minutes on 2 idle cores.
"""

import json
import re

import pytest

from videochat.cli import main as videochat_main


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo") / "work"
    rc = videochat_main(["demo", "--workdir", str(work), "--quick", "--no-progress"])
    assert rc == 0
    return work


def test_quick_demo_learns_from_the_video(quick_run):
    m = json.loads((quick_run / "metrics.json").read_text())
    assert set(m["heldout"]) == set(m["ablation_no_video"]) == set(m["chance"]) == {"color_acc", "shape_acc",
                                                                                       "motion_acc"}
    for k, chance in m["chance"].items():
        assert m["heldout"][k] >= 2 * chance, (k, m["heldout"][k], chance)
    assert m["heldout_questions"] == 180


def test_quick_demo_writes_report_export_and_checkpoints(quick_run):
    report = (quick_run / "report.md").read_text()
    assert "| color |" in report and "![losses](loss.png)" in report
    assert re.search(r"Q: What colour is the shape\?", report)
    assert (quick_run / "loss.png").stat().st_size > 1000
    for stage in ("viclip", "align", "instruct"):
        assert list((quick_run / "runs" / stage / "checkpoints").glob("step-*/trainable.safetensors")), stage
    assert (quick_run / "runs" / "viclip" / "viclip.pth").is_file()
    assert (quick_run / "export" / "config.json").is_file()
    state = json.loads((quick_run / "demo_state.json").read_text())
    assert list(state["done"]) == ["world", "samples", "llm", "viclip", "features", "align", "instruct", "export",
                                   "eval", "report"]


def test_rerun_resumes_without_redoing_stages(quick_run, capsys):
    before = (quick_run / "metrics.json").read_text()
    assert videochat_main(["demo", "--workdir", str(quick_run), "--quick", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("already done") == 10
    assert (quick_run / "metrics.json").read_text() == before


def test_other_mode_in_same_workdir_is_refused(quick_run, capsys):
    assert videochat_main(["demo", "--workdir", str(quick_run), "--no-progress"]) == 1
    assert "quick" in capsys.readouterr().err


def test_exported_model_answers_in_chat_session(quick_run):
    chat_session = pytest.importorskip("serve.chat_session")
    from videochat.model import VideoChatModel

    model = VideoChatModel.from_pretrained(quick_run / "export", device="cpu")
    clips = [json.loads(line) for line in (quick_run / "world" / "heldout" / "clips.jsonl").read_text().splitlines()]
    colors = json.loads((quick_run / "world" / "world.json").read_text())["config"]["colors"]
    for clip in clips[:4]:
        session = chat_session.ChatSession(model)
        session.add_video(str(quick_run / "world" / clip["clip"]))
        reply = "".join(session.ask("What colour is the shape?", temperature=0.0)).strip().lower().rstrip(".")
        assert reply in colors, reply  # an answer in the world's vocabulary (accuracy: the bars test)
        assert len(session.history) == 2
