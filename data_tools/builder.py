"""`videochat data build`: clip annotations -> interleaved multi-turn samples (orchestration).

Phase 1 (parallel over reading tasks): parse + validate + filter, hash-partition rows by video id into
spill files. Phase 2 (parallel over partitions): sort, de-duplicate, window, choose formats, render JSON,
write ``part-*`` files. Finally the parts are renamed into ``{train,val}/shard-NNNNN.jsonl[.zst]`` in
(partition, part) order, rejects are merged with file line numbers fixed up, and ``manifest.json`` is
written. Nothing depends on the worker count or scheduling, so the output is byte-identical for any
``--workers``.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import orjson

from .io import MANIFEST, REJECTS, SPLITS, write_atomic
from .partition import PartitionJob, run_partition
from .sources import estimate_rows, expand_inputs, fingerprint, plan_tasks
from .spill import TaskResult, partition_refs, run_task
from .templates import check_pools

SCHEMA_VERSION = 1
FORMATS = ("a", "b", "c", "caption")
ROWS_PER_PARTITION = 400_000  # ~0.5 GB peak per worker in phase 2


def default_partitions(rows: int) -> int:
    """About one partition per ``ROWS_PER_PARTITION`` rows, rounded up to a multiple of 8 when more than one:
    phase 2 then splits evenly over 1, 2, 4 or 8 workers (one extra partition on one worker of two left the
    other idle for ~6% of a 5M-row build). A function of the input only: the output must not depend on
    ``--workers``."""
    p = max(1, math.ceil(rows / ROWS_PER_PARTITION))
    return p if p == 1 else -(-p // 8) * 8


class BuildError(ValueError):
    """A build that cannot run (bad arguments, unreadable inputs, output folder in the way)."""


@dataclass
class BuildConfig:
    """Arguments of a build (the CLI flags). Everything except ``workers``/``progress`` goes in the manifest."""

    annotations: list = field(default_factory=list)
    "Annotation files or globs (JSONL, JSONL.gz/.zst, CSV, Parquet)."
    out: str = ""
    "Output dataset folder."
    videos: str | None = None
    "Root folder of source videos; sample paths are relative to it. None: paths are '<id><video_ext>', unchecked."
    video_map: str | None = None
    "CSV (video_id,path) / JSON {id: path} / JSONL mapping video ids to paths (relative to --videos or absolute)."
    video_ext: str = ".mp4"
    "Extension used for paths when videos are not checked (no --videos) or missing with --allow-missing."
    allow_missing: bool = False
    "Keep clips whose video is not found (otherwise they are rejected with a reason)."
    formats: list = field(default_factory=lambda: ["a", "b", "c"])
    "Sample formats: a (clips+captions), b (a with ASR), c (two videos), caption (one sample per clip)."
    drop_video_p: float = 0.3
    "Probability that a clip's video is dropped (its caption kept as text context) in a/b/c samples."
    max_clips: int = 8
    "Most clips per window (a long video becomes several samples)."
    max_words: int | None = 400
    "Most caption+ASR words per window (None: no word budget)."
    min_umt: float | None = None
    "Filter clips with UMT_Score below this (clips without a score are filtered too)."
    min_aesthetic: float | None = None
    "Filter clips with Aesthetic_Score below this (clips without a score are filtered too)."
    val_fraction: float = 0.02
    "Fraction of videos (by a hash of the video id) that go to the val split."
    seed: int = 0
    "Seed for template choice, video drops, formats and output order."
    shard_size: int = 20_000
    "Most samples per output shard file."
    compression: str | None = None
    "Shard compression: None, 'zst' or 'gz'."
    num_shards: int = 1
    "Split the work across machines: this machine keeps videos whose hash lands in shard_index."
    shard_index: int = 0
    "Which machine shard this build is (0 <= shard_index < num_shards)."
    partitions: int | None = None
    "Number of hash partitions (default: about one per 400k input rows, a multiple of 8; bounds memory per worker)."
    workers: int = 0
    "Worker processes (0: one per CPU core). Does not change the output."
    progress: bool = True
    "Show progress bars."

    def check(self) -> None:
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise BuildError(f"unknown format(s) {bad or self.formats}; choose from {', '.join(FORMATS)}")
        if not 0 <= self.drop_video_p <= 1:
            raise BuildError(f"--drop-video-p must be in [0, 1], got {self.drop_video_p}")
        if not 0 <= self.val_fraction < 1:
            raise BuildError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.max_clips < 1 or (self.max_words is not None and self.max_words < 1) or self.shard_size < 1:
            raise BuildError("--max-clips, --max-words and --shard-size must be >= 1")
        if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
            raise BuildError(f"need 0 <= --shard-index < --num-shards, got {self.shard_index} / {self.num_shards}")
        if self.compression not in (None, "zst", "gz"):
            raise BuildError(f"--compress must be zst or gz, got {self.compression!r}")
        if self.videos is not None and not os.path.isdir(self.videos):
            raise BuildError(f"--videos {self.videos!r} is not a folder")
        if not self.out:
            raise BuildError("--out is required")


def _prepare_out(out: str) -> str:
    """Create the output folder; replace a previous build there, refuse any other non-empty folder."""
    if os.path.exists(out):
        entries = set(os.listdir(out))
        if entries and MANIFEST not in entries and entries - {".spill"}:
            raise BuildError(f"output folder {out!r} is not empty and holds no previous build; choose another --out")
        for name in list(SPLITS) + [".spill"]:
            shutil.rmtree(os.path.join(out, name), ignore_errors=True)
        for name in (MANIFEST, REJECTS):
            if os.path.exists(os.path.join(out, name)):
                os.remove(os.path.join(out, name))
    os.makedirs(out, exist_ok=True)
    spill = os.path.join(out, ".spill")
    os.makedirs(spill)
    return spill


# Imported once by the forkserver, so every worker starts warm. JSONL inputs add the compiled scanner
# (numba's import and JIT cache load: ~0.6 s that other inputs do not need to wait for).
_PRELOAD = ["data_tools.partition", "data_tools.spill", "data_tools.sources"]
_PRELOAD_JSONL = ["data_tools.jsonscan"]


class _NoPandas:
    """Import hook that refuses pandas (see ``_worker_init``)."""

    def find_spec(self, name, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError("build workers do not use pandas", name=name)
        return None


def _worker_init() -> None:
    """Worker processes never need pandas, but pyarrow imports it (when installed) on the first
    ``pa.array`` / ``pa.scalar`` call: ~0.6 s of CPU per process. Refusing the import makes pyarrow run
    without its pandas integration, which the workers never use."""
    if "pandas" not in sys.modules:
        sys.meta_path.insert(0, _NoPandas())


# Allocator settings of the worker processes. Phase 1 and 2 allocate and free large numpy / Arrow buffers
# many times per chunk; by default glibc trims freed heap memory and mimalloc (Arrow's pool) purges it
# within milliseconds, so each new buffer is page-faulted and zeroed again by the kernel: ~550k faults and
# ~1 s of system CPU per 5M rows. Keeping freed memory (up to the peak a worker already had) removes ~95%
# of those faults. Both libraries read these when a process starts, so they are set for the forkserver.
# Workers do no linear algebra: one OpenBLAS thread, not a pool that spins after numpy's calls into it.
_MIB = 1 << 20
WORKER_ENV = {
    "MIMALLOC_PURGE_DELAY": "-1",
    "OPENBLAS_NUM_THREADS": "1",
    "GLIBC_TUNABLES": f"glibc.malloc.mmap_threshold={256 * _MIB}:glibc.malloc.trim_threshold={1024 * _MIB}",
}


class _env:
    """Temporarily set environment variables that are not already set (a user's own settings win)."""

    def __init__(self, values: dict):
        self.values, self.added = values, []

    def __enter__(self):
        for k, v in self.values.items():
            if k not in os.environ:
                os.environ[k] = v
                self.added.append(k)

    def __exit__(self, *exc):
        for k in self.added:
            os.environ.pop(k, None)


class _Runner:
    """Runs jobs in-process (one worker) or on one process pool shared by both phases (workers start once)."""

    def __init__(self, workers: int, progress: bool, preload: list = _PRELOAD):
        self.workers, self.progress, self.ex, self.preload = workers, progress, None, preload

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.ex is not None:
            self.ex.shutdown(wait=True, cancel_futures=True)

    def run(self, fn, jobs: list, desc: str) -> list:
        """fn(*job) for each job, with a progress bar; results in job order."""
        from concurrent.futures import as_completed

        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=desc, unit="job", disable=not self.progress, dynamic_ncols=True)
        results = [None] * len(jobs)
        try:
            if self.workers <= 1 or len(jobs) <= 1:
                for i, j in enumerate(jobs):
                    results[i] = fn(*j)
                    bar.update(1)
            else:
                if self.ex is None:
                    import multiprocessing as mp
                    from concurrent.futures import ProcessPoolExecutor

                    # forkserver: workers never inherit Arrow's thread pools from a forked parent. The server
                    # imports the worker modules once (no Arrow threads exist yet), so each worker starts warm.
                    ctx = mp.get_context("forkserver")
                    ctx.set_forkserver_preload(self.preload)
                    self.ex = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx, initializer=_worker_init)
                with _env(WORKER_ENV):  # the forkserver and workers start on the first submits
                    futs = {self.ex.submit(fn, *j): i for i, j in enumerate(jobs)}
                for fut in as_completed(futs):
                    results[futs[fut]] = fut.result()
                    bar.update(1)
        finally:
            bar.close()
        return results


