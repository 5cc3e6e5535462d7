"""Checkpoint folders: keep-last pruning never drops the checkpoint just written, a roll-back renames the
abandoned timeline aside (so resume=auto cannot jump back to it), and re-saving a step is atomic."""

from __future__ import annotations

import json

import pytest
import torch
from test_train_fixtures import config_path, make_samples, tiny_overrides

from train import checkpoint as C


def _save(w, step, value=0.0):
    return w.save(step, config={}, trainable={"w": torch.full((1,), float(value))}, state={"step": step, "v": value})


def _names(root):
    return [p.name for p in C.list_checkpoints(root)]


def test_rollback_renames_newer_checkpoints_and_never_prunes_the_new_one(tmp_path):
    root = tmp_path / "ck"
    w = C.CheckpointWriter(root, keep_last=1)
    for s in (100, 200, 300):
        _save(w, s)
    assert _names(root) == ["step-000300"]
    # even without the roll-back bookkeeping, the folder just written survives its own prune
    assert _save(w, 250).is_dir() and _names(root) == ["step-000250", "step-000300"]

    root2 = tmp_path / "ck2"
    w2 = C.CheckpointWriter(root2, keep_last=2)
    for s in (100, 200, 300, 400):
        _save(w2, s)
    moved = C.abandon_newer(root2, 300, keep=root2 / "step-000300")  # resumed from step 300 of [300, 400]
    assert [(a.name, b.name) for a, b in moved] == [("step-000400", "abandoned-step-000400")]
    _save(w2, 350, value=1)
    assert _names(root2) == ["step-000300", "step-000350"] and C.latest_checkpoint(root2).name == "step-000350"
    assert (root2 / "abandoned-step-000400").is_dir()  # kept for the user, invisible to resume / pruning
    # a second roll-back over the same step does not clobber the first abandoned folder
    _save(w2, 400, value=2)
    C.abandon_newer(root2, 300, keep=root2 / "step-000300")
    assert (root2 / "abandoned-step-000400-1").is_dir() and (root2 / "abandoned-step-000350").is_dir()


def test_resaving_a_step_is_atomic(tmp_path, monkeypatch):
    root = tmp_path / "ck"
    w = C.CheckpointWriter(root, keep_last=3)
    _save(w, 5, value=1)
    real = C.os.replace

    def killed_before_the_new_one_lands(src, dst):
        if str(src).endswith(".partial"):
            raise KeyboardInterrupt("killed")  # the old step-5 is already renamed aside
        return real(src, dst)

    monkeypatch.setattr(C.os, "replace", killed_before_the_new_one_lands)
    with pytest.raises(KeyboardInterrupt):
        _save(w, 5, value=2)
    monkeypatch.setattr(C.os, "replace", real)
    latest = C.latest_checkpoint(root)  # the old checkpoint is still there and complete
    assert latest.name == "step-000005.old" and C.read_state(latest)["v"] == 1
    assert C.checkpoint_step(latest) == 5
    _save(w, 5, value=3)
    assert sorted(p.name for p in root.iterdir()) == ["step-000005"]
    assert C.read_state(root / "step-000005")["v"] == 3


def test_resuming_an_older_checkpoint_through_the_loop_abandons_the_newer_ones(tmp_path, capsys):
    from videochat.cli import main

    data = make_samples(tmp_path, n_train=4, n_val=1)
    out = tmp_path / "run"
    args = ["train", "--config", str(config_path("align"))]
    assert main([*args, *tiny_overrides(data, out, "align", steps=4, save_every=2, keep_last=2, eval_every=0)]) == 0
    ck = out / "checkpoints"
    assert _names(ck) == ["step-000002", "step-000004"]
    # roll back to step 2 (say step 4 diverged) and train to step 3 with checkpoints every step
    assert main([*args, *tiny_overrides(data, out, "align", steps=3, save_every=1, keep_last=2, eval_every=0,
                                         resume=str(ck / "step-000002"))]) == 0
    assert "step-000004 -> abandoned-step-000004" in capsys.readouterr().out
    assert _names(ck) == ["step-000002", "step-000003"] and (ck / "abandoned-step-000004").is_dir()
    assert json.loads((C.latest_checkpoint(ck) / "state.json").read_text())["step"] == 3  # what resume=auto picks
