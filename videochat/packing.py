"""Training-time sequence packing: several rendered samples per row, no attention across samples.

Shape legend: B items (rendered samples) given to the collator, R packed rows (R <= B), L row length,
N clips in the batch, Q tokens per clip.

How attention stays inside each sample (transformers 5.x, checked in `masking_utils` and
`modeling_flash_attention_utils`):
- `position_ids` restart at 0 for every sample of a row. With `attention_mask=None` and no KV cache,
  `create_causal_mask` finds the sample boundaries from the position_ids (`find_packed_sequence_indices`:
  a new sample wherever the position does not grow by 1) and sdpa / eager / flex get a block-diagonal causal
  mask. A 2D attention mask or a cache (even an empty `DynamicCache`, made whenever `use_cache` is on)
  turns that detection off and samples would see each other, so `packed_llm_kwargs` (called by
  `VideoChatModel.forward`) refuses a 2D mask and forces `use_cache=False` for packed rows.
- flash-attention only infers boundaries from position_ids at batch size 1; for R > 1 rows
  `packed_llm_kwargs` passes `cu_seq_lens_q/k` + `max_length_q/k` (over the flattened [R*L] tokens), which
  selects `flash_attn_varlen_func`.
- RoPE uses the restarted position_ids, so each sample sees exactly the positions it has on its own.
- Labels: the first label of every sample is set to -100. Unpacked, a sample's first token is never a target
  (the LLM shifts labels by one); packed, the previous sample's last token would otherwise learn to predict it.
  The mean token loss of a packed batch therefore equals the padded batch's (same tokens, same count).
Padding at the end of a row is its own "sample" (position_ids 0, 1, ...), labels -100.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from videochat.collate import IGNORE_INDEX, _CLIP_KEYS

log = logging.getLogger(__name__)

__all__ = ["PackingCollator", "PackedBatchSampler", "pack_first_fit", "pack_in_order", "packed_llm_kwargs",
           "padding_fraction"]


def pack_first_fit(lengths: Sequence[int], max_tokens: int, oversize: str = "own_row") -> list[list[int]]:
    """First-fit decreasing: item indices per row, every row's total length <= `max_tokens`.

    Items are placed longest first (stable, so the result is a function of the input only) into the first
    row with room. An item longer than `max_tokens` gets a row to itself with `oversize="own_row"` (nothing is
    lost; the batch is wider) or raises `ValueError` with `oversize="error"`.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if oversize not in ("own_row", "error"):
        raise ValueError(f"oversize must be 'own_row' or 'error', got {oversize!r}")
    order = sorted(range(len(lengths)), key=lambda i: -int(lengths[i]))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = int(lengths[i])
        if n > max_tokens:
            if oversize == "error":
                raise ValueError(f"item {i} has {n} tokens > max_tokens={max_tokens}; raise packing max_tokens or "
                                 f"lower data.max_length to <= max_tokens")
            rows.append([i])
            room.append(0)
            continue
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(max_tokens - n)
    return rows


