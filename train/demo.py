"""`videochat demo --workdir DIR [--quick]`: the whole product on a synthetic video world, on a CPU, in minutes.

Stages (each through the same entry point a user would call; a re-run skips the stages already done):
 1. world      `data_tools.synthetic.generate_world`: mp4 source videos + InternVid annotations + held-out QA
 2. samples    `videochat data build` (caption samples; interleaved a/b/c samples) + the world's QA samples
 3. llm        sentencepiece tokenizer + a tiny Llama pretrained on the samples' text (an HF model folder)
 4. viclip     `videochat train` recipe `viclip` (InfoNCE, learnable temperature, patch masking)
 5. features   `videochat features extract`'s `extract()` with the chat model's frozen ViCLIP
 6. align      `videochat train` recipe `align` (projector only)
 7. instruct   `videochat train` recipe `instruct` (LoRA + projector), init_from the align checkpoint
 8. export     `videochat export --merge-lora`
 9. eval       `videochat.eval` open QA on held-out videos, and again with the clip embeddings zeroed
10. report     DIR/report.md, DIR/metrics.json, DIR/loss.png
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent / "configs"
STAGES = ("world", "samples", "llm", "viclip", "features", "align", "instruct", "export", "eval", "report")


class DemoError(RuntimeError):
    """A stage that failed; the message names the stage and what to look at."""


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="the end-to-end demo on a synthetic video world (CPU)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="folder for everything the demo makes (re-run to resume)")
    p.add_argument("--quick", action="store_true", help="smaller world and shorter training (~3 min on 2 cores)")
    p.add_argument("--overwrite", action="store_true", help="delete --workdir first and start from scratch")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--set", nargs="*", default=[], metavar="key=value",
                   help="override demo settings (train/demo_settings.py), e.g. viclip_steps=100 world.train_videos=50")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from videochat.config import ConfigError

    try:
        metrics = run_demo(args.workdir, quick=args.quick, overwrite=args.overwrite, progress=not args.no_progress,
                           overrides=args.set)
    except (DemoError, ConfigError) as e:
        print(f"videochat demo: {e}", file=sys.stderr)
        return 1
    w = Path(args.workdir)
    print(f"\n[demo] done in {metrics['wall_seconds']:.0f} s: held-out accuracy "
          + ", ".join(f"{k.split('_')[0]} {v:.2f}" for k, v in metrics["heldout"].items())
          + " (no-video ablation: " + ", ".join(f"{v:.2f}" for v in metrics["ablation_no_video"].values())
          + "; chance " + ", ".join(f"{v:.2f}" for v in metrics["chance"].values()) + ")")
    print(f"[demo] report: {w / 'report.md'}   metrics: {w / 'metrics.json'}")
    print(f"[demo] chat with it:  videochat serve --model {w / 'export'}")
    return 0


class _State:
    """DIR/demo_state.json: the mode the folder was made with and the stages finished (with their seconds)."""

    def __init__(self, workdir: Path, mode: str, overwrite: bool):
        self.path = workdir / "demo_state.json"
        if overwrite and workdir.exists():
            shutil.rmtree(workdir)
        if workdir.exists() and any(workdir.iterdir()):
            if not self.path.is_file():
                raise DemoError(f"{workdir} exists, is not empty and is not a demo folder; choose another "
                                "--workdir or pass --overwrite")
            state = json.loads(self.path.read_text())
            if state.get("mode") != mode:
                raise DemoError(f"{workdir} holds a {state.get('mode')!r} demo run; this is {mode!r}: use another "
                                "--workdir or --overwrite")
        else:
            workdir.mkdir(parents=True, exist_ok=True)
            state = {"mode": mode, "done": {}}
        self.state = state
        self._save()

    def _save(self) -> None:
        self.path.write_text(json.dumps(self.state, indent=2) + "\n")

    def done(self, stage: str) -> bool:
        return stage in self.state["done"]

    def finish(self, stage: str, seconds: float, info: dict | None = None) -> None:
        self.state["done"][stage] = {"seconds": round(seconds, 1), **(info or {})}
        self._save()

    @property
    def seconds(self) -> dict[str, float]:
        return {k: v["seconds"] for k, v in self.state["done"].items()}


def _cli(argv: list[str], stage: str) -> None:
    """Run a `videochat` subcommand in-process (the real entry point); a non-zero exit stops the demo."""
    from videochat.cli import main as videochat_main

    print(f"[demo] $ videochat {' '.join(argv)}", flush=True)
    rc = videochat_main(argv)
    if rc:
        raise DemoError(f"stage {stage}: `videochat {' '.join(argv)}` exited with {rc}")


def paths(workdir: str | Path) -> dict[str, Path]:
    w = Path(workdir)
    return {
        "world": w / "world", "videos": w / "world" / "videos", "captions": w / "data" / "captions",
        "interleaved": w / "data" / "interleaved", "qa": w / "data" / "qa", "llm": w / "llm",
        "viclip": w / "runs" / "viclip", "features": w / "features", "align": w / "runs" / "align",
        "instruct": w / "runs" / "instruct", "export": w / "export", "eval": w / "eval",
    }


def train_overrides(p: dict[str, Path], stage: str, s) -> list[str]:
    """`key=value` overrides for the stage's YAML: this workdir's paths and the mode's step counts."""
    common = [f"output_dir={p[stage]}", f"data.video_root={p['videos']}", f"progress={str(s.progress).lower()}"]
    if stage == "viclip":
        return common + [f"data.path={p['captions']}", f"max_steps={s.viclip_steps}", f"batch_size={s.viclip_batch}"]
    chat = [f"model.viclip_checkpoint={p['viclip'] / 'viclip.pth'}", f"model.llm.path={p['llm']}",
            f"data.feature_cache={p['features']}", f"batch_size={s.batch_size}"]
    if stage == "align":
        return common + chat + [f"data.path={p['captions']}", f"max_steps={s.align_steps}"]
    from train.checkpoint import latest_checkpoint

    init = latest_checkpoint(p["align"] / "checkpoints")
    if init is None:
        raise DemoError(f"stage instruct: no align checkpoint under {p['align'] / 'checkpoints'}")
    data = p["world"].parent / "data" / "*" / "train" / "shard-*.jsonl"
    return common + chat + [f"data.path={data}", f"max_steps={s.instruct_steps}", f"init_from={init}"]


