"""Estimated GPU memory peak of a training config, computed from the model built on the meta device.

`python -m train.memory --config train/configs/instruct_7b_qlora.yaml` prints the breakdown used in the 7B
YAML headers. Nothing is allocated or downloaded: parameter counts and dtypes come from
`VideoChatModel.from_config(..., device="meta")` (an LLM folder's config.json is read for its sizes); the
recipe's freezing is applied to find the trainable set. Estimated = what `torch.cuda.max_memory_allocated`
would report at the first optimizer step:

- weights: each parameter's own dtype; QLoRA LLM Linear weights at NF4 0.5 byte + double-quantised absmax
  (~0.016 byte) per parameter, the rest of the LLM in bf16;
- gradients and AdamW states (exp_avg, exp_avg_sq) of the trainable parameters in their dtype (fp32 for the
  projector and peft's fp32 adapters); DeepSpeed ZeRO-2 divides gradients and states by the world size and
  adds an fp32 master copy of bf16 trainables;
- activations per token and LLM layer (Llama block, bf16, SDPA so no L^2 scores): (10 D + 4 I) bf16 tensors
  + 2 D fp32 RMSNorm upcasts, + LoRA dropout copies (6 D + I) and masks; with non-reentrant gradient
  checkpointing only each block's input (D) is kept plus one block's full set during recompute;
- logits: bf16 logits + fp32 upcast + fp32 gradient (L x V x 10 bytes);
- Q-Former with grad (96 queries, cross-attention every 2nd layer to the S ViCLIP tokens, fp32) and the frozen
  ViCLIP under no_grad (one block's working set at a time).
Not included: the CUDA context (~0.5 GiB, outside the allocator) and allocator fragmentation (typically
5-10%): keep that margin on a 24 GB card.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

GiB = 2**30


def _meta_model(cfg):
    from videochat.model import VideoChatModel

    mcfg = dataclasses.replace(cfg.model, viclip_checkpoint=None,
                               qformer=dataclasses.replace(cfg.model.qformer, init=None),
                               llm=dataclasses.replace(cfg.model.llm, load_in_4bit=False))
    sizes = "hf_config"
    if mcfg.llm.path is not None:  # sizes from the folder's config.json; no weights read
        from pathlib import Path

        if (Path(mcfg.llm.path) / "config.json").is_file():
            from transformers import AutoConfig

            hf = AutoConfig.from_pretrained(mcfg.llm.path).to_dict()
            hf = {k: v for k, v in hf.items() if not k.startswith("_")}
            sizes = mcfg.llm.path
        else:  # the 7B YAMLs name Vicuna/LLaMA-7B folders: same sizes as LLaMA-7B
            from videochat.builders import LLAMA_7B

            hf, sizes = dict(LLAMA_7B), f"LLaMA-7B sizes ({mcfg.llm.path} not present here)"
        mcfg.llm = dataclasses.replace(mcfg.llm, path=None, hf_config=hf)
    return VideoChatModel.from_config(mcfg, device="meta"), sizes


def _freeze_like_recipe(model, cfg) -> None:
    model.requires_grad_(False)
    if cfg.recipe == "instruct":
        for n, p in model.llm.named_parameters():
            if "lora_" in n:
                p.requires_grad_(True)
    if cfg.recipe == "align" or cfg.train_projector:
        model.vision_ln.requires_grad_(True)
        model.projector.requires_grad_(True)


def estimate(cfg, seq_len: int = 512, world_size: int = 1) -> dict:
    """Breakdown in GiB for one GPU: batch `cfg.batch_size` conversations of `seq_len` text tokens + one
    clip each (`num_frames` frames, Q tokens)."""
    model, sizes = _meta_model(cfg)
    _freeze_like_recipe(model, cfg)
    qlora = cfg.model.llm.load_in_4bit
    b = cfg.batch_size
    hf = model.llm.config if not hasattr(model.llm, "peft_config") else model.llm.base_model.model.config
    D, I, n_layers, V = hf.hidden_size, hf.intermediate_size, hf.num_hidden_layers, hf.vocab_size
    L = seq_len + model.tokens_per_clip
    ds_zero = cfg.engine.kind == "deepspeed"

    weights = 0.0
    for name, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            quant = (qlora and name.startswith("llm") and isinstance(mod, torch.nn.Linear) and "lora_" not in name
                     and not name.endswith("lm_head"))
            weights += p.numel() * (0.5 + 0.127 / 8 if quant else p.element_size())
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in trainable)
    grads = sum(p.numel() * p.element_size() for p in trainable)
    adam = 2 * grads
    if ds_zero:
        master = sum(p.numel() * 4 for p in trainable if p.element_size() < 4)
        grads, adam = grads / world_size, (adam + master) / world_size

    lora_on = cfg.model.lora.enabled
    per_token_layer = (10 * D + 4 * I) * 2 + 2 * D * 4 + ((6 * D + I) * 3 if lora_on else 0)
    if cfg.model.llm.gradient_checkpointing:
        llm_act = b * L * (n_layers * D * 2 + per_token_layer)
    else:
        llm_act = b * L * n_layers * per_token_layer
    logits = b * L * V * 10
    qf = model.config.qformer
    S = 1 + cfg.model.num_frames * model.config.viclip.num_patches
    n_cross = qf.num_hidden_layers // qf.cross_attention_frequency
    qformer_act = b * 4 * (qf.num_hidden_layers * model.tokens_per_clip * (34 * qf.hidden_size)
                           + n_cross * (2 * S * qf.hidden_size + qf.num_attention_heads * model.tokens_per_clip * S))
    vw = model.config.viclip.width
    viclip_act = b * S * (6 * vw + int(vw * model.config.viclip.mlp_ratio)) * 2
    out = {
        "weights": weights, "gradients": grads, "optimizer": adam, "llm_activations": llm_act, "logits": logits,
        "qformer_activations": qformer_act, "viclip_working_set": viclip_act,
    }
    total = sum(out.values())
    res = {k: round(v / GiB, 2) for k, v in out.items()}
    res.update({"total_gib": round(total / GiB, 1), "trainable_params": n_train, "seq_len": L, "batch": b,
                "frames": cfg.model.num_frames, "world_size": world_size, "qlora": qlora,
                "llm_sizes": sizes})
    return res


def main(argv: list[str] | None = None) -> int:
    from train.config import load_train_config

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--seq-len", type=int, default=512, help="text tokens per conversation (clip tokens added)")
    p.add_argument("--world-size", type=int, default=1, help="GPUs sharing ZeRO-2 state")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    cfg = load_train_config(a.config, ["data.path=unused", *a.overrides])
    print(json.dumps(estimate(cfg, a.seq_len, a.world_size), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
