"""Typed training configs (`videochat train --config FILE [key=value ...]`).

Built on `videochat.config`'s strict loaders: an unknown key anywhere in the YAML or in an override is an
error naming its dotted path. Every field carries a docstring (the string literal after it); `docs/train.md`
lists them. Checks that need no model or data (`TrainConfig.check`) run before anything heavy starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from videochat.config import ConfigError, VideoChatConfig, from_dict, read_yaml, to_dict

RECIPES = ("align", "instruct", "viclip")
ENGINES = ("auto", "single", "ddp", "deepspeed")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class DataConfig:
    """Where the samples come from and how batches are formed."""

    path: str | None = None
    """Sample set folder (`DIR/{train,val}/shard-*.jsonl[.zst]`, as `videochat data build` writes) or a glob."""
    train_split: str = "train"
    """Split read for training."""
    val_split: str | None = "val"
    """Split read for the periodic validation loss (None: no validation)."""
    val_path: str | None = None
    """Another sample set for validation; defaults to `path`."""
    video_root: str | None = None
    """Root that relative video paths in the samples resolve against."""
    feature_cache: str | None = None
    """Pre-computed frozen ViCLIP features (`videochat features extract`); skips video decoding."""
    max_length: int | None = 2048
    """Longest rendered conversation in tokens; longer samples are rejected and counted."""
    max_bad_fraction: float = 0.01
    """Fraction of unreadable samples tolerated before the run stops with the list of reasons."""
    max_val_samples: int | None = 256
    """Cap on validation samples per evaluation (the first ones, deterministic)."""
    group_by_length: bool = True
    """Batch samples of similar length together (less padding); the order stays a function of the seed."""
    num_workers: int = 0
    """DataLoader worker processes."""
    text_length: int = 32
    """viclip recipe: caption tokens (CLIP context length)."""
    packing: bool = False
    """align / instruct: pack several samples into each row (`videochat.packing`): per-sample position_ids
    restarting at 0 and no attention_mask, so no sample attends to another; rows are planned by
    `PackedBatchSampler` (group_by_length is then not used). See docs/packing.md for when it pays off."""
    packing_max_tokens: int | None = None
    """Tokens per packed row; None = data.max_length (which must be <= this, so every sample fits a row)."""
    packing_rows: int | None = None
    """Packed rows per micro-batch per device; None = batch_size."""


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay."""

    lr: float = 1e-4
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Cosine decays to lr * min_lr_ratio at the last step."""
    warmup_steps: int = 100
    """Linear warmup steps (optimizer steps, not micro-batches)."""
    schedule: str = "cosine"
    """cosine | constant (after warmup)."""
    weight_decay: float = 0.02
    """Decoupled weight decay; never applied to biases, norms, embeddings or query tokens."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this value (None: no clipping)."""


@dataclass
class EngineConfig:
    """How the model runs: one process, torchrun DDP or DeepSpeed; device and precision."""

    kind: str = "auto"
    """auto (ddp under torchrun with WORLD_SIZE > 1, else single) | single | ddp | deepspeed."""
    deepspeed_config: str | None = None
    """DeepSpeed JSON (e.g. train/deepspeed/zero2.json); batch, accumulation, clipping and precision are
    filled in from this config so the two can never disagree."""
    device: str = "auto"
    """auto (cuda when available) | cpu | cuda."""
    precision: str = "fp32"
    """fp32 | bf16 | fp16 (autocast; fp16 adds loss scaling)."""
    threads: int | None = None
    """torch CPU threads (fix it for bitwise-reproducible CPU runs); None = torch's default."""
    backend: str = "auto"
    """torch.distributed backend: auto (nccl on cuda, gloo on cpu) | nccl | gloo."""
    find_unused_parameters: bool = False
    """DDP: tolerate trainable parameters that get no gradient in a step."""


