"""Every `videochat demo` stage on a minimal world with a few steps each (default suite; the real --quick run
with its accuracy bars is tests/test_demo.py): the stages chain through the real entry points, the outputs
have the promised layout, a re-run resumes, and the export loads in the chat session and answers."""

import json

import pytest

from videochat.cli import main as videochat_main

TINY = ["world.train_videos=3", "world.colors=[red, blue]", "world.shapes=[circle, square]",
        "world.motions=[left, still]", "world.heldout_clips=2", "lm.steps=3", "viclip_steps=2", "viclip_batch=4",
        "align_steps=2", "instruct_steps=2", "batch_size=4", "example_dialogues=2"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo_smoke") / "work"
    assert videochat_main(["demo", "--workdir", str(work), "--quick", "--no-progress", "--set", *TINY]) == 0
    return work


def test_every_stage_ran_and_metrics_have_the_promised_keys(smoke_run):
    m = json.loads((smoke_run / "metrics.json").read_text())
    keys = {"color_acc", "shape_acc", "motion_acc"}
    assert set(m["heldout"]) == set(m["ablation_no_video"]) == set(m["chance"]) == keys
    assert m["chance"] == {"color_acc": 0.5, "shape_acc": 0.5, "motion_acc": 0.5}
    assert all(0.0 <= v <= 1.0 for v in [*m["heldout"].values(), *m["ablation_no_video"].values()])
    assert m["heldout_questions"] == 3 * 8
    state = json.loads((smoke_run / "demo_state.json").read_text())
    assert list(state["done"]) == ["world", "samples", "llm", "viclip", "features", "align", "instruct", "export",
                                   "eval", "report"]
    assert (smoke_run / "runs" / "viclip" / "viclip.pth").is_file()
    assert (smoke_run / "llm" / "tokenizer.model").is_file() and (smoke_run / "llm" / "config.json").is_file()
    report = (smoke_run / "report.md").read_text()
    assert "| color |" in report and "videochat serve --model" in report
    assert (smoke_run / "loss.png").stat().st_size > 1000


def test_rerun_resumes_and_mode_mismatch_is_refused(smoke_run, capsys):
    before = (smoke_run / "metrics.json").read_text()
    assert videochat_main(["demo", "--workdir", str(smoke_run), "--quick", "--no-progress", "--set", *TINY]) == 0
    assert capsys.readouterr().out.count("already done") == 10
    assert (smoke_run / "metrics.json").read_text() == before
    assert videochat_main(["demo", "--workdir", str(smoke_run), "--no-progress"]) == 1
    assert "use another --workdir" in capsys.readouterr().err


def test_export_answers_in_chat_session(smoke_run):
    chat_session = pytest.importorskip("serve.chat_session")
    from videochat.model import VideoChatModel

    model = VideoChatModel.from_pretrained(smoke_run / "export", device="cpu")
    clip = json.loads((smoke_run / "world" / "heldout" / "clips.jsonl").read_text().splitlines()[0])
    session = chat_session.ChatSession(model)
    session.add_video(str(smoke_run / "world" / clip["clip"]))
    reply = "".join(session.ask("What colour is the shape?", temperature=0.0, max_new_tokens=8))
    assert isinstance(reply, str)
    # an untrained model may stop at once; an empty answer stays out of the history (ChatSession's rule)
    assert [m["role"] for m in session.history] == (["user", "assistant"] if reply.strip() else [])
