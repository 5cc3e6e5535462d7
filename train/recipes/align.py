"""Stage 1, alignment: caption data; train the vision LayerNorm + Q-Former + projection, everything else
frozen (ViCLIP and the whole LLM)."""

from __future__ import annotations

from train.config import ConfigError, TrainConfig
from train.engine import Dist
from train.modeling import build_chat_model
from train.recipes import RecipeParts
from train.recipes.chat_data import ChatLoss, chat_datasets, count, targets


def build(cfg: TrainConfig, dist: Dist) -> RecipeParts:
    if cfg.model.lora.enabled:
        raise ConfigError("align keeps the LLM frozen: set model.lora.enabled=false (LoRA belongs to instruct)")
    model = build_chat_model(cfg, dist.device)
    model.requires_grad_(False)
    model.vision_ln.requires_grad_(True)
    model.projector.requires_grad_(True)
    train, val, collate, lengths = chat_datasets(cfg, model)
    return RecipeParts(model=model, step_module=ChatLoss(model), train_data=train, collate=collate,
                       val_data=val, lengths=lengths, parameter_table=model.trainable_parameter_table(),
                       count=count, targets=targets, must_be_frozen=lambda n: n.startswith(("viclip.", "llm.")))
