"""Sequence packing: packed rows give exactly the per-sample results of running the samples one by one."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from videochat.builders import videochat_tiny
from videochat.collate import Collator
from videochat.conversation import render
from videochat.packing import PackedBatchSampler, PackingCollator, pack_first_fit, pack_in_order, packed_llm_kwargs

TEXTS = [
    ("What happens in the clip?", "A red circle moves to the left and turns blue."),
    ("Describe it.", "Two squares."),
    ("And now, compared with the previous clip, what changed?", "The triangle appears at the top right corner, "
     "grows, and finally leaves the frame at the bottom."),
]


def _item(m, k: int, n_clips: int, seed: int) -> dict:
    """A rendered item as `SampleDataset` makes it: `n_clips` clips, one question/answer turn per clip."""
    msgs = []
    for c in range(max(n_clips, 1)):
        q, a = TEXTS[(k + c) % len(TEXTS)]
        content = ([{"type": "clip", "clip": c}] if c < n_clips else []) + [{"type": "text", "text": q}]
        msgs += [{"role": "user", "content": content}, {"role": "assistant", "content": [{"type": "text", "text": a}]}]
    r = render(msgs, m.tokenizer, template=m.config.template, tokens_per_clip=m.tokens_per_clip,
               placeholder_token=m.config.placeholder_token)
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.tensor(r.input_ids), "labels": torch.tensor(r.labels),
            "clip_frames": torch.randn(n_clips, 8, 3, 32, 32, generator=g), "num_clips": n_clips, "id": f"s{k}"}


def _model(attn="sdpa"):
    m = videochat_tiny(lora=True, **{"llm.attn_implementation": attn})
    with torch.no_grad():  # non-zero adapters, so LoRA takes part
        for n, p in m.llm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    return m.eval()  # eval: no Q-Former dropout, so runs are comparable; use_cache stays on (config default)


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def items(model):
    return [_item(model, 0, 2, 0), _item(model, 1, 1, 1), _item(model, 2, 3, 2), _item(model, 3, 0, 3)]


def _alone(m, it):
    """Logits [L, V] and per-token losses [L-1] of one sample run by itself (batch 1, no padding)."""
    out = m(it["input_ids"][None], clip_frames=it["clip_frames"] if it["num_clips"] else None)
    logits = out.logits[0]
    return logits, F.cross_entropy(logits[:-1], it["labels"][1:], reduction="none", ignore_index=-100)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_row_equals_samples_run_separately(attn, model, items):
    m = model if attn == "sdpa" else _model(attn)
    lengths = [len(it["input_ids"]) for it in items]
    batch = PackingCollator(m.tokenizer.pad_token_id, max_tokens=sum(lengths[:3]) + 5)(items)
    assert batch["input_ids"].shape[0] >= 2 and max(len(r) for r in batch["seq_lens"]) >= 2  # really packed
    with torch.no_grad():
        packed = m(batch["input_ids"], labels=batch["labels"], clip_frames=batch["clip_frames"],
                   num_clips=batch["num_clips"], position_ids=batch["position_ids"])
        by_id = {it["id"]: it for it in items}
        k, checked = 0, 0
        for r, row in enumerate(batch["seq_lens"]):
            at = 0
            for n in row:
                it = by_id[batch["ids"][k]]
                want_logits, want_loss = _alone(m, it)
                got = packed.logits[r, at : at + n]
                torch.testing.assert_close(got, want_logits, rtol=1e-5, atol=1e-5)
                got_loss = F.cross_entropy(got[:-1], batch["labels"][r, at + 1 : at + n], reduction="none",
                                           ignore_index=-100)
                torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-5)
                at, k, checked = at + n, k + 1, checked + 1
        assert checked == len(items)
        padded = Collator(m.tokenizer.pad_token_id)(items)
        ref = m(padded["input_ids"], padded["attention_mask"], padded["labels"], clip_frames=padded["clip_frames"],
                num_clips=padded["num_clips"])
    # Same tokens and the same count: mean token loss of the packed batch == the padded batch's.
    torch.testing.assert_close(packed.loss, ref.loss, rtol=1e-5, atol=1e-6)
    n_targets = sum(int((it["labels"][1:] != -100).sum()) for it in items)
    assert int((batch["labels"] != -100).sum()) == n_targets  # the packed first-label masking removes no target


def test_without_the_guard_samples_would_attend_to_each_other(model, items):
    """Negative control: the same packed row through the bare LLM with a 2D mask (or a cache) mixes samples."""
    batch = PackingCollator(model.tokenizer.pad_token_id, max_tokens=10_000)(items[:2])
    assert batch["input_ids"].shape[0] == 1
    ids, pos = batch["input_ids"], batch["position_ids"]
    n0 = batch["seq_lens"][0][0]
    with torch.no_grad():
        embeds = model.embed_inputs(ids, clip_frames=batch["clip_frames"], num_clips=batch["num_clips"])
        good = model.llm(inputs_embeds=embeds, position_ids=pos, use_cache=False).logits
        leaky = model.llm(inputs_embeds=embeds, position_ids=pos, attention_mask=torch.ones_like(ids)).logits
        cached = model.llm(inputs_embeds=embeds, position_ids=pos, use_cache=True).logits
    torch.testing.assert_close(good[:, :n0], leaky[:, :n0])  # the first sample sees nothing before it anyway
    assert not torch.allclose(good[:, n0:], leaky[:, n0:], atol=1e-4)
    assert not torch.allclose(good[:, n0:], cached[:, n0:], atol=1e-4)
    with pytest.raises(ValueError, match="attention_mask=None"):
        model(ids, torch.ones_like(ids), clip_frames=batch["clip_frames"], position_ids=pos)
    with pytest.raises(ValueError, match="use_cache"):
        model(ids, clip_frames=batch["clip_frames"], position_ids=pos, use_cache=True)


def test_gradients_match_the_padded_batch(items):
    m = _model()
    lengths = [len(it["input_ids"]) for it in items]
    grads = []
    for collate in (Collator(m.tokenizer.pad_token_id), PackingCollator(m.tokenizer.pad_token_id, max(lengths) + 40)):
        b = collate(items)
        extra = {"position_ids": b["position_ids"]} if "position_ids" in b else {"attention_mask": b["attention_mask"]}
        m.zero_grad()
        out = m(b["input_ids"], labels=b["labels"], clip_frames=b["clip_frames"], num_clips=b["num_clips"], **extra)
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad and p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("lora_A" in n for n in grads[0])
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6, msg=n)


def test_collator_layout(items, model):
    pad = model.tokenizer.pad_token_id
    lengths = [len(it["input_ids"]) for it in items]
    b = PackingCollator(pad, max_tokens=max(lengths) + 10, pad_to_multiple_of=8)(items + [None])
    assert b["num_samples"] == 4 and b["num_tokens"] == sum(lengths) and sorted(b["ids"]) == ["s0", "s1", "s2", "s3"]
    assert b["input_ids"].shape[1] % 8 == 0 and "attention_mask" not in b
    by_id = {it["id"]: it for it in items}
    k, clips = 0, []
    for r, row in enumerate(b["seq_lens"]):
        assert sum(row) <= max(lengths) + 10
        at = 0
        for n in row:
            it = by_id[b["ids"][k]]
            assert torch.equal(b["input_ids"][r, at : at + n], it["input_ids"])
            assert torch.equal(b["position_ids"][r, at : at + n], torch.arange(n))
            assert b["labels"][r, at] == -100 and torch.equal(b["labels"][r, at + 1 : at + n], it["labels"][1:])
            clips.append(it["clip_frames"])
            at, k = at + n, k + 1
        assert (b["input_ids"][r, at:] == pad).all() and (b["labels"][r, at:] == -100).all()
        assert torch.equal(b["position_ids"][r, at:], torch.arange(b["input_ids"].shape[1] - at))
        assert int(b["num_clips"][r]) * model.tokens_per_clip == int((b["input_ids"][r] == model.placeholder_id).sum())
    assert torch.equal(b["clip_frames"], torch.cat(clips))  # row-major, order of appearance
    assert PackingCollator(pad, 64)([None, None]) is None


def test_first_fit_decreasing_and_oversize():
    rows = pack_first_fit([5, 3, 8, 2, 2], 10)
    assert rows == [[2, 3], [0, 1, 4]]  # 8+2 | 5+3+2
    assert pack_first_fit([12, 3], 10) == [[0], [1]]  # too long: alone, nothing dropped
    with pytest.raises(ValueError, match="max_tokens=10"):
        pack_first_fit([12, 3], 10, oversize="error")
    for lengths in ([1] * 50, [9, 9, 9, 1, 1, 1], list(range(1, 11)) * 3):
        rows = pack_first_fit(lengths, 10)
        assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in r) <= 10 for r in rows)


def test_packed_batch_sampler_fills_rows_shards_ranks_and_resumes():
    lengths = np.random.default_rng(0).integers(5, 100, 300).tolist()

    def make(rank, **kw):
        return PackedBatchSampler(lengths, 100, 3, seed=1, rank=rank, world_size=2, pool_size=64, **kw)

    ranks = [make(0), make(1)]
    assert len(ranks[0]) == len(ranks[1]) > 5
    seen = []
    for s in ranks:
        for idx in s:
            rows = pack_in_order([lengths[i] for i in idx], 100)  # what PackingCollator(order="in_order") does
            assert len(rows) <= 3 and all(sum(lengths[idx[i]] for i in r) <= 100 for r in rows)
            seen += idx
    assert len(seen) == len(set(seen))  # no sample twice in an epoch, ranks disjoint
    assert sum(lengths[i] for i in seen) / (len(ranks[0]) * 2 * 3 * 100) > 0.9  # rows nearly full
    full = list(make(0))
    assert full == list(ranks[0])  # a pure function of (seed, epoch)
    s = make(0)
    s.set_position(1, 0)
    assert list(s) != full
    s.set_position(0, 2)
    assert list(s) == full[2:] and list(s) == full  # resumes mid-epoch, then the next pass starts over
    with pytest.raises(ValueError, match="fewer than"):
        PackedBatchSampler([50] * 5, 100, rows=4)
    assert pack_in_order([60, 30, 20, 90, 10], 100) == [[0, 1], [2], [3, 4]]


def test_in_order_collator_keeps_the_sampler_order(items, model):
    b = PackingCollator(model.tokenizer.pad_token_id, 10_000, order="in_order")(items)
    assert b["ids"] == ["s0", "s1", "s2", "s3"] and b["input_ids"].shape[0] == 1


def test_packed_llm_kwargs_for_flash_attention():
    class Cfg:
        _attn_implementation = "flash_attention_2"

    pos = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]])
    out = packed_llm_kwargs(Cfg(), None, {"position_ids": pos})
    assert out["use_cache"] is False
    assert out["cu_seq_lens_q"].tolist() == [0, 3, 5, 6, 10, 12] and out["max_length_q"] == 4
    assert torch.equal(out["cu_seq_lens_q"], out["cu_seq_lens_k"])
    plain = {"position_ids": torch.arange(6)[None].expand(2, 6)}
    assert packed_llm_kwargs(Cfg(), torch.ones(2, 6), plain) is plain  # unpacked: untouched


@pytest.mark.gpu
def test_packed_flash_attention_on_gpu(items):
    pytest.importorskip("flash_attn")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    m = videochat_tiny(device="cuda", **{"llm.attn_implementation": "flash_attention_2", "llm.dtype": "bfloat16"})
    m.eval()
    batch = PackingCollator(m.tokenizer.pad_token_id, max_tokens=10_000)(items)
    with torch.no_grad():
        packed = m(batch["input_ids"].cuda(), clip_frames=batch["clip_frames"].cuda(),
                   position_ids=batch["position_ids"].cuda()).logits[0]
        at = 0
        for n, sid in zip(batch["seq_lens"][0], batch["ids"]):
            it = next(i for i in items if i["id"] == sid)
            alone = m(it["input_ids"][None].cuda(), clip_frames=it["clip_frames"].cuda() if it["num_clips"] else None)
            torch.testing.assert_close(packed[at : at + n].float(), alone.logits[0].float(), rtol=2e-2, atol=2e-2)
            at += n
