"""`videochat export --checkpoint DIR --out DIR [--merge-lora]`.

Turns a training checkpoint into a model folder: `VideoChatModel.from_pretrained(OUT)` (and so the chat app
and the evaluator) loads it directly. Without `--merge-lora` the LoRA adapter is stored separately and released
bases are referenced by path; with it, LoRA is merged into the LLM weights and the LLM and ViCLIP are copied
in: a self-contained folder. A QLoRA checkpoint is merged on a bf16 base. A `viclip` recipe checkpoint is
written as `OUT/viclip.pth` (the released layout).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a checkpoint as a self-contained model folder",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder (OUT/checkpoints/step-N) or a run "
                                                       "folder (its newest checkpoint is used)")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--merge-lora", action="store_true", help="merge LoRA into the LLM and copy every base in")
    p.set_defaults(func=main)


def resolve_checkpoint(path: str | Path) -> Path:
    from train.checkpoint import latest_checkpoint

    p = Path(path)
    if (p / "trainable.safetensors").is_file():
        return p
    for root in (p / "checkpoints", p):
        found = latest_checkpoint(root)
        if found is not None:
            return found
    raise FileNotFoundError(f"{p}: not a checkpoint folder (no trainable.safetensors) and no checkpoints under it")


def export(checkpoint: str | Path, out: str | Path, merge_lora: bool = False) -> Path:
    """Write the export; returns `out`."""
    import torch
    from safetensors.torch import load_file

    from train.checkpoint import read_config
    from train.config import train_config_from_dict

    ckpt = resolve_checkpoint(checkpoint)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new --out")
    cfg = train_config_from_dict(read_config(ckpt))
    if cfg.recipe == "viclip":
        from train.recipes.viclip import build_viclip

        model = build_viclip(cfg, torch.device("cpu"))
        model.requires_grad_(False)
        from train.modeling import _copy_into

        _copy_into(model, load_file(str(ckpt / "trainable.safetensors")), str(ckpt))
        out.mkdir(parents=True, exist_ok=True)
        model.save_checkpoint(out / cfg.viclip.output_name)
        return out
    from train.modeling import model_from_checkpoint

    model, _ = model_from_checkpoint(ckpt)
    model.eval()
    if merge_lora:
        model.merge_and_export(out)
    else:
        model.save_pretrained(out)
    return out


def main(args: argparse.Namespace) -> int:
    try:
        out = export(args.checkpoint, args.out, args.merge_lora)
    except (FileNotFoundError, FileExistsError, KeyError, ValueError) as e:
        print(f"videochat export: {e}", file=sys.stderr)
        return 2
    print(f"exported to {out}")
    return 0