@dataclass
class ViCLIPTrainConfig:
    """The `viclip` recipe: contrastive (InfoNCE) training of the ViCLIP video and text encoders."""

    mask_ratio: float = 0.9
    """Fraction of patch tokens dropped per clip during training (the paper's 0.9)."""
    train_text: bool = True
    """Also train the text encoder (False: adapt the video side only)."""
    freeze_layers: int = 0
    """Keep the first N vision blocks (and the patch embedding) frozen."""
    tokenizer: str | None = None
    """CLIP BPE vocabulary file (`bpe_simple_vocab_16e6.txt.gz`); None = the bundled one."""
    gradient_checkpointing: bool = False
    """Non-reentrant activation checkpointing of every ViCLIP block (vision and text)."""
    cache_frames: bool = False
    """Decode every training clip once (all its frames, before training starts) and sample each epoch's
    frames from memory (`videochat.video.subsample`: the frames `read_clip` would return). For small sets
    of short clips that are read many times (the demo): memory = clips x frames x H x W x 3 bytes in every
    process that holds the dataset (each rank; each DataLoader worker under spawn). A window with a frame
    that does not decode (a truncated file) is a bad sample in every epoch."""
    output_name: str = "viclip.pth"
    """File written at the end in the released layout `{"model": state_dict}` (load via
    `model.viclip_checkpoint`)."""


