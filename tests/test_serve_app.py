"""The Gradio app started in-test on a free loopback port, driven with gradio_client."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

from serve.app import build_app, launch
from serve.cli import load_model
from serve.testing import free_port, write_test_video
from serve.uploads import UploadArea

MAX_UPLOAD_MB = 0.2  # small, so the size limit is cheap to test


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import shutil

    from serve.testing import tiny_model_dir

    d = tmp_path_factory.mktemp("serve_app") / "model"
    shutil.copytree(tiny_model_dir(), d)  # videochat_tiny() as saved by save_pretrained, plus examples/
    ex = d / "examples"
    ex.mkdir()
    write_test_video(ex / "shapes.mp4", seed=5)
    return d


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    from serve.app import find_example_videos

    model = load_model(str(model_dir), device="cpu")
    area = UploadArea(root=tmp_path_factory.mktemp("serve_area"))
    app = build_app(model, upload_area=area, max_upload_mb=MAX_UPLOAD_MB, concurrency=2,
                    example_videos=find_example_videos(model_dir / "examples"))
    port = free_port()
    launch(app, port=port, max_upload_mb=MAX_UPLOAD_MB, prevent_thread_lock=True, quiet=True)
    yield {"app": app, "area": area, "url": f"http://127.0.0.1:{port}/", "port": port, "model_dir": model_dir}
    app.close()
    area.cleanup()
    assert not area.path.exists()


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_test_video(tmp_path_factory.mktemp("serve_app_v") / "clip.mp4", seed=3)


def _client(url):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=False)  # the thumbnails need not be fetched here


def _texts(chat):
    return [(m["role"], "".join(p.get("text", "") for p in m["content"]) if isinstance(m["content"], list)
             else str(m["content"])) for m in chat]


def _ask(client, text, max_new_tokens=16, temperature=0.8):
    """Submit a question; return (number of streamed updates, final chat)."""
    job = client.submit(text, temperature, 1.0, max_new_tokens, api_name="/ask")
    updates = [out for out in job]
    return len(updates), job.outputs()[-1][0]


def test_upload_ask_streamed_reply(server, video):
    from gradio_client import handle_file

    c = _client(server["url"])
    chat, gallery = c.predict(handle_file(str(video)), 8, api_name="/add_video")
    roles_texts = _texts(chat)
    assert roles_texts[-1][0] == "user" and "Added video 1" in roles_texts[-1][1] and "clip.mp4" in roles_texts[-1][1]
    assert len(gallery) == 8 and gallery[0]["caption"].startswith("video 1 · ")
    n_updates, chat = _ask(c, "What is moving?")
    assert n_updates >= 3  # the empty answer, then streamed pieces
    assert _texts(chat)[-2] == ("user", "What is moving?")
    role, answer = _texts(chat)[-1]
    assert role == "assistant" and answer and not answer.startswith("**Error:**")
    # a second video mid-conversation, then another turn that sees both
    chat, gallery = c.predict(handle_file(str(video)), 4, api_name="/add_video")
    assert "Added video 2" in _texts(chat)[-1][1] and len(gallery) == 8 + 4
    _, chat = _ask(c, "And now?", max_new_tokens=4)
    assert len(chat) == 6 and not _texts(chat)[-1][1].startswith("**Error:**")
    chat, gallery, vid = c.predict(api_name="/reset")
    assert chat == [] and gallery == []


def test_bad_uploads_answered_while_another_session_streams(server, video, tmp_path):
    from gradio_client import handle_file

    good, bad = _client(server["url"]), _client(server["url"])
    good.predict(handle_file(str(video)), 8, api_name="/add_video")
    result = {}

    def long_answer():
        result["out"] = _ask(good, "Tell me everything.", max_new_tokens=48)

    t = threading.Thread(target=long_answer)
    t.start()
    text = tmp_path / "notes.mp4"
    text.write_text("hello, not a video")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(video.read_bytes()[:500])
    for path, why in [(text, "looks like a text file"), (empty, "empty"), (cut, "could not decode")]:
        chat, _ = bad.predict(handle_file(str(path)), 8, api_name="/add_video")
        role, msg = _texts(chat)[-1]
        assert role == "assistant" and msg.startswith("**Error:**") and why in msg and path.name in msg
    # too large: refused at the HTTP layer by Gradio's max_file_size, with a readable error
    big = tmp_path / "big.mp4"
    big.write_bytes(video.read_bytes()[:64] + b"\0" * int(MAX_UPLOAD_MB * 10**6 + 1000))
    with pytest.raises(Exception, match="(?i)size"):
        bad.predict(handle_file(str(big)), 8, api_name="/add_video")
    t.join(timeout=60)
    n_updates, chat = result["out"]
    assert n_updates >= 2 and not _texts(chat)[-1][1].startswith("**Error:**")
    # the bad session still works afterwards and never saw the other session's conversation
    chat, _ = bad.predict(handle_file(str(video)), 8, api_name="/add_video")
    assert "Added video 1" in _texts(chat)[-1][1]
    _, chat = _ask(bad, "Now?", max_new_tokens=4)
    texts = [t for _, t in _texts(chat)]
    assert "Tell me everything." not in texts and "Now?" in texts


def test_empty_question_and_bad_settings(server):
    c = _client(server["url"])
    _, chat = _ask(c, "   ")
    assert chat == []  # nothing to answer, nothing added
    with pytest.raises(Exception, match="minimum"):  # out of range from an API client: refused, no crash
        c.predict("hello", 0.5, 1.0, 0, api_name="/ask")
    _, chat = _ask(c, "hello", max_new_tokens=3)
    assert _texts(chat)[0] == ("user", "hello") and not _texts(chat)[-1][1].startswith("**Error:**")


def test_serves_no_files_outside_its_area(server, video):
    from gradio_client import handle_file

    base = server["url"] + "gradio_api/file="
    outside = [str(server["model_dir"] / "config.json"), "/etc/passwd", str(video)]
    for path in outside:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + path, timeout=10)
        assert e.value.code in (403, 404)
    # uploads land inside the app's private area, and are served from there
    c = _client(server["url"])
    c.predict(handle_file(str(video)), 8, api_name="/add_video")
    uploads = [p for p in server["area"].path.rglob("clip.mp4")]
    assert uploads and all(server["area"].contains(p) for p in uploads)
    with urllib.request.urlopen(base + str(uploads[0]), timeout=10) as r:
        assert r.status == 200
    # an API call naming a server-side file (not an upload) is refused; nothing is read from it
    call = server["url"] + "gradio_api/call/add_video"
    body = json.dumps({"data": [{"path": str(video), "meta": {"_type": "gradio.FileData"}}, 8]}).encode()
    req = urllib.request.Request(call, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        event_id = json.load(r)["event_id"]
    with urllib.request.urlopen(f"{call}/{event_id}", timeout=30) as r:
        stream = r.read().decode()
    assert "event: error" in stream and "Added video" not in stream
    # the example video was copied into the area too
    assert list(server["area"].path.rglob("shapes.mp4"))


def test_loopback_bind_and_no_share_link(server):
    app = server["app"]
    assert app.server_name == "127.0.0.1" and not app.share and app.share_url is None
