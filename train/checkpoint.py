"""Atomic checkpoints that resume exactly.

Layout: `OUT/checkpoints/step-000100/` with
- `config.json`            the full TrainConfig of the run (export and the next stage rebuild from it);
- `trainable.safetensors`  every parameter with requires_grad, under the *unwrapped* model's names (the same
                           names single / DDP / DeepSpeed, LoRA or not, so any engine's output loads anywhere);
- `optimizer.pt`           optimizer + scheduler (+ fp16 grad scaler) state (single / DDP);
  `deepspeed/`             DeepSpeed's own engine checkpoint instead, when the engine is DeepSpeed;
- `rng-rank{R}.pt`         python / numpy / torch / cuda RNG states of every rank;
- `state.json`             step, epoch, batch position in the epoch, samples and tokens seen, engine kind.

A checkpoint is written into `step-000100.partial/` and renamed when complete (rename is atomic on POSIX),
so a kill at any moment leaves either the previous checkpoints or a `.partial` folder that is ignored and
cleared, never a half checkpoint that looks whole. Re-saving a step that exists renames the old folder to
`step-000100.old` first, renames the new one in, then deletes the old one: a kill in between leaves the old
`.old` folder, which is listed as step 100 until a complete `step-000100` exists again.

The last `keep_last` complete checkpoints are kept; the one just written is never pruned. A run resumed from
a checkpoint that is not the newest (a roll-back, or `resume: never` over an old run) renames the newer
`step-*` folders of the abandoned timeline to `abandoned-step-*` (`abandon_newer`), so neither pruning nor a
later `resume: auto` mixes the two timelines.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

_STEP_RE = re.compile(r"^step-(\d+)(\.old)?$")


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step-{step:06d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (`.partial` folders are never listed; a `step-N.old`
    left by a kill during a re-save of step N stands in for `step-N` when that is missing)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found: dict[int, Path] = {}
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and (not m.group(2) or int(m.group(1)) not in found):  # step-N wins over step-N.old
            found[int(m.group(1))] = p
    return [found[k] for k in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def checkpoint_step(path: str | Path) -> int | None:
    m = _STEP_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def abandon_newer(root: str | Path, step: int, keep: str | Path | None = None) -> list[tuple[Path, Path]]:
    """Rename every checkpoint under `root` newer than `step` (and one of `step` itself that is not `keep`, the
    folder resumed from) to `abandoned-step-N[-k]`: they belong to a timeline this run no longer follows.
    Returns the (old, new) paths; call on one rank only."""
    keep = Path(keep).resolve() if keep is not None else None
    moved = []
    for p in list_checkpoints(root):
        n = checkpoint_step(p)
        if n < step or (n == step and (keep is None or p.resolve() == keep)):
            continue
        new = p.with_name(f"abandoned-step-{n:06d}")
        k = 0
        while new.exists():
            k += 1
            new = p.with_name(f"abandoned-step-{n:06d}-{k}")
        os.replace(p, new)
        moved.append((p, new))
    if moved:
        _fsync_dir(Path(root))
    return moved


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """requires_grad parameters by name, detached, contiguous, on CPU."""
    return {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}


def check_trainable_names(model: torch.nn.Module, tensors: dict, *, where: str, require_all: bool = True) -> None:
    """Every tensor name must be a parameter of `model` with the same shape; with `require_all`, every
    trainable parameter must be present. Raises naming the first offenders."""
    params = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(params))
    if unknown:
        raise KeyError(f"{where}: {len(unknown)} tensor(s) match no parameter of the model, e.g. {unknown[:5]}")
    if require_all:
        missing = sorted(n for n, p in params.items() if p.requires_grad and n not in tensors)
        if missing:
            raise KeyError(f"{where}: {len(missing)} trainable parameter(s) missing, e.g. {missing[:5]}")
    for name, t in tensors.items():
        if tuple(params[name].shape) != tuple(t.shape):
            raise ValueError(f"{where}: {name} has shape {tuple(t.shape)}, the model expects {tuple(params[name].shape)}")


def load_trainable(model: torch.nn.Module, path: str | Path, *, require_all: bool = True) -> list[str]:
    """Copy a `trainable.safetensors` into `model` in place; unknown names or shapes raise, and with
    `require_all` so does a trainable parameter of `model` missing from the file. Returns the loaded names."""
    tensors = load_file(str(path))
    check_trainable_names(model, tensors, where=str(path), require_all=require_all)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t.to(params[name].dtype))
    return sorted(tensors)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(path)


class CheckpointWriter:
    """Writes checkpoints of one run (all ranks call `save`; rank 0 renames and prunes)."""

    def __init__(self, root: str | Path, keep_last: int, rank: int = 0, barrier=lambda: None):
        self.root = Path(root)
        self.keep_last = keep_last
        self.rank = rank
        self.barrier = barrier

    def save(self, step: int, *, config: dict, trainable: dict[str, torch.Tensor], state: dict,
             optimizer_state: dict | None = None, deepspeed_engine=None) -> Path:
        final = step_dir(self.root, step)
        tmp = final.with_name(final.name + ".partial")
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        self.barrier()
        if deepspeed_engine is not None:  # collective: every rank writes its optimizer partition
            deepspeed_engine.save_checkpoint(str(tmp / "deepspeed"), tag="state", save_latest=False,
                                             exclude_frozen_parameters=True)
        torch.save(rng_state(), tmp / f"rng-rank{self.rank}.pt")
        if self.rank == 0:
            save_file(trainable, str(tmp / "trainable.safetensors"), metadata={"step": str(step)})
            if optimizer_state is not None:
                torch.save(optimizer_state, tmp / "optimizer.pt")
            (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            (tmp / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        self.barrier()
        if self.rank == 0:
            _fsync_tree(tmp)
            old = final.with_name(final.name + ".old")
            if final.exists():  # a re-run of the same step: set the old one aside, never delete it first
                if old.exists():
                    shutil.rmtree(old)
                os.replace(final, old)
            os.replace(tmp, final)
            _fsync_dir(self.root)
            if old.exists():
                shutil.rmtree(old)
            self.prune(keep=final)
        self.barrier()
        return final

    def prune(self, keep: Path | None = None) -> None:
        """Delete all but the newest `keep_last` complete checkpoints (never `keep`, the one just written),
        stale `.partial` folders, and `.old` folders whose step has a complete checkpoint again."""
        ckpts = list_checkpoints(self.root)
        for p in ckpts[:-self.keep_last]:
            if keep is None or p.resolve() != Path(keep).resolve():
                shutil.rmtree(p, ignore_errors=True)
        for p in self.root.glob("*.partial"):
            shutil.rmtree(p, ignore_errors=True)
        for p in self.root.glob("step-*.old"):
            if p.with_name(p.name[: -len(".old")]).is_dir():
                shutil.rmtree(p, ignore_errors=True)


def read_state(ckpt: str | Path) -> dict:
    return json.loads((Path(ckpt) / "state.json").read_text())


def read_config(ckpt: str | Path) -> dict:
    return json.loads((Path(ckpt) / "config.json").read_text())


def load_rng(ckpt: str | Path, rank: int) -> None:
    path = Path(ckpt) / f"rng-rank{rank}.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: the checkpoint was written by fewer ranks than this run has")
    # RNG states hold numpy arrays and python tuples; weights_only with numpy allow-listed.
    with torch.serialization.safe_globals(_numpy_safe_globals()):
        set_rng_state(torch.load(path, weights_only=True))


def load_optimizer_state(ckpt: str | Path) -> dict:
    with torch.serialization.safe_globals(_numpy_safe_globals()):
        return torch.load(Path(ckpt) / "optimizer.pt", weights_only=True, map_location="cpu")


def _numpy_safe_globals() -> list:
    try:
        import numpy._core.multiarray as ma  # numpy 2.x
    except ImportError:  # pragma: no cover - numpy 1.x
        import numpy.core.multiarray as ma

    out = [np.ndarray, np.dtype, ma._reconstruct]
    for name in ("UInt32DType", "Float64DType", "Int64DType"):
        if hasattr(np.dtypes, name):
            out.append(getattr(np.dtypes, name))
    return out
