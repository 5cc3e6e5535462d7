"""Building the chat model for a run, starting from a previous stage, and rebuilding it from a checkpoint.

- `build_chat_model(cfg, device)`: `VideoChatModel.from_config(cfg.model)` with random parts seeded by
  `cfg.model_seed` (so a later stage and `videochat export` rebuild the same random base), then
  `init_from` applied.
- `apply_init(model, src, cfg)`: a previous stage's checkpoint (`trainable.safetensors`) or export folder
  (`projector.safetensors` + `adapter/`): its trained weights are copied in, strictly (a tensor that matches
  no parameter, or a missing projector, is an error naming the keys).
- `model_from_checkpoint(ckpt)`: the model exactly as training left it (base + init + trainable weights).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from train.checkpoint import check_trainable_names, read_config
from train.config import TrainConfig, train_config_from_dict


def _same_base(a: TrainConfig, b: TrainConfig) -> list[str]:
    """Differences that would make b's weights meaningless on a's model (for init_from)."""
    problems = []
    if a.model.llm.path != b.model.llm.path:
        problems.append(f"model.llm.path {b.model.llm.path!r} -> {a.model.llm.path!r}")
    elif a.model.llm.path is None and (a.model.llm.hf_config != b.model.llm.hf_config or a.model_seed != b.model_seed):
        problems.append("the random base LLM differs (model.llm.hf_config or model_seed changed)")
    if dataclasses.asdict(a.model.qformer) | {"init": None} != dataclasses.asdict(b.model.qformer) | {"init": None}:
        problems.append("model.qformer sizes differ")
    if a.model.viclip.width != b.model.viclip.width:
        problems.append("model.viclip.width differs")
    return problems


def _copy_into(model: torch.nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    check_trainable_names(model, tensors, where=where, require_all=False)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t.to(device=params[name].device, dtype=params[name].dtype))


def apply_init(model, src: str | Path, cfg: TrainConfig) -> list[str]:
    """Load a previous stage's trained weights into `model`; returns the loaded tensor names."""
    src = Path(src)
    if (src / "trainable.safetensors").is_file():  # a training checkpoint
        prev = train_config_from_dict(read_config(src))
        problems = _same_base(cfg, prev)
        if problems:
            raise ValueError(f"init_from={src}: trained on a different base model: {'; '.join(problems)}")
        tensors = load_file(str(src / "trainable.safetensors"))
        has_lora = any(".lora_" in n for n in dict(model.named_parameters()))
        if not has_lora:
            lora = [n for n in tensors if ".lora_" in n]
            if lora:
                raise ValueError(f"init_from={src} holds LoRA weights ({len(lora)} tensors) but this model has no "
                                 "LoRA: set model.lora.enabled=true with the same r / targets, or export with "
                                 "--merge-lora and point model.llm.path at the export's llm/")
        _copy_into(model, tensors, str(src / "trainable.safetensors"))
        return sorted(tensors)
    if (src / "projector.safetensors").is_file():  # an export (save_pretrained / merge_and_export folder)
        tensors = load_file(str(src / "projector.safetensors"))
        want = {n for n, _ in model.named_parameters() if n.startswith(("vision_ln.", "projector."))}
        missing = sorted(want - set(tensors))
        if missing:
            raise KeyError(f"{src}/projector.safetensors lacks {len(missing)} projector tensors, e.g. {missing[:5]}")
        _copy_into(model, tensors, str(src / "projector.safetensors"))
        loaded = sorted(tensors)
        adapter = src / "adapter" / "adapter_model.safetensors"
        if adapter.is_file():
            from peft import get_peft_model_state_dict, set_peft_model_state_dict

            if not model.has_lora:
                raise ValueError(f"init_from={src} has a LoRA adapter but model.lora.enabled is false")
            sd = load_file(str(adapter))
            want_sd = get_peft_model_state_dict(model.llm)
            if set(sd) != set(want_sd):
                raise KeyError(f"{adapter}: adapter keys differ from this model's LoRA (r / target_modules?): "
                               f"{sorted(set(sd) ^ set(want_sd))[:5]}")
            set_peft_model_state_dict(model.llm, sd)
            loaded += sorted(sd)
        exported = json.loads((src / "config.json").read_text())
        theirs, ours = exported.get("llm", {}).get("path"), cfg.model.llm.path
        if theirs and ours and Path(theirs).name != Path(ours).name and theirs != "llm":
            print(f"[train] note: init_from={src} was exported on LLM {theirs}; this run uses {ours}", flush=True)
        return loaded
    raise FileNotFoundError(f"init_from={src}: neither a checkpoint (trainable.safetensors) nor an export "
                            "(projector.safetensors)")


def build_chat_model(cfg: TrainConfig, device: torch.device | str | None = None):
    """The run's VideoChatModel before any parameter is frozen by the recipe (LoRA per cfg.model.lora)."""
    from videochat.model import VideoChatModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.model_seed)
        model = VideoChatModel.from_config(cfg.model)
    if cfg.init_from:
        apply_init(model, cfg.init_from, cfg)
    if device is not None:
        model.to_device(device)
    return model


def model_from_checkpoint(ckpt: str | Path, *, for_export: bool = True):
    """Rebuild the chat model of a checkpoint: base (+ init_from) + its trainable weights (strict).

    `for_export`: a QLoRA run is rebuilt on a bf16 base (4-bit needs CUDA and cannot be merged), the standard
    way to merge QLoRA adapters; LoRA tensor names are identical on both bases."""
    ckpt = Path(ckpt)
    cfg = train_config_from_dict(read_config(ckpt))
    if cfg.recipe == "viclip":
        raise ValueError(f"{ckpt} is a viclip (encoder) checkpoint: export writes its viclip.pth instead")
    if for_export and cfg.model.llm.load_in_4bit:
        cfg.model.llm.load_in_4bit = False
        cfg.model.llm.dtype = "bfloat16"
    model = build_chat_model(cfg)
    trainable = load_file(str(ckpt / "trainable.safetensors"))
    _copy_into(model, trainable, str(ckpt / "trainable.safetensors"))
    return model, cfg
