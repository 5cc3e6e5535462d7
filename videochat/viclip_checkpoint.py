"""Reading and validating ViCLIP state dicts in the released layout (`{"model": state_dict}`).

Keys are never renamed: the released `.pth` uses exactly `ViCLIP`'s module names (`vision_encoder.*`,
`text_encoder.*`, `temp`). Every mismatch is reported at once: missing keys, unexpected keys and shape
mismatches, with a hint for the common causes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


class ViCLIPCheckpointError(ValueError):
    """A state dict that does not match the model: lists missing / unexpected keys and shape mismatches."""


def load_state_dict_file(path_or_state_dict: str | Path | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A state dict from a `.pth` path, a `{"model": sd}` dict or a bare state dict.

    Files are read with `torch.load(path, map_location="cpu", weights_only=True)` (never arbitrary pickles).
    """
    obj: Any = path_or_state_dict
    if isinstance(obj, (str, Path)):
        path = Path(obj)
        if not path.is_file():
            raise FileNotFoundError(f"ViCLIP checkpoint not found: {path}")
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, Mapping):
        raise ViCLIPCheckpointError(f"expected a state dict or {{'model': state_dict}}, got {type(obj).__name__}")
    if "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ViCLIPCheckpointError(
            f"not a state dict: {len(bad)} entries are not tensors (e.g. {bad[:5]}); "
            "expected the released layout {'model': {name: tensor}}"
        )
    return dict(obj)


def compare(
    want: Mapping[str, tuple[int, ...]], state_dict: Mapping[str, torch.Tensor], keys: set[str] | None = None
) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, shape mismatches) of `state_dict` (restricted to `keys`) against `want`."""
    have = set(state_dict) if keys is None else keys
    missing = sorted(set(want) - have)
    unexpected = sorted(have - set(want))
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(want[k])}"
        for k in sorted(have & set(want))
        if tuple(state_dict[k].shape) != tuple(want[k])
    ]
    return missing, unexpected, mismatched


def format_problems(missing: list[str], unexpected: list[str], mismatched: list[str], limit: int = 40) -> str:
    lines = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if items:
            shown = "\n    ".join(items[:limit])
            more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
            lines.append(f"  {len(items)} {title}:\n    {shown}{more}")
    return "\n".join(lines)


def check_state_dict(want: Mapping[str, tuple[int, ...]], state_dict: Mapping[str, torch.Tensor]) -> None:
    """Raise `ViCLIPCheckpointError` unless `state_dict` has exactly the keys and shapes of `want`."""
    missing, unexpected, mismatched = compare(want, state_dict)
    if not (missing or unexpected or mismatched):
        return
    hint = ""
    if any(m.startswith("vision_encoder.temporal_positional_embedding") for m in mismatched):
        hint = (
            "\n  hint: keep config.num_frames equal to the checkpoint's (8 for the release); other frame "
            "counts are handled at run time by interpolating the temporal embedding"
        )
    elif any(k.startswith("text_encoder.") for k in unexpected) and not any(k.startswith("text_encoder.") for k in want):
        hint = "\n  hint: build with config.with_text=True, or load through ViCLIP.from_checkpoint (drops them)"
    raise ViCLIPCheckpointError(
        "state dict does not match ViCLIP(config) (keys are never renamed; the released layout is "
        "vision_encoder.*, text_encoder.*, temp)\n" + format_problems(missing, unexpected, mismatched) + hint
    )


def drop_text_keys(
    state_dict: dict[str, torch.Tensor], want_text: Mapping[str, tuple[int, ...]]
) -> dict[str, torch.Tensor]:
    """For a vision-only model: the `text_encoder.*` keys must be all absent, or all present with the
    shapes `want_text` (those of the config with a text encoder); then they are dropped. Else an error."""
    text_keys = {k for k in state_dict if k.startswith("text_encoder.")}
    if not text_keys:
        return state_dict
    missing, unexpected, mismatched = compare(want_text, state_dict, text_keys)
    if missing or unexpected or mismatched:
        raise ViCLIPCheckpointError(
            "with_text=False: the checkpoint's text_encoder.* keys are incomplete or do not match the config "
            "(they must be all present with the right shapes, or all absent)\n"
            + format_problems(missing, unexpected, mismatched)
        )
    return {k: v for k, v in state_dict.items() if k not in text_keys}
