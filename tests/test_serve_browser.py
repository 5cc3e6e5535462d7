"""A real browser (headless Debian Chromium driven by Playwright) uploads a video and chats.

Skipped only when /usr/bin/chromium is absent (`make test` installs it with apt as root). The screenshot
goes to `$VIDEOCHAT_SCREENSHOT_DIR` when set (CI artifacts), else to the test's tmp folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                       reason=f"{CHROMIUM} not installed (apt-get install chromium; `make test` does it as root)"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from serve.app import build_app, launch
    from serve.cli import load_model
    from serve.testing import free_port, tiny_model_dir
    from serve.uploads import UploadArea

    model = load_model(str(tiny_model_dir()), device="cpu")
    area = UploadArea(root=tmp_path_factory.mktemp("serve_browser_area"))
    app = build_app(model, upload_area=area, concurrency=2)
    port = free_port()
    launch(app, port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.close()
    area.cleanup()


def test_browser_upload_ask_and_see_reply(server, tmp_path):
    pw = pytest.importorskip("playwright.sync_api")
    from serve.testing import write_test_video

    # VP8/WebM plays in every Chromium build, so the player shows the video in the screenshot
    video = write_test_video(tmp_path / "moving_square.webm", num_frames=24, size=(160, 120), codec="libvpx", seed=7)
    shot_dir = Path(os.environ.get("VIDEOCHAT_SCREENSHOT_DIR") or tmp_path)
    shot_dir.mkdir(parents=True, exist_ok=True)
    shot = shot_dir / "serve_browser.png"

    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server, wait_until="domcontentloaded", timeout=30_000)
            page.locator("#vc-video input[type=file]").set_input_files(str(video), timeout=30_000)
            chat = page.locator("#vc-chat")
            chat.get_by_text("Added video 1", exact=False).wait_for(timeout=30_000)
            # the sampled frames appear as thumbnails
            page.locator("#vc-frames img").first.wait_for(timeout=30_000)
            assert page.locator("#vc-frames img").count() >= 8

            page.locator("#vc-input textarea").fill("What is moving in the video?")
            page.locator("#vc-send").click()
            chat.get_by_text("What is moving in the video?").wait_for(timeout=30_000)
            bot = chat.locator('[data-testid="bot"]').last
            bot.wait_for(timeout=30_000)
            page.wait_for_function(
                """() => { const b = document.querySelectorAll('#vc-chat [data-testid="bot"]');
                           return b.length > 0 && b[b.length - 1].innerText.trim().length > 0; }""",
                timeout=30_000,
            )
            # wait until the answer stops growing (the stream has ended)
            page.wait_for_function(
                """() => { const g = document.querySelector('#vc-chat .generating, #vc-chat .pending');
                           return g === null; }""",
                timeout=30_000,
            )
            reply = bot.inner_text().strip()
            assert reply and not reply.startswith("**Error:**")
            page.screenshot(path=str(shot), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    assert shot.is_file() and shot.stat().st_size > 10_000
    if os.environ.get("VIDEOCHAT_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["VIDEOCHAT_KEEP_SCREENSHOT"])
