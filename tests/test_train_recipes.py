"""The real entry point (`videochat train`) for a few steps per recipe on the tiny model; a recipe started from
the previous stage; `videochat export` -> `VideoChatModel.from_pretrained` -> identical logits."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from test_train_fixtures import config_path, make_samples, tiny_overrides

from videochat.cli import main as videochat_main


def _train(recipe: str, data, out, **extra) -> None:
    rc = videochat_main(["train", "--config", str(config_path(recipe)), *tiny_overrides(data, out, recipe, **extra)])
    assert rc == 0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_samples(tmp_path_factory.mktemp("samples"))


@pytest.fixture(scope="module")
def align_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("align")
    _train("align", data, out, steps=2, save_every=1, keep_last=1, eval_every=2, tensorboard=True)
    return out


def test_align_run_writes_metrics_plot_and_keeps_last_checkpoint(align_run):
    ckpts = sorted(p.name for p in (align_run / "checkpoints").iterdir())
    assert ckpts == ["step-000002"]  # keep_last=1 pruned step 1; no .partial left behind
    records = [json.loads(line) for line in (align_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert all(r["samples_per_s"] > 0 and r["tokens_per_s"] > 0 and r["lr"] > 0 for r in train)
    assert any("val_loss" in r for r in records)
    assert (align_run / "loss.png").stat().st_size > 1000
    assert list((align_run / "tb").glob("events.out.tfevents.*"))
    ckpt = align_run / "checkpoints" / "step-000002"
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 2 and state["samples"] == 4 and state["engine"] == "single"
    names = load_file(str(ckpt / "trainable.safetensors")).keys()
    assert names and all(n.startswith(("vision_ln.", "projector.")) for n in names)  # the LLM stayed frozen


def test_instruct_from_align_then_export_loads_with_identical_logits(data, align_run, tmp_path):
    from train.export import export
    from train.modeling import model_from_checkpoint
    from videochat.model import VideoChatModel

    align_ckpt = align_run / "checkpoints" / "step-000002"
    out = tmp_path / "instruct"
    _train("instruct", data, out, steps=2, save_every=2, init_from=str(align_ckpt), train_projector=False,
           eval_every=0)
    ckpt = out / "checkpoints" / "step-000002"
    trained = load_file(str(ckpt / "trainable.safetensors"))
    assert trained and all(".lora_" in n for n in trained)  # train_projector=false: LoRA only

    model, _ = model_from_checkpoint(ckpt)
    model.eval()
    # the projector the instruct run used is the align stage's (init_from), untouched
    align_sd = load_file(str(align_ckpt / "trainable.safetensors"))
    own = dict(model.named_parameters())
    assert all(torch.equal(own[k], v) for k, v in align_sd.items())

    q = model.tokens_per_clip
    ids = torch.tensor([[1, 5, 6] + [model.placeholder_id] * q + [7, 8, 9]])
    frames = torch.randn(1, 8, 3, 32, 32)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=torch.ones_like(ids), clip_frames=frames).logits

    plain = export(ckpt, tmp_path / "export")
    merged = export(ckpt, tmp_path / "merged", merge_lora=True)
    for folder, exact in ((plain, True), (merged, False)):
        loaded = VideoChatModel.from_pretrained(folder)
        with torch.no_grad():
            got = loaded(input_ids=ids, attention_mask=torch.ones_like(ids), clip_frames=frames).logits
        if exact:
            assert torch.equal(got, want)
        else:  # merging LoRA into the base weights changes float rounding only
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert rc_export_cli(ckpt, tmp_path / "cli_export") == 0
    assert (tmp_path / "cli_export" / "config.json").is_file()


def rc_export_cli(ckpt, out) -> int:
    return videochat_main(["export", "--checkpoint", str(ckpt), "--out", str(out)])


def test_viclip_recipe_writes_released_layout_the_chat_model_loads(data, tmp_path):
    from train.config import load_train_config
    from train.modeling import build_chat_model
    from videochat.viclip import ViCLIP

    out = tmp_path / "viclip"
    _train("viclip", data, out, steps=2, save_every=2, eval_every=0)
    sd = torch.load(out / "viclip.pth", map_location="cpu", weights_only=True)
    assert set(sd) == {"model"} and "temp" in sd["model"] and "text_encoder.positional_embedding" in sd["model"]
    trained = load_file(str(out / "checkpoints" / "step-000002" / "trainable.safetensors"))
    assert all(torch.equal(sd["model"][k], v) for k, v in trained.items())
    # the chat model picks the encoder up through model.viclip_checkpoint (text tower verified and dropped)
    cfg = load_train_config(config_path("align"), [f"data.path={data}", f"model.viclip_checkpoint={out / 'viclip.pth'}",
                                                   "model.viclip.text_vocab_size=640"])
    chat = build_chat_model(cfg)
    assert torch.equal(chat.viclip.vision_encoder.conv1.weight, sd["model"]["vision_encoder.conv1.weight"])
    assert isinstance(chat.viclip, ViCLIP) and chat.viclip.text_encoder is None


def test_init_from_a_different_base_is_refused(data, align_run, tmp_path):
    from train.config import load_train_config
    from train.modeling import build_chat_model

    cfg = load_train_config(config_path("instruct"), [f"data.path={data}", "model_seed=1",
                                                       f"init_from={align_run / 'checkpoints' / 'step-000002'}"])
    with pytest.raises(ValueError, match="random base LLM differs"):
        build_chat_model(cfg)


def test_init_from_an_export_loads_the_projector(data, align_run, tmp_path):
    from train.config import load_train_config
    from train.export import export
    from train.modeling import build_chat_model

    folder = export(align_run, tmp_path / "align_export")  # a run folder: its newest checkpoint
    cfg = load_train_config(config_path("instruct"), [f"data.path={data}", f"init_from={folder}"])
    model = build_chat_model(cfg)
    trained = load_file(str(align_run / "checkpoints" / "step-000002" / "trainable.safetensors"))
    own = dict(model.named_parameters())
    assert all(torch.equal(own[k], v) for k, v in trained.items())
    assert model.has_lora  # the instruct config adds LoRA on top of the aligned projector


def test_viclip_skips_a_corrupt_video_and_stops_cleanly_when_too_many_are_bad(tmp_path, capsys):
    data = make_samples(tmp_path, n_train=8, n_val=0)
    (data / "videos" / "train3.mp4").write_bytes(b"\x00not an mp4" * 64)  # 1 of 8 corrupt
    out = tmp_path / "viclip"
    _train("viclip", data, out, steps=2, save_every=2, eval_every=0, **{"data.max_bad_fraction": 0.2,
                                                                         "data.val_split": "null"})
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("skipped_samples", 0) for r in records) == 1  # one epoch: the corrupt clip seen once
    assert "skipped sample train3" in capsys.readouterr().out
    assert (out / "viclip.pth").is_file()

    for i in (0, 5):  # now 3 of 8 corrupt: past max_bad_fraction=0.2 -> a clear stop, not a DataLoader crash
        (data / "videos" / f"train{i}.mp4").write_bytes(b"garbage" * 64)
    rc = videochat_main(["train", "--config", str(config_path("viclip")),
                         *tiny_overrides(data, tmp_path / "bad", "viclip", steps=2, eval_every=0,
                                         **{"data.max_bad_fraction": 0.2, "data.val_split": "null"})])
    err = capsys.readouterr().err
    assert rc == 3 and "samples were bad" in err and "max_bad_fraction" in err and "VideoDecodeError" in err


def test_viclip_frame_cache_returns_what_decoding_returns(tmp_path):
    """`viclip.cache_frames`: each window decoded once, every epoch's frames sampled in memory, identical to
    decoding them; a corrupt video stays a skipped bad sample."""
    from train.recipes.chat_data import _load_samples
    from train.recipes.viclip import CaptionClips, caption_pairs
    from videochat import clip_tokenizer as ct

    data = make_samples(tmp_path, n_train=6, n_val=0)
    (data / "videos" / "train2.mp4").write_bytes(b"\x00not an mp4" * 64)
    pairs, _ = caption_pairs(_load_samples(str(data), "train"))
    tok = ct.ClipTokenizer.from_merges(ct.learn_bpe_merges([t for *_, t in pairs], 16), context_length=8)
    kw = dict(tokenizer=tok, image_size=32, num_frames=4, text_length=8, video_root=str(data), seed=3,
              max_bad_fraction=0.5, bad_check_after=100)
    plain, cached = CaptionClips(pairs, **kw), CaptionClips(pairs, cache_frames=True, **kw)
    assert len(cached._cache) == len({(v["path"], c["start"], c["end"]) for v, c, _ in pairs})
    skipped = []
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        for i in range(len(pairs)):
            a, b = plain[i], cached[i]
            assert a["id"] == b["id"] and torch.equal(a["frames"], b["frames"]) and torch.equal(a["text_ids"], b["text_ids"])
            assert a.get("skipped") == b.get("skipped")
            skipped += [s["id"] for s in b.get("skipped", [])]
    assert skipped and all(s.startswith("train2") for s in skipped)
    assert cached.stats["bad"] == plain.stats["bad"] == len(skipped)
