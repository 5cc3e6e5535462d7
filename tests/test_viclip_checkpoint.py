"""ViCLIP checkpoint layout: full-size key/shape tables (meta device), strict loading, clear errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from videochat.config import ViCLIPConfig
from videochat.viclip import ViCLIP, ViCLIPCheckpointError, expected_shapes


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def released_table(
    *, width, layers, patch, grid, frames, out, text_width, text_layers, vocab=49408, ctx=32, mlp=4
) -> dict[str, tuple[int, ...]]:
    """The key -> shape table of shared/reference/viclip_checkpoint.md, written out independently."""
    t: dict[str, tuple[int, ...]] = {"temp": ()}
    v = "vision_encoder."
    t[v + "class_embedding"] = (width,)
    t[v + "positional_embedding"] = (grid * grid + 1, width)
    t[v + "temporal_positional_embedding"] = (1, frames, width)
    t[v + "conv1.weight"] = (width, 3, 1, patch, patch)
    for name in ("ln_pre", "ln_post"):
        t[v + name + ".weight"] = t[v + name + ".bias"] = (width,)
    t[v + "proj"] = (width, out)

    def blocks(prefix: str, w: int, n: int) -> None:
        for i in range(n):
            b = f"{prefix}transformer.resblocks.{i}."
            t[b + "attn.in_proj_weight"] = (3 * w, w)
            t[b + "attn.in_proj_bias"] = (3 * w,)
            t[b + "attn.out_proj.weight"] = (w, w)
            t[b + "attn.out_proj.bias"] = (w,)
            for ln in ("ln_1", "ln_2"):
                t[b + ln + ".weight"] = t[b + ln + ".bias"] = (w,)
            t[b + "mlp.c_fc.weight"] = (mlp * w, w)
            t[b + "mlp.c_fc.bias"] = (mlp * w,)
            t[b + "mlp.c_proj.weight"] = (w, mlp * w)
            t[b + "mlp.c_proj.bias"] = (w,)

    blocks(v, width, layers)
    if text_width:
        x = "text_encoder."
        t[x + "token_embedding.weight"] = (vocab, text_width)
        t[x + "positional_embedding"] = (ctx, text_width)
        blocks(x, text_width, text_layers)
        t[x + "ln_final.weight"] = t[x + "ln_final.bias"] = (text_width,)
        t[x + "text_projection"] = (text_width, out)
    return t


L14 = dict(width=1024, layers=24, patch=14, grid=16, frames=8, out=768, text_width=768, text_layers=12)
B16 = dict(width=768, layers=12, patch=16, grid=14, frames=8, out=512, text_width=512, text_layers=12)

TINY_CFG = ViCLIPConfig(
    image_size=16, patch_size=8, width=16, layers=2, heads=2, output_dim=8, num_frames=4,
    text_width=16, text_layers=1, text_heads=2, text_context_length=32, text_vocab_size=40,
)
TINY = dict(width=16, layers=2, patch=8, grid=2, frames=4, out=8, text_width=16, text_layers=1, vocab=40)


@pytest.mark.parametrize(
    "cfg,table",
    [(ViCLIPConfig.l14(), L14), (ViCLIPConfig.b16(), B16)],
    ids=["L14", "B16"],
)
def test_full_size_keys_and_shapes_match_release(cfg, table):
    with torch.device("meta"):
        model = ViCLIP(cfg)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = released_table(**table)
    assert sorted(set(got) - set(want)) == [] and sorted(set(want) - set(got)) == []
    assert got == want
    assert "text_encoder.attn_mask" not in got  # non-persistent: the release does not store it
    assert model.vision_encoder.conv1.bias is None
    # temp + 9 vision non-block keys + 12 per block + 5 text non-block keys
    assert len(got) == 1 + 9 + 12 * table["layers"] + 5 + 12 * table["text_layers"]


def test_l14_without_text_has_only_vision_keys_and_param_count():
    with torch.device("meta"):
        model = ViCLIP(dataclasses.replace(ViCLIPConfig.l14(), with_text=False))
    want = released_table(**{**L14, "text_width": 0})
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == want
    n = sum(p.numel() for p in model.parameters())
    assert 303_000_000 < n < 305_000_000  # ViT-L/14 size


def random_release(table: dict) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(s, generator=g) for k, s in released_table(**table).items()}


@pytest.mark.parametrize("form", ["path", "wrapped", "bare"])
def test_random_release_loads_strictly(tmp_path, form):
    sd = random_release(TINY)
    if form == "path":
        src = tmp_path / "viclip.pth"
        torch.save({"model": sd}, src)
    elif form == "wrapped":
        src = {"model": sd}
    else:
        src = sd
    model = ViCLIP.from_checkpoint(src, TINY_CFG)
    assert not model.training
    got = model.state_dict()
    assert set(got) == set(sd)
    for k, v in sd.items():
        assert torch.equal(got[k], v), k
    # the causal mask is rebuilt, not left on the meta device
    mask = model.text_encoder.attn_mask
    assert mask.device.type == "cpu" and mask.shape == (32, 32)
    assert torch.isinf(mask[0, 1]) and mask[1, 0] == 0
    out = model.encode_video(torch.randn(2, 4, 3, 16, 16))
    assert out.shape == (2, 8) and torch.isfinite(out).all()


def test_save_checkpoint_round_trip(tmp_path):
    model = ViCLIP(TINY_CFG)
    path = tmp_path / "sub" / "ckpt.pth"
    model.save_checkpoint(path)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert list(raw) == ["model"]
    assert {k: tuple(v.shape) for k, v in raw["model"].items()} == released_table(**TINY)
    loaded = ViCLIP.from_checkpoint(path, TINY_CFG)
    frames = torch.randn(1, 4, 3, 16, 16)
    ids = torch.tensor([[37, 5, 6, 38] + [0] * 28])
    model.eval()
    torch.testing.assert_close(loaded.encode_video(frames), model.encode_video(frames), rtol=0, atol=0)
    torch.testing.assert_close(loaded.encode_text_ids(ids), model.encode_text_ids(ids), rtol=0, atol=0)


def test_vision_only_drops_text_keys_present_or_absent():
    cfg = dataclasses.replace(TINY_CFG, with_text=False)
    full = random_release(TINY)
    m1 = ViCLIP.from_checkpoint(full, cfg)
    assert m1.text_encoder is None
    assert not any(k.startswith("text_encoder.") for k in m1.state_dict())
    vision_only = {k: v for k, v in full.items() if not k.startswith("text_encoder.")}
    m2 = ViCLIP.from_checkpoint(vision_only, cfg)
    frames = torch.randn(1, 4, 3, 16, 16)
    torch.testing.assert_close(m1.encode_video(frames), m2.encode_video(frames), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="without a text encoder"):
        m1.encode_text_ids(torch.zeros(1, 32, dtype=torch.long))
    # partial text keys are an error, naming the missing key
    partial = dict(full)
    del partial["text_encoder.ln_final.bias"]
    with pytest.raises(ViCLIPCheckpointError, match=r"text_encoder\.ln_final\.bias"):
        ViCLIP.from_checkpoint(partial, cfg)
    # text keys with the wrong shape are an error too
    wrong = dict(full)
    wrong["text_encoder.text_projection"] = torch.zeros(16, 9)
    with pytest.raises(ViCLIPCheckpointError, match=r"text_projection: checkpoint \(16, 9\)"):
        ViCLIP.from_checkpoint(wrong, cfg)


def test_unknown_missing_and_mismatched_keys_are_listed():
    sd = random_release(TINY)
    sd["vision_encoder.head.weight"] = torch.zeros(3)
    del sd["vision_encoder.transformer.resblocks.1.mlp.c_fc.bias"]
    sd["vision_encoder.proj"] = torch.zeros(16, 9)
    with pytest.raises(ViCLIPCheckpointError) as err:
        ViCLIP.from_checkpoint({"model": sd}, TINY_CFG)
    msg = str(err.value)
    assert "1 missing keys" in msg and "resblocks.1.mlp.c_fc.bias" in msg
    assert "1 unexpected keys" in msg and "vision_encoder.head.weight" in msg
    assert "vision_encoder.proj: checkpoint (16, 9) vs model (16, 8)" in msg


def test_renamed_keys_are_not_silently_accepted():
    sd = {"module." + k: v for k, v in random_release(TINY).items()}
    with pytest.raises(ViCLIPCheckpointError, match="missing keys"):
        ViCLIP.from_checkpoint(sd, TINY_CFG)


def test_frame_count_mismatch_hint_and_bad_inputs(tmp_path):
    sd = random_release(TINY)
    with pytest.raises(ViCLIPCheckpointError, match="num_frames"):
        ViCLIP.from_checkpoint(sd, dataclasses.replace(TINY_CFG, num_frames=8))
    with pytest.raises(FileNotFoundError):
        ViCLIP.from_checkpoint(tmp_path / "nope.pth", TINY_CFG)
    with pytest.raises(ViCLIPCheckpointError, match="not tensors"):
        ViCLIP.from_checkpoint({"model": {"temp": 1.0}}, TINY_CFG)


def test_expected_shapes_matches_table():
    assert expected_shapes(TINY_CFG) == released_table(**TINY)
