"""The Q-Former projector: ViCLIP tokens -> a fixed number of LLM input embeddings per clip.

transformers' BLIP-2 Q-Former (`Blip2QFormerModel`, queries only) or, when the instruction text is fed in
(InstructBLIP / VideoChat2 style), `InstructBlipQFormerModel` (queries + BERT word embeddings, with the
separate text feed-forward in every layer). Nothing BERT-like is hand-written here.

Shape legend: N clips, S ViCLIP tokens per clip, C ViCLIP width (= Q-Former `encoder_hidden_size`),
H Q-Former hidden size, Q = num_query_tokens + num_extra_query_tokens, Lq instruction tokens, D LLM hidden.

Parameter names (used by `videochat.convert` and in saved checkpoints):
- `qformer.*`             the transformers Q-Former (BLIP-2 or InstructBLIP layout, see `qformer_kind`)
- `query_tokens`          [1, num_query_tokens, H]   learned queries (loaded from BLIP-2 / VideoChat2)
- `extra_query_tokens`    [1, num_extra_query_tokens, H]  VideoChat2's extra queries, zero-initialised
- `proj.weight/bias`      Linear(H, D) into the LLM embedding space (VideoChat2's `llama_proj`)
The LayerNorm on the vision tokens (VideoChat2's `vision_layernorm`) lives in `VideoChatModel.vision_ln`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    Blip2QFormerConfig,
    Blip2QFormerModel,
    InstructBlipQFormerConfig,
    InstructBlipQFormerModel,
)

from videochat.config import QFormerConfig


def hf_qformer_config(cfg: QFormerConfig, encoder_hidden_size: int):
    """The transformers config for our Q-Former sizes: InstructBLIP's when `use_instruction`, else BLIP-2's."""
    common = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        max_position_embeddings=cfg.max_position_embeddings,
        cross_attention_frequency=cfg.cross_attention_frequency,
        encoder_hidden_size=encoder_hidden_size,
        layer_norm_eps=1e-12,  # BERT's, as BLIP-2 / VideoChat2
    )
    if cfg.use_instruction:
        return InstructBlipQFormerConfig(**common)
    # use_qformer_text_input=False: no text feed-forward branch (queries only), like BLIP-2 generation models.
    return Blip2QFormerConfig(use_qformer_text_input=False, **common)


class QFormerProjector(nn.Module):
    """Learned queries cross-attend to the (normalised) ViCLIP tokens; the query outputs go through a Linear.

    `forward(vision [N, S, C], instruction_ids [N, Lq] | None, instruction_mask [N, Lq] | None) -> [N, Q, D]`.
    """

    def __init__(self, cfg: QFormerConfig, encoder_hidden_size: int, llm_hidden_size: int):
        super().__init__()
        if cfg.num_query_tokens < 1:
            raise ValueError(f"num_query_tokens must be >= 1, got {cfg.num_query_tokens}")
        if cfg.num_extra_query_tokens < 0:
            raise ValueError(f"num_extra_query_tokens must be >= 0, got {cfg.num_extra_query_tokens}")
        self.cfg = cfg
        hf_cfg = hf_qformer_config(cfg, encoder_hidden_size)
        self.qformer = InstructBlipQFormerModel(hf_cfg) if cfg.use_instruction else Blip2QFormerModel(hf_cfg)
        std = hf_cfg.initializer_range
        self.query_tokens = nn.Parameter(torch.randn(1, cfg.num_query_tokens, cfg.hidden_size) * std)
        # VideoChat2: extra queries start at zero so a loaded 32-query Q-Former is not disturbed at step 0.
        self.extra_query_tokens = nn.Parameter(torch.zeros(1, cfg.num_extra_query_tokens, cfg.hidden_size))
        self.proj = nn.Linear(cfg.hidden_size, llm_hidden_size)

    @property
    def qformer_kind(self) -> str:
        """`instructblip` (with text input) or `blip2` (queries only): which transformers layout `qformer.*` has."""
        return "instructblip" if self.cfg.use_instruction else "blip2"

    @property
    def tokens_per_clip(self) -> int:
        """Q: embeddings produced per clip."""
        return self.cfg.num_query_tokens + self.cfg.num_extra_query_tokens

    def queries(self, batch: int) -> torch.Tensor:
        """[N, Q, H]: the learned queries followed by the extra ones (VideoChat2's concatenation order)."""
        q = torch.cat([self.query_tokens, self.extra_query_tokens], dim=1)
        return q.expand(batch, -1, -1)

    def forward(
        self,
        vision: torch.Tensor,
        instruction_ids: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """vision [N, S, C] (already LayerNorm-ed) -> [N, Q, D]."""
        if vision.dim() != 3:
            raise ValueError(f"vision tokens must be [N, S, C], got shape {tuple(vision.shape)}")
        n = vision.shape[0]
        dtype = self.query_tokens.dtype
        vision = vision.to(dtype)
        queries = self.queries(n)
        q_len = queries.shape[1]
        vision_mask = torch.ones(vision.shape[:2], dtype=torch.long, device=vision.device)
        if self.cfg.use_instruction:
            if instruction_ids is None:
                # No instruction: an empty text part (queries only) through the same InstructBLIP module.
                instruction_ids = torch.zeros(n, 0, dtype=torch.long, device=vision.device)
            if instruction_ids.shape[0] != n:
                raise ValueError(f"instruction_ids has {instruction_ids.shape[0]} rows for {n} clips")
            if instruction_mask is None:
                instruction_mask = torch.ones_like(instruction_ids)
            mask = torch.cat([torch.ones(n, q_len, dtype=instruction_mask.dtype, device=vision.device),
                              instruction_mask.to(vision.device)], dim=1)
            out = self.qformer(
                input_ids=instruction_ids.to(vision.device),
                attention_mask=mask,
                query_embeds=queries,
                encoder_hidden_states=vision,
                encoder_attention_mask=vision_mask,
            )
        else:
            if instruction_ids is not None:
                raise ValueError("instruction_ids given but qformer.use_instruction is false (BLIP-2 Q-Former has no text input)")
            out = self.qformer(
                query_embeds=queries,
                encoder_hidden_states=vision,
                encoder_attention_mask=vision_mask,
            )
        hidden = out.last_hidden_state[:, :q_len, :]  # query outputs only; text positions are discarded
        return self.proj(hidden.to(self.proj.weight.dtype))


def qformer_parameter_count(cfg: QFormerConfig, encoder_hidden_size: int, llm_hidden_size: int) -> int:
    """Closed-form parameter count of `QFormerProjector` (used by the builders' memory report and tests)."""
    h, i, c = cfg.hidden_size, cfg.intermediate_size, encoder_hidden_size
    lin = lambda a, b: a * b + b  # noqa: E731 - Linear(a, b) weight + bias
    ln = 2 * h
    self_attn = 3 * lin(h, h) + lin(h, h) + ln
    cross_attn = lin(h, h) + 2 * lin(c, h) + lin(h, h) + ln
    ffn = lin(h, i) + lin(i, h) + ln
    total = 0
    for layer in range(cfg.num_hidden_layers):
        total += self_attn + ffn  # query feed-forward
        if layer % cfg.cross_attention_frequency == 0:
            total += cross_attn
        if cfg.use_instruction:
            total += ffn  # text feed-forward
    total += ln  # embeddings LayerNorm
    if cfg.use_instruction:
        total += cfg.vocab_size * h + cfg.max_position_embeddings * h
    total += (cfg.num_query_tokens + cfg.num_extra_query_tokens) * h
    total += lin(h, llm_hidden_size)
    return total
