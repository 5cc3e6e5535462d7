"""VideoChatModel: frozen ViCLIP -> LayerNorm -> Q-Former projector -> LLM (+ LoRA), LLaVA-style splicing.

Shape legend: B conversations, L sequence length, N clips in the batch (all conversations, in order of
appearance, batch-major), T frames, S = 1 + T*P ViCLIP tokens per clip, C ViCLIP width, Q tokens per clip
in the LLM (`num_query_tokens + num_extra_query_tokens`), D LLM hidden size, Lq Q-Former instruction tokens.

Every clip slot in a rendered conversation (`videochat.conversation.render`) is a run of Q placeholder ids;
`forward` / `generate` embed the ids with the LLM's own table and scatter the N*Q projected clip embeddings
into the placeholder positions (row-major, i.e. batch-major and in order of appearance), raising
`ValueError` when the counts differ. The model never tokenizes text.

Save / load / export live in `videochat.model_io`; LLM construction in `videochat.model_llm`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from videochat import model_params
from videochat.config import VideoChatConfig
from videochat.model_llm import (
    add_lora,
    build_llm,
    compute_dtype,
    default_tokenizer,
    enable_gradient_checkpointing,
    ensure_placeholder_id,
    is_4bit,
    is_peft,
    resize_vocab,
)
from videochat.packing import packed_llm_kwargs
from videochat.qformer import QFormerProjector
from videochat.viclip import ViCLIP

class VideoChatModel(nn.Module):
    """The chat model. Build with `from_config`, the builders (`videochat.builders`) or `from_pretrained`.

    Attributes: `config`, `tokenizer`, `viclip` (frozen, eval, no text encoder), `vision_ln`, `projector`,
    `llm` (a peft model when LoRA is on), `placeholder_id`.
    """

    def __init__(
        self,
        config: VideoChatConfig,
        viclip: ViCLIP,
        projector: QFormerProjector,
        llm: nn.Module,
        tokenizer: Any,
        placeholder_id: int,
    ):
        super().__init__()
        if projector.tokens_per_clip != config.tokens_per_clip:
            raise ValueError(f"projector makes {projector.tokens_per_clip} tokens per clip, config says {config.tokens_per_clip}")
        self.config = config
        self.tokenizer = tokenizer
        self.placeholder_id = int(placeholder_id)
        self.viclip = viclip.requires_grad_(False).eval()
        # VideoChat2's `vision_layernorm`: trainable, on the frozen encoder's tokens.
        self.vision_ln = nn.LayerNorm(config.viclip.width)
        self.projector = projector
        self.llm = llm

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(
        cls, cfg: VideoChatConfig, tokenizer: Any = None, device: torch.device | str | None = None
    ) -> "VideoChatModel":
        """Build every part from `cfg`: ViCLIP (released `.pth` or random), Q-Former (init from BLIP-2 /
        InstructBLIP / VideoChat2 weights or random), LLM (folder or random), LoRA, gradient checkpointing.

        `tokenizer`: a transformers tokenizer; default: `cfg.llm.tokenizer` or `cfg.llm.path` through
        `AutoTokenizer`, or the in-memory byte-level BPE (`videochat.tokenizers.bpe_tokenizer`) for a random
        LLM. The placeholder token is added when missing and the LLM vocabulary grown to fit.
        On `device="meta"` nothing is allocated (parameter counting); no tokenizer is needed then: the
        placeholder gets the first id past the LLM vocabulary.
        """
        meta = device is not None and torch.device(device).type == "meta"
        vdtype = compute_dtype(cfg.llm)
        vcfg = dataclasses.replace(cfg.viclip, with_text=False)  # the chat model never uses the text tower
        if cfg.viclip_checkpoint and not meta:
            viclip = ViCLIP.from_checkpoint(cfg.viclip_checkpoint, vcfg, dtype=vdtype)
        elif meta:
            with torch.device("meta"):
                viclip = ViCLIP(vcfg)
        else:
            viclip = ViCLIP(vcfg).to(vdtype)

        llm = build_llm(cfg.llm, device=device)
        if tokenizer is None and not meta:
            tokenizer = default_tokenizer(cfg)
        if tokenizer is not None:
            placeholder_id = ensure_placeholder_id(tokenizer, cfg.placeholder_token)
            resize_vocab(llm, len(tokenizer))
        else:
            placeholder_id = llm.get_input_embeddings().weight.shape[0]
            resize_vocab(llm, placeholder_id + 1)
        if cfg.llm.gradient_checkpointing and not (cfg.llm.load_in_4bit and cfg.lora.enabled):
            enable_gradient_checkpointing(llm)  # 4-bit + LoRA: done by prepare_model_for_kbit_training
        if cfg.lora.enabled:
            if meta:
                with torch.device("meta"):  # adapters too: nothing allocated or initialised
                    llm = add_lora(llm, cfg.lora, cfg.llm)
            else:
                llm = add_lora(llm, cfg.lora, cfg.llm)
        # (4-bit without LoRA is allowed: serving a merged export on a small GPU; the LLM stays frozen.)

        llm_hidden = llm.get_input_embeddings().weight.shape[1]
        if meta:
            with torch.device("meta"):
                projector = QFormerProjector(cfg.qformer, cfg.viclip.width, llm_hidden)
                model = cls(cfg, viclip, projector, llm, tokenizer, placeholder_id)
            return model
        projector = QFormerProjector(cfg.qformer, cfg.viclip.width, llm_hidden)
        model = cls(cfg, viclip, projector, llm, tokenizer, placeholder_id)
        if cfg.qformer.init:
            from videochat.convert import load_qformer_init

            load_qformer_init(model, cfg.qformer.init, cfg.qformer.init_format)
        if device is not None:
            model.to_device(device)
        return model

    def to_device(self, device: torch.device | str) -> "VideoChatModel":
        """Move everything to `device` (a 4-bit LLM stays where bitsandbytes put it)."""
        for part in (self.viclip, self.vision_ln, self.projector):
            part.to(device)
        if not is_4bit(self.llm):
            self.llm.to(device)
        return self

    def train(self, mode: bool = True) -> "VideoChatModel":
        """Train mode everywhere except the frozen ViCLIP, which stays in eval mode."""
        super().train(mode)
        self.viclip.eval()
        return self

    # ------------------------------------------------------------------ clips

    @property
    def device(self) -> torch.device:
        """Device of the trainable projector (where clip embeddings are computed)."""
        return self.projector.proj.weight.device

    @property
    def tokens_per_clip(self) -> int:
        """Q: placeholder ids per clip slot."""
        return self.config.tokens_per_clip

    @torch.no_grad()
    def vision_features(self, frames: torch.Tensor) -> torch.Tensor:
        """Frozen ViCLIP tokens after `vision_feature_layer`. frames [N, T, 3, H, W] -> [N, S, C]."""
        enc_param = self.viclip.vision_encoder.conv1.weight
        return self.viclip.video_tokens(
            frames.to(device=enc_param.device, dtype=enc_param.dtype), layer=self.config.vision_feature_layer
        )

    def project(
        self,
        features: torch.Tensor,
        instruction_ids: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """LayerNorm + Q-Former + Linear. features [N, S, C] (+ instruction_ids [N, Lq]) -> [N, Q, D]."""
        if features.dim() != 3 or features.shape[-1] != self.config.viclip.width:
            raise ValueError(f"clip features must be [N, S, {self.config.viclip.width}], got {tuple(features.shape)}")
        x = self.vision_ln(features.to(device=self.vision_ln.weight.device, dtype=self.vision_ln.weight.dtype))
        return self.projector(x, instruction_ids, instruction_mask)

    def encode_clips(
        self,
        frames: torch.Tensor,
        instruction_ids: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """frames [N, T, 3, H, W] -> [N, Q, D] = project(vision_features(frames))."""
        return self.project(self.vision_features(frames), instruction_ids, instruction_mask)

    def _clip_embeds(self, clip_frames, clip_features, clip_embeds, instruction_ids, instruction_mask):
        given = [n for n, v in (("clip_frames", clip_frames), ("clip_features", clip_features),
                                ("clip_embeds", clip_embeds)) if v is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of clip_frames / clip_features / clip_embeds, got {given}")
        if clip_frames is not None:
            return self.encode_clips(clip_frames, instruction_ids, instruction_mask)
        if clip_features is not None:
            return self.project(clip_features, instruction_ids, instruction_mask)
        return clip_embeds

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        clip_frames: torch.Tensor | None = None,
        clip_features: torch.Tensor | None = None,
        clip_embeds: torch.Tensor | None = None,
        num_clips: torch.Tensor | list[int] | None = None,
        clip_instruction_ids: torch.Tensor | None = None,
        clip_instruction_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with the clips scattered into the placeholder runs. input_ids [B, L] -> [B, L, D].

        Raises ValueError when the number of placeholder ids differs from N*Q (or, with `num_clips` [B],
        from num_clips[b]*Q in some row).
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
        embed_layer = self.llm.get_input_embeddings()
        input_ids = input_ids.to(embed_layer.weight.device)
        clips = self._clip_embeds(clip_frames, clip_features, clip_embeds, clip_instruction_ids, clip_instruction_mask)
        embeds = embed_layer(input_ids)
        slots = input_ids == self.placeholder_id  # [B, L]
        q = self.tokens_per_clip
        n_slots = int(slots.sum())
        n_clips = 0 if clips is None else clips.shape[0]
        if clips is not None and (clips.dim() != 3 or clips.shape[1] != q or clips.shape[2] != embeds.shape[-1]):
            raise ValueError(f"clip embeddings must be [N, {q}, {embeds.shape[-1]}], got {tuple(clips.shape)}")
        if n_slots != n_clips * q:
            raise ValueError(
                f"{n_slots} placeholder ids (id {self.placeholder_id}) in input_ids but {n_clips} clips x {q} "
                f"tokens per clip = {n_clips * q}; render with tokens_per_clip={q} and pass every clip once"
            )
        if num_clips is not None:
            want = torch.as_tensor(num_clips, device=slots.device).view(-1) * q
            have = slots.sum(dim=1)
            if want.shape != have.shape or bool((want != have).any()):
                raise ValueError(f"placeholder ids per row {have.tolist()} != num_clips x {q} = {want.tolist()}")
        if clips is None or n_clips == 0:
            # A batch whose clips were all dropped would leave the projector out of the graph: DDP then fails
            # on unused parameters and `align` gets no gradient. Touch it with zero weight (as LLaVA does).
            if self.training and torch.is_grad_enabled():
                embeds = embeds + model_params.projector_touch(self)
            return embeds
        return embeds.masked_scatter(slots.unsqueeze(-1), clips.to(device=embeds.device, dtype=embeds.dtype))

    # ------------------------------------------------------------------ LLM

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        clip_frames: torch.Tensor | None = None,
        clip_features: torch.Tensor | None = None,
        clip_embeds: torch.Tensor | None = None,
        num_clips: torch.Tensor | list[int] | None = None,
        clip_instruction_ids: torch.Tensor | None = None,
        clip_instruction_mask: torch.Tensor | None = None,
        **llm_kwargs: Any,
    ):
        """Causal-LM forward with clips spliced in; returns the LLM's `CausalLMOutputWithPast` (`.loss`
        when `labels` [B, L] is given: mean token cross-entropy over labels != -100, shifted inside the LLM).
        Extra keyword arguments go to the LLM; packed rows (`videochat.packing.PackingCollator`: `position_ids`
        restarting per sample, attention_mask None) get a per-sample causal mask (`packed_llm_kwargs`)."""
        llm_kwargs = packed_llm_kwargs(self.llm.config, attention_mask, llm_kwargs)
        embeds = self.embed_inputs(input_ids, clip_frames, clip_features, clip_embeds, num_clips,
                                   clip_instruction_ids, clip_instruction_mask)
        if attention_mask is not None:
            attention_mask = attention_mask.to(embeds.device)
        if labels is not None:
            labels = labels.to(embeds.device)
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **llm_kwargs)

    def stop_markers(self) -> tuple[list[str], list[int]]:
        """(stop strings, single-token stop ids) ending an assistant turn in this model's template
        (`videochat.conversation.stop_markers`; includes eos). Empty without a tokenizer."""
        if self.tokenizer is None:
            return [], []
        from videochat.conversation import stop_markers

        return stop_markers(self.tokenizer, self.config.template)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        clip_frames: torch.Tensor | None = None,
        clip_embeds: torch.Tensor | None = None,
        streamer: Any = None,
        clip_features: torch.Tensor | None = None,
        clip_instruction_ids: torch.Tensor | None = None,
        clip_instruction_mask: torch.Tensor | None = None,
        **gen_kwargs: Any,
    ) -> torch.Tensor:
        """Generate after a prompt with clips. Returns only the new token ids [B, new] (prompt excluded).

        Prefill runs on the spliced embeddings, then decoding uses the KV cache (`use_cache=False` to turn it
        off). Stops at eos and at the template's stop marker (e.g. `###` for videochat2; `stop_strings=[]` to
        disable). The placeholder id is never generated. `streamer`: any transformers streamer
        (`TextIteratorStreamer(model.tokenizer, skip_prompt=True)` for a token stream in another thread).
        Left-pad batched prompts. Default `max_new_tokens`: 256; everything else as `llm.generate`.
        """
        embeds = self.embed_inputs(input_ids, clip_frames, clip_features, clip_embeds, None,
                                   clip_instruction_ids, clip_instruction_mask)
        if attention_mask is None:
            attention_mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        gen_kwargs.setdefault("max_new_tokens", 256)
        tok = self.tokenizer
        if tok is not None:
            stops = gen_kwargs.pop("stop_strings", None)
            if stops is None:
                stops, stop_ids = self.stop_markers()
                if gen_kwargs.get("eos_token_id") is None and stop_ids:
                    gen_kwargs["eos_token_id"] = stop_ids  # single-token markers stop without string matching
                single = [[i] for i in stop_ids]
                stops = [s for s in stops if tok(s, add_special_tokens=False)["input_ids"] not in single]
            if gen_kwargs.get("eos_token_id") is None and tok.eos_token_id is not None:
                gen_kwargs["eos_token_id"] = tok.eos_token_id
            if gen_kwargs.get("pad_token_id") is None:
                pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
                if pad is not None:
                    gen_kwargs["pad_token_id"] = pad
            if stops:
                gen_kwargs["stop_strings"] = list(stops)
                gen_kwargs["tokenizer"] = tok
        suppress = list(gen_kwargs.pop("suppress_tokens", None) or [])
        gen_kwargs["suppress_tokens"] = sorted(set(suppress) | {self.placeholder_id})
        return self.llm.generate(
            inputs_embeds=embeds, attention_mask=attention_mask.to(embeds.device), streamer=streamer, **gen_kwargs
        )

    # ------------------------------------------------------------------ parameters

    def trainable_parameter_table(self) -> list[tuple[str, int, int]]:
        """(module, trainable, total) parameter counts per part; see `videochat.model_params`."""
        return model_params.parameter_table(self)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every parameter with requires_grad, by its name in this module (what a training checkpoint needs)."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Strict inverse of `trainable_state_dict`: exactly the trainable names, same shapes."""
        model_params.load_trainable(self, state_dict)

    # ------------------------------------------------------------------ save / load (videochat.model_io)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json, the trained parts (safetensors), adapters, tokenizer; see `videochat.model_io`."""
        from videochat.model_io import save_pretrained

        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        device: torch.device | str | None = None,
        dtype: str | torch.dtype | None = None,
        load_in_4bit: bool | None = None,
    ) -> "VideoChatModel":
        """Load a folder written by `save_pretrained` or `merge_and_export` (in eval mode)."""
        from videochat.model_io import from_pretrained

        return from_pretrained(directory, device=device, dtype=dtype, load_in_4bit=load_in_4bit)

    def merge_and_export(self, directory: str | Path) -> Path:
        """Self-contained folder: LoRA merged into an HF LLM folder, ViCLIP .pth, projector, tokenizer."""
        from videochat.model_io import merge_and_export

        return merge_and_export(self, directory)

    @property
    def has_lora(self) -> bool:
        """LoRA adapters on the LLM."""
        return is_peft(self.llm)

