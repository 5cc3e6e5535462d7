"""ViCLIP forward passes checked step by step against an independent plain-torch computation.

The reference below follows the released code's layout ([B, C, T, H, W] input, `(b t) n c` per-frame tokens,
sequence-first blocks) with hand-written attention, LayerNorm and QuickGELU, reading the weights from the
state dict by their released key names.
"""

from __future__ import annotations

import math

import pytest
import torch

from videochat.config import ViCLIPConfig
from videochat.viclip import ViCLIP


pytestmark = pytest.mark.usefixtures("single_torch_thread")

CFG = ViCLIPConfig(
    image_size=24, patch_size=8, width=32, layers=3, heads=4, output_dim=16, num_frames=4,
    text_width=24, text_layers=2, text_heads=3, text_context_length=32, text_vocab_size=64,
)
ATOL = 1e-5


def layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def attention(x, sd, p, heads, mask=None):
    """x: [L, B, C] (sequence first, as the reference). Manual multi-head attention from the fused weights."""
    L, B, C = x.shape
    qkv = x @ sd[p + "in_proj_weight"].T + sd[p + "in_proj_bias"]
    q, k, v = qkv.split(C, dim=-1)
    d = C // heads

    def split(t):  # [L, B, C] -> [B, h, L, d]
        return t.reshape(L, B, heads, d).permute(1, 2, 0, 3)

    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    if mask is not None:
        scores = scores + mask
    out = scores.softmax(-1) @ v  # [B, h, L, d]
    out = out.permute(2, 0, 1, 3).reshape(L, B, C)
    return out @ sd[p + "out_proj.weight"].T + sd[p + "out_proj.bias"]


def blocks(x, sd, prefix, n, heads, mask=None):
    for i in range(n):
        p = f"{prefix}transformer.resblocks.{i}."
        x = x + attention(layer_norm(x, sd[p + "ln_1.weight"], sd[p + "ln_1.bias"]), sd, p + "attn.", heads, mask)
        h = layer_norm(x, sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        h = h @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"]
        h = h * torch.sigmoid(1.702 * h)
        x = x + h @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]
    return x


def ref_embed(sd, video_bcthw, temporal):
    """Reference steps 1-4 for input [B, C, T, H, W] and a given temporal embedding [1, T, C']."""
    v = "vision_encoder."
    w = sd[v + "conv1.weight"]  # [C', 3, 1, p, p]
    B, _, T, H, W = video_bcthw.shape
    p = w.shape[-1]
    g = H // p
    # 1. patchify by hand: each patch flattened (c, 1, ph, pw) and dotted with the kernel
    patches = video_bcthw.reshape(B, 3, T, g, p, g, p).permute(0, 2, 3, 5, 1, 4, 6).reshape(B * T, g * g, 3 * p * p)
    x = patches @ w.reshape(w.shape[0], -1).T  # [(b t), n, C']
    # 2. class token per frame + positional embedding
    cls = sd[v + "class_embedding"].expand(B * T, 1, -1)
    x = torch.cat([cls, x], dim=1) + sd[v + "positional_embedding"]
    # 3. class token of the first frame; temporal embedding on the patch tokens
    cls_tokens = x.reshape(B, T, g * g + 1, -1)[:, 0, :1]
    x = x[:, 1:].reshape(B, T, g * g, -1) + temporal.reshape(1, T, 1, -1)
    # 4. explicit patch-major, time-minor order: sequence index n*T + t
    seq = torch.stack([x[:, t, n] for n in range(g * g) for t in range(T)], dim=1)
    return torch.cat([cls_tokens, seq], dim=1)


def ref_tokens(sd, cfg, video_bcthw, temporal, num_blocks):
    v = "vision_encoder."
    x = layer_norm(ref_embed(sd, video_bcthw, temporal), sd[v + "ln_pre.weight"], sd[v + "ln_pre.bias"])
    x = blocks(x.permute(1, 0, 2), sd, v, num_blocks, cfg.heads).permute(1, 0, 2)
    return x


