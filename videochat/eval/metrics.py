"""Scoring functions: multiple-choice letter extraction, SQuAD-style QA metrics, corpus caption metrics.

- `extract_choice(text, candidates) -> int | None`: which option a free-form reply picks (None: none, or
  ambiguous -> scored wrong). Accepts "(B)", "B", "b", "B.", "B) text", "Best option: (B)", "The answer is
  C", and the option's own text instead of a letter.
- `normalize_answer`, `exact_match`, `token_f1`: the SQuAD v1.1 evaluation definitions (lowercase, drop
  punctuation and the articles a/an/the, collapse whitespace; F1 over bag-of-token overlap), max over the
  gold answers.
- `caption_metrics(hyps, refs)`: corpus BLEU-4 via sacrebleu; CIDEr-D and ROUGE-L via pycocoevalcap's
  pure-Python scorers (its METEOR and SPICE need Java and are not used).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

__all__ = [
    "letter", "extract_choice", "normalize_answer", "exact_match", "token_f1", "caption_metrics",
    "caption_tokenize", "available_caption_metrics",
]


def letter(i: int) -> str:
    """Option index -> its letter (0 -> "A")."""
    return chr(ord("A") + i)


_PUNCT_TABLE = str.maketrans("", "", string.punctuation)
_PREFIX = re.compile(r"^\s*(?:best\s+option|answer|option|the\s+answer\s+is)\s*[:\-]?\s*", re.IGNORECASE)
_PAREN = re.compile(r"^\(\s*([A-Za-z])\s*\)")  # "(B)", "(b) text"
_MARKED = re.compile(r"^([A-Za-z])\s*[).:\]](?:\s|$)")  # "B.", "b)", "B) text", "B: text"
_ALONE = re.compile(r"^\(?\s*([A-Za-z])\s*\)?\s*[.!]?$")  # "B", "b", "(B", "B)"
_UPPER_WORD = re.compile(r"^([A-Z])\b(?![''])")  # "B blue" (upper case only: "a red ..." is not option A)
_ANYWHERE_PAREN = re.compile(r"\(([A-Z])\)")  # "I think (C) is right"
_ANSWER_IS = re.compile(r"\b(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-Z])\b\)?", re.IGNORECASE)


def _words(text: str) -> str:
    return " ".join(text.lower().translate(_PUNCT_TABLE).split())


def _in_range(ch: str, n: int) -> int | None:
    i = ord(ch.upper()) - ord("A")
    return i if 0 <= i < n else None


def _text_match(text: str, candidates: Sequence[str], prefix_only: bool) -> int | None:
    """Index of the candidate whose normalised text the reply starts with (or contains, as whole words);
    the longest wins when one candidate's text contains another's; None when none or ambiguous."""
    t = f" {_words(text)} "
    hits = []
    for i, c in enumerate(candidates):
        w = _words(str(c))
        if not w:
            continue
        if (t.startswith(f" {w} ") if prefix_only else f" {w} " in t):
            hits.append((len(w), i, w))
    if not hits:
        return None
    hits.sort(reverse=True)
    best = hits[0]
    # a shorter hit that is not part of the best one means the reply names two options: ambiguous
    if any(w not in best[2] for _, _, w in hits[1:]):
        return None
    return best[1]


def extract_choice(text: str, candidates: Sequence[str]) -> int | None:
    """The option index a reply selects, or None (no option, an out-of-range letter, or ambiguous).

    `text` is the whole reply including any priming, e.g. "(" + generated text for MVBench's
    "Best option:(" prompt. Rules, first match wins: a letter in parentheses at the start ("(B)"); a letter
    followed by ")", ".", ":" or "]" ("B.", "b) text"); a lone letter ("B", "b"); the option's text at the
    start ("blue"); an upper-case letter as the first word ("B blue"); "(C)" anywhere; "answer is C";
    one option's text anywhere in the reply.
    """
    n = len(candidates)
    t = _PREFIX.sub("", (text or "").strip())
    t = t.strip().strip("*").strip()
    if not t or n == 0:
        return None
    for pat in (_PAREN, _MARKED, _ALONE):
        m = pat.match(t)
        if m:
            return _in_range(m.group(1), n)
    hit = _text_match(t, candidates, prefix_only=True)
    if hit is not None:
        return hit
    m = _UPPER_WORD.match(t)
    if m and _in_range(m.group(1), n) is not None and not (m.group(1) == "A" and t[1:2] == " " and t[2:3].islower()):
        return _in_range(m.group(1), n)  # "A red ..." reads as the article, not option A
    for pat in (_ANYWHERE_PAREN, _ANSWER_IS):
        found = {_in_range(x, n) for x in pat.findall(t)} - {None}
        if len(found) == 1:
            return found.pop()
        if len(found) > 1:
            return None
    return _text_match(t, candidates, prefix_only=False)


# --------------------------------------------------------------------------------------------------
# Open-ended QA (SQuAD v1.1 definitions)
# --------------------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Lower case, remove punctuation, remove the articles a/an/the, collapse whitespace (SQuAD)."""
    s = (s or "").lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _golds(gold: str | Sequence[str]) -> list[str]:
    return [gold] if isinstance(gold, str) else [str(g) for g in gold] or [""]


