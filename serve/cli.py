"""`videochat chat` (terminal chat) and `videochat serve` (the Gradio app).

    videochat chat  --model DIR --video clip.mp4          # then type; /video PATH, /reset, /quit
    videochat serve --model DIR [--host 127.0.0.1] [--port 7860] [--share]
"""

from __future__ import annotations

import argparse
import atexit
import logging
import signal
import sys
import threading
from typing import Any

from serve.generation import GenerationSettings
from serve.uploads import DEFAULT_MAX_UPLOAD_MB

log = logging.getLogger(__name__)

CHAT_HELP = """commands:
  /video PATH   add a video (it joins your next message)
  /reset        forget the conversation and its videos
  /quit         leave (also Ctrl-D)
  /help         this text"""


def load_model(model_dir: str, device: str | None = None, dtype: str = "auto") -> Any:
    """Load an exported model folder for inference (eval mode; bf16 on CUDA and fp32 on CPU by default)."""
    import torch

    from videochat.model import VideoChatModel

    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    else:
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    model = VideoChatModel.from_pretrained(model_dir, device=device, dtype=torch_dtype)
    model.eval()
    return model


def _add_common(p: argparse.ArgumentParser) -> None:
    d = GenerationSettings()
    p.add_argument("--model", required=True, metavar="DIR", help="exported model folder (videochat export / save_pretrained)")
    p.add_argument("--device", default="auto", help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="weights dtype (auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--temperature", type=float, default=d.temperature, help="sampling temperature; 0 = greedy (default %(default)s)")
    p.add_argument("--top-p", type=float, default=d.top_p, help="nucleus sampling mass (default %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="longest answer in tokens (default %(default)s)")
    p.add_argument("--frames", type=int, default=None, help="frames sampled per video (default: the model config's num_frames)")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, help="largest accepted video in MB (default %(default)s)")


def _settings(args: argparse.Namespace) -> GenerationSettings:
    s = GenerationSettings(
        temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens, num_frames=args.frames
    )
    s.validate()
    return s


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `chat` and `serve` commands.

    The dispatcher may already hold a bare placeholder for the command it is *not* running (it registers
    placeholders in COMMANDS order), so a name that is already taken is left alone.
    """
    if "chat" not in subparsers.choices:
        _register_chat(subparsers)
    if "serve" not in subparsers.choices:
        _register_serve(subparsers)


def _register_chat(subparsers: argparse._SubParsersAction) -> None:
    chat = subparsers.add_parser("chat", help="chat about a video in the terminal", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(chat)
    chat.add_argument("--video", action="append", default=[], metavar="PATH", help="video to start with (repeatable)")
    chat.set_defaults(func=run_chat)


def _register_serve(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="serve the Gradio chat app", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: this machine only)")
    serve.add_argument("--port", type=int, default=7860, help="port (default %(default)s)")
    serve.add_argument("--share", action="store_true", help="also create a public gradio.live share link (off by default)")
    serve.add_argument("--concurrency", type=int, default=1, help="model requests run at once; others queue (default %(default)s)")
    serve.add_argument("--max-queue", type=int, default=64, help="queued requests before new ones are refused (default %(default)s)")
    serve.add_argument("--max-sessions", type=int, default=256, help="browser sessions kept in memory (default %(default)s)")
    serve.add_argument("--examples", metavar="DIR", default=None, help="folder of example videos (default: MODEL/examples when present)")
    serve.add_argument("--temp-dir", metavar="DIR", default=None, help="parent of the private upload folder (default: the system temp dir)")
    serve.set_defaults(func=run_serve)


# ---------------------------------------------------------------------------------------------- chat
def run_chat(args: argparse.Namespace, stdin=None, stdout=None) -> int:
    from serve.chat_session import ChatError, ChatSession

    stdin = stdin or sys.stdin
    out = stdout or sys.stdout
    try:
        settings = _settings(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model = load_model(args.model, args.device, args.dtype)
    session = ChatSession(model, settings=settings, max_upload_bytes=int(args.max_upload_mb * 10**6))
    interactive = stdin.isatty()

    def say(msg: str) -> None:
        print(msg, file=out, flush=True)

    def add(path: str) -> bool:
        try:
            info = session.add_video(path)
        except ChatError as e:
            say(f"error: {e}")
            return False
        times = ", ".join(f"{t:.1f}" for t in info.timestamps)
        say(f"[video {info.index + 1}: {info.name}, {len(info.timestamps)} frames at {times} s]")
        return True

    try:
        for v in args.video:
            add(v)
        say("Type a question about the video; /help for commands.")
        while True:
            if interactive:
                out.write("you> ")
                out.flush()
            line = stdin.readline()
            if not line:  # EOF
                break
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                cmd, _, arg = line.partition(" ")
                if cmd in ("/quit", "/exit", "/q"):
                    break
                if cmd == "/reset":
                    session.reset()
                    say("[conversation reset]")
                elif cmd == "/video":
                    if arg.strip():
                        add(arg.strip())
                    else:
                        say("usage: /video PATH")
                elif cmd == "/help":
                    say(CHAT_HELP)
                else:
                    say(f"unknown command {cmd}; /help lists them")
                continue
            out.write("assistant> ")
            out.flush()
            try:
                for piece in session.ask(line):
                    out.write(piece)
                    out.flush()
                out.write("\n")
            except ChatError as e:
                out.write(f"\nerror: {e}\n")
            except KeyboardInterrupt:
                out.write("\n[stopped]\n")
            out.flush()
    except KeyboardInterrupt:
        pass
    finally:
        session.close()
    return 0


# --------------------------------------------------------------------------------------------- serve
def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def run_serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from serve.app import build_app, find_example_videos, launch
    from serve.uploads import UploadArea

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = _settings(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model = load_model(args.model, args.device, args.dtype)
    examples = find_example_videos(args.examples or Path(args.model) / "examples")
    area = UploadArea(root=args.temp_dir)
    atexit.register(area.cleanup)
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (service managers, `kill`) ends the server like Ctrl-C does, so the finally below runs
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        app = build_app(
            model, upload_area=area, max_upload_mb=args.max_upload_mb, concurrency=args.concurrency,
            max_queue=args.max_queue, settings=settings, example_videos=examples,
        )
        launch(app, host=args.host, port=args.port, share=args.share, max_upload_mb=args.max_upload_mb,
               max_sessions=args.max_sessions)
    except KeyboardInterrupt:
        pass
    finally:
        area.cleanup()
        log.info("stopped; removed %s", area.path)
    return 0
