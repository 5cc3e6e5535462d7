"""Sizes of the `videochat demo` run per mode (default and `--quick`), chosen to fit a 2-core CPU budget.

The model sizes themselves live in `train/configs/demo_{viclip,align,instruct}.yaml` (the same files a user
would pass to `videochat train`); this module holds what differs between the modes: how big the world is,
how long each stage trains, and the tiny LLM's pretraining.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data_tools.synthetic import WorldConfig


@dataclass
class LMSettings:
    """The tiny Llama pretrained on the world's text (its "pretraining" stage)."""

    vocab_size: int = 400
    """Sentencepiece vocabulary (256 byte pieces + specials + learned pieces)."""
    hidden_size: int = 64
    """Llama width."""
    layers: int = 2
    """Llama blocks."""
    heads: int = 4
    """Attention heads (and key/value heads)."""
    intermediate_size: int = 128
    """MLP width."""
    steps: int = 600
    """Pretraining optimizer steps (enough for the LLM to learn to read its clip slots)."""
    embedding_std: float = 0.5
    """Init std of the (untied) input embeddings: the scale of the projector's output."""
    batch_size: int = 16
    """Documents per step."""
    lr: float = 3e-3
    """Peak learning rate (AdamW, cosine)."""
    max_length: int = 256
    """Longest rendered pretraining conversation in tokens (longer ones are skipped)."""


@dataclass
class DemoSettings:
    """Everything `videochat demo` varies between the default run and `--quick`."""

    world: WorldConfig = field(default_factory=WorldConfig)
    """The synthetic world."""
    lm: LMSettings = field(default_factory=LMSettings)
    """Tokenizer + tiny LLM pretraining."""
    viclip_steps: int = 1000
    """Contrastive ViCLIP pretraining steps."""
    viclip_batch: int = 32
    """Clips per contrastive step (in-batch negatives)."""
    align_steps: int = 1500
    """Projector alignment steps on caption samples."""
    instruct_steps: int = 2000
    """LoRA instruction-tuning steps."""
    batch_size: int = 16
    """Conversations per align / instruct step."""
    example_dialogues: int = 6
    """Held-out dialogues shown in report.md."""
    progress: bool = True
    """Progress bars in every stage (`--no-progress` turns them off)."""


def settings(quick: bool, overrides: list[str] | None = None) -> DemoSettings:
    """The default run (<= 15 min on 2 CPU cores) or the quick one (<= 3 min), with `key=value` overrides
    (e.g. `viclip_steps=50`, `world.train_videos=20`; for experiments and tests)."""
    from videochat.config import apply_overrides, from_dict, to_dict

    base = _quick() if quick else _default()
    if not overrides:
        return base
    return from_dict(DemoSettings, apply_overrides(to_dict(base), list(overrides)))


def _quick() -> DemoSettings:
    return DemoSettings(
        world=WorldConfig(seed=0, train_videos=100, heldout_repeats=1, two_object_prob=0.2),
        lm=LMSettings(steps=600),
        viclip_steps=1000, viclip_batch=32, align_steps=400, instruct_steps=600, batch_size=16,
    )


def _default() -> DemoSettings:
    return DemoSettings(world=WorldConfig(seed=0, train_videos=200, heldout_repeats=2, two_object_prob=0.25),
                        viclip_steps=6000, align_steps=1500, instruct_steps=2000)
