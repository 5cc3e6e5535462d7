"""Padded vs packed training batches: padding fraction and tokens/s; prints one JSON object.

Samples: fake InternVid annotations (`data_tools.fakedata`, with ASR) -> `videochat data build` formats a/b/c
(interleaved, 1-8 clips per sample: lengths vary a lot) -> rendered with the model's template and tokenizer,
`--tokens-per-clip` placeholder ids per clip (default 96, the 7B setting), samples longer than `--max-tokens`
dropped as `data.max_length` would. Clips enter as random cached ViCLIP features (the feature-cache path; the
frozen encoder costs the same in every mode). Model: `videochat_tiny` with LoRA, train mode, AdamW.

Modes over the same samples, `--batch-size` samples per optimizer step:
- `padded_random`: `Collator`, shuffled order (group_by_length off);
- `padded_grouped`: `Collator`, `LengthGroupedSampler` order (the trainer's default);
- `packed`: `PackingCollator(max_tokens)` on the shuffled order (first-fit decreasing inside each batch);
- `packed_budget`: `PackedBatchSampler(lengths, max_tokens, --rows)` + `PackingCollator(order="in_order")`:
  batches of `--rows` full rows (first-fit decreasing over the whole pool); samples per step vary, tokens per
  step do not.
  Covers the samples its full batches hold (`real_tokens`); tokens/s is the comparable figure.
Each mode: one warm-up step, then forward + backward + step over every batch, `--repeats` times interleaved;
median epoch time. tokens/s counts real (non-padding) tokens, clip slots included.

    .venv/bin/python benchmarks/bench_packing.py                 # CPU, tiny model
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_samples(n_rows: int, seed: int) -> list[dict]:
    """Interleaved samples from the real builder over fake annotations (no videos needed to render)."""
    from data_tools.builder import BuildConfig, build
    from data_tools.fakedata import write_jsonl
    from data_tools.io import iter_samples

    with tempfile.TemporaryDirectory() as d:
        ann = os.path.join(d, "ann.jsonl")
        write_jsonl(ann, n_rows, seed=seed, asr=True)
        build(BuildConfig(annotations=[ann], out=os.path.join(d, "out"), workers=1, progress=False, seed=seed))
        return list(iter_samples(os.path.join(d, "out"), split="train"))


def render_items(model, samples: list[dict], n: int, max_tokens: int, seed: int) -> tuple[list[dict], int]:
    """Items as `SampleDataset` makes them (clip_features path); returns (items, dropped as too long)."""
    from videochat.conversation import ConversationTooLong, render

    rng = np.random.default_rng(seed)
    cfg = model.config
    s_tok = 1 + cfg.num_frames * (cfg.viclip.image_size // cfg.viclip.patch_size) ** 2
    items, dropped = [], 0
    for i in rng.permutation(len(samples)):
        if len(items) == n:
            break
        x = samples[int(i)]
        try:
            r = render(x["messages"], model.tokenizer, template=cfg.template, tokens_per_clip=model.tokens_per_clip,
                       placeholder_token=cfg.placeholder_token, max_length=max_tokens, num_clips=len(x["clips"]))
        except ConversationTooLong:
            dropped += 1
            continue
        k = len(r.clip_slots)
        feats = torch.from_numpy(rng.standard_normal((k, s_tok, cfg.viclip.width), dtype=np.float32)).half()
        items.append({"input_ids": torch.tensor(r.input_ids), "labels": torch.tensor(r.labels),
                      "clip_features": feats, "num_clips": k, "id": x["id"]})
    return items, dropped


def batches(items: list[dict], order: list[int], batch_size: int, collate) -> list[dict]:
    return [collate([items[i] for i in order[j : j + batch_size]]) for j in range(0, len(order), batch_size)]


def step(model, opt, b: dict) -> None:
    keys = ("input_ids", "attention_mask", "labels", "clip_features", "num_clips", "position_ids")
    loss = model(**{k: b[k] for k in keys if b.get(k) is not None}).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def stats(bs: list[dict]) -> dict:
    from videochat.packing import padding_fraction

    real = sum(b["num_tokens"] if "num_tokens" in b else int(b["attention_mask"].sum()) for b in bs)
    total = sum(b["input_ids"].numel() for b in bs)
    n = sum(b.get("num_samples", b["input_ids"].shape[0]) for b in bs)
    return {"steps": len(bs), "samples": n, "rows": sum(b["input_ids"].shape[0] for b in bs), "real_tokens": real,
            "positions": total, "padding_fraction": round(1 - real / total, 4),
            "mean_batch_padding_fraction": round(statistics.mean(padding_fraction(b) for b in bs), 4),
            "max_row_length": max(b["input_ids"].shape[1] for b in bs)}


def llm_7b_flops(bs: list[dict], attention: str) -> float:
    """Estimated training FLOPs of the LLaMA-7B LLM part for these batch shapes (reported per real token;
    frozen base + LoRA: forward + activation gradients = 4 N per position) plus attention (QK^T and AV: 4 D
    per query-key pair forward, twice that backward: 12 * layers * D). `dense_mask`: sdpa with an explicit
    mask computes every [L, L] pair of a row (padded or packed; no causal skipping); `varlen`: flash-attention
    varlen computes the causal half within each sample (packed) or within the row's real tokens (padded).
    A model, not a measurement: the figure the CPU tiny model cannot show."""
    n_params, layers, d = 6.74e9, 32, 4096
    total = 0.0
    for b in bs:
        r, length = b["input_ids"].shape
        total += 4 * n_params * r * length
        if attention == "dense_mask":
            pairs = r * length * length
        elif "seq_lens" in b:
            pairs = sum(n * n / 2 for row in b["seq_lens"] for n in row)
        else:
            pairs = float((b["attention_mask"].sum(1).double() ** 2 / 2).sum())
        total += 12 * layers * d * pairs
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=64, help="samples per epoch")
    ap.add_argument("--batch-size", type=int, default=8, help="samples per optimizer step")
    ap.add_argument("--max-tokens", type=int, default=2048, help="packed row length (and data.max_length)")
    ap.add_argument("--tokens-per-clip", type=int, default=96, help="placeholder ids per clip (7B: 32 + 64)")
    ap.add_argument("--rows", type=int, default=4, help="packed_budget: rows of max_tokens per step")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from videochat.builders import videochat_tiny
    from videochat.collate import Collator, LengthGroupedSampler
    from videochat.packing import PackedBatchSampler, PackingCollator

    model = videochat_tiny(lora=True, **{"qformer.num_extra_query_tokens": args.tokens_per_clip - 8}).train()
    pad = model.tokenizer.pad_token_id
    samples = build_samples(max(2000, args.samples * 30), args.seed)
    items, dropped = render_items(model, samples, args.samples, args.max_tokens, args.seed)
    lengths = [len(it["input_ids"]) for it in items]
    order = list(np.random.default_rng(args.seed).permutation(len(items)))
    grouped = LengthGroupedSampler(lengths, args.batch_size, seed=args.seed, num_replicas=1, rank=0).indices()
    in_order = PackingCollator(pad, args.max_tokens, order="in_order")
    modes = {
        "padded_random": batches(items, order, args.batch_size, Collator(pad)),
        "padded_grouped": batches(items, grouped, args.batch_size, Collator(pad)),
        "packed": batches(items, order, args.batch_size, PackingCollator(pad, args.max_tokens)),
        "packed_budget": [in_order([items[i] for i in idx])
                          for idx in PackedBatchSampler(lengths, args.max_tokens, args.rows, seed=args.seed)],
    }
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    times: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    for m, bs in modes.items():
        step(model, opt, bs[0])  # warm-up (allocator, first-call costs)
    for _ in range(args.repeats):
        for m, bs in modes.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for b in bs:
                step(model, opt, b)
            times[m].append(time.perf_counter() - t0)
            cpu[m].append(time.process_time() - c0)
    out: dict = {"bench": "packing", "machine": f"{platform.machine()} CPU, torch threads {args.threads} "
                 f"(os.cpu_count()={os.cpu_count()}; cores shared with other jobs)", "torch": torch.__version__,
                 "model": f"videochat_tiny + LoRA, {model.tokens_per_clip} tokens per clip, attn "
                 f"{model.llm.config._attn_implementation}, fp32", "args": vars(args),
                 "samples": len(items), "dropped_too_long": dropped,
                 "length": {k: int(v) for k, v in zip(("min", "p10", "median", "p90", "max"),
                                                       np.percentile(lengths, [0, 10, 50, 90, 100]))},
                 "clips_per_sample_mean": round(statistics.mean(it["num_clips"] for it in items), 2)}
    for m, bs in modes.items():
        sec = statistics.median(times[m])
        s = stats(bs)
        csec = statistics.median(cpu[m])
        out[m] = {**s, "epoch_s": round(sec, 3), "tokens_per_s": round(s["real_tokens"] / sec, 1),
                  "samples_per_s": round(s["samples"] / sec, 3), "epoch_s_all": [round(t, 3) for t in times[m]],
                  "tokens_per_cpu_s": round(s["real_tokens"] / csec, 1),
                  "est_7b_flops_per_token": round(llm_7b_flops(bs, attention="dense_mask") / s["real_tokens"] / 1e9, 2),
                  "est_7b_flops_per_token_varlen": round(llm_7b_flops(bs, "varlen") / s["real_tokens"] / 1e9, 2)}
    for p in ("packed", "packed_budget"):
        for m in ("padded_random", "padded_grouped"):  # all per real token
            out[f"speedup_{p}_vs_{m}"] = {
                "tokens_per_s": round(out[p]["tokens_per_s"] / out[m]["tokens_per_s"], 3),
                "tokens_per_cpu_s": round(out[p]["tokens_per_cpu_s"] / out[m]["tokens_per_cpu_s"], 3),
                "est_7b_sdpa_mask": round(out[m]["est_7b_flops_per_token"] / out[p]["est_7b_flops_per_token"], 3),
                "est_7b_flash_varlen": round(out[m]["est_7b_flops_per_token_varlen"]
                                             / out[p]["est_7b_flops_per_token_varlen"], 3)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
