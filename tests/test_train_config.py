"""Train configs, validation before anything heavy, the LR schedule, parameter groups and the sampler."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from train.config import ConfigError, load_train_config
from train.engine import deepspeed_config
from train.optim import lr_lambda, param_groups
from train.sampler import ResumableBatchSampler
from train.validate import QLORA_CPU, ZERO3, assert_frozen_have_no_grad, preflight

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "train" / "configs").glob("*.yaml"))
OWN = [p for p in CONFIGS if not p.name.startswith("demo_")]  # demo_*.yaml belong to (and are tested by) the demo


@pytest.mark.parametrize("path", OWN, ids=lambda p: p.name)
def test_every_config_file_parses(path):
    cfg = load_train_config(path, ["data.path=/nonexistent"])
    assert cfg.recipe in ("align", "instruct", "viclip")


@pytest.mark.parametrize("path", [p for p in OWN if "7b" in p.name], ids=lambda p: p.name)
def test_7b_configs_state_their_memory_peak(path):
    header = "".join(line for line in path.read_text().splitlines(True) if line.startswith("#"))
    assert re.search(r"[Pp]eak memory.*\d+(\.\d+)? GiB", header), header
    assert "estimated" in header and "meta" in header  # how it was obtained (no GPU was at hand)


def test_unknown_keys_and_bad_values_are_rejected():
    path = ROOT / "train" / "configs" / "align_tiny.yaml"
    with pytest.raises(ConfigError, match="unknown key.*optim.*lr_max"):
        load_train_config(path, ["data.path=x", "optim.lr_max=1"])
    with pytest.raises(ConfigError, match="unknown key.*bacth_size"):
        load_train_config(path, ["data.path=x", "bacth_size=2"])
    with pytest.raises(ConfigError, match="recipe"):
        load_train_config(path, ["data.path=x", "recipe=pretrain"])
    with pytest.raises(ConfigError, match="data.path"):
        load_train_config(path, [])
    with pytest.raises(ConfigError, match="align recipe keeps the LLM frozen"):
        load_train_config(path, ["data.path=x", "model.lora.enabled=true"])
    with pytest.raises(ConfigError, match="expected an integer"):
        load_train_config(path, ["data.path=x", "batch_size=two"])


@pytest.mark.parametrize("recipe,extra", [("align", []), ("instruct", []), ("instruct", ["model.llm.load_in_4bit=true"]),
                                          ("viclip", [])], ids=["align", "lora", "qlora", "viclip"])
def test_zero3_is_refused_for_every_recipe_with_reason_and_alternative(tmp_path, recipe, extra):
    """ZeRO-3 crashes with LoRA and would checkpoint empty partitions: refused up front, ZeRO-2 / DDP offered."""
    zero3 = tmp_path / "zero3.json"
    zero3.write_text(json.dumps({**json.loads((ROOT / "train/deepspeed/zero2.json").read_text()),
                                 "zero_optimization": {"stage": 3}}))
    cfg = load_train_config(ROOT / "train" / "configs" / f"{recipe}_tiny.yaml",
                            ["data.path=x", "engine.kind=deepspeed", f"engine.deepspeed_config={zero3}", *extra])
    with pytest.raises(ConfigError) as e:
        preflight(cfg)
    msg = str(e.value)
    assert msg == ZERO3 and "LoRA" in msg and "empty" in msg and "Params4bit" in msg
    assert "ZeRO-2" in msg and "DDP" in msg and "zero2.json" in msg
    assert not (ROOT / "train" / "deepspeed" / "zero3.json").exists()  # not shipped: it cannot work here


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_qlora_on_cpu_is_refused_clearly():
    path = ROOT / "train" / "configs" / "instruct_tiny.yaml"
    cfg = load_train_config(path, ["data.path=x", "model.llm.load_in_4bit=true"])
    with pytest.raises(ConfigError) as e:
        preflight(cfg)
    assert str(e.value) == QLORA_CPU and "CUDA" in QLORA_CPU
    with pytest.raises(ConfigError, match="needs model.lora.enabled"):
        load_train_config(path, ["data.path=x", "model.llm.load_in_4bit=true", "model.lora.enabled=false"])


def test_deepspeed_json_takes_batch_and_precision_from_the_train_config(tmp_path):
    path = ROOT / "train" / "configs" / "instruct_tiny.yaml"
    cfg = load_train_config(path, ["data.path=x", "engine.kind=deepspeed", "batch_size=3", "grad_accum=4",
                                   f"engine.deepspeed_config={ROOT / 'train/deepspeed/zero2.json'}"])
    ds = deepspeed_config(cfg, world_size=2)
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_accumulation_steps"] == 4
    assert ds["train_batch_size"] == 24 and ds["bf16"]["enabled"] is False
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 2}}))
    cfg.engine.deepspeed_config = str(bad)
    with pytest.raises(ConfigError, match="disagrees"):
        deepspeed_config(cfg, world_size=1)
    with pytest.raises(ConfigError, match="needs a JSON"):
        load_train_config(path, ["data.path=x", "engine.kind=deepspeed"])


def test_warmup_then_cosine_schedule():
    from train.config import OptimConfig

    f = lr_lambda(OptimConfig(warmup_steps=10, min_lr_ratio=0.1), total_steps=110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(109) == pytest.approx(0.1)
    mid = f(60)
    assert 0.5 < mid < 0.6  # half way through the cosine: (1 + 0.1) / 2
    values = [f(s) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_weight_decay_groups_skip_biases_norms_embeddings_and_queries():
    m = torch.nn.Module()
    m.proj = torch.nn.Linear(4, 4)
    m.norm = torch.nn.LayerNorm(4)
    m.embed_tokens = torch.nn.Embedding(5, 4)
    m.query_tokens = torch.nn.Parameter(torch.zeros(1, 3, 4))
    m.frozen = torch.nn.Linear(4, 4).requires_grad_(False)
    groups = param_groups(m, 0.05)
    decay = next(g for g in groups if g["weight_decay"] > 0)
    keep = next(g for g in groups if g["weight_decay"] == 0)
    assert decay["names"] == ["proj.weight"]
    assert sorted(keep["names"]) == ["embed_tokens.weight", "norm.bias", "norm.weight", "proj.bias", "query_tokens"]


def test_sampler_is_deterministic_resumable_and_rank_sharded():
    lengths = [5, 50, 7, 60, 3, 40, 8, 70, 2, 30, 9, 20]
    full = list(ResumableBatchSampler(12, 2, seed=3, lengths=lengths, group_by_length=True))
    again = list(ResumableBatchSampler(12, 2, seed=3, lengths=lengths, group_by_length=True))
    assert full == again and sorted(i for b in full for i in b) == list(range(12))
    s = ResumableBatchSampler(12, 2, seed=3, lengths=lengths, group_by_length=True)
    s.set_position(0, 4)
    assert list(s) == full[4:]
    assert list(s) == full  # the next pass starts at batch 0 again
    s.set_position(1, 0)
    assert list(s) != full  # a new epoch is a new permutation
    r0 = list(ResumableBatchSampler(12, 2, seed=3, rank=0, world_size=2))
    r1 = list(ResumableBatchSampler(12, 2, seed=3, rank=1, world_size=2))
    assert len(r0) == len(r1) == 3
    assert sorted(i for b in r0 + r1 for i in b) == list(range(12))
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        ResumableBatchSampler(3, 2, world_size=2)


def test_frozen_parameter_with_a_gradient_stops_the_run():
    m = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    m[0].requires_grad_(False)
    m(torch.randn(2, 3)).sum().backward()
    info = assert_frozen_have_no_grad(m)
    assert info == {"frozen": 2, "trainable_with_grad": 2, "trainable_without_grad": 0}
    m[0].weight.grad = torch.zeros(3, 3)  # what a freezing mistake (e.g. requires_grad flipped later) leaves
    with pytest.raises(RuntimeError, match="frozen parameters received a gradient.*0.weight"):
        assert_frozen_have_no_grad(m)
