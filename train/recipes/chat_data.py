"""Shared by the align and instruct recipes: sample sets -> `videochat.data.SampleDataset`, the collator and
the loss module (the chat model's own forward with labels)."""

from __future__ import annotations

import torch
from torch import nn

from train.config import TrainConfig

BATCH_KEYS = ("input_ids", "attention_mask", "labels", "clip_frames", "clip_features", "num_clips")


class ChatLoss(nn.Module):
    """forward(batch) -> the LLM's mean token cross-entropy over assistant tokens (labels != -100)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        out = self.model(**{k: batch[k] for k in BATCH_KEYS if batch.get(k) is not None})
        return out.loss


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
