"""Tokenizers built in-process: a tiny byte-level BPE for tests/tiny models, and a sentencepiece trainer.

Nothing here downloads anything. Both return ordinary `transformers` tokenizers that round-trip through
`save_pretrained` / `AutoTokenizer.from_pretrained`, so every caller uses the real HF code paths.

- `bpe_tokenizer()` trains a byte-level BPE (HF `tokenizers`) in milliseconds: any text tokenizes (the 256
  byte symbols are always in the vocabulary, so there is no `<unk>`) and decodes back byte-exactly.
- `train_sentencepiece()` trains a sentencepiece BPE model with byte fallback (Llama-style) and saves a
  tokenizer folder; transformers converts the `.model` to its tokenizers backend (`LlamaTokenizer`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

# Special tokens, in id order (ids 0..3 for the default placeholder) — stable across calls.
PAD, BOS, EOS = "<pad>", "<s>", "</s>"
DEFAULT_PLACEHOLDER = "<|video_pad|>"

# A small English corpus (plus the chat-template markers) so the default BPE has useful merges.
DEFAULT_CORPUS: tuple[str, ...] = (
    "###Human: <Video></Video> The video contains 8 frames sampled at 0.5, 1.7, 2.9, 4.1 seconds. ###Assistant:",
    "[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nDescribe the video. [/INST]",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat happens?<|im_end|>\n",
    "<|im_start|>assistant\nA red circle moves to the left.<|im_end|>\n",
    "A red circle moves from the left to the right of the screen.",
    "A blue square appears in the middle and then turns green.",
    "A yellow triangle slides down while a purple star stays still.",
    "Two shapes move towards each other and the orange one disappears.",
    "What happens in the video? Describe the video in detail.",
    "What happens next? Compare this clip with the previous one.",
    "Which shape changes colour? What colour is the circle at the end?",
    "The man is walking his dog in the park while children play football.",
    "A woman is cooking pasta in the kitchen and talking to the camera.",
    "The camera pans across a city at night, showing cars and bright lights.",
    "Question: What is the person doing?\nOptions:\n(A) running\n(B) sitting\n(C) jumping\n(D) reading\n"
    "Best option:(A)",
    "Carefully watch the video and pay attention to the cause and sequence of events, the detail and "
    "movement of objects, and the action and pose of persons.",
    "It is a sunny day. There are trees, people, a dog, a ball, the sky and the sea. "
    "First, then, after that, finally, before, because, so, but, and, or, not, with, without, into, onto.",
    "one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9 10 100 0.5 1.0 2.5 12.5",
    "Yes. No. I don't know. The answer is the second clip, because the shape turns red after it stops.",
)


def bpe_tokenizer(
    corpus: Iterable[str] | None = None,
    vocab_size: int = 512,
    *,
    placeholder_token: str = DEFAULT_PLACEHOLDER,
):
    """Train a byte-level BPE tokenizer in memory and wrap it as a `PreTrainedTokenizerFast`.

    Special tokens: pad `<pad>` (id 0), bos `<s>` (1), eos `</s>` (2) and `placeholder_token` (3) as an
    extra special token. No chat template is set (`template="auto"` renders with `videochat2`). Encoding
    adds no special tokens: the conversation renderer places bos/eos itself. `vocab_size` must leave room
    for the 256 byte symbols and the 4 special tokens.
    """
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, BOS, EOS, placeholder_token]
    if len(set(specials)) != len(specials):
        raise ValueError(f"placeholder_token {placeholder_token!r} collides with a built-in special token")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(specials):
        raise ValueError(f"vocab_size={vocab_size} is below the minimum {len(alphabet) + len(specials)} "
                         "(256 byte symbols + 4 special tokens)")
    texts = list(DEFAULT_CORPUS if corpus is None else corpus)
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("corpus must be an iterable of str")

    tok = Tokenizer(models.BPE())
    # use_regex: GPT-2 style word splitting, so merges never cross word boundaries and segment-wise
    # tokenization agrees with whole-string tokenization at spaces/punctuation.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=[placeholder_token],
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 20,
    )


def train_sentencepiece(
    texts: Iterable[str],
    out_dir: str | os.PathLike,
    vocab_size: int = 1000,
    placeholder_token: str = DEFAULT_PLACEHOLDER,
    *,
    model_type: str = "bpe",
    character_coverage: float = 1.0,
    seed: int = 0,
):
    """Train a sentencepiece model on `texts`, save a HF tokenizer folder at `out_dir`, return the tokenizer.

    Llama-style: BPE (or unigram) with byte fallback (any text encodes without `<unk>`), no text
    normalisation and no whitespace collapsing, so `decode(encode(s)) == s` for any s. Ids: `<unk>` 0,
    `<s>` 1, `</s>` 2, `<pad>` 3; `placeholder_token` is added as an extra special token after the
    sentencepiece vocabulary. `out_dir` receives `tokenizer.model` (the sentencepiece proto),
    `tokenizer.json` and `tokenizer_config.json`; `AutoTokenizer.from_pretrained(out_dir)` loads it.
    `vocab_size` is the sentencepiece vocabulary (it must cover the 256 byte pieces and 4 specials); it
    is lowered automatically (`hard_vocab_limit=False`) when the texts are too small to fill it.
    """
    import sentencepiece as spm
    from transformers import AutoTokenizer, LlamaTokenizer

    lines = [t.replace("\n", " ") for t in texts if t and t.strip()]
    if not lines:
        raise ValueError("train_sentencepiece needs at least one non-empty text")
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
    if vocab_size < 256 + 4 + 1:
        raise ValueError(f"vocab_size={vocab_size} is too small: 256 byte pieces + 4 special tokens + 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "sp")
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_prefix=prefix,
            model_type=model_type,
            vocab_size=vocab_size,
            hard_vocab_limit=False,
            character_coverage=character_coverage,
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            split_digits=True,
            add_dummy_prefix=False,  # HF's Metaspace cannot reproduce sentencepiece's dummy prefix on
            # text that starts with a space; without it both agree and decode(encode(s)) == s exactly.
            unk_id=0, bos_id=1, eos_id=2, pad_id=3,
            unk_piece="<unk>", bos_piece=BOS, eos_piece=EOS, pad_piece=PAD,
            num_threads=min(4, os.cpu_count() or 1),
            minloglevel=2,
        )
        # Copy the proto next to the HF files (tokenizer.model is what LlamaTokenizer's slow path reads).
        model_bytes = Path(prefix + ".model").read_bytes()
    (out / "tokenizer.model").write_bytes(model_bytes)
    # transformers converts the sentencepiece proto to its tokenizers backend (Metaspace + BPE with
    # byte fallback) when only `vocab_file` is given.
    tok = LlamaTokenizer.from_pretrained(
        str(out),
        vocab_file=str(out / "tokenizer.model"),
        bos_token=BOS,
        eos_token=EOS,
        unk_token="<unk>",
        pad_token=PAD,
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        legacy=False,
        add_prefix_space=False,
        model_max_length=1 << 20,
    )
    tok.add_special_tokens({"extra_special_tokens": [placeholder_token]}, replace_extra_special_tokens=False)
    tok.save_pretrained(str(out))
    return AutoTokenizer.from_pretrained(str(out))
