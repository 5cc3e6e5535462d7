"""Question template pools and the cheap deterministic hashing that picks from them.

The InternVid paper gives the three interleaved formats but no wording; these pools are ours. A phrasing is
picked by ``mix64`` of (seed, video hash, window, turn), i.e. a fast hash of (seed, sample id, turn): no RNG
state, so a rebuild (with any number of workers) is byte-identical.

Pools of plain questions are lists of strings; pools that wrap a caption or transcript are
``(prefix, suffix)`` pairs so the wrapping is vectorised string concatenation.
"""

from __future__ import annotations

import numpy as np

DESCRIBE = [
    "Describe this video clip.",
    "What is happening in this clip?",
    "What do you see in this video?",
    "Describe what happens in the clip.",
    "Can you describe the content of this clip?",
    "Give a short description of this video.",
    "What does this clip show?",
    "Tell me what is going on in this video clip.",
    "Briefly describe the scene in this clip.",
    "Summarize the content of this clip in one sentence.",
    "What is shown here?",
    "Explain what the video shows.",
]
NEXT = [
    "What happens next?",
    "And what happens after that?",
    "What happens in the following clip?",
    "Describe the next part of the video.",
    "What comes next in the video?",
    "Continue: what does this clip show?",
    "How does the video continue?",
    "What is happening now?",
    "Describe this next clip.",
    "What do we see next?",
    "Then what happens?",
    "What follows in this clip?",
]
CHANGE = [
    "What changed since the previous clip?",
    "How is this clip different from the previous one?",
    "What is different now compared with before?",
    "Compare this clip with the previous one.",
    "What has changed in the scene?",
    "How does this part differ from the last clip?",
    "Describe the change from the previous clip to this one.",
    "What is new in this clip compared to the one before?",
    "What differs between the last clip and this one?",
    "Tell me how the scene changed.",
]
SUMMARY = [
    "Summarize the video so far.",
    "Give a summary of everything that happened so far.",
    "What has happened in the video up to now?",
    "Recap the video so far.",
    "Summarize the events of the video in order.",
    "Briefly describe the whole video so far.",
    "What is the story of the video so far?",
    "List what happened in the video, in order.",
    "Give an overview of the video up to this point.",
    "Describe the sequence of events so far.",
]
NEW_VIDEO = [
    "Here is another video. Describe it.",
    "Now look at a different video. What happens in it?",
    "This is a second video. What does it show?",
    "Let's switch to another video. Describe this clip.",
    "Here is a new video. What is going on?",
    "Now a different video: what do you see?",
    "Consider this other video. Describe it.",
    "Moving on to another video: what happens here?",
    "What does this new video show?",
    "Another video now. Please describe it.",
]
# A clip whose video was dropped: its caption stays as user-side text context.
CONTEXT = [
    ("(A clip not shown here: ", ".)"),
    ("(Meanwhile, in a part not shown: ", ".)"),
    ("Earlier in the video: ", "."),
    ("For context, the previous part shows: ", "."),
    ("(Skipped clip: ", ".)"),
    ("Before this, ", "."),
    ("In the meantime: ", "."),
    ("(Not shown: ", ".)"),
    ("Context from the video: ", "."),
    ("A part of the video you cannot see: ", "."),
]
# Format (b): the clip's ASR transcript, added as text before the question.
ASR = [
    ('The speech in this clip: "', '"'),
    ('Someone says: "', '"'),
    ('Transcript: "', '"'),
    ('Audio transcript of the clip: "', '"'),
    ('(Speech: "', '")'),
    ('The narrator says: "', '"'),
    ('Spoken words: "', '"'),
    ('We hear: "', '"'),
    ('Subtitles: "', '"'),
    ('In this clip someone says "', '"'),
]
CHANGE_ANSWER = ("Before, ", "; now, ", ".")
SUMMARY_ANSWER = ("First, ", ". Then, ", ".")

POOLS = {
    "describe": DESCRIBE,
    "next": NEXT,
    "change": CHANGE,
    "summary": SUMMARY,
    "new_video": NEW_VIDEO,
    "context": CONTEXT,
    "asr": ASR,
}

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(x) -> np.ndarray:
    """SplitMix64 finaliser, vectorised over uint64 (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def key(*parts) -> np.ndarray:
    """Chain-hash several uint64 arrays/scalars: key(seed, video_hash, window, turn)."""
    h = mix64(np.uint64(0x5EED))
    for p in parts:
        with np.errstate(over="ignore"):
            h = mix64(h ^ np.asarray(p, dtype=np.uint64))
    return h


def unit(h: np.ndarray) -> np.ndarray:
    """Map uint64 hashes to floats uniform in [0, 1) (53 high bits)."""
    return (np.asarray(h, dtype=np.uint64) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def pick(h: np.ndarray, n: int) -> np.ndarray:
    """Uniform index in [0, n) from hashes (via the high bits; avoids low-bit bias)."""
    return np.minimum((unit(h) * n).astype(np.int64), n - 1)


# Salts so that partition, split and machine shard are independent functions of the video hash.
SALT_PARTITION = 0x7061727469
SALT_SPLIT = 0x73706C6974
SALT_MACHINE = 0x6D61636869


def check_pools() -> None:
    """Every pool has at least 10 distinct phrasings (asserted by tests and at import of the builder)."""
    for name, pool in POOLS.items():
        if len(set(pool)) < 10:
            raise AssertionError(f"template pool {name!r} has {len(set(pool))} phrasings; need >= 10")
