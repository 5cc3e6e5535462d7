"""CLIP BPE tokenizer: conversion of CLIP's .txt.gz merges file and tokenisation, checked by hand.

Byte symbol ids (CLIP / GPT-2 order): printable ASCII '!'..'~' are 0..93 (id = ord(c) - 33),
'¡'..'¬' are 94..105, '®'..'ÿ' are 106..187, the other 68 bytes 188..255; `sym</w>` = id + 256;
merge k = 512 + k; then SOT, EOT.
"""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from videochat.clip_tokenizer import (
    ClipTokenizer,
    convert_bpe_file,
    learn_bpe_merges,
    load_clip_tokenizer,
    read_bpe_file,
    write_bpe_file,
)


pytestmark = pytest.mark.usefixtures("single_torch_thread")

HEADER = '"bpe_simple_vocab_16e6.txt#version: 0.2\n'
MERGES = ["h e", "l l", "he ll", "hell o</w>"]  # -> he=512, ll=513, hell=514, hello</w>=515; SOT 516, EOT 517


@pytest.fixture(scope="module")
def bpe_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bpe") / "tiny_vocab.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(HEADER + "\n".join(MERGES) + "\n")
    return path


@pytest.fixture(scope="module")
def tok(bpe_file):
    return load_clip_tokenizer(bpe_file)


def row(*ids, n=32):
    return list(ids) + [0] * (n - len(ids))


