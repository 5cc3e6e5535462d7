"""ViCLIP contrastive training / adaptation (the InternVid paper's recipe): symmetric InfoNCE over cosine
similarities of clip and caption embeddings, learnable temperature (clamped >= 1/100), 90% of patch tokens
masked per clip. Data: caption samples (one clip -> its caption; any sample whose user turn shows a clip and
whose next assistant turn describes it works). Output: `OUT/viclip.pth` in the released `{"model": sd}`
layout, which the chat model loads through `model.viclip_checkpoint`.

Under torchrun, `ViCLIP.contrastive_loss` gathers the clip and caption embeddings of every rank, so each
rank's negatives are the global batch (as the reference code does).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from train.config import ConfigError, TrainConfig
from train.engine import Dist
from train.recipes import RecipeParts
from train.validate import generic_parameter_table
from videochat.data import BadSample, SkipBadSamples


def caption_pairs(samples: list[dict]) -> tuple[list[tuple[dict, dict, str]], list[tuple[str, str]]]:
    """(video, clip, caption) for every clip part followed by an assistant answer; plus rejected (id, reason)."""
    pairs, rejected = [], []
    for s in samples:
        found = 0
        msgs = s.get("messages", [])
        for i, m in enumerate(msgs):
            if m.get("role") != "user":
                continue
            clips = [p["clip"] for p in m.get("content", []) if p.get("type") == "clip"]
            nxt = msgs[i + 1] if i + 1 < len(msgs) and msgs[i + 1].get("role") == "assistant" else None
            text = " ".join(p.get("text", "") for p in (nxt or {}).get("content", []) if p.get("type") == "text").strip()
            if len(clips) == 1 and text:  # one clip, one answer: an unambiguous (clip, caption) pair
                clip = s["clips"][clips[0]]
                pairs.append((s["videos"][clip["video"]], clip, text))
                found += 1
        if not found:
            rejected.append((str(s.get("id")), "no user turn with exactly one clip followed by an assistant caption"))
    return pairs, rejected


class CaptionClips(SkipBadSamples, Dataset):
    """(clip frames, caption ids) pairs. Frame sampling is seeded per (seed, epoch, index): resumable.

    A clip that cannot be decoded is handled like a bad sample of `videochat.data.SampleDataset`: skipped for
    the next good pair (deterministically), counted, logged, listed in the batch's `skipped`; past
    `max_bad_fraction` the run stops with `TooManyBadSamples` naming the commonest reasons."""

    def __init__(self, pairs, tokenizer, image_size: int, num_frames: int, text_length: int, video_root=None,
                 seed: int = 0, sampling: str = "rand", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                 max_bad_fraction: float = 0.01, bad_check_after: int = 200, max_tries: int = 64,
                 bad_sample_log: str | None = None, cache_frames: bool = False, progress: bool = False):
        from videochat.transforms import FrameTransform

        self.pairs = pairs
        self.tokenizer = tokenizer
        self.transform = FrameTransform(image_size, mean, std)
        self.num_frames = num_frames
        self.text_length = text_length
        self.root = Path(video_root) if video_root else None
        self.seed = seed
        self.sampling = sampling
        self.epoch = 0
        self._init_bad_samples(max_bad_fraction, bad_check_after, max_tries, bad_sample_log)
        self._cache: dict | None = self._prefill(progress) if cache_frames else None

    def _window(self, video: dict, clip: dict) -> tuple[str, float | None, float | None]:
        """(resolved video path, start, end): what is decoded, and the frame cache's key."""
        path = Path(video["path"])
        if self.root is not None and not path.is_absolute():
            path = self.root / path
        return str(path), clip.get("start"), clip.get("end")

    def _prefill(self, progress: bool) -> dict:
        """(path, start, end) -> every frame of the window (a `Clip`), or (error type, message) when it did
        not decode: a bad sample whenever a pair of that window comes up. Stricter than decoding each epoch:
        a window with one undecodable frame (a truncated file) is bad in every epoch, not only in the epochs
        whose random draw touches that frame. A storage error (plain `OSError`) leaves the window out of
        the cache: it is decoded when it comes up, as without the cache."""
        from tqdm.auto import tqdm

        from videochat.video import VideoDecodeError, read_clip

        cache: dict = {}
        for video, clip, _ in tqdm(self.pairs, desc="[viclip] decoding clips into memory", disable=not progress):
            key = self._window(video, clip)
            if key not in cache:
                try:
                    cache[key] = read_clip(key[0], key[1], key[2], sampling="all")
                except VideoDecodeError as e:
                    cache[key] = (type(e).__name__, str(e))
                except OSError:
                    pass
        return cache

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, i: int) -> dict:
        from videochat.video import VideoDecodeError, read_clip, subsample

        video, clip, text = self.pairs[i]
        path, start, end = window = self._window(video, clip)
        seed = (self.seed * 1_000_003 + self.epoch) * 10_000_019 + i
        sid = f"{video.get('video_id', video['path'])}@{start}-{end}"
        whole = self._cache.get(window) if self._cache is not None else None
        if isinstance(whole, tuple):  # decoding failed when the cache was filled
            raise BadSample(sid, whole[1], whole[0])
        try:
            if whole is not None:
                c = subsample(whole, self.num_frames, self.sampling, seed=seed)
            else:
                c = read_clip(path, start, end, self.num_frames, self.sampling, seed=seed)
        except VideoDecodeError as e:  # a verdict on the file
            raise BadSample(sid, str(e), type(e).__name__) from None
        except OSError as e:  # storage hiccup: retried the next time this index comes up
            raise BadSample(sid, f"{type(e).__name__}: {e}", type(e).__name__, transient=True) from None
        ids = self.tokenizer([text], context_length=self.text_length)[0]
        return {"frames": self.transform(c.frames), "text_ids": ids, "id": sid}


