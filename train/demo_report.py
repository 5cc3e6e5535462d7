"""DIR/report.md, DIR/metrics.json and DIR/loss.png for `videochat demo`.

metrics.json: `heldout.{color,shape,motion}_acc`, `ablation_no_video` (same keys, clip embeddings zeroed),
`chance`, plus the stage wall times and the world's counts. report.md: what was built, the accuracy table,
the loss curves of every training stage, and example held-out dialogues (with and without video).
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

from data_tools.synthetic import ATTRIBUTES
from train.demo_eval import example_dialogues


def _losses(p: dict[str, Path]) -> dict[str, list[tuple[int, float]]]:
    from train.logging import read_metrics

    curves = {}
    for name, path in (("llm pretrain", p["llm"] / "metrics.jsonl"), ("viclip (InfoNCE)", p["viclip"] / "metrics.jsonl"),
                       ("align", p["align"] / "metrics.jsonl"), ("instruct (LoRA)", p["instruct"] / "metrics.jsonl")):
        if path.is_file():
            curves[name] = [(r["step"], r["loss"]) for r in read_metrics(path) if "loss" in r]
    return curves


def plot_losses(curves: dict[str, list[tuple[int, float]]], out_png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(1, len(curves)), figsize=(3.2 * max(1, len(curves)), 3), dpi=100)
    axes = axes if hasattr(axes, "__len__") else [axes]
    for ax, (name, pts) in zip(axes, curves.items()):
        if pts:
            ax.plot(*zip(*pts))
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("training loss")
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def _cpu() -> str:
    import os

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def write_report(p: dict[str, Path], s, seconds: dict[str, float]) -> dict:
    """Write metrics.json, loss.png and report.md into the workdir; returns the metrics."""
    w = p["world"].parent
    ev = json.loads((p["eval"] / "summary.json").read_text())
    world = json.loads((p["world"] / "world.json").read_text())
    state = json.loads((w / "demo_state.json").read_text())
    metrics = {
        "mode": state["mode"], "heldout": ev["heldout"], "ablation_no_video": ev["ablation_no_video"],
        "chance": ev["chance"], "heldout_questions": ev["heldout_questions"],
        "stage_seconds": seconds, "total_stage_seconds": round(sum(seconds.values()), 1),
        "world": {k: world[k] for k in ("train_videos", "train_events", "train_qa", "heldout_videos",
                                        "heldout_events", "heldout_questions", "seconds")},
        "machine": _cpu(),
    }
    (w / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    curves = _losses(p)
    plot_losses(curves, w / "loss.png")
    dialogues = example_dialogues(p["eval"], s.example_dialogues)
    info = state["done"]

    lines = [
        f"# videochat demo report ({state['mode']} mode)", "",
        "A synthetic video world (coloured shapes that move), a sentencepiece tokenizer and a tiny Llama "
        "pretrained on its text, a tiny ViCLIP pretrained contrastively on its clips, then the chat model "
        "(frozen ViCLIP -> Q-Former -> LLM) aligned and instruction-tuned with LoRA, exported, and evaluated on "
        "held-out videos with greedy answers (exact match on the attribute).", "",
        "## Held-out accuracy", "",
        "| attribute | with video | no video (clip embeddings zeroed) | chance |",
        "| --- | --- | --- | --- |",
    ]
    for a in ATTRIBUTES:
        k = f"{a}_acc"
        lines.append(f"| {a} | {ev['heldout'][k]:.3f} | {ev['ablation_no_video'][k]:.3f} | {ev['chance'][k]:.3f} |")
    lines += ["", f"{ev['heldout_questions']} held-out questions on {world['heldout_events']} events in "
              f"{world['heldout_videos']} videos the model never saw (every colour x shape x motion equally often).",
              "", "## Data", "",
              f"- world: {world['train_videos']} training videos ({world['seconds']:.0f} s of video in total), "
              f"{world['train_events']} captioned events, {world['config']['size']} px, {world['config']['fps']} fps; "
              f"colours {', '.join(world['config']['colors'])}; shapes {', '.join(world['config']['shapes'])}; "
              f"motions {', '.join(world['config']['motions'])}",
              f"- samples: {info.get('samples', {}).get('captions', '?')} caption, "
              f"{info.get('samples', {}).get('interleaved', '?')} interleaved (a/b/c), "
              f"{info.get('samples', {}).get('qa', '?')} QA",
              f"- LLM: {info.get('llm', {}).get('parameters', '?')} parameters, vocabulary "
              f"{info.get('llm', {}).get('vocab', '?')}", "",
              "## Stage wall times (seconds)", "", "| stage | seconds |", "| --- | --- |"]
    lines += [f"| {k} | {v:.1f} |" for k, v in seconds.items()]
    lines += [f"| total | {sum(seconds.values()):.1f} |", "", f"Machine: {metrics['machine']}.", "",
              "## Training losses", "", "![losses](loss.png)", ""]
    for name, pts in curves.items():
        if pts:
            lines.append(f"- {name}: {pts[0][1]:.3f} (step {pts[0][0]}) -> {pts[-1][1]:.3f} (step {pts[-1][0]})")
    lines += ["", "## Example held-out dialogues", ""]
    for d in dialogues:
        lines.append(f"**{d['video']}** [{d['start']:.1f} s - {d['end']:.1f} s]")
        lines.append("")
        for t in d["turns"]:
            mark = "ok" if t["prediction"].strip().lower().rstrip(".") == t["answer"] else "wrong"
            lines.append(f"- Q: {t['question']}  A: {t['prediction']!r} ({mark}; gold {t['answer']!r}; "
                         f"without video: {t['blind']!r})")
        lines.append("")
    lines += ["## Chat with it", "", "```", f"videochat serve --model {p['export']}", "```", ""]
    (w / "report.md").write_text("\n".join(lines), encoding="utf-8")
    return metrics
