"""ChatSession (serve/chat_session.py) with the tiny model saved and re-loaded as a model folder."""

from __future__ import annotations

import threading

import pytest
import torch

from serve.chat_session import ChatError, ChatSession, VideoUploadError
from serve.cli import load_model
from serve.generation import GenerationSettings, StreamingGeneration
from serve.testing import tiny_model_dir, write_test_video
from videochat.conversation import render


@pytest.fixture(scope="module")
def model():
    return load_model(str(tiny_model_dir()), device="cpu")  # videochat_tiny() saved, then loaded


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve_videos")
    return {
        "a": write_test_video(d / "a.mp4", num_frames=16, seed=1),
        "b": write_test_video(d / "b.webm", num_frames=12, seed=2, codec="libvpx"),
    }


class Spy:
    """Records model.generate / encode_clips calls on the shared model (and undoes itself)."""

    def __init__(self, model):
        self.model = model
        self.generate_calls: list[dict] = []
        self.encode_calls = 0
        self._gen, self._enc = model.generate, model.encode_clips

        def generate(**kw):
            self.generate_calls.append(kw)
            return self._gen(**kw)

        def encode(frames, *a, **k):
            self.encode_calls += 1
            return self._enc(frames, *a, **k)

        model.generate, model.encode_clips = generate, encode

    def close(self):
        del self.model.generate, self.model.encode_clips


@pytest.fixture
def spy(model):
    s = Spy(model)
    yield s
    s.close()


