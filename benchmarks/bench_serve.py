"""Load test of the Gradio chat app: N concurrent gradio_client sessions against a local server.

    .venv/bin/python benchmarks/bench_serve.py --sessions 16            # tiny random model, built on the fly
    .venv/bin/python benchmarks/bench_serve.py --sessions 8 --model DIR  # an exported model folder

Starts `videochat serve` as a subprocess on a free loopback port (never another host), then every session
(a thread with its own gradio_client.Client, i.e. its own browser session) at the same moment uploads a
test video and asks `--turns` questions. Prints one JSON object: p50/p95/max time to first streamed token
and to the full answer (seconds, measured at the client from submitting the question), upload+encode
times, errors (exceptions, refused requests, answers that are error messages) with samples, wall time.
Bounded: at most 64 sessions, and everything is abandoned after `--timeout` seconds (counted as errors).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from serve.testing import free_port, tiny_model_dir, write_test_video  # noqa: E402

MAX_SESSIONS = 64
ERROR_PREFIX = "**Error:**"


def _stats(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    a = np.asarray(xs, dtype=float)
    return {"n": len(xs), "p50": round(float(np.percentile(a, 50)), 3), "p95": round(float(np.percentile(a, 95)), 3),
            "max": round(float(a.max()), 3), "mean": round(float(a.mean()), 3)}


def _last_text(chat: list[dict]) -> tuple[str, str]:
    if not chat:
        return "", ""
    m = chat[-1]
    c = m["content"]
    text = "".join(p.get("text", "") for p in c) if isinstance(c, list) else str(c)
    return m["role"], text


def _session(url: str, video: Path, turns: int, max_new_tokens: int, fetch: bool, start: threading.Barrier,
             out: dict) -> None:
    from gradio_client import Client, handle_file

    try:
        client = Client(url, verbose=False, download_files=fetch)
        start.wait(timeout=120)
        t0 = time.perf_counter()
        chat, _gallery = client.predict(handle_file(str(video)), 8, api_name="/add_video")
        out["upload"] = time.perf_counter() - t0
        role, text = _last_text(chat)
        if text.startswith(ERROR_PREFIX):
            raise RuntimeError(f"upload rejected: {text[:200]}")
        for turn in range(turns):
            t0 = time.perf_counter()
            job = client.submit(f"Question {turn + 1}: what happens in the video?", 0.8, 0.95, max_new_tokens,
                                api_name="/ask")
            first = None
            for update in job:
                role, text = _last_text(update[0])
                if first is None and role == "assistant" and text:
                    first = time.perf_counter() - t0
            full = time.perf_counter() - t0
            role, text = _last_text(job.outputs()[-1][0])
            if role != "assistant" or not text or text.startswith(ERROR_PREFIX):
                raise RuntimeError(f"bad answer on turn {turn + 1}: {text[:200]!r}")
            out.setdefault("ttft", []).append(first if first is not None else full)
            out.setdefault("full", []).append(full)
    except Exception as e:  # noqa: BLE001 - every failure is counted and sampled in the report
        out["error"] = f"{type(e).__name__}: {str(e)[:300]}"


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "gradio_api/info", timeout=2) as r:  # noqa: S310 - loopback only
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the server did not answer at {url} within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=16, help=f"concurrent sessions (1..{MAX_SESSIONS}, default 16)")
    ap.add_argument("--turns", type=int, default=1, help="questions per session (default 1)")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="answer length in tokens (default 32)")
    ap.add_argument("--model", default=None, help="model folder (default: the tiny random model, built now)")
    ap.add_argument("--concurrency", type=int, default=2, help="server-side model concurrency (default 2)")
    ap.add_argument("--device", default="cpu", help="server device (default cpu)")
    ap.add_argument("--no-fetch", action="store_true",
                    help="clients do not download the frame thumbnails (a browser would)")
    ap.add_argument("--server-log", default=None, help="keep the server's log in this file")
    ap.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds (default 300)")
    args = ap.parse_args(argv)
    if not 1 <= args.sessions <= MAX_SESSIONS:
        ap.error(f"--sessions must be between 1 and {MAX_SESSIONS}")
    if not 1 <= args.turns <= 10:
        ap.error("--turns must be between 1 and 10")

    model_dir = Path(args.model) if args.model else tiny_model_dir()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    video = write_test_video(work / "clip.mp4", num_frames=32, size=(128, 96))
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, "-m", "videochat.cli", "serve", "--model", str(model_dir), "--host", "127.0.0.1",
           "--port", str(port), "--device", args.device, "--concurrency", str(args.concurrency),
           "--max-queue", str(max(64, 2 * args.sessions)), "--temp-dir", str(work)]
    log_path = work / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO), env=env)
    results = [dict() for _ in range(args.sessions)]
    t_wall = time.perf_counter()
    try:
        _wait_ready(url, proc, timeout=120)
        start = threading.Barrier(args.sessions)
        threads = [threading.Thread(target=_session,
                                    args=(url, video, args.turns, args.max_new_tokens, not args.no_fetch, start, r),
                                    daemon=True) for r in results]
        t_wall = time.perf_counter()
        for t in threads:
            t.start()
        deadline = time.time() + args.timeout
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.time()))
        for t, r in zip(threads, results):
            if t.is_alive() and "error" not in r:
                r["error"] = f"timed out after {args.timeout:.0f} s"
    finally:
        wall = time.perf_counter() - t_wall
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    errors = [r["error"] for r in results if "error" in r]
    report = {
        "benchmark": "serve",
        "sessions": args.sessions,
        "turns_per_session": args.turns,
        "max_new_tokens": args.max_new_tokens,
        "server_concurrency": args.concurrency,
        "model": str(args.model) if args.model else "videochat_tiny (random weights)",
        "device": args.device,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "time_to_first_token_s": _stats([x for r in results for x in r.get("ttft", [])]),
        "time_to_full_answer_s": _stats([x for r in results for x in r.get("full", [])]),
        "clients_fetch_thumbnails": not args.no_fetch,
        "upload_and_encode_s": _stats([r["upload"] for r in results if "upload" in r]),
        "answers": sum(len(r.get("full", [])) for r in results),
        "errors": len(errors),
        "error_samples": errors[:5],
        "wall_s": round(wall, 3),
    }
    if errors:
        report["server_log_tail"] = log_path.read_text(errors="replace")[-2000:]
    print(json.dumps(report, indent=2))
    import shutil

    if args.server_log:
        shutil.copy(log_path, args.server_log)
    shutil.rmtree(work, ignore_errors=True)
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
