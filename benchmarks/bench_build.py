"""Benchmark `videochat data build` on N generated InternVid-style rows, against a naive pandas baseline.

    python benchmarks/bench_build.py --rows 2000000 [--workers 2] [--shuffle] [--baseline-rows 500000]

Prints one JSON object: rows/s and peak RSS of the real builder (end to end: parse, validate, group, window,
render, write), the same for a naive pandas read_json + groupby/apply + json.dumps baseline, and the machine
(cores, load average: other jobs on a shared machine slow both). Each run is a separate process; peak RSS is
reported as the largest single process (getrusage) and as the sampled sum over the process tree (psutil).
CPU seconds (user + system, summed over the process tree, sampled every 50 ms) give rows per CPU-second,
which a busy shared machine distorts less than wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run_measured(cmd: list[str]) -> dict:
    """Run a command; wall time, peak RSS of the largest process (getrusage of reaped children, or sampled:
    forkserver workers are not our children) and of the whole tree (sampled)."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p = psutil.Process(proc.pid)
    tree_peak = proc_peak = 0
    cpu: dict[int, float] = {}  # pid -> latest user+system seconds (workers of a finished phase keep theirs)
    while proc.poll() is None:
        try:
            procs = [p] + p.children(recursive=True)
        except psutil.Error:
            procs = []
        rss = 0
        for q in procs:
            try:
                one = q.memory_info().rss
                rss += one
                proc_peak = max(proc_peak, one)
                t = q.cpu_times()
                cpu[q.pid] = t.user + t.system
            except psutil.Error:
                pass
        tree_peak = max(tree_peak, rss)
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    cpu_s = sum(cpu.values())
    return {"seconds": round(wall, 3), "cpu_seconds": round(cpu_s, 2),
            "peak_rss_mb_largest_process": round(max(after / 1024, proc_peak / 2**20), 1),
            "peak_rss_mb_tree_sampled": round(tree_peak / 2**20, 1), "stdout": out.decode().strip()[-500:]}


def baseline(path: str, rows: int, out: str) -> None:
    """The naive approach: pandas read_json + groupby(video).apply(python per clip) + json.dumps per sample."""
    import random

    import pandas as pd

    from data_tools.templates import DESCRIBE, NEXT

    df = pd.read_json(path, lines=True, nrows=rows, dtype={"YoutubeID": str, "Start_timestamp": str,
                                                             "End_timestamp": str})

    def secs(s: str) -> float:
        h, m, x = s.split(":")
        return int(h) * 3600 + int(m) * 60 + float(x)

    df["start"] = df["Start_timestamp"].map(secs)
    df["end"] = df["End_timestamp"].map(secs)

    def make(name, g):
        g = g.sort_values("start")
        out = []
        for w in range(0, len(g), 8):
            part = g.iloc[w:w + 8]
            clips, msgs = [], []
            for i, (_, r) in enumerate(part.iterrows()):
                clips.append({"video": 0, "start": r["start"], "end": r["end"]})
                q = random.choice(DESCRIBE if i == 0 else NEXT)
                if random.random() < 0.3:
                    msgs.append({"role": "user", "content": [{"type": "text", "text": r["Caption"]}]})
                    msgs.append({"role": "assistant", "content": [{"type": "text", "text": "OK."}]})
                else:
                    msgs.append({"role": "user", "content": [{"type": "clip", "clip": i}, {"type": "text", "text": q}]})
                    msgs.append({"role": "assistant", "content": [{"type": "text", "text": r["Caption"]}]})
            out.append({"id": f"{name}#w{w // 8}", "format": "a",
                        "videos": [{"video_id": name, "path": f"{name}.mp4"}], "clips": clips, "messages": msgs})
        return out

    samples = [make(name, g) for name, g in df.groupby("YoutubeID")]  # groupby + per-group python
    with open(out, "w") as f:
        for lst in samples:
            for s in lst:
                f.write(json.dumps(s) + "\n")


