"""Q-Former weight converters: real (tiny) HF BLIP-2 / InstructBLIP folders, VideoChat2 / LAVIS layout, strictness."""

import pytest
import torch

from videochat.builders import videochat_tiny
from videochat.convert import (
    ConversionError,
    hf_to_ours,
    load_qformer_init,
    ours_to_hf,
    ours_to_videochat2,
    videochat2_to_ours,
)

H, LAYERS, VOCAB, POS = 64, 2, 512, 64  # the tiny Q-Former sizes of videochat_tiny


def _hf_folder(tmp_path, kind, vision_width=64, seed=0):
    """A genuine transformers BLIP-2 / InstructBLIP model (tiny, random), saved as an HF folder."""
    from transformers import (Blip2Config, Blip2ForConditionalGeneration, InstructBlipConfig,
                              InstructBlipForConditionalGeneration)

    torch.manual_seed(seed)
    vision = dict(hidden_size=vision_width, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                  image_size=16, patch_size=8)
    qformer = dict(hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=4, intermediate_size=128,
                   encoder_hidden_size=vision_width, vocab_size=VOCAB, max_position_embeddings=POS)
    if kind == "blip2":
        text = dict(model_type="opt", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, ffn_dim=64,
                    vocab_size=100, word_embed_proj_dim=32, max_position_embeddings=64)
        model = Blip2ForConditionalGeneration(Blip2Config(vision_config=vision, qformer_config=qformer,
                                                          text_config=text, num_query_tokens=8))
    else:
        text = dict(model_type="llama", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64, vocab_size=100)
        model = InstructBlipForConditionalGeneration(InstructBlipConfig(vision_config=vision, qformer_config=qformer,
                                                                        text_config=text, num_query_tokens=8))
    with torch.no_grad():
        model.query_tokens.normal_()
    model.save_pretrained(tmp_path / kind)
    return tmp_path / kind, model.eval()


@pytest.mark.parametrize("kind", ["blip2", "instructblip"])
def test_hf_folder_loads_and_matches_transformers_qformer(tmp_path, kind):
    folder, hf = _hf_folder(tmp_path, kind)
    use_instr = kind == "instructblip"
    m = videochat_tiny(qformer={"init": str(folder), "use_instruction": use_instr})
    assert torch.equal(m.projector.query_tokens, hf.query_tokens)
    assert torch.equal(m.projector.extra_query_tokens, torch.zeros_like(m.projector.extra_query_tokens))
    # Same computation as transformers' own Q-Former on the same encoder states.
    x = torch.randn(2, 17, 64)
    q = hf.query_tokens.expand(2, -1, -1)
    with torch.no_grad():
        if use_instr:
            ids = torch.randint(5, VOCAB, (2, 5))
            mask = torch.ones(2, 8 + 5, dtype=torch.long)
            ref = hf.qformer(input_ids=ids, attention_mask=mask, query_embeds=q, encoder_hidden_states=x)
            got = m.projector.qformer(input_ids=ids, attention_mask=mask, query_embeds=q, encoder_hidden_states=x)
        else:
            ref = hf.qformer(query_embeds=q, encoder_hidden_states=x)
            got = m.projector.qformer(query_embeds=q, encoder_hidden_states=x)
    torch.testing.assert_close(got.last_hidden_state, ref.last_hidden_state, rtol=0, atol=0)


def test_instructblip_folder_into_queries_only_qformer_skips_text_branch(tmp_path):
    folder, hf = _hf_folder(tmp_path, "instructblip")
    m = videochat_tiny()
    report = load_qformer_init(m, folder)
    assert report.skipped["Q-Former text branch, unused with qformer.use_instruction=false"] == 2 + 2 * LAYERS * 3
    assert any("vision encoder" in r for r in report.skipped) and any("own LLM" in r for r in report.skipped)
    torch.testing.assert_close(m.projector.qformer.layernorm.weight, hf.qformer.embeddings.layernorm.weight)


def test_blip2_folder_into_instruction_qformer_reports_missing_text_branch(tmp_path):
    folder, _ = _hf_folder(tmp_path, "blip2")
    with pytest.raises(ConversionError, match="word_embeddings"):
        videochat_tiny(qformer={"init": str(folder), "use_instruction": True})


