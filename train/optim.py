"""AdamW parameter groups (weight decay only where it belongs) and the warmup + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from train.config import OptimConfig

# Parameters never decayed: biases, every norm's weight, embeddings and learned query tokens (decaying them
# towards zero only hurts, as in BLIP-2 / LLaVA / nanoGPT).
_NO_DECAY_MARKERS = ("bias", "norm", "ln_", "ln.", "layernorm", "embed", "query_tokens", "queries",
                     "class_embedding", "temp", "lora_magnitude")


def no_decay(name: str, param: torch.Tensor) -> bool:
    """True for parameters excluded from weight decay (1-d tensors and the named kinds above)."""
    lowered = name.lower()
    return param.ndim < 2 or any(m in lowered for m in _NO_DECAY_MARKERS)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups over the trainable parameters: decayed matrices, undecayed rest (names kept)."""
    decay, keep, decay_names, keep_names = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if no_decay(name, p):
            keep.append(p)
            keep_names.append(name)
        else:
            decay.append(p)
            decay_names.append(name)
    if not decay and not keep:
        raise ValueError("no trainable parameters: every parameter has requires_grad=False")
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, "names": decay_names})
    if keep:
        groups.append({"params": keep, "weight_decay": 0.0, "names": keep_names})
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over `param_groups`; fused on CUDA (same maths, one kernel)."""
    groups = param_groups(model, cfg.weight_decay)
    for g in groups:
        g.pop("names")
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    kwargs = {"fused": True} if on_cuda else {"foreach": False}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **kwargs)


def lr_lambda(cfg: OptimConfig, total_steps: int):
    """Multiplier of the peak lr at optimizer step s: linear warmup, then cosine to min_lr_ratio (or flat)."""
    warmup = max(0, min(cfg.warmup_steps, total_steps - 1))

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        span = max(1, total_steps - warmup - 1)
        progress = min(1.0, (step - warmup) / span)
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    """LambdaLR (its state_dict is just the step counter, so resume is exact)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
