"""Generation speed at batch 1: time to first token and decode tokens/s, ours vs plain `llm.generate`.

    .venv/bin/python benchmarks/bench_generate.py                       # tiny random model, CPU
    .venv/bin/python benchmarks/bench_generate.py --preset 7b --device cuda          # random LLaMA-7B shapes
    .venv/bin/python benchmarks/bench_generate.py --preset 7b --device cuda --cache static
    .venv/bin/python benchmarks/bench_generate.py --model DIR            # a saved / exported model folder

Prompt: one 8-frame clip (Q placeholder ids) + a short question (~24 tokens). Measured (median of
`--repeats` after one warm-up), all at batch 1, greedy, exactly `--new-tokens` tokens:
- `encode_ms`: frames -> clip embeddings (frozen ViCLIP + LayerNorm + Q-Former + Linear);
- `ttft_ms_frames`: `model.generate(clip_frames=...)` until the first streamed token (encode + prefill + 1);
- `ttft_ms_cached_clip`: the same with `clip_embeds` already computed (a question about an encoded clip);
- `decode_tok_s`: tokens after the first / time after the first;
- `plain_*`: `model.llm.generate(input_ids)` on the same LLM with a prompt of the same length (clip slots
  replaced by ordinary token ids): the floor our splicing adds to. `overhead_ttft` and `overhead_decode`
  are ours / plain on the cached-clip path (medians); `best_*` are best-of-repeats (robust to a shared
  CPU). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from transformers.generation.streamers import BaseStreamer  # noqa: E402


class TimingStreamer(BaseStreamer):
    """Records the wall time of every generated token (the first `put` is the prompt and is ignored)."""

    def __init__(self, sync):
        self.sync = sync
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value):
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.sync()
        self.times.append(time.perf_counter())

    def end(self):
        pass


def _build(args):
    from videochat.builders import videochat_7b, videochat_tiny
    from videochat.model import VideoChatModel

    if args.model:
        return VideoChatModel.from_pretrained(args.model, device=args.device)
    if args.preset == "7b":
        return videochat_7b(device=args.device, lora=args.lora, load_in_4bit=args.load_in_4bit,
                            attn_implementation=args.attn)
    return videochat_tiny(lora=args.lora, device=args.device)


def _prompt(model, question_tokens: int, seed: int = 0):
    q = model.tokens_per_clip
    vocab = model.placeholder_id if model.tokenizer is None else len(model.tokenizer)
    g = torch.Generator().manual_seed(seed)
    if model.tokenizer is not None:
        from videochat.conversation import render

        msgs = [{"role": "user", "content": [{"type": "clip", "clip": 0},
                                             {"type": "text", "text": "What happens in the video? Describe it."}]}]
        ids = render(msgs, model.tokenizer, template=model.config.template, tokens_per_clip=q,
                     placeholder_token=model.config.placeholder_token, add_generation_prompt=True).input_ids
    else:  # random weights without a tokenizer: bos + clip slot + random question ids
        ids = [1] + [model.placeholder_id] * q + torch.randint(3, vocab - 1, (question_tokens,), generator=g).tolist()
    ids = torch.tensor([ids])
    plain = ids.clone()
    # ordinary ids (not special, not the placeholder) in place of the clip slot
    allowed = torch.tensor([i for i in range(4, vocab) if i != model.placeholder_id])
    slots = ids == model.placeholder_id
    plain[slots] = allowed[torch.randint(0, len(allowed), (int(slots.sum()),), generator=g)]
    return ids, plain


def _timed(fn, sync, n_new):
    streamer = TimingStreamer(sync)
    sync()
    t0 = time.perf_counter()
    out = fn(streamer)
    sync()
    t1 = time.perf_counter()
    if len(streamer.times) != n_new:
        raise RuntimeError(f"expected {n_new} streamed tokens, got {len(streamer.times)} (out {tuple(out.shape)})")
    ttft = streamer.times[0] - t0
    decode = (n_new - 1) / max(streamer.times[-1] - streamer.times[0], 1e-9)
    return ttft, decode, t1 - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["tiny", "7b"], default="tiny")
    ap.add_argument("--model", help="a VideoChatModel folder instead of a preset")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--question-tokens", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lora", action="store_true", help="with (unmerged) LoRA adapters")
    ap.add_argument("--load-in-4bit", action="store_true")
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument("--cache", choices=["dynamic", "static"], default="dynamic",
                    help="static: transformers' StaticCache (+ torch.compile of the decode step where supported)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    t = time.perf_counter()
    model = _build(args).eval()
    build_s = time.perf_counter() - t
    ids, plain = _prompt(model, args.question_tokens)
    ids, plain = ids.to(device), plain.to(device)
    n = args.new_tokens
    frames = torch.randn(1, model.config.num_frames, 3, model.config.viclip.image_size,
                         model.config.viclip.image_size, device=device)
    gen = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False)
    if model.tokenizer is not None:
        gen["stop_strings"] = []
    if args.cache == "static":
        gen["cache_implementation"] = "static"
    pad = model.tokenizer.pad_token_id if model.tokenizer is not None else model.llm.config.pad_token_id

    res: dict[str, list[float]] = {k: [] for k in ("encode", "ttft_f", "ttft_c", "dec_c", "ttft_p", "dec_p")}
    with torch.inference_mode():
        for rep in range(args.repeats + 1):  # the first round warms up kernels / compilation
            sync()
            t = time.perf_counter()
            embeds = model.encode_clips(frames)
            sync()
            encode = time.perf_counter() - t
            ttft_f, _, _ = _timed(lambda s: model.generate(ids, clip_frames=frames, streamer=s, **gen), sync, n)
            ttft_c, dec_c, _ = _timed(lambda s: model.generate(ids, clip_embeds=embeds, streamer=s, **gen), sync, n)
            plain_kw = {k: v for k, v in gen.items() if k != "stop_strings"}
            ttft_p, dec_p, _ = _timed(lambda s: model.llm.generate(
                plain, attention_mask=torch.ones_like(plain), streamer=s, pad_token_id=pad, **plain_kw), sync, n)
            if rep:
                for k, v in zip(res, (encode, ttft_f, ttft_c, dec_c, ttft_p, dec_p)):
                    res[k].append(v)
    med = {k: statistics.median(v) for k, v in res.items()}
    out = {
        "benchmark": "generate",
        "preset": args.model or args.preset,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "dtype": str(model.llm.dtype),
        "lora": model.has_lora,
        "cache": args.cache,
        "prompt_tokens": int(ids.shape[1]),
        "tokens_per_clip": model.tokens_per_clip,
        "new_tokens": n,
        "repeats": args.repeats,
        "build_s": round(build_s, 2),
        "encode_ms": round(1e3 * med["encode"], 2),
        "ttft_ms_frames": round(1e3 * med["ttft_f"], 2),
        "ttft_ms_cached_clip": round(1e3 * med["ttft_c"], 2),
        "decode_tok_s": round(med["dec_c"], 1),
        "plain_ttft_ms": round(1e3 * med["ttft_p"], 2),
        "plain_decode_tok_s": round(med["dec_p"], 1),
        "overhead_ttft": round(med["ttft_c"] / med["ttft_p"], 3),
        "overhead_decode": round(med["dec_p"] / med["dec_c"], 3),
        # best-of-repeats: robust to other processes sharing the CPU
        "best_ttft_ms_cached_clip": round(1e3 * min(res["ttft_c"]), 2),
        "best_plain_ttft_ms": round(1e3 * min(res["ttft_p"]), 2),
        "best_decode_tok_s": round(max(res["dec_c"]), 1),
        "best_plain_decode_tok_s": round(max(res["dec_p"]), 1),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
