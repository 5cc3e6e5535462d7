"""Loss weighting per optimizer step: every label token weighs the same however the step is split into
micro-batches (and ranks), as transformers does with `num_items_in_batch`; validation loss is token-weighted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from test_train_fixtures import ROOT, config_path, make_samples, tiny_overrides

from train.config import load_train_config


def _cfg(data, out, recipe="align", **extra):
    items = {"max_steps": 1, "save_every": 100, "eval_every": 0, "data.group_by_length": False,
             "data.val_split": "null", "resume": "never", "optim.grad_clip": "null", **extra}
    return load_train_config(config_path(recipe), tiny_overrides(data, out, recipe, steps=1, **items))


def _step_grads(cfg):
    """Gradients of the first optimizer step through the real Trainer (captured just before the update)."""
    from train.loop import Trainer

    tr = Trainer(cfg)
    grads = {}
    orig = tr.engine.step

    def capture():
        grads.update({n: p.grad.detach().clone() for n, p in tr.parts.model.named_parameters() if p.requires_grad})
        return orig()

    tr.engine.step = capture
    tr.run()
    loss = [json.loads(line) for line in (tr.out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    return grads, loss[0]["loss"], tr


@pytest.mark.parametrize("recipe", ["align", "instruct"])
def test_bs1_x_accum2_equals_bs2_x_accum1(tmp_path, recipe):
    data = make_samples(tmp_path, n_train=2, n_val=0)  # answers of different lengths: 5 vs 6 words
    lora = {"model.lora.dropout": 0.0} if recipe == "instruct" else {}
    g_split, loss_split, _ = _step_grads(_cfg(data, tmp_path / "a", recipe, batch_size=1, grad_accum=2, **lora))
    g_whole, loss_whole, _ = _step_grads(_cfg(data, tmp_path / "b", recipe, batch_size=2, grad_accum=1, **lora))
    assert g_split.keys() == g_whole.keys() and g_split
    flat_split, flat_whole = (torch.cat([g[k].flatten() for k in sorted(g)]) for g in (g_split, g_whole))
    assert _rel(flat_split, flat_whole) < 1e-5  # fp32 summation-order noise only (~1e-7)
    scale = float(flat_whole.abs().max())
    for k in g_split:  # (attention key biases get ~0 gradients: pure noise relative to themselves)
        torch.testing.assert_close(g_split[k], g_whole[k], rtol=1e-4, atol=1e-5 * scale)
    assert loss_split == pytest.approx(loss_whole, rel=1e-5)

    # the test can fail: the old weighting (token mean per micro-batch, / grad_accum) gives another gradient
    from torch.utils.data import DataLoader

    from train.loop import Trainer

    parts = Trainer(_cfg(data, tmp_path / "c", recipe, batch_size=1, grad_accum=2, **lora)).parts  # same init
    model, step = parts.model, parts.step_module.train()
    batches = list(DataLoader(parts.train_data, batch_size=1, collate_fn=parts.collate))
    assert parts.targets(batches[0]) != parts.targets(batches[1])
    for b in batches:
        (step(b) / 2).backward()  # no num_items_in_batch: this batch's own token mean
    params = dict(model.named_parameters())
    flat_old = torch.cat([params[k].grad.flatten() for k in sorted(g_whole)])
    assert _rel(flat_old, flat_whole) > 1e-3  # orders of magnitude above the tolerance above


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


def test_validation_loss_is_weighted_by_tokens(tmp_path):
    from train.loop import Trainer

    data = make_samples(tmp_path, n_train=2, n_val=3)
    cfg = _cfg(data, tmp_path / "v", **{"data.val_split": "val", "batch_size": 2})
    tr = Trainer(cfg)
    got = tr.evaluate()
    step = tr.parts.step_module.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(3):  # one sample at a time: summed token losses / all tokens
            b = tr.parts.collate([tr.parts.val_data[i]])
            total += float(step({**b, "num_items_in_batch": 1}))
            n += tr.parts.targets(b)
    assert got == pytest.approx(total / n, rel=1e-5)


@pytest.mark.slow
def test_two_rank_ddp_step_equals_one_process_with_the_whole_batch(tmp_path):
    """Ranks with different token counts: num_items_in_batch is summed over ranks (one all-reduce)."""
    data = make_samples(tmp_path, n_train=2, n_val=0)
    common = dict(steps=1, save_every=1, eval_every=0, grad_accum=1, **{"data.group_by_length": False,
                  "data.val_split": "null", "optim.grad_clip": 1000.0})
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", str(port), "-m", "videochat.cli", "train",
           "--config", str(config_path("align")), *tiny_overrides(data, tmp_path / "ddp", "align", batch_size=1, **common)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-4000:]
    from videochat.cli import main

    assert main(["train", "--config", str(config_path("align")),
                 *tiny_overrides(data, tmp_path / "one", "align", batch_size=2, **common)]) == 0

    def first(out):
        return next(json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x)

    a, b = first(tmp_path / "ddp"), first(tmp_path / "one")
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)


@pytest.mark.slow
def test_deepspeed_zero2_accum2_equals_one_process_bs2(tmp_path, monkeypatch):
    """DeepSpeed divides by its accumulation steps itself: the step's loss and gradient norm still match."""
    pytest.importorskip("deepspeed")
    from test_train_distributed import ZERO2, _with_one_rank_env

    from videochat.cli import main

    _with_one_rank_env(monkeypatch)
    data = make_samples(tmp_path, n_train=2, n_val=0)
    common = dict(steps=1, save_every=1, eval_every=0, **{"data.group_by_length": False, "data.val_split": "null",
                  "optim.grad_clip": 1e9, "model.lora.dropout": 0.0})
    args = ["train", "--config", str(config_path("instruct"))]
    assert main([*args, *tiny_overrides(data, tmp_path / "ds", "instruct", batch_size=1, grad_accum=2, **common,
                                        **{"engine.kind": "deepspeed", "engine.deepspeed_config": ZERO2})]) == 0
    assert main([*args, *tiny_overrides(data, tmp_path / "one", "instruct", batch_size=2, grad_accum=1, **common)]) == 0

    def first(out):
        return next(json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x)

    a, b = first(tmp_path / "ds"), first(tmp_path / "one")
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
