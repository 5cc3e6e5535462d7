"""Stage 2, instruction tuning: interleaved / instruction samples; LoRA (or QLoRA: a 4-bit base) on the LLM,
plus the vision LayerNorm and projector unless `train_projector: false`. Start it from an align run with
`init_from: runs/align/checkpoints/step-N` (or an align export)."""

from __future__ import annotations

from train.config import ConfigError, TrainConfig
from train.engine import Dist
from train.modeling import build_chat_model
from train.recipes import RecipeParts
from train.recipes.chat_data import ChatLoss, chat_datasets, count, targets


def build(cfg: TrainConfig, dist: Dist) -> RecipeParts:
    if not cfg.model.lora.enabled:
        raise ConfigError("instruct trains LoRA adapters on the LLM: set model.lora.enabled=true "
                          "(and model.llm.load_in_4bit=true for QLoRA)")
    model = build_chat_model(cfg, dist.device)
    model.requires_grad_(False)
    for name, p in model.llm.named_parameters():
        if "lora_" in name:
            p.requires_grad_(True)
    if cfg.train_projector:
        model.vision_ln.requires_grad_(True)
        model.projector.requires_grad_(True)
    train, val, collate, lengths = chat_datasets(cfg, model)
    return RecipeParts(model=model, step_module=ChatLoss(model), train_data=train, collate=collate,
                       val_data=val, lengths=lengths, parameter_table=model.trainable_parameter_table(),
                       count=count, targets=targets,
                       must_be_frozen=lambda n: n.startswith("viclip.") or (n.startswith("llm.") and "lora_" not in n))
