"""A training batch with no clip (every video dropped) must keep the projector in the autograd graph."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from videochat.builders import videochat_tiny
from videochat.conversation import render


def _batch(model, with_clip: bool) -> dict:
    cfg = model.config
    user = ([{"type": "clip", "clip": 0}] if with_clip else []) + [{"type": "text", "text": "what happens next?"}]
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": [{"type": "text", "text": "it rolls"}]}]
    r = render(messages, model.tokenizer, template=cfg.template, tokens_per_clip=cfg.tokens_per_clip,
               placeholder_token=cfg.placeholder_token)
    batch = {"input_ids": torch.tensor([r.input_ids]), "labels": torch.tensor([r.labels])}
    if with_clip:
        size = cfg.viclip.image_size
        batch["clip_frames"] = torch.randn(1, cfg.num_frames, 3, size, size)
    return batch


def _align_model():
    """align: only vision_ln and the projector train; ViCLIP and the whole LLM are frozen."""
    model = videochat_tiny()
    model.requires_grad_(False)
    model.vision_ln.requires_grad_(True)
    model.projector.requires_grad_(True)
    return model.train()


def test_clipless_batch_backpropagates_zero_into_the_projector():
    model = _align_model()
    loss = model(**_batch(model, with_clip=False)).loss
    assert loss.requires_grad  # without the touch, a frozen LLM gives a loss with no grad_fn
    loss.backward()
    grads = [p.grad for p in (*model.vision_ln.parameters(), *model.projector.parameters())]
    assert all(g is not None and torch.count_nonzero(g) == 0 for g in grads)


def test_clipless_batch_changes_nothing_in_eval_or_no_grad():
    model = _align_model()
    batch = _batch(model, with_clip=False)
    with torch.no_grad():
        train_logits = model(**batch).logits
    model.eval()
    assert torch.equal(model(**batch).logits, train_logits)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ddp_survives_a_clipless_batch_between_clip_batches(tmp_path):
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    # a file rendezvous: no TCP port to race for (a TCP-store rendezvous once hung in a fresh-clone run)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        model = _align_model()
        ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        for with_clip in (True, False, True):  # the step after a clip-less batch is where DDP used to fail
            ddp(**_batch(model, with_clip)).loss.backward()
            opt.step()
            opt.zero_grad()
    finally:
        dist.destroy_process_group()
