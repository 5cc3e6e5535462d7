"""Training recipes: each builds the model with the right parts frozen, the data, and the loss.

A recipe is a function `build(cfg: TrainConfig, dist: Dist) -> RecipeParts`; the shared loop
(`train.loop.run`) does everything else (engine, optimizer, schedule, checkpoints, logging, resume).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.utils.data import Dataset


@dataclass
class RecipeParts:
    """What a recipe hands to the loop."""

    model: nn.Module
    """The model whose trainable parameters are trained and checkpointed (names in trainable.safetensors)."""
    step_module: nn.Module
    """`forward(batch) -> scalar loss`; holds `model` as a submodule (what DDP / DeepSpeed wrap). The loss is the
    *sum* of the batch's per-target losses divided by `batch["num_items_in_batch"]` when the loop sets it (the
    number of targets in the whole optimizer step, all micro-batches and ranks: see `targets`), else by the
    batch's own target count (a plain mean; what a bare loop or an evaluation of one batch gets)."""
    train_data: Dataset
    """Map-style training dataset."""
    collate: Callable[[list], dict]
    """Batch builder for DataLoader."""
    val_data: Dataset | None = None
    """Validation dataset (None: no validation loss)."""
    lengths: list[int] | None = None
    """Per-sample lengths for length-grouped batching."""
    parameter_table: list[tuple[str, int, int]] = field(default_factory=list)
    """(module, trainable, total) rows printed before training."""
    count: Callable[[dict], tuple[int, int]] = lambda batch: (0, 0)
    """(samples, tokens) in a collated batch, for samples/s and tokens/s."""
    targets: Callable[[dict], int] = lambda batch: 1
    """How many loss targets a collated batch holds (label tokens for the chat recipes, samples for viclip),
    from CPU tensors. The loop sums it over the optimizer step's micro-batches and ranks into
    `num_items_in_batch`, so a step's loss (and gradient) does not depend on how it is split."""
    must_be_frozen: Callable[[str], bool] = lambda name: False
    """Parameter names the recipe promises to keep frozen: after the first backward the loop asserts each has
    requires_grad=False and no gradient (a freezing mistake stops the run before it wastes a GPU-day)."""
    finalize: Callable[[nn.Module, Any], None] | None = None
    """Called on the main process after the last checkpoint with (model, output_dir)."""


def get_recipe(name: str) -> Callable:
    """The `build` function of recipe `name` (imported lazily)."""
    return importlib.import_module(f"train.recipes.{name}").build
