"""Evaluation throughput of the tiny model on CPU: batch size 1 (KV-cached greedy decoding per prompt) vs
left-padded batches. Prints one JSON object.

    .venv/bin/python benchmarks/bench_eval.py [--records 32] [--batch-sizes 1,4,8,16] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _video(path: Path, rgb, seconds: float = 3.0, fps: int = 8, size: int = 32) -> None:
    import av

    with av.open(str(path), mode="w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for i in range(int(seconds * fps)):
            f = np.full((size, size, 3), 20, np.uint8)
            f[8:20, (2 * i) % 24:(2 * i) % 24 + 8] = rgb
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=int, default=32)
    ap.add_argument("--batch-sizes", default="1,4,8,16")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2, help="best of N runs per batch size")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from videochat.builders import videochat_tiny
    from videochat.eval import evaluate

    colors = {"red": (220, 40, 40), "green": (40, 190, 70), "blue": (50, 90, 235), "yellow": (235, 215, 50)}
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        for name, rgb in colors.items():
            _video(root / f"{name}.mp4", rgb)
        names = list(colors)
        # varied prompt lengths, as in real data, so padding costs something
        recs = [{"video": f"{names[i % 4]}.mp4", "question": "What colour is the shape?" + " Look closely." * (i % 5),
                 "candidates": names, "answer": names[i % 4], "start": 0.5, "end": 2.5} for i in range(args.records)]
        model = videochat_tiny(seed=0).eval()
        # warm-up (first-call allocations, lazy imports)
        evaluate(model, "mvbench", recs[:4], root, root / "warm", batch_size=4, progress=False, report=False)
        out = {"what": "videochat eval mvbench, tiny model, CPU", "records": args.records,
               "max_new_tokens": args.max_new_tokens, "torch_threads": torch.get_num_threads(),
               "machine": platform.processor() or platform.machine(), "python": sys.version.split()[0],
               "samples_per_s": {}}
        for bs in [int(x) for x in args.batch_sizes.split(",")]:
            best = float("inf")
            for r in range(args.repeats):
                t = time.perf_counter()
                evaluate(model, "mvbench", recs, root, root / f"b{bs}-{r}", batch_size=bs, progress=False,
                         max_new_tokens=args.max_new_tokens, report=False)
                best = min(best, time.perf_counter() - t)
            out["samples_per_s"][str(bs)] = round(args.records / best, 2)
        rates = out["samples_per_s"]
        out["fastest_batch_size"] = int(max(rates, key=rates.get))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
