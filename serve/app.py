"""The Gradio chat app: upload videos, see the sampled frames, chat with streamed answers.

One `ChatSession` per browser session lives in a `gr.State` (created on first use, freed by Gradio when
the session expires), so users never see each other's videos or history. Every event that touches the
model shares one queue with a concurrency limit (`concurrency_id="model"`). Bad uploads and failed
answers become a readable message in the chat; the handlers never let an exception take the server down.

Files: Gradio's upload cache is pointed at the app's private `UploadArea` (GRADIO_TEMP_DIR), example videos
are copied in there, and no `allowed_paths` are given, so the server serves nothing from outside that
area; the area is deleted when the server stops and Gradio prunes old uploads (`delete_cache`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

from serve.chat_session import ChatError, ChatSession, VideoUploadError
from serve.generation import GenerationSettings
from serve.uploads import DEFAULT_MAX_UPLOAD_MB, UploadArea

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi", ".gif", ".ts", ".mpg", ".mpeg", ".ogv", ".wmv")

ERROR_PREFIX = "**Error:**"
"""How problems (bad upload, failed answer) start in the chat (plain text: headless browsers lack emoji fonts)."""

_CSS = """
#vc-frames .caption-label { font-size: 11px; }
footer { display: none !important; }
"""


class UiState:
    """Per-browser-session state: the ChatSession, the messages shown in the chat box, frame thumbnails.

    Thumbnails are written once per video, atomically, as files private to this session inside Gradio's
    cache folder (`frames_root/<random>/`). Returning numpy arrays instead would make Gradio re-encode and
    rewrite every thumbnail on each update, into a content-hashed path shared by all sessions that
    uploaded the same video, so a browser could fetch a half-written file.
    """

    def __init__(self, session: ChatSession, frames_root: Path):
        self.session = session
        self.display: list[dict[str, Any]] = []
        self.frames_dir = frames_root / uuid.uuid4().hex
        self._thumbs: dict[int, list[str]] = {}

    def _write_thumbs(self, clip) -> list[str]:
        from PIL import Image

        self.frames_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, thumb in enumerate(clip.thumbnails):
            final = self.frames_dir / f"video{clip.index + 1}_frame{i + 1}.webp"
            tmp = final.with_suffix(".tmp")
            Image.fromarray(thumb).save(tmp, format="WEBP", quality=85)
            os.replace(tmp, final)
            paths.append(str(final))
        return paths

    def snapshot(self) -> list[dict[str, Any]]:
        """A copy of the chat messages for Gradio (the streaming answer keeps changing in place)."""
        return [dict(m) for m in self.display]

    def gallery(self) -> list[tuple[str, str]]:
        """(thumbnail file, caption) for every sampled frame of every video in the conversation."""
        out = []
        for c in self.session.clips:
            paths = self._thumbs.get(c.index)
            if paths is None or not all(os.path.exists(p) for p in paths):  # Gradio prunes files after an hour
                self._thumbs[c.index] = self._write_thumbs(c)
            out += [(p, f"video {c.index + 1} · {t:.2f} s") for p, t in zip(self._thumbs[c.index], c.timestamps)]
        return out

    def reset(self) -> None:
        self.session.reset()
        self.display = []
        self._thumbs = {}
        shutil.rmtree(self.frames_dir, ignore_errors=True)

    def close(self) -> None:
        self.reset()
        self.session.close()


def _close_state(state: Any) -> None:
    """gr.State delete callback: free the session's cached embeddings when Gradio drops the session."""
    if isinstance(state, UiState):
        state.close()


def find_example_videos(folder: str | os.PathLike | None, limit: int = 8) -> list[Path]:
    """Video files in `folder` (e.g. `MODEL_DIR/examples/`), sorted, at most `limit`; [] when absent."""
    if folder is None or not Path(folder).is_dir():
        return []
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)[:limit]


def _describe(info) -> str:
    times = ", ".join(f"{t:.2f}" for t in info.timestamps)
    dur = f", {info.duration:.1f} s long" if info.duration else ""
    return f"Added video {info.index + 1}: **{info.name}**{dur} — {len(info.timestamps)} frames at {times} s."