def collate(items: list[dict]) -> dict:
    return {"frames": torch.stack([x["frames"] for x in items]), "text_ids": torch.stack([x["text_ids"] for x in items]),
            "skipped": [s for x in items for s in x.get("skipped", [])]}


class ContrastiveLoss(nn.Module):
    """forward(batch) -> InfoNCE loss (patch masking only in training mode).

    The targets are the clips (`targets(batch)` = batch size): the batch's mean InfoNCE times its size, divided
    by `batch["num_items_in_batch"]` (clips in the optimizer step, all ranks) when the loop sets it. With equal
    micro-batches this is the mean over micro-batches, as before; the in-batch negatives make the loss itself
    depend on the micro-batch size, which no normalisation can undo."""

    def __init__(self, model: nn.Module, mask_ratio: float):
        super().__init__()
        self.model = model
        self.mask_ratio = mask_ratio

    def forward(self, batch: dict) -> torch.Tensor:
        ratio = self.mask_ratio if self.training else 0.0
        loss, _ = self.model.contrastive_loss(batch["frames"], batch["text_ids"], mask_ratio=ratio)
        n = batch.get("num_items_in_batch")
        return loss if n is None else loss * batch["frames"].shape[0] / n


def targets(batch: dict) -> int:
    return int(batch["frames"].shape[0])


def load_tokenizer(cfg: TrainConfig, captions: list[str]):
    """The CLIP BPE tokenizer: a file / HF folder, or `learn:N` = N merges learned from the training captions
    (tiny models; written to OUT/clip_bpe.txt.gz next to viclip.pth so the pair stays usable)."""
    from videochat import clip_tokenizer as ct

    spec = cfg.viclip.tokenizer
    if spec is None:
        raise ConfigError("viclip.tokenizer: give CLIP's bpe_simple_vocab_16e6.txt.gz (or an HF CLIP tokenizer "
                          "folder), or learn:N to learn N merges from the captions (tiny models)")
    if spec.startswith("learn:"):
        out = Path(cfg.output_dir) / "clip_bpe.txt.gz"
        if not out.exists():  # a resumed run must keep the tokenizer it started with
            out.parent.mkdir(parents=True, exist_ok=True)
            ct.write_bpe_file(ct.learn_bpe_merges(captions, int(spec.split(":", 1)[1])), out)
        spec = str(out)
    tok = ct.load_clip_tokenizer(spec, context_length=cfg.data.text_length)
    if tok.vocab_size > cfg.model.viclip.text_vocab_size:
        raise ConfigError(f"the CLIP tokenizer has {tok.vocab_size} ids but model.viclip.text_vocab_size is "
                          f"{cfg.model.viclip.text_vocab_size}")
    return tok