def pack_in_order(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Next-fit in the given order: a new row whenever the next item does not fit. For batches from
    `PackedBatchSampler` (items come row by row): never more rows than the sampler planned (greedy cutting of a
    sequence is optimal among contiguous cuts), fewer when planned rows happen to merge. Oversize items: own row."""
    rows: list[list[int]] = []
    used = max_tokens + 1
    for i, n in enumerate(lengths):
        if rows and used + int(n) <= max_tokens:
            rows[-1].append(i)
            used += int(n)
        else:
            rows.append([i])
            used = int(n)
    return rows


class PackingCollator:
    """Pack items from `SampleDataset` into rows of at most `max_tokens` tokens (first-fit decreasing).

    Returns `{"input_ids" [R, L], "labels" [R, L], "position_ids" [R, L] (restarting at 0 per sample),
    "clip_frames" [N, T, 3, S, S] | "clip_features" [N, S_tok, C] (row-major: rows in order, samples in row
    order, clips in order of appearance — the order `VideoChatModel` scatters them), "num_clips" [R] (clips per
    row), "seq_lens" (list per row of sample lengths), "ids" (sample ids in packed order), "skipped",
    "num_samples" B, "num_tokens" (non-padding tokens)}`. No `attention_mask`: the LLM must see
    `attention_mask=None` to build the per-sample block mask (see the module docstring).
    `None` items are left out; a batch of only `None` collates to `None`.
    `order="first_fit"` packs the batch first-fit decreasing; `order="in_order"` keeps the items' order
    (next-fit), for batches from `PackedBatchSampler`, whose rows it then reproduces.
    """

    def __init__(self, pad_id: int, max_tokens: int, pad_to_multiple_of: int | None = None,
                 oversize: str = "own_row", pad_to_max: bool = False, order: str = "first_fit"):
        if order not in ("first_fit", "in_order"):
            raise ValueError(f"order must be 'first_fit' or 'in_order', got {order!r}")
        if pad_id is None:
            raise ValueError("PackingCollator needs a pad id (tokenizer.pad_token_id, or eos)")
        pack_first_fit([], max_tokens, oversize)  # argument checks
        self.pad_id, self.max_tokens, self.multiple = int(pad_id), int(max_tokens), pad_to_multiple_of
        self.oversize, self.pad_to_max, self.order = oversize, bool(pad_to_max), order
        self._warned = False

    def __call__(self, items: Sequence[dict | None]) -> dict[str, Any] | None:
        items = [it for it in items if it is not None]
        if not items:
            return None
        lengths = [len(it["input_ids"]) for it in items]
        if self.order == "in_order":
            rows = pack_in_order(lengths, self.max_tokens)
            if self.oversize == "error":
                pack_first_fit(lengths, self.max_tokens, "error")  # same check and message
        else:
            rows = pack_first_fit(lengths, self.max_tokens, self.oversize)
        widest = max(sum(lengths[i] for i in row) for row in rows)
        if widest > self.max_tokens and not self._warned:
            log.warning("a sample of %d tokens is longer than packing max_tokens=%d: packed alone in a wider row "
                        "(set data.max_length <= max_tokens to avoid this)", widest, self.max_tokens)
            self._warned = True
        length = max(widest, self.max_tokens) if self.pad_to_max else widest
        if self.multiple:
            length = int(math.ceil(length / self.multiple) * self.multiple)
        n_rows = len(rows)
        ids = torch.full((n_rows, length), self.pad_id, dtype=torch.long)
        labels = torch.full((n_rows, length), IGNORE_INDEX, dtype=torch.long)
        pos = torch.zeros((n_rows, length), dtype=torch.long)
        keys = {k for it in items for k in _CLIP_KEYS if k in it}
        if len(keys) > 1:
            raise ValueError("a batch mixes decoded frames and cached features; use one kind per dataset")
        key = keys.pop() if keys else None
        clips, num_clips, seq_lens, order = [], [], [], []
        for r, row in enumerate(rows):
            at, row_clips = 0, 0
            for i in row:
                it, n = items[i], lengths[i]
                ids[r, at : at + n] = torch.as_tensor(it["input_ids"], dtype=torch.long)
                lab = torch.as_tensor(it["labels"], dtype=torch.long).clone()
                lab[:1] = IGNORE_INDEX  # never a target unpacked (shifted away); packed it would follow another sample
                labels[r, at : at + n] = lab
                pos[r, at : at + n] = torch.arange(n)
                if key is not None and key in it and it[key].shape[0] > 0:
                    clips.append(it[key])
                row_clips += int(it.get("num_clips", 0))
                at += n
            pos[r, at:] = torch.arange(length - at)  # padding: a segment of its own
            num_clips.append(row_clips)
            seq_lens.append([lengths[i] for i in row])
            order += row
        batch: dict[str, Any] = {"input_ids": ids, "labels": labels, "position_ids": pos}
        if clips:
            batch[key] = torch.cat(clips, dim=0)
        batch["num_clips"] = torch.tensor(num_clips, dtype=torch.long)
        batch["seq_lens"] = seq_lens
        batch["ids"] = [items[i].get("id") for i in order]
        batch["skipped"] = [s for it in items for s in it.get("skipped", [])]
        batch["num_samples"] = len(items)
        batch["num_tokens"] = int(sum(lengths))
        return batch


class PackedBatchSampler:
    """Batch sampler whose batches fill `rows` rows of `max_tokens` per rank (for `PackingCollator`).

    Per epoch, a pure function of (seed, epoch, lengths, world size): shuffle, cut into pools of `pool_size`
    samples, pack each pool first-fit decreasing into rows of `max_tokens` (by `lengths`), shuffle the rows,
    cut them into global batches of `rows * world_size` rows; rank r takes rows [r*rows, (r+1)*rows) of each.
    The tail that cannot fill a global batch is dropped (the next epoch's permutation covers it). Samples per
    batch vary; rows per batch do not (memory per step is about `rows * max_tokens` tokens).
    With estimated lengths (`SampleDataset.lengths()` is approximate) the collator re-packs with the real
    lengths (use `PackingCollator(order="in_order")`: with exact lengths never more rows than planned), so a
    batch can come out a row longer with estimates; `fill` < 1 plans rows with headroom.
    Same interface as `train.sampler.ResumableBatchSampler`: `len()`, `set_position(epoch, batch)`, iteration
    yields index lists; `global_batches(epoch)` lists every rank's rows.
    """

    def __init__(self, lengths, max_tokens: int, rows: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 pool_size: int = 4096, fill: float = 1.0):
        if rows < 1 or pool_size < 1 or not 0 < fill <= 1:
            raise ValueError(f"need rows >= 1, pool_size >= 1, 0 < fill <= 1; got {rows}, {pool_size}, {fill}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.max_tokens, self.budget, self.rows = int(max_tokens), max(1, int(max_tokens * fill)), int(rows)
        self.seed, self.rank, self.world_size, self.pool = int(seed), int(rank), int(world_size), int(pool_size)
        self.epoch, self.start_batch = 0, 0
        self._plan: tuple[int, list[list[list[int]]]] | None = None
        if len(self) < 1:
            raise ValueError(f"{len(self.lengths)} samples of these lengths fill fewer than {rows} x {world_size} rows "
                             f"of {max_tokens} tokens; lower rows or add data")

    def global_batches(self, epoch: int) -> list[list[list[int]]]:
        """The epoch's global batches: each a list of `rows * world_size` rows (lists of sample indices)."""
        if self._plan is not None and self._plan[0] == epoch:
            return self._plan[1]
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(len(self.lengths))
        rows: list[list[int]] = []
        for p in range(0, len(perm), self.pool):
            chunk = perm[p : p + self.pool]
            rows += [[int(chunk[i]) for i in r] for r in pack_first_fit(self.lengths[chunk].tolist(), self.budget)]
        rows = [rows[i] for i in rng.permutation(len(rows))]
        g = self.rows * self.world_size
        batches = [rows[i * g : (i + 1) * g] for i in range(len(rows) // g)]
        self._plan = (epoch, batches)
        return batches

    def __len__(self) -> int:
        """Batches per epoch (per rank; equal on every rank)."""
        return len(self.global_batches(self.epoch))

    def set_position(self, epoch: int, batch: int) -> None:
        """Continue at batch `batch` of epoch `epoch` (from a checkpoint)."""
        self.epoch, self.start_batch = int(epoch), int(batch)

    def __iter__(self):
        for b in self.global_batches(self.epoch)[self.start_batch :]:
            yield [i for row in b[self.rank * self.rows : (self.rank + 1) * self.rows] for i in row]
        self.start_batch = 0


def padding_fraction(batch: dict[str, Any]) -> float:
    """Share of the [R, L] positions of a collated batch (padded or packed) that are padding."""
    total = batch["input_ids"].numel()
    real = batch["num_tokens"] if "num_tokens" in batch else int(batch["attention_mask"].sum())
    return 1.0 - real / total if total else 0.0


def packed_llm_kwargs(llm_config: Any, attention_mask: torch.Tensor | None,
                      llm_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The LLM keyword arguments for a forward pass, made safe for packed rows.

    Rows are packed when `llm_kwargs["position_ids"]` [R, L] restarts inside a row. Then: a 2D
    `attention_mask` raises (transformers would ignore the position_ids and let samples attend to each other),
    a KV cache raises, `use_cache` is forced off (an empty cache also disables the detection), and for
    flash-attention the varlen boundaries `cu_seq_lens_q/k`, `max_length_q/k` are added.
    Unpacked calls get `llm_kwargs` back unchanged.
    """
    position_ids = llm_kwargs.get("position_ids")
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[-1] < 2:
        return llm_kwargs
    from transformers.masking_utils import find_packed_sequence_indices

    if find_packed_sequence_indices(position_ids) is None:
        return llm_kwargs
    if attention_mask is not None:
        raise ValueError("packed rows (position_ids restart inside a row) need attention_mask=None: with a 2D mask "
                         "transformers ignores the sample boundaries and samples would attend to each other")
    if llm_kwargs.get("use_cache") or llm_kwargs.get("past_key_values") is not None:
        raise ValueError("packed rows are for training: use_cache / past_key_values disable the per-sample mask")
    out = dict(llm_kwargs, use_cache=False)
    impl = str(getattr(llm_config, "_attn_implementation", None) or "")
    if "flash" in impl and "cu_seq_lens_q" not in out:
        from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

        (cu_q, cu_k), (max_q, max_k) = prepare_fa_kwargs_from_position_ids(position_ids)
        out.update(cu_seq_lens_q=cu_q, cu_seq_lens_k=cu_k, max_length_q=int(max_q), max_length_k=int(max_k))
    return out
