"""The benches run end to end at toy size and print their JSON line (figures are not judged here)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_ingest_bench_prints_its_figures():
    result = subprocess.run([sys.executable, "bench/ingest.py", "--images", "24", "--image-size", "64"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["images"] == 24
    for key in ("ray_images_per_s", "baseline_images_per_s", "limit_images_per_s"):
        assert figures[key] > 0, key
    ratio = figures["ray_images_per_s"] / figures["baseline_images_per_s"]
    assert abs(figures["ray_over_baseline"] - ratio) < 0.01


def test_strategies_bench_prints_its_ratios():
    result = subprocess.run([sys.executable, "bench/strategies.py", "--hidden", "64", "--layers", "1", "--heads", "2",
                             "--intermediate", "128", "--seq", "32", "--batch", "1", "--steps", "1", "--rank", "8"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["moe_lora_trainable_params"] == figures["moe_lora_loop_trainable_params"]
    assert figures["lora_trainable_params"] < figures["full_trainable_params"]
    for key in ("moe_lora_over_lora", "full_over_lora", "moe_lora_over_loop_reference"):
        assert figures[key] > 0, key


def test_gpu_train_bench_runs_at_toy_size_on_cpu():
    result = subprocess.run([sys.executable, "bench/gpu_train.py", "--preset", "toy", "--steps", "1"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    for name in ("full", "lora", "moe_lora"):
        assert figures[name]["tokens_per_s"] > 0, figures[name]
        assert figures[name]["checkpointing_active"] is True
    assert figures["lora"]["trainable_params_m"] < figures["full"]["trainable_params_m"]
