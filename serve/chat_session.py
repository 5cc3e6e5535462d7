"""One user's conversation with a VideoChatModel: videos, history, streamed answers (no gradio here).

A `ChatSession` is shared by the terminal chat (`videochat chat`) and the Gradio app (one per browser
session). Each video is checked, decoded and encoded exactly once, when it is added; its clip embeddings
[1, Q, D] are cached and re-used on every later turn. Prompts are rendered by
`videochat.conversation.render(..., add_generation_prompt=True)`, the same renderer training uses, so the
model sees at serving time exactly the token layout it was trained on.

    session = ChatSession(model)
    session.add_video("clip.mp4")
    for piece in session.ask("What happens?", temperature=0.0):
        print(piece, end="", flush=True)
"""

from __future__ import annotations

import logging
import math
import re
import threading
import weakref
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from serve.generation import GenerationSettings, StreamingGeneration
from serve.uploads import DEFAULT_MAX_UPLOAD_MB, UploadArea, UploadError, check_upload

log = logging.getLogger(__name__)

THUMBNAIL_SIDE = 160
"""Longest side in pixels of the frame thumbnails a ClipInfo keeps for display."""


class ChatError(RuntimeError):
    """A request the session cannot serve; the message is meant for the user."""


class VideoUploadError(ChatError):
    """A video that was rejected (wrong type, too large, empty, undecodable); nothing was added."""


class SessionBusy(ChatError):
    """The session is still answering the previous message."""


@dataclass
class ClipInfo:
    """One video added to a session."""

    index: int
    """Clip index in the conversation (the `clip` of its `{"type": "clip"}` content part)."""
    name: str
    """Display name (the upload's file name)."""
    container: str
    """Container sniffed from the file's first bytes (mp4, webm, ...)."""
    timestamps: list[float]
    """Times in seconds of the sampled frames in the source file."""
    duration: float | None
    """Video duration in seconds when the container reports it."""
    prompt_times: list[float] = field(default_factory=list)
    """Frame times as the prompt states them (`Clip.relative_times()`, exactly what training renders)."""
    thumbnails: list[np.ndarray] = field(repr=False, default_factory=list)
    """Sampled frames, downscaled to THUMBNAIL_SIDE, uint8 [h, w, 3] each."""


def _thumbnail(frame: np.ndarray) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray(frame)
    img.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    return np.asarray(img)