def run_demo(workdir: str | Path, quick: bool = False, overwrite: bool = False, progress: bool = True,
             overrides: list[str] | None = None) -> dict:
    """Run (or resume) every stage; returns the metrics written to DIR/metrics.json."""
    from train.demo_settings import settings

    t_start = time.time()
    s = settings(quick, overrides)
    s.progress = progress
    w = Path(workdir)
    mode = ("quick" if quick else "default") + "".join(f" {o}" for o in overrides or [])
    state = _State(w, mode, overwrite)
    p = paths(w)
    for i, stage in enumerate(STAGES, 1):
        if state.done(stage):
            print(f"[demo] {i}/{len(STAGES)} {stage}: already done", flush=True)
            continue
        print(f"\n[demo] {i}/{len(STAGES)} {stage}", flush=True)
        t0 = time.time()
        info = STAGE_FUNCS[stage](p, s, progress, state)
        state.finish(stage, time.time() - t0, info)
    metrics = json.loads((w / "metrics.json").read_text())
    metrics["wall_seconds"] = round(time.time() - t_start, 1)
    return metrics


# ------------------------------------------------------------------------------------------------ stages


def _world(p, s, progress, state) -> dict:
    from data_tools.synthetic import generate_world

    summary = generate_world(p["world"], s.world, progress=progress)
    return {k: summary[k] for k in ("train_videos", "train_events", "heldout_events", "heldout_questions")}


