"""Steady-state samples/s of the finetune loop under Ray Train against a bare PyTorch loop on the same batches.

    .venv/bin/python bench/train_overhead.py [--preset small|toy] [--steps 60] [--log-every 10] [--batch 8]

The model is the tiny LLaVA sized by ``--preset`` (``small``: Llama LLM hidden 512, 4 layers, 8 heads, MLP
1024; CLIP tower hidden 128, 2 layers, 64-px images, 16 image tokens), trained with ``strategy=lora``
(rank 128 on every LLM linear layer, projector full) and ``optim=demo``, as the demo trains. The rows are
built once in each process by ``SampleBuilder`` from the synthetic dataset (seed 0), so every variant trains
on the same ``--steps`` × ``--batch`` rows, held in memory. Variants, each in its own process:

- ``bare``: a plain loop over the rows in micro-batches of ``--batch``: ``collate`` then ``train_step``,
  with the model, strategy, optimizer and schedule built as ``train_loop_per_worker`` builds them, and
  torch's default thread count;
- ``ray1``: ``train_loop_per_worker`` under ``TorchTrainer`` (``distributed.make_trainer``) with one worker
  given every core (``scaling.cpus_per_worker`` and ``train.torch_threads`` = the core count), reading
  the rows from a materialized ``ray.data`` dataset, so no preprocessing is measured;
- ``ray2``: the same with two workers (DDP over gloo), each given half the cores; the rows are repeated
  once, so each worker's shard holds the same ``--steps`` micro-batches and no epoch boundary falls
  inside the run.

Samples/s is steady state: counted after the first ``--log-every`` steps (start-up, allocator and cache
warm-up), up to the end of the last step, as the loop's ``steady_samples_per_s`` counts it. Start-up is
reported apart: ``*_outside_steady_s`` is a variant's wall time (from building the model for ``bare``; from
``trainer.fit()`` for Ray) minus its steady time. Prints one JSON line with ``ray_over_bare`` (one worker's
rate over the bare loop's) and ``two_over_one``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from _common import variants_or_one  # noqa: E402  (bench/ is the script's folder)

VARIANTS = ("bare", "ray1", "ray2")
PRESETS = {
    "small": dict(hidden=512, layers=4, heads=8, intermediate=1024, vision_hidden=128, vision_layers=2, rank=128,
                  batch=8, steps=60, log_every=10),
    "toy": dict(hidden=64, layers=1, heads=2, intermediate=128, vision_hidden=32, vision_layers=1, rank=8,
                batch=2, steps=4, log_every=2),
}
# Rows per Ray Data block: the finetune pipeline's map_batches writes blocks of 32 rows.
BLOCK_ROWS = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--steps", type=int, help="optimizer steps per variant (default: the preset's)")
    parser.add_argument("--log-every", type=int, help="steps in the warm-up window (default: the preset's)")
    parser.add_argument("--batch", type=int, help="micro-batch per worker (default: the preset's)")
    parser.add_argument("--variant", choices=VARIANTS, help="run one variant in this process (used internally)")
    args = parser.parse_args()
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.log_every >= args.steps:
        parser.error("--log-every must be smaller than --steps (the steady window comes after it)")
    results = variants_or_one(__file__, args, VARIANTS, measure)
    if results is None:
        return
    bare, ray1, ray2 = (results[name] for name in VARIANTS)
    figures = {
        "model": {"preset": args.preset, "hidden": args.hidden, "layers": args.layers,
                  "intermediate": args.intermediate, "vision_hidden": args.vision_hidden, "rank": args.rank,
                  "params": bare["params"], "trainable_params": bare["trainable_params"]},
        "steps": args.steps, "warmup_steps": args.log_every, "micro_batch": args.batch, "rows": bare["rows"],
        "mean_tokens_per_row": bare["mean_tokens_per_row"], "cores": os.cpu_count(),
        "threads": {name: r["threads"] for name, r in results.items()},
        "bare_samples_per_s": round(bare["samples_per_s"], 2),
        "ray_1worker_samples_per_s": round(ray1["samples_per_s"], 2),
        "ray_2worker_samples_per_s": round(ray2["samples_per_s"], 2),
        "bare_outside_steady_s": round(bare["outside_steady_s"], 1),
        "ray_1worker_outside_steady_s": round(ray1["outside_steady_s"], 1),
        "ray_2worker_outside_steady_s": round(ray2["outside_steady_s"], 1),
        "ray_init_s": round(ray1["ray_init_s"], 1),
        # Start-up Ray adds before steady state: its wall time outside steady state beyond the bare loop's.
        "ray_startup_s": round(ray1["ray_init_s"] + ray1["outside_steady_s"] - bare["outside_steady_s"], 1),
        "ray_over_bare": round(ray1["samples_per_s"] / bare["samples_per_s"], 3),
        "two_over_one": round(ray2["samples_per_s"] / ray1["samples_per_s"], 3),
    }
    print(json.dumps(figures))


def job_overrides(args: argparse.Namespace, workdir: str, workers: int = 1) -> list[str]:
    """The finetune job both loops train: LoRA on the sized tiny model, no tracking, one checkpoint at the end."""
    cores = os.cpu_count() or 1
    return [f"workdir={workdir}", "tracking=off", "strategy=lora", f"strategy.rank={args.rank}",
            f"strategy.alpha={2 * args.rank}", "data.shuffle=false", "train.val_batches=0",
            "train.checkpoint_every=0", f"train.max_steps={args.steps}", f"train.log_every={args.log_every}",
            f"train.micro_batch_size={args.batch}",
            f"model.tiny.text_hidden_size={args.hidden}", f"model.tiny.text_layers={args.layers}",
            f"model.tiny.text_heads={args.heads}", f"model.tiny.text_intermediate_size={args.intermediate}",
            f"model.tiny.vision_hidden_size={args.vision_hidden}", f"model.tiny.vision_layers={args.vision_layers}",
            # The cores split evenly over the workers, and torch uses that many threads in each.
            f"scaling={'cpu1' if workers == 1 else 'cpu2'}", f"scaling.num_workers={workers}",
            f"scaling.cpus_per_worker={cores / workers:g}", f"train.torch_threads={max(1, cores // workers)}"]


def build_rows(job, count: int) -> dict:
    """``count`` training rows as ``SampleBuilder`` makes them (columns of numpy arrays), from synthetic scenes."""
    import numpy as np

    from rsvlm.data.samples import SampleBuilder
    from rsvlm.data.storage import Storage
    from rsvlm.data.synthetic import write_dataset
    from rsvlm.data.template import VICUNA_V1
    from rsvlm.model.build import load_processor

    processor, image_tokens = load_processor(job.model)
    with tempfile.TemporaryDirectory(prefix="rsvlm-bench-rows-") as folder:
        # About six records per scene (questions plus one multi-turn VQA record).
        write_dataset(folder, seed=0, num_train_images=max(1, math.ceil(count / 5)), num_test_images=0,
                      image_size=128)
        records = json.loads((Path(folder) / "train.json").read_text())
        records = [records[i % len(records)] for i in range(count)]
        builder = SampleBuilder(processor, VICUNA_V1, image_tokens, job.data.max_length, folder,
                                job.model.image_aspect, Storage(job.storage))
        rows = builder({"text": np.array([json.dumps(r) for r in records], dtype=object)})
    if rows["fully_masked"].any():
        raise RuntimeError("a bench row has no supervised token; raise data.max_length")
    return rows


def measure(args: argparse.Namespace) -> dict:
    from rsvlm.config import compose

    with tempfile.TemporaryDirectory(prefix="rsvlm-bench-overhead-") as workdir:
        workers = 2 if args.variant == "ray2" else 1
        job = compose(job_overrides(args, workdir, workers))
        rows = build_rows(job, args.steps * args.batch)
        summary = {"rows": len(rows["id"]), "mean_tokens_per_row": round(float(rows["length"].mean()), 1)}
        print(f"{args.variant}: {summary['rows']} rows, {summary['mean_tokens_per_row']} tokens each on average",
              file=sys.stderr)
        figures = measure_bare(job, rows, args) if args.variant == "bare" else measure_ray(job, rows, args, workers)
    return summary | figures


def measure_bare(job, rows: dict, args: argparse.Namespace) -> dict:
    """The loop's model, strategy, optimizer and schedule, stepped over the rows in order with no framework."""
    import torch

    from rsvlm.data.samples import collate
    from rsvlm.model.build import load_model
    from rsvlm.strategies import build_strategy
    from rsvlm.train.optim import build_optimizer, warmup_cosine
    from rsvlm.train.state import seed_worker
    from rsvlm.train.step import train_step

    started = time.perf_counter()
    loaded = load_model(job.model)
    params = sum(p.numel() for p in loaded.model.parameters())
    strategy = build_strategy(job.strategy)
    model = strategy.apply(loaded.model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = build_optimizer(model, job.optim)
    total = args.steps
    scheduler = warmup_cosine(optimizer, int(job.optim.warmup_ratio * total), total)
    seed_worker(job.train.seed, 0)
    device, image_processor = torch.device("cpu"), loaded.processor.image_processor
    steady_samples, steady_started = 0, None
    for step in range(1, total + 1):
        lo = (step - 1) * args.batch
        batch = {name: column[lo:lo + args.batch] for name, column in rows.items()}
        inputs, _ = collate(batch, image_processor, device)
        train_step(model, [(inputs, list(batch["task"][~batch["fully_masked"]]))], optimizer, scheduler,
                   job.optim.max_grad_norm, strategy.aux_loss, strategy.set_batch_tasks)
        if steady_started is not None:
            steady_samples += inputs["input_ids"].shape[0]
        if step == args.log_every:
            steady_started = time.perf_counter()
    ended = time.perf_counter()
    rate = steady_samples / (ended - steady_started)
    return {"samples_per_s": rate, "outside_steady_s": (ended - started) - steady_samples / rate,
            "threads": torch.get_num_threads(), "params": params, "trainable_params": trainable}


def measure_ray(job, rows: dict, args: argparse.Namespace, workers: int) -> dict:
    """``train_loop_per_worker`` under ``TorchTrainer`` on the rows as a materialized Ray dataset."""
    import ray

    from rsvlm.config import to_dict
    from rsvlm.train import distributed

    started = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray_init_s = time.perf_counter() - started
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        count = len(rows["id"])
        items = [{name: column[i % count] for name, column in rows.items()} for i in range(count * workers)]
        dataset = ray.data.from_items(items, override_num_blocks=max(1, len(items) // BLOCK_ROWS)).materialize()
        threads_dir = Path(job.workdir) / "threads"
        threads_dir.mkdir()
        loop_config = {"job": to_dict(job), "mlflow_run_id": None, "run_name": f"overhead-{args.variant}",
                       "total_steps": args.steps, "validate": False, "threads_dir": str(threads_dir)}
        trainer = distributed.make_trainer(loop_recording_threads, loop_config, job, {"train": dataset},
                                           loop_config["run_name"])
        fit_started = time.perf_counter()
        result = trainer.fit()
        fit_s = time.perf_counter() - fit_started
    finally:
        ray.shutdown()
    metrics = dict(result.metrics or {})
    rate = metrics["steady_samples_per_s"]
    steady_samples = (args.steps - args.log_every) * args.batch * workers
    threads = sorted(int(p.read_text()) for p in threads_dir.iterdir())
    return {"samples_per_s": rate, "outside_steady_s": fit_s - steady_samples / rate, "ray_init_s": ray_init_s,
            "fit_s": fit_s, "threads": threads[0] if len(set(threads)) == 1 else threads, "workers": len(threads),
            "loop_samples_seen": metrics.get("samples_seen")}


def loop_recording_threads(config: dict) -> None:
    """``train_loop_per_worker``, then a note of the torch threads it trained with (one file per worker)."""
    import torch

    from rsvlm.train.loop import train_loop_per_worker

    train_loop_per_worker(config)
    Path(config["threads_dir"], f"{os.getpid()}").write_text(str(torch.get_num_threads()))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
