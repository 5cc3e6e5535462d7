"""The demo's language side: a sentencepiece tokenizer and a tiny Llama pretrained on the world's text.

With no downloadable LLM, the demo makes its own: `videochat.tokenizers.train_sentencepiece` on the text of
the training samples, then a randomly initialised `LlamaForCausalLM` trained as a causal LM on the same
conversations rendered by `videochat.conversation.render` with the chat template (clip slots included as
placeholder runs, masked out of the loss). Like a real chat LLM (Vicuna) it then knows the template and the
language before it ever sees a video; the align stage only has to teach the projector. The result is an
ordinary HF model folder (`config.json`, `model.safetensors`, tokenizer files) that the chat model loads
through `model.llm.path`, exactly as it would load Vicuna. Its loss curve goes to `OUT/metrics.jsonl`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from train.demo_settings import LMSettings


def sample_texts(samples: Iterable[dict]) -> list[str]:
    """One document per sample: its text parts in order (clips left out), turns separated by newlines."""
    docs = []
    for s in samples:
        turns = []
        for m in s.get("messages", []):
            text = " ".join(p["text"] for p in m.get("content", []) if p.get("type") == "text").strip()
            if text:
                turns.append(text)
        if turns:
            docs.append("\n".join(turns))
    return docs


def train_tokenizer(texts: list[str], out_dir: str | Path, vocab_size: int):
    """Sentencepiece BPE (byte fallback) on `texts`, saved as a HF tokenizer folder at `out_dir`."""
    from videochat.tokenizers import train_sentencepiece

    return train_sentencepiece(texts, out_dir, vocab_size=vocab_size)


def render_documents(samples: Iterable[dict], tokenizer, *, template: str, tokens_per_clip: int,
                     placeholder_token: str, max_length: int,
                     captions: dict[tuple[str, float], str] | None = None) -> tuple[list[tuple[list[int], list[int]]], int]:
    """(ids, labels) per sample rendered with the chat template; every token is a target except the clip slots.

    `captions` ({(video_id, start): caption}): each clip slot holds the tokens of its clip's caption (padded
    with the placeholder id), a text stand-in for the video, so the LLM learns to read its clip slots (a real
    chat LLM reads any prefix it is given; a tiny one pretrained with constant placeholders learns to ignore
    them, and a frozen LLM that ignores its slots cannot be aligned). Without `captions` the slots keep the
    placeholder id. Returns (documents, samples skipped as too long or malformed).
    """
    from videochat.conversation import ConversationError, render

    ph = tokenizer.convert_tokens_to_ids(placeholder_token)
    docs, skipped = [], 0
    for s in samples:
        try:
            r = render(s["messages"], tokenizer, template=template, tokens_per_clip=tokens_per_clip,
                       placeholder_token=placeholder_token, max_length=max_length)
        except (ConversationError, KeyError, TypeError, ValueError):
            skipped += 1
            continue
        ids = list(r.input_ids)
        for slot in r.clip_slots:
            clip = s["clips"][slot.clip]
            text = (captions or {}).get((s["videos"][clip["video"]]["video_id"], round(float(clip["start"]), 3)))
            if text:
                stand_in = tokenizer(text, add_special_tokens=False)["input_ids"][: slot.length]
                stand_in += [ph] * (slot.length - len(stand_in))
                ids[slot.start: slot.start + slot.length] = stand_in
        slots = {i for c in r.clip_slots for i in range(c.start, c.start + c.length)}
        docs.append((ids, [-100 if i in slots else t for i, t in enumerate(r.input_ids)]))
    return docs, skipped


def _batches(docs: list[tuple[list[int], list[int]]], batch_size: int, steps: int, pad_id: int, seed: int):
    """`steps` random batches [B, L] (right-padded) with labels (-100 on padding and placeholders)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        pick = torch.randint(len(docs), (batch_size,), generator=g).tolist()
        rows = [docs[i] for i in pick]
        width = max(len(r[0]) for r in rows)
        x = torch.full((batch_size, width), pad_id, dtype=torch.long)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        labels = torch.full((batch_size, width), -100, dtype=torch.long)
        for i, (ids, lab) in enumerate(rows):
            x[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(lab)] = torch.tensor(lab)
            mask[i, : len(ids)] = 1
        yield x, mask, labels


def pretrain_lm(docs: list[tuple[list[int], list[int]]], tokenizer, settings: LMSettings, out_dir: str | Path, *,
                seed: int = 0, progress: bool = True) -> dict:
    """Train a tiny Llama on rendered `docs` (ids, labels) as a causal LM; save model + tokenizer to `out_dir`."""
    from tqdm.auto import tqdm
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not docs:
        raise ValueError("no pretraining documents")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    ids = docs
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=settings.hidden_size, intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.layers, num_attention_heads=settings.heads,
        num_key_value_heads=settings.heads, max_position_embeddings=2048, rms_norm_eps=1e-6,
        bos_token_id=bos, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        # Input embeddings at the scale of the projector's output (a LayerNorm-ed Q-Former state through a
        # default-initialised Linear: ~0.6 per dimension), so spliced clip embeddings and word embeddings
        # live at the same scale in the residual stream (HF's default 0.02 would make them ~30x apart).
        torch.nn.init.normal_(model.get_input_embeddings().weight, std=settings.embedding_std)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0)
    warmup = max(1, settings.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / settings.steps))))
    t0 = time.time()
    loss_v = float("nan")
    with open(out / "metrics.jsonl", "w", encoding="utf-8") as log:
        bar = tqdm(total=settings.steps, desc="llm pretrain", unit="step", disable=not progress)
        for step, (x, mask, labels) in enumerate(_batches(ids, settings.batch_size, settings.steps,
                                                          tokenizer.pad_token_id, seed), 1):
            loss = model(input_ids=x, attention_mask=mask, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            loss_v = float(loss.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{loss_v:.3f}", refresh=False)
            if step % 10 == 0 or step == settings.steps:
                log.write(json.dumps({"step": step, "loss": loss_v, "lr": sched.get_last_lr()[0],
                                      "time": time.time()}) + "\n")
        bar.close()
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"documents": len(ids), "parameters": sum(p.numel() for p in model.parameters()),
            "final_loss": loss_v, "seconds": round(time.time() - t0, 1)}