class ChatSession:
    """A multi-turn, multi-video conversation with one `VideoChatModel`.

    Args:
        model: a `VideoChatModel` (eval mode; its `tokenizer` and `config` are used).
        num_frames: frames sampled per added video (default: `model.config.num_frames`).
        settings: default generation settings; `ask(**gen)` overrides them per call.
        max_upload_bytes: size limit for added videos (None: no limit).
        upload_area: where videos given as bytes are written briefly; a private one is made when needed.
        max_clips: most videos one conversation may hold (each adds tokens_per_clip tokens to every prompt).
    """

    def __init__(
        self,
        model: Any,
        num_frames: int | None = None,
        *,
        settings: GenerationSettings | None = None,
        max_upload_bytes: int | None = DEFAULT_MAX_UPLOAD_MB * 10**6,
        upload_area: UploadArea | None = None,
        max_clips: int = 8,
    ):
        self.model = model
        self.config = model.config
        self.tokenizer = model.tokenizer
        self.settings = settings or GenerationSettings()
        if num_frames is not None:
            self.settings = replace(self.settings, num_frames=num_frames)
        self.settings.validate()
        self.max_upload_bytes = max_upload_bytes
        self.max_clips = max_clips
        self._upload_area = upload_area
        self._own_area = False
        self._lock = threading.Lock()  # one answer at a time per session
        self._state_lock = threading.Lock()  # guards clips / pending / messages updates
        self._transform = None
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget the history and all videos (the cached clip embeddings are freed)."""
        with getattr(self, "_state_lock", threading.Lock()):
            self._reset_locked()

    def _reset_locked(self) -> None:
        self.messages: list[dict] = []
        self.clips: list[ClipInfo] = []
        self._embeds: list[torch.Tensor] = []
        self._pending: list[int] = []
        # an answer still streaming when reset() runs must not write into the new conversation
        self._epoch = getattr(self, "_epoch", 0) + 1

    @property
    def history(self) -> list[dict]:
        """The conversation so far in the sample schema (`role`, `content` parts); a copy."""
        return [{"role": m["role"], "content": [dict(p) for p in m["content"]]} for m in self.messages]

    def transcript(self) -> list[tuple[str, str]]:
        """(role, text) pairs of the conversation for display; clip parts shown as `[video N: name]`."""
        out = []
        for m in self.messages:
            parts = []
            for p in m["content"]:
                if p["type"] == "clip":
                    parts.append(f"[video {p['clip'] + 1}: {self.clips[p['clip']].name}]")
                else:
                    parts.append(p["text"])
            out.append((m["role"], "\n".join(parts)))
        return out

    @property
    def pending_clips(self) -> list[ClipInfo]:
        """Videos added since the last question; they are attached to the next user message."""
        return [self.clips[i] for i in self._pending]

    def close(self) -> None:
        """Free the cached embeddings and any private temp folder."""
        self.reset()
        if self._own_area and self._upload_area is not None:
            self._upload_area.cleanup()
            self._upload_area = None

    # ------------------------------------------------------------------ videos
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _vision_dtype(self) -> torch.dtype:
        viclip = getattr(self.model, "viclip", None)
        params = viclip.parameters() if viclip is not None else self.model.parameters()
        for p in params:
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    def _area(self) -> UploadArea:
        if self._upload_area is None:
            self._upload_area = UploadArea(prefix="videochat-chat-")
            self._own_area = True
            # removed with the session (or at exit) even when nobody calls close()
            weakref.finalize(self, self._upload_area.cleanup)
        return self._upload_area

    def add_video(self, video: str | Path | bytes, name: str | None = None, num_frames: int | None = None) -> ClipInfo:
        """Check, decode and encode a video (a path or the file's bytes); it joins the next user message.

        Raises `VideoUploadError` (readable message, nothing added) for a file of the wrong type, too large,
        empty or undecodable.
        """
        from videochat.video import VideoDecodeError, probe, read_clip

        if len(self.clips) >= self.max_clips:
            raise VideoUploadError(f"this conversation already has {self.max_clips} videos; press Reset to start over")
        n_frames = int(num_frames or self.settings.num_frames or self.config.num_frames)
        if not 1 <= n_frames <= GenerationSettings.MAX_FRAMES:
            raise VideoUploadError(f"frames must be between 1 and {GenerationSettings.MAX_FRAMES}, got {n_frames}")
        tmp: Path | None = None
        if isinstance(video, (bytes, bytearray, memoryview)):
            data = bytes(video)
            name = name or "video"
            if not data:
                raise VideoUploadError(f"{name}: the file is empty (0 bytes)")
            if self.max_upload_bytes is not None and len(data) > self.max_upload_bytes:
                raise VideoUploadError(
                    f"{name}: the file is too large ({len(data) / 1e6:.1f} MB; "
                    f"the limit is {self.max_upload_bytes / 1e6:.1f} MB)"
                )
            tmp = path = self._area().write_bytes(data, suffix=Path(name).suffix or ".bin")
        else:
            path = Path(video)
            name = name or path.name
        try:
            try:
                container = check_upload(path, self.max_upload_bytes)
            except UploadError as e:
                # the check names the file; show the user's name, not a temp name
                raise VideoUploadError(str(e).replace(path.name, name, 1)) from None
            try:
                clip = read_clip(str(path), num_frames=n_frames, sampling="middle")
            except VideoDecodeError as e:
                raise VideoUploadError(f"{name}: could not decode the video: {_reason(e, path)}") from None
            except (OSError, ValueError, RuntimeError) as e:  # decoders raise their own types on odd files
                log.warning("decoder failed on %s: %r", path, e)
                raise VideoUploadError(f"{name}: could not decode the video ({type(e).__name__})") from None
            frames = np.asarray(clip.frames)
            if frames.ndim != 4 or frames.shape[0] == 0:
                raise VideoUploadError(f"{name}: no video frames could be read")
            duration = None
            try:
                info = probe(str(path))
                duration = float(info.duration) if info.duration and math.isfinite(info.duration) else None
            except Exception:  # noqa: BLE001 - the duration is only shown to the user
                pass
            embeds = self._encode(frames)
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        thumbnails = [_thumbnail(f) for f in frames]
        with self._state_lock:  # two uploads of one session may finish at the same time
            if len(self.clips) >= self.max_clips:
                raise VideoUploadError(f"this conversation already has {self.max_clips} videos; press Reset to start over")
            info = ClipInfo(
                index=len(self.clips),
                name=name,
                container=container,
                timestamps=[round(float(t), 3) for t in clip.timestamps],
                duration=duration,
                thumbnails=thumbnails,
                prompt_times=list(clip.relative_times()),
            )
            self.clips.append(info)
            self._embeds.append(embeds)
            self._pending.append(info.index)
        return info

    @torch.inference_mode()
    def _encode(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 [T, H, W, 3] -> clip embeddings [1, Q, D] on the model's device."""
        from videochat.video import FrameTransform

        if self._transform is None:
            self._transform = FrameTransform.from_config(self.config)
        x = torch.as_tensor(self._transform(frames))  # [T, 3, S, S]
        x = x.unsqueeze(0).to(device=self.device, dtype=self._vision_dtype())  # [1, T, 3, S, S]
        return self.model.encode_clips(x)

    # ------------------------------------------------------------------ asking
    def _render(self, messages: list[dict], max_new_tokens: int):
        from videochat.conversation import ConversationTooLong, render

        clip_times = None
        if getattr(self.config, "frame_times_in_prompt", False):
            clip_times = {c.index: list(c.prompt_times) for c in self.clips}
        context = getattr(getattr(self.model.llm, "config", None), "max_position_embeddings", None)
        max_length = context - max_new_tokens if context else None
        try:
            return render(
                messages,
                self.tokenizer,
                template=self.config.template,
                tokens_per_clip=self.config.tokens_per_clip,
                placeholder_token=self.config.placeholder_token,
                clip_times=clip_times,
                system_prompt=self.config.system_prompt,
                add_generation_prompt=True,
                max_length=max_length if max_length and max_length > 0 else None,
            )
        except ConversationTooLong as e:
            raise ChatError(
                f"the conversation no longer fits the model's context of {context} tokens "
                f"(with {max_new_tokens} new tokens); press Reset, or lower max new tokens ({e})"
            ) from None

    def ask(self, text: str, **gen: Any) -> Iterator[str]:
        """Ask a question; yields the answer in streamed text pieces as they are generated.

        `gen` overrides the session's `GenerationSettings` (temperature, top_p, max_new_tokens, ...). Videos
        added since the last question are attached to this message. The exchange enters the history when
        the answer ends (also when the caller stops reading early: the partial answer is kept). Raises
        `ChatError` for an empty question, a conversation too long for the model, or a busy session.
        """
        text = (text or "").strip()
        if not text:
            raise ChatError("type a question first")
        unknown = set(gen) - {f.name for f in fields(GenerationSettings)}
        if unknown:
            raise ChatError(f"unknown generation setting(s): {', '.join(sorted(unknown))}")
        settings = replace(self.settings, **{k: v for k, v in gen.items() if v is not None})
        try:
            settings.validate()
        except ValueError as e:
            raise ChatError(str(e)) from None
        if not self._lock.acquire(blocking=False):
            raise SessionBusy("still answering the previous message; wait for it to finish")
        try:
            yield from self._ask_locked(text, settings)
        finally:
            self._lock.release()

    def _ask_locked(self, text: str, settings: GenerationSettings) -> Iterator[str]:
        epoch, attached = self._epoch, list(self._pending)
        content = [{"type": "clip", "clip": i} for i in attached] + [{"type": "text", "text": text}]
        user = {"role": "user", "content": content}
        rendered = self._render(self.messages + [user], settings.max_new_tokens)
        clip_order = [slot.clip for slot in rendered.clip_slots]
        embeds = torch.cat([self._embeds[i] for i in clip_order], dim=0) if clip_order else None  # [N, Q, D]
        run = StreamingGeneration(
            self.model, rendered.input_ids, embeds, settings, rendered.stop_strings, rendered.stop_token_ids
        )
        pieces: list[str] = []
        finished = False
        try:
            for piece in run:
                pieces.append(piece)
                yield piece
            finished = True
        finally:
            run.close()
            # a stopped answer is kept as far as the user saw it; videos added meanwhile stay pending
            with self._state_lock:
                answer = "".join(pieces)
                # An empty answer (the model stopped at once) stays out of the history: the renderer refuses
                # empty turns, and the attached videos stay pending for the next question.
                if answer.strip() and epoch == self._epoch:
                    self.messages.append(user)
                    self.messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
                    self._pending = [i for i in self._pending if i not in attached]


def _reason(err: Exception, path: Path) -> str:
    """A decode error's reason without the (temp) path it names."""
    msg = str(getattr(err, "reason", "") or err)
    for p in (str(path), path.name):
        msg = msg.replace(f": '{p}'", "").replace(p + ": ", "").replace(p, "the file")
    msg = re.sub(r"\[Errno -?\d+\]\s*", "", msg)
    return msg.strip() or type(err).__name__
