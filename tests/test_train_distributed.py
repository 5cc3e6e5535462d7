"""DeepSpeed ZeRO-2 in one gloo CPU process (with a resume from its own checkpoint) and torchrun DDP with two
CPU processes, through the real entry point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_train_fixtures import ROOT, config_path, make_samples, tiny_overrides

from videochat.cli import main as videochat_main

ZERO2 = str(ROOT / "train" / "deepspeed" / "zero2.json")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _with_one_rank_env(monkeypatch) -> None:
    """A one-rank world for DeepSpeed. The gloo group it creates stays up for the rest of this process:
    DeepSpeed caches its groups at module level, so a destroyed world would break a later DeepSpeed run."""
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(k, v)  # restored after the test


def test_deepspeed_zero2_single_gloo_process_trains_and_resumes_bitwise(tmp_path, monkeypatch):
    pytest.importorskip("deepspeed")
    _with_one_rank_env(monkeypatch)
    _deepspeed_run(make_samples(tmp_path), tmp_path, resume=True)


def _deepspeed_run(data, tmp_path, resume: bool):
    args = ["train", "--config", str(config_path("instruct"))]
    extra = {"engine.kind": "deepspeed", "engine.deepspeed_config": ZERO2, "eval_every": 0, "grad_accum": 2,
             "save_every": 1, "keep_last": 3}
    ref = tmp_path / "ds"
    assert videochat_main([*args, *tiny_overrides(data, ref, "instruct", steps=2, **extra)]) == 0
    ck = ref / "checkpoints"
    assert (ck / "step-000002" / "deepspeed").is_dir() and not (ck / "step-000002" / "optimizer.pt").exists()
    state = json.loads((ck / "step-000002" / "state.json").read_text())
    assert state["engine"] == "deepspeed" and state["samples"] == 2 * 2 * 2
    first = load_file(str(ck / "step-000001" / "trainable.safetensors"))
    last = load_file(str(ck / "step-000002" / "trainable.safetensors"))
    assert any(".lora_" in k for k in last) and any(not torch.equal(first[k], last[k]) for k in last)
    # DeepSpeed saves only trainable tensors (exclude_frozen_parameters): no 7B base copies per checkpoint
    ds_files = list((ck / "step-000002" / "deepspeed").rglob("*model_states.pt"))
    module = torch.load(ds_files[0], map_location="cpu", weights_only=False)["module"]
    assert set(module) == {"model." + k for k in last}
    if not resume:
        return
    # resume step 2 from step 1 in a copy: DeepSpeed's optimizer partitions + our RNG/data state
    run = tmp_path / "resumed"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copytree(ck / "step-000001", run / "checkpoints" / "step-000001")
    assert videochat_main([*args, *tiny_overrides(data, run, "instruct", steps=2, **extra)]) == 0
    again = load_file(str(run / "checkpoints" / "step-000002" / "trainable.safetensors"))
    for k in last:
        assert torch.equal(last[k], again[k]), k


@pytest.mark.slow
def test_torchrun_two_process_ddp_on_cpu(tmp_path):
    data = make_samples(tmp_path)
    out = tmp_path / "ddp"
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m", "videochat.cli", "train",
           "--config", str(config_path("instruct")),
           *tiny_overrides(data, out, "instruct", steps=2, save_every=2, eval_every=2)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-4000:]
    state = json.loads((out / "checkpoints" / "step-000002" / "state.json").read_text())
    assert state["engine"] == "ddp" and state["world_size"] == 2 and state["samples"] == 2 * 2 * 2 * 2  # steps x accum x batch x ranks
    assert (out / "checkpoints" / "step-000002" / "rng-rank1.pt").is_file()
    assert "engine=ddp" in res.stdout and "world=2" in res.stdout


def _torchrun(out, data, steps: int, *extra: str):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m", "videochat.cli", "train",
           "--config", str(config_path("instruct")),
           *tiny_overrides(data, out, "instruct", steps=steps, save_every=1, eval_every=0), *extra]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-4000:]
    return res


@pytest.mark.slow
def test_torchrun_two_rank_deepspeed_zero2_shards_and_resumes_bitwise(tmp_path):
    pytest.importorskip("deepspeed")
    data = make_samples(tmp_path)
    ds = ("engine.kind=deepspeed", f"engine.deepspeed_config={ZERO2}")
    ref = tmp_path / "ref"
    _torchrun(ref, data, 2, *ds)
    parts = sorted(p.name for p in (ref / "checkpoints" / "step-000002" / "deepspeed" / "state").iterdir())
    assert parts == ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                     "zero_pp_rank_1_mp_rank_00_optim_states.pt"]  # optimizer state sharded over the 2 ranks
    run = tmp_path / "resumed"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copytree(ref / "checkpoints" / "step-000001", run / "checkpoints" / "step-000001")
    _torchrun(run, data, 2, *ds)
    want = load_file(str(ref / "checkpoints" / "step-000002" / "trainable.safetensors"))
    got = load_file(str(run / "checkpoints" / "step-000002" / "trainable.safetensors"))
    for k in want:
        assert torch.equal(want[k], got[k]), k
