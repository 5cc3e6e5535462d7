"""Exact resume: a run SIGKILLed mid-training and restarted reaches step n with parameters and optimizer
state bitwise equal to an uninterrupted run (CPU, instruct recipe: LoRA dropout, random frame sampling,
an epoch boundary crossed after the kill)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import torch
from safetensors.torch import load_file
from test_train_fixtures import ROOT, config_path, make_samples, tiny_overrides

from videochat.cli import main as videochat_main

STEPS = 6  # 8 train samples / batch 2 = 4 batches per epoch: steps 5-6 are in epoch 1


def _args(data, out, **extra):
    return ["train", "--config", str(config_path("instruct")),
            *tiny_overrides(data, out, "instruct", steps=STEPS, save_every=1, keep_last=2, eval_every=3,
                            grad_accum=1, **{"model.lora.dropout": 0.2, "model.llm.gradient_checkpointing": True},
                            **extra)]


def test_sigkill_then_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path):
    data = make_samples(tmp_path)
    ref, run = tmp_path / "ref", tmp_path / "killed"

    # the run that gets killed, as a user would start it
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "videochat.cli", *_args(data, run)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    target = run / "checkpoints" / "step-000002"
    killed = {}

    def watch():  # SIGKILL as soon as the step-2 checkpoint is complete (step 3 is then under way)
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            if target.exists():
                os.kill(proc.pid, signal.SIGKILL)
                killed["at"] = time.time()
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    # meanwhile, the uninterrupted reference in this process
    assert videochat_main(_args(data, ref)) == 0
    watcher.join()
    proc.wait()
    assert "at" in killed, proc.stderr.read().decode()[-3000:]
    assert proc.returncode == -signal.SIGKILL
    done = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-") and "." not in p.name)
    assert f"step-{STEPS:06d}" not in done, f"killed too late to test anything: {done}"

    # resume: same command, picks up the newest complete checkpoint
    assert videochat_main(_args(data, run)) == 0

    final = f"checkpoints/step-{STEPS:06d}"
    want, got = load_file(str(ref / final / "trainable.safetensors")), load_file(str(run / final / "trainable.safetensors"))
    assert want.keys() == got.keys() and any(".lora_" in k for k in want)
    for k in want:
        assert torch.equal(want[k], got[k]), k
    opt_w = torch.load(ref / final / "optimizer.pt", weights_only=True)["optimizer"]["state"]
    opt_g = torch.load(run / final / "optimizer.pt", weights_only=True)["optimizer"]["state"]
    for i in opt_w:
        assert torch.equal(opt_w[i]["exp_avg_sq"], opt_g[i]["exp_avg_sq"])
    import json

    sw, sg = (json.loads((d / final / "state.json").read_text()) for d in (ref, run))
    assert sw == sg and sw["epoch"] == 1
