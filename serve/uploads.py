"""Upload checks and the private temp area of a chat server or terminal chat.

An upload is checked before any decoder sees it: it must be a regular file, non-empty, under the size limit,
and its first bytes must be a known video *container* (sniffed from the magic bytes, never trusted from the
file name). Sniffing first matters for safety as well as for clear messages: FFmpeg probes dozens of
formats, some of which (HLS/concat playlists) can make it open other local files, so only real video
containers are passed on to the decoder.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
import uuid
from pathlib import Path

DEFAULT_MAX_UPLOAD_MB = 200
"""Default upload size limit in MB (10^6 bytes)."""

_HEAD_BYTES = 512


class UploadError(ValueError):
    """A rejected upload; the message is meant for the user (no traceback needed)."""


def _looks_like(head: bytes) -> str:
    """A short human description of a non-video file, for the rejection message."""
    checks = [
        (b"\x89PNG", "a PNG image"),
        (b"\xff\xd8\xff", "a JPEG image"),
        (b"%PDF", "a PDF document"),
        (b"PK\x03\x04", "a ZIP archive"),
        (b"\x7fELF", "an executable"),
        (b"ID3", "an MP3 audio file"),
        (b"fLaC", "a FLAC audio file"),
        (b"#EXTM3U", "a playlist"),
    ]
    for magic, what in checks:
        if head.startswith(magic):
            return what
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "a WAV audio file"
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "an unknown binary file"


def sniff_container(head: bytes) -> str | None:
    """The video container named by a file's first bytes, or None when it is not a known video container.

    Recognised: ISO-BMFF (mp4/mov/m4v/3gp), QuickTime, Matroska/WebM, AVI, FLV, MPEG-TS, MPEG-PS, Ogg,
    ASF/WMV and GIF (animated GIFs are short clips too).
    """
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand == b"qt  ":
            return "mov"
        if brand.startswith(b"3g"):
            return "3gp"
        return "mp4"
    if len(head) >= 8 and head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"):
        return "mov"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm" if b"webm" in head[:64] else "mkv"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith(b"FLV\x01"):
        return "flv"
    if len(head) > 188 and head[0] == 0x47 and head[188] == 0x47:
        return "mpegts"
    if head.startswith(b"\x00\x00\x01\xba") or head.startswith(b"\x00\x00\x01\xb3"):
        return "mpeg"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return "asf"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    return None


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def check_upload(path: str | os.PathLike, max_bytes: int | None = DEFAULT_MAX_UPLOAD_MB * 10**6) -> str:
    """Check one uploaded file and return its container name; raise `UploadError` with a readable reason.

    Checks, in order: exists, is a regular file (not a folder, device or pipe), not empty, not over
    `max_bytes` (None: no limit), and a known video container by its magic bytes.
    """
    p = Path(path)
    name = p.name or str(p)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise UploadError(f"{name}: the file does not exist (the upload may have expired; upload it again)") from None
    except OSError as e:
        raise UploadError(f"{name}: cannot read the file ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise UploadError(f"{name}: not a regular file")
    if st.st_size == 0:
        raise UploadError(f"{name}: the file is empty (0 bytes)")
    if max_bytes is not None and st.st_size > max_bytes:
        raise UploadError(f"{name}: the file is too large ({_mb(st.st_size)}; the limit is {_mb(max_bytes)})")
    with open(p, "rb") as f:
        head = f.read(_HEAD_BYTES)
    container = sniff_container(head)
    if container is None:
        raise UploadError(
            f"{name}: not a supported video file (it looks like {_looks_like(head)}); "
            "upload an mp4, mov, webm, mkv, avi, mpeg-ts, ogg, wmv or gif video"
        )
    return container


class UploadArea:
    """A private temp folder (mode 0700) owned by one server or chat process, removed by `cleanup()`.

    Holds uploads that arrive as bytes (written, decoded, deleted) and the copies of example videos the
    app shows; the Gradio app also points Gradio's own upload cache here, so the server only ever serves
    files from inside this folder.
    """

    def __init__(self, root: str | os.PathLike | None = None, prefix: str = "videochat-serve-"):
        if root is not None:
            Path(root).mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=root)).resolve()
        self._lock = threading.Lock()
        self._closed = False

    def subdir(self, name: str) -> Path:
        """A sub-folder (created on demand), e.g. `gradio` for Gradio's upload cache."""
        d = self.path / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def write_bytes(self, data: bytes, suffix: str = ".bin") -> Path:
        """Write `data` to a new uniquely named file inside the area and return its path."""
        if self._closed:
            raise RuntimeError("the upload area was already cleaned up")
        safe_suffix = suffix if suffix.startswith(".") and suffix[1:].isalnum() and len(suffix) <= 8 else ".bin"
        path = self.subdir("bytes") / f"{uuid.uuid4().hex}{safe_suffix}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path

    def copy_in(self, src: str | os.PathLike, subdir: str = "examples") -> Path:
        """Copy a file into the area (e.g. an example video from the model folder) and return the copy."""
        src = Path(src)
        dst = self.subdir(subdir) / src.name
        shutil.copyfile(src, dst)
        return dst

    def contains(self, path: str | os.PathLike) -> bool:
        """Whether `path` (resolved, symlinks followed) lies inside the area."""
        try:
            return Path(path).resolve().is_relative_to(self.path)
        except OSError:
            return False

    def cleanup(self) -> None:
        """Delete the whole area (idempotent)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> "UploadArea":
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()
