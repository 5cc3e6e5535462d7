"""ViCLIP: the InternVid video-text contrastive encoder, checkpoint-compatible with the released `.pth`.

`ViCLIP(config)` builds `vision_encoder` (always), `text_encoder` (when `config.with_text`) and the
learnable temperature `temp`, with exactly the released checkpoint's key names, so
`ViCLIP.from_checkpoint("ViClip-InternVid-10M-FLT.pth", ViCLIPConfig.l14())` loads strictly with no
renaming. Facts: `shared/reference/viclip_checkpoint.md`; details and deviations: `docs/viclip.md`.

Shape legend: B clips, T frames, H, W pixels, N patches per frame, S = 1 + T*N tokens, C vision width,
D output_dim, K texts / labels, L text tokens (context 32).

Input layout: frames are [B, T, 3, H, W], normalised with the ImageNet mean/std (the reference's
`VisionTransformer` takes [B, 3, T, H, W]; its `ViCLIP.encode_vision` takes [B, T, 3, H, W] like us).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from videochat.config import ViCLIPConfig
from videochat.viclip_checkpoint import ViCLIPCheckpointError, check_state_dict, drop_text_keys, load_state_dict_file
from videochat.viclip_text import TextTransformer
from videochat.viclip_vision import VisionTransformer

__all__ = [
    "ViCLIP",
    "ViCLIPCheckpointError",
    "expected_shapes",
    "load_state_dict_file",
    "parameter_count",
    "similarity",
    "zero_shot_classify",
]

TEMP_MIN = 1 / 100.0
"""The reference clamps `temp` to at least this before each training step (logit scale <= 100)."""


class ViCLIP(nn.Module):
    """ViCLIP video (and text) encoder. See the module docstring for layouts and shapes."""

    def __init__(self, config: ViCLIPConfig):
        super().__init__()
        self.config = config
        self.vision_encoder = VisionTransformer(
            image_size=config.image_size,
            patch_size=config.patch_size,
            width=config.width,
            layers=config.layers,
            heads=config.heads,
            output_dim=config.output_dim,
            num_frames=config.num_frames,
            mlp_ratio=config.mlp_ratio,
        )
        self.text_encoder: TextTransformer | None = None
        if config.with_text:
            self.text_encoder = TextTransformer(
                vocab_size=config.text_vocab_size,
                context_length=config.text_context_length,
                width=config.text_width,
                layers=config.text_layers,
                heads=config.text_heads,
                output_dim=config.output_dim,
                mlp_ratio=config.mlp_ratio,
            )
        self.temp = nn.Parameter(torch.tensor(1 / 100.0))
        self.tokenizer: Any = None
        """Optional `videochat.clip_tokenizer.ClipTokenizer` used by `encode_text(texts)`."""

    # ------------------------------------------------------------------ loading / saving

    @classmethod
    def from_checkpoint(
        cls,
        path_or_state_dict: str | Path | Mapping[str, Any],
        config: ViCLIPConfig,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> "ViCLIP":
        """Load the released layout strictly and return the model (in eval mode).

        Accepts a path to a `.pth` (read with `torch.load(..., map_location="cpu", weights_only=True)`,
        then its `["model"]`), a `{"model": state_dict}` dict, or a bare state dict. Keys are never renamed.
        With `config.with_text == False` the `text_encoder.*` keys must be either all present with the
        shapes the config implies (then they are verified and dropped) or all absent; anything else is an
        error. Raises `ViCLIPCheckpointError` listing missing / unexpected keys and shape mismatches.
        The model is built on the meta device and the checkpoint tensors are assigned (no random init, no
        second copy of the weights).
        """
        state_dict = load_state_dict_file(path_or_state_dict)
        with torch.device("meta"):
            model = cls(config)
        if not config.with_text:
            full = expected_shapes(dataclasses.replace(config, with_text=True))
            state_dict = drop_text_keys(state_dict, {k: v for k, v in full.items() if k.startswith("text_encoder.")})
        check_state_dict({k: tuple(v.shape) for k, v in model.state_dict().items()}, state_dict)
        model.load_state_dict(state_dict, strict=True, assign=True)
        if model.text_encoder is not None:
            model.text_encoder.reset_buffers(device=model.text_encoder.positional_embedding.device)
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)
        return model.eval()

    def save_checkpoint(self, path: str | Path) -> None:
        """Write `{"model": state_dict}` in the released layout (CPU tensors), loadable by `from_checkpoint`."""
        sd = {k: v.detach().to("cpu") for k, v in self.state_dict().items()}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": sd}, path)

    def set_gradient_checkpointing(self, enable: bool = True) -> None:
        """Non-reentrant activation checkpointing of every block (vision and text) during training."""
        self.vision_encoder.transformer.gradient_checkpointing = enable
        if self.text_encoder is not None:
            self.text_encoder.transformer.gradient_checkpointing = enable

    # ------------------------------------------------------------------ video

    def encode_video(
        self, frames: torch.Tensor, mask_ratio: float = 0.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Clip embeddings (not normalised). frames [B, T, 3, H, W] -> [B, D].

        `mask_ratio` > 0 drops that fraction of patch tokens at random per sample (training only; the
        paper uses 0.9). T other than `config.num_frames` interpolates the temporal embedding.
        """
        return self.vision_encoder(frames, mask_ratio=mask_ratio, generator=generator)

    def video_tokens(self, frames: torch.Tensor, layer: int = -2) -> torch.Tensor:
        """All tokens after block `layer` (Python indexing over the blocks: -2 = after the penultimate;
        later blocks are not run), without `ln_post`, in the reference order (index 0: class token,
        then patch n of frame t at 1 + n*T + t). frames [B, T, 3, H, W] -> [B, 1 + T*N, C]."""
        return self.vision_encoder.tokens(frames, layer=layer)

    # ------------------------------------------------------------------ text

    def _text(self) -> TextTransformer:
        if self.text_encoder is None:
            raise RuntimeError("this ViCLIP was built without a text encoder (config.with_text=False)")
        return self.text_encoder

    def encode_text_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Text embeddings (not normalised). ids [K, L] (CLIP BPE, padded with 0) -> [K, D]."""
        text = self._text()
        return text(ids.to(text.token_embedding.weight.device))

    def encode_text(self, texts: Sequence[str] | str, tokenizer: Any = None) -> torch.Tensor:
        """Tokenise with `tokenizer` (or `self.tokenizer`, a `ClipTokenizer`) and encode. -> [K, D]."""
        tok = tokenizer if tokenizer is not None else self.tokenizer
        if tok is None:
            raise RuntimeError(
                "encode_text needs a tokenizer: pass tokenizer= or set model.tokenizer "
                "(videochat.clip_tokenizer.load_clip_tokenizer)"
            )
        if isinstance(texts, str):
            texts = [texts]
        ids = tok(list(texts), context_length=self._text().context_length)
        return self.encode_text_ids(ids)

    # ------------------------------------------------------------------ contrastive

    def logit_scale(self) -> torch.Tensor:
        """1 / temp with temp clamped to >= 1/100 (differentiable w.r.t. temp inside the range)."""
        return 1.0 / self.temp.clamp(min=TEMP_MIN)

    @torch.no_grad()
    def clamp_temperature(self) -> None:
        """In-place `temp.clamp_(min=1/100)`, as the reference's `clip_contrastive_temperature`."""
        self.temp.clamp_(min=TEMP_MIN)

    def similarity(self, video_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Cosine similarity scaled by this model's logit scale. [B, D], [K, D] -> [B, K]."""
        return similarity(video_emb, text_emb, self.logit_scale())

    def contrastive_loss(
        self,
        frames: torch.Tensor,
        text_ids: torch.Tensor,
        mask_ratio: float = 0.0,
        idx: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        gather: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The paper's video-text contrastive loss (the reference's `vtc_loss`).

        Symmetric InfoNCE over cosine similarities of L2-normalised embeddings divided by `temp` (clamped
        in place to >= 1/100 first, as the reference). `idx` [B] optionally marks rows that share a
        caption/video: all rows with equal idx are positives (targets normalised per row), as the
        reference's `get_mask`. Under torch.distributed (world size > 1, `gather=True`) the embeddings of
        all ranks are gathered with gradients (per-rank batch sizes may differ), as the reference's
        `all_gather=True`: every rank computes the loss over the global batch G. Every rank must call it.
        frames [B, T, 3, H, W], text_ids [B, L] -> (scalar loss, logits [G, G], row = video).
        """
        if frames.shape[0] != text_ids.shape[0]:
            raise ValueError(f"{frames.shape[0]} clips but {text_ids.shape[0]} texts")
        self.clamp_temperature()
        v = F.normalize(self.encode_video(frames, mask_ratio=mask_ratio, generator=generator).float(), dim=-1)
        t = F.normalize(self.encode_text_ids(text_ids).float(), dim=-1)
        if gather and _world_size() > 1:
            v, t = _gather_with_grad(v), _gather_with_grad(t)
            if idx is not None:
                idx = _gather_no_grad(idx.to(v.device))
        logits = v @ t.T / self.temp.float()  # [G, G], row = video
        if idx is None:
            targets = torch.eye(logits.shape[0], device=logits.device)
        else:
            idx = idx.view(-1, 1).to(logits.device)
            targets = (idx == idx.T).float()
            targets = targets / targets.sum(dim=1, keepdim=True)
        loss_v2t = -(F.log_softmax(logits, dim=1) * targets).sum(dim=1).mean()
        loss_t2v = -(F.log_softmax(logits.T, dim=1) * targets).sum(dim=1).mean()
        return (loss_v2t + loss_t2v) / 2, logits

    def forward(
        self, frames: torch.Tensor, text_ids: torch.Tensor, mask_ratio: float = 0.0, idx: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`contrastive_loss` (so DDP / DeepSpeed engines, which call the module, train it)."""
        return self.contrastive_loss(frames, text_ids, mask_ratio=mask_ratio, idx=idx)


# ---------------------------------------------------------------------------------------- helpers


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x [b_r, ...] from every rank along dim 0 (rank order); gradients flow back to each
    rank's own rows. Per-rank sizes may differ (a last partial batch): rows are padded to the largest
    size for the collective and the padding is removed again."""
    import torch.distributed as dist
    import torch.distributed.nn.functional as dist_fn

    world = dist.get_world_size()
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(n) for n in sizes]
    biggest = max(counts)
    if biggest != x.shape[0]:
        x = torch.cat([x, x.new_zeros(biggest - x.shape[0], *x.shape[1:])], dim=0)
    parts = dist_fn.all_gather(x.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, counts)], dim=0)


def _gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return _gather_with_grad(x)


def similarity(
    video_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: float | torch.Tensor = 100.0
) -> torch.Tensor:
    """`logit_scale * cos(video, text)` for every pair. [B, D], [K, D] -> [B, K] (fp32)."""
    v = F.normalize(video_emb.float(), dim=-1)
    t = F.normalize(text_emb.float(), dim=-1)
    return logit_scale * (v @ t.T)


@torch.no_grad()
def zero_shot_classify(
    model: ViCLIP,
    frames: torch.Tensor,
    labels: Sequence[str],
    template: str = "a video of {}.",
    tokenizer: Any = None,
    logit_scale: float | None = None,
) -> torch.Tensor:
    """Zero-shot classification: softmax over labels of the scaled cosine similarity between each clip
    and the prompt `template.format(label)`. frames [B, T, 3, H, W] -> probabilities [B, K].

    `logit_scale` defaults to the model's 1 / temp (clamped to <= 100; the released demo uses 100).
    """
    if not labels:
        raise ValueError("zero_shot_classify needs at least one label")
    text_emb = model.encode_text([template.format(label) for label in labels], tokenizer=tokenizer)
    video_emb = model.encode_video(frames.to(text_emb.device))
    scale = model.logit_scale() if logit_scale is None else logit_scale
    return similarity(video_emb, text_emb, scale).softmax(dim=-1)


def expected_shapes(config: ViCLIPConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the state dict `ViCLIP(config)` holds (built on the meta device, no memory)."""
    with torch.device("meta"):
        model = ViCLIP(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def parameter_count(config: ViCLIPConfig) -> int:
    """Number of parameters of `ViCLIP(config)` (meta device, no memory)."""
    return sum(math.prod(s) for s in expected_shapes(config).values())