def to_parquet(src: str) -> str:
    """Stream a JSONL file into Parquet (row groups of ~16 MB of JSON)."""
    import pyarrow as pa
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    out = src[: -len(".jsonl")] + ".parquet"
    writer = None
    with open(src, "rb") as f:
        rest = b""
        while True:
            block = f.read(16 << 20)
            buf = rest + block
            cut = (buf.rfind(b"\n") + 1) if block else len(buf)
            rest = buf[cut:]
            if cut:
                t = pj.read_json(pa.py_buffer(buf[:cut]), read_options=pj.ReadOptions(block_size=cut + 1))
                writer = writer or pq.ParquetWriter(out, t.schema)
                writer.write_table(t)
            if not block:
                break
    if writer is not None:
        writer.close()
    os.remove(src)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=0, help="builder workers (0 = all cores)")
    ap.add_argument("--shuffle", action="store_true", help="rows of a video scattered (unsorted input)")
    ap.add_argument("--formats", default="a,b,c")
    ap.add_argument("--input-format", choices=["jsonl", "parquet"], default="jsonl",
                    help="parquet: convert the generated rows first (shows the cost of JSON parsing)")
    ap.add_argument("--baseline-rows", type=int, default=200_000,
                    help="rows for the pandas baseline (it is slow and memory-hungry; 0 = skip)")
    ap.add_argument("--tmp", default=None,
                    help="work folder, kept (its generated JSONL input is reused by runs with the same --rows); "
                         "default: a temporary folder, removed")
    ap.add_argument("--_baseline", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, ROOT)
    if args._baseline:
        baseline(args._baseline[0], int(args._baseline[1]), args._baseline[2])
        return

    from data_tools.fakedata import write_jsonl

    work = args.tmp or tempfile.mkdtemp(prefix="bench_build_")
    os.makedirs(work, exist_ok=True)
    try:
        src = os.path.join(work, "ann.jsonl")
        t0 = time.perf_counter()
        marker = os.path.join(work, f"ann.{args.rows}.{int(args.shuffle)}.ok")
        if args.tmp and args.input_format == "jsonl" and os.path.exists(marker) and os.path.exists(src):
            rows = args.rows  # reuse the input generated by an earlier run with the same --tmp/--rows/--shuffle
        else:
            for old in (f for f in os.listdir(work) if f.endswith(".ok")):
                os.remove(os.path.join(work, old))
            rows = write_jsonl(src, args.rows, seed=0, shuffle=args.shuffle)
            if args.tmp and args.input_format == "jsonl":
                open(marker, "w").close()
        shutil.rmtree(os.path.join(work, "out"), ignore_errors=True)
        if args.input_format == "parquet":
            src = to_parquet(src)
        gen_s = time.perf_counter() - t0
        py = sys.executable
        build = run_measured([py, "-m", "videochat.cli", "data", "build", "--annotations", src, "--out",
                              os.path.join(work, "out"), "--workers", str(args.workers), "--formats", args.formats,
                              "--quiet"])
        with open(os.path.join(work, "out", "manifest.json")) as f:
            m = json.load(f)
        result = {
            "rows": rows,
            "input_mb": round(os.path.getsize(src) / 2**20, 1),
            "shuffled_input": args.shuffle,
            "input_format": args.input_format,
            "builder": {"rows_per_s": round(rows / build["seconds"]), "seconds": build["seconds"],
                        "cpu_seconds": build["cpu_seconds"], "rows_per_cpu_s": round(rows / build["cpu_seconds"]),
                        "samples": m["samples"]["train"]["total"] + m["samples"]["val"]["total"],
                        "peak_rss_mb_largest_process": build["peak_rss_mb_largest_process"],
                        "peak_rss_mb_tree_sampled": build["peak_rss_mb_tree_sampled"],
                        "partitions": m["partitions"], "workers": args.workers or os.cpu_count()},
        }
        if args.baseline_rows:
            n = min(args.baseline_rows, rows)
            b = run_measured([py, os.path.abspath(__file__), "--_baseline", src, str(n), os.path.join(work, "naive.jsonl")])
            with open(os.path.join(work, "naive.jsonl")) as f:
                ns = sum(1 for _ in f)
            result["pandas_baseline"] = {"rows": n, "rows_per_s": round(n / b["seconds"]), "seconds": b["seconds"],
                                         "rows_per_cpu_s": round(n / b["cpu_seconds"]),
                                         "samples": ns, "peak_rss_mb": b["peak_rss_mb_tree_sampled"]}
            result["speedup"] = round(result["builder"]["rows_per_s"] / result["pandas_baseline"]["rows_per_s"], 1)
        result["generate_seconds"] = round(gen_s, 2)
        result["machine"] = {"cpus": os.cpu_count(), "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
        print(json.dumps(result))
    finally:
        if not args.tmp:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
