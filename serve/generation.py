"""Generation settings and one streamed generation (a worker thread feeding a text streamer).

`StreamingGeneration` runs `model.generate(..., streamer=TextIteratorStreamer)` in a thread and yields text
pieces. It cuts the answer at the template's stop marker (holding back text that may be the start of one),
and stops the worker early when the marker appears or when the reader goes away (`close()`), so an
abandoned browser tab does not keep the model busy.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Iterator

import torch


@dataclass
class GenerationSettings:
    """Sampling settings of a chat answer (the Gradio sliders and the chat CLI flags)."""

    MAX_FRAMES = 64
    MAX_NEW_TOKENS = 4096

    temperature: float = 0.7
    """Sampling temperature; 0 means greedy decoding."""
    top_p: float = 0.9
    """Nucleus sampling: keep the smallest token set with this total probability (sampling only)."""
    max_new_tokens: int = 256
    """Most tokens generated for one answer."""
    num_frames: int | None = None
    """Frames sampled from each video added from now on (None: the model config's `num_frames`)."""
    repetition_penalty: float = 1.0
    """>1 discourages repeating tokens (1 = off)."""

    def validate(self) -> None:
        """Raise ValueError with a readable message when a setting is out of range."""
        if not 0.0 <= float(self.temperature) <= 5.0:
            raise ValueError(f"temperature must be between 0 and 5, got {self.temperature}")
        if not 0.0 < float(self.top_p) <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 1 <= int(self.max_new_tokens) <= self.MAX_NEW_TOKENS:
            raise ValueError(f"max_new_tokens must be between 1 and {self.MAX_NEW_TOKENS}, got {self.max_new_tokens}")
        if self.num_frames is not None and not 1 <= int(self.num_frames) <= self.MAX_FRAMES:
            raise ValueError(f"frames must be between 1 and {self.MAX_FRAMES}, got {self.num_frames}")
        if not 0.5 <= float(self.repetition_penalty) <= 2.0:
            raise ValueError(f"repetition_penalty must be between 0.5 and 2, got {self.repetition_penalty}")

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `generate` (greedy when temperature is 0)."""
        kw: dict[str, Any] = {"max_new_tokens": int(self.max_new_tokens)}
        if float(self.temperature) > 0:
            kw.update(do_sample=True, temperature=float(self.temperature), top_p=float(self.top_p))
        else:
            kw.update(do_sample=False)
        if float(self.repetition_penalty) != 1.0:
            kw["repetition_penalty"] = float(self.repetition_penalty)
        return kw


class _StopFlag:
    """A transformers StoppingCriteria that ends generation once `event` is set (by the reader)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class StreamingGeneration:
    """Iterate over the text pieces of one answer; `close()` stops the worker and waits for it.

    Args:
        model: a `VideoChatModel` (`generate(input_ids, attention_mask, clip_embeds, streamer, **kw)`).
        input_ids: the rendered prompt ids (one conversation).
        clip_embeds: [N, Q, D] embeddings of the prompt's clips in order of appearance, or None.
        settings: sampling settings.
        stop_markers: text that ends the answer (cut off, never shown); also passed to `generate` as
            `stop_strings`, so generation itself stops there.
        stop_token_ids: single-token stop markers (eos and the like), passed as `eos_token_id`.
    """

    def __init__(
        self,
        model: Any,
        input_ids: list[int],
        clip_embeds: torch.Tensor | None,
        settings: GenerationSettings,
        stop_markers: list[str] | None = None,
        stop_token_ids: list[int] | None = None,
    ):
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        self.stop_markers = [m for m in (stop_markers or []) if m]
        self._stop = threading.Event()
        self._error: BaseException | None = None
        tok = model.tokenizer
        self._streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        device = model.llm.get_input_embeddings().weight.device  # where the prompt ids are embedded
        ids = torch.tensor([input_ids], dtype=torch.long, device=device)  # [1, L]
        kwargs = settings.generate_kwargs()
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if pad is not None:
            kwargs["pad_token_id"] = pad
        kwargs["stopping_criteria"] = StoppingCriteriaList([_StopFlag(self._stop)])
        kwargs["stop_strings"] = list(self.stop_markers)
        if stop_token_ids:
            kwargs["eos_token_id"] = list(stop_token_ids)

        def work() -> None:
            try:
                with torch.inference_mode():
                    model.generate(
                        input_ids=ids,
                        attention_mask=torch.ones_like(ids),
                        clip_embeds=clip_embeds,
                        streamer=self._streamer,
                        **kwargs,
                    )
            except BaseException as e:  # noqa: BLE001 - re-raised in the reader's thread
                self._error = e
            finally:
                self._streamer.end()  # unblock the reader even when generate failed before streaming

        self._thread = threading.Thread(target=work, name="videochat-generate", daemon=True)
        self._thread.start()

    def _held_back(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop marker."""
        best = 0
        for m in self.stop_markers:
            for k in range(min(len(m) - 1, len(text)), 0, -1):
                if text.endswith(m[:k]):
                    best = max(best, k)
                    break
        return best

    def __iter__(self) -> Iterator[str]:
        buffer = ""  # streamed text not yet yielded
        started = False
        for piece in self._streamer:
            if self._stop.is_set():
                break
            buffer += piece
            cut = min((buffer.find(m) for m in self.stop_markers if m in buffer), default=-1)
            if cut >= 0:
                buffer = buffer[:cut]
                self._stop.set()
            keep = 0 if self._stop.is_set() else self._held_back(buffer)
            out, buffer = buffer[: len(buffer) - keep], buffer[len(buffer) - keep :]
            # trailing whitespace waits for more text: an answer never ends in spaces before its stop marker
            stripped = out.rstrip()
            out, buffer = stripped, ("" if self._stop.is_set() else out[len(stripped) :] + buffer)
            if not started:
                out = out.lstrip()
                started = bool(out)
            if out:
                yield out
            if self._stop.is_set():
                break
        else:
            tail = buffer.rstrip()
            if tail and not self._stop.is_set():
                yield tail.lstrip() if not started else tail
        self.close()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Stop generating (if still running) and wait for the worker thread."""
        self._stop.set()
        self._thread.join()
