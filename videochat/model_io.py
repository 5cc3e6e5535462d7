"""Saving, loading and exporting `VideoChatModel` folders.

`save_pretrained(model, dir)` writes only what is not a released base:

    dir/config.json            VideoChatConfig (videochat.config.save_json); base paths recorded as given,
                               files inside `dir` recorded relative to it ("llm", "viclip.pth", "tokenizer")
    dir/projector.safetensors  vision_ln.* and projector.* (LayerNorm, Q-Former, queries, Linear)
    dir/adapter/               peft LoRA adapter (adapter_config.json + adapter_model.safetensors), LoRA on
    dir/llm/                   HF folder of the base LLM, only when it was randomly initialised (no llm.path)
    dir/viclip.pth             released layout {"model": sd} (vision only), only when no viclip_checkpoint
    dir/tokenizer/             tokenizer files (with the placeholder token)
    dir/videochat.json         manifest: format version, what is stored, vocabulary size, placeholder id

`merge_and_export(model, dir)` writes the same layout but self-contained: the LLM (LoRA merged) always as
`dir/llm/`, ViCLIP always as `dir/viclip.pth`, no adapter, config pointing at the local copies.
`from_pretrained(dir)` loads either; relative paths in config.json are resolved against `dir`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from videochat.config import VideoChatConfig, load_json, save_json
from videochat.model_llm import base_state_dict, is_4bit, is_peft, torch_dtype

if TYPE_CHECKING:
    from videochat.model import VideoChatModel

FORMAT_VERSION = 1
PROJECTOR_FILE = "projector.safetensors"
ADAPTER_DIR = "adapter"
LLM_DIR = "llm"
VICLIP_FILE = "viclip.pth"
TOKENIZER_DIR = "tokenizer"
MANIFEST = "videochat.json"


def _projector_state(model: "VideoChatModel") -> dict[str, torch.Tensor]:
    sd = {f"vision_ln.{k}": v for k, v in model.vision_ln.state_dict().items()}
    sd.update({f"projector.{k}": v for k, v in model.projector.state_dict().items()})
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def _save_llm_folder(model: "VideoChatModel", out: Path, merge_lora: bool) -> None:
    if is_4bit(model.llm):
        raise ValueError(
            "cannot write a 4-bit LLM as a plain HF folder; reload the checkpoint with "
            "VideoChatModel.from_pretrained(dir, load_in_4bit=False, dtype='bfloat16') and export from that"
        )
    base = model.llm.get_base_model() if is_peft(model.llm) else model.llm
    sd = base_state_dict(model.llm, merge_lora=merge_lora)
    base.save_pretrained(out, state_dict=sd)


def _write(model: "VideoChatModel", directory: str | Path, export: bool) -> Path:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    stored = [PROJECTOR_FILE]
    llm_cfg = dataclasses.replace(cfg.llm)
    viclip_ckpt = cfg.viclip_checkpoint

    save_file(_projector_state(model), str(out / PROJECTOR_FILE), metadata={"format": "pt"})

    if model.has_lora and not export:
        model.llm.save_pretrained(str(out / ADAPTER_DIR))  # peft: only the adapter weights + config
        stored.append(ADAPTER_DIR)
    if export or cfg.llm.path is None:
        _save_llm_folder(model, out / LLM_DIR, merge_lora=export)
        llm_cfg = dataclasses.replace(llm_cfg, path=LLM_DIR, hf_config=None, load_in_4bit=False)
        stored.append(LLM_DIR)
    if export or viclip_ckpt is None:
        model.viclip.save_checkpoint(out / VICLIP_FILE)
        viclip_ckpt = VICLIP_FILE
        stored.append(VICLIP_FILE)
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
        llm_cfg = dataclasses.replace(llm_cfg, tokenizer=TOKENIZER_DIR)
        stored.append(TOKENIZER_DIR)

    lora = dataclasses.replace(cfg.lora, enabled=False) if export else cfg.lora
    # The Q-Former init is kept for provenance but never re-applied: projector.safetensors holds the weights.
    qformer = dataclasses.replace(cfg.qformer, init=None) if export else cfg.qformer
    saved = dataclasses.replace(cfg, llm=llm_cfg, viclip_checkpoint=viclip_ckpt, lora=lora, qformer=qformer)
    save_json(saved, out / "config.json")
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": "export" if export else "checkpoint",
        "stored": stored,
        "vocab_size": int(model.llm.get_input_embeddings().weight.shape[0]),
        "placeholder_id": model.placeholder_id,
        "tokens_per_clip": model.tokens_per_clip,
        "base": {"llm": cfg.llm.path, "viclip": cfg.viclip_checkpoint, "qformer_init": cfg.qformer.init},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return out


def save_pretrained(model: "VideoChatModel", directory: str | Path) -> Path:
    """Config, trained parts and tokenizer (plus the random-init bases); base weights referenced by path."""
    return _write(model, directory, export=False)


def merge_and_export(model: "VideoChatModel", directory: str | Path) -> Path:
    """A self-contained folder (LoRA merged, ViCLIP and LLM copied) that `from_pretrained` loads alone."""
    return _write(model, directory, export=True)


def _resolve(directory: Path, value: str | None) -> str | None:
    """A path recorded relative to the model folder -> absolute; anything else unchanged (hub ids too)."""
    if value is None or os.path.isabs(value):
        return value
    local = directory / value
    return str(local) if local.exists() else value


def from_pretrained(
    directory: str | Path,
    device: torch.device | str | None = None,
    dtype: str | torch.dtype | None = None,
    load_in_4bit: bool | None = None,
) -> "VideoChatModel":
    """Load a `save_pretrained` / `merge_and_export` folder; strict about every stored tensor. Eval mode."""
    from videochat.model import VideoChatModel

    d = Path(directory)
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"{d}: no config.json (not a VideoChatModel folder)")
    manifest = json.loads((d / MANIFEST).read_text(encoding="utf-8")) if (d / MANIFEST).is_file() else {}
    if manifest.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ValueError(f"{d}: format_version {manifest['format_version']} is newer than this code ({FORMAT_VERSION})")
    cfg = load_json(VideoChatConfig, d / "config.json")
    llm = dataclasses.replace(cfg.llm, path=_resolve(d, cfg.llm.path), tokenizer=_resolve(d, cfg.llm.tokenizer))
    if dtype is not None:
        name = {v: k for k, v in {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                  "float16": torch.float16}.items()}.get(torch_dtype(dtype))
        llm = dataclasses.replace(llm, dtype=name)
    if load_in_4bit is not None:
        llm = dataclasses.replace(llm, load_in_4bit=load_in_4bit)
    cfg = dataclasses.replace(
        cfg,
        llm=llm,
        viclip_checkpoint=_resolve(d, cfg.viclip_checkpoint),
        qformer=dataclasses.replace(cfg.qformer, init=None),  # weights come from projector.safetensors
    )
    tokenizer = None
    if llm.tokenizer is not None or llm.path is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(llm.tokenizer or llm.path)
    model = VideoChatModel.from_config(cfg, tokenizer=tokenizer)
    if "vocab_size" in manifest:
        have = model.llm.get_input_embeddings().weight.shape[0]
        if have != manifest["vocab_size"] or model.placeholder_id != manifest["placeholder_id"]:
            raise ValueError(
                f"{d}: rebuilt vocabulary {have} / placeholder id {model.placeholder_id} differ from the saved "
                f"{manifest['vocab_size']} / {manifest['placeholder_id']} (tokenizer or base LLM changed?)"
            )

    _load_projector(model, d / PROJECTOR_FILE)
    if cfg.lora.enabled:
        _load_adapter(model, d / ADAPTER_DIR)
    if device is not None:
        model.to_device(device)
    return model.eval()


def _check_keys(where: str, have: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    bad = [f"{k}: file {tuple(have[k].shape)} vs model {tuple(want[k].shape)}"
           for k in sorted(set(have) & set(want)) if tuple(have[k].shape) != tuple(want[k].shape)]
    if missing or unexpected or bad:
        raise ValueError(
            f"{where} does not match the model built from config.json:\n"
            f"  missing ({len(missing)}): {missing[:30]}\n  unexpected ({len(unexpected)}): {unexpected[:30]}\n"
            f"  shape mismatches ({len(bad)}): {bad[:30]}"
        )


def _load_projector(model: "VideoChatModel", path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"missing {path}")
    sd = load_file(str(path))
    _check_keys(str(path), sd, _projector_state(model))
    model.vision_ln.load_state_dict({k[len("vision_ln."):]: v for k, v in sd.items() if k.startswith("vision_ln.")},
                                    strict=True)
    model.projector.load_state_dict({k[len("projector."):]: v for k, v in sd.items() if k.startswith("projector.")},
                                    strict=True)


def _load_adapter(model: "VideoChatModel", adapter_dir: Path) -> None:
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    path = adapter_dir / "adapter_model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"config.json has lora.enabled but {path} is missing")
    sd = load_file(str(path))
    _check_keys(str(path), sd, get_peft_model_state_dict(model.llm))
    result = set_peft_model_state_dict(model.llm, sd)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ValueError(f"{path}: adapter keys not used by the model: {unexpected[:30]}")
