"""Checks that run before anything heavy (and one right after the first backward).

- `preflight(cfg)`: combinations that cannot work are refused with the reason and what to do instead
  (DeepSpeed ZeRO-3, QLoRA on CPU, DeepSpeed without its JSON, ...). Runs before the model is built.
- `format_parameter_table(rows)`: the per-module trainable / total table printed at the start of every run.
- `check_optimizer_covers(model, optimizer)`: the optimizer holds exactly the trainable parameters.
- `assert_frozen_have_no_grad(model)`: after the first backward, every frozen parameter's `.grad` is None
  (a frozen part that gets a gradient means a freezing mistake: the run stops).
"""

from __future__ import annotations

import torch
from torch import nn

from train.config import ConfigError, TrainConfig
from train.engine import resolve_device, resolve_kind, zero_stage

ZERO3 = (
    "DeepSpeed ZeRO-3 (zero_optimization.stage=3) is refused for every recipe: ZeRO-3 partitions every parameter "
    "across ranks and gathers it only inside a forward, so (1) PEFT's LoRA layers, built on weights that ZeRO-3 "
    "has already replaced by empty placeholders, fail at the first forward; (2) checkpoints read parameters outside "
    "a forward and would save the empty (shape [0]) partitions instead of the trained weights; (3) with QLoRA the "
    "4-bit base weights are bitsandbytes Params4bit (packed uint8 plus a per-block quantisation state) that ZeRO-3 "
    "cannot partition or gather at all. Every recipe here trains a small part of the model (projector, LoRA "
    "adapters or a ViCLIP), whose optimizer state and gradients are what needs sharding: use ZeRO-2 "
    "(engine.kind=deepspeed engine.deepspeed_config=train/deepspeed/zero2.json, or zero2_offload.json to keep the "
    "optimizer state in CPU memory) or plain DDP (engine.kind=ddp under torchrun)."
)
QLORA_ZERO3 = ZERO3  # the name earlier callers used
QLORA_CPU = (
    "QLoRA (model.llm.load_in_4bit=true) needs a CUDA GPU: bitsandbytes' 4-bit NF4 kernels do not run on CPU. "
    "On this machine use bf16/fp32 LoRA (model.llm.load_in_4bit=false, model.lora.enabled=true)."
)


def preflight(cfg: TrainConfig) -> None:
    """Refuse impossible setups up front (ConfigError with reason + alternative)."""
    cfg.check()
    kind = resolve_kind(cfg)
    qlora = cfg.model.llm.load_in_4bit
    if kind == "deepspeed" and zero_stage(cfg) >= 3:
        raise ConfigError(ZERO3)
    device = resolve_device(cfg)
    if qlora and device.type != "cuda":
        raise ConfigError(QLORA_CPU)
    if cfg.recipe == "viclip" and (cfg.model.lora.enabled or qlora):
        raise ConfigError("the viclip recipe trains the ViCLIP encoders: model.lora / model.llm.load_in_4bit do not apply")
    if kind == "deepspeed" and cfg.recipe == "viclip":
        raise ConfigError("the viclip recipe trains ViCLIP's 0-dim temperature, which DeepSpeed 0.19 cannot "
                          "broadcast; use engine.kind=ddp (torchrun) or single")
    if kind == "deepspeed" and cfg.engine.precision == "fp16" and qlora:
        raise ConfigError("QLoRA computes in bf16; DeepSpeed fp16 would cast the adapters to fp16: use engine.precision=bf16")
    if cfg.engine.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("engine.precision=bf16 but this GPU has no bf16 support: use fp16")


def format_parameter_table(rows: list[tuple[str, int, int]]) -> str:
    """Rows (module, trainable, total) as an aligned text table with a trainable percentage column."""
    width = max(len(r[0]) for r in rows)
    lines = [f"{'module':<{width}}  {'trainable':>14}  {'total':>14}  {'%':>6}"]
    for name, train, total in rows:
        pct = 100.0 * train / total if total else 0.0
        lines.append(f"{name:<{width}}  {train:>14,}  {total:>14,}  {pct:>6.2f}")
    return "\n".join(lines)


def generic_parameter_table(model: nn.Module, depth: int = 1) -> list[tuple[str, int, int]]:
    """Table grouped by the first `depth` name components (for modules without their own table)."""
    groups: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        key = ".".join(name.split(".")[:depth])
        g = groups.setdefault(key, [0, 0])
        g[0] += p.numel() if p.requires_grad else 0
        g[1] += p.numel()
    rows = [(k, v[0], v[1]) for k, v in groups.items()]
    rows.append(("total", sum(r[1] for r in rows), sum(r[2] for r in rows)))
    return rows


def check_optimizer_covers(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """The optimizer must hold every trainable parameter and no frozen one."""
    in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
    named = list(model.named_parameters())
    frozen_in = [n for n, p in named if not p.requires_grad and id(p) in in_opt]
    missing = [n for n, p in named if p.requires_grad and id(p) not in in_opt]
    if frozen_in or missing:
        raise RuntimeError(f"optimizer/trainable mismatch: frozen in optimizer {frozen_in[:5]}, "
                           f"trainable not in optimizer {missing[:5]}")


def assert_frozen_have_no_grad(model: nn.Module, must_be_frozen=lambda name: False) -> dict[str, int]:
    """After the first backward: frozen parameters must have no gradient, and every parameter the recipe
    promised to freeze (`must_be_frozen(name)`) must be frozen. Returns counts for the log:
    {"frozen": n, "trainable_with_grad": n, "trainable_without_grad": n}."""
    named = list(model.named_parameters())
    unfrozen = [n for n, p in named if must_be_frozen(n) and p.requires_grad]
    if unfrozen:
        raise RuntimeError(f"{len(unfrozen)} parameter(s) the recipe freezes are trainable (freezing mistake): "
                           f"{unfrozen[:10]}")
    leaked = [n for n, p in named if not p.requires_grad and p.grad is not None]
    if leaked:
        raise RuntimeError(f"frozen parameters received a gradient (freezing mistake): {leaked[:10]}")
    frozen = sum(1 for p in model.parameters() if not p.requires_grad)
    with_grad = sum(1 for p in model.parameters() if p.requires_grad and p.grad is not None)
    without = sum(1 for p in model.parameters() if p.requires_grad and p.grad is None)
    return {"frozen": frozen, "trainable_with_grad": with_grad, "trainable_without_grad": without}