def ref_video(sd, cfg, video_bcthw, temporal):
    v = "vision_encoder."
    x = ref_tokens(sd, cfg, video_bcthw, temporal, cfg.layers)
    x = layer_norm(x, sd[v + "ln_post.weight"], sd[v + "ln_post.bias"])
    return x[:, 0] @ sd[v + "proj"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = ViCLIP(CFG).eval()
    with torch.no_grad():  # make every parameter non-trivial (LayerNorm weights, biases, temporal embedding)
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def frames_for(b, t, seed=1):
    return torch.randn(b, t, 3, CFG.image_size, CFG.image_size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_vision_matches_reference_step_by_step(model):
    sd = model.state_dict()
    frames = frames_for(2, 4)
    video = frames.permute(0, 2, 1, 3, 4)  # ours [B, T, 3, H, W] -> reference [B, 3, T, H, W]
    temporal = sd["vision_encoder.temporal_positional_embedding"]
    # embeddings (before ln_pre)
    torch.testing.assert_close(model.vision_encoder.embed(frames), ref_embed(sd, video, temporal), rtol=0, atol=ATOL)
    # token order: patch n of frame t sits at 1 + n*T + t (check one token against a single-frame computation)
    tok = model.vision_encoder.embed(frames)
    n, t, T = 5, 2, 4
    single = model.vision_encoder.conv1(frames[:, t : t + 1].transpose(1, 2)).flatten(2)[:, :, n]  # [B, C]
    expect = single + sd["vision_encoder.positional_embedding"][1 + n] + temporal[0, t]
    torch.testing.assert_close(tok[:, 1 + n * T + t], expect, rtol=0, atol=ATOL)
    # all blocks, ln_post, proj
    torch.testing.assert_close(model.encode_video(frames), ref_video(sd, CFG, video, temporal), rtol=0, atol=ATOL)


@torch.no_grad()
def test_video_tokens_layer_semantics(model):
    sd = model.state_dict()
    frames = frames_for(2, 4, seed=2)
    video = frames.permute(0, 2, 1, 3, 4)
    temporal = sd["vision_encoder.temporal_positional_embedding"]
    n_tok = 1 + 4 * (CFG.image_size // CFG.patch_size) ** 2
    for layer, blocks_run in [(-2, 2), (-1, 3), (0, 1), (1, 2), (2, 3), (-3, 1)]:
        got = model.video_tokens(frames, layer=layer)
        assert got.shape == (2, n_tok, CFG.width)
        torch.testing.assert_close(got, ref_tokens(sd, CFG, video, temporal, blocks_run), rtol=0, atol=ATOL)
    # default layer is -2 (penultimate); no ln_post; the last block's tokens + ln_post + proj = encode_video
    torch.testing.assert_close(model.video_tokens(frames), model.video_tokens(frames, layer=1), rtol=0, atol=0)
    last = model.video_tokens(frames, layer=-1)
    ve = model.vision_encoder
    torch.testing.assert_close(ve.ln_post(last[:, 0]) @ ve.proj, model.encode_video(frames), rtol=0, atol=ATOL)
    for bad in (3, -4):
        with pytest.raises(ValueError, match="out of range"):
            model.video_tokens(frames, layer=bad)


@torch.no_grad()
def test_temporal_interpolation_t4_and_t1():
    cfg = ViCLIPConfig(**{**CFG.__dict__, "num_frames": 8})
    torch.manual_seed(3)
    m = ViCLIP(cfg).eval()
    with torch.no_grad():
        m.vision_encoder.temporal_positional_embedding.normal_()
    sd = m.state_dict()
    emb = sd["vision_encoder.temporal_positional_embedding"]  # [1, 8, C]
    # T=4 from 8, linear with align_corners=False: source position 2i + 0.5 -> mean of frames 2i and 2i+1
    want4 = torch.stack([(emb[0, 2 * i] + emb[0, 2 * i + 1]) / 2 for i in range(4)])[None]
    frames = frames_for(2, 4, seed=4)
    video = frames.permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(m.vision_encoder.embed(frames), ref_embed(sd, video, want4), rtol=0, atol=ATOL)
    torch.testing.assert_close(m.encode_video(frames), ref_video(sd, cfg, video, want4), rtol=0, atol=ATOL)
    # T=1: the mean over time (as the reference)
    frames1 = frames_for(2, 1, seed=5)
    want1 = emb.mean(dim=1, keepdim=True)
    got = m.encode_video(frames1)
    torch.testing.assert_close(got, ref_video(sd, cfg, frames1.permute(0, 2, 1, 3, 4), want1), rtol=0, atol=ATOL)
    # T=12 (upsampling): src = (i + 0.5) * 8/12 - 0.5, clamped into [0, 7], linear between neighbours
    rows = []
    for i in range(12):
        s = min(max((i + 0.5) * 8 / 12 - 0.5, 0.0), 7.0)
        lo = int(math.floor(s))
        hi = min(lo + 1, 7)
        rows.append(emb[0, lo] * (1 - (s - lo)) + emb[0, hi] * (s - lo))
    frames12 = frames_for(1, 12, seed=6)
    want12 = torch.stack(rows)[None]
    torch.testing.assert_close(
        m.vision_encoder.embed(frames12), ref_embed(sd, frames12.permute(0, 2, 1, 3, 4), want12), rtol=0, atol=ATOL
    )
    # the configured frame count uses the embedding as is
    frames8 = frames_for(1, 8, seed=7)
    torch.testing.assert_close(
        m.encode_video(frames8), ref_video(sd, cfg, frames8.permute(0, 2, 1, 3, 4), emb), rtol=0, atol=ATOL
    )


@torch.no_grad()
def test_text_matches_reference(model):
    sd = model.state_dict()
    t = "text_encoder."
    eot = CFG.text_vocab_size - 1
    ids = torch.zeros(3, 32, dtype=torch.long)
    for row, body in enumerate([[5, 6, 7], [9], list(range(10, 40))]):
        seq = [eot - 1] + body + [eot]
        ids[row, : len(seq)] = torch.tensor(seq)
    x = sd[t + "token_embedding.weight"][ids] + sd[t + "positional_embedding"]
    mask = torch.triu(torch.full((32, 32), float("-inf")), diagonal=1)
    x = blocks(x.permute(1, 0, 2), sd, t, CFG.text_layers, CFG.text_heads, mask).permute(1, 0, 2)
    x = layer_norm(x, sd[t + "ln_final.weight"], sd[t + "ln_final.bias"])
    eot_pos = torch.tensor([4, 2, 31])  # the EOT position of each row (the argmax of ids)
    want = x[torch.arange(3), eot_pos] @ sd[t + "text_projection"]
    torch.testing.assert_close(model.encode_text_ids(ids), want, rtol=0, atol=ATOL)
    # shorter id rows (L < 32) give the same result under the causal mask
    torch.testing.assert_close(model.encode_text_ids(ids[:2, :5]), want[:2], rtol=0, atol=ATOL)
    with pytest.raises(ValueError, match="token ids must be in"):
        model.encode_text_ids(torch.full((1, 32), CFG.text_vocab_size))


def test_bad_frame_shapes_are_rejected(model):
    with pytest.raises(ValueError, match=r"\[B, T, 3, H, W\]"):
        model.encode_video(torch.zeros(1, 3, 4, 24, 24))
    with pytest.raises(ValueError, match="expects 24x24"):
        model.encode_video(torch.zeros(1, 4, 3, 32, 32))


@torch.no_grad()
def test_bf16_runs_and_stays_close(model):
    import copy

    m16 = copy.deepcopy(model).to(torch.bfloat16)
    frames = frames_for(1, 4, seed=8)
    out = m16.encode_video(frames)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), model.encode_video(frames), rtol=0.1, atol=0.1)
    ids = torch.tensor([[62, 3, 4, 63] + [0] * 28])
    torch.testing.assert_close(m16.encode_text_ids(ids).float(), model.encode_text_ids(ids), rtol=0.1, atol=0.1)


def test_grad_path_equals_inference_fast_path(model):
    """nn.MultiheadAttention takes a fused fast path under no_grad in eval; training goes through SDPA."""
    frames = frames_for(2, 4, seed=9)
    ids = torch.tensor([[62, 3, 4, 5, 63] + [0] * 27, [62, 9, 63] + [0] * 29])
    with torch.no_grad():
        v0, t0 = model.encode_video(frames), model.encode_text_ids(ids)
    v1, t1 = model.encode_video(frames), model.encode_text_ids(ids)
    assert v1.requires_grad
    torch.testing.assert_close(v1.detach(), v0, rtol=0, atol=ATOL)
    torch.testing.assert_close(t1.detach(), t0, rtol=0, atol=ATOL)
    with pytest.raises(TypeError, match="normalised floats"):
        model.encode_video(torch.zeros(1, 4, 3, 24, 24, dtype=torch.uint8))
