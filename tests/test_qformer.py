"""QFormerProjector: transformers' BLIP-2 / InstructBLIP Q-Former + learned/extra queries + Linear."""

import pytest
import torch
from transformers import Blip2QFormerModel, InstructBlipQFormerModel

from videochat.config import QFormerConfig
from videochat.qformer import QFormerProjector, qformer_parameter_count


def _cfg(**kw):
    base = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                num_query_tokens=4, num_extra_query_tokens=6, vocab_size=100, max_position_embeddings=16)
    base.update(kw)
    return QFormerConfig(**base)


def test_queries_only_shapes_and_layout():
    torch.manual_seed(0)
    p = QFormerProjector(_cfg(), encoder_hidden_size=24, llm_hidden_size=40)
    assert isinstance(p.qformer, Blip2QFormerModel) and p.qformer_kind == "blip2"
    assert p.qformer.config.encoder_hidden_size == 24
    # cross-attention on layers 0 and 2 (every 2nd), none on layer 1; no text branch
    assert [hasattr(layer, "crossattention") for layer in p.qformer.encoder.layer] == [True, False, True]
    assert not any(hasattr(layer, "intermediate") for layer in p.qformer.encoder.layer)
    assert torch.count_nonzero(p.extra_query_tokens) == 0 and p.query_tokens.abs().sum() > 0
    out = p(torch.randn(3, 11, 24))
    assert out.shape == (3, 10, 40) and p.tokens_per_clip == 10
    with pytest.raises(ValueError, match="use_instruction"):
        p(torch.randn(3, 11, 24), instruction_ids=torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[N, S, C\]"):
        p(torch.randn(11, 24))


def test_instruction_input_changes_queries_and_respects_mask():
    torch.manual_seed(0)
    p = QFormerProjector(_cfg(use_instruction=True), encoder_hidden_size=24, llm_hidden_size=40).eval()
    assert isinstance(p.qformer, InstructBlipQFormerModel) and p.qformer_kind == "instructblip"
    x = torch.randn(2, 11, 24)
    ids = torch.randint(1, 100, (2, 5))
    with torch.no_grad():
        plain = p(x)
        a = p(x, ids)
        # padding the instruction with masked positions leaves the result unchanged
        padded = torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], dim=1)
        mask = torch.cat([torch.ones(2, 5, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)], dim=1)
        b = p(x, padded, mask)
    assert a.shape == plain.shape == (2, 10, 40)
    assert not torch.allclose(a, plain)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_extra_queries_follow_the_learned_ones_and_train():
    torch.manual_seed(0)
    p = QFormerProjector(_cfg(), 24, 40)
    q = p.queries(2)
    assert q.shape == (2, 10, 32)
    assert torch.equal(q[:, :4], p.query_tokens.expand(2, -1, -1)) and torch.count_nonzero(q[:, 4:]) == 0
    p(torch.randn(2, 11, 24)).square().mean().backward()
    assert p.extra_query_tokens.grad is not None and p.extra_query_tokens.grad.abs().sum() > 0
    assert p.query_tokens.grad.abs().sum() > 0


@pytest.mark.parametrize("use_instruction", [False, True])
def test_parameter_count_formula(use_instruction):
    cfg = _cfg(use_instruction=use_instruction)
    p = QFormerProjector(cfg, 24, 40)
    assert sum(t.numel() for t in p.parameters()) == qformer_parameter_count(cfg, 24, 40)


def test_rejects_bad_query_counts():
    with pytest.raises(ValueError):
        QFormerProjector(_cfg(num_query_tokens=0), 24, 40)
