"""Frame transforms: uint8 frames [T, H, W, 3] -> normalised float [T, 3, S, S] for ViCLIP.

One class used by training, evaluation and serving, so a model never sees differently prepared pixels in
chat than it saw in training. Importable as `videochat.video.FrameTransform`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # pragma: no cover
    from videochat.config import VideoChatConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MODES = ("resize", "crop")
_INTERP = ("bilinear", "bicubic")


class FrameTransform:
    """Resize (and optionally centre-crop) and normalise a clip's frames.

    - `mode="resize"`: resize each frame straight to `image_size` x `image_size` (aspect not kept; what
      ViCLIP's own demo does);
    - `mode="crop"`: scale the shorter side to `image_size`, then take the centre square (aspect kept,
      borders lost; VideoChat2's eval transform).
    Antialiased `interpolation` (bilinear default, or bicubic) on uint8 (the fast CPU path), then
    `(x / 255 - mean) / std` per channel. Input `np.ndarray` or `torch.Tensor`, uint8 [T, H, W, 3];
    output float32 [T, 3, S, S] on the input's device.
    """

    def __init__(
        self,
        image_size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        mode: str = "resize",
        interpolation: str = "bilinear",
    ):
        if mode not in _MODES:
            raise ValueError(f"FrameTransform mode must be one of {_MODES}, got {mode!r}")
        if interpolation not in _INTERP:
            raise ValueError(f"FrameTransform interpolation must be one of {_INTERP}, got {interpolation!r}")
        if int(image_size) < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"mean/std need 3 values each and std > 0, got {mean} / {std}")
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.mode = mode
        self.interpolation = interpolation

    @classmethod
    def from_config(cls, cfg: "VideoChatConfig", mode: str = "resize", interpolation: str = "bilinear") -> "FrameTransform":
        """The transform a model config implies: ViCLIP's input size and the config's pixel mean/std."""
        return cls(cfg.viclip.image_size, cfg.pixel_mean, cfg.pixel_std, mode=mode, interpolation=interpolation)

    def __repr__(self) -> str:
        return (
            f"FrameTransform(image_size={self.image_size}, mean={self.mean}, std={self.std}, "
            f"mode={self.mode!r}, interpolation={self.interpolation!r})"
        )

    def output_size(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(resize_h, resize_w, crop_top, crop_left) for an input of `height` x `width`."""
        s = self.image_size
        if self.mode == "resize":
            return s, s, 0, 0
        if height <= width:
            rh, rw = s, max(s, int(round(width * s / height)))
        else:
            rh, rw = max(s, int(round(height * s / width))), s
        return rh, rw, (rh - s) // 2, (rw - s) // 2

    def __call__(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
        if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
            raise ValueError(
                f"FrameTransform expects uint8 frames [T, H, W, 3], got {x.dtype} {tuple(x.shape)}"
            )
        if x.shape[0] == 0 or x.shape[1] == 0 or x.shape[2] == 0:
            raise ValueError(f"FrameTransform got an empty clip {tuple(x.shape)}")
        h, w = int(x.shape[1]), int(x.shape[2])
        x = x.permute(0, 3, 1, 2)  # [T, 3, H, W], channels-last in memory: the fast uint8 resize path
        rh, rw, top, left = self.output_size(h, w)
        if (rh, rw) != (h, w):
            x = _resize(x, (rh, rw), self.interpolation)
        s = self.image_size
        x = x[:, :, top : top + s, left : left + s]
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        return ((x.float() / 255.0 - mean) / std).contiguous()


def _resize(x: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """Antialiased resize of uint8 [T, 3, H, W]; uint8 in and out (float fallback where unsupported)."""
    try:
        return F.interpolate(x, size=size, mode=interpolation, antialias=True, align_corners=False)
    except (RuntimeError, NotImplementedError):  # uint8 interpolation is CPU-only / version-dependent
        y = F.interpolate(x.float(), size=size, mode=interpolation, antialias=True, align_corners=False)
        return y.round_().clamp_(0, 255).to(torch.uint8)
