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


def _lavis_state_dict(use_text: bool, width=64, llm_hidden=64, extra=8, seed=0):
    """A random VideoChat2 stage-3 style state dict, key names written out here by hand (LAVIS BertModel)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    sd = {"query_tokens": r(1, 8, H), "extra_query_tokens": r(1, extra, H),
          "vision_layernorm.weight": r(width), "vision_layernorm.bias": r(width),
          "llama_proj.weight": r(llm_hidden, H), "llama_proj.bias": r(llm_hidden),
          "Qformer.bert.embeddings.LayerNorm.weight": r(H), "Qformer.bert.embeddings.LayerNorm.bias": r(H),
          "Qformer.bert.embeddings.position_ids": torch.arange(POS)[None],
          "vision_encoder.blocks.0.attn.qkv.weight": r(3, 4),  # UMT: skipped
          "llama_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": r(2, 4)}  # skipped
    if use_text:
        sd["Qformer.bert.embeddings.word_embeddings.weight"] = r(VOCAB, H)
        sd["Qformer.bert.embeddings.position_embeddings.weight"] = r(POS, H)
    for i in range(LAYERS):
        p = f"Qformer.bert.encoder.layer.{i}."
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


@pytest.mark.parametrize("use_text", [False, True])
def test_videochat2_checkpoint_loads_every_tensor(tmp_path, use_text):
    sd = _lavis_state_dict(use_text)
    torch.save({"model": sd}, tmp_path / "vc2.pth")
    m = videochat_tiny(qformer={"init": str(tmp_path / "vc2.pth"), "use_instruction": use_text})
    qf = m.projector.qformer
    assert torch.equal(m.vision_ln.weight, sd["vision_layernorm.weight"])
    assert torch.equal(m.projector.proj.weight, sd["llama_proj.weight"])
    assert torch.equal(m.projector.extra_query_tokens, sd["extra_query_tokens"])
    assert torch.equal(qf.encoder.layer[0].crossattention.attention.key.weight,
                       sd["Qformer.bert.encoder.layer.0.crossattention.self.key.weight"])
    assert torch.equal(qf.encoder.layer[1].output_query.LayerNorm.bias,
                       sd["Qformer.bert.encoder.layer.1.output_query.LayerNorm.bias"])
    emb_ln = qf.embeddings.layernorm if use_text else qf.layernorm
    assert torch.equal(emb_ln.weight, sd["Qformer.bert.embeddings.LayerNorm.weight"])
    if use_text:
        assert torch.equal(qf.embeddings.word_embeddings.weight, sd["Qformer.bert.embeddings.word_embeddings.weight"])
        assert torch.equal(qf.encoder.layer[1].output.dense.weight, sd["Qformer.bert.encoder.layer.1.output.dense.weight"])


@pytest.mark.parametrize("use_text", [False, True])
def test_round_trips(use_text):
    m = videochat_tiny(qformer={"use_instruction": use_text})
    ours = {k: v for k, v in m.state_dict().items() if k.startswith(("projector.", "vision_ln."))}
    back, report = videochat2_to_ours(ours_to_videochat2(ours, use_text), use_text)
    assert back.keys() == ours.keys() and all(back[k] is ours[k] for k in ours)
    hf_part = {k: v for k, v in ours.items() if k.startswith("projector.qformer.") or k == "projector.query_tokens"}
    back, _ = hf_to_ours(ours_to_hf(hf_part, use_text), use_text)
    assert back.keys() == hf_part.keys()
    # and the LAVIS layout generated by hand equals our reverse map's key set
    lavis = {k for k in _lavis_state_dict(use_text) if not k.startswith(("vision_encoder.", "llama_model."))}
    assert set(ours_to_videochat2(ours, use_text)) == lavis - {"Qformer.bert.embeddings.position_ids"}


def test_strict_failures(tmp_path):
    sd = _lavis_state_dict(False)
    with pytest.raises(ConversionError, match="unknown key.*Qformer.bert.pooler.dense.weight"):
        videochat2_to_ours({**sd, "Qformer.bert.pooler.dense.weight": torch.zeros(1)}, False)
    m = videochat_tiny()
    missing = dict(sd)
    missing.pop("Qformer.bert.encoder.layer.1.attention.self.key.bias")
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ConversionError, match=r"missing \(1\).*layer.1.attention.attention.key.bias"):
        load_qformer_init(m, tmp_path / "missing.pth")
    wrong = dict(sd)
    wrong["llama_proj.weight"] = torch.zeros(4096, H)  # another LLM width
    torch.save({"model": wrong}, tmp_path / "wrong.pth")
    with pytest.raises(ConversionError, match="projector.proj.weight: source \\(4096, 64\\)"):
        load_qformer_init(m, tmp_path / "wrong.pth")
    with pytest.raises(FileNotFoundError):
        load_qformer_init(m, tmp_path / "absent.pth")


def test_videochat2_file_with_pickled_objects_is_refused_with_a_recipe(tmp_path):
    import argparse

    sd = _lavis_state_dict(False)
    # a training checkpoint that also pickles a config object (argparse.Namespace stands in for its EasyDict)
    torch.save({"model": sd, "config": argparse.Namespace(lr=1e-4)}, tmp_path / "train.pth")
    with pytest.raises(ConversionError, match="weights_only"):
        load_qformer_init(videochat_tiny(), tmp_path / "train.pth")
