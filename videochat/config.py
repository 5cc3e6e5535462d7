"""Typed configuration dataclasses and strict dict/YAML loading.

Every config is a plain dataclass whose fields carry a docstring (the string literal after the field).
`from_dict` is strict: an unknown key anywhere raises `ConfigError` naming its dotted path, so a typo in a
YAML file never silently falls back to a default. `load_yaml(cls, path, overrides)` applies CLI overrides
of the form `a.b.c=value` (values parsed as YAML scalars) on top of the file.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit its dataclass."""


# --------------------------------------------------------------------------------------------------
# Model configs
# --------------------------------------------------------------------------------------------------


@dataclass
class ViCLIPConfig:
    """Sizes of a ViCLIP video-text encoder (defaults: the released ViCLIP-L/14)."""

    image_size: int = 224
    """Input frame side in pixels (square)."""
    patch_size: int = 14
    """Spatial patch side; `conv1` is Conv3d(3, width, (1, patch, patch))."""
    width: int = 1024
    """Vision transformer width."""
    layers: int = 24
    """Number of vision transformer blocks."""
    heads: int = 16
    """Vision attention heads."""
    mlp_ratio: float = 4.0
    """MLP hidden size = width * mlp_ratio (vision and text)."""
    output_dim: int = 768
    """Joint embedding dimension (`vision_encoder.proj` is [width, output_dim])."""
    num_frames: int = 8
    """Frames the temporal positional embedding was trained with; other counts interpolate."""
    text_width: int = 768
    """Text transformer width."""
    text_layers: int = 12
    """Text transformer blocks."""
    text_heads: int = 12
    """Text attention heads."""
    text_context_length: int = 32
    """Text context length (positional embedding rows)."""
    text_vocab_size: int = 49408
    """Text vocabulary size (CLIP BPE)."""
    with_text: bool = True
    """Build the text encoder too (the released checkpoint has one; the chat model drops it after loading)."""

    @property
    def num_patches(self) -> int:
        """Patch tokens per frame, e.g. (224 / 14)^2 = 256."""
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def l14(cls) -> "ViCLIPConfig":
        """ViCLIP-L/14 as released (InternVid-10M-FLT)."""
        return cls()

    @classmethod
    def b16(cls) -> "ViCLIPConfig":
        """ViCLIP-B/16 as released."""
        return cls(patch_size=16, width=768, layers=12, heads=12, output_dim=512, text_width=512, text_heads=8)


@dataclass
class QFormerConfig:
    """Q-Former projector (transformers' BLIP-2 / InstructBLIP Q-Former) sizes and initialisation."""

    hidden_size: int = 768
    """Q-Former (BERT) width."""
    num_hidden_layers: int = 12
    """Q-Former layers."""
    num_attention_heads: int = 12
    """Q-Former attention heads."""
    intermediate_size: int = 3072
    """Q-Former MLP width."""
    cross_attention_frequency: int = 2
    """A cross-attention to the vision tokens every N layers."""
    num_query_tokens: int = 32
    """Learned queries loaded from BLIP-2 / VideoChat2."""
    num_extra_query_tokens: int = 64
    """Extra queries (zero-initialised, VideoChat2); tokens per clip = num_query_tokens + this."""
    vocab_size: int = 30522
    """BERT vocabulary size for the optional instruction text input."""
    max_position_embeddings: int = 512
    """BERT positions for the optional instruction text input."""
    use_instruction: bool = False
    """InstructBLIP's Q-Former (loads InstructBLIP / instruction-aware weights). It accepts instruction ids
    (`VideoChatModel.forward(..., clip_instruction_ids=)`), but the recipes and the chat session do not pass them yet:
    it runs on the queries alone."""
    dropout: float = 0.0
    """Hidden and attention dropout inside the Q-Former during training."""
    init: str | None = None
    """Initial weights: an HF BLIP-2 / InstructBLIP folder, or a VideoChat2 checkpoint file; None = random."""
    init_format: str = "auto"
    """How to read `init`: auto | hf | videochat2."""
    init_skip: list[str] = field(default_factory=list)
    """Parts of `init` not loaded, kept at their initialisation (listed as re-initialised): any of proj
    (e.g. a VideoChat2 `llama_proj` [4096, 768] with another LLM width), vision_ln, extra_query_tokens."""

    @property
    def tokens_per_clip(self) -> int:
        """Embeddings each clip contributes to the LLM sequence."""
        return self.num_query_tokens + self.num_extra_query_tokens


