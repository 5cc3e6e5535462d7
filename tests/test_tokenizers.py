"""videochat.tokenizers: in-memory byte-level BPE and the sentencepiece trainer (round trips, special ids)."""

import pytest
from transformers import AutoTokenizer

from videochat.conversation import render
from videochat.tokenizers import DEFAULT_CORPUS, bpe_tokenizer, train_sentencepiece

PH = "<|video_pad|>"
TRICKY = [
    "",
    "A red circle moves to the left.",
    "  leading and trailing spaces  ",
    "tabs\tand\nnew\n\nlines\r\n",
    "Ünïcödé, 中文, emoji 😀👍🏽, zero\u200bwidth",
    "###Human: <Video></Video> [INST] {braces} </s> <|im_end|>",
    "numbers 0.5 12345 3.14159",
]


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sp")
    texts = [f"{line} (variant {i})" for i in range(200) for line in DEFAULT_CORPUS]  # ~3.8k sentences
    tok = train_sentencepiece(texts, d, vocab_size=700)
    return d, tok


def test_bpe_special_tokens_and_placeholder():
    tok = bpe_tokenizer()
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids(PH) == 3 and tok.extra_special_tokens == [PH]
    assert len(tok) == 512 and tok.unk_token is None and tok.chat_template is None
    assert tok("a " + PH + " b", add_special_tokens=False).input_ids.count(3) == 1
    assert tok("hi").input_ids == tok("hi", add_special_tokens=False).input_ids  # no implicit bos/eos


@pytest.mark.parametrize("text", TRICKY)
def test_bpe_decode_is_exact(text):
    tok = bpe_tokenizer()
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text
    assert all(0 <= i < len(tok) for i in ids)


def test_bpe_save_load_round_trip(tmp_path):
    tok = bpe_tokenizer(placeholder_token="<vid>")
    tok.save_pretrained(tmp_path)
    back = AutoTokenizer.from_pretrained(tmp_path)
    for text in TRICKY:
        assert back(text, add_special_tokens=False).input_ids == tok(text, add_special_tokens=False).input_ids
    assert back.convert_tokens_to_ids("<vid>") == 3 and back("<vid>", add_special_tokens=False).input_ids == [3]
    assert (back.bos_token, back.eos_token, back.pad_token) == ("<s>", "</s>", "<pad>")
    assert len(back) == len(tok)


def test_bpe_custom_corpus_and_deterministic():
    corpus = ["the cat sat on the mat"] * 20
    a, b = bpe_tokenizer(corpus, vocab_size=300), bpe_tokenizer(corpus, vocab_size=300)
    assert a.get_vocab() == b.get_vocab() and 260 < len(a) <= 300  # a tiny corpus has fewer merges
    assert len(a("the cat", add_special_tokens=False).input_ids) < len("the cat")  # merges were learned
    with pytest.raises(ValueError, match="vocab_size"):
        bpe_tokenizer(vocab_size=100)
    with pytest.raises(ValueError, match="collides"):
        bpe_tokenizer(placeholder_token="</s>")


def test_sentencepiece_folder_loads_and_round_trips(sp_dir):
    d, tok = sp_dir
    assert {"tokenizer.model", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in d.iterdir()}
    back = AutoTokenizer.from_pretrained(d)
    assert (back.unk_token_id, back.bos_token_id, back.eos_token_id, back.pad_token_id) == (0, 1, 2, 3)
    pid = back.convert_tokens_to_ids(PH)
    assert pid == len(back) - 1 and back(PH, add_special_tokens=False).input_ids == [pid]
    for text in TRICKY:
        ids = back(text, add_special_tokens=False).input_ids
        assert back.unk_token_id not in ids  # byte fallback: no unknowns
        assert back.decode(ids) == text
        assert ids == tok(text, add_special_tokens=False).input_ids


def test_sentencepiece_matches_the_sentencepiece_model(sp_dir):
    import sentencepiece as spm

    d, tok = sp_dir
    sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
    for text in ["A red circle moves to the left.", "What happens next? Describe the video in detail."]:
        assert tok(text, add_special_tokens=False).input_ids == sp.encode(text)


def test_sentencepiece_renders_a_conversation(sp_dir):
    _, tok = sp_dir
    msgs = [{"role": "user", "content": [{"type": "clip", "clip": 0}, {"type": "text", "text": "What happens?"}]},
            {"role": "assistant", "content": "A red circle moves."}]
    r = render(msgs, tok, template="videochat2", tokens_per_clip=2)
    expected = f"<s>###Human: <Video>{PH}{PH}</Video> What happens? ###Assistant: A red circle moves. ###"
    assert tok.decode(r.input_ids) == expected
    assert tok.decode([i for i in r.labels if i != -100]) == " A red circle moves. ###"
    assert tok.convert_ids_to_tokens([i for i in r.labels if i != -100])[0] == "▁A"  # no doubled prefix space


def test_sentencepiece_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="non-empty"):
        train_sentencepiece(["", "  "], tmp_path)
    with pytest.raises(ValueError, match="vocab_size"):
        train_sentencepiece(["hello"], tmp_path, vocab_size=100)
