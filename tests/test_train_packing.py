"""`data.packing` in training: config checks, the packed loss equals the padded one (token-weighted, as the loop
weighs it), a tiny instruct run through the real CLI, and exact resume after SIGKILL with packed batches."""

from __future__ import annotations

import json

import pytest
import torch
from test_train_fixtures import config_path, make_samples, tiny_overrides

from train.config import ConfigError, load_train_config
from videochat.cli import main as videochat_main

# tiny samples are ~100 real tokens (~62 estimated): rows of 256 are planned with 3 samples (fill 0.9) and
# re-packed in order with the real lengths into 2 rows (2 + 1), so rows hold several samples plus padding
PACK = {"data.packing": True, "data.packing_max_tokens": 256, "data.max_length": 256, "data.packing_rows": 1}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_samples(tmp_path_factory.mktemp("packing"))


@pytest.mark.parametrize("extra, message", [
    (["recipe=viclip"], "viclip recipe"),
    (["data.max_length=512", "data.packing_max_tokens=256"], "max_length=512 > data.packing_max_tokens=256"),
    (["data.max_length=null"], "needs a row length"),
    (["data.packing_rows=0"], "packing_rows: must be >= 1"),
    (["data.packing_max_tokens=0"], "packing_max_tokens: must be >= 1"),
])
def test_bad_packing_configs_are_refused_with_the_reason(extra, message):
    with pytest.raises(ConfigError, match=message):
        load_train_config(config_path("instruct"), ["data.path=x", "data.packing=true", *extra])


def test_packing_defaults_come_from_max_length_and_batch_size():
    cfg = load_train_config(config_path("instruct"), ["data.path=x", "data.packing=true"])
    assert cfg.packing_shape() == (cfg.data.max_length, cfg.batch_size)
    cfg = load_train_config(config_path("instruct"), ["data.path=x", "data.packing=true", "data.max_length=null",
                                                      "data.packing_max_tokens=300", "data.packing_rows=3"])
    assert cfg.packing_shape() == (300, 3)
    assert not load_train_config(config_path("instruct"), ["data.path=x"]).data.packing  # opt-in


def test_packed_loss_and_target_count_equal_the_padded_batch(data, tmp_path):
    from train.engine import Dist
    from train.recipes import get_recipe
    from train.recipes.chat_data import count, targets
    from videochat.data import Collator

    over = [f"{k}={'true' if v is True else v}" for k, v in PACK.items()]
    cfg = load_train_config(config_path("instruct"), tiny_overrides(data, tmp_path, "instruct") + over)
    parts = get_recipe("instruct")(cfg, Dist())
    items = [parts.train_data[i] for i in range(5)]
    packed = parts.collate(items)
    padded = Collator(parts.model.tokenizer.pad_token_id or parts.model.tokenizer.eos_token_id)(items)
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] < len(items)  # several samples per row
    assert count(packed) == count(padded) == (5, int(padded["attention_mask"].sum()))
    assert targets(packed) == targets(padded) > 0
    parts.step_module.eval()  # no LoRA dropout: both forwards see the same function
    with torch.no_grad():
        got, want = parts.step_module(packed), parts.step_module(padded)
        # the loop's weighting: summed token loss / num_items_in_batch
        n = targets(padded)
        got_sum = parts.step_module({**packed, "num_items_in_batch": 1})
        want_sum = parts.step_module({**padded, "num_items_in_batch": 1})
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_sum / n, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_sum, want_sum, rtol=1e-5, atol=1e-4)


def test_instruct_tiny_trains_with_packing_through_the_cli(data, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--config", str(config_path("instruct")),
            *tiny_overrides(data, out, "instruct", steps=3, save_every=3, grad_accum=2, **PACK)]
    assert videochat_main(args) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert any("val_loss" in r for r in rows)
    state = json.loads((out / "checkpoints" / "step-000003" / "state.json").read_text())
    # 8 samples -> 3 planned rows (3 + 3 + 2) per epoch, 1 row per micro-batch: 6 micro-batches = 2 epochs
    assert state["samples"] == 2 * 8 and (state["epoch"], state["batch"]) == (1, 3)
    assert state["tokens"] > 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["data"]["packing"] is True and saved["data"]["packing_rows"] == 1


@pytest.mark.slow
def test_sigkill_then_resume_with_packing_is_bitwise_equal(tmp_path):
    """The resume test of test_train_resume.py, with packed batches (PackedBatchSampler + PackingCollator)."""
    import test_train_resume as resume

    original = resume._args
    resume._args = lambda d, o, **extra: original(d, o, **PACK, **extra)
    try:
        resume.test_sigkill_then_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path)
    finally:
        resume._args = original
    for run in ("ref", "killed"):  # both runs really were packed
        assert json.loads((tmp_path / run / "config.json").read_text())["data"]["packing"] is True
