"""Parameter bookkeeping for `VideoChatModel`: the per-part table, strict trainable-weight loading, and the
zero-weight projector touch that keeps a clip-less training batch in the autograd graph."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from videochat.model import VideoChatModel


def parameter_table(model: "VideoChatModel") -> list[tuple[str, int, int]]:
    """(module, trainable, total) parameter counts for viclip, vision_ln, the projector's parts, the LLM
    (base weights and LoRA adapters separately) and a final "total" row."""

    def count(params):
        params = list(params)
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    proj = model.projector
    rows = [
        ("viclip", *count(model.viclip.parameters())),
        ("vision_ln", *count(model.vision_ln.parameters())),
        ("projector.qformer", *count(proj.qformer.parameters())),
        ("projector.queries", *count([proj.query_tokens, proj.extra_query_tokens])),
        ("projector.proj", *count(proj.proj.parameters())),
    ]
    llm_named = list(model.llm.named_parameters())
    lora = [p for n, p in llm_named if "lora_" in n]
    base = [p for n, p in llm_named if "lora_" not in n]
    rows.append(("llm", *count(base)))
    if lora:
        rows.append(("llm.lora", *count(lora)))
    rows.append(("total", sum(r[1] for r in rows), sum(r[2] for r in rows)))
    return rows


def load_trainable(model: "VideoChatModel", state_dict: dict[str, torch.Tensor]) -> None:
    """Copy `state_dict` into the trainable parameters: exactly the trainable names, same shapes, else ValueError."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(params) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(params))
    bad = [f"{k}: {tuple(state_dict[k].shape)} vs {tuple(params[k].shape)}"
           for k in sorted(set(params) & set(state_dict)) if state_dict[k].shape != params[k].shape]
    if missing or unexpected or bad:
        raise ValueError(f"trainable state dict mismatch: missing {missing[:20]}, unexpected {unexpected[:20]}, "
                         f"shape {bad[:20]} ({len(missing)}/{len(unexpected)}/{len(bad)})")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(state_dict[k].to(device=p.device, dtype=p.dtype))


def projector_touch(model: "VideoChatModel") -> torch.Tensor:
    """A zero-valued scalar that depends on every trainable projector parameter (vision_ln, Q-Former, queries,
    Linear), or 0 when none is trainable. Costs one projector pass over a single all-zero clip [1, S, C]."""
    trainable = any(p.requires_grad for p in (*model.vision_ln.parameters(), *model.projector.parameters()))
    if not trainable:
        return torch.zeros((), device=model.device)
    vc = model.config.viclip
    seq = 1 + model.config.num_frames * vc.num_patches
    ln = model.vision_ln.weight
    features = torch.zeros(1, seq, vc.width, device=ln.device, dtype=ln.dtype)  # [1, S, C]
    return model.project(features).sum() * 0.0
