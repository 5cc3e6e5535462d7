"""Engines: one process (CPU or GPU), torchrun DDP, DeepSpeed ZeRO-2.

All three expose the same small surface to the loop: `wrap(module, optimizer)`, `autocast()`,
`backward(loss, sync)`, `step() -> grad_norm | None`, `optimizer_state()` / `load_optimizer_state()`,
`reduce_mean()`, `barrier()`. The loop owns the schedule of micro-batches; the engine owns precision, loss
scaling, gradient sync, clipping and the optimizer step.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from train.config import ConfigError, TrainConfig

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Dist:
    """Where this process sits: rank, world size, local rank, device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(cfg: TrainConfig) -> torch.device:
    want = cfg.engine.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError("engine.device=cuda but CUDA is not available on this machine; use engine.device=cpu")
    if want not in ("cpu", "cuda"):
        raise ConfigError(f"engine.device: {want!r} is not auto | cpu | cuda")
    return torch.device(want)


def resolve_kind(cfg: TrainConfig) -> str:
    kind = cfg.engine.kind
    if kind == "auto":
        kind = "ddp" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "single"
    return kind


def init_distributed(cfg: TrainConfig, kind: str) -> Dist:
    """Join the process group when the engine needs one (torchrun sets RANK / WORLD_SIZE / MASTER_ADDR).

    DeepSpeed in a plain `python` process gets a one-rank gloo group, so ZeRO-2 runs (and is tested) on a
    single CPU process too."""
    device = resolve_device(cfg)
    if kind == "single":
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("engine.kind=single but WORLD_SIZE > 1 (launched by torchrun): use engine.kind=ddp")
        return Dist(device=device)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    os.environ.setdefault("RANK", str(rank))
    os.environ.setdefault("WORLD_SIZE", str(world))
    os.environ.setdefault("LOCAL_RANK", str(local))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    if device.type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    backend = cfg.engine.backend
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return Dist(rank=rank, world_size=world, local_rank=local, device=device)


