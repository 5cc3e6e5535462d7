"""CLIP BPE tokenisation for the ViCLIP text encoder, through transformers' `CLIPTokenizer`.

Sources (`load_clip_tokenizer(path)`):
- an HF CLIP tokenizer folder (`vocab.json` + `merges.txt`, or `tokenizer.json`), e.g. the tokenizer files of
  `openai/clip-vit-large-patch14`;
- CLIP's original merges file `bpe_simple_vocab_16e6.txt.gz` (the one ViCLIP's `SimpleTokenizer` reads).
  It is converted exactly as CLIP builds its vocabulary: the 256 byte symbols (GPT-2 byte-to-unicode order),
  the same with `</w>`, one token per merge (the first 49152 - 256 - 2 = 48894 merge lines after the header),
  then `<|startoftext|>` (49406) and `<|endoftext|>` (49407). `convert_bpe_file` writes it as
  `vocab.json` / `merges.txt`.

The file itself cannot be downloaded here and is not shipped; point at a local copy (it is inside the
`open_clip_torch` / `clip` wheels, e.g. `open_clip/bpe_simple_vocab_16e6.txt.gz`).

Tiny vocabularies for tiny models: `learn_bpe_merges(texts, n)` learns n merges with the `tokenizers` BPE
trainer under CLIP's pre-tokenisation and `write_bpe_file` stores them in the same `.txt.gz` format, so
tiny models use the real loading path; their vocabulary has 256 + 256 + n + 2 entries.

Encoding (as ViCLIP's `tokenize`): text cleaned like CLIP (ftfy, HTML unescape, whitespace collapse,
lower-case), `[SOT] + tokens + [EOT]`, cut to the context length (32) with the last kept token forced to
EOT, padded with 0. EOT is the highest id, which the text encoder's argmax pooling relies on.
"""

from __future__ import annotations

import gzip
import html
import json
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
CONTEXT_LENGTH = 32
"""ViCLIP's text context length."""
MAX_MERGES = 49152 - 256 - 2
"""CLIP uses the first 48894 merges of its file: 512 byte symbols + 48894 merges + 2 specials = 49408."""


def basic_clean(text: str) -> str:
    """CLIP's text cleaning: ftfy.fix_text, HTML unescape (twice), whitespace collapsed, stripped."""
    import ftfy

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


def byte_symbols() -> list[str]:
    """The 256 byte symbols in CLIP / GPT-2 order (transformers' `bytes_to_unicode`)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return list(bytes_to_unicode().values())


def read_bpe_file(path: str | Path) -> list[tuple[str, str]]:
    """Merges of a CLIP `bpe_simple_vocab_16e6.txt.gz`-style file: first line is a header, then one
    `left right` pair per line; at most `MAX_MERGES` are used (as CLIP)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = []
    for i, line in enumerate(lines[1 : MAX_MERGES + 1], start=2):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{i}: expected a merge 'left right', got {line!r}")
        merges.append((parts[0], parts[1]))
    if not merges and len(lines) < 2:
        raise ValueError(f"{path}: empty BPE file (expected a header line and merges)")
    return merges


