"""Builders: tiny model overrides, YAML builds, the 7B configuration on the meta device (exact counts)."""

import pytest
import torch

from videochat.builders import build_model, config_7b, memory_report, tiny_config, videochat_7b, videochat_tiny
from videochat.config import ConfigError, save_json


def _lin(a, b):
    return a * b + b


def test_tiny_overrides_and_determinism():
    cfg = tiny_config(lora=True, qformer={"use_instruction": True}, **{"llm.dtype": "float32"}, llm__attn_implementation="eager")
    assert cfg.lora.enabled and cfg.qformer.use_instruction and cfg.llm.attn_implementation == "eager"
    assert cfg.tokens_per_clip == 16
    with pytest.raises(ConfigError):
        tiny_config(qformer={"no_such_field": 1})
    a, b = videochat_tiny(seed=3), videochat_tiny(seed=3)
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), n


def test_build_model_from_yaml_with_overrides(tmp_path):
    import yaml

    from videochat.config import VideoChatConfig

    cfg = tiny_config()
    save_json(cfg, tmp_path / "c.json")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(__import__("json").loads((tmp_path / "c.json").read_text())))
    m = build_model(tmp_path / "c.yaml", ["lora.enabled=true", "qformer.num_extra_query_tokens=4"])
    assert isinstance(m.config, VideoChatConfig) and m.has_lora and m.tokens_per_clip == 12
    m2 = build_model(cfg, ["lora.enabled=false"])
    assert not m2.has_lora


def test_7b_on_meta_exact_parameter_counts():
    m = videochat_7b()  # LLaMA-7B preset, ViCLIP-L/14, BERT-base Q-Former 32 + 64 queries, LoRA r=16
    assert all(p.device.type == "meta" for p in m.parameters())
    rows = {name: (t, n) for name, t, n in m.trainable_parameter_table()}
    # LLaMA-7B has 6,738,415,616 parameters; +1 embedding and lm_head row for the placeholder token.
    assert rows["llm"] == (0, 6_738_415_616 + 2 * 4096)
    # LoRA r=16 on q,k,v,o (4096x4096), gate/up (4096->11008), down (11008->4096) in 32 layers.
    assert rows["llm.lora"][0] == 32 * 16 * (4 * (4096 + 4096) + 3 * (4096 + 11008)) == 39_976_960
    # ViCLIP-L/14 vision tower (+ temp): conv1, class/pos/temporal embeddings, 24 blocks, ln_pre/post, proj.
    w = 1024
    block = _lin(w, 3 * w) + _lin(w, w) + _lin(w, 4 * w) + _lin(4 * w, w) + 4 * w
    viclip = w * 3 * 14 * 14 + w + 257 * w + 8 * w + 2 * w + 24 * block + 2 * w + w * 768 + 1
    assert rows["viclip"] == (0, viclip)
    # BERT-base Q-Former, cross-attention (from width 1024) in layers 0, 2, ..., 10, no text branch.
    h = 768
    layer = 4 * _lin(h, h) + 2 * h + _lin(h, 3072) + _lin(3072, h) + 2 * h
    cross = 2 * _lin(h, h) + 2 * _lin(w, h) + 2 * h
    assert rows["projector.qformer"][1] == 12 * layer + 6 * cross + 2 * h
    assert rows["projector.queries"][1] == (32 + 64) * h
    assert rows["projector.proj"][1] == _lin(h, 4096)
    assert rows["vision_ln"][1] == 2 * w
    assert m.tokens_per_clip == 96 and m.placeholder_id == 32000


def test_memory_report_bf16_and_nf4():
    m = videochat_7b(lora=False)
    rep = memory_report(m)
    assert rep["total"]["params"] == sum(p.numel() for p in m.parameters())
    assert rep["total"]["bf16_bytes"] == 2 * rep["total"]["params"]
    # NF4: the 32 x 7 big linear layers go to ~0.52 byte/param, embeddings + lm_head stay bf16.
    linear = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    assert rep["llm"]["nf4_bytes"] == int(2 * (rep["llm"]["params"] - linear) + linear * (0.5 + 0.127 / 8))
    assert 3.5e9 < rep["llm"]["nf4_bytes"] < 4.0e9 and 13.4e9 < rep["llm"]["bf16_bytes"] < 13.6e9


def test_7b_meta_reads_llm_folder_sizes(tmp_path):
    from transformers import AutoConfig

    AutoConfig.for_model("llama", hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, vocab_size=1000).save_pretrained(tmp_path / "llm")
    m = videochat_7b(llm=str(tmp_path / "llm"))
    assert m.projector.proj.out_features == 256 and m.placeholder_id == 1000
    assert m.llm.get_input_embeddings().weight.shape == (1001, 256)


def test_7b_config_with_folders_records_paths():
    cfg = config_7b(llm="/models/vicuna-7b", viclip="/models/viclip.pth", qformer="/models/instructblip",
                    load_in_4bit=True)
    assert cfg.llm.path == "/models/vicuna-7b" and cfg.llm.hf_config is None and cfg.llm.load_in_4bit
    assert cfg.viclip_checkpoint == "/models/viclip.pth" and cfg.qformer.init == "/models/instructblip"
    assert cfg.template == "auto" and cfg.viclip.width == 1024 and cfg.qformer.tokens_per_clip == 96


def test_qlora_config_builds_on_meta_without_cuda():
    m = videochat_7b(load_in_4bit=True)  # sizes only: nothing quantised, no CUDA needed
    rep = memory_report(m)
    assert rep["llm"]["trainable"] == 39_976_960 and rep["total"]["nf4_gib"] < 5
