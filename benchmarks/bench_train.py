"""Training throughput of the `instruct` recipe; prints one JSON object.

CPU (default, `--preset tiny`): the tiny model (LoRA) on a generated sample set of real mp4 clips, run through
the real `train.loop.Trainer` (data loading, logging, freeze check included; one-time costs such as model
build, final checkpoint and plot excluded), and a bare `forward / backward / clip / step` loop over the same
model, sampler and DataLoader. Reports samples/s, tokens/s and the overhead ratio ours / bare (target <= 1.10).
Repeated `--repeats` times interleaved (bare, ours, bare, ours ...); medians of per-step times.

GPU (`--preset 7b`): random LLaMA-7B (videochat.builders.LLAMA_7B), ViCLIP-L/14, BERT-base Q-Former (96
queries), nothing downloaded; bf16 LoRA and 4-bit QLoRA (gradient checkpointing on), 8 frames, batch
`--batch-size`, `--text-tokens` text tokens + one clip; samples/s, tokens/s, MFU of the LLM part (model FLOPs
per token: 4 N_llm for a frozen base (forward + activation gradients, no weight gradients) + attention
4 * layers * L * D * 3, over the GPU's dense bf16 peak), peak memory (torch.cuda.max_memory_allocated).

    .venv/bin/python benchmarks/bench_train.py                 # CPU, tiny
    python benchmarks/bench_train.py --preset 7b --device cuda  # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ----------------------------------------------------------------------------------------------- CPU / tiny
def make_samples(root: Path, n: int) -> Path:
    """n caption samples over 4 short coloured-square mp4 clips (PyAV)."""
    import av
    import numpy as np

    colors = {"red": (220, 40, 40), "green": (40, 190, 70), "blue": (50, 90, 235), "yellow": (235, 215, 50)}
    for name, rgb in colors.items():
        with av.open(str(root / f"{name}.mp4"), "w") as c:
            s = c.add_stream("libx264", rate=8)
            s.width = s.height = 32
            s.pix_fmt = "yuv420p"
            for i in range(16):
                img = np.zeros((32, 32, 3), np.uint8)
                img[8:20, i:i + 8] = rgb
                for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(pkt)
            for pkt in s.encode():
                c.mux(pkt)
    names = list(colors)
    rows = []
    for i in range(n):
        color = names[i % 4]
        answer = f"a {color} square moves right" + " and keeps moving" * (i % 3)
        rows.append({"id": f"s{i}", "format": "caption", "videos": [{"video_id": color, "path": f"{color}.mp4"}],
                     "clips": [{"video": 0, "start": 0.0, "end": 2.0}],
                     "messages": [{"role": "user", "content": [{"type": "clip", "clip": 0},
                                                               {"type": "text", "text": "Describe the video."}]},
                                  {"role": "assistant", "content": [{"type": "text", "text": answer}]}]})
    (root / "train").mkdir(exist_ok=True)
    (root / "train" / "shard-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def tiny_config(work: Path, steps: int, batch: int, tag: str, threads: int = 1):
    from train.config import load_train_config

    return load_train_config(ROOT / "train" / "configs" / "instruct_tiny.yaml", [
        f"data.path={work}", f"data.video_root={work}", f"output_dir={work / tag}", f"max_steps={steps}",
        f"batch_size={batch}", "grad_accum=1", "save_every=1000000", "eval_every=0", "log_every=1",
        "progress=false", "tensorboard=false", "data.val_split=null", "resume=never",
        f"engine.threads={threads}",
    ])


def run_ours(cfg, warmup: int) -> tuple[list[float], int, int]:
    """Per-step seconds (after warmup), samples and tokens in those steps."""
    from train.loop import Trainer

    tr = Trainer(cfg)
    tokens_before = []
    orig = tr._train_step

    def counted():
        tokens_before.append((tr.state["samples"], tr.state["tokens"]))
        return orig()

    tr._train_step = counted
    tr.run()
    times = tr.step_times[warmup:]
    s0, t0 = tokens_before[warmup]
    return times, tr.state["samples"] - s0, tr.state["tokens"] - t0


def run_bare(cfg, warmup: int) -> list[float]:
    """The same model, data and optimizer in a plain loop (no engine, logging, checks or checkpoints)."""
    from torch.utils.data import DataLoader

    from train.engine import Dist
    from train.optim import build_optimizer, build_scheduler
    from train.recipes import get_recipe
    from train.sampler import ResumableBatchSampler

    torch.set_num_threads(cfg.engine.threads or torch.get_num_threads())
    torch.manual_seed(cfg.seed)
    parts = get_recipe(cfg.recipe)(cfg, Dist())
    opt = build_optimizer(parts.model, cfg.optim)
    sched = build_scheduler(opt, cfg.optim, cfg.max_steps)
    sampler = ResumableBatchSampler(len(parts.train_data), cfg.batch_size, seed=cfg.seed, lengths=parts.lengths,
                                    group_by_length=cfg.data.group_by_length)
    params = [p for p in parts.model.parameters() if p.requires_grad]
    parts.step_module.train()
    times, step = [], 0
    while step < cfg.max_steps:
        it = iter(DataLoader(parts.train_data, batch_sampler=sampler, collate_fn=parts.collate))
        while True:
            t = time.perf_counter()
            batch = next(it, None)
            if batch is None:
                break
            loss = parts.step_module(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t)
            step += 1
            if step >= cfg.max_steps:
                break
    return times[warmup:]


def bench_cpu(args) -> dict:
    """Both loops time the same span per step: DataLoader fetch (video decode, render, collate), forward,
    backward, clip, optimizer + scheduler step; ours adds its engine, RNG-free bookkeeping, logging, checks."""
    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    make_samples(work, max(16, args.batch_size * 4))
    steps = args.warmup + args.steps
    ours, bare, samples, tokens = [], [], 0, 0
    for r in range(args.repeats):
        bare += run_bare(tiny_config(work, steps, args.batch_size, f"bare{r}", args.threads), args.warmup)
        t, s, k = run_ours(tiny_config(work, steps, args.batch_size, f"ours{r}", args.threads), args.warmup)
        ours += t
        samples += s
        tokens += k
    ours_med, bare_med = statistics.median(ours), statistics.median(bare)
    return {
        "bench": "train", "preset": "tiny", "recipe": "instruct (LoRA r=4 + projector)", "device": "cpu",
        "batch_size": args.batch_size, "steps_timed": len(ours), "threads": torch.get_num_threads(),
        "samples_per_s": round(samples / sum(ours), 3), "tokens_per_s": round(tokens / sum(ours), 1),
        "step_s_median_ours": round(ours_med, 4), "step_s_median_bare": round(bare_med, 4),
        "bare_samples_per_s": round(args.batch_size / bare_med, 3),
        "overhead_ratio": round(ours_med / bare_med, 3), "overhead_target": 1.10,
        "overhead_ratio_min": round(min(ours) / min(bare), 3),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "note": "per-step time includes the DataLoader fetch (mp4 decode) in both loops",
    }


# ----------------------------------------------------------------------------------------------- GPU / 7B
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.2}


def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def bench_7b_mode(args, qlora: bool) -> dict:
    from videochat.builders import config_7b, tiny_config
    from videochat.model import VideoChatModel

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.preset == "7b":
        cfg = config_7b(lora=True, load_in_4bit=qlora, dtype="bfloat16", gradient_checkpointing=True,
                        attn_implementation=args.attn)
    else:  # tiny-synthetic: the same code path with tiny sizes (checks it on CPU)
        cfg = tiny_config(lora=True, **{"llm.gradient_checkpointing": True})
    sync = torch.cuda.synchronize if cuda else (lambda *_: None)
    torch.manual_seed(0)
    model = VideoChatModel.from_config(cfg, device=device)
    model.requires_grad_(False)
    for n, p in model.named_parameters():
        if "lora_" in n or n.startswith(("vision_ln.", "projector.")):
            p.requires_grad_(True)
    model.train()
    from train.config import OptimConfig
    from train.optim import build_optimizer

    opt = build_optimizer(model, OptimConfig(lr=1e-5))
    b, q, text = args.batch_size, model.tokens_per_clip, args.text_tokens
    L = text + q
    vocab = model.llm.get_input_embeddings().weight.shape[0]
    ids = torch.randint(3, min(vocab, 32000) - 1, (b, L), device=device)
    ids[:, 4:4 + q] = model.placeholder_id
    labels = ids.clone()
    labels[:, :4 + q] = -100
    side = cfg.viclip.image_size
    frames = torch.randn(b, cfg.num_frames, 3, side, side, device=device)
    mask = torch.ones_like(ids)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(args.warmup + args.steps):
        sync(device)
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels, clip_frames=frames).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - t)
    step = statistics.median(times[args.warmup:])
    hf = model.llm.base_model.model.config
    n_llm = sum(p.numel() for n, p in model.llm.named_parameters() if "lora_" not in n)
    if qlora:  # Params4bit stores 2 weights per byte: count the logical parameters
        n_llm = sum(getattr(p, "quant_state", None) and p.quant_state.shape.numel() or p.numel()
                    for n, p in model.llm.named_parameters() if "lora_" not in n)
    flops_token = 4 * n_llm + 3 * 4 * hf.num_hidden_layers * L * hf.hidden_size
    tps = b * L / step
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    peak = peak_tflops(name, args.peak_tflops)
    out = {"mode": "qlora-4bit" if qlora else "lora-bf16", "samples_per_s": round(b / step, 3),
           "tokens_per_s": round(tps, 1), "step_s_median": round(step, 4),
           "llm_mfu": round(tps * flops_token / (peak * 1e12), 4) if peak else None,
           "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if cuda else None,
           "llm_params": n_llm, "seq_len": L, "gpu": name, "peak_bf16_tflops": peak}
    del model, opt
    if cuda:
        torch.cuda.empty_cache()
    return out


def bench_7b(args) -> dict:
    if args.preset == "7b" and not torch.cuda.is_available():
        raise SystemExit("--preset 7b needs a CUDA GPU (random LLaMA-7B weights are 13.5 GB in bf16)")
    modes = {"lora": [False], "qlora": [True], "both": [False, True]}[args.modes]
    if args.device == "cpu":
        modes = [False]  # 4-bit needs CUDA
    return {"bench": "train", "preset": args.preset, "frames": 8, "batch_size": args.batch_size,
            "text_tokens": args.text_tokens, "attn": args.attn,
            "results": [bench_7b_mode(args, q) for q in modes]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=("tiny", "7b", "tiny-synthetic"), default="tiny",
                   help="tiny: CPU recipe vs bare loop; 7b: GPU; tiny-synthetic: the 7b code path at tiny sizes")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="CPU: interleaved bare/ours repeats")
    p.add_argument("--threads", type=int, default=1, help="CPU: torch threads in both loops")
    p.add_argument("--batch-size", type=int, default=None, help="default 2 (tiny) / 1 (7b)")
    p.add_argument("--text-tokens", type=int, default=512)
    p.add_argument("--modes", choices=("lora", "qlora", "both"), default="both")
    p.add_argument("--attn", default="sdpa", help="7b: eager | sdpa | flash_attention_2")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the GPU's dense bf16 peak")
    args = p.parse_args(argv)
    if args.preset == "tiny":
        args.batch_size = args.batch_size or 2
        result = bench_cpu(args)
    else:
        args.batch_size = args.batch_size or 1
        if args.preset == "tiny-synthetic":
            args.text_tokens = min(args.text_tokens, 64)
        result = bench_7b(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
