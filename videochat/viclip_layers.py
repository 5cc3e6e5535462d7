"""Transformer building blocks shared by the ViCLIP vision and text encoders.

Module and parameter names follow the released ViCLIP checkpoint exactly (CLIP-style
`resblocks.{i}.attn` / `ln_1` / `mlp.c_fc` / `mlp.c_proj` / `ln_2`), so the released `.pth` loads with
`load_state_dict(strict=True)` and no key renaming.

Shape legend: B batch, L tokens, C width.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.utils.checkpoint
from torch import nn


class QuickGELU(nn.Module):
    """CLIP's GELU approximation x * sigmoid(1.702 x) (what the released weights were trained with)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerNormFp32(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back (the reference text encoder's `LayerNorm` subclass)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        orig = x.dtype
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        out = nn.functional.layer_norm(x.float(), self.normalized_shape, w, b, self.eps)
        return out.to(orig)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block: `x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))`.

    Attention is `nn.MultiheadAttention` (fused `in_proj_weight` [3C, C], as stored in the checkpoint),
    batch-first, always called with `need_weights=False` so PyTorch dispatches to
    `scaled_dot_product_attention` (flash / memory-efficient kernels on GPU, the fused fast path in
    inference). `batch_first` does not change parameter names.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, fp32_layernorm: bool = False):
        super().__init__()
        norm = LayerNormFp32 if fp32_layernorm else nn.LayerNorm
        hidden = int(width * mlp_ratio)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = norm(width)
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(hidden, width))])
        )
        self.ln_2 = norm(width)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, L, C]; attn_mask: additive float [L, L] (the text encoder's causal mask) or None."""
        h = self.ln_1(x)
        if attn_mask is not None:
            attn_mask = attn_mask.to(dtype=h.dtype, device=h.device)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        x = x + self.mlp(self.ln_2(x))
        return x


class Transformer(nn.Module):
    """A stack of `ResidualAttentionBlock`s stored as `resblocks.{i}` (checkpoint layout)."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, fp32_layernorm: bool = False):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, mlp_ratio, fp32_layernorm) for _ in range(layers)]
        )
        self.gradient_checkpointing = False
        """Recompute each block in backward (non-reentrant) to save activation memory when training."""

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, num_blocks: int | None = None
    ) -> torch.Tensor:
        """Run the first `num_blocks` blocks (all when None). x: [B, L, C] -> [B, L, C]."""
        n = self.layers if num_blocks is None else num_blocks
        for blk in self.resblocks[:n]:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, attn_mask, use_reentrant=False)
            else:
                x = blk(x, attn_mask)
        return x


def init_transformer_(transformer: Transformer) -> None:
    """CLIP's initialisation of a block stack (used for randomly initialised models: tests, demo)."""
    if transformer.layers == 0 or transformer.resblocks[0].attn.in_proj_weight.is_meta:
        return  # nothing to initialise on the meta device (shapes only; weights are loaded or assigned later)
    width, layers = transformer.width, transformer.layers
    proj_std = (width**-0.5) * ((2 * layers) ** -0.5)
    attn_std = width**-0.5
    fc_std = (2 * width) ** -0.5
    for block in transformer.resblocks:
        nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
        nn.init.zeros_(block.attn.in_proj_bias)
        nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
        nn.init.zeros_(block.attn.out_proj.bias)
        nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
        nn.init.zeros_(block.mlp.c_fc.bias)
        nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.zeros_(block.mlp.c_proj.bias)
