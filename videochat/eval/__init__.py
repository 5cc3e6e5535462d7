"""Evaluation: MVBench-style multiple choice, open-ended QA, captioning; reports and comparisons.

    from videochat.eval import evaluate
    results = evaluate(model_or_dir, "mvbench", "heldout/mvbench.json", video_root="videos", out_dir="eval/mv")
    results["metrics"]["accuracy"]          # percent; per task file in results["groups"]

CLI: `videochat eval --model DIR --task mvbench|qa|caption --data FILE --videos ROOT --out DIR` and
`videochat eval compare A B`. See docs/eval.md.
"""

from videochat.eval.records import BadRecord, DataError, load_records
from videochat.eval.report import compare, flat_metrics, format_compare, load_results
from videochat.eval.runner import EvalError, evaluate
from videochat.eval.tasks import TASK_NAMES, get_task

__all__ = ["evaluate", "EvalError", "DataError", "BadRecord", "load_records", "load_results", "compare",
           "format_compare", "flat_metrics", "get_task", "TASK_NAMES"]