class SingleEngine:
    """One process; also the base of DDP. Loss scaling for fp16 via torch.amp.GradScaler."""

    kind = "single"

    def __init__(self, cfg: TrainConfig, dist_info: Dist):
        self.cfg = cfg
        self.dist = dist_info
        self.device = dist_info.device
        self.dtype = _DTYPES[cfg.engine.precision]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.engine.precision == "fp16")
        self.module: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    # --- setup -------------------------------------------------------------------------------------
    def wrap(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> nn.Module:
        """Returns the callable to run forward through (the module itself here)."""
        self.module, self.optimizer = module, optimizer
        return module

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    # --- one micro-batch / one step -----------------------------------------------------------------
    def backward(self, loss: torch.Tensor, sync: bool = True) -> None:
        """Accumulate gradients of loss / grad_accum; `sync` is False on all but the last micro-batch."""
        self.scaler.scale(loss / self.cfg.grad_accum).backward()

    def trainable(self) -> list[nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def step(self) -> float | None:
        """Unscale, clip, step, zero the gradients. Returns the pre-clip global grad norm."""
        self.scaler.unscale_(self.optimizer)
        norm = None
        if self.cfg.optim.grad_clip is not None:
            norm = float(torch.nn.utils.clip_grad_norm_(self.trainable(), self.cfg.optim.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    # --- state ----------------------------------------------------------------------------------------
    def optimizer_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}

    def load_optimizer_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    @property
    def deepspeed_engine(self):
        return None

    # --- collectives ------------------------------------------------------------------------------------
    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def reduce_sum(self, values: list[float]) -> list[float]:
        """Sum of each value over all ranks (for losses and counts)."""
        if not dist.is_initialized() or self.dist.world_size == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        """Nothing to release in one process."""


class DDPEngine(SingleEngine):
    """torchrun DistributedDataParallel; `no_sync` on accumulation micro-batches."""

    kind = "ddp"

    def wrap(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> nn.Module:
        self.module, self.optimizer = module, optimizer
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.ddp = nn.parallel.DistributedDataParallel(
            module, device_ids=ids, find_unused_parameters=self.cfg.engine.find_unused_parameters
        )
        return self.ddp

    def forward_context(self, sync: bool):
        """DDP decides at forward time whether the next backward all-reduces: the loop runs forward and
        backward of every accumulation micro-batch but the last inside `no_sync`."""
        return contextlib.nullcontext() if sync else self.ddp.no_sync()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict:
    """The JSON from engine.deepspeed_config with batch / accumulation / clipping / precision taken from the
    train config (a JSON value other than "auto" that disagrees is an error, not silently overridden)."""
    path = Path(cfg.engine.deepspeed_config)
    if not path.is_file():
        raise ConfigError(f"engine.deepspeed_config: {path} not found")
    ds = json.loads(path.read_text())
    want = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.batch_size * cfg.grad_accum * world_size,
        "gradient_clipping": cfg.optim.grad_clip or 0.0,
    }
    for key, value in want.items():
        if key in ds and ds[key] != "auto" and ds[key] != value:
            raise ConfigError(f"{path}: {key}={ds[key]} disagrees with the train config ({value}); set it to \"auto\"")
        ds[key] = value
    for key, on in (("bf16", cfg.engine.precision == "bf16"), ("fp16", cfg.engine.precision == "fp16")):
        section = dict(ds.get(key) or {})
        if section.get("enabled") not in (None, "auto", on):
            raise ConfigError(f"{path}: {key}.enabled={section['enabled']} disagrees with engine.precision="
                              f"{cfg.engine.precision}; set it to \"auto\"")
        section["enabled"] = on
        ds[key] = section
    return ds


def zero_stage(cfg: TrainConfig) -> int:
    if cfg.engine.kind != "deepspeed" or not cfg.engine.deepspeed_config:
        return 0
    path = Path(cfg.engine.deepspeed_config)
    if not path.is_file():
        raise ConfigError(f"engine.deepspeed_config: {path} not found")
    return int(json.loads(path.read_text()).get("zero_optimization", {}).get("stage", 0))


class DeepSpeedEngine(SingleEngine):
    """DeepSpeed (ZeRO-2 by default). DeepSpeed scales the loss for accumulation, clips and owns the step."""

    kind = "deepspeed"

    def wrap(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> nn.Module:
        import deepspeed

        self.module, self.base_optimizer = module, optimizer
        ds_cfg = deepspeed_config(self.cfg, self.dist.world_size)
        # DeepSpeed 0.19 broadcasts every parameter as `p.data.view(torch.uint8)` at init, which fails for 0-dim
        # tensors (ViCLIP's frozen `temp`): give frozen scalars shape [1] for the broadcast, then restore them.
        scalars = [p for p in module.parameters() if p.dim() == 0]
        if any(p.requires_grad for p in scalars):
            raise ConfigError("DeepSpeed cannot train 0-dim parameters (e.g. ViCLIP's temperature): use "
                              "engine.kind=ddp or single for this recipe")
        for p in scalars:
            p.data = p.data.reshape(1)
        try:
            self.ds, self.optimizer, _, _ = deepspeed.initialize(model=module, optimizer=optimizer,
                                                                 config=copy.deepcopy(ds_cfg))
        finally:
            for p in scalars:
                p.data = p.data.reshape(())
        return self.ds

    def autocast(self):
        # DeepSpeed casts the trainable module to bf16/fp16 itself; autocast keeps inputs and frozen fp32
        # parts consistent with it.
        return super().autocast()

    def backward(self, loss: torch.Tensor, sync: bool = True) -> None:
        # DeepSpeed counts micro-batches itself: backward() scales by 1/grad_accum and reduces gradients at the
        # boundary, step() after every micro-batch updates the weights only at the boundary.
        self.ds.backward(loss)
        self.ds.step()

    def trainable(self) -> list[nn.Parameter]:
        return [p for g in self.base_optimizer.param_groups for p in g["params"]]

    def step(self) -> float | None:
        """The update already happened in the last micro-batch's backward(); report the grad norm."""
        norm = self.ds.get_global_grad_norm()
        return None if norm is None else float(norm)

    def optimizer_state(self) -> dict | None:
        return None  # written by deepspeed_engine.save_checkpoint into the checkpoint's deepspeed/ folder

    def load_deepspeed(self, ckpt: Path) -> None:
        """Restore DeepSpeed's optimizer partitions. Module weights come from trainable.safetensors (loaded
        strictly by the loop), so the frozen base is never written into DeepSpeed's files."""
        from train.checkpoint import check_trainable_names

        def load_trainable_only(src: dict, dst: nn.Module) -> None:
            check_trainable_names(dst, src, where=str(ckpt / "deepspeed"))
            own = dict(dst.named_parameters())
            with torch.no_grad():
                for name, t in src.items():
                    own[name].copy_(t.to(own[name].dtype))

        path, _ = self.ds.load_checkpoint(str(ckpt / "deepspeed"), tag="state", load_optimizer_states=True,
                                          load_lr_scheduler_states=False, custom_load_fn=load_trainable_only)
        if path is None:
            raise FileNotFoundError(f"{ckpt / 'deepspeed'}: no DeepSpeed state to resume from")

    @property
    def deepspeed_engine(self):
        return self.ds

    def close(self) -> None:
        # DeepSpeed caches its process groups at module level; destroying the world group would leave them
        # dangling for a second run in the same process. The group ends with the process.
        pass


def make_engine(cfg: TrainConfig) -> SingleEngine:
    kind = resolve_kind(cfg)
    dist_info = init_distributed(cfg, kind)
    return {"single": SingleEngine, "ddp": DDPEngine, "deepspeed": DeepSpeedEngine}[kind](cfg, dist_info)
