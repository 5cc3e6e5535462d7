"""ViCLIP on CUDA (skipped without a GPU): same results as on CPU, bf16 close, a masked training step."""

from __future__ import annotations

import copy

import pytest
import torch

from videochat.config import ViCLIPConfig
from videochat.viclip import ViCLIP

CFG = ViCLIPConfig(
    image_size=32, patch_size=8, width=64, layers=2, heads=4, output_dim=32, num_frames=8,
    text_width=64, text_layers=2, text_heads=4, text_vocab_size=100,
)


@pytest.mark.gpu
def test_cuda_matches_cpu_and_bf16_is_close():
    torch.manual_seed(0)
    cpu = ViCLIP(CFG).eval()
    gpu = copy.deepcopy(cpu).cuda()
    frames = torch.randn(2, 8, 3, 32, 32)
    ids = torch.tensor([[98, 5, 6, 99] + [0] * 28, [98, 7, 99] + [0] * 29])
    with torch.no_grad():
        torch.testing.assert_close(gpu.encode_video(frames.cuda()).cpu(), cpu.encode_video(frames), rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(gpu.video_tokens(frames.cuda()).cpu(), cpu.video_tokens(frames), rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(gpu.encode_text_ids(ids).cpu(), cpu.encode_text_ids(ids), rtol=1e-3, atol=1e-3)
        bf = copy.deepcopy(gpu).to(torch.bfloat16)
        out = bf.encode_video(frames.cuda())
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float().cpu(), cpu.encode_video(frames), rtol=0.1, atol=0.1)


@pytest.mark.gpu
def test_cuda_masked_training_step_with_cpu_generator():
    torch.manual_seed(0)
    m = ViCLIP(CFG).cuda().train()
    frames = torch.randn(4, 8, 3, 32, 32, device="cuda")
    ids = torch.zeros(4, 32, dtype=torch.long, device="cuda")
    ids[:, 0], ids[:, 1], ids[:, 2] = 98, torch.arange(4, device="cuda") + 10, 99
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, logits = m.contrastive_loss(frames, ids, mask_ratio=0.9, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert logits.shape == (4, 4) and torch.isfinite(loss)
    assert m.vision_encoder.conv1.weight.grad is not None
