"""Shared by the align and instruct recipes: sample sets -> `videochat.data.SampleDataset`, the collator and
the loss module (token cross-entropy from the chat model's logits, normalised per optimizer step)."""

from __future__ import annotations

import torch
from torch import nn

from train.config import TrainConfig

IGNORE_INDEX = -100
BATCH_KEYS = ("input_ids", "attention_mask", "clip_frames", "clip_features", "num_clips")  # labels: used here


class ChatLoss(nn.Module):
    """forward(batch) -> token cross-entropy over assistant tokens (labels != -100, shifted by one), summed and
    divided by `batch["num_items_in_batch"]` (the loop's count of label tokens in the whole accumulation window
    over all ranks) when given, else by this batch's own count (the plain token mean).

    The loss is computed here from the logits (fp32) rather than by the LLM, so the normalisation never depends
    on whether a given HF model forwards `num_items_in_batch` to its loss: every optimizer step weighs every
    assistant token the same, however the window is split into micro-batches and ranks (as transformers'
    Trainer does with `num_items_in_batch`)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        out = self.model(**{k: batch[k] for k in BATCH_KEYS if batch.get(k) is not None})
        logits = out.logits  # [B, L, V]
        labels = batch["labels"].to(logits.device)  # [B, L]
        # position t predicts token t+1: pad labels on the right instead of slicing a copy of the logits
        target = nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
        total = nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                                            ignore_index=IGNORE_INDEX, reduction="sum")
        n = batch.get("num_items_in_batch")
        if n is None:
            n = (target != IGNORE_INDEX).sum().clamp(min=1)
        return total / n


def targets(batch: dict) -> int:
    """Label tokens of a collated batch that enter the loss (after the shift by one); from CPU tensors."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def count(batch: dict) -> tuple[int, int]:
    """(samples, tokens) of a collated batch; tokens = non-padding sequence positions (clip slots included)."""
    return int(batch["input_ids"].shape[0]), int(batch["attention_mask"].sum())


def _load_samples(path: str, split: str) -> list[dict]:
    from data_tools.io import iter_samples

    samples = list(iter_samples(path, split=split))
    if not samples:
        raise ValueError(f"{path}: no samples in split {split!r}")
    return samples


def chat_datasets(cfg: TrainConfig, model) -> tuple:
    """(train dataset, val dataset | None, collate, lengths | None) for a chat recipe."""
    from videochat.data import Collator, SampleDataset

    d = cfg.data

    def make(path: str, split: str, sampling: str):
        _load_samples(path, split)  # fail early with a clear message on an empty / missing split
        return SampleDataset(
            path, model.tokenizer, model.config, video_root=d.video_root, sampling=sampling,
            seed=cfg.seed, feature_cache=d.feature_cache, max_length=d.max_length,
            max_bad_fraction=d.max_bad_fraction, split=split,
        )

    train = make(d.path, d.train_split, "rand")
    val = None
    if d.val_split:
        try:
            val = make(d.val_path or d.path, d.val_split, "middle")
        except (ValueError, FileNotFoundError) as e:
            print(f"[train] no validation data ({e}); validation loss disabled", flush=True)
    pad = model.tokenizer.pad_token_id
    if pad is None:
        pad = model.tokenizer.eos_token_id
    collate = Collator(pad)
    lengths = list(train.lengths()) if cfg.data.group_by_length else None
    return train, val, collate, lengths
