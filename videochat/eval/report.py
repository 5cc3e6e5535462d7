"""Result files and comparisons: results.json, a Markdown table, a bar chart, `compare A B`.

`flat_metrics(results)` flattens a results dict to `{"accuracy": 51.1, "action_sequence/accuracy": ...}`
(overall metrics by name, per-group ones as `group/metric`; counts left out). `compare(a, b)` lines those up
and `format_compare` prints `metric | A | B | B - A`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["write_reports", "markdown", "bar_chart", "load_results", "flat_metrics", "compare", "format_compare"]

COUNT_KEYS = ("n", "correct", "no_choice")
"""Per-group fields that are counts, not metrics."""


def _metric_names(metrics: dict[str, Any]) -> list[str]:
    return [k for k, v in metrics.items() if k not in COUNT_KEYS and isinstance(v, (int, float))
            and not isinstance(v, bool)]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.2f}"
    return str(v)


def markdown(results: dict[str, Any]) -> str:
    """A Markdown summary: headline line, overall metrics, per-group table, rejected records."""
    m, groups, counts = results["metrics"], results.get("groups", {}), results["counts"]
    head = results.get("headline")
    lines = [f"# {results['task']} evaluation", "",
             f"- model: `{results.get('model')}`", f"- data: `{results.get('data')}` (videos: `{results.get('videos')}`)",
             f"- records: {counts['in']} in = {counts['scored']} scored + {counts['rejected']} rejected"]
    if head in m:
        lines.append(f"- **{head}: {_fmt(m[head])}**")
    names = _metric_names(m)
    group_names = sorted({k for g in groups.values() for k in _metric_names(g)}, key=lambda k: (k != head, k))
    lines += ["", "| group | n | " + " | ".join(group_names) + " |", "|---|---:|" + "---:|" * len(group_names)]
    for g, gm in groups.items():
        lines.append(f"| {g} | {gm.get('n', '')} | " + " | ".join(_fmt(gm.get(k, "")) for k in group_names) + " |")
    lines.append(f"| **overall** | {m.get('n', '')} | " + " | ".join(_fmt(m.get(k, "")) for k in group_names) + " |")
    extra = [k for k in names if k not in group_names]
    if extra:
        lines += ["", "| metric | value |", "|---|---:|"] + [f"| {k} | {_fmt(m[k])} |" for k in extra]
    if results.get("rejected"):
        lines += ["", f"## Rejected records ({len(results['rejected'])})", "", "| key | video | reason |", "|---|---|---|"]
        for r in results["rejected"][:200]:
            reason = str(r.get("reason", "")).replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {r['key']} | {r.get('video')} | {reason} |")
        if len(results["rejected"]) > 200:
            lines.append(f"| ... | | {len(results['rejected']) - 200} more in results.json |")
    t = results.get("timing", {})
    if t:
        lines += ["", f"Timing: {t.get('seconds')} s, {t.get('generated')} generated, {t.get('resumed')} resumed."]
    return "\n".join(lines) + "\n"


def bar_chart(results: dict[str, Any], path: str | os.PathLike) -> Path:
    """A PNG bar chart: each metric per group and overall (grouped bars), chance as black ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = dict(results.get("groups", {}))
    # series: the metrics every group has (overall-only figures such as task_mean_accuracy stay in the table)
    source = list(groups.values()) or [results["metrics"]]
    names = [k for k in sorted({k for g in source for k in _metric_names(g)}) if k != "chance"]
    groups["overall"] = results["metrics"]
    head = results.get("headline")
    names.sort(key=lambda k: (k != head, k))
    names = names[:4]
    labels = list(groups)
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(labels) * max(1, len(names)) + 1.5), 4.0))
    for j, name in enumerate(names):
        xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(labels))]
        vals = [float(groups[g].get(name, float("nan"))) for g in labels]
        bars = ax.bar(xs, vals, width=width * 0.95, label=name)
        for x, v in zip(xs, vals):
            if not math.isnan(v):
                ax.annotate(f"{v:.1f}", (x, v), ha="center", va="bottom", fontsize=7)
        if j == 0 and "chance" in results["metrics"]:
            for x, g, b in zip(xs, labels, bars):
                c = groups[g].get("chance")
                if c is not None:
                    ax.hlines(c, x - width / 2, x + width / 2, colors="black", linewidth=1.5,
                              label="chance" if g == labels[0] else None)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center")
    ax.set_ylabel("score (percent; CIDEr x100)")
    ax.set_ylim(0, max(100.0, *[float(g.get(n, 0) or 0) for g in groups.values() for n in names]) * 1.08)
    c = results["counts"]
    ax.set_title(f"{results['task']}: {Path(str(results.get('model'))).name} "
                 f"({c['scored']} scored, {c['rejected']} rejected)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def write_reports(results: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """results.json, results.md and results.png in `out_dir` (json written atomically)."""
    out = Path(out_dir)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / "results.json")
    (out / "results.md").write_text(markdown(results), encoding="utf-8")
    return {"json": out / "results.json", "md": out / "results.md", "png": bar_chart(results, out / "results.png")}


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """A results.json file, or the evaluation folder holding one."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    if not p.is_file():
        raise FileNotFoundError(f"{path}: no results.json (run `videochat eval` first)")
    data = json.loads(p.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "metrics" not in data:
        raise ValueError(f"{p}: not a videochat eval results file")
    return data


def flat_metrics(results: dict[str, Any]) -> dict[str, float]:
    out = {k: float(results["metrics"][k]) for k in _metric_names(results["metrics"])}
    for g, gm in results.get("groups", {}).items():
        out.update({f"{g}/{k}": float(gm[k]) for k in _metric_names(gm)})
    return out


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, float | None, float | None, float | None]]:
    """(metric, A, B, B - A) for every metric in either result set (overall first, then per group)."""
    fa, fb = flat_metrics(a), flat_metrics(b)
    names = list(fa) + [k for k in fb if k not in fa]
    names.sort(key=lambda k: ("/" in k, k))
    return [(k, fa.get(k), fb.get(k), fb[k] - fa[k] if k in fa and k in fb else None) for k in names]


def format_compare(a: dict[str, Any], b: dict[str, Any], name_a: str = "A", name_b: str = "B") -> str:
    """A plain-text table of `compare(a, b)` with the counts of both runs."""
    rows = compare(a, b)
    out = []
    if a.get("task") != b.get("task"):
        out.append(f"warning: comparing different tasks ({a.get('task')} vs {b.get('task')})")
    for label, r in (("A", a), ("B", b)):
        c = r.get("counts", {})
        name = name_a if label == "A" else name_b
        out.append(f"{label} = {name}: {r.get('task')} on {r.get('data')}, model {r.get('model')}, "
                   f"{c.get('scored')} scored / {c.get('rejected')} rejected")
    w = max([len("metric")] + [len(k) for k, *_ in rows])
    out.append(f"{'metric':<{w}}  {'A':>9}  {'B':>9}  {'B - A':>9}")
    for k, va, vb, d in rows:
        cell = lambda v: f"{v:9.2f}" if v is not None else f"{'-':>9}"  # noqa: E731
        sign = "" if d is None else ("+" if d > 0 else "")
        out.append(f"{k:<{w}}  {cell(va)}  {cell(vb)}  {sign + (f'{d:.2f}' if d is not None else '-'):>9}")
    return "\n".join(out)
