"""ViCLIP's video transformer: a CLIP ViT whose frames attend jointly (spatiotemporal attention).

Reference: InternVideo `Data/InternVid/viclip/viclip_vision.py` (`VisionTransformer`), described in
`shared/reference/viclip_checkpoint.md`. Parameter names match the released checkpoint's
`vision_encoder.*` keys.

Shape legend: B clips, T frames, H, W pixels, N = (H / patch)^2 patch tokens per frame, C width,
S = 1 + T*N tokens per clip, D output_dim.

Token order (as the reference): index 0 is the class token (of frame 0; before the blocks every frame's
class token is identical), then patch-major, time-minor: patch n of frame t sits at index 1 + n*T + t.

Our input layout is [B, T, 3, H, W] (frames first, like the rest of videochat); the reference's
`VisionTransformer.forward` takes [B, 3, T, H, W].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from videochat.viclip_layers import Transformer, init_transformer_


def temporal_embedding_for(temporal: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The temporal positional embedding for `num_frames` frames. temporal: [1, T0, C] -> [1, T, C].

    T == T0: unchanged. T == 1: the mean over time (what the reference does for single images).
    Otherwise linear interpolation along time (`F.interpolate(mode="linear", align_corners=False)`, the
    reference's `interpolate_temporal_pos_embed`), computed in fp32 and cast back.
    """
    if num_frames < 1:
        raise ValueError(f"need at least one frame, got {num_frames}")
    t0 = temporal.shape[1]
    if num_frames == t0:
        return temporal
    if num_frames == 1:
        return temporal.mean(dim=1, keepdim=True)
    out = F.interpolate(temporal.float().transpose(1, 2), size=num_frames, mode="linear", align_corners=False)
    return out.transpose(1, 2).to(temporal.dtype)


def random_keep_indices(
    batch: int, length: int, mask_ratio: float, device: torch.device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Indices [B, L - int(mask_ratio * L)] of the patch tokens to keep, random per sample, in order.

    Same count as the reference's `mask_tokens` (int(ratio * L) tokens dropped per sample); the kept
    tokens stay in their original order.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    keep = length - int(mask_ratio * length)
    # draw on the generator's device (a CPU generator works for CUDA inputs too), then move
    noise = torch.rand(batch, length, generator=generator, device=generator.device if generator else device)
    noise = noise.to(device)
    idx = noise.argsort(dim=1)[:, :keep]
    return idx.sort(dim=1).values


class VisionTransformer(nn.Module):
    """The `vision_encoder` of ViCLIP (no bias on `conv1`, CLIP-style blocks, `ln_post`, `proj`)."""

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        width: int,
        layers: int,
        heads: int,
        output_dim: int,
        num_frames: int,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.width = width
        self.num_frames = num_frames
        self.grid = image_size // patch_size
        self.conv1 = nn.Conv3d(3, width, (1, patch_size, patch_size), (1, patch_size, patch_size), bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid**2 + 1, width))
        self.temporal_positional_embedding = nn.Parameter(torch.zeros(1, num_frames, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, mlp_ratio)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))
        init_transformer_(self.transformer)

    @property
    def num_patches(self) -> int:
        return self.grid**2

    def _check_frames(self, frames: torch.Tensor) -> None:
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(f"expected frames [B, T, 3, H, W], got shape {tuple(frames.shape)}")
        if not frames.is_floating_point():
            raise TypeError(
                f"frames must be normalised floats (ImageNet mean/std), got {frames.dtype}; "
                "use videochat.video.FrameTransform"
            )
        h, w = frames.shape[-2:]
        if h != self.image_size or w != self.image_size:
            raise ValueError(
                f"frames are {h}x{w} but this ViCLIP expects {self.image_size}x{self.image_size} "
                "(resize/crop with videochat.video.FrameTransform)"
            )

    def embed(
        self, frames: torch.Tensor, mask_ratio: float = 0.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Patchify and add embeddings, before `ln_pre`. frames [B, T, 3, H, W] -> [B, 1 + T*N', C].

        N' = N without masking; with `mask_ratio` > 0, int(mask_ratio * T*N) patch tokens are dropped per
        sample (class token always kept), as the reference's training-time masking.
        """
        self._check_frames(frames)
        b, t = frames.shape[:2]
        w = self.conv1.weight
        x = self.conv1(frames.to(device=w.device, dtype=w.dtype).transpose(1, 2))  # [B, C, T, g, g]
        x = x.permute(0, 2, 3, 4, 1).reshape(b, t, self.num_patches, self.width)  # [B, T, N, C]
        pos = self.positional_embedding.to(x.dtype)
        x = x + pos[1:]  # same spatial embedding for every frame
        temporal = temporal_embedding_for(self.temporal_positional_embedding, t).to(x.dtype)  # [1, T, C]
        x = x + temporal.unsqueeze(2)  # [1, T, 1, C] over patches
        x = x.transpose(1, 2).reshape(b, self.num_patches * t, self.width)  # patch-major, time-minor
        if mask_ratio > 0.0:
            keep = random_keep_indices(b, x.shape[1], mask_ratio, x.device, generator)
            x = x.gather(1, keep.unsqueeze(-1).expand(-1, -1, self.width))
        cls = (self.class_embedding.to(x.dtype) + pos[0]).expand(b, 1, self.width)
        return torch.cat([cls, x], dim=1)

    def _resolve_layer(self, layer: int) -> int:
        """Python-indexed block `layer` -> number of blocks to run (layer -2 of 24 -> 23 blocks)."""
        n = self.transformer.layers
        if not -n <= layer < n:
            raise ValueError(f"layer {layer} out of range for {n} blocks (use -{n}..{n - 1})")
        return (layer % n) + 1

    def tokens(
        self,
        frames: torch.Tensor,
        layer: int = -1,
        mask_ratio: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """All tokens after block `layer` (Python indexing; no ln_post). [B, T, 3, H, W] -> [B, S, C]."""
        x = self.ln_pre(self.embed(frames, mask_ratio, generator))
        return self.transformer(x, num_blocks=self._resolve_layer(layer))

    def forward(
        self, frames: torch.Tensor, mask_ratio: float = 0.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Clip embedding `ln_post(cls) @ proj`. [B, T, 3, H, W] -> [B, D]."""
        x = self.tokens(frames, layer=-1, mask_ratio=mask_ratio, generator=generator)
        return self.ln_post(x[:, 0]) @ self.proj
