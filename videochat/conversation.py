"""Render conversations with interleaved video clips to token ids, a loss mask and clip slots.

The only place in the project that tokenizes: training (data), serving and evaluation all call `render`,
so the prompt the model is served is exactly a prefix of what it was trained on (tested).

- Templates: `auto` (the tokenizer's own jinja chat template when `tokenizer.chat_template` is set, else
  `videochat2`), `jinja`, and the named templates in `videochat.templates` (`videochat2`, `llama2`, `chatml`).
- Each clip renders as `<Video>` + `tokens_per_clip` placeholder ids + `</Video>` (VideoChat2 style),
  optionally followed by "The video contains T frames sampled at ... seconds.".
- Labels are -100 everywhere except assistant reply tokens and the turn's stop marker; always -100 on
  placeholders.
- Text is split into pieces at clip slots and turn boundaries; each piece is tokenized on its own, as if
  it followed a special token (so sentencepiece tokenizers add no spurious prefix space), and the ids are
  concatenated. Identical histories therefore give identical id prefixes.
- Message text (user, system, assistant) never produces special ids: a special-token string in it (`</s>`,
  `<|im_end|>` ...) is tokenized as plain text (`split_special_tokens=True`), so a user cannot forge a turn;
  the markers the template inserts stay special.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from videochat import templates as _t
from videochat.templates import (  # noqa: F401 (re-exported: one import site for callers)
    TEMPLATES,
    ChatTemplate,
    ConversationError,
    TemplateError,
    fill,
    frame_times_text,
    register_template,
)

__all__ = [
    "IGNORE_INDEX", "ClipSlot", "Rendered", "Message", "ConversationError", "ConversationTooLong", "TemplateError",
    "ChatTemplate", "TEMPLATES", "register_template", "render", "check_messages", "ensure_placeholder",
    "placeholder_id", "resolve_template", "stop_markers", "strip_stop", "frame_times_text",
]

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")


class ConversationTooLong(ConversationError):
    """The rendered conversation exceeds `max_length` (never truncated: that could cut a clip slot)."""

    def __init__(self, length: int, max_length: int):
        super().__init__(f"conversation renders to {length} tokens > max_length={max_length}")
        self.length = length
        self.max_length = max_length


@dataclass(frozen=True)
class ClipSlot:
    """A run of placeholder ids: `input_ids[start:start + length]` receives the embeddings of `clip`."""

    clip: int
    start: int
    length: int


@dataclass
class Rendered:
    """Output of `render`. `labels` has the length of `input_ids`."""

    input_ids: list[int]
    labels: list[int]
    clip_slots: list[ClipSlot]
    stop_strings: list[str] = field(default_factory=list)
    """Strings that end an assistant reply (pass to `generate(stop_strings=..., tokenizer=...)`)."""
    stop_token_ids: list[int] = field(default_factory=list)
    """Single-token stop markers (eos and the like; pass as `eos_token_id`); a subset of `stop_strings`."""
    template: str = ""
    """Name of the template used (`jinja` for the tokenizer's own)."""

    @property
    def num_clips(self) -> int:
        return len(self.clip_slots)


# --------------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """A validated message: `parts` are ("text", str) or ("clip", int) tuples, in order."""

    role: str
    parts: tuple  # of ("text", str) | ("clip", int)


def check_messages(
    messages: Any, num_clips: int | None = None, *, add_generation_prompt: bool = False
) -> list[Message]:
    """Validate sample-schema `messages`; returns normalised messages or raises `ConversationError`.

    Rules: roles system|user|assistant; at most one system message, first; then user and assistant
    alternate, starting with user; clips only in user turns, `0 <= clip < num_clips` (when given); no empty
    message; with `add_generation_prompt` the last message must be a user turn. Content is a string or a
    list of `{"type": "text", "text"}` / `{"type": "clip", "clip"}` parts.
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ConversationError("messages must be a non-empty list")
    out: list[Message] = []
    for i, m in enumerate(messages):
        where = f"message {i}"
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ConversationError(f"{where}: must be a dict with 'role' and 'content', got {m!r:.80}")
        role = m["role"]
        if role not in ROLES:
            raise ConversationError(f"{where}: unknown role {role!r} (expected one of {', '.join(ROLES)})")
        parts = _parts(m["content"], where, num_clips)
        if role != "user" and any(k == "clip" for k, _ in parts):
            raise ConversationError(f"{where}: clips are only allowed in user messages, not {role!r}")
        if not any(k == "clip" or v.strip() for k, v in parts):
            raise ConversationError(f"{where}: empty content")
        if role == "system":
            if i != 0:
                raise ConversationError(f"{where}: a system message must come first")
        else:
            expected = "user" if not out or out[-1].role != "user" else "assistant"
            if role != expected:
                first = not out or out[-1].role == "system"
                why = "the first turn must be from the user" if first else "user and assistant turns must alternate"
                raise ConversationError(f"{where}: role {role!r} but expected {expected!r} ({why})")
        out.append(Message(role, tuple(parts)))
    if out[-1].role == "system":
        raise ConversationError("messages contain no user turn")
    if add_generation_prompt and out[-1].role != "user":
        raise ConversationError("add_generation_prompt=True needs the last message to be a user turn")
    return out


def _parts(content: Any, where: str, num_clips: int | None) -> list[tuple[str, Any]]:
    if isinstance(content, str):
        return [("text", content)]
    if not isinstance(content, (list, tuple)):
        raise ConversationError(f"{where}: content must be a string or a list of parts")
    parts = []
    for j, p in enumerate(content):
        kind = p.get("type") if isinstance(p, dict) else None
        if kind == "text" and isinstance(p.get("text"), str):
            parts.append(("text", p["text"]))
        elif kind == "clip":
            k = p.get("clip")
            if not isinstance(k, int) or isinstance(k, bool) or k < 0:
                raise ConversationError(f"{where} part {j}: clip index must be an int >= 0, got {k!r}")
            if num_clips is not None and k >= num_clips:
                raise ConversationError(f"{where} part {j}: clip index {k} out of range (sample has {num_clips} clips)")
            parts.append(("clip", k))
        else:
            raise ConversationError(f"{where} part {j}: expected {{'type': 'text', 'text': str}} or "
                                    f"{{'type': 'clip', 'clip': int}}, got {p!r:.80}")
    return parts


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def resolve_template(tokenizer, template: str | ChatTemplate = "auto") -> ChatTemplate | str:
    """`template` -> a `ChatTemplate`, or the string "jinja" for the tokenizer's own chat template."""
    if isinstance(template, ChatTemplate):
        return template
    has_jinja = bool(getattr(tokenizer, "chat_template", None))
    if template == "auto":
        return "jinja" if has_jinja else TEMPLATES["videochat2"]
    if template in ("jinja", "tokenizer"):
        if not has_jinja:
            raise ConversationError("template='jinja' but the tokenizer has no chat_template")
        return "jinja"
    if template not in TEMPLATES:
        raise ConversationError(f"unknown template {template!r}; choose auto, jinja or one of {sorted(TEMPLATES)}")
    return TEMPLATES[template]


def ensure_placeholder(tokenizer, placeholder_token: str = "<|video_pad|>") -> int:
    """Make `placeholder_token` a special token of `tokenizer` (adding it if missing); return its id.

    When this adds a token, the model's input embeddings must be resized to `len(tokenizer)`.
    """
    ids = tokenizer(placeholder_token, add_special_tokens=False)["input_ids"]
    tid = tokenizer.convert_tokens_to_ids(placeholder_token)
    if ids == [tid] and tid is not None:
        return tid
    tokenizer.add_special_tokens({"extra_special_tokens": [placeholder_token]}, replace_extra_special_tokens=False)
    tid = tokenizer.convert_tokens_to_ids(placeholder_token)
    if tokenizer(placeholder_token, add_special_tokens=False)["input_ids"] != [tid]:
        raise RuntimeError(f"could not make {placeholder_token!r} a single special token")
    return tid


def placeholder_id(tokenizer, placeholder_token: str) -> int:
    """Id of an existing placeholder special token; `ConversationError` when the tokenizer lacks it."""
    tid = tokenizer.convert_tokens_to_ids(placeholder_token)
    if tid is None or tokenizer(placeholder_token, add_special_tokens=False)["input_ids"] != [tid]:
        raise ConversationError(f"placeholder {placeholder_token!r} is not a special token of this tokenizer; "
                                "call videochat.conversation.ensure_placeholder(tokenizer, token) first "
                                "(and resize the model's embeddings)")
    return tid


def stop_markers(tokenizer, template: str | ChatTemplate = "auto") -> tuple[list[str], list[int]]:
    """(stop_strings, stop_token_ids) that end an assistant reply under `template`, for generation."""
    tpl = resolve_template(tokenizer, template)
    if tpl == "jinja":
        strings = _t.jinja_stop_strings(tokenizer)
    else:
        usable = [x for x in tpl.stop_strings if tokenizer.eos_token or "{eos}" not in x]
        strings = [s for s in (fill(x, tokenizer) for x in usable) if s]
    strings = list(dict.fromkeys(s for s in strings + [tokenizer.eos_token or ""] if s))
    ids = []
    for s in strings:
        e = tokenizer(s, add_special_tokens=False)["input_ids"]
        if len(e) == 1 and e[0] not in ids:
            ids.append(e[0])
    return strings, ids


def strip_stop(text: str, stop_strings) -> str:
    """Cut a generated reply at its first stop string and strip surrounding whitespace."""
    cut = min((i for i in (text.find(s) for s in stop_strings if s) if i >= 0), default=len(text))
    return text[:cut].strip()


def render(
    messages,
    tokenizer,
    *,
    template: str | ChatTemplate = "auto",
    tokens_per_clip: int,
    placeholder_token: str = "<|video_pad|>",
    clip_times: dict[int, list[float]] | None = None,
    system_prompt: str | None = None,
    add_generation_prompt: bool = False,
    max_length: int | None = None,
    num_clips: int | None = None,
    answer_prefix: str | None = None,
) -> Rendered:
    """Render sample-schema `messages` to `Rendered(input_ids, labels, clip_slots, ...)`.

    `clip_times`: `{clip_index: [t0, t1, ...]}` (seconds) adds "The video contains T frames sampled at
    ... seconds." right after that clip's slot. `system_prompt` is used when the messages have no system
    turn. `add_generation_prompt` ends with the assistant prefix (serving / eval). `max_length` raises
    `ConversationTooLong` instead of truncating. `num_clips` (optional) bounds the clip indices.
    `answer_prefix` (with `add_generation_prompt`) primes the reply, e.g. MVBench's "Best option:(": the
    ids then end inside the assistant turn, and without it they are a prefix of these ids.
    """
    if not isinstance(tokens_per_clip, int) or tokens_per_clip < 1:
        raise ConversationError(f"tokens_per_clip must be a positive int, got {tokens_per_clip!r}")
    msgs = check_messages(messages, num_clips, add_generation_prompt=add_generation_prompt)
    ph_id = placeholder_id(tokenizer, placeholder_token)
    times = {int(k): list(v) for k, v in (clip_times or {}).items()}
    system = system_prompt if system_prompt and system_prompt.strip() else None  # "" means no system text
    if msgs[0].role == "system":
        system = " ".join(v.strip() for _, v in msgs[0].parts if v.strip())
    if answer_prefix is not None and not add_generation_prompt:
        raise ConversationError("answer_prefix needs add_generation_prompt=True")
    tpl = resolve_template(tokenizer, template)
    if tpl == "jinja":
        pieces = _t.jinja_pieces(tokenizer, msgs, system, add_generation_prompt, times)
        name = "jinja"
    else:
        pieces = _t.named_pieces(tpl, tokenizer, msgs, system, add_generation_prompt, times)
        name = tpl.name
    if answer_prefix:
        if tpl == "jinja":
            lead = _t.jinja_reply_format(tokenizer)[0]
        else:
            lead = fill(tpl.assistant, tokenizer).split("{content}")[0]
        pieces.brk()  # keep the plain generation prompt's ids a prefix of the primed one
        pieces.text(lead + answer_prefix)
    ids, labels, slots = _tokenize(pieces, tokenizer, placeholder_token, ph_id, tokens_per_clip)
    if max_length is not None and len(ids) > max_length:
        raise ConversationTooLong(len(ids), max_length)
    stop_s, stop_ids = stop_markers(tokenizer, tpl)
    return Rendered(ids, labels, slots, stop_s, stop_ids, name)


def _forged_segments(text: str, content: list[tuple[int, int]], specials: "re.Pattern | None"):
    """Split `text` into [(segment, plain)]: special-token strings overlapping message content are `plain`
    (tokenized as text); template markers outside content stay special. Scans like the tokenizer matches
    added tokens: leftmost, longest first."""
    if not content or specials is None:
        return [(text, False)]
    out, at = [], 0
    for m in specials.finditer(text):
        if any(a < m.end() and m.start() < b for a, b in content):
            out += [(text[at:m.start()], False), (m.group(), True)]
            at = m.end()
    out.append((text[at:], False))
    return [seg for seg in out if seg[0]]


def _special_pattern(tok) -> "re.Pattern | None":
    strings = _t._special_strings(tok)  # longest first, so the alternation prefers the longest match
    return re.compile("|".join(map(re.escape, strings))) if strings else None


def _tokenize(P: _t.Pieces, tok, ph: str, ph_id: int, tokens_per_clip: int):
    texts = [it[1] for it in P.items if it[0] == "text"]
    for t in texts:
        if ph in t:
            raise ConversationError(f"message text contains the placeholder token {ph!r}")
    # Message text may contain special-token strings (`</s>`, `<|im_end|>` ...): those are tokenized as plain
    # text (split_special_tokens), so a user cannot forge a turn marker; the template's own markers, outside
    # the content ranges, still become their special ids. Pieces without such strings tokenize as one.
    specials = _special_pattern(tok)
    segs = [_forged_segments(it[1], it[3], specials) for it in P.items if it[0] == "text"]
    flat = [s for piece in segs for s, plain in piece if not plain]
    # Prefix each segment with the placeholder so it is tokenized as if it followed a special token
    # (no sentencepiece dummy prefix mid-conversation), then drop that first id.
    enc = iter(tok([ph + t for t in flat], add_special_tokens=False)["input_ids"] if flat else [])
    ph_plain = tok(ph, add_special_tokens=False, split_special_tokens=True)["input_ids"] if len(flat) < sum(
        len(piece) for piece in segs) else []
    ids: list[int] = []
    labels: list[int] = []
    slots: list[ClipSlot] = []
    k = 0
    for it in P.items:
        if it[0] == "text":
            for seg, plain in segs[k]:
                if plain:  # after the placeholder as plain text too, when that leaves its ids intact
                    e = tok(ph + seg, add_special_tokens=False, split_special_tokens=True)["input_ids"]
                    e = e[len(ph_plain):] if e[:len(ph_plain)] == ph_plain else \
                        tok(seg, add_special_tokens=False, split_special_tokens=True)["input_ids"]
                else:
                    e = next(enc)
                    if not e or e[0] != ph_id or ph_id in e[1:]:
                        raise RuntimeError(f"unexpected tokenization of a text piece {seg!r:.60}")
                    e = e[1:]
                ids.extend(e)
                labels.extend(e if it[2] else [IGNORE_INDEX] * len(e))
            k += 1
        elif it[0] == "clip":
            slots.append(ClipSlot(it[1], len(ids), tokens_per_clip))
            ids.extend([ph_id] * tokens_per_clip)
            labels.extend([IGNORE_INDEX] * tokens_per_clip)
    return ids, labels, slots