@dataclass
class TrainConfig:
    """One training run. Paths are relative to the working directory."""

    recipe: str = "instruct"
    """align | instruct | viclip."""
    output_dir: str = "runs/default"
    """Run folder: checkpoints/, metrics.jsonl, tb/, loss.png, config.yaml."""
    builder: str = "config"
    """How the chat model is built: config (`VideoChatModel.from_config(model)`) | tiny (`videochat_tiny()`,
    random, for tests and CPU smoke runs)."""
    model: VideoChatConfig = field(default_factory=VideoChatConfig)
    """The chat model (ignored by the tiny builder except `lora` and `llm.load_in_4bit`)."""
    model_seed: int = 0
    """Seed for randomly initialised parts (tiny models, zero-initialised extras); stages of one pipeline must
    share it so a later stage rebuilds the same base."""
    init_from: str | None = None
    """A previous stage's checkpoint (`.../checkpoints/step-N`) or export folder: its trained weights
    (vision LayerNorm, projector, LoRA when present) are loaded before training starts."""
    train_projector: bool = True
    """instruct: also train the vision LayerNorm and the projector (VideoChat2 stage 3 does)."""
    seed: int = 0
    """Seed of data order, dropout and frame sampling (saved with every checkpoint)."""
    batch_size: int = 1
    """Samples per device per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (global batch = batch_size * grad_accum * world size)."""
    max_steps: int | None = None
    """Optimizer steps to run; None = `epochs` passes over the data."""
    epochs: int = 1
    """Passes over the data when max_steps is None."""
    save_every: int = 500
    """Write a checkpoint every N optimizer steps (and always at the end)."""
    keep_last: int = 3
    """Checkpoints kept (older ones are deleted after a new one is complete)."""
    eval_every: int = 500
    """Validation loss every N steps (0: only at the end)."""
    log_every: int = 10
    """Write metrics every N steps."""
    resume: str = "auto"
    """auto (continue from the newest checkpoint in output_dir if any) | never | a checkpoint folder."""
    tensorboard: bool = True
    """Also write TensorBoard event files under output_dir/tb."""
    progress: bool = True
    """Show a tqdm progress bar (main process only)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Sample data."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and schedule."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """Process / device / precision setup."""
    viclip: ViCLIPTrainConfig = field(default_factory=ViCLIPTrainConfig)
    """viclip recipe settings."""

    def check(self) -> None:
        """Validate what needs no model or data; raises ConfigError with the reason and the fix."""
        if self.recipe not in RECIPES:
            raise ConfigError(f"recipe: {self.recipe!r} is not one of {', '.join(RECIPES)}")
        if self.builder not in ("config", "tiny"):
            raise ConfigError(f"builder: {self.builder!r} is not config | tiny")
        if self.engine.kind not in ENGINES:
            raise ConfigError(f"engine.kind: {self.engine.kind!r} is not one of {', '.join(ENGINES)}")
        if self.engine.precision not in PRECISIONS:
            raise ConfigError(f"engine.precision: {self.engine.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.optim.schedule not in ("cosine", "constant"):
            raise ConfigError(f"optim.schedule: {self.optim.schedule!r} is not cosine | constant")
        for name in ("batch_size", "grad_accum", "save_every", "keep_last", "log_every", "epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps: must be >= 1 (or null for epochs), got {self.max_steps}")
        if not 0.0 <= self.viclip.mask_ratio < 1.0:
            raise ConfigError(f"viclip.mask_ratio: must be in [0, 1), got {self.viclip.mask_ratio}")
        if self.data.path is None:
            raise ConfigError("data.path: no sample set given (a folder written by `videochat data build`)")
        if self.recipe == "align" and self.model.lora.enabled:
            raise ConfigError("model.lora.enabled: the align recipe keeps the LLM frozen; use recipe=instruct for LoRA")
        if self.model.llm.load_in_4bit and not self.model.lora.enabled:
            raise ConfigError("model.llm.load_in_4bit (QLoRA) needs model.lora.enabled=true: 4-bit weights cannot be trained")
        if self.engine.kind == "deepspeed" and not self.engine.deepspeed_config:
            raise ConfigError("engine.deepspeed_config: engine.kind=deepspeed needs a JSON, e.g. train/deepspeed/zero2.json")
        self._check_packing()
        if self.resume not in ("auto", "never") and not Path(self.resume).is_dir():
            raise ConfigError(f"resume: {self.resume!r} is neither auto, never nor a checkpoint folder")

    def _check_packing(self) -> None:
        d = self.data
        if d.packing_max_tokens is not None and d.packing_max_tokens < 1:
            raise ConfigError(f"data.packing_max_tokens: must be >= 1 (or null for data.max_length), got "
                              f"{d.packing_max_tokens}")
        if d.packing_rows is not None and d.packing_rows < 1:
            raise ConfigError(f"data.packing_rows: must be >= 1 (or null for batch_size), got {d.packing_rows}")
        if not d.packing:
            return
        if self.recipe == "viclip":
            raise ConfigError("data.packing: the viclip recipe trains on (clip, caption) pairs, not token sequences; "
                              "packing is for the align and instruct recipes (set data.packing=false)")
        if d.packing_max_tokens is None and d.max_length is None:
            raise ConfigError("data.packing needs a row length: set data.packing_max_tokens (or data.max_length)")
        if d.max_length is not None and d.packing_max_tokens is not None and d.max_length > d.packing_max_tokens:
            raise ConfigError(f"data.max_length={d.max_length} > data.packing_max_tokens={d.packing_max_tokens}: a "
                              f"sample could not fit a packed row; lower data.max_length or raise packing_max_tokens")

    def packing_shape(self) -> tuple[int, int]:
        """(tokens per packed row, rows per micro-batch) with the defaults filled in (data.packing only)."""
        tokens = self.data.packing_max_tokens if self.data.packing_max_tokens is not None else self.data.max_length
        if tokens is None:
            raise ConfigError("data.packing needs a row length: set data.packing_max_tokens (or data.max_length)")
        rows = self.data.packing_rows if self.data.packing_rows is not None else self.batch_size
        return int(tokens), int(rows)


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def expand_builder(data: dict) -> dict:
    """`builder: tiny` means the `model:` section overrides `videochat.builders.tiny_config()` instead of the
    7B-sized defaults; the expanded section is what checkpoints record (so rebuilding needs no builder)."""
    if data.get("builder") == "tiny":
        from videochat.builders import tiny_config

        tiny = to_dict(tiny_config())
        tiny["llm"]["hf_config"] = None  # merged below so YAML can override single entries
        merged = _deep_merge(tiny, data.get("model") or {})
        if merged["llm"].get("hf_config") is None and merged["llm"].get("path") is None:
            merged["llm"]["hf_config"] = to_dict(tiny_config())["llm"]["hf_config"]
        data = {**data, "model": merged}
    return data


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a train YAML with `key=value` overrides, strictly, and run the static checks."""
    data = read_yaml(path, overrides)
    try:
        cfg = from_dict(TrainConfig, expand_builder(data))
        cfg.check()
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None
    return cfg


def train_config_from_dict(data: dict) -> TrainConfig:
    """Rebuild a TrainConfig saved next to a checkpoint (strict)."""
    return from_dict(TrainConfig, expand_builder(data))


__all__ = [
    "ConfigError",
    "DataConfig",
    "EngineConfig",
    "OptimConfig",
    "TrainConfig",
    "ViCLIPTrainConfig",
    "load_train_config",
    "train_config_from_dict",
    "to_dict",
]
