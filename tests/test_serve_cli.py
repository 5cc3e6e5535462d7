"""`videochat chat` (scripted stdin) and `videochat serve` (parser defaults; a real subprocess, slow)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from serve.testing import free_port, tiny_model_dir, write_test_video
from videochat.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


def test_serve_and_chat_parsers_safe_defaults():
    args = build_parser("serve").parse_args(["serve", "--model", "M"])
    assert args.host == "127.0.0.1" and args.share is False and args.port == 7860
    assert args.max_upload_mb == 200 and args.concurrency >= 1 and callable(args.func)
    args = build_parser("chat").parse_args(["chat", "--model", "M", "--video", "a.mp4", "--video", "b.mp4"])
    assert args.video == ["a.mp4", "b.mp4"] and callable(args.func)


def test_chat_cli_streams_and_handles_commands(tmp_path, monkeypatch, capsys):
    a = write_test_video(tmp_path / "a.mp4", seed=1)
    b = write_test_video(tmp_path / "b.mp4", seed=2)
    script = "\n".join([
        "/help",
        "What is moving?",
        f"/video {b}",
        f"/video {tmp_path / 'missing.mp4'}",
        "/video",
        "Compare them.",
        "/reset",
        "/bogus",
        "Hello?",
        "/quit",
        "never read",
    ]) + "\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    rc = main(["chat", "--model", str(tiny_model_dir()), "--video", str(a), "--device", "cpu",
               "--temperature", "0", "--max-new-tokens", "6"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "[video 1: a.mp4, 8 frames at" in out and "[video 2: b.mp4" in out
    assert out.count("assistant> ") == 3
    assert "error: missing.mp4: the file does not exist" in out
    assert "usage: /video PATH" in out and "/reset" in out  # the help text
    assert "[conversation reset]" in out and "unknown command /bogus" in out


def test_chat_cli_rejects_bad_settings(capsys):
    rc = main(["chat", "--model", "unused", "--temperature", "-1"])
    assert rc == 2 and "temperature" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_subprocess_binds_loopback_and_cleans_up(tmp_path):
    port = free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.Popen(
        [sys.executable, "-m", "videochat.cli", "serve", "--model", str(tiny_model_dir()), "--port", str(port),
         "--temp-dir", str(tmp_path)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
                assert time.time() < deadline, "server did not start"
                time.sleep(0.5)
        areas = list(tmp_path.glob("videochat-serve-*"))
        assert len(areas) == 1 and (areas[0] / "gradio").is_dir()
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True)
        if listening.returncode == 0 and listening.stdout.strip():
            local = {line.split()[3] for line in listening.stdout.splitlines()}  # State Recv-Q Send-Q Local Peer
            assert local == {f"127.0.0.1:{port}"}, local
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0].decode(errors="replace")
    assert proc.returncode == 0, out
    assert not list(tmp_path.glob("videochat-serve-*")), "the upload area was not removed"
    assert "gradio.live" not in out
