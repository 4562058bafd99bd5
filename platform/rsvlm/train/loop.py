"""The per-worker training loop that Ray Train runs on every worker (or in the driver in local mode)."""

from __future__ import annotations

import time
from typing import Any, Iterator

import torch

from rsvlm.config import from_dict
from rsvlm.config.schema import JobConfig
from rsvlm.data.samples import collate
from rsvlm.model.build import load_model
from rsvlm.model.memory import enable_gradient_checkpointing, estimate_training_memory, trainable_parameter_report
from rsvlm.strategies import build_strategy, trainable_parameter_counts
from rsvlm.strategies.checkpoint import save_checkpoint
from rsvlm.tracking import NullRunLogger, make_logger
from rsvlm.train import distributed
from rsvlm.train.optim import build_optimizer, warmup_cosine
from rsvlm.train.progress import NullProgress, ProgressLine
from rsvlm.train.step import train_step

# Judge the fully-masked fraction only after this many samples, so one unlucky first batch cannot fail a run.
MIN_SAMPLES_FOR_MASK_CHECK = 64


class FullyMaskedError(RuntimeError):
    """Too many samples had no supervised token (truncated answers or broken data)."""


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train ``config["job"]`` for ``train.max_steps`` steps and report the final checkpoint from rank 0.

    ``config["mlflow_run_id"]`` is the run the driver created; rank 0 logs into it, other ranks log nothing.
    ``config["run_name"]`` names the Ray Train run (and its folder under ``train.storage_uri``).
    """
    job: JobConfig = from_dict(config["job"])
    context = distributed.worker_context(job.train.torch_threads)
    torch.manual_seed(job.train.seed)
    tracking = job.tracking
    logger = (make_logger(tracking.uri, config.get("mlflow_run_id"), context.is_rank_zero)
              if tracking.enabled and config.get("mlflow_run_id") else NullRunLogger())
    progress = ProgressLine(job.train.max_steps) if context.is_rank_zero else NullProgress()

    loaded = load_model(job.model)
    strategy = build_strategy(job.strategy)
    model = strategy.apply(loaded.model)
    if job.train.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    counts = trainable_parameter_counts(model)
    memory = estimate_training_memory(model, micro_batch_size=job.train.micro_batch_size,
                                      seq_len=job.data.max_length,
                                      gradient_checkpointing=job.train.gradient_checkpointing)
    for line in trainable_parameter_report(model) + memory.lines():
        progress.message(line)
    logger.log_params({f"model.params.{part}.{kind}": n for part, c in counts.items() for kind, n in c.items()}
                      | {"memory.estimate_gib": round(memory.total_gib, 2)})
    model = distributed.prepare_model(model, job.scaling.sharding)

    optimizer = build_optimizer(model, job.optim)
    warmup = int(job.optim.warmup_ratio * job.train.max_steps)
    scheduler = warmup_cosine(optimizer, warmup, job.train.max_steps)
    batches = _batches(job, loaded.processor.image_processor, distributed.worker_device())

    seen = masked = 0
    window: list[dict[str, float]] = []
    window_samples, window_started = 0, time.perf_counter()
    for step in range(1, job.train.max_steps + 1):
        inputs, tasks, dropped = next(batches)
        masked += dropped
        seen += dropped + inputs["input_ids"].shape[0]
        if seen >= MIN_SAMPLES_FOR_MASK_CHECK and masked / seen > job.data.max_fully_masked_fraction:
            raise FullyMaskedError(
                f"{masked} of {seen} samples had every label masked (> data.max_fully_masked_fraction="
                f"{job.data.max_fully_masked_fraction}); answers are probably cut off by data.max_length="
                f"{job.data.max_length}")
        strategy.set_batch_tasks(model, tasks)
        window.append(train_step(model, inputs, optimizer, scheduler, job.optim.max_grad_norm,
                                 strategy.aux_loss))
        window_samples += inputs["input_ids"].shape[0]
        if step % job.train.log_every == 0 or step == job.train.max_steps:
            elapsed = time.perf_counter() - window_started
            metrics = {f"train/{key}": sum(m[key] for m in window) / len(window) for key in window[0]}
            # Each worker counts its own samples; the global rate is the sum over workers.
            metrics["train/samples_per_s"] = window_samples * context.world_size / max(elapsed, 1e-9)
            metrics["train/fully_masked_samples"] = float(masked)
            logger.log_metrics(metrics, step)
            progress.update(step, {"loss": metrics["train/loss"], "samples/s": metrics["train/samples_per_s"]})
            window, window_samples, window_started = [], 0, time.perf_counter()

    state_dict = distributed.full_state_dict(model)  # a collective under FSDP: every rank takes part
    final = {"step": job.train.max_steps, "sharded": state_dict is not None, "loss": metrics["train/loss"], "fully_masked_samples": masked,
             "samples_seen": seen, "world_size": context.world_size}
    with distributed.checkpoint_dir(job, config["run_name"], f"checkpoint_final_step{job.train.max_steps}") as directory:
        checkpoint = None
        if context.is_rank_zero:
            save_checkpoint(directory, distributed.unwrap(model), loaded.processor, job, final, state_dict)
            checkpoint = directory
        distributed.report(final, checkpoint)


def _batches(job: JobConfig, image_processor,
             device: torch.device) -> Iterator[tuple[dict[str, torch.Tensor], list[str], int]]:
    """Endless ``(inputs, tasks, dropped)`` from this worker's shard, epoch after epoch; rows are
    fully-masked-free and ``tasks`` names each kept row's task (task-routed adapters use it)."""
    shard = distributed.dataset_shard("train")
    epoch = 0
    while True:
        produced = False
        dropped_since = 0
        for batch in shard.iter_batches(batch_size=job.train.micro_batch_size, batch_format="numpy",
                                        prefetch_batches=2, drop_last=False):
            inputs, dropped = collate(batch, image_processor, device)
            dropped_since += dropped
            if inputs is None:
                continue
            produced = True
            yield inputs, list(batch["task"][~batch["fully_masked"]]), dropped_since
            dropped_since = 0
        if not produced:
            raise RuntimeError(f"epoch {epoch}: this worker's data shard produced no usable sample")
        epoch += 1