def build(cfg: BuildConfig) -> dict:
    """Run a build; returns the manifest (also written to ``OUT/manifest.json``)."""
    cfg.check()
    check_pools()
    paths = expand_inputs(list(cfg.annotations))
    workers = cfg.workers or os.cpu_count() or 1
    est = sum(estimate_rows(p) for p in paths)
    partitions = cfg.partitions or default_partitions(est)
    tasks = plan_tasks(paths)
    spill = _prepare_out(cfg.out)

    video_refs = None
    videos_label = cfg.video_map or cfg.videos or ""
    if cfg.videos or cfg.video_map:
        from .videos import build_index, read_map, scan_root

        entries = read_map(cfg.video_map) if cfg.video_map else scan_root(cfg.videos)
        video_refs = build_index(iter(entries), os.path.join(spill, "videos.arrow"), partitions)

    preload = _PRELOAD + (_PRELOAD_JSONL if any(t.kind == "jsonl" for t in tasks) else [])
    with _Runner(workers, cfg.progress, preload) as runner:
        p1, p2, line_offset = _phases(runner, cfg, tasks, paths, spill, partitions, video_refs, videos_label)
    shards = _finalize_shards(cfg.out, spill, p2)
    n_rejects = _merge_rejects(cfg.out, spill, tasks, p1, p2, line_offset)
    manifest = _manifest(cfg, paths, partitions, p1, p2, shards)
    if n_rejects != manifest["counts"]["rows_rejected"]:
        raise AssertionError(f"internal error: {n_rejects} rejects written, {manifest['counts']['rows_rejected']} counted")
    write_atomic(os.path.join(cfg.out, MANIFEST), orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    shutil.rmtree(spill, ignore_errors=True)
    return manifest


def _phases(runner, cfg, tasks, paths, spill, partitions, video_refs, videos_label):
    """Phase 1 (read, validate, filter, partition) then phase 2 (one job per partition)."""
    p1 = runner.run(run_task, [(t, spill, partitions, cfg.min_umt, cfg.min_aesthetic, cfg.num_shards, cfg.shard_index)
                               for t in tasks], "read + partition")
    line_offset, before = [], {}
    for t, r in zip(tasks, p1):
        off = before.get(t.file_idx, 0) if t.end >= 0 else 0
        line_offset.append(off)
        before[t.file_idx] = off + r.lines
    task_file = np.array([t.file_idx for t in tasks], np.int32)
    offsets = np.array(line_offset, np.int64)

    # Phase 2: one job per partition.
    refs = partition_refs(p1, partitions)
    jobs = [(PartitionJob(
        p, refs[p], (video_refs.get(p, []) if video_refs is not None else None), spill, cfg.seed,
        list(cfg.formats), cfg.drop_video_p, cfg.max_clips, cfg.max_words, cfg.val_fraction, cfg.shard_size,
        cfg.compression, cfg.allow_missing, videos_label, cfg.video_ext, paths, task_file, offsets),)
        for p in range(partitions)]
    p2 = runner.run(run_partition, jobs, "group + render")
    return p1, p2, line_offset


def _finalize_shards(out: str, spill: str, p2: list) -> dict:
    shards: dict[str, list] = {s: [] for s in SPLITS}
    for s in SPLITS:
        os.makedirs(os.path.join(out, s), exist_ok=True)
    for res in p2:
        for split, name, n in res["files"]:
            suffix = name[name.index(".jsonl"):]
            final = f"shard-{len(shards[split]):05d}{suffix}"
            os.replace(os.path.join(spill, name), os.path.join(out, split, final))
            shards[split].append({"file": f"{split}/{final}", "samples": n})
    return shards


def _merge_rejects(out, spill, tasks, p1, p2, line_offset) -> int:
    """rejects.jsonl: phase-1 rejects in input order (line numbers fixed up), then phase-2 ones by partition."""
    n = 0
    with open(os.path.join(out, REJECTS + ".tmp"), "wb") as f:
        for t in tasks:
            p = os.path.join(spill, f"task-{t.task_id:06d}.rejects.jsonl")
            if not os.path.exists(p):
                continue
            with open(p, "rb") as src:
                for raw in src:
                    rec = orjson.loads(raw)
                    fixed = {"file": t.path, "line": line_offset[t.task_id] + rec["line"], "reason": rec["reason"]}
                    if "text" in rec:
                        fixed["text"] = rec["text"]
                    f.write(orjson.dumps(fixed) + b"\n")
                    n += 1
        for res in p2:
            p = os.path.join(spill, f"part-{res['partition']:06d}.rejects.jsonl")
            if os.path.exists(p):
                with open(p, "rb") as src:
                    for raw in src:
                        f.write(raw)
                        n += 1
    os.replace(os.path.join(out, REJECTS + ".tmp"), os.path.join(out, REJECTS))
    return n


def _manifest(cfg: BuildConfig, paths, partitions, p1: list[TaskResult], p2: list[dict], shards) -> dict:
    reasons, filtered = Counter(), Counter()
    for r in p1:
        reasons.update(r.reasons)
        filtered.update(r.filtered)
    for r in p2:
        reasons.update(r["reasons"])
    counts = {
        "rows_in": sum(r.rows_in for r in p1),
        "rows_used": sum(r["rows_used"] for r in p2),
        "rows_rejected": sum(r.rows_rejected for r in p1) + sum(r["rows_rejected"] for r in p2),
        "rows_filtered": sum(r.rows_filtered for r in p1),
        "rows_other_machine_shards": sum(r.rows_other_shards for r in p1),
        "rejected_by_reason": dict(sorted(reasons.items())),
        "filtered_by_reason": dict(sorted(filtered.items())),
        "windows": sum(r["windows"] for r in p2),
        "clips_in_interleaved": sum(r["clips"] for r in p2),
        "clips_video_dropped": sum(r["clips_dropped"] for r in p2),
        "turns_interleaved": sum(r["turns"] for r in p2),
    }
    if counts["rows_in"] != counts["rows_used"] + counts["rows_rejected"] + counts["rows_filtered"]:
        raise AssertionError(f"internal error: counts do not reconcile: {counts}")
    samples = {}
    for s in SPLITS:
        per = Counter()
        for r in p2:
            per.update(r["samples"][s])
        samples[s] = {"total": sum(per.values()), **dict(sorted(per.items()))}
    args = {k: v for k, v in asdict(cfg).items() if k not in ("workers", "progress")}
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "videochat data build",
        "seed": cfg.seed,
        "args": args,
        "inputs": [fingerprint(p) for p in paths],
        "partitions": partitions,
        "counts": counts,
        "samples": samples,
        "shards": shards,
    }
