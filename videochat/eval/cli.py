"""`videochat eval`: evaluate a model on a task, or compare two result sets.

    videochat eval --model DIR --task mvbench|qa|caption --data FILE_OR_DIR --videos ROOT --out DIR
    videochat eval compare A B        # A, B: results.json files or evaluation folders
"""

from __future__ import annotations

import argparse
import sys

from videochat.eval.tasks import TASK_NAMES


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a model (mvbench, qa, caption) or compare two results",
        description="Evaluate a model folder on MVBench-style multiple choice, open-ended QA or captioning. "
                    "Writes predictions.jsonl (resumable), results.json, results.md and results.png to --out. "
                    "`videochat eval compare A B` prints the metric differences of two runs.",
    )
    p.add_argument("--model", help="model folder (save_pretrained / export output)")
    p.add_argument("--task", choices=TASK_NAMES, help="mvbench | qa | caption")
    p.add_argument("--data", help="records: a JSON / JSONL file, or a folder of them (one per task)")
    p.add_argument("--videos", help="root folder the records' video paths are relative to, or a .json file "
                                    "mapping each task (file stem / 'task' field) to its folder ('*': fallback)")
    p.add_argument("--out", help="output folder (an interrupted run there resumes)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts generated together (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: per task (mvbench 16, qa 32, caption 64)")
    p.add_argument("--num-frames", type=int, default=None, help="frames per clip (default: the model config's)")
    p.add_argument("--system-prompt", default=None,
                   help="system prompt (default: MVBench's reference prompt for mvbench, the model config's "
                        "otherwise; '' for none)")
    p.add_argument("--prompt", default=None, help="caption: the request (default 'Describe this video clip.')")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N records")
    p.add_argument("--overwrite", action="store_true", help="discard earlier predictions in --out")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="model dtype (default: bfloat16 on CUDA, the saved one on CPU)")
    p.add_argument("--workers", type=int, default=2, help="video decoding threads (default 2)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; 1 is fastest for tiny models on a busy machine)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_eval)
    sub = p.add_subparsers(dest="eval_command", metavar="{compare}")
    c = sub.add_parser("compare", help="print the metric differences between two result sets (B - A)")
    c.add_argument("a", help="results.json or evaluation folder (baseline)")
    c.add_argument("b", help="results.json or evaluation folder (new)")
    c.add_argument("--json", action="store_true", help="print the comparison as JSON")
    c.set_defaults(func=run_compare)


def run_eval(args: argparse.Namespace) -> int:
    missing = [f"--{n}" for n in ("model", "task", "data", "videos", "out") if not getattr(args, n)]
    if missing:
        print(f"videochat eval: missing {', '.join(missing)} (or use `videochat eval compare A B`)", file=sys.stderr)
        return 2
    from videochat.eval.records import DataError
    from videochat.eval.runner import EvalError, evaluate

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    task_options = {"prompt": args.prompt} if args.task == "caption" and args.prompt else None
    if args.prompt and args.task != "caption":
        print("videochat eval: --prompt applies to --task caption only", file=sys.stderr)
        return 2
    try:
        res = evaluate(args.model, args.task, args.data, args.videos, args.out, batch_size=args.batch_size,
                       max_new_tokens=args.max_new_tokens, num_frames=args.num_frames,
                       system_prompt=args.system_prompt, limit=args.limit, overwrite=args.overwrite,
                       workers=args.workers, progress=not args.no_progress, device=args.device, dtype=args.dtype,
                       task_options=task_options)
    except (EvalError, DataError) as e:
        print(f"videochat eval: {e}", file=sys.stderr)
        return 2
    c, m = res["counts"], res["metrics"]
    head = res["headline"]
    shown = ", ".join(f"{k} {v:.2f}" for k, v in m.items() if isinstance(v, float))
    print(f"{res['task']}: {c['in']} records = {c['scored']} scored + {c['rejected']} rejected; {shown}")
    if head in m:
        print(f"{head}: {m[head]:.2f}")
    for r in res["rejected"][:10]:
        print(f"  rejected {r['key']}: {r['reason']}", file=sys.stderr)
    if len(res["rejected"]) > 10:
        print(f"  ... {len(res['rejected']) - 10} more rejected (see {args.out}/results.json)", file=sys.stderr)
    print(f"wrote {args.out}/results.json, results.md, results.png, predictions.jsonl")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    import json

    from videochat.eval.report import compare, format_compare, load_results

    try:
        a, b = load_results(args.a), load_results(args.b)
    except (FileNotFoundError, ValueError) as e:
        print(f"videochat eval compare: {e}", file=sys.stderr)
        return 2
    if args.json:
        rows = [{"metric": k, "a": va, "b": vb, "diff": d} for k, va, vb, d in compare(a, b)]
        print(json.dumps({"a": args.a, "b": args.b, "metrics": rows}, indent=2))
    else:
        print(format_compare(a, b, args.a, args.b))
    return 0