def build_viclip(cfg: TrainConfig, device) -> nn.Module:
    from videochat.viclip import ViCLIP

    vcfg = dataclasses.replace(cfg.model.viclip, with_text=True)
    if cfg.model.viclip_checkpoint:
        model = ViCLIP.from_checkpoint(cfg.model.viclip_checkpoint, vcfg)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.model_seed)
            model = ViCLIP(vcfg)
            # The reference zero-initialises the temporal embedding because it inflates image-CLIP weights;
            # trained from scratch, zeros leave the frames indistinguishable at first and motion is learned
            # late (demo world, 1000 steps: held-out motion retrieval 0.45 -> 0.55), so draw it like the
            # spatial one.
            v = model.vision_encoder
            nn.init.normal_(v.temporal_positional_embedding, std=v.width**-0.5)
    return model.to(device)


def freeze(model: nn.Module, cfg: TrainConfig) -> None:
    model.requires_grad_(True)
    if not cfg.viclip.train_text:
        model.text_encoder.requires_grad_(False)
    if cfg.viclip.freeze_layers:
        v = model.vision_encoder
        for name in ("conv1", "class_embedding", "positional_embedding", "temporal_positional_embedding", "ln_pre"):
            getattr(v, name).requires_grad_(False)
        for block in v.transformer.resblocks[: cfg.viclip.freeze_layers]:
            block.requires_grad_(False)


def _frozen_name(name: str, cfg: TrainConfig) -> bool:
    if not cfg.viclip.train_text and name.startswith("text_encoder."):
        return True
    k = cfg.viclip.freeze_layers
    if not k:
        return False
    stem = ("vision_encoder.conv1", "vision_encoder.class_embedding", "vision_encoder.positional_embedding",
            "vision_encoder.temporal_positional_embedding", "vision_encoder.ln_pre")
    return name.startswith(stem) or any(name.startswith(f"vision_encoder.transformer.resblocks.{i}.") for i in range(k))


def build(cfg: TrainConfig, dist: Dist) -> RecipeParts:
    from train.recipes.chat_data import _load_samples

    d = cfg.data
    train_pairs, rejected = caption_pairs(_load_samples(d.path, d.train_split))
    if rejected and dist.is_main:
        print(f"[viclip] {len(rejected)} sample(s) without a (clip, caption) pair skipped, e.g. {rejected[:3]}")
    if not train_pairs:
        raise ValueError(f"{d.path}: no (clip, caption) pairs in split {d.train_split!r}")
    tok = load_tokenizer(cfg, [t for _, _, t in train_pairs])
    model = build_viclip(cfg, dist.device)
    freeze(model, cfg)
    if cfg.viclip.gradient_checkpointing:
        model.set_gradient_checkpointing(True)
    v = cfg.model.viclip
    kw = dict(tokenizer=tok, image_size=v.image_size, num_frames=cfg.model.num_frames, text_length=d.text_length,
              video_root=d.video_root, seed=cfg.seed, mean=cfg.model.pixel_mean, std=cfg.model.pixel_std,
              max_bad_fraction=d.max_bad_fraction)
    train = CaptionClips(train_pairs, sampling="rand", cache_frames=cfg.viclip.cache_frames,
                         progress=cfg.progress and dist.is_main, **kw)
    val = None
    if d.val_split:
        try:
            val_pairs, _ = caption_pairs(_load_samples(d.val_path or d.path, d.val_split))
            val = CaptionClips(val_pairs, sampling="middle", **kw) if val_pairs else None
        except (ValueError, FileNotFoundError) as e:
            print(f"[viclip] no validation data ({e})")

    def finalize(m: nn.Module, out_dir) -> None:
        path = Path(out_dir) / cfg.viclip.output_name
        m.save_checkpoint(path)
        print(f"[viclip] wrote {path} (released layout; use it as model.viclip_checkpoint)")

    return RecipeParts(model=model, step_module=ContrastiveLoss(model, cfg.viclip.mask_ratio), train_data=train,
                       collate=collate, val_data=val, parameter_table=generic_parameter_table(model, depth=1),
                       count=lambda b: (int(b["frames"].shape[0]), int((b["text_ids"] != 0).sum())), targets=targets,
                       finalize=finalize, must_be_frozen=lambda n: _frozen_name(n, cfg))
