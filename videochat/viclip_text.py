"""ViCLIP's text transformer (CLIP text tower, context 32).

Reference: InternVideo `Data/InternVid/viclip/viclip_text.py` (`CLIP_TEXT`). Parameter names match the
released checkpoint's `text_encoder.*` keys. The causal mask is a non-persistent buffer (the released
checkpoint does not store it).

Shape legend: B texts, L tokens (<= context length), C text width, D output_dim.
"""

from __future__ import annotations

import torch
from torch import nn

from videochat.viclip_layers import LayerNormFp32, Transformer, init_transformer_


def causal_mask(length: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Additive causal mask [L, L]: 0 on and below the diagonal, -inf above (CLIP's `build_attention_mask`)."""
    return torch.full((length, length), float("-inf"), device=device).triu_(1)


class TextTransformer(nn.Module):
    """The `text_encoder` of ViCLIP: token + positional embedding, causal blocks, fp32 `ln_final`,
    pooled at the end-of-text token (the highest id in each row), `@ text_projection`."""

    def __init__(
        self, vocab_size: int, context_length: int, width: int, layers: int, heads: int, output_dim: int,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.transformer = Transformer(width, layers, heads, mlp_ratio, fp32_layernorm=True)
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.ln_final = LayerNormFp32(width)
        self.text_projection = nn.Parameter(torch.empty(width, output_dim))
        self.register_buffer("attn_mask", causal_mask(context_length), persistent=False)
        # CLIP's initialisation (overwritten when weights are loaded; skipped on the meta device)
        if not self.positional_embedding.is_meta:
            nn.init.normal_(self.token_embedding.weight, std=0.02)
            nn.init.normal_(self.positional_embedding, std=0.01)
            nn.init.normal_(self.text_projection, std=width**-0.5)
        init_transformer_(self.transformer)

    def reset_buffers(self, device: torch.device | str | None = None) -> None:
        """Rebuild the (non-persistent) causal mask, e.g. after loading onto a model built on `meta`."""
        self.attn_mask = causal_mask(self.context_length, device=device)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, L] (L <= context length, padded with 0, EOT = the highest id) -> [B, D]."""
        if ids.ndim != 2:
            raise ValueError(f"expected token ids [B, L], got shape {tuple(ids.shape)}")
        length = ids.shape[1]
        if length > self.context_length:
            raise ValueError(f"text length {length} exceeds the context length {self.context_length}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(
                f"token ids must be in [0, {self.vocab_size}), got [{int(ids.min())}, {int(ids.max())}] "
                "(does the tokenizer's vocabulary match text_vocab_size?)"
            )
        x = self.token_embedding(ids) + self.positional_embedding[:length].to(self.token_embedding.weight.dtype)
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length])
        x = self.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)]  # the EOT token
        return pooled @ self.text_projection.to(pooled.dtype)
