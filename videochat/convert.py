"""Explicit key maps from external Q-Former checkpoints into `VideoChatModel` (torchtune `_convert_weights` style).

Sources:
1. an HF BLIP-2 / InstructBLIP folder (safetensors, or `pytorch_model*.bin` read with weights_only=True):
   `qformer.*` and `query_tokens` are loaded; `vision_model.*`, `language_model.*`, `language_projection.*`
   are deliberately skipped (another vision encoder / LLM) and listed in the report.
2. a VideoChat2 checkpoint (Ask-Anything `video_chat2/models/videochat2_it.py`, `videochat2_qformer.py`,
   `videochat_mistra/`, `videochat_phi/`: `self.qformer, self.query_tokens = self.init_Qformer(...)`), so
   `qformer.bert.*`, `query_tokens`, `extra_query_tokens`, `vision_layernorm.*` and the projection
   `llama_proj.*` | `mistral_proj.*` | `phi_proj.*`; `{"model": sd}` or a bare sd; weights_only=True.
   LAVIS / VideoChat-v1 files spell the Q-Former `Qformer.*` (and the vision LayerNorm `ln_vision.*`): aliases.
   `vision_encoder.*` / `visual_encoder.*` (UMT / EVA), `{llama,mistral,phi}_model.*` (their LLM + LoRA) and the
   stage-1 contrastive heads are skipped by explicit prefix and listed.

Targets are `VideoChatModel` names: `projector.qformer.*` (BLIP-2, or InstructBLIP layout when
`qformer.use_instruction`; else a source's text branch is skipped and listed), `projector.query_tokens`,
`projector.extra_query_tokens`, `projector.proj.*`, `vision_ln.*`.

Strict: a key that is neither mapped nor under a listed skip prefix raises `ConversionError` with the list;
so do missing target keys and shape mismatches. Listed exceptions, kept at their initialisation and named in
`ConversionReport.reinitialized` (with a log line):
- an HF folder whose vision width (EVA ViT-g: 1408) differs from ViCLIP's: the cross-attention key/value inputs;
- a VideoChat2 file without `vision_layernorm.*` (stage 2/3 freeze it and VideoChat2's saver drops
  requires_grad=False parameters) or without `extra_query_tokens` (stage-1 `videochat2_qformer.py` has none);
- the parts named in `skip` / `qformer.init_skip` (e.g. "proj" when the source projects into another LLM width).
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from videochat.model import VideoChatModel

log = logging.getLogger(__name__)


class ConversionError(ValueError):
    """Unknown, missing or mis-shaped keys while converting a checkpoint (the message lists them)."""


# Per-layer module names: LAVIS BertLayer (VideoChat2) -> transformers Q-Former layer. Each entry maps both
# `.weight` and `.bias`. `{}` is the layer index.
LAVIS_LAYER_MODULES: dict[str, str] = {
    "attention.self.query": "attention.attention.query",
    "attention.self.key": "attention.attention.key",
    "attention.self.value": "attention.attention.value",
    "attention.output.dense": "attention.output.dense",
    "attention.output.LayerNorm": "attention.output.LayerNorm",
    "crossattention.self.query": "crossattention.attention.query",
    "crossattention.self.key": "crossattention.attention.key",
    "crossattention.self.value": "crossattention.attention.value",
    "crossattention.output.dense": "crossattention.output.dense",
    "crossattention.output.LayerNorm": "crossattention.output.LayerNorm",
    "intermediate_query.dense": "intermediate_query.dense",
    "output_query.dense": "output_query.dense",
    "output_query.LayerNorm": "output_query.LayerNorm",
    "intermediate.dense": "intermediate.dense",  # text branch
    "output.dense": "output.dense",  # text branch
    "output.LayerNorm": "output.LayerNorm",  # text branch
}
TEXT_BRANCH_LAYER_MODULES = ("intermediate.dense", "output.dense", "output.LayerNorm")
CROSS_KV_MODULES = ("crossattention.attention.key", "crossattention.attention.value")

# Transformers' own layer names (HF folders) are ours already: identity over the same module list.
HF_LAYER_MODULES: dict[str, str] = {v: v for v in LAVIS_LAYER_MODULES.values()}

# Embeddings: source key -> (target for a BLIP-2 target, target for an InstructBLIP target).
# None = the BLIP-2 (queries-only) layout has no such parameter: skipped as text branch.
LAVIS_EMBEDDINGS: dict[str, tuple[str | None, str]] = {
    "qformer.bert.embeddings.LayerNorm.weight": ("qformer.layernorm.weight", "qformer.embeddings.layernorm.weight"),
    "qformer.bert.embeddings.LayerNorm.bias": ("qformer.layernorm.bias", "qformer.embeddings.layernorm.bias"),
    "qformer.bert.embeddings.word_embeddings.weight": (None, "qformer.embeddings.word_embeddings.weight"),
    "qformer.bert.embeddings.position_embeddings.weight": (None, "qformer.embeddings.position_embeddings.weight"),
}
HF_EMBEDDINGS: dict[str, tuple[str | None, str]] = {
    "qformer.layernorm.weight": ("qformer.layernorm.weight", "qformer.embeddings.layernorm.weight"),  # BLIP-2
    "qformer.layernorm.bias": ("qformer.layernorm.bias", "qformer.embeddings.layernorm.bias"),
    "qformer.embeddings.layernorm.weight": ("qformer.layernorm.weight", "qformer.embeddings.layernorm.weight"),
    "qformer.embeddings.layernorm.bias": ("qformer.layernorm.bias", "qformer.embeddings.layernorm.bias"),
    "qformer.embeddings.word_embeddings.weight": (None, "qformer.embeddings.word_embeddings.weight"),
    "qformer.embeddings.position_embeddings.weight": (None, "qformer.embeddings.position_embeddings.weight"),
}

# Top-level tensors outside the Q-Former.
VIDEOCHAT2_TOP: dict[str, str] = {
    "query_tokens": "projector.query_tokens",
    "extra_query_tokens": "projector.extra_query_tokens",
    "vision_layernorm.weight": "vision_ln.weight",
    "vision_layernorm.bias": "vision_ln.bias",
    # the projection into the LLM is named after VideoChat2's LLM (videochat2_it / _mistral / _phi)
    **{f"{llm}_proj.{p}": f"projector.proj.{p}" for llm in ("llama", "mistral", "phi") for p in ("weight", "bias")},
}
# Other spellings of the same tensors (LAVIS BLIP-2, VideoChat-v1): rewritten to the names above before mapping.
VIDEOCHAT2_ALIASES: dict[str, str] = {"Qformer.": "qformer.", "ln_vision.": "vision_layernorm."}
HF_TOP: dict[str, str] = {"query_tokens": "projector.query_tokens"}

# Deliberately skipped, by prefix, with the reason shown in the report.
# A key ending in "." is a prefix; any other is an exact name.
VIDEOCHAT2_SKIP: dict[str, str] = {
    "vision_encoder.": "VideoChat2's UMT vision encoder (we use ViCLIP)",
    "visual_encoder.": "LAVIS / VideoChat-v1 EVA vision encoder (we use ViCLIP)",
    **{f"{llm}_model.": "VideoChat2's LLM / LoRA weights (our LLM comes from llm.path + our adapters)"
       for llm in ("llama", "mistral", "phi")},
    "qformer.cls.": "Q-Former language-model head (unused for chat)",
    "qformer.bert.embeddings.position_ids": "non-trainable position-id buffer",
    **{k: "VideoChat2 stage-1 contrastive / matching heads (unused for chat)"
       for k in ("vision_proj.", "text_proj.", "itm_head.", "temp", "vision_temp_embed")},
}
HF_SKIP: dict[str, str] = {
    "vision_model.": "BLIP-2's EVA ViT-g vision encoder (we use ViCLIP)",
    "language_model.": "BLIP-2's own LLM (ours comes from llm.path)",
    "language_projection.": "projection into BLIP-2's LLM width (ours is projector.proj)",
    "qformer.embeddings.position_ids": "non-trainable position-id buffer",
}
TEXT_BRANCH_REASON = "Q-Former text branch, unused with qformer.use_instruction=false"


@dataclass
class ConversionReport:
    """What a conversion did: target keys filled, source keys skipped (reason -> count), kept-as-init keys."""

    loaded: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    reinitialized: list[str] = field(default_factory=list)

    def summary(self) -> str:
        skipped = "; ".join(f"{n} x {r}" for r, n in self.skipped.items()) or "nothing"
        re_init = f"; kept at init: {self.reinitialized}" if self.reinitialized else ""
        return f"loaded {len(self.loaded)} tensors; skipped {skipped}{re_init}"


_LAYER_RE = re.compile(r"^(?P<prefix>.*?\.layer)\.(?P<idx>\d+)\.(?P<module>.+)\.(?P<param>weight|bias)$")


def _kind_index(use_instruction: bool) -> int:
    return 1 if use_instruction else 0


def _map_key(key: str, *, layer_prefix: str, layer_modules: dict[str, str], embeddings: dict, top: dict,
             skip: dict[str, str], use_instruction: bool) -> tuple[str | None, str | None]:
    """-> (target key or None, skip reason or None); both None = unknown key."""
    for prefix, reason in skip.items():
        if key == prefix or (prefix.endswith(".") and key.startswith(prefix)):
            return None, reason
    if key in top:
        return top[key], None
    if key in embeddings:
        target = embeddings[key][_kind_index(use_instruction)]
        return (None, TEXT_BRANCH_REASON) if target is None else ("projector." + target, None)
    m = _LAYER_RE.match(key)
    if m and m["prefix"] == layer_prefix and m["module"] in layer_modules:
        if m["module"] in TEXT_BRANCH_LAYER_MODULES and not use_instruction:
            return None, TEXT_BRANCH_REASON
        return f"projector.qformer.encoder.layer.{m['idx']}.{layer_modules[m['module']]}.{m['param']}", None
    return None, None


def _unalias(key: str) -> str:
    for alias, canonical in VIDEOCHAT2_ALIASES.items():
        if key.startswith(alias):
            return canonical + key[len(alias):]
    return key


def videochat2_to_ours(state_dict: dict[str, torch.Tensor], use_instruction: bool):
    """VideoChat2 (`qformer.*`) / LAVIS (`Qformer.*`) names -> ours. Returns (mapped sd, ConversionReport)."""
    canonical: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        name = _unalias(key)
        if name in canonical:
            raise ConversionError(f"VideoChat2 checkpoint: {key} and another key are both {name}")
        canonical[name] = value
    return _convert(canonical, layer_prefix="qformer.bert.encoder.layer", layer_modules=LAVIS_LAYER_MODULES,
                    embeddings=LAVIS_EMBEDDINGS, top=VIDEOCHAT2_TOP, skip=VIDEOCHAT2_SKIP,
                    use_instruction=use_instruction, source="VideoChat2 checkpoint")


def hf_to_ours(state_dict: dict[str, torch.Tensor], use_instruction: bool):
    """HF BLIP-2 / InstructBLIP names -> ours. Returns (mapped state dict, ConversionReport)."""
    return _convert(state_dict, layer_prefix="qformer.encoder.layer", layer_modules=HF_LAYER_MODULES,
                    embeddings=HF_EMBEDDINGS, top=HF_TOP, skip=HF_SKIP,
                    use_instruction=use_instruction, source="BLIP-2/InstructBLIP folder")


def _convert(state_dict, *, source: str, **maps):
    out: dict[str, torch.Tensor] = {}
    report = ConversionReport()
    unknown = []
    for key, value in state_dict.items():
        target, reason = _map_key(key, **maps)
        if target is not None:
            if target in out:
                raise ConversionError(f"{source}: two keys map to {target} (e.g. {key})")
            out[target] = value
        elif reason is not None:
            report.skipped[reason] += 1
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(f"{source}: {len(unknown)} unknown key(s) (not mapped, not a listed skip): "
                              f"{sorted(unknown)[:50]}")
    report.loaded = sorted(out)
    return out, report


# ------------------------------------------------------------------------------------------ reverse maps


def ours_to_videochat2(state_dict: dict[str, torch.Tensor], use_instruction: bool,
                       llm: str = "llama") -> dict[str, torch.Tensor]:
    """Our names -> VideoChat2 names (`qformer.bert.*`, `{llm}_proj.*`; inverse of `videochat2_to_ours`)."""
    top = {k: v for k, v in VIDEOCHAT2_TOP.items() if not k.endswith(("_proj.weight", "_proj.bias"))
           or k.startswith(f"{llm}_proj.")}
    return _reverse(state_dict, "qformer.bert.encoder.layer", LAVIS_LAYER_MODULES, LAVIS_EMBEDDINGS, top,
                    use_instruction)


def ours_to_hf(state_dict: dict[str, torch.Tensor], use_instruction: bool) -> dict[str, torch.Tensor]:
    """Our names -> HF BLIP-2 (use_instruction=False) or InstructBLIP names for `qformer.*` / `query_tokens`."""
    emb = {k: v for k, v in HF_EMBEDDINGS.items() if (k.startswith("qformer.embeddings.") == use_instruction)}
    return _reverse(state_dict, "qformer.encoder.layer", HF_LAYER_MODULES, emb, HF_TOP, use_instruction)


def _reverse(state_dict, layer_prefix, layer_modules, embeddings, top, use_instruction):
    inv_top = {v: k for k, v in top.items()}
    idx = _kind_index(use_instruction)
    inv_emb = {"projector." + t[idx]: k for k, t in embeddings.items() if t[idx] is not None}
    inv_layer = {v: k for k, v in layer_modules.items()}
    out = {}
    for key, value in state_dict.items():
        if key in inv_top:
            out[inv_top[key]] = value
        elif key in inv_emb:
            out[inv_emb[key]] = value
        else:
            m = _LAYER_RE.match(key)
            if not (m and m["prefix"] == "projector.qformer.encoder.layer" and m["module"] in inv_layer):
                raise ConversionError(f"no reverse mapping for {key}")
            out[f"{layer_prefix}.{m['idx']}.{inv_layer[m['module']]}.{m['param']}"] = value
    return out


# ------------------------------------------------------------------------------------------ file readers


def read_videochat2(path: str | Path) -> dict[str, torch.Tensor]:
    """A VideoChat2 `.pth` (`{"model": sd}` or bare sd), loaded with weights_only=True."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # VideoChat2's training checkpoints also pickle their config object; we never unpickle arbitrary code.
        raise ConversionError(
            f"{path}: holds Python objects besides tensors, refused by torch.load(weights_only=True) ({e}). "
            "If you trust the file, extract its weights once: torch.save(torch.load(p, weights_only=False)"
            "['model'], 'weights.pth') and point qformer.init at that file."
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError(f"{path}: not a state dict (expected {{'model': {{name: tensor}}}} or {{name: tensor}})")
    return obj


def read_hf_folder(path: str | Path, wanted=lambda key: True) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(tensors whose key passes `wanted`, all keys) from an HF folder; other tensors are never read."""
    from safetensors import safe_open

    d = Path(path)
    files = sorted(d.glob("*.safetensors"))
    if files:
        tensors, keys = {}, []
        for f in files:
            with safe_open(str(f), framework="pt", device="cpu") as sf:
                for k in sf.keys():
                    keys.append(k)
                    if wanted(k):
                        tensors[k] = sf.get_tensor(k)
        return tensors, keys
    bins = sorted(d.glob("pytorch_model*.bin"))
    if not bins:
        raise FileNotFoundError(f"{d}: no *.safetensors or pytorch_model*.bin weights")
    tensors, keys = {}, []
    for f in bins:
        sd = torch.load(f, map_location="cpu", weights_only=True)
        keys.extend(sd)
        tensors.update({k: v for k, v in sd.items() if wanted(k)})
    return tensors, keys


def _hf_encoder_width(path: Path) -> int | None:
    cfg = json.loads((path / "config.json").read_text(encoding="utf-8")) if (path / "config.json").is_file() else {}
    return (cfg.get("qformer_config") or {}).get("encoder_hidden_size") or (cfg.get("vision_config") or {}).get(
        "hidden_size")


# ------------------------------------------------------------------------------------------ loading

# Parts a caller may keep at their initialisation (`skip=` / `qformer.init_skip`): name -> target key prefix.
SKIPPABLE: dict[str, str] = {"proj": "projector.proj.", "vision_ln": "vision_ln.",
                             "extra_query_tokens": "projector.extra_query_tokens"}
VIDEOCHAT2_OPTIONAL = ("vision_ln.", "projector.extra_query_tokens")  # may be absent: kept at init, reported


def load_qformer_init(model: "VideoChatModel", path: str | Path, fmt: str = "auto",
                      skip: "tuple[str, ...] | list[str] | None" = None) -> ConversionReport:
    """Initialise the projector (and, from VideoChat2, `vision_ln`) of `model` from `path`. Strict.

    `skip`: parts of `SKIPPABLE` not to load (kept at their initialisation, listed in `reinitialized`);
    None = `model.config.qformer.init_skip`.
    """
    p = Path(path)
    if fmt == "auto":
        fmt = "hf" if p.is_dir() else "videochat2"
    if not p.exists():
        raise FileNotFoundError(f"qformer.init: {p} does not exist")
    skip = tuple(model.config.qformer.init_skip if skip is None else skip)
    if bad_skip := sorted(set(skip) - set(SKIPPABLE)):
        raise ValueError(f"qformer.init_skip: unknown part(s) {bad_skip} (valid: {sorted(SKIPPABLE)})")
    use_instr = model.config.qformer.use_instruction
    ours = model.state_dict()
    reinit: list[str] = []
    if fmt == "hf":
        is_needed = lambda k: k.startswith("qformer.") or k in HF_TOP  # noqa: E731 - skip the big parts unread
        tensors, all_keys = read_hf_folder(p, is_needed)
        skipped = {k: None for k in all_keys if k not in tensors}  # placeholders: classified by the map below
        mapped, report = hf_to_ours({**skipped, **tensors}, use_instr)
        # EVA ViT-g (1408) vs ViCLIP width: the cross-attention key/value inputs cannot be reused.
        cross = [x for k in list(mapped) if any(f".{m}." in k for m in CROSS_KV_MODULES) and k.endswith(".weight")
                 and k in ours and mapped[k] is not None and mapped[k].shape[1:] != ours[k].shape[1:]
                 for x in (k, k[: -len("weight")] + "bias")]
        for k in cross:
            mapped.pop(k, None)
        if cross:
            log.warning("Q-Former init: source vision width %s != ViCLIP width %d; %d cross-attention key/value "
                        "tensors keep their initialisation", _hf_encoder_width(p), model.config.viclip.width,
                        len(cross))
        reinit += cross
        required = {k for k in ours if k.startswith("projector.qformer.")} | {"projector.query_tokens"}
        required -= set(reinit)
    elif fmt == "videochat2":
        mapped, report = videochat2_to_ours(read_videochat2(p), use_instr)
        required = {k for k in ours if k.startswith(("projector.", "vision_ln."))}
        if model.config.qformer.num_extra_query_tokens == 0 and "projector.extra_query_tokens" not in mapped:
            required.discard("projector.extra_query_tokens")  # an empty [1, 0, H] tensor
        absent = sorted(k for k in required if k.startswith(VIDEOCHAT2_OPTIONAL) and k not in mapped
                        and not k.startswith(tuple(SKIPPABLE[s] for s in skip)))
        if absent:
            log.warning("Q-Former init: %s has no %s (VideoChat2 saves only trainable tensors; stage-1 files have "
                        "no extra queries); they keep their initialisation", p, absent)
        reinit += absent
        required -= set(absent)
    else:
        raise ValueError(f"qformer.init_format must be auto | hf | videochat2, got {fmt!r}")
    for part in skip:
        keys = sorted(k for k in ours if k.startswith(SKIPPABLE[part]) and (k in required or k in mapped))
        n_src = sum(mapped.pop(k, None) is not None for k in keys)
        if n_src:
            report.skipped[f"{part} (qformer.init_skip)"] += n_src
        log.info("Q-Former init: %s kept at initialisation (qformer.init_skip): %s", part, keys)
        required -= set(keys)
        reinit += [k for k in keys if k not in reinit]
    copy_strict(model, mapped, required, where=f"{fmt} checkpoint {p}")
    report.reinitialized = reinit
    log.info("Q-Former init from %s: %s", p, report.summary())
    return report


def copy_strict(model, mapped: dict[str, torch.Tensor], required: set[str], where: str) -> None:
    """Copy `mapped` into `model`'s tensors: exactly the `required` keys, same shapes, else ConversionError."""
    ours = model.state_dict()
    missing = sorted(required - set(mapped))
    unexpected = sorted(set(mapped) - required)
    bad = [f"{k}: source {tuple(mapped[k].shape)} vs model {tuple(ours[k].shape)}"
           for k in sorted(required & set(mapped)) if tuple(mapped[k].shape) != tuple(ours[k].shape)]
    if missing or unexpected or bad:
        hints = ["VideoChat2 / InstructBLIP add [DEC]: set qformer.vocab_size to the source's 30523"] * any(
            "word_embeddings" in b for b in bad)
        for part, prefix in SKIPPABLE.items():
            if any(k.startswith(prefix) for k in [*missing, *(b.split(":")[0] for b in bad)]):
                what = ("the source projects into another LLM width (or has no projection)" if part == "proj"
                        else "the source's tensor does not fit this model")
                hints.append(f"{what}: to keep {prefix.rstrip('.')} at its initialisation set "
                             f"qformer.init_skip=[{part}] (load_qformer_init(..., skip=('{part}',)))")
        hint = f" ({'; '.join(hints)})" if hints else ""
        raise ConversionError(f"{where}: missing ({len(missing)}) {missing[:40]}; unexpected ({len(unexpected)}) "
                              f"{unexpected[:40]}; shape mismatches ({len(bad)}) {bad[:40]}{hint}")
    with torch.no_grad():
        for k in required:
            ours[k].copy_(mapped[k].to(dtype=ours[k].dtype))
