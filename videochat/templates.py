"""Named chat templates (VideoChat2, Llama-2, ChatML) as small declarative specs.

A conversation renders as (text in `{}` is substituted; `{bos}`/`{eos}` become the tokenizer's tokens,
which it then matches as special tokens; `(...)` is optional; only `*assistant*` is labelled/trained on):

    prefix  (system)  start  user  generation  *assistant*  separator  user  generation  *assistant* ...

`assistant` must end with the turn's stop marker (the model learns to emit it; generation stops on
`stop_strings`). `separator` follows each assistant turn unlabelled (e.g. ChatML's newline). A clip inside a
user turn renders as `clip_begin` + a run of placeholder ids + `clip_end`, then the optional frame-time
sentence. Add a template by constructing a `ChatTemplate` and calling `register_template` (see
docs/conversation.md); `render(..., template=name_or_instance)` uses it.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass


class ConversationError(ValueError):
    """A conversation that cannot be rendered (bad messages, template problems); the message says why."""


class TemplateError(ConversationError):
    """A template (named or the tokenizer's jinja one) cannot render this conversation correctly."""


@dataclass(frozen=True)
class ChatTemplate:
    """A plain-text chat format. Every field is a format string; see the module docstring for the order."""

    name: str
    """Registry name (`render(template=name)`)."""
    user: str
    """A user turn; must contain `{content}` exactly once."""
    assistant: str
    """A labelled assistant turn; must contain `{content}` once and end with the stop marker."""
    generation: str = ""
    """The assistant prefix after each user turn (unlabelled; what `add_generation_prompt` appends)."""
    prefix: str = "{bos}"
    """Emitted once at the very start (before any system text)."""
    system: str = "{system}\n"
    """How a system message renders; with `system_in_first_user` it is prepended to the first user content."""
    system_in_first_user: bool = False
    """Llama-2 style: the system block goes inside the first `[INST]`."""
    start: str = ""
    """Emitted once after the (optional) system text, before the first user turn."""
    separator: str = ""
    """Unlabelled text after each assistant turn."""
    stop_strings: tuple[str, ...] = ("{eos}",)
    """Strings that end an assistant reply in generation (formatted like the fields)."""
    clip_begin: str = "<Video>"
    """Text before a clip's placeholder run."""
    clip_end: str = "</Video>"
    """Text after a clip's placeholder run."""
    part_separator: str = " "
    """Joins the (stripped) parts of one message: text, clips."""

    def __post_init__(self):
        for fname in ("user", "assistant"):
            if getattr(self, fname).count("{content}") != 1:
                raise ValueError(f"template {self.name!r}: field {fname!r} must contain '{{content}}' exactly once")
        if self.system.count("{system}") != 1:
            raise ValueError(f"template {self.name!r}: field 'system' must contain '{{system}}' exactly once")
        if not self.stop_strings:
            raise ValueError(f"template {self.name!r}: needs at least one stop string")


def fill(fmt: str, tokenizer, **values: str) -> str:
    """Substitute `{bos}`, `{eos}` (the tokenizer's token strings, '' when it has none) and `values`.

    Plain `str.replace` rather than `str.format`, so user text containing braces is never interpreted.
    """
    needs = {"{bos}": tokenizer.bos_token, "{eos}": tokenizer.eos_token}
    out = fmt
    for key, tok in needs.items():
        if key in out:
            if tok is None and key == "{eos}":
                raise TemplateError("this template needs an eos token, and the tokenizer has none")
            out = out.replace(key, tok or "")
    for key, val in values.items():
        out = out.replace("{" + key + "}", val)
    return out


def frame_times_text(times) -> str:
    """VideoChat2's sentence: "The video contains 8 frames sampled at 0.5, 1.7, ... seconds."."""
    return f"The video contains {len(times)} frames sampled at {', '.join(f'{float(t):.1f}' for t in times)} seconds."


TEMPLATES: dict[str, ChatTemplate] = {}


def register_template(template: ChatTemplate, *, overwrite: bool = False) -> ChatTemplate:
    """Add `template` to the registry under `template.name`."""
    if template.name in ("auto", "jinja") or (template.name in TEMPLATES and not overwrite):
        raise ValueError(f"template name {template.name!r} is reserved or already registered")
    TEMPLATES[template.name] = template
    return template


# VideoChat2 (ref: its it_dataset / demo): "###Human: <Video>...</Video> ... ###Assistant: answer ###".
# The "###" that opens the next turn is the stop marker, so it closes the labelled assistant text.
register_template(ChatTemplate(
    name="videochat2",
    prefix="{bos}",
    system="{system}\n",
    start="###",
    user="Human: {content} ###",
    generation="Assistant:",
    assistant=" {content} ###",
    stop_strings=("###", "{eos}"),
))

# Llama-2 chat / Mistral-instruct: "<s>[INST] <<SYS>>\n...\n<</SYS>>\n\nq [/INST] answer </s>".
register_template(ChatTemplate(
    name="llama2",
    prefix="",
    system="<<SYS>>\n{system}\n<</SYS>>\n\n",
    system_in_first_user=True,
    user="{bos}[INST] {content} [/INST]",
    generation="",
    assistant=" {content} {eos}",
    stop_strings=("{eos}",),
))

# ChatML (Qwen, OpenHermes ...): "<|im_start|>role\ncontent<|im_end|>\n".
register_template(ChatTemplate(
    name="chatml",
    prefix="{bos}",
    system="<|im_start|>system\n{system}<|im_end|>\n",
    user="<|im_start|>user\n{content}<|im_end|>\n",
    generation="<|im_start|>assistant\n",
    assistant="{content}<|im_end|>",
    separator="\n",
    stop_strings=("<|im_end|>", "{eos}"),
))


# --------------------------------------------------------------------------------------------------
# Pieces: text (labelled or not), clip slots, and breaks (tokenization boundaries)
# --------------------------------------------------------------------------------------------------


class Pieces:
    """Tokenization pieces. A text item records the [start, end) character ranges that are message content
    (user / system / assistant text, as opposed to template markers): special-token strings inside them
    are tokenized as plain text, so a message cannot forge a turn marker (see `conversation._tokenize`)."""

    def __init__(self):
        self.items: list[list] = []  # ["text", str, labelled, content ranges] | ["clip", k] | ["break"]

    def text(self, s: str, labelled: bool = False, content: bool = False):
        if not s:
            return
        last = self.items[-1] if self.items else None
        if last is not None and last[0] == "text" and last[2] == labelled:
            if content:
                last[3].append((len(last[1]), len(last[1]) + len(s)))
            last[1] += s  # merge: fewer boundaries, more natural tokenization
        else:
            self.items.append(["text", s, labelled, [(0, len(s))] if content else []])

    def clip(self, k: int):
        self.items.append(["clip", k])

    def brk(self):
        self.items.append(["break"])


def emit_content(parts, tpl: ChatTemplate, clip_times, emit_text, emit_clip, emit_message_text=None):
    """Emit one message's parts joined by `tpl.part_separator` (text parts stripped at both ends).

    `emit_message_text` (default `emit_text`) receives the message's own text, the rest is template text."""
    emit_message_text = emit_message_text or emit_text
    first = True
    for kind, v in parts:
        if kind == "text" and not v.strip():
            continue
        if not first:
            emit_text(tpl.part_separator)
        first = False
        if kind == "text":
            emit_message_text(v.strip())
        else:
            emit_text(tpl.clip_begin)
            emit_clip(v)
            times = clip_times.get(v) if clip_times else None
            emit_text(tpl.clip_end + (" " + frame_times_text(times) if times else ""))


def named_pieces(tpl: ChatTemplate, tok, msgs: list, system: str | None, add_gen: bool, clip_times) -> Pieces:
    P = Pieces()
    P.text(fill(tpl.prefix, tok))
    system_before, system_after = fill(tpl.system, tok).split("{system}")

    def emit_system():  # = P.text(fill(tpl.system, tok, system=system)), the system text marked as content
        P.text(system_before)
        P.text(system, content=True)
        P.text(system_after)

    if system is not None and not tpl.system_in_first_user:
        emit_system()
    P.text(fill(tpl.start, tok))
    user_before, user_after = fill(tpl.user, tok).split("{content}")
    asst_before, asst_after = fill(tpl.assistant, tok).split("{content}")
    generation, separator = fill(tpl.generation, tok), fill(tpl.separator, tok)
    turns = [m for m in msgs if m.role != "system"]
    for i, m in enumerate(turns):
        if m.role == "user":
            P.text(user_before)
            if i == 0 and system is not None and tpl.system_in_first_user:
                emit_system()
            emit_content(m.parts, tpl, clip_times, P.text, P.clip, lambda s: P.text(s, content=True))
            P.text(user_after)
            if i + 1 < len(turns) or add_gen:
                P.text(generation)
        else:
            reply = " ".join(v.strip() for _, v in m.parts if v.strip())
            P.text(asst_before, labelled=True)  # merged into one piece: tokenized as before
            P.text(reply, labelled=True, content=True)
            P.text(asst_after, labelled=True)
            P.text(separator)
    return P


# --------------------------------------------------------------------------------------------------
# The tokenizer's own jinja chat template
# --------------------------------------------------------------------------------------------------

# Clip wrappers and part joining for jinja templates (the same as the named templates' defaults).
JINJA_STYLE = ChatTemplate(name="jinja-style", user="{content}", assistant="{content}")


def _apply(tok, conv, add_gen: bool) -> str:
    try:
        return tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=add_gen)
    except Exception as e:  # jinja raise_exception(), missing variables ...
        raise TemplateError(f"the tokenizer's chat template failed: {e}") from e


