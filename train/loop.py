"""The training loop shared by every recipe: engine, optimizer, schedule, exact resume, logging, checkpoints.

Exact resume: the batch order is a pure function of (seed, epoch) (`train.sampler`), and every checkpoint
stores the trainable weights, optimizer (+ scaler / DeepSpeed partitions), scheduler step, every rank's RNG
states and the data position (epoch, next batch). A run killed at any point and restarted with the same
config continues from the newest complete checkpoint and reproduces the uninterrupted run bitwise on CPU
(tested with SIGKILL in tests/test_train_resume.py; with `data.packing` too, whose `PackedBatchSampler` plans
each epoch's rows from (seed, epoch) alone: tests/test_train_packing.py). With `data.num_workers > 0` this additionally needs the
dataset's own randomness to be per-sample seeded (SampleDataset's `seed` is).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from train import checkpoint as ckpt_io
from train.config import TrainConfig, to_dict
from train.engine import SingleEngine, make_engine
from train.logging import RunLogger, plot_loss
from train.optim import build_optimizer, build_scheduler
from train.recipes import RecipeParts, get_recipe
from train.sampler import ResumableBatchSampler
from train.validate import (
    assert_frozen_have_no_grad,
    check_optimizer_covers,
    format_parameter_table,
    preflight,
)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _seed_worker(worker_id: int) -> None:  # numpy in workers follows torch's per-worker seed
    np.random.seed(torch.initial_seed() % 2**32)


class Trainer:
    """One run of one recipe. `run()` trains to the end and returns the output folder."""

    def __init__(self, cfg: TrainConfig, engine: SingleEngine | None = None):
        preflight(cfg)  # refuse impossible setups before building anything
        self.cfg = cfg
        if cfg.engine.threads:
            torch.set_num_threads(cfg.engine.threads)
        self.engine = engine or make_engine(cfg)
        self.dist = self.engine.dist
        self.out = Path(cfg.output_dir)
        self.ckpt_root = self.out / "checkpoints"
        torch.manual_seed(cfg.seed + self.dist.rank)
        np.random.seed(cfg.seed + self.dist.rank)
        self.parts: RecipeParts = get_recipe(cfg.recipe)(cfg, self.dist)
        if self.dist.is_main:
            print(f"[train] recipe={cfg.recipe} engine={self.engine.kind} device={self.dist.device} "
                  f"world={self.dist.world_size} precision={cfg.engine.precision}")
            print(format_parameter_table(self.parts.parameter_table), flush=True)
        model = self.parts.model
        self.optimizer = build_optimizer(model, cfg.optim)
        check_optimizer_covers(model, self.optimizer)
        self.sampler = self._make_sampler()
        self.steps_per_epoch = len(self.sampler) // cfg.grad_accum
        if self.steps_per_epoch < 1 and cfg.max_steps is None:
            raise ValueError(f"one epoch has {len(self.sampler)} micro-batches per rank, fewer than grad_accum="
                             f"{cfg.grad_accum}: set max_steps or lower grad_accum")
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.total_steps)
        self.forward = self.engine.wrap(self.parts.step_module, self.optimizer)
        self.state = {"step": 0, "epoch": 0, "batch": 0, "samples": 0, "tokens": 0}
        self.writer = ckpt_io.CheckpointWriter(self.ckpt_root, cfg.keep_last, rank=self.dist.rank,
                                               barrier=self.engine.barrier)
        self.resumed_from = self._maybe_resume()
        self._abandon_newer_checkpoints()

    def _make_sampler(self):
        """The batch sampler: packed rows (`data.packing`) or padded, optionally length-grouped, batches. Both are
        pure functions of (seed, epoch) with `set_position(epoch, batch)`, so exact resume works the same.
        Packed: rows planned at 90% of `max_tokens` from the dataset's approximate lengths, headroom that
        keeps the collator's re-packing with the real lengths at the planned row count."""
        cfg, parts = self.cfg, self.parts
        if cfg.data.packing:
            from videochat.packing import PackedBatchSampler

            if parts.lengths is None:
                raise ValueError(f"data.packing: the {cfg.recipe} recipe gives no per-sample lengths to plan rows")
            max_tokens, rows = cfg.packing_shape()
            return PackedBatchSampler(parts.lengths, max_tokens, rows, seed=cfg.seed, rank=self.dist.rank,
                                      world_size=self.dist.world_size, fill=0.9)
        return ResumableBatchSampler(
            len(parts.train_data), cfg.batch_size, seed=cfg.seed, rank=self.dist.rank,
            world_size=self.dist.world_size, lengths=parts.lengths, group_by_length=cfg.data.group_by_length,
        )

    # ------------------------------------------------------------------ resume
    def _resume_source(self) -> Path | None:
        if self.cfg.resume == "never":
            return None
        if self.cfg.resume == "auto":
            return ckpt_io.latest_checkpoint(self.ckpt_root)
        return Path(self.cfg.resume)

    def _maybe_resume(self) -> Path | None:
        src = self._resume_source()
        if src is None:
            return None
        state = ckpt_io.read_state(src)
        if state.get("recipe") != self.cfg.recipe:
            raise RuntimeError(f"{src} belongs to a {state.get('recipe')} run; this is {self.cfg.recipe}: use another "
                               f"output_dir, resume=never, or init_from={src}")
        if state.get("engine") != self.engine.kind or state.get("world_size") != self.dist.world_size:
            raise RuntimeError(f"{src} was written by engine={state.get('engine')} world_size="
                               f"{state.get('world_size')}; this run is engine={self.engine.kind} world_size="
                               f"{self.dist.world_size}. Optimizer states do not transfer between these; use "
                               f"init_from={src} to start a new run from its weights instead")
        if state.get("total_steps") != self.total_steps and self.dist.is_main:
            print(f"[train] warning: {src} was written by a run of {state.get('total_steps')} steps, this one has "
                  f"{self.total_steps}: the cosine schedule is stretched from here on (not an exact resume)")
        ckpt_io.load_trainable(self.parts.model, src / "trainable.safetensors")
        if self.engine.deepspeed_engine is not None:
            self.engine.load_deepspeed(src)
        else:
            self.engine.load_optimizer_state(ckpt_io.load_optimizer_state(src))
        self.scheduler.load_state_dict(state["scheduler"])
        ckpt_io.load_rng(src, self.dist.rank)
        self.state = {k: state[k] for k in ("step", "epoch", "batch", "samples", "tokens")}
        if self.dist.is_main:
            print(f"[train] resumed from {src} at step {self.state['step']} (epoch {self.state['epoch']}, "
                  f"batch {self.state['batch']})", flush=True)
        return src

    def _abandon_newer_checkpoints(self) -> None:
        """Checkpoints in this run's folder newer than where this run starts (a roll-back to an older checkpoint,
        or resume=never over an old run) belong to an abandoned timeline: renamed to abandoned-step-* so that
        keep-last pruning cannot delete the new ones in their favour and resume=auto never jumps back to them."""
        if self.dist.is_main:
            moved = ckpt_io.abandon_newer(self.ckpt_root, self.state["step"], keep=self.resumed_from)
            if moved:
                names = ", ".join(f"{a.name} -> {b.name}" for a, b in moved)
                print(f"[train] starting at step {self.state['step']} but {self.ckpt_root} holds newer checkpoints "
                      f"of an abandoned run; renamed {names} (never resumed from or pruned; delete them when no "
                      f"longer needed)", flush=True)
        self.engine.barrier()

    # ------------------------------------------------------------------ data
    def _loader(self, epoch: int, batch: int):
        self.sampler.set_position(epoch, batch)
        if hasattr(self.parts.train_data, "set_epoch"):
            self.parts.train_data.set_epoch(epoch)
        gen = torch.Generator().manual_seed(self.cfg.seed * 1000003 + epoch)
        return iter(DataLoader(self.parts.train_data, batch_sampler=self.sampler, collate_fn=self.parts.collate,
                               num_workers=self.cfg.data.num_workers, generator=gen, worker_init_fn=_seed_worker,
                               pin_memory=self.dist.device.type == "cuda"))

    def _next_batch(self) -> dict:
        while True:
            if self._it is None:
                self._it = self._loader(self.state["epoch"], self.state["batch"])
            try:
                b = next(self._it)
                self.state["batch"] += 1
                return b
            except StopIteration:
                self._it = None
                self.state["epoch"] += 1
                self.state["batch"] = 0

    # ------------------------------------------------------------------ steps
    def _train_step(self) -> tuple[float, float | None]:
        """grad_accum micro-batches, then one optimizer step. Two small collectives (the step's target count,
        the logged sums) and one host sync per step.

        Loss weighting (as transformers' `num_items_in_batch`): the window's micro-batches are fetched first and
        their loss targets (label tokens) counted and summed over ranks into N; each micro-batch's loss is its
        summed token loss / N, so the step's gradient is that of the mean over all N tokens however they are split
        into micro-batches and ranks. The engines divide by grad_accum and DDP / DeepSpeed average over ranks,
        so the loss handed to backward is multiplied by grad_accum * world_size to cancel both."""
        accum = self.cfg.grad_accum
        batches, samples, tokens, local_targets = [], 0, 0, 0
        for _ in range(accum):
            batch = self._next_batch()
            for bad in batch.get("skipped") or []:  # bad samples the dataset passed over: reported, never silent
                self.skipped += 1
                if self.dist.is_main and self.skipped <= 20:
                    self.logger.message(f"[train] skipped sample {bad.get('id')}: {bad.get('reason')}")
            n, t = self.parts.count(batch)  # from CPU tensors: no device sync
            samples, tokens = samples + n, tokens + t
            local_targets += self.parts.targets(batch)
            batches.append(batch)
        (num_items,) = self.engine.reduce_sum([local_targets])
        num_items = int(num_items)
        if num_items == 0:  # same on every rank (all-reduced): all stop together
            raise RuntimeError(f"step {self.state['step'] + 1}: no loss targets in the whole step (every label is "
                               f"-100); the dataset should have skipped such samples")
        scale = accum * self.dist.world_size
        losses = []
        for i, batch in enumerate(batches):
            batch = to_device(batch, self.dist.device)
            batch["num_items_in_batch"] = num_items
            sync = i == accum - 1
            ctx = self.engine.forward_context(sync) if hasattr(self.engine, "forward_context") else contextlib.nullcontext()
            with ctx:
                with self.engine.autocast():
                    loss = self.forward(batch)  # this micro-batch's share of the step loss
                self.engine.backward(loss * scale, sync=sync)
            losses.append(loss.detach())
            if self.state["step"] == self._start_step and i == 0:
                self._freeze_check()
        local_loss = float(torch.stack(losses).float().sum())  # the step's one host sync
        if not math.isfinite(local_loss):
            raise FloatingPointError(f"non-finite loss {local_loss} at step {self.state['step'] + 1} "
                                     f"(rank {self.dist.rank}); stopping (lower optim.lr or check the data)")
        norm = self.engine.step()
        self.step_lr = self.scheduler.get_last_lr()[0]  # the lr this step used (logged)
        self.scheduler.step()
        self.state["step"] += 1
        loss_sum, s, t = self.engine.reduce_sum([local_loss, samples, tokens])
        self.state["samples"] += int(s)
        self.state["tokens"] += int(t)
        self.logger.count(int(s), int(t))
        return loss_sum, norm  # the shares of all ranks add up to the step's token-mean loss

    def _freeze_check(self) -> None:
        info = assert_frozen_have_no_grad(self.parts.model, self.parts.must_be_frozen)
        if self.dist.is_main:
            where = ("DeepSpeed keeps trainable gradients in its own buffers" if self.engine.kind == "deepspeed"
                     else f"{info['trainable_with_grad']} trainable tensors with a gradient")
            print(f"[train] freeze check after the first backward: {info['frozen']} frozen tensors, none with a "
                  f"gradient; {where}", flush=True)

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Validation loss over (at most max_val_samples) val samples, sharded over ranks: the mean over all
        their loss targets (assistant tokens; clips for viclip), not a mean of per-batch means."""
        val = self.parts.val_data
        if val is None or len(val) == 0:
            return None
        n = len(val) if self.cfg.data.max_val_samples is None else min(len(val), self.cfg.data.max_val_samples)
        idx = list(range(self.dist.rank, n, self.dist.world_size))
        loader = DataLoader(Subset(val, idx), batch_size=self.cfg.batch_size, collate_fn=self.parts.collate)
        module = self.parts.step_module
        was_training = module.training
        module.eval()
        total, count = 0.0, 0
        for batch in loader:  # weighted by loss targets (tokens), like training: sum of losses / number of targets
            k = self.parts.targets(batch)
            batch = to_device(batch, self.dist.device)
            batch["num_items_in_batch"] = 1  # -> the batch's summed loss
            with self.engine.autocast():
                loss = module(batch)
            total += float(loss)
            count += k
        module.train(was_training)
        total, count = self.engine.reduce_sum([total, count])
        return total / max(count, 1)

    def save(self) -> Path:
        state = {**self.state, "scheduler": self.scheduler.state_dict(), "engine": self.engine.kind,
                 "world_size": self.dist.world_size, "total_steps": self.total_steps, "recipe": self.cfg.recipe}
        opt_state = None if self.engine.deepspeed_engine is not None else self.engine.optimizer_state()
        return self.writer.save(self.state["step"], config=to_dict(self.cfg),
                                trainable=ckpt_io.trainable_state(self.parts.model), state=state,
                                optimizer_state=opt_state, deepspeed_engine=self.engine.deepspeed_engine)

    # ------------------------------------------------------------------ run
    def run(self) -> Path:
        cfg, main = self.cfg, self.dist.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")
        self._start_step = self.state["step"]
        self._it = None
        self.skipped = 0
        self.step_times: list[float] = []
        self.logger = RunLogger(self.out, self.total_steps, self._start_step, enabled=main,
                                tensorboard=cfg.tensorboard, progress=cfg.progress)
        self.parts.step_module.train()
        t0 = time.perf_counter()
        last = None
        try:
            while self.state["step"] < self.total_steps:
                t_step = time.perf_counter()
                loss, norm = self._train_step()
                step = self.state["step"]
                lr = self.step_lr
                write = step % cfg.log_every == 0 or step == self.total_steps
                extra = {"epoch": self.state["epoch"], "skipped_samples": self.skipped, "grad_norm": norm if norm is None or math.isfinite(norm) else None}
                self.logger.step(step, loss, lr, extra, write=write)
                if (cfg.eval_every and step % cfg.eval_every == 0) or step == self.total_steps:
                    val = self.evaluate()
                    if val is not None:
                        self.logger.write({"step": step, "val_loss": val, "time": time.time()})
                        self.logger.message(f"[train] step {step}: val_loss {val:.4f}")
                self.step_times.append(time.perf_counter() - t_step)  # step + logging (benchmarks/bench_train.py)
                if step % cfg.save_every == 0 or step == self.total_steps:
                    last = self.save()
            if last is None:  # resumed at the end: nothing left to do
                last = ckpt_io.latest_checkpoint(self.ckpt_root)
        finally:
            self.logger.close()
        if main:
            plot_loss(self.out / "metrics.jsonl", self.out / "loss.png") if (self.out / "metrics.jsonl").exists() else None
            if self.parts.finalize is not None:
                self.parts.finalize(self.parts.model, self.out)
            print(f"[train] done: {self.state['step']} steps, {self.state['samples']} samples in "
                  f"{time.perf_counter() - t0:.1f}s; last checkpoint {last}", flush=True)
        self.engine.barrier()
        return last


def run(cfg: TrainConfig) -> Path:
    """Train `cfg` to the end (resuming if a checkpoint exists) and return the last checkpoint folder."""
    trainer = Trainer(cfg)
    try:
        return trainer.run()
    finally:
        trainer.engine.close()
