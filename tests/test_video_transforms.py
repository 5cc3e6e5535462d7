"""videochat.video.FrameTransform: shapes, normalisation, resize vs centre-crop, config wiring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videochat.config import VideoChatConfig, ViCLIPConfig
from videochat.video import FrameTransform


def test_constant_frames_normalise_exactly():
    frames = np.zeros((2, 30, 50, 3), np.uint8)
    frames[..., 0], frames[..., 1], frames[..., 2] = 255, 128, 0
    out = FrameTransform(image_size=16)(frames)
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.float32
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for c, v in enumerate((255, 128, 0)):
        assert torch.allclose(out[:, c], torch.full_like(out[:, c], (v / 255 - mean[c]) / std[c]), atol=1e-5)


def test_resize_squashes_and_crop_keeps_the_centre():
    # left third red, middle third green, right third blue, on a wide frame
    frames = np.zeros((1, 40, 120, 3), np.uint8)
    frames[:, :, :40, 0] = 255
    frames[:, :, 40:80, 1] = 255
    frames[:, :, 80:, 2] = 255
    plain = FrameTransform(image_size=24, mean=(0, 0, 0), std=(1, 1, 1))
    squash = plain(frames)[0]
    assert squash[0, :, :4].mean() > 0.99 and squash[2, :, -4:].mean() > 0.99  # all three bands survive
    crop = FrameTransform(image_size=24, mean=(0, 0, 0), std=(1, 1, 1), mode="crop")(frames)[0]
    # shorter side 40 -> 24, width 120 -> 72, centre 24 columns = the green band only
    inner = crop[:, :, 2:-2]  # the antialias filter blends the band edges at the crop border
    assert inner[1].min() > 0.99 and inner[0].max() < 0.01 and inner[2].max() < 0.01
    assert FrameTransform(image_size=24, mode="crop").output_size(40, 120) == (24, 72, 0, 24)
    assert FrameTransform(image_size=24, mode="crop").output_size(120, 40) == (72, 24, 24, 0)


def test_torch_input_same_result_and_no_resize_when_already_square():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 20, 20, 3), dtype=np.uint8)
    t = FrameTransform(image_size=20)
    a, b = t(frames), t(torch.from_numpy(frames))
    assert torch.equal(a, b)
    expect = (torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255 - torch.tensor(t.mean).view(1, 3, 1, 1)) / torch.tensor(
        t.std
    ).view(1, 3, 1, 1)
    assert torch.allclose(a, expect, atol=1e-6)
    assert FrameTransform(image_size=8, interpolation="bicubic")(frames).shape == (3, 3, 8, 8)


def test_from_config_and_bad_input():
    cfg = VideoChatConfig(viclip=ViCLIPConfig(image_size=32), pixel_mean=(0.5, 0.5, 0.5), pixel_std=(0.5, 0.5, 0.5))
    t = FrameTransform.from_config(cfg)
    assert (t.image_size, t.mean, t.std, t.mode) == (32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "resize")
    out = t(np.full((1, 10, 10, 3), 255, np.uint8))
    assert out.shape == (1, 3, 32, 32) and torch.allclose(out, torch.ones_like(out))
    with pytest.raises(ValueError, match="uint8"):
        t(np.zeros((1, 10, 10, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        t(np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ValueError):
        FrameTransform(mode="pad")
    with pytest.raises(ValueError):
        FrameTransform(std=(0, 1, 1))
