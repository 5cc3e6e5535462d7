"""save_pretrained / from_pretrained / merge_and_export of VideoChatModel with tiny random models."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from videochat.builders import TINY_LLAMA, videochat_tiny
from videochat.model import VideoChatModel


def _batch(m):
    q = m.tokens_per_clip
    ids = torch.tensor([[1, 40] + [m.placeholder_id] * q + [41, 42, 43]])
    frames = torch.randn(1, 8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    return ids, frames


def _perturb_lora(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.llm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.fixture(scope="module")
def lora_model():
    m = videochat_tiny(lora=True)
    _perturb_lora(m)
    return m.eval()


def test_save_load_identical_logits_random_bases(lora_model, tmp_path):
    m = lora_model
    ids, frames = _batch(m)
    with torch.no_grad():
        ref = m(ids, clip_frames=frames).logits
    out = m.save_pretrained(tmp_path / "ckpt")
    names = {p.name for p in out.iterdir()}
    # random LLM and ViCLIP: their weights are stored too; LoRA as a peft adapter.
    assert {"config.json", "projector.safetensors", "adapter", "llm", "viclip.pth", "tokenizer"} <= names
    proj = load_file(str(out / "projector.safetensors"))
    assert set(proj) == {f"vision_ln.{k}" for k in m.vision_ln.state_dict()} | {
        f"projector.{k}" for k in m.projector.state_dict()}
    loaded = VideoChatModel.from_pretrained(out)
    assert not loaded.training and loaded.has_lora and loaded.placeholder_id == m.placeholder_id
    with torch.no_grad():
        got = loaded(ids, clip_frames=frames).logits
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_save_records_base_paths_and_stores_only_new_parts(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from videochat.tokenizers import bpe_tokenizer
    from videochat.viclip import ViCLIP
    from videochat.builders import tiny_config

    # Released-style bases on disk: an HF LLM folder (with tokenizer) and a ViCLIP .pth.
    torch.manual_seed(0)
    hf = dict(TINY_LLAMA)
    llm = AutoModelForCausalLM.from_config(AutoConfig.for_model(hf.pop("model_type"), **hf))
    llm.save_pretrained(tmp_path / "base_llm")
    bpe_tokenizer().save_pretrained(tmp_path / "base_llm")
    vcfg = tiny_config().viclip
    ViCLIP(vcfg).save_checkpoint(tmp_path / "viclip.pth")

    m = videochat_tiny(lora=True, llm={"path": str(tmp_path / "base_llm"), "hf_config": None},
                       viclip_checkpoint=str(tmp_path / "viclip.pth"))
    _perturb_lora(m, seed=5)
    m.eval()
    ids, frames = _batch(m)
    with torch.no_grad():
        ref = m(ids, clip_frames=frames).logits
    out = m.save_pretrained(tmp_path / "ckpt")
    names = {p.name for p in out.iterdir()}
    assert "llm" not in names and "viclip.pth" not in names  # bases are referenced, not copied
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["llm"]["path"] == str(tmp_path / "base_llm")
    assert cfg["viclip_checkpoint"] == str(tmp_path / "viclip.pth")
    manifest = json.loads((out / "videochat.json").read_text())
    assert manifest["base"]["llm"] == str(tmp_path / "base_llm") and manifest["kind"] == "checkpoint"
    loaded = VideoChatModel.from_pretrained(out)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, clip_frames=frames).logits, ref, rtol=0, atol=0)


def test_merge_and_export_self_contained_within_tolerance(lora_model, tmp_path):
    m = lora_model
    ids, frames = _batch(m)
    with torch.no_grad():
        ref = m(ids, clip_frames=frames).logits
    m.merge_and_export(tmp_path / "export")
    assert m.has_lora  # the live model keeps its adapters unmerged
    with torch.no_grad():
        torch.testing.assert_close(m(ids, clip_frames=frames).logits, ref, rtol=0, atol=0)
    # Move the folder: nothing may point outside it.
    moved = tmp_path / "elsewhere" / "model"
    moved.parent.mkdir()
    shutil.move(str(tmp_path / "export"), moved)
    names = {p.name for p in moved.iterdir()}
    assert "adapter" not in names and {"llm", "viclip.pth", "tokenizer", "projector.safetensors"} <= names
    cfg = json.loads((moved / "config.json").read_text())
    assert cfg["lora"]["enabled"] is False and cfg["llm"]["path"] == "llm" and cfg["viclip_checkpoint"] == "viclip.pth"
    exported = VideoChatModel.from_pretrained(moved)
    assert not exported.has_lora
    with torch.no_grad():
        got = exported(ids, clip_frames=frames).logits
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    # And the merged LLM differs from the plain base (the adapters really were merged).
    base_only = lora_model.llm.get_base_model()
    w_merged = exported.llm.model.layers[0].self_attn.q_proj.weight
    w_base = base_only.model.layers[0].self_attn.q_proj.base_layer.weight
    assert not torch.allclose(w_merged, w_base)


def test_trainable_state_dict_roundtrip_strict(lora_model):
    m = videochat_tiny(lora=True)
    sd = lora_model.trainable_state_dict()
    assert sd and all(("lora_" in k) or k.startswith(("vision_ln.", "projector.")) for k in sd)
    m.load_trainable_state_dict(sd)
    for k, v in m.trainable_state_dict().items():
        assert torch.equal(v, sd[k])
    bad = dict(sd)
    bad.pop(next(iter(bad)))
    with pytest.raises(ValueError, match="missing"):
        m.load_trainable_state_dict(bad)


def test_from_pretrained_rejects_tampered_projector(lora_model, tmp_path):
    out = lora_model.save_pretrained(tmp_path / "ckpt")
    from safetensors.torch import save_file

    sd = load_file(str(out / "projector.safetensors"))
    sd["projector.unknown"] = torch.zeros(1)
    save_file(sd, str(out / "projector.safetensors"))
    with pytest.raises(ValueError, match="unexpected"):
        VideoChatModel.from_pretrained(out)
    with pytest.raises(FileNotFoundError):
        VideoChatModel.from_pretrained(tmp_path / "nothing")