@dataclass
class LLMConfig:
    """The language model: any `AutoModelForCausalLM` folder, or a random one from a config dict."""

    path: str | None = None
    """HF model folder (or hub id when online). None: build randomly from `hf_config`."""
    hf_config: dict[str, Any] | None = None
    """A transformers config dict (with `model_type`) for a randomly initialised LLM (tests, demo)."""
    tokenizer: str | None = None
    """Tokenizer folder; defaults to `path`."""
    dtype: str = "float32"
    """Parameter dtype of the base LLM: float32 | bfloat16 | float16."""
    attn_implementation: str = "sdpa"
    """eager | sdpa | flash_attention_2 (used when installed)."""
    load_in_4bit: bool = False
    """QLoRA: load the base weights in 4-bit NF4 through bitsandbytes (needs CUDA)."""
    gradient_checkpointing: bool = False
    """Non-reentrant activation checkpointing in the LLM."""


@dataclass
class LoRAConfig:
    """LoRA adapters on the LLM (peft). VideoChat2 used r=16, alpha=32, dropout=0.1."""

    enabled: bool = False
    """Add LoRA adapters to the LLM."""
    r: int = 16
    """Adapter rank."""
    alpha: int = 32
    """Scaling numerator (scale = alpha / r)."""
    dropout: float = 0.1
    """Dropout on the adapter input."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Names of the LLM linear layers that get adapters."""


@dataclass
class VideoChatConfig:
    """The whole chat model: frozen ViCLIP -> LayerNorm -> Q-Former -> Linear -> LLM (+LoRA)."""

    viclip: ViCLIPConfig = field(default_factory=ViCLIPConfig)
    """Video encoder sizes."""
    viclip_checkpoint: str | None = None
    """Released ViCLIP `.pth` (`{"model": state_dict}`); None = random (tests)."""
    vision_feature_layer: int = -2
    """Take all tokens after this block (-2: the penultimate, as VideoChat2)."""
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    """Projector sizes and initialisation."""
    llm: LLMConfig = field(default_factory=LLMConfig)
    """Language model."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """LoRA on the LLM."""
    template: str = "auto"
    """Conversation template: auto (the tokenizer's chat template, else videochat2) | videochat2 | llama2 | chatml."""
    system_prompt: str | None = None
    """System message prepended by the renderer when a conversation has none."""
    placeholder_token: str = "<|video_pad|>"
    """Token whose runs mark clip slots; added to the tokenizer when missing."""
    frame_times_in_prompt: bool = True
    """Tell the LLM the sampled frame times ("The video contains 8 frames sampled at ...")."""
    num_frames: int = 8
    """Frames sampled per clip."""
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    """Per-channel mean for frame normalisation (ImageNet, as ViCLIP)."""
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    """Per-channel std for frame normalisation."""

    @property
    def tokens_per_clip(self) -> int:
        """Placeholder ids per clip slot in a rendered conversation."""
        return self.qformer.tokens_per_clip


# --------------------------------------------------------------------------------------------------
# Strict dict / YAML conversion
# --------------------------------------------------------------------------------------------------


def _resolve_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    """Convert a plain YAML/JSON value to the annotated type `tp`, strictly."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{path}: {value!r} fits none of {tp}: {'; '.join(errors)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, _path=path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        out = [_coerce(inner, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], _path: str = "") -> T:
    """Build dataclass `cls` from a nested dict; unknown keys raise `ConfigError` with their path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{_path or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = _resolve_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in {_path}" if _path else ""
        raise ConfigError(f"unknown key(s){where}: {', '.join(unknown)} (valid: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(hints[k], v, f"{_path}.{k}" if _path else k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) of a dataclass config, JSON/YAML serialisable."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a nested dict, in place; returns it."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {p!r} is not a mapping")
        node[parts[-1]] = value
    return data


def read_yaml(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The mapping in a YAML file (empty when `path` is None) with `key=value` overrides applied."""
    data: dict[str, Any] = {}
    if path is not None:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    return apply_overrides(data, list(overrides or []))


def load_yaml(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """Read a YAML file (or start empty when `path` is None), apply overrides, build `cls` strictly."""
    data = read_yaml(path, overrides)
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def save_json(cfg: Any, path: str | Path) -> None:
    """Write a config as indented JSON (saved next to every checkpoint and export)."""
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_json(cls: type[T], path: str | Path) -> T:
    """Read a config JSON written by `save_json`, strictly."""
    return from_dict(cls, json.loads(Path(path).read_text(encoding="utf-8")))
