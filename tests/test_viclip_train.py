"""ViCLIP training-time pieces: patch masking, the contrastive loss, temperature clamp, zero-shot helpers."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from videochat.config import ViCLIPConfig
from videochat.viclip import ViCLIP, similarity, zero_shot_classify


pytestmark = pytest.mark.usefixtures("single_torch_thread")

CFG = ViCLIPConfig(
    image_size=16, patch_size=4, width=32, layers=2, heads=4, output_dim=16, num_frames=4,
    text_width=32, text_layers=1, text_heads=4, text_context_length=32, text_vocab_size=50,
)
SMALL = dataclasses.replace(CFG, patch_size=8)  # 4 patches per frame: cheap training steps


def test_masking_keeps_class_token_and_a_random_subset_per_sample():
    torch.manual_seed(0)
    m = ViCLIP(CFG).eval()
    ve = m.vision_encoder
    frames = torch.randn(1, 4, 3, 16, 16).expand(3, -1, -1, -1, -1)  # three identical clips
    full = ve.embed(frames)  # [3, 1 + 64, C]
    g = torch.Generator().manual_seed(1)
    masked = ve.embed(frames, mask_ratio=0.9, generator=g)
    keep = 64 - int(0.9 * 64)
    assert masked.shape == (3, 1 + keep, 32)
    torch.testing.assert_close(masked[:, 0], full[:, 0], rtol=0, atol=0)  # class token kept
    picked = []
    for b in range(3):
        # each kept token equals one of the unmasked patch tokens, in increasing position
        d = (masked[b, 1:, None] - full[b, None, 1:]).abs().amax(-1)  # [keep, 64]
        pos = d.argmin(dim=1)
        assert (d.min(dim=1).values == 0).all()
        assert (pos.diff() > 0).all()
        picked.append(tuple(pos.tolist()))
    assert len(set(picked)) > 1  # random per sample
    # through the whole encoder and video_tokens-like path; ratio 0 is a no-op
    assert m.encode_video(frames, mask_ratio=0.5).shape == (3, 16)
    assert ve.tokens(frames, mask_ratio=0.75).shape == (3, 1 + 16, 32)
    torch.testing.assert_close(ve.embed(frames, mask_ratio=0.0), full, rtol=0, atol=0)
    with pytest.raises(ValueError, match="mask_ratio"):
        ve.embed(frames, mask_ratio=1.0)


def synthetic_batch(n=4):
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(n, 4, 3, 16, 16, generator=g)
    ids = torch.zeros(n, 32, dtype=torch.long)
    for i in range(n):
        ids[i, :4] = torch.tensor([48, 10 + 3 * i, 11 + 3 * i, 49])
    return frames, ids


def test_contrastive_loss_formula_and_clamp():
    torch.manual_seed(0)
    m = ViCLIP(CFG)
    frames, ids = synthetic_batch()
    with torch.no_grad():
        m.temp.fill_(0.001)  # below the minimum: the loss clamps it in place, as the reference
    loss, logits = m.contrastive_loss(frames, ids)
    assert m.temp.item() == pytest.approx(0.01)
    v = F.normalize(m.encode_video(frames), dim=-1)
    t = F.normalize(m.encode_text_ids(ids), dim=-1)
    want_logits = v @ t.T / 0.01
    torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-4)
    labels = torch.arange(4)
    want = (F.cross_entropy(want_logits, labels) + F.cross_entropy(want_logits.T, labels)) / 2
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-5)
    # idx: rows 0 and 1 share a caption -> both are positives for each other
    idx = torch.tensor([7, 7, 8, 9])
    loss_idx, _ = m.contrastive_loss(frames, ids, idx=idx)
    tgt = torch.tensor([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    want_idx = (
        -(want_logits.log_softmax(1) * tgt).sum(1).mean() - (want_logits.T.log_softmax(1) * tgt).sum(1).mean()
    ) / 2
    torch.testing.assert_close(loss_idx, want_idx, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="clips but"):
        m.contrastive_loss(frames, ids[:3])


def test_contrastive_loss_decreases_and_retrieval_becomes_correct():
    torch.manual_seed(0)
    m = ViCLIP(SMALL).train()
    frames, ids = synthetic_batch()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-4, weight_decay=0.0)
    losses = []
    for _ in range(16):
        loss, logits = m.contrastive_loss(frames, ids)
        assert logits.shape == (4, 4)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses
    m.eval()
    with torch.no_grad():
        _, logits = m.contrastive_loss(frames, ids)
    assert (logits.argmax(dim=1) == torch.arange(4)).all()


def test_masked_training_step_reaches_every_vision_parameter():
    torch.manual_seed(0)
    m = ViCLIP(CFG).train()
    frames, ids = synthetic_batch()
    loss, _ = m.contrastive_loss(frames, ids, mask_ratio=0.9, generator=torch.Generator().manual_seed(0))
    loss.backward()
    for name, p in list(m.vision_encoder.named_parameters()) + [("temp", m.temp)]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(0)
    frames, ids = synthetic_batch(2)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        m = ViCLIP(SMALL).train()
        m.set_gradient_checkpointing(ckpt)
        loss, _ = m.contrastive_loss(frames, ids)
        loss.backward()
        grads.append(m.vision_encoder.conv1.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


class FakeTokenizer:
    """Maps each word to a fixed id (stands in for ClipTokenizer in the zero-shot test)."""

    def __call__(self, texts, context_length=32):
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            toks = [48] + [1 + (sum(map(ord, w)) % 40) for w in text.split()] + [49]
            out[i, : len(toks)] = torch.tensor(toks)
        return out


@torch.no_grad()
def test_similarity_and_zero_shot():
    v = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    s = similarity(v, t, logit_scale=10.0)
    torch.testing.assert_close(s, torch.tensor([[10.0, 10 / 2**0.5], [0.0, 10 / 2**0.5]]))
    torch.manual_seed(0)
    m = ViCLIP(CFG).eval()
    frames = torch.randn(2, 4, 3, 16, 16)
    labels = ["red circle", "blue square", "green ball"]
    probs = zero_shot_classify(m, frames, labels, tokenizer=FakeTokenizer())
    assert probs.shape == (2, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
    tok = FakeTokenizer()
    want = similarity(m.encode_video(frames), m.encode_text_ids(tok([f"a video of {x}." for x in labels])), 100.0)
    torch.testing.assert_close(probs, want.softmax(-1))
    m.tokenizer = tok  # model-level tokenizer
    torch.testing.assert_close(m.encode_text("a b"), m.encode_text_ids(tok(["a b"])))
    m.tokenizer = None
    with pytest.raises(RuntimeError, match="needs a tokenizer"):
        m.encode_text(["x"])


def _ddp_worker(rank, world, port, out, splits):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        m = ViCLIP(CFG).train()
        frames, ids = synthetic_batch(4)
        part = slice(splits[rank], splits[rank + 1])  # uneven per-rank batches are allowed
        loss, logits = m.contrastive_loss(frames[part], ids[part])
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])
        dist.all_reduce(grads)  # what DDP does, then divides by the world size
        if rank == 0:
            torch.save({"loss": loss.detach(), "logits": logits.detach(), "grads": grads / world}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("splits", [(0, 2, 4), (0, 3, 4)], ids=["even", "uneven"])
def test_distributed_gather_equals_global_batch(tmp_path, splits):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "rank0.pt"
    mp.spawn(_ddp_worker, args=(2, port, str(out), splits), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    torch.manual_seed(0)
    m = ViCLIP(CFG).train()
    frames, ids = synthetic_batch(4)
    loss, logits = m.contrastive_loss(frames, ids)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])
    torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["logits"], logits.detach(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got["grads"], grads, rtol=1e-4, atol=1e-5)