def _special_strings(tok) -> list[str]:
    """Special-token strings a template may close a turn with (longest first)."""
    s = set(getattr(tok, "all_special_tokens", []) or [])
    s |= {t.content for t in getattr(tok, "added_tokens_decoder", {}).values() if getattr(t, "special", False)}
    return sorted((x for x in s if x), key=len, reverse=True)


def _through_stop(text: str, end: int, markers: list[str]) -> tuple[int, str | None]:
    """End of the stop marker closing a reply that ends at `end` (only whitespace may come between)."""
    best = None
    for m in markers:
        j = text.find(m, end)
        if j >= 0 and not text[end:j].strip() and (best is None or j < best[0]):
            best = (j, m)
    return (best[0] + len(best[1]), best[1]) if best else (end, None)


def jinja_pieces(tok, msgs, system: str | None, add_gen: bool, clip_times) -> Pieces:
    """Render with `tok.apply_chat_template`, then cut the text into pieces.

    Clip slots and assistant replies are rendered as unique sentinels, so their positions are exact.
    Each history prefix is rendered with the generation prompt (`P_i`) and must be a prefix of the full
    text; a reply's label runs from the end of `P_i` (when only whitespace comes between) through the
    special token that closes it (the stop marker: `<|im_end|>`, `</s>`, `<|eot_id|>` ...). Pieces break
    at every `P_i` end, so a serving render (which ends there) tokenizes exactly as the training prefix.
    A final check renders the real replies and requires the same text (the template must not edit them).
    """
    nonce = secrets.token_hex(8)
    slot_clips: list[int] = []
    replies: list[str] = []
    texts: list[str] = []  # user / system message text, rendered as sentinels to know where it lands

    def sentinel(kind: str, n: int) -> str:
        return f"\u27e6{kind}{n}-{nonce}\u27e7"

    def text_sentinel(s: str) -> str:
        texts.append(s)
        return sentinel("text", len(texts) - 1)

    conv = [] if system is None else [{"role": "system", "content": text_sentinel(system)}]
    real = [] if system is None else [{"role": "system", "content": system}]  # real replies and text
    for m in msgs:
        if m.role == "system":
            continue
        buf: list[str] = []

        def add_clip(k, buf=buf):
            buf.append(sentinel("clip", len(slot_clips)))
            slot_clips.append(k)

        if m.role == "assistant":
            emit_content(m.parts, JINJA_STYLE, clip_times, buf.append, add_clip)
            real.append({"role": m.role, "content": "".join(buf)})
            conv.append({"role": m.role, "content": sentinel("reply", len(replies))})
            replies.append(real[-1]["content"])
        else:
            real_buf: list[str] = []
            emit_content(m.parts, JINJA_STYLE, clip_times, lambda s: (buf.append(s), real_buf.append(s)),
                         lambda k: (add_clip(k), real_buf.append(buf[-1])),
                         lambda s: (buf.append(text_sentinel(s)), real_buf.append(s)))
            real.append({"role": m.role, "content": "".join(real_buf)})
            conv.append({"role": m.role, "content": "".join(buf)})

    full = _apply(tok, conv, add_gen)
    found = {(mt.group(1), int(mt.group(2))): (mt.start(), mt.end())
             for mt in re.finditer("\u27e6(clip|reply|text)(\\d+)-" + nonce + "\u27e7", full)}
    expected = ({("clip", n) for n in range(len(slot_clips))} | {("reply", n) for n in range(len(replies))}
                | {("text", n) for n in range(len(texts))})
    if set(found) != expected or full.count(nonce) != len(expected):
        raise TemplateError("the chat template dropped, duplicated or altered a clip or a reply (or a message text)")
    markers = _special_strings(tok)
    cuts: set[int] = set()  # piece boundaries that must not be merged across
    spans: list[tuple[int, int]] = []
    n_reply = 0
    for i, m in enumerate(conv):
        if m["role"] != "assistant":
            continue
        prompt = _apply(tok, conv[:i], True)
        start, end = found[("reply", n_reply)]
        n_reply += 1
        if not full.startswith(prompt) or len(prompt) > start or (spans and len(prompt) < spans[-1][1]):
            raise TemplateError("the tokenizer's chat template renders history differently once a reply follows "
                                "(the generation prompt is not a prefix of the full conversation); "
                                "use a named template (videochat2, llama2, chatml)")
        if not full[len(prompt):start].strip():
            start = len(prompt)  # label the reply's leading space too (" answer" tokenizes naturally)
        cuts.add(len(prompt))
        spans.append((start, _through_stop(full, end, markers)[0]))

    at = {a: (kind, n, b) for (kind, n), (a, b) in found.items()}
    bounds = {0, len(full)} | cuts | {p for s in spans for p in s} | {p for a, b in found.values() for p in (a, b)}
    P = Pieces()
    text_parts: list[str] = []  # the text with real replies, for the final check
    pts = sorted(bounds)
    for a, b in zip(pts, pts[1:]):
        if a in cuts:
            P.brk()
        kind, n, _ = at.get(a, (None, None, None))
        if kind == "clip":
            P.clip(slot_clips[n])
            text_parts.append(full[a:b])
            continue
        piece = {"reply": replies, "text": texts}[kind][n] if kind in ("reply", "text") else full[a:b]
        P.text(piece, labelled=any(s <= a and b <= e for s, e in spans), content=kind in ("reply", "text"))
        text_parts.append(piece)
    if "".join(text_parts) != _apply(tok, real, add_gen):
        raise TemplateError("the tokenizer's chat template edits assistant replies; cannot label them exactly")
    return P


def jinja_reply_format(tok) -> tuple[str, str | None]:
    """(lead, stop marker) of an assistant reply under the tokenizer's template, from a probe render.

    `lead` is the text between the generation prompt and the reply (e.g. Llama-2's " "); `stop marker`
    the special token closing the reply (None when the template closes it with plain text).
    """
    probe = "\u27e6probe\u27e7"
    user = [{"role": "user", "content": "Hi"}]
    try:
        text = _apply(tok, user + [{"role": "assistant", "content": probe}], False)
        gen = _apply(tok, user, True)
    except TemplateError:
        return "", None
    j = text.find(probe)
    if j < 0:
        return "", None
    lead = text[len(gen):j] if text.startswith(gen) and len(gen) <= j else ""
    return lead, _through_stop(text, j + len(probe), _special_strings(tok))[1]


def jinja_stop_strings(tok) -> list[str]:
    """Stop strings of the tokenizer's chat template: the special token closing an assistant turn, + eos."""
    return [s for s in (jinja_reply_format(tok)[1], tok.eos_token) if s]