def exact_match(prediction: str, gold: str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer, else 0.0."""
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(g) for g in _golds(gold)))


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)  # both empty: 1, one empty: 0 (SQuAD 2.0 convention)
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, gold: str | Sequence[str]) -> float:
    """Token-overlap F1 of the normalised strings, max over the gold answers."""
    p = normalize_answer(prediction).split()
    return max(_f1(p, normalize_answer(g).split()) for g in _golds(gold))


# --------------------------------------------------------------------------------------------------
# Captioning (corpus metrics)
# --------------------------------------------------------------------------------------------------


def caption_tokenize(s: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed: what COCO's PTB tokenizer step does for
    CIDEr / ROUGE-L (its Java tokenizer is not used)."""
    return _words(s)


def available_caption_metrics() -> dict[str, str | None]:
    """metric -> None when computable here, else the reason it is not."""
    out: dict[str, str | None] = {"bleu": None}
    try:
        import sacrebleu  # noqa: F401
    except ImportError:
        out["bleu"] = "sacrebleu is not installed (pip install sacrebleu)"
    try:
        from pycocoevalcap.cider.cider import Cider  # noqa: F401
        from pycocoevalcap.rouge.rouge import Rouge  # noqa: F401

        out["cider"] = out["rouge_l"] = None
    except ImportError:
        out["cider"] = out["rouge_l"] = "pycocoevalcap is not installed (pip install pycocoevalcap)"
    out["meteor"] = "not computed: the maintained METEOR (pycocoevalcap) needs Java"
    return out


def caption_metrics(hyps: Sequence[str], refs: Sequence[str | Sequence[str]]) -> dict[str, float]:
    """Corpus metrics of hypotheses against one or more references each, on the scale papers report
    (0-100): `bleu` = sacrebleu corpus BLEU-4 (13a tokenisation; references padded by repeating the first
    when their count varies); `cider` = CIDEr-D x 100 and `rouge_l` = ROUGE-L x 100 from pycocoevalcap on
    `caption_tokenize`d text (left out when pycocoevalcap is not installed).
    """
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} reference sets")
    if not hyps:
        return {}
    ref_lists = [[r] if isinstance(r, str) else [str(x) for x in r] for r in refs]
    if any(not r for r in ref_lists):
        raise ValueError("every hypothesis needs at least one reference")
    out: dict[str, float] = {}
    avail = available_caption_metrics()
    if avail["bleu"] is None:
        import sacrebleu

        k = max(len(r) for r in ref_lists)
        streams = [[r[j] if j < len(r) else r[0] for r in ref_lists] for j in range(k)]
        out["bleu"] = float(sacrebleu.corpus_bleu(list(hyps), streams).score)
    if avail["cider"] is None:
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge

        gts = {i: [caption_tokenize(x) for x in r] for i, r in enumerate(ref_lists)}
        # an empty reply scores 0; a token matching nothing avoids pycocoevalcap's division by zero
        res = {i: [caption_tokenize(h) or "\u2205"] for i, h in enumerate(hyps)}
        out["cider"] = 100.0 * float(Cider().compute_score(gts, res)[0])
        out["rouge_l"] = 100.0 * float(Rouge().compute_score(gts, res)[0])
    return out