def build_app(
    model: Any,
    *,
    upload_area: UploadArea,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    concurrency: int = 1,
    max_queue: int = 64,
    settings: GenerationSettings | None = None,
    example_videos: Sequence[str | os.PathLike] = (),
    session_ttl_s: int = 3600,
    answer_time_limit_s: int | None = 300,
    title: str = "videochat",
):
    """Build the Gradio Blocks app around one loaded model (call `launch` to serve it).

    Args:
        model: a loaded `VideoChatModel` (shared by all sessions, read-only).
        upload_area: the private temp folder; Gradio's upload cache is put inside it.
        max_upload_mb: upload size limit (enforced by Gradio for HTTP uploads and re-checked per video).
        concurrency: model events (encode a video, answer) run at once; the rest wait in the queue.
        max_queue: queued requests beyond which new ones are refused with "queue full".
        settings: default generation settings shown in the sliders.
        example_videos: videos offered as examples (copied into the upload area first).
        session_ttl_s: idle seconds after which a browser session's state is freed.
        answer_time_limit_s: longest one event may run (None: no limit).
    """
    # Gradio reads its cache folder when components are built and when the server starts.
    os.environ["GRADIO_TEMP_DIR"] = str(upload_area.subdir("gradio"))
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(upload_area.subdir("examples_cache"))
    import gradio as gr

    settings = settings or GenerationSettings()
    settings.validate()
    max_bytes = int(max_upload_mb * 10**6)
    default_frames = int(settings.num_frames or model.config.num_frames)
    examples = [str(upload_area.copy_in(p)) for p in example_videos]

    frames_root = upload_area.subdir("gradio") / "frames"

    def new_state() -> UiState:
        session = ChatSession(model, settings=settings, max_upload_bytes=max_bytes, upload_area=upload_area)
        return UiState(session, frames_root)

    def on_video(video: str | None, frames: float, state: UiState | None):
        if not video:  # cleared, or reset by the app
            return state, gr.skip(), gr.skip()
        state = state if isinstance(state, UiState) else new_state()
        if not upload_area.contains(video):  # Gradio already refuses such paths; never read outside the area
            log.warning("refused a video path outside the upload area: %s", video)
            state.display.append({"role": "assistant", "content": f"{ERROR_PREFIX} that file is not an upload."})
            return state, state.snapshot(), state.gallery()
        try:
            t0 = time.perf_counter()
            info = state.session.add_video(video, name=Path(video).name, num_frames=int(frames))
            log.info("video %s added in %.2f s", info.name, time.perf_counter() - t0)
            state.display.append({"role": "user", "content": _describe(info)})
        except VideoUploadError as e:
            state.display.append({"role": "assistant", "content": f"{ERROR_PREFIX} that upload cannot be used: {e}"})
        except Exception as e:  # noqa: BLE001 - keep serving; the details go to the server log
            log.exception("adding a video failed")
            state.display.append({"role": "assistant", "content": f"{ERROR_PREFIX} reading the video failed ({type(e).__name__}); see the server log."})
        return state, state.snapshot(), state.gallery()

    def on_ask(text: str, temperature: float, top_p: float, max_new_tokens: float, state: UiState | None) -> Iterator:
        state = state if isinstance(state, UiState) else new_state()
        text = (text or "").strip()
        if not text:
            yield state, state.snapshot(), gr.skip()
            return
        state.display.append({"role": "user", "content": text})
        answer = {"role": "assistant", "content": ""}
        state.display.append(answer)
        yield state, state.snapshot(), ""
        try:
            t0 = time.perf_counter()
            first = None
            stream = state.session.ask(
                text, temperature=float(temperature), top_p=float(top_p), max_new_tokens=int(max_new_tokens)
            )
            for piece in stream:
                first = first if first is not None else time.perf_counter() - t0
                answer["content"] += piece
                yield state, state.snapshot(), ""
            log.info("answered in %.2f s (first piece after %.2f s)", time.perf_counter() - t0, first or 0.0)
            if not answer["content"]:
                answer["content"] = "(empty answer)"
        except ChatError as e:
            answer["content"] = f"{ERROR_PREFIX} {e}"
        except Exception as e:  # noqa: BLE001
            log.exception("generation failed")
            answer["content"] = f"{ERROR_PREFIX} generating the answer failed ({type(e).__name__}); see the server log."
        yield state, state.snapshot(), ""

    def on_reset(state: UiState | None):
        if isinstance(state, UiState):
            state.reset()
        return state, [], [], None

    with gr.Blocks(title=title, delete_cache=(600, 3600)) as app:
        state = gr.State(None, time_to_live=session_ttl_s, delete_callback=_close_state)
        gr.Markdown(f"## {title}\nUpload a video, then ask about it. Add another video at any point in the conversation.")
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                video = gr.Video(label="Video", sources=["upload"], include_audio=True, height=260, elem_id="vc-video")
                if examples:
                    gr.Examples(examples=[[p] for p in examples], inputs=[video], label="Example videos")
                gallery = gr.Gallery(
                    label="Sampled frames", columns=4, height=230, object_fit="contain",
                    allow_preview=True, interactive=False, elem_id="vc-frames",
                )
                with gr.Accordion("Generation settings", open=False):
                    temperature = gr.Slider(0.0, 2.0, value=settings.temperature, step=0.05, label="Temperature (0 = greedy)")
                    top_p = gr.Slider(0.05, 1.0, value=settings.top_p, step=0.05, label="Top-p")
                    max_new = gr.Slider(1, 1024, value=min(settings.max_new_tokens, 1024), step=1, label="Max new tokens")
                    frames = gr.Slider(1, max(32, default_frames), value=default_frames, step=1, label="Frames per video (for the next upload)")
            with gr.Column(scale=3, min_width=360):
                chatbot = gr.Chatbot(label="Chat", height=480, elem_id="vc-chat", feedback_options=None, buttons=["copy", "copy_all"])
                with gr.Row():
                    textbox = gr.Textbox(placeholder="Ask about the video…", show_label=False, scale=5, elem_id="vc-input")
                    send = gr.Button("Send", variant="primary", scale=1, min_width=80, elem_id="vc-send")
                with gr.Row():
                    stop = gr.Button("Stop", scale=1, elem_id="vc-stop")
                    reset = gr.Button("Reset", scale=1, elem_id="vc-reset")

        model_events = dict(concurrency_limit=concurrency, concurrency_id="model", time_limit=answer_time_limit_s)
        video.change(
            on_video, [video, frames, state], [state, chatbot, gallery], api_name="add_video",
            show_progress="minimal", **model_events,
        )
        ask_inputs = [textbox, temperature, top_p, max_new, state]
        ask_outputs = [state, chatbot, textbox]
        submit_ev = textbox.submit(on_ask, ask_inputs, ask_outputs, api_name="ask", show_progress="hidden", **model_events)
        click_ev = send.click(on_ask, ask_inputs, ask_outputs, api_visibility="private", show_progress="hidden", **model_events)
        stop.click(None, None, None, cancels=[submit_ev, click_ev])
        reset.click(on_reset, [state], [state, chatbot, gallery, video], api_name="reset", cancels=[submit_ev, click_ev])
        # the chat box's own clear (bin) button resets the session too, so display and model stay in step
        chatbot.clear(on_reset, [state], [state, chatbot, gallery, video], api_visibility="private", cancels=[submit_ev, click_ev])

    app.queue(max_size=max_queue, default_concurrency_limit=concurrency)
    app.videochat_css = _CSS  # passed to launch (gradio 6 takes css at launch time)
    return app


def launch(
    app,
    *,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    share: bool = False,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_sessions: int = 256,
    prevent_thread_lock: bool = False,
    quiet: bool = False,
):
    """Serve the app: loopback by default, no share link unless `share`, uploads capped at `max_upload_mb`."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: the app is reachable from other machines (it has no login)", host)
    return app.launch(
        server_name=host,
        server_port=port,
        share=bool(share),
        max_file_size=int(max_upload_mb * 10**6),
        state_session_capacity=max_sessions,
        prevent_thread_lock=prevent_thread_lock,
        show_error=False,
        quiet=quiet,
        ssr_mode=False,
        mcp_server=False,
        css=getattr(app, "videochat_css", None),
        footer_links=[],
    )
