"""What the user sees: a tqdm bar (loss, lr, samples/s, tokens/s, ETA), `metrics.jsonl`, TensorBoard and a
loss-curve PNG at the end. Only the main process writes; other ranks get a no-op logger."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm.auto import tqdm


class RunLogger:
    """Collects per-step figures; `log` appends a JSON line (and a TensorBoard scalar) per metric record."""

    def __init__(self, out_dir: str | Path, total_steps: int, start_step: int = 0, *, enabled: bool = True,
                 tensorboard: bool = True, progress: bool = True):
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.bar = None
        self.tb = None
        self._window_start = time.perf_counter()
        self._window_samples = 0
        self._window_tokens = 0
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self._file = open(self.metrics_path, "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out_dir / "tb"))
        if progress:
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def count(self, samples: int, tokens: int) -> None:
        """Account one micro-batch (global figures: samples and tokens over all ranks)."""
        self._window_samples += samples
        self._window_tokens += tokens

    def rates(self) -> tuple[float, float]:
        """(samples/s, tokens/s) since the last call, which starts a new window."""
        now = time.perf_counter()
        dt = max(now - self._window_start, 1e-9)
        out = (self._window_samples / dt, self._window_tokens / dt)
        self._window_start, self._window_samples, self._window_tokens = now, 0, 0
        return out

    def step(self, step: int, loss: float, lr: float, extra: dict | None = None, write: bool = True) -> None:
        """Advance the bar; with `write`, also record metrics (samples/s and tokens/s over the window)."""
        if not self.enabled:
            return
        record = None
        if write:
            sps, tps = self.rates()
            record = {"step": step, "loss": loss, "lr": lr, "samples_per_s": sps, "tokens_per_s": tps,
                      "time": time.time(), **(extra or {})}
            self.write(record)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            post = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}"}
            if record:
                post.update({"samples/s": f"{record['samples_per_s']:.2f}", "tok/s": f"{record['tokens_per_s']:.0f}"})
            self.bar.set_postfix(post, refresh=False)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k not in ("step", "time") and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])

    def message(self, text: str) -> None:
        """A line that does not break the bar."""
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(text)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        self._file.close()


def read_metrics(path: str | Path) -> list[dict]:
    """Records of a metrics.jsonl; a resumed run appends, so a later record for a step replaces earlier ones."""
    by_key: dict[tuple, dict] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            by_key[("val" if "val_loss" in r else "train", r["step"])] = r
    return [by_key[k] for k in sorted(by_key, key=lambda k: (k[1], k[0]))]


def plot_loss(metrics_path: str | Path, out_png: str | Path) -> Path:
    """Training (and validation) loss against step as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return Path(out_png)
