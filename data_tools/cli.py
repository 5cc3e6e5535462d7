"""`videochat data ...`: build, stats, validate, export, import."""

from __future__ import annotations

import argparse
import sys


def _floats_or_none(s: str):
    return None if s.lower() in ("none", "") else float(s)


def _int_or_none(s: str):
    return None if s.lower() in ("none", "0", "") else int(s)


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="build, validate, inspect, export and import interleaved video-text samples")
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    b = sub.add_parser("build", help="clip annotations (InternVid schema) -> interleaved multi-turn samples")
    b.add_argument("--annotations", nargs="+", required=True, metavar="GLOB",
                   help="annotation files/globs: .jsonl[.gz|.zst], .csv[.gz], .parquet")
    b.add_argument("--out", required=True, help="output dataset folder")
    b.add_argument("--videos", help="root of the source videos (<YoutubeID>.<ext>); sample paths are relative to it")
    b.add_argument("--video-map", help="CSV (video_id,path) / JSON {id: path} / JSONL map of video ids to paths")
    b.add_argument("--video-ext", default=".mp4", help="extension for unchecked paths (default .mp4)")
    b.add_argument("--allow-missing", action="store_true", help="keep clips whose video is missing under --videos")
    b.add_argument("--formats", default="a,b,c", help="comma list of a,b,c,caption (default a,b,c)")
    b.add_argument("--drop-video-p", type=float, default=0.3, help="probability a clip's video is dropped (0.3)")
    b.add_argument("--max-clips", type=int, default=8, help="most clips per sample window (8)")
    b.add_argument("--max-words", type=_int_or_none, default=400, help="most caption+ASR words per window (400; 0=none)")
    b.add_argument("--min-umt", type=_floats_or_none, default=None, help="filter clips with UMT_Score below this")
    b.add_argument("--min-aesthetic", type=_floats_or_none, default=None, help="filter clips with Aesthetic_Score below")
    b.add_argument("--val-fraction", type=float, default=0.02, help="fraction of videos in val (by video id hash)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--workers", type=int, default=0, help="worker processes (0 = all cores); output is identical")
    b.add_argument("--shard-size", type=int, default=20_000, help="most samples per shard file")
    b.add_argument("--compress", choices=["zst", "gz"], default=None, help="compress shards")
    b.add_argument("--num-shards", type=int, default=1, help="split the build across K machines (by video id hash)")
    b.add_argument("--shard-index", type=int, default=0, help="this machine's shard, 0 <= i < K")
    b.add_argument("--partitions", type=int, default=None,
                   help="hash partitions (default ~1 per 400k rows, rounded up to a multiple of 8)")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=_build)

    # The other subcommands live in their modules; each adds its own parser.
    for modname in ("stats", "validate", "formats"):
        try:
            mod = __import__(f"data_tools.{modname}", fromlist=["register"])
        except ImportError:  # pragma: no cover - module being written
            continue
        if hasattr(mod, "register"):
            mod.register(sub)


def _build(args) -> int:
    from .builder import BuildConfig, BuildError, build

    cfg = BuildConfig(
        annotations=args.annotations, out=args.out, videos=args.videos, video_map=args.video_map,
        video_ext=args.video_ext, allow_missing=args.allow_missing,
        formats=[f.strip() for f in args.formats.split(",") if f.strip()], drop_video_p=args.drop_video_p,
        max_clips=args.max_clips, max_words=args.max_words, min_umt=args.min_umt, min_aesthetic=args.min_aesthetic,
        val_fraction=args.val_fraction, seed=args.seed, workers=args.workers, shard_size=args.shard_size,
        compression=args.compress, num_shards=args.num_shards, shard_index=args.shard_index,
        partitions=args.partitions, progress=not args.quiet,
    )
    try:
        m = build(cfg)
    except (BuildError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    c = m["counts"]
    made = {f for split in m["samples"].values() for f, n in split.items() if f != "total" and n}
    for f in cfg.formats:
        if f not in made and c["rows_used"]:
            why = {"b": "no clip has an ASR transcript; those windows were written as (a)",
                   "c": "no two windows of different videos could be paired; they were written as (a)"}.get(f, "")
            print(f"warning: no samples of format {f!r}" + (f": {why}" if why else ""), file=sys.stderr)
    print(f"rows: {c['rows_in']} in, {c['rows_used']} used, {c['rows_rejected']} rejected, "
          f"{c['rows_filtered']} filtered; samples: train {m['samples']['train']['total']}, "
          f"val {m['samples']['val']['total']} -> {args.out}")
    return 0


def main(argv=None) -> int:  # pragma: no cover - convenience: python -m data_tools.cli
    ap = argparse.ArgumentParser(prog="data")
    sub = ap.add_subparsers(dest="command")
    register(sub)
    args = ap.parse_args(argv)
    return int(args.func(args) or 0)