def vocab_from_merges(merges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocabulary: byte symbols, byte symbols + `</w>`, one token per merge, SOT, EOT."""
    base = byte_symbols()
    vocab = base + [s + "</w>" for s in base] + ["".join(m) for m in merges] + [SOT, EOT]
    table = {tok: i for i, tok in enumerate(vocab)}
    if len(table) != len(vocab):
        seen: set[str] = set()
        dup = next(t for t in vocab if t in seen or seen.add(t))
        raise ValueError(f"the merges produce the token {dup!r} twice; not a valid BPE merge list")
    return table


def convert_bpe_file(bpe_path: str | Path, out_dir: str | Path) -> Path:
    """Write `vocab.json` and `merges.txt` (HF format) for a CLIP `.txt.gz` merges file; returns out_dir."""
    merges = read_bpe_file(bpe_path)
    out = Path(out_dir)
    _write_hf_files(vocab_from_merges(merges), merges, out)
    return out


def write_bpe_file(merges: Sequence[tuple[str, str]], path: str | Path) -> Path:
    """Store merges in CLIP's `.txt.gz` format (header line + one merge per line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = '"bpe_simple_vocab_16e6.txt#version: 0.2\n' + "".join(f"{a} {b}\n" for a, b in merges)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(body)
    return path


def _hf_clip_tokenizer(vocab: dict[str, int], merges: Sequence[tuple[str, str]]):
    """transformers' `CLIPTokenizer` for an in-memory vocabulary."""
    from transformers import CLIPTokenizer

    try:  # transformers >= 5: the tokenizers-backed class takes the vocabulary directly
        return CLIPTokenizer(vocab=vocab, merges=[tuple(m) for m in merges])
    except TypeError:  # transformers 4.x: (vocab_file, merges_file) only
        with tempfile.TemporaryDirectory() as tmp:
            _write_hf_files(vocab, merges, Path(tmp))
            return CLIPTokenizer.from_pretrained(tmp)


def _write_hf_files(vocab: dict[str, int], merges: Sequence[tuple[str, str]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")


def _clip_pre_tokenization():
    """CLIP's normaliser and pre-tokeniser as `tokenizers` objects (the ones transformers' CLIPTokenizer sets)."""
    from tokenizers import Regex, normalizers, pre_tokenizers

    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    split = pre_tokenizers.Split(
        Regex(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
        behavior="removed",
        invert=True,
    )
    return normalizer, pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False)])


def learn_bpe_merges(texts: Iterable[str], num_merges: int) -> list[tuple[str, str]]:
    """Learn up to `num_merges` BPE merges from `texts` (a tiny vocabulary for tiny models).

    Uses the `tokenizers` BPE trainer with the same normalisation and pre-tokenisation as `CLIPTokenizer`
    (byte-level symbols, `</w>` word ends), so the result is a valid CLIP-format merge list.
    """
    from tokenizers import Tokenizer, pre_tokenizers, trainers
    from tokenizers.models import BPE

    if num_merges < 0:
        raise ValueError("num_merges must be >= 0")
    tok = Tokenizer(BPE(end_of_word_suffix="</w>"))
    tok.normalizer, tok.pre_tokenizer = _clip_pre_tokenization()
    trainer = trainers.BpeTrainer(
        vocab_size=2 * 256 + num_merges + 2,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
    )
    tok.train_from_iterator((basic_clean(t) for t in texts), trainer=trainer)
    raw = json.loads(tok.to_str())["model"]["merges"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in raw]
    return [(a, b) for a, b in merges][:num_merges]


class ClipTokenizer:
    """CLIP BPE for ViCLIP: `tokenizer(texts) -> LongTensor [K, 32]` (SOT ... EOT, zero-padded).

    Wraps a transformers `CLIPTokenizer` (`.hf`); adds CLIP's ftfy/HTML cleaning and ViCLIP's
    truncation rule (the last kept token becomes EOT).
    """

    def __init__(self, hf_tokenizer, context_length: int = CONTEXT_LENGTH):
        self.hf = hf_tokenizer
        self.context_length = context_length
        self.sot_id = int(hf_tokenizer.convert_tokens_to_ids(SOT))
        self.eot_id = int(hf_tokenizer.convert_tokens_to_ids(EOT))
        if self.eot_id != len(hf_tokenizer) - 1:
            raise ValueError(
                f"{EOT} has id {self.eot_id} but must be the highest id ({len(hf_tokenizer) - 1}): the text "
                "encoder pools at the argmax of the ids"
            )

    @property
    def vocab_size(self) -> int:
        """Number of ids (set `ViCLIPConfig.text_vocab_size` to this for a tiny model)."""
        return len(self.hf)

    @classmethod
    def from_merges(cls, merges: Sequence[tuple[str, str]], context_length: int = CONTEXT_LENGTH) -> "ClipTokenizer":
        return cls(_hf_clip_tokenizer(vocab_from_merges(merges), merges), context_length)

    @classmethod
    def from_bpe_file(cls, path: str | Path, context_length: int = CONTEXT_LENGTH) -> "ClipTokenizer":
        """From CLIP's `bpe_simple_vocab_16e6.txt.gz` (or a tiny file in the same format)."""
        return cls.from_merges(read_bpe_file(path), context_length)

    @classmethod
    def from_pretrained(cls, folder: str | Path, context_length: int = CONTEXT_LENGTH) -> "ClipTokenizer":
        """From an HF CLIP tokenizer folder (vocab.json + merges.txt, or tokenizer.json)."""
        from transformers import CLIPTokenizer

        return cls(CLIPTokenizer.from_pretrained(str(folder)), context_length)

    def encode(self, text: str) -> list[int]:
        """BPE ids of one text, without SOT/EOT."""
        return self.hf(basic_clean(text), add_special_tokens=False)["input_ids"]

    def __call__(self, texts: Sequence[str] | str, context_length: int | None = None) -> torch.Tensor:
        """[K] texts -> LongTensor [K, context_length] (SOT, tokens, EOT; truncated with EOT last; 0-padded)."""
        if isinstance(texts, str):
            texts = [texts]
        n = self.context_length if context_length is None else context_length
        if n < 2:
            raise ValueError(f"context_length must be >= 2, got {n}")
        out = torch.zeros(len(texts), n, dtype=torch.long)
        if not texts:
            return out
        encoded = self.hf([basic_clean(t) for t in texts], add_special_tokens=False)["input_ids"]
        for i, ids in enumerate(encoded):
            row = [self.sot_id, *ids, self.eot_id]
            if len(row) > n:
                row = row[:n]
                row[-1] = self.eot_id
            out[i, : len(row)] = torch.tensor(row)
        return out

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of one id row, stopping at EOT and skipping SOT / padding."""
        ids = [int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
        if self.eot_id in ids:
            ids = ids[: ids.index(self.eot_id)]
        return self.hf.decode([i for i in ids if i != self.sot_id], skip_special_tokens=True).strip()


def load_clip_tokenizer(path: str | Path, context_length: int = CONTEXT_LENGTH) -> ClipTokenizer:
    """A `ClipTokenizer` from an HF CLIP tokenizer folder or a CLIP `.txt.gz` merges file."""
    p = Path(path)
    if p.is_dir():
        return ClipTokenizer.from_pretrained(p, context_length)
    if p.is_file():
        return ClipTokenizer.from_bpe_file(p, context_length)
    raise FileNotFoundError(f"no CLIP tokenizer at {p} (expected an HF tokenizer folder or bpe_simple_vocab_16e6.txt.gz)")