def test_conversion_ids(bpe_file, tmp_path):
    out = convert_bpe_file(bpe_file, tmp_path / "hf")
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 518
    assert vocab["!"] == 0 and vocab["a"] == 64 and vocab["~"] == 93 and vocab["¡"] == 94 and vocab["®"] == 106
    assert vocab["Ā"] == 188  # byte 0 maps to chr(256)
    assert vocab["a</w>"] == 320 and vocab["he"] == 512 and vocab["hello</w>"] == 515
    assert vocab["<|startoftext|>"] == 516 and vocab["<|endoftext|>"] == 517
    lines = (out / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines == ["#version: 0.2"] + MERGES


def test_tokenisation_hand_computed(tok):
    assert (tok.sot_id, tok.eot_id, tok.vocab_size) == (516, 517, 518)
    ids = tok(["Hello  hello!", "hey", "a&amp;b 42", "cafÃ©", "  "])
    assert ids.dtype == torch.long and ids.shape == (5, 32)
    assert ids[0].tolist() == row(516, 515, 515, 256, 517)  # lower-cased, '!</w>' = 256
    assert ids[1].tolist() == row(516, 512, 344, 517)  # he + y</w>
    assert ids[2].tolist() == row(516, 320, 261, 321, 275, 273, 517)  # html unescape; digits split
    assert ids[3].tolist() == row(516, 66, 64, 69, 127, 358, 517)  # ftfy fixes the mojibake to 'café'
    assert ids[4].tolist() == row(516, 517)
    assert tok.encode("HELLO") == [515]
    assert tok.decode(ids[0]) == "hello hello !"


def test_truncation_forces_eot_and_context(tok):
    ids = tok(["hello " * 40])
    assert ids[0].tolist() == [516] + [515] * 30 + [517]
    short = tok("hello hello hello", context_length=4)
    assert short.tolist() == [[516, 515, 515, 517]]
    assert tok([]).shape == (0, 32)


def test_hf_folder_equals_bpe_file(bpe_file, tok, tmp_path):
    folder = convert_bpe_file(bpe_file, tmp_path / "hf")
    from_folder = load_clip_tokenizer(folder)
    texts = ["Hello there, hello!", "HEY 123", "he'll"]
    assert torch.equal(from_folder(texts), tok(texts))
    tok.hf.save_pretrained(tmp_path / "saved")  # an HF folder as transformers writes it
    assert torch.equal(load_clip_tokenizer(tmp_path / "saved")(texts), tok(texts))


def test_real_vocab_layout_ids(tmp_path):
    # 50000 valid merges (pairs of byte symbols): CLIP keeps the first 48894 -> SOT 49406, EOT 49407
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    sym = list(bytes_to_unicode().values())
    merges = [(sym[i // 256], sym[i % 256]) for i in range(50000)]
    path = write_bpe_file(merges, tmp_path / "bpe_simple_vocab_16e6.txt.gz")
    assert len(read_bpe_file(path)) == 48894
    tok = load_clip_tokenizer(path)
    assert (tok.sot_id, tok.eot_id, tok.vocab_size) == (49406, 49407, 49408)
    # "!!" -> merge 0 ("!" + "!") is not applicable at word end ("!</w>"), so: "!" then "!</w>"
    assert tok("!!")[0, :4].tolist() == [49406, 0, 256, 49407]
    # "#!!a" -> pieces "#!!", "a"; merge ('#','!') is index 2*256 + 0 = 512 -> id 512 + 512; "!</w>"; "a</w>"
    assert tok("#!!a")[0, :5].tolist() == [49406, 1024, 256, 320, 49407]


def test_learned_tiny_vocab_round_trips_through_file(tmp_path):
    captions = ["a red circle moves left", "a blue square appears", "the red circle turns green"] * 3
    merges = learn_bpe_merges(captions, 30)
    assert len(merges) == 30
    path = write_bpe_file(merges, tmp_path / "tiny.txt.gz")
    tok = load_clip_tokenizer(path)
    assert tok.vocab_size == 512 + 30 + 2 and tok.eot_id == 543
    ids = tok("a red circle moves")
    assert ids[0, 0] == tok.sot_id and tok.eot_id in ids[0].tolist()
    assert len(tok.encode("circle")) < len("circle")  # merges are used
    assert tok.decode(ids[0]) == "a red circle moves"


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_clip_tokenizer(tmp_path / "missing.txt.gz")
    bad = tmp_path / "bad.txt.gz"
    with gzip.open(bad, "wt", encoding="utf-8") as f:
        f.write(HEADER + "a b c\n")
    with pytest.raises(ValueError, match="expected a merge"):
        read_bpe_file(bad)
    dup = tmp_path / "dup.txt.gz"
    write_bpe_file([("a", "bc"), ("b", "c"), ("ab", "c")], dup)
    with pytest.raises(ValueError, match="twice"):
        load_clip_tokenizer(dup)
    with pytest.raises(ValueError, match="context_length"):
        ClipTokenizer.from_merges([])(["x"], context_length=1)


def test_viclip_encode_text_with_clip_tokenizer(tok):
    from videochat.config import ViCLIPConfig
    from videochat.viclip import ViCLIP

    cfg = ViCLIPConfig(
        image_size=16, patch_size=8, width=16, layers=1, heads=2, output_dim=8, num_frames=2,
        text_width=16, text_layers=1, text_heads=2, text_vocab_size=tok.vocab_size,
    )
    model = ViCLIP(cfg).eval()
    texts = ["hello", "Hey hello!"]
    with torch.no_grad():
        want = model.encode_text_ids(tok(texts))
        torch.testing.assert_close(model.encode_text(texts, tokenizer=tok), want, rtol=0, atol=0)
        model.tokenizer = tok
        torch.testing.assert_close(model.encode_text(texts), want, rtol=0, atol=0)


@pytest.mark.skipif(
    not __import__("os").environ.get("VICLIP_BPE_PATH"),
    reason="set VICLIP_BPE_PATH to a local bpe_simple_vocab_16e6.txt.gz to check the real vocabulary",
)
def test_real_clip_vocabulary_known_ids():
    import os

    tok = load_clip_tokenizer(os.environ["VICLIP_BPE_PATH"])
    assert (tok.sot_id, tok.eot_id, tok.vocab_size) == (49406, 49407, 49408)
    assert tok("a photo of a cat")[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 0]
