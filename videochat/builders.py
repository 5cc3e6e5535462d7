"""Named model builders (torchtune style): tiny CPU models for tests and demos, real 7B sizes, and building
from a YAML `VideoChatConfig`.

- `tiny_config(**overrides) -> VideoChatConfig` / `videochat_tiny(**overrides) -> VideoChatModel`
- `config_7b(llm=None, viclip=None, qformer=None, ...) -> VideoChatConfig` / `videochat_7b(..., device="meta")`
- `build_model(config_or_yaml, overrides=None, device=None) -> VideoChatModel`
- `memory_report(model) -> dict`: parameters and bytes per component, bf16 and 4-bit.

Overrides: nested dicts per top-level field (`qformer={"use_instruction": True}`), booleans as shorthands
(`lora=True`), or dotted keys through `**{"llm.dtype": "bfloat16"}` / double underscores
(`llm__dtype="bfloat16"`), all validated by the strict config loader.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from videochat.config import VideoChatConfig, apply_overrides, from_dict, load_yaml, to_dict
from videochat.model import VideoChatModel

LLAMA_7B: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "tie_word_embeddings": False,
}
"""LLaMA-7B / Vicuna-7B v1.x sizes (6,738,415,616 parameters), used when no LLM folder is given."""

TINY_LLAMA: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "tie_word_embeddings": False,
}
"""The tiny random Llama of `videochat_tiny` (vocabulary grown to the tokenizer's size at build time)."""


def _tiny_dict() -> dict[str, Any]:
    return {
        "viclip": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "heads": 4, "output_dim": 32,
                   "num_frames": 8, "text_width": 32, "text_layers": 1, "text_heads": 2,
                   "text_context_length": 32, "text_vocab_size": 512, "with_text": False},
        "qformer": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
                    "cross_attention_frequency": 2, "num_query_tokens": 8, "num_extra_query_tokens": 8,
                    "vocab_size": 512, "max_position_embeddings": 64},
        "llm": {"path": None, "hf_config": dict(TINY_LLAMA), "dtype": "float32", "attn_implementation": "sdpa"},
        "lora": {"enabled": False, "r": 4, "alpha": 8, "dropout": 0.0},
        "template": "videochat2",
        "num_frames": 8,
    }


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `overrides` (nested dicts, dotted / double-underscore keys, bool shorthands) into `base`."""
    dotted = []
    for key, value in overrides.items():
        key = key.replace("__", ".")
        if "." in key:
            dotted.append((key, value))
        elif isinstance(value, bool) and isinstance(base.get(key), dict) and "enabled" in base[key]:
            base[key]["enabled"] = value  # lora=True
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = _merge(base[key], value)
        else:
            base[key] = value
    for key, value in dotted:
        node = base
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return base


def tiny_config(**overrides: Any) -> VideoChatConfig:
    """The tiny config: ViCLIP 32 px / patch 8 / width 64 / 2 layers, Q-Former 64 wide / 2 layers / 8 + 8
    queries, random Llama 64 wide / 2 layers, videochat2 template. Overrides as in the module docstring."""
    return from_dict(VideoChatConfig, _merge(_tiny_dict(), dict(overrides)))


def videochat_tiny(*, tokenizer: Any = None, seed: int | None = 0, device: str | None = None,
                   **overrides: Any) -> VideoChatModel:
    """A random tiny VideoChatModel (in-memory byte-level BPE tokenizer unless `tokenizer` is given).
    Deterministic for a given `seed` (None: leave the global RNG alone). Builds in well under 2 s on CPU."""
    cfg = tiny_config(**overrides)
    if seed is None:
        return VideoChatModel.from_config(cfg, tokenizer=tokenizer, device=device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VideoChatModel.from_config(cfg, tokenizer=tokenizer, device=device)


def config_7b(
    llm: str | None = None,
    viclip: str | None = None,
    qformer: str | None = None,
    *,
    lora: bool = True,
    load_in_4bit: bool = False,
    dtype: str = "bfloat16",
    attn_implementation: str = "sdpa",
    gradient_checkpointing: bool = False,
    **overrides: Any,
) -> VideoChatConfig:
    """Real sizes: ViCLIP-L/14 (`viclip`: the released .pth), BERT-base Q-Former with 32 + 64 queries and
    cross-attention every 2nd layer (`qformer`: BLIP-2 / InstructBLIP folder or VideoChat2 checkpoint), the
    LLM folder `llm` or, without one, a random LLaMA-7B (`LLAMA_7B`). LoRA r=16, alpha=32, dropout 0.1."""
    data: dict[str, Any] = {
        "viclip_checkpoint": viclip,
        "qformer": {"init": qformer, "num_query_tokens": 32, "num_extra_query_tokens": 64},
        "llm": {"path": llm, "hf_config": None if llm else dict(LLAMA_7B), "dtype": dtype,
                "attn_implementation": attn_implementation, "load_in_4bit": load_in_4bit,
                "gradient_checkpointing": gradient_checkpointing},
        "lora": {"enabled": lora, "r": 16, "alpha": 32, "dropout": 0.1},
        "template": "videochat2" if llm is None else "auto",
    }
    return from_dict(VideoChatConfig, _merge(data, dict(overrides)))


def videochat_7b(
    llm: str | None = None,
    viclip: str | None = None,
    qformer: str | None = None,
    device: str | torch.device = "meta",
    *,
    tokenizer: Any = None,
    **kwargs: Any,
) -> VideoChatModel:
    """The 7B model (`config_7b`). On `device="meta"` (default) nothing is allocated or loaded: only sizes are
    read (an LLM folder's config.json), for `memory_report` / parameter counts. Other devices load weights."""
    cfg = config_7b(llm, viclip, qformer, **kwargs)
    return VideoChatModel.from_config(cfg, tokenizer=tokenizer, device=device)


def build_model(
    config: VideoChatConfig | str | Path | dict[str, Any],
    overrides: list[str] | None = None,
    *,
    tokenizer: Any = None,
    device: str | torch.device | None = None,
) -> VideoChatModel:
    """Build from a `VideoChatConfig`, a YAML file path or a plain dict, with `a.b=value` overrides."""
    if isinstance(config, VideoChatConfig):
        cfg = from_dict(VideoChatConfig, apply_overrides(to_dict(config), list(overrides or []))) if overrides else config
    elif isinstance(config, dict):
        cfg = from_dict(VideoChatConfig, apply_overrides(dict(config), list(overrides or [])))
    else:
        cfg = load_yaml(VideoChatConfig, config, overrides)
    return VideoChatModel.from_config(cfg, tokenizer=tokenizer, device=device)


# ----------------------------------------------------------------------------------------------- memory


def _is_quantizable_linear(name: str, module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear) and not name.endswith("lm_head") and "lora_" not in name


def memory_report(model: VideoChatModel) -> dict[str, Any]:
    """Parameters and weight bytes per component (works on the meta device).

    `bf16_bytes`: 2 bytes per parameter. `nf4_bytes`: QLoRA's storage for the LLM (NF4 Linear weights at
    0.5 byte + double-quantised absmax ~0.127 bit/param; embeddings, norms, lm_head and adapters in bf16);
    other components as bf16. Weights only: no activations, gradients or optimizer state.
    """
    comps: dict[str, torch.nn.Module] = {
        "viclip": model.viclip, "vision_ln": model.vision_ln, "projector": model.projector, "llm": model.llm,
    }
    out: dict[str, Any] = {}
    for name, module in comps.items():
        params = sum(p.numel() for p in module.parameters())
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        nf4 = 2 * params
        if name == "llm":
            quant = sum(m.weight.numel() for n, m in module.named_modules() if _is_quantizable_linear(n, m))
            nf4 = 2 * (params - quant) + quant * (0.5 + 0.127 / 8)
        out[name] = {"params": params, "trainable": trainable, "bf16_bytes": 2 * params, "nf4_bytes": int(nf4)}
    out["total"] = {k: sum(v[k] for v in out.values()) for k in ("params", "trainable", "bf16_bytes", "nf4_bytes")}
    out["total"]["bf16_gib"] = round(out["total"]["bf16_bytes"] / 2**30, 3)
    out["total"]["nf4_gib"] = round(out["total"]["nf4_bytes"] / 2**30, 3)
    return out


def count_params(shapes: dict[str, tuple[int, ...]]) -> int:
    """Sum of prod(shape) (helper for formula checks)."""
    return sum(math.prod(s) for s in shapes.values())
