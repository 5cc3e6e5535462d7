"""The files of an evaluation folder: the resumable predictions log and the run settings it belongs to.

`OUT/predictions.jsonl`: one JSON line per record, appended and fsync'd batch by batch; on a resume the
valid `status: "ok"` lines are kept (a line torn by a kill is dropped) and everything else is redone.
`OUT/run.json`: the settings that change predictions, with a fingerprint of the model's weights; a resume
with other settings, another model or other data is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from videochat.eval.tasks import Item

log = logging.getLogger(__name__)

__all__ = ["PREDICTIONS", "RUN_FILE", "EvalError", "read_predictions", "write_lines", "resume", "check_run",
           "model_fingerprint"]

PREDICTIONS = "predictions.jsonl"
RUN_FILE = "run.json"


class EvalError(RuntimeError):
    """The evaluation cannot start or continue (bad data source, conflicting resume, unusable model)."""


def read_predictions(path: Path) -> list[dict]:
    """Valid lines of a predictions file (a torn last line from a kill is dropped)."""
    if not path.is_file():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: dropping an unreadable line (interrupted write)", path, n)
                continue
            if isinstance(row, dict) and "key" in row:
                rows.append(row)
    return rows


def write_lines(f, rows: list[dict]) -> None:
    for r in rows:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


def model_fingerprint(model) -> str:
    """A cheap hash of the weights (name, shape and ~4k evenly strided values of every tensor): a resumed
    run refuses predictions made by a different model, e.g. after retraining into the same folder. Strided
    samples keep it fast and allocation-free for 7B models; training changes every value of what it trains."""
    h = hashlib.sha1()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            flat = t.detach().reshape(-1)
            if flat.numel():
                sample = flat[:: max(1, flat.numel() // 4096)][:4096]
                h.update(sample.to(device="cpu", dtype=torch.float64).numpy().tobytes())
    return h.hexdigest()[:16]


def resume(pred_path: Path, items: list[Item]) -> dict[str, dict]:
    """Predictions already made for `items` (by key); rewrites the file with only those lines."""
    by_key = {it.key: it for it in items}
    done: dict[str, dict] = {}
    for row in read_predictions(pred_path):
        it = by_key.get(row["key"])
        if row.get("status") != "ok" or it is None:
            continue
        if row.get("fingerprint") != it.fingerprint:
            raise EvalError(f"{pred_path} has a prediction for {row['key']!r} made on different data; "
                            "use --overwrite (overwrite=True) or another --out")
        done[row["key"]] = row
    tmp = pred_path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        write_lines(f, list(done.values()))
    os.replace(tmp, pred_path)
    if done:
        log.info("resuming: %d of %d records already predicted in %s", len(done), len(items), pred_path)
    return done



def check_run(out: Path, settings: dict, model_name: str, overwrite: bool) -> None:
    """Refuse to resume a run made with other settings or another model (weights fingerprint); the model's
    path is recorded but may change (a moved folder with the same weights resumes)."""
    run_path = out / RUN_FILE
    if run_path.is_file() and not overwrite:
        try:
            old = json.loads(run_path.read_text(encoding="utf-8")).get("settings", {})
        except (json.JSONDecodeError, AttributeError):
            old = None
        if old is not None and old != settings:
            diff = sorted(k for k in set(settings) | set(old) if settings.get(k) != old.get(k))
            what = "another model" if diff == ["model_fingerprint"] else f"different settings ({', '.join(diff)})"
            raise EvalError(f"{out} holds predictions made with {what}; "
                            "use --overwrite (overwrite=True) or another --out")
    if overwrite:
        for name in (PREDICTIONS, "results.json", "results.md", "results.png"):
            (out / name).unlink(missing_ok=True)
    run_path.write_text(json.dumps({"settings": settings, "model": model_name}, indent=2) + "\n", encoding="utf-8")