def _samples(p, s, progress, state) -> dict:
    from data_tools.io import iter_samples

    ann = str(p["world"] / "annotations" / "train.jsonl")
    base = ["data", "build", "--annotations", ann, "--videos", str(p["videos"]), "--val-fraction", "0",
            "--workers", "1", "--seed", str(s.world.seed), "--max-clips", "4"] + ([] if progress else ["--quiet"])
    _cli(base + ["--out", str(p["captions"]), "--formats", "caption"], "samples")
    _cli(base + ["--out", str(p["interleaved"]), "--formats", "a,b,c"], "samples")
    (p["qa"] / "train").mkdir(parents=True, exist_ok=True)
    shutil.copy(p["world"] / "qa" / "train" / "shard-00000.jsonl", p["qa"] / "train" / "shard-00000.jsonl")
    return {k: sum(1 for _ in iter_samples(p[k], split="train")) for k in ("captions", "interleaved", "qa")}


def _llm(p, s, progress, state) -> dict:
    from data_tools.io import iter_samples
    from data_tools.synthetic import parse_timestamp, world_text
    from train.demo_lm import pretrain_lm, sample_texts, train_tokenizer

    from train.config import load_train_config
    from train.demo_lm import render_documents

    samples = list(iter_samples([p["captions"], p["interleaved"], p["qa"]], split="train"))
    tok = train_tokenizer(sample_texts(samples) + world_text(s.world), p["llm"], s.lm.vocab_size)
    chat = load_train_config(CONFIGS / "demo_align.yaml", train_overrides(p, "align", s)).model
    captions = {}
    for line in (p["world"] / "annotations" / "train.jsonl").read_text().splitlines():
        row = json.loads(line)
        captions[(row["YoutubeID"], round(parse_timestamp(row["Start_timestamp"]), 3))] = row["Caption"]
    docs, skipped = render_documents(samples, tok, template=chat.template, tokens_per_clip=chat.tokens_per_clip,
                                     placeholder_token=chat.placeholder_token, max_length=s.lm.max_length,
                                     captions=captions)
    info = pretrain_lm(docs, tok, s.lm, p["llm"], progress=progress)
    return {**info, "vocab": len(tok), "skipped_too_long": skipped}


def _train(stage: str):
    def run(p, s, progress, state) -> dict:
        _cli(["train", "--config", str(CONFIGS / f"demo_{stage}.yaml"), *train_overrides(p, stage, s)], stage)
        return {}

    return run


def _features(p, s, progress, state) -> dict:
    from train.config import load_train_config
    from train.modeling import build_chat_model
    from videochat.features_extract import extract

    cfg = load_train_config(CONFIGS / "demo_align.yaml", train_overrides(p, "align", s))
    model = build_chat_model(cfg, "cpu").eval()
    samples = [str(p[k]) for k in ("captions", "interleaved", "qa")]
    counts = extract(model, samples, p["features"], video_root=str(p["videos"]), batch_size=32, num_workers=1,
                     progress=progress)
    if counts["rejected"]:
        raise DemoError(f"stage features: {counts['rejected']} clips could not be decoded; see "
                        f"{p['features'] / 'rejects.jsonl'}")
    return counts


def _export(p, s, progress, state) -> dict:
    if p["export"].exists():
        shutil.rmtree(p["export"])  # a half-written export from an interrupted run
    _cli(["export", "--checkpoint", str(p["instruct"]), "--out", str(p["export"]), "--merge-lora"], "export")
    return {}


def _eval(p, s, progress, state) -> dict:
    from train.demo_eval import evaluate_heldout

    return evaluate_heldout(p, s, progress=progress)


def _report(p, s, progress, state) -> dict:
    from train.demo_report import write_report

    write_report(p, s, state.seconds)
    return {}


STAGE_FUNCS = {
    "world": _world, "samples": _samples, "llm": _llm, "viclip": _train("viclip"), "features": _features,
    "align": _train("align"), "instruct": _train("instruct"), "export": _export, "eval": _eval, "report": _report,
}
