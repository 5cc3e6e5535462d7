"""Upload checks (container sniffing, size, empty, non-files) and the private upload area."""

from __future__ import annotations

import os
import stat

import pytest

from serve.testing import write_test_video
from serve.uploads import UploadArea, UploadError, check_upload, sniff_container


@pytest.mark.parametrize("suffix,codec,expected", [
    (".mp4", "mpeg4", "mp4"), (".mov", "mpeg4", "mov"), (".webm", "libvpx", "webm"), (".mkv", "mpeg4", "mkv"),
    (".avi", "mpeg4", "avi"), (".ts", "mpeg2video", "mpegts"), (".mpg", "mpeg1video", "mpeg"),
])
def test_real_containers_are_recognised_by_content(tmp_path, suffix, codec, expected):
    fps = 25 if codec.startswith("mpeg") and codec != "mpeg4" else 8  # MPEG-1/2 allow only standard rates
    path = write_test_video(tmp_path / f"v{suffix}", num_frames=8, fps=fps, codec=codec)
    assert check_upload(path) == expected
    renamed = path.rename(tmp_path / "no_extension_at_all")  # the name plays no part
    assert check_upload(renamed) == expected


@pytest.mark.parametrize("head,looks_like", [
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "a PNG image"),
    (b"\xff\xd8\xff\xe0" + b"\0" * 64, "a JPEG image"),
    (b"%PDF-1.7\n", "a PDF document"),
    (b"PK\x03\x04" + b"\0" * 64, "a ZIP archive"),
    (b"#EXTM3U\n#EXTINF:10,\nfile:///etc/passwd\n", "a playlist"),
    (b"ffconcat version 1.0\nfile /etc/passwd\n", "a text file"),
    (bytes(range(200, 256)) * 4, "an unknown binary file"),
])
def test_non_videos_are_rejected_with_what_they_look_like(tmp_path, head, looks_like):
    assert sniff_container(head) is None
    path = tmp_path / "upload.mp4"
    path.write_bytes(head)
    with pytest.raises(UploadError, match="not a supported video file") as e:
        check_upload(path)
    assert looks_like in str(e.value) and "upload.mp4" in str(e.value)


def test_size_empty_and_non_regular_files(tmp_path):
    video = write_test_video(tmp_path / "v.mp4")
    size = video.stat().st_size
    assert check_upload(video, max_bytes=size) == "mp4"
    with pytest.raises(UploadError, match="too large"):
        check_upload(video, max_bytes=size - 1)
    assert check_upload(video, max_bytes=None) == "mp4"
    empty = tmp_path / "e.mp4"
    empty.touch()
    with pytest.raises(UploadError, match="empty"):
        check_upload(empty)
    with pytest.raises(UploadError, match="not a regular file"):
        check_upload(tmp_path)
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    with pytest.raises(UploadError, match="not a regular file"):  # never opened, so never blocks
        check_upload(fifo)
    with pytest.raises(UploadError, match="does not exist"):
        check_upload(tmp_path / "gone.mp4")


def test_upload_area_is_private_and_cleaned(tmp_path):
    area = UploadArea(root=tmp_path)
    assert stat.S_IMODE(area.path.stat().st_mode) == 0o700
    p = area.write_bytes(b"abc", suffix=".mp4")
    assert p.suffix == ".mp4" and area.contains(p) and stat.S_IMODE(p.stat().st_mode) == 0o600
    assert area.write_bytes(b"x", suffix="/../../evil").suffix == ".bin"  # no path tricks via the suffix
    assert not area.contains(tmp_path / "elsewhere.mp4")
    link = area.path / "link"
    link.symlink_to("/etc/passwd")
    assert not area.contains(link)  # symlinks are resolved before the check
    src = tmp_path / "example.mp4"
    src.write_bytes(b"data")
    assert area.contains(area.copy_in(src))
    with area:
        pass
    assert not area.path.exists()
    area.cleanup()  # idempotent
    with pytest.raises(RuntimeError):
        area.write_bytes(b"late")
