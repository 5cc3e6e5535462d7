"""benchmarks/bench_train.py prints one JSON object with the figures issue 9 asks for (tiny CPU runs)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_train_fixtures import ROOT


def _run(*args: str) -> dict:
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_bench_train_cpu_reports_throughput_and_overhead():
    out = _run("--steps", "2", "--warmup", "1", "--repeats", "1")
    assert out["samples_per_s"] > 0 and out["tokens_per_s"] > 0 and out["steps_timed"] == 2
    assert out["overhead_ratio"] > 0 and out["overhead_target"] == 1.10


@pytest.mark.slow
def test_bench_train_gpu_code_path_runs_at_tiny_sizes_on_cpu():
    out = _run("--preset", "tiny-synthetic", "--device", "cpu", "--steps", "1", "--warmup", "0",
               "--peak-tflops", "1")
    (r,) = out["results"]
    assert r["mode"] == "lora-bf16" and r["samples_per_s"] > 0 and r["llm_mfu"] is not None
