"""Shared by the align and instruct recipes: sample sets -> `videochat.data.SampleDataset`, the collator and
the loss module (token cross-entropy from the chat model's logits, normalised per optimizer step).

With `data.packing` the collator is `videochat.packing.PackingCollator(order="in_order")` (rows planned by the
loop's `PackedBatchSampler`): batches carry `position_ids` [R, L] and no `attention_mask`, plus `num_samples` /
`num_tokens` for the throughput counts. The collator sets the first label of every sample to -100 (never a
target unpacked either), so `targets` / `num_items_in_batch` count the same tokens packed or padded."""

from __future__ import annotations

import torch
from torch import nn

from train.config import TrainConfig

IGNORE_INDEX = -100
BATCH_KEYS = ("input_ids", "attention_mask", "position_ids", "clip_frames", "clip_features",
              "num_clips")  # labels: used here


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
        kwargs = {k: batch[k] for k in BATCH_KEYS if batch.get(k) is not None}
        if "position_ids" in kwargs:  # packed rows: a KV cache (even empty) would disable the per-sample mask
            kwargs["use_cache"] = False
        out = self.model(**kwargs)
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
    """(samples, tokens) of a collated batch; tokens = non-padding sequence positions (clip slots included).
    Packed batches say so themselves (`num_samples`, `num_tokens`): their rows hold several samples."""
    samples = batch.get("num_samples")
    if samples is None:
        samples = batch["input_ids"].shape[0]
    tokens = batch["num_tokens"] if "num_tokens" in batch else batch["attention_mask"].sum()
    return int(samples), int(tokens)


def _load_samples(path: str, split: str) -> list[dict]:
    from data_tools.io import iter_samples

    samples = list(iter_samples(path, split=split))
    if not samples:
        raise ValueError(f"{path}: no samples in split {split!r}")
    return samples


def chat_datasets(cfg: TrainConfig, model) -> tuple:
    """(train dataset, val dataset | None, collate, lengths | None) for a chat recipe. Lengths are given when
    batches are length-grouped or packed (the packing sampler plans rows from them)."""
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
    if d.packing:
        from videochat.packing import PackingCollator

        max_tokens, _ = cfg.packing_shape()
        collate = PackingCollator(pad, max_tokens=max_tokens, order="in_order")
    else:
        collate = Collator(pad)
    lengths = list(train.lengths()) if (d.group_by_length or d.packing) else None
    return train, val, collate, lengths