def test_hf_vision_width_mismatch_keeps_cross_kv_at_init(tmp_path):
    folder, hf = _hf_folder(tmp_path, "blip2", vision_width=48)  # like EVA ViT-g 1408 vs ViCLIP 1024
    m = videochat_tiny()
    report = load_qformer_init(m, folder)
    assert sorted(report.reinitialized) == sorted(
        f"projector.qformer.encoder.layer.0.crossattention.attention.{n}.{p}"
        for n in ("key", "value") for p in ("weight", "bias"))
    assert torch.equal(m.projector.qformer.encoder.layer[0].crossattention.attention.query.weight,
                       hf.qformer.encoder.layer[0].crossattention.attention.query.weight)


def _videochat2_state_dict(use_text: bool, width=64, llm_hidden=64, extra=8, seed=0, llm="llama", stage=3):
    """A random VideoChat2 checkpoint, key names written out here by hand as Ask-Anything's models name them
    (`video_chat2/models/videochat2_it.py`: `self.qformer, self.query_tokens = self.init_Qformer(...)`, a LAVIS
    BertLMHeadModel; `self.{llm}_proj`; `self.vision_layernorm`). stage=1: `videochat2_qformer.py` (no LLM,
    no extra queries, contrastive heads, the Q-Former's LM head)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    sd = {"query_tokens": r(1, 8, H),
          "vision_layernorm.weight": r(width), "vision_layernorm.bias": r(width),
          "qformer.bert.embeddings.LayerNorm.weight": r(H), "qformer.bert.embeddings.LayerNorm.bias": r(H),
          "qformer.bert.embeddings.position_ids": torch.arange(POS)[None],
          "vision_encoder.blocks.0.attn.qkv.weight": r(3, 4)}  # UMT: skipped
    if stage == 1:
        sd.update({"temp": r(()), "vision_temp_embed": r(1, 4, 1, width), "vision_proj.weight": r(16, H),
                   "vision_proj.bias": r(16), "text_proj.weight": r(16, H), "text_proj.bias": r(16),
                   "itm_head.weight": r(2, H), "itm_head.bias": r(2), "qformer.cls.predictions.bias": r(VOCAB),
                   "qformer.cls.predictions.transform.dense.weight": r(H, H)})
    else:
        sd.update({"extra_query_tokens": r(1, extra, H),
                   f"{llm}_proj.weight": r(llm_hidden, H), f"{llm}_proj.bias": r(llm_hidden),
                   f"{llm}_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": r(2, 4)})
    if use_text:
        sd["qformer.bert.embeddings.word_embeddings.weight"] = r(VOCAB, H)
        sd["qformer.bert.embeddings.position_embeddings.weight"] = r(POS, H)
    for i in range(LAYERS):
        p = f"qformer.bert.encoder.layer.{i}."
        mods = {"attention.self.query": (H, H), "attention.self.key": (H, H), "attention.self.value": (H, H),
                "attention.output.dense": (H, H), "intermediate_query.dense": (128, H), "output_query.dense": (H, 128)}
        lns = ["attention.output.LayerNorm", "output_query.LayerNorm"]
        if i % 2 == 0:
            mods.update({"crossattention.self.query": (H, H), "crossattention.self.key": (H, width),
                         "crossattention.self.value": (H, width), "crossattention.output.dense": (H, H)})
            lns.append("crossattention.output.LayerNorm")
        if use_text:
            mods.update({"intermediate.dense": (128, H), "output.dense": (H, 128)})
            lns.append("output.LayerNorm")
        for name, shape in mods.items():
            sd[p + name + ".weight"], sd[p + name + ".bias"] = r(*shape), r(shape[0])
        for name in lns:
            sd[p + name + ".weight"], sd[p + name + ".bias"] = r(H), r(H)
    return sd


def _lavis_alias(sd):
    """The same tensors as a LAVIS BLIP-2 / VideoChat-v1 file names them (`self.Qformer`, `self.ln_vision`)."""
    ren = {"qformer.": "Qformer.", "vision_layernorm.": "ln_vision.", "vision_encoder.": "visual_encoder."}
    out = {}
    for k, v in sd.items():
        for a, b in ren.items():
            if k.startswith(a):
                k = b + k[len(a):]
        out[k] = v
    return out


def _check_loaded(m, sd, use_text, proj="llama_proj"):
    qf = m.projector.qformer
    assert torch.equal(m.projector.proj.weight, sd[f"{proj}.weight"])
    assert torch.equal(m.projector.extra_query_tokens, sd["extra_query_tokens"])
    assert torch.equal(m.projector.query_tokens, sd["query_tokens"])
    assert torch.equal(qf.encoder.layer[0].crossattention.attention.key.weight,
                       sd["qformer.bert.encoder.layer.0.crossattention.self.key.weight"])
    assert torch.equal(qf.encoder.layer[1].output_query.LayerNorm.bias,
                       sd["qformer.bert.encoder.layer.1.output_query.LayerNorm.bias"])
    emb_ln = qf.embeddings.layernorm if use_text else qf.layernorm
    assert torch.equal(emb_ln.weight, sd["qformer.bert.embeddings.LayerNorm.weight"])
    if use_text:
        assert torch.equal(qf.embeddings.word_embeddings.weight, sd["qformer.bert.embeddings.word_embeddings.weight"])
        assert torch.equal(qf.encoder.layer[1].output.dense.weight,
                           sd["qformer.bert.encoder.layer.1.output.dense.weight"])


@pytest.mark.parametrize("use_text,llm", [(False, "llama"), (True, "llama"), (False, "mistral"), (True, "phi")])
def test_videochat2_checkpoint_loads_every_tensor(tmp_path, use_text, llm):
    sd = _videochat2_state_dict(use_text, llm=llm)
    torch.save({"model": sd}, tmp_path / "vc2.pth")
    m = videochat_tiny(qformer={"init": str(tmp_path / "vc2.pth"), "use_instruction": use_text})
    _check_loaded(m, sd, use_text, proj=f"{llm}_proj")
    assert torch.equal(m.vision_ln.weight, sd["vision_layernorm.weight"])


def test_lavis_videochat_v1_alias_names_load_the_same(tmp_path):
    sd = _videochat2_state_dict(False)
    torch.save(_lavis_alias(sd), tmp_path / "v1.pth")
    m = videochat_tiny()
    report = load_qformer_init(m, tmp_path / "v1.pth")
    _check_loaded(m, sd, False)
    assert torch.equal(m.vision_ln.bias, sd["vision_layernorm.bias"]) and report.reinitialized == []
    assert any("EVA vision encoder" in r for r in report.skipped)
    with pytest.raises(ConversionError, match="both qformer.bert.embeddings.LayerNorm.bias"):
        videochat2_to_ours({**sd, "Qformer.bert.embeddings.LayerNorm.bias": torch.zeros(H)}, False)


def test_stage3_file_without_frozen_vision_layernorm_keeps_it_at_init(tmp_path, caplog):
    sd = {k: v for k, v in _videochat2_state_dict(True).items() if not k.startswith("vision_layernorm.")}
    torch.save({"model": sd}, tmp_path / "st3.pth")
    m = videochat_tiny(qformer={"use_instruction": True})
    before = m.vision_ln.weight.detach().clone()
    with caplog.at_level("WARNING", logger="videochat.convert"):
        report = load_qformer_init(m, tmp_path / "st3.pth")
    assert report.reinitialized == ["vision_ln.bias", "vision_ln.weight"]
    assert torch.equal(m.vision_ln.weight, before) and "vision_ln.weight" in caplog.text
    _check_loaded(m, sd, True)


def test_stage1_file_needs_proj_skip_and_keeps_extra_queries_at_init(tmp_path):
    sd = _videochat2_state_dict(True, stage=1)
    torch.save({"model": sd}, tmp_path / "st1.pth")
    with pytest.raises(ConversionError, match=r"missing \(2\).*projector.proj.*init_skip=\[proj\]"):
        videochat_tiny(qformer={"init": str(tmp_path / "st1.pth"), "use_instruction": True})
    m = videochat_tiny(qformer={"init": str(tmp_path / "st1.pth"), "use_instruction": True, "init_skip": ["proj"]})
    assert torch.equal(m.projector.extra_query_tokens, torch.zeros_like(m.projector.extra_query_tokens))
    assert torch.equal(m.projector.qformer.encoder.layer[1].output.dense.bias,
                       sd["qformer.bert.encoder.layer.1.output.dense.bias"])
    report = load_qformer_init(videochat_tiny(qformer={"use_instruction": True}), tmp_path / "st1.pth", skip=["proj"])
    assert sorted(report.reinitialized) == ["projector.extra_query_tokens", "projector.proj.bias",
                                            "projector.proj.weight"]
    assert report.skipped["VideoChat2 stage-1 contrastive / matching heads (unused for chat)"] == 8
    assert report.skipped["Q-Former language-model head (unused for chat)"] == 2


def test_projection_for_another_llm_width_is_refused_with_a_hint_or_skipped(tmp_path):
    sd = _videochat2_state_dict(False, llm_hidden=4096)  # llama_proj [4096, 768] vs e.g. a Qwen LLM
    torch.save({"model": sd}, tmp_path / "vc2.pth")
    m = videochat_tiny()
    with pytest.raises(ConversionError, match=r"projector.proj.weight: source \(4096, 64\).*init_skip=\[proj\]"):
        load_qformer_init(m, tmp_path / "vc2.pth")
    before = m.projector.proj.weight.detach().clone()
    report = load_qformer_init(m, tmp_path / "vc2.pth", skip=("proj",))
    assert torch.equal(m.projector.proj.weight, before)
    assert report.skipped["proj (qformer.init_skip)"] == 2
    assert report.reinitialized == ["projector.proj.bias", "projector.proj.weight"]
    assert torch.equal(m.projector.query_tokens, sd["query_tokens"])
    with pytest.raises(ValueError, match="unknown part.*'llm'"):
        load_qformer_init(m, tmp_path / "vc2.pth", skip=("llm",))


@pytest.mark.parametrize("use_text", [False, True])
def test_round_trips(use_text):
    m = videochat_tiny(qformer={"use_instruction": use_text})
    ours = {k: v for k, v in m.state_dict().items() if k.startswith(("projector.", "vision_ln."))}
    back, report = videochat2_to_ours(ours_to_videochat2(ours, use_text), use_text)
    assert back.keys() == ours.keys() and all(back[k] is ours[k] for k in ours)
    hf_part = {k: v for k, v in ours.items() if k.startswith("projector.qformer.") or k == "projector.query_tokens"}
    back, _ = hf_to_ours(ours_to_hf(hf_part, use_text), use_text)
    assert back.keys() == hf_part.keys()
    # and the VideoChat2 layout generated by hand equals our reverse map's key set
    vc2 = {k for k in _videochat2_state_dict(use_text) if not k.startswith(("vision_encoder.", "llama_model."))}
    assert set(ours_to_videochat2(ours, use_text)) == vc2 - {"qformer.bert.embeddings.position_ids"}
    assert "mistral_proj.weight" in ours_to_videochat2(ours, use_text, llm="mistral")


def test_strict_failures(tmp_path):
    sd = _videochat2_state_dict(False)
    with pytest.raises(ConversionError, match="unknown key.*qformer.bert.pooler.dense.weight"):
        videochat2_to_ours({**sd, "qformer.bert.pooler.dense.weight": torch.zeros(1)}, False)
    with pytest.raises(ConversionError, match="unknown key.*vision_encoder_extra.w"):  # prefixes are explicit
        videochat2_to_ours({**sd, "vision_encoder_extra.w": torch.zeros(1)}, False)
    m = videochat_tiny()
    missing = dict(sd)
    missing.pop("qformer.bert.encoder.layer.1.attention.self.key.bias")
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ConversionError, match=r"missing \(1\).*layer.1.attention.attention.key.bias"):
        load_qformer_init(m, tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError):
        load_qformer_init(m, tmp_path / "absent.pth")


def test_videochat2_file_with_pickled_objects_is_refused_with_a_recipe(tmp_path):
    import argparse

    sd = _videochat2_state_dict(False)
    # a training checkpoint that also pickles a config object (argparse.Namespace stands in for its EasyDict)
    torch.save({"model": sd, "config": argparse.Namespace(lr=1e-4)}, tmp_path / "train.pth")
    with pytest.raises(ConversionError, match="weights_only"):
        load_qformer_init(videochat_tiny(), tmp_path / "train.pth")
