"""The benches run end to end at toy size and print their JSON line (figures are not judged here)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest


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
                             "--intermediate", "128", "--seq", "32", "--batch", "1", "--steps", "1", "--rank", "8",
                             "--rounds", "2"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["moe_lora_trainable_params"] == figures["moe_lora_loop_trainable_params"]
    assert figures["lora_trainable_params"] < figures["full_trainable_params"]
    assert figures["model"]["rounds"] == 2
    for key in ("lora_over_full", "moe_lora_over_lora", "full_over_lora", "moe_lora_over_loop_reference"):
        ratio = figures[key]
        low, high = ratio["spread"]
        assert 0 < low <= ratio["median"] <= high and ratio["predicted"] > 0, (key, ratio)
    # The cost model: LoRA does less arithmetic than full fine-tuning, MoE-LoRA a little more than LoRA.
    assert figures["lora_over_full"]["predicted"] < 1 < figures["moe_lora_over_lora"]["predicted"]


def test_lora_profile_bench_prints_each_variants_costliest_operators():
    result = subprocess.run([sys.executable, "bench/lora_profile.py", "--hidden", "64", "--layers", "1", "--heads",
                             "2", "--intermediate", "128", "--seq", "32", "--batch", "1", "--steps", "1", "--rank",
                             "8", "--precision", "bf16_autocast"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(figures["profiles"]) == {"full", "lora", "lora_peft_default", "moe_lora_1expert"}
    for name, operators in figures["profiles"].items():
        assert "aten::mm" in operators and all(op["calls"] > 0 for op in operators.values()), name
    assert figures["lora_over_full"] == pytest.approx(figures["lora_step_s"] / figures["full_step_s"], rel=0.02)  # of rounded times


def test_gpu_train_bench_runs_at_toy_size_on_cpu():
    result = subprocess.run([sys.executable, "bench/gpu_train.py", "--preset", "toy", "--steps", "1"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    for name in ("full", "lora", "moe_lora"):
        assert figures[name]["tokens_per_s"] > 0, figures[name]
        assert figures[name]["checkpointing_active"] is True
    assert figures["lora"]["trainable_params_m"] < figures["full"]["trainable_params_m"]


def test_train_overhead_bench_prints_its_ratios():
    result = subprocess.run([sys.executable, "bench/train_overhead.py", "--preset", "toy"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout[-3000:]
    figures = json.loads(lines[0])
    assert figures["steps"] == 4 and figures["micro_batch"] == 2 and figures["rows"] == 8
    assert 0 < figures["model"]["trainable_params"] < figures["model"]["params"]
    cores = figures["cores"]
    assert figures["threads"]["bare"] >= 1
    assert figures["threads"]["ray1"] == cores and figures["threads"]["ray2"] == max(1, cores // 2)
    for key in ("bare_samples_per_s", "ray_1worker_samples_per_s", "ray_2worker_samples_per_s", "ray_init_s"):
        assert math.isfinite(figures[key]) and figures[key] > 0, key
    # The rates are printed rounded to 0.01, so the printed ratios agree with them to a relative tolerance.
    ratio = figures["ray_1worker_samples_per_s"] / figures["bare_samples_per_s"]
    assert figures["ray_over_bare"] == pytest.approx(ratio, rel=0.02)
    ratio = figures["ray_2worker_samples_per_s"] / figures["ray_1worker_samples_per_s"]
    assert figures["two_over_one"] == pytest.approx(ratio, rel=0.02)
    assert figures["ray_1worker_outside_steady_s"] >= 0 and figures["ray_2worker_outside_steady_s"] >= 0


def test_generation_bench_prints_identical_answers_and_its_ratio():
    result = subprocess.run([sys.executable, "bench/generation.py", "--preset", "toy"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout[-3000:]
    figures = json.loads(lines[0])
    assert figures["answers_identical"] is True
    assert figures["end_to_end_answers_identical"] is True
    assert figures["questions"] == 24 and figures["batch_size"] == 8 and figures["max_new_tokens"] == 4
    for mode in ("sequential", "batched"):
        assert 0 < figures["mean_new_tokens"][mode] <= figures["max_new_tokens"], mode
    assert set(figures["threads"]) == {"sequential", "batched", "in_process", "ray_data"}
    for key in ("sequential_answers_per_s", "batched_answers_per_s", "batched_over_sequential",
                "in_process_answers_per_s", "ray_data_answers_per_s", "ray_init_s"):
        assert math.isfinite(figures[key]) and figures[key] > 0, key
    ratio = figures["batched_answers_per_s"] / figures["sequential_answers_per_s"]
    assert figures["batched_over_sequential"] == pytest.approx(ratio, rel=0.02)


def test_sweep_bench_measures_a_variant():
    # One variant: each runs a whole sweep with a Ray of its own (minutes on 2 cores). Running every variant
    # and their ratio is bench/_common.variants_or_one, which the strategies bench's test covers.
    result = subprocess.run([sys.executable, "bench/sweep.py", "--steps", "2", "--trials", "2",
                             "--variant", "parallel"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["concurrent"] >= 1 and figures["wall_s"] > 0 and figures["ray_init_s"] > 0


def test_vision_probe_bench_prints_true_and_shuffled_accuracies(tmp_path):
    common = ["--train-images", "16", "--test-images", "4", "--workdir", str(tmp_path)]
    for mode in ("probe", "train"):
        extra = ["--steps", "2", "--caption-steps", "1"] if mode == "train" else []
        result = subprocess.run([sys.executable, "bench/vision_probe.py", "--mode", mode, *extra, *common],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        figures = json.loads(result.stdout.strip().splitlines()[-1])
        if mode == "probe":
            assert set(figures["probe_accuracy"]) == set(figures["base_rate"]) and len(figures["base_rate"]) == 5
            assert all(0.0 <= v <= 1.0 for v in figures["probe_accuracy"].values())
        else:
            for kind in ("presence", "count", "comparison"):
                assert 0.0 <= figures[f"{kind}_true"] <= 1.0 and 0.0 <= figures[f"{kind}_shuffled"] <= 1.0
            assert math.isfinite(figures["train_loss"]) and math.isfinite(figures["caption_loss"])