def _expected_ids(session: ChatSession, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
    cfg = session.config
    return render(
        messages, session.tokenizer, template=cfg.template, tokens_per_clip=cfg.tokens_per_clip,
        placeholder_token=cfg.placeholder_token,
        clip_times={c.index: c.prompt_times for c in session.clips} if cfg.frame_times_in_prompt else None,
        system_prompt=cfg.system_prompt, add_generation_prompt=add_generation_prompt,
    ).input_ids


def test_multi_turn_second_video_and_rendering(model, videos, spy):
    s = ChatSession(model)
    info = s.add_video(videos["a"])
    assert info.index == 0 and info.container == "mp4" and len(info.timestamps) == model.config.num_frames
    assert len(info.thumbnails) == model.config.num_frames and info.thumbnails[0].dtype.name == "uint8"
    assert s.pending_clips == [info]

    pieces = list(s.ask("What happens in the video?", temperature=0.0, max_new_tokens=12))
    first = spy.generate_calls[-1]
    # the prompt is exactly the training renderer's output with the generation prompt
    expected = _expected_ids(s, [{"role": "user", "content": [{"type": "clip", "clip": 0},
                                                             {"type": "text", "text": "What happens in the video?"}]}])
    assert first["input_ids"][0].tolist() == expected
    assert first["clip_embeds"].shape == (1, model.config.tokens_per_clip, model.llm.get_input_embeddings().weight.shape[1])
    assert s.pending_clips == []
    assert [m["role"] for m in s.history] == ["user", "assistant"]
    assert s.history[1]["content"][0]["text"] == "".join(pieces)

    list(s.ask("And then?", temperature=0.0, max_new_tokens=8))
    second = spy.generate_calls[-1]["input_ids"][0].tolist()
    assert second[: len(expected)] == expected  # a later turn extends the earlier prompt
    assert torch.equal(spy.generate_calls[-1]["clip_embeds"], first["clip_embeds"])

    # a second video mid-conversation joins the next user message; both clips are passed in order
    info_b = s.add_video(videos["b"].read_bytes(), name="b.webm")
    assert info_b.index == 1 and info_b.container == "webm" and info_b.name == "b.webm"
    list(s.ask("Compare the two videos.", temperature=0.0, max_new_tokens=8))
    embeds = spy.generate_calls[-1]["clip_embeds"]
    assert embeds.shape[0] == 2 and torch.equal(embeds[:1], first["clip_embeds"])
    hist = s.history
    assert [m["role"] for m in hist] == ["user", "assistant"] * 3
    assert hist[4]["content"][0] == {"type": "clip", "clip": 1}
    assert spy.generate_calls[-1]["input_ids"][0].tolist() == _expected_ids(s, hist[:4] + [hist[4]])
    # what was served is a prefix of how training renders the same conversation (answers included)
    train_ids = _expected_ids(s, hist, add_generation_prompt=False)
    assert train_ids[: len(expected)] == expected
    # each video was decoded and encoded exactly once, however many turns used it
    assert spy.encode_calls == 2
    assert "[video 2: b.webm]" in s.transcript()[4][1]


def test_streaming_yields_pieces_and_stop_keeps_partial(model, videos):
    s = ChatSession(model, settings=GenerationSettings(temperature=1.0, top_p=1.0, max_new_tokens=40))
    s.add_video(videos["a"])
    torch.manual_seed(0)
    gen = s.ask("Describe it.")
    first = next(gen)
    assert isinstance(first, str) and first
    threads_before = threading.active_count()
    gen.close()  # the reader goes away: generation stops, the partial answer is kept
    assert threading.active_count() <= threads_before
    assert [m["role"] for m in s.history] == ["user", "assistant"]
    assert s.history[1]["content"][0]["text"] == first
    # a full answer streams in several pieces
    torch.manual_seed(1)
    pieces = list(s.ask("More detail?"))
    assert len(pieces) >= 2 and all(isinstance(p, str) and p for p in pieces)


def test_reset_forgets_history_and_videos(model, videos, spy):
    s = ChatSession(model)
    s.add_video(videos["a"])
    list(s.ask("Hi", temperature=0.0, max_new_tokens=4))
    s.reset()
    assert s.history == [] and s.clips == [] and s.pending_clips == []
    list(s.ask("Hello again", temperature=0.0, max_new_tokens=4))
    assert spy.generate_calls[-1]["clip_embeds"] is None
    assert spy.generate_calls[-1]["input_ids"][0].tolist() == _expected_ids(
        s, [{"role": "user", "content": [{"type": "text", "text": "Hello again"}]}])


def test_bad_files_are_rejected_readably_and_session_keeps_working(model, videos, tmp_path):
    s = ChatSession(model, max_upload_bytes=50_000)
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(videos["a"].read_bytes()[:400])
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 100
    big = tmp_path / "big.mp4"
    big.write_bytes(videos["a"].read_bytes()[:32] + b"\0" * 60_000)
    cases = [
        (text, "looks like a text file"),
        (empty, "empty"),
        (truncated, "could not decode"),
        (big, "too large"),
        (tmp_path / "missing.mp4", "does not exist"),
    ]
    for path, why in cases:
        with pytest.raises(VideoUploadError, match=why) as e:
            s.add_video(path)
        assert path.name in str(e.value)
    with pytest.raises(VideoUploadError, match="PNG image") as e:
        s.add_video(png, name="photo.mp4")
    assert "photo.mp4" in str(e.value) and "/tmp" not in str(e.value)  # no temp paths shown to the user
    with pytest.raises(VideoUploadError, match="empty"):
        s.add_video(b"", name="nothing.mp4")
    assert s.clips == [] and s.pending_clips == []
    # nothing was left behind by the bytes uploads, and the session still works
    assert not any(p.is_file() for p in s._area().path.rglob("*"))
    s.add_video(videos["a"])
    assert len(list(s.ask("Still there?", temperature=0.0, max_new_tokens=4))) >= 0
    assert len(s.history) == 2
    s.close()


def test_bad_requests(model):
    s = ChatSession(model)
    with pytest.raises(ChatError, match="type a question"):
        list(s.ask("   "))
    with pytest.raises(ChatError, match="temperature"):
        list(s.ask("hi", temperature=-1))
    with pytest.raises(ChatError, match="unknown generation setting"):
        list(s.ask("hi", beams=3))
    with pytest.raises(ValueError, match="frames"):
        ChatSession(model, num_frames=0)
    assert s.history == []


class _ScriptedModel(torch.nn.Module):
    """Streams a fixed token sequence (the real tokenizer) to exercise stop-marker handling."""

    def __init__(self, tokenizer, text):
        super().__init__()
        self.tokenizer = tokenizer
        self.ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        self.emb = torch.nn.Embedding(4, 2)
        self.llm = self
        self.kwargs = None

    def get_input_embeddings(self):
        return self.emb

    def generate(self, input_ids, attention_mask, clip_embeds, streamer, **kw):
        self.kwargs = kw
        streamer.put(input_ids)
        for i in self.ids:  # one token at a time, like real decoding
            streamer.put(torch.tensor([i]))
        streamer.end()


@pytest.mark.parametrize(
    "text,expected",
    [("  the red ball rolls ### Human: next", "the red ball rolls"),
     ("two words", "two words"),
     ("ends with a hash # sign", "ends with a hash # sign")],
)
def test_stop_marker_cut_while_streaming(model, text, expected):
    scripted = _ScriptedModel(model.tokenizer, text)
    run = StreamingGeneration(scripted, [1, 2, 3], None, GenerationSettings(temperature=0.0), ["###"], [2])
    assert "".join(run) == expected
    assert scripted.kwargs["stop_strings"] == ["###"] and scripted.kwargs["eos_token_id"] == [2]
    assert scripted.kwargs["do_sample"] is False


def test_reset_while_streaming_and_video_added_meanwhile(model, videos):
    s = ChatSession(model, settings=GenerationSettings(temperature=1.0, top_p=1.0, max_new_tokens=30))
    s.add_video(videos["a"])
    torch.manual_seed(2)
    gen = s.ask("Describe.")
    next(gen)
    s.add_video(videos["b"])  # e.g. another browser event while the first answer streams
    list(gen)
    assert [c.index for c in s.pending_clips] == [1]  # not swallowed by the answer that was streaming
    assert s.history[0]["content"][0] == {"type": "clip", "clip": 0} and len(s.history[0]["content"]) == 2
    torch.manual_seed(3)
    gen = s.ask("Again?")
    next(gen)
    s.reset()  # Reset pressed mid-answer: the stopped answer must not land in the new conversation
    gen.close()
    assert s.history == [] and s.clips == []


@pytest.mark.gpu
def test_cuda_bf16_session(videos):
    m = load_model(str(tiny_model_dir()), device="cuda")  # dtype auto: bfloat16 on CUDA
    s = ChatSession(m)
    s.add_video(videos["a"])
    assert s._embeds[0].device.type == "cuda" and s._embeds[0].dtype == torch.bfloat16
    pieces = list(s.ask("What happens?", temperature=0.0, max_new_tokens=8))
    assert s.history[1]["content"][0]["text"] == "".join(pieces)


def test_empty_answer_stays_out_of_history_and_next_question_works(model, videos, monkeypatch):
    """A model that stops at once must not poison the history (the renderer refuses empty turns)."""
    import serve.chat_session as cs

    class Silent:
        def __init__(self, *a, **k):
            pass

        def __iter__(self):
            return iter(())

        def close(self):
            pass

    s = ChatSession(model, settings=GenerationSettings(temperature=0.0, max_new_tokens=8))
    s.add_video(videos["a"])
    with monkeypatch.context() as m:
        m.setattr(cs, "StreamingGeneration", Silent)
        assert list(s.ask("Anything?")) == []
    assert s.history == []  # nothing entered; the video is still waiting for the next question
    answer = "".join(s.ask("What happens?"))
    assert answer
    roles = [m["role"] for m in s.history]
    assert roles == ["user", "assistant"]
    assert s.history[0]["content"][0] == {"type": "clip", "clip": 0}
