"""The per-worker training loop that Ray Train runs on every worker (or in the driver in local mode)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from torch import nn

from rsvlm.config import from_dict
from rsvlm.config.schema import JobConfig, MixedPrecision
from rsvlm.data.samples import collate
from rsvlm.errors import JobError
from rsvlm.model.build import load_model
from rsvlm.model.memory import enable_gradient_checkpointing, estimate_training_memory, trainable_parameter_report
from rsvlm.strategies import build_strategy, trainable_parameter_counts
from rsvlm.strategies.checkpoint import save_checkpoint
from rsvlm.tracking import NullRunLogger, make_logger
from rsvlm.train import distributed
from rsvlm.train.optim import build_optimizer, warmup_cosine
from rsvlm.train.progress import NullProgress, ProgressLine
from rsvlm.train.state import (
    DataPosition,
    TrainingState,
    load_training_state,
    restore_rng,
    rng_state,
    save_training_state,
    seed_worker,
)
from rsvlm.train.step import train_step, validation_loss

# The share of fully masked samples (no supervised token: answers cut off by data.max_length, or broken data)
# is judged twice. While training, on at least this many samples, and only when it is above
# data.max_fully_masked_fraction beyond doubt (MASK_CHECK_MARGIN standard errors of that fraction over the
# samples seen), so an unlucky first batch cannot stop a run whose data is fine. At the end of the run,
# always, exactly, on every sample it trained on (summed over workers and restarts): a run whose share is
# above the threshold fails there, however short, and so never registers its model.
MIN_SAMPLES_FOR_MASK_CHECK = 64
MASK_CHECK_MARGIN = 4.0
_TRAINER_STATE = "trainer_state.json"


class FullyMaskedError(JobError):
    """Too many samples had no supervised token (truncated answers or broken data)."""


def check_fully_masked(masked: int, seen: int, job: JobConfig, *, final: bool = False) -> None:
    """Raise :class:`FullyMaskedError` when ``masked`` of ``seen`` samples is too large a share.

    ``final`` (the end of the run): judged exactly, ``masked / seen > data.max_fully_masked_fraction``.
    Otherwise only once ``seen >= MIN_SAMPLES_FOR_MASK_CHECK`` and when the share exceeds the threshold by
    more than ``MASK_CHECK_MARGIN`` standard errors (``sqrt(t (1 - t) / seen)``): early, but never by chance.
    """
    threshold = job.data.max_fully_masked_fraction
    if seen <= 0 or (not final and seen < MIN_SAMPLES_FOR_MASK_CHECK):
        return
    share = masked / seen
    margin = 0.0 if final else MASK_CHECK_MARGIN * math.sqrt(threshold * (1.0 - threshold) / seen)
    if share <= threshold + margin:
        return
    raise fully_masked_error(masked, seen, job, "at the end of the run, over every sample it trained on" if final
                             else f"after {seen} samples, clearly above the threshold; training stopped early")


def fully_masked_error(masked: int, seen: int, job: JobConfig, when: str) -> FullyMaskedError:
    """The one-line error: the share, the threshold, when it was judged, and what to change."""
    return FullyMaskedError(
        f"data.uri={job.data.uri}",
        f"{masked} of {seen} samples ({masked / seen:.1%}) had every label masked, more than "
        f"data.max_fully_masked_fraction={job.data.max_fully_masked_fraction:g} ({when}); no model is registered",
        f"raise data.max_length (now {job.data.max_length}) so the answers fit, or fix the data")


def _masked_before(resume_from) -> int:
    """The fully masked samples of the run's earlier attempts, as its latest checkpoint recorded them."""
    try:
        return int(json.loads((resume_from / _TRAINER_STATE).read_text()).get("fully_masked_samples", 0))
    except (OSError, ValueError, TypeError):
        return 0


def autocast_dtype(precision: MixedPrecision, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for ``precision`` on ``device``; ``auto`` is bf16 on GPUs that have it, else none."""
    if precision is MixedPrecision.bf16:
        return torch.bfloat16
    if precision is MixedPrecision.auto and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def keep_trainable_in_fp32(model: nn.Module) -> None:
    """fp32 master weights: what trains is held (and updated by AdamW) in fp32; autocast computes in bf16.

    Frozen weights stay in the dtype they were loaded in (``model.dtype``), which is where the memory is.
    """
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()


@dataclass
class _Batch:
    inputs: dict[str, torch.Tensor]
    tasks: list[str]
    dropped: int  # fully masked rows left out since the previous batch
    epoch: int  # passes over this worker's shard completed before this batch


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train ``config["job"]`` for ``config["total_steps"]`` optimizer steps, checkpointing on the way.

    ``config["mlflow_run_id"]`` is the run the driver created; rank 0 logs into it, other ranks log nothing.
    ``config["run_name"]`` names the Ray Train run (and its folder under ``train.storage_uri``).
    ``config["validate"]`` says the trainer was given a ``val`` dataset. A restarted or re-run run resumes
    from Ray Train's latest checkpoint: weights, optimizer, schedule, RNG and data position.
    """
    job: JobConfig = from_dict(config["job"])
    total_steps: int = config["total_steps"]
    context = distributed.worker_context(job.train.torch_threads)
    tracking = job.tracking
    logger = (make_logger(tracking.uri, config.get("mlflow_run_id"), context.is_rank_zero)
              if tracking.enabled and config.get("mlflow_run_id") else NullRunLogger())

    # The same seed on every rank: adapters start identical (and reproducible); each rank gets its own
    # stream for dropout below.
    torch.manual_seed(job.train.seed)
    loaded = load_model(job.model)
    strategy = build_strategy(job.strategy)
    model = strategy.apply(loaded.model)
    precision = autocast_dtype(job.train.mixed_precision, context.device)
    if precision is not None:
        keep_trainable_in_fp32(model)
    if job.train.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    masked_before = 0  # fully masked samples of earlier attempts (all workers)
    with distributed.latest_checkpoint() as resume_from:
        state = None
        if resume_from is not None:
            strategy.restore(model, resume_from)
            state = load_training_state(resume_from)
            if state is None:
                raise RuntimeError(f"checkpoint {resume_from} has no training state to resume from")
            masked_before = _masked_before(resume_from)
    start_step = state.step if state else 0
    progress = ProgressLine(total_steps, start_step) if context.is_rank_zero else NullProgress()
    if state is None:
        counts = trainable_parameter_counts(model)
        memory = estimate_training_memory(model, micro_batch_size=job.train.micro_batch_size,
                                          seq_len=job.data.max_length,
                                          gradient_checkpointing=job.train.gradient_checkpointing)
        for line in trainable_parameter_report(model) + memory.lines():
            progress.message(line)
        logger.log_params({f"model.params.{part}.{kind}": n for part, c in counts.items() for kind, n in c.items()}
                          | {"memory.estimate_gib": round(memory.total_gib, 2)})
    else:
        progress.message(f"resuming from step {state.step}/{total_steps} (epoch {state.data.epoch}, "
                         f"{state.data.samples_seen} samples seen)")
    model = distributed.prepare_model(model, job.scaling.sharding)

    optimizer = build_optimizer(model, job.optim)
    scheduler = warmup_cosine(optimizer, int(job.optim.warmup_ratio * total_steps), total_steps)
    position = DataPosition()
    if state is not None:
        distributed.load_optimizer_state(model, optimizer, state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        position = state.data
        if len(state.rng) == context.world_size:
            restore_rng(state.rng[context.rank])
        else:  # a different worker count: the saved streams do not map onto ranks
            seed_worker(job.train.seed + state.step, context.rank)
    else:
        seed_worker(job.train.seed, context.rank)

    device = distributed.worker_device()
    image_processor = loaded.processor.image_processor
    batches = _batches(job, image_processor, device)
    accumulation = job.gradient_accumulation_steps
    validation_batches = (_ValidationBatches(job, image_processor, device)
                          if config.get("validate") and job.train.val_batches > 0 else None)

    # Counters of this worker since this attempt started; summed over workers at each checkpoint.
    seen = masked = into_epoch = 0
    # The epoch, and the samples of it that earlier attempts consumed (over all workers).
    epoch, into_epoch_before = position.epoch, position.samples_into_epoch
    window: list[dict[str, float]] = []
    window_samples, window_started = 0, time.perf_counter()
    steady_samples, steady_started = 0, None
    metrics: dict[str, float] = {}

    def checkpoint(step: int, extra: dict[str, float]) -> dict[str, float]:
        """Save a resumable checkpoint at ``step`` and report it; every rank takes part (collectives)."""
        state_dict = distributed.full_state_dict(model)
        optimizer_state = distributed.optimizer_state(model, optimizer)
        rng = distributed.gather_objects(rng_state())
        total_seen, total_into_epoch, total_masked = distributed.sum_over_workers([seen, into_epoch, masked])
        data = DataPosition(epoch=epoch, samples_seen=position.samples_seen + int(total_seen),
                            samples_into_epoch=into_epoch_before + int(total_into_epoch))
        run_masked = masked_before + int(total_masked)
        # Every rank has the same sums, so every rank raises alike, before anything is saved or reported.
        check_fully_masked(run_masked, data.samples_seen, job, final=step == total_steps)
        report = {"step": step, "epoch": epoch, "samples_seen": data.samples_seen, "world_size": context.world_size,
                  "sharded": state_dict is not None, "resumed_from_step": start_step,
                  "fully_masked_samples": run_masked, **metrics, **extra}
        if validation_batches is not None:
            loss_sum, tokens = validation_loss(distributed.unwrap(model), validation_batches, precision,
                                               strategy.set_batch_tasks)
            if tokens:
                report["val/loss"] = loss_sum / tokens
                logger.log_metrics({"val/loss": report["val/loss"]}, step)
        name = f"checkpoint_step{step:07d}"
        with distributed.checkpoint_dir(job, config["run_name"], name) as directory:
            written = None
            if context.is_rank_zero:
                save_checkpoint(directory, distributed.unwrap(model), loaded.processor, job, report, state_dict)
                save_training_state(directory, TrainingState(step, optimizer_state, scheduler.state_dict(), rng, data))
                written = directory
            distributed.report(report, written, name)
        return report

    logger.start_system_metrics(tracking.system_metrics_interval_s, resumed=state is not None)
    try:
        for step in range(start_step + 1, total_steps + 1):
            micro_batches = []
            for _ in range(accumulation):
                batch = next(batches)
                if position.epoch + batch.epoch != epoch:
                    epoch, into_epoch, into_epoch_before = position.epoch + batch.epoch, 0, 0
                rows = batch.inputs["input_ids"].shape[0]
                masked += batch.dropped
                seen += batch.dropped + rows
                into_epoch += batch.dropped + rows
                micro_batches.append((batch.inputs, batch.tasks))
            check_fully_masked(masked, seen, job)  # this worker's own samples: no collective on every step
            window.append(train_step(model, micro_batches, optimizer, scheduler, job.optim.max_grad_norm,
                                     strategy.aux_loss, strategy.set_batch_tasks, precision,
                                     lambda enabled: distributed.gradient_sync(model, enabled)))
            step_samples = sum(inputs["input_ids"].shape[0] for inputs, _ in micro_batches)
            window_samples += step_samples
            if steady_started is not None:
                steady_samples += step_samples
            if step % job.train.log_every == 0 or step == total_steps:
                elapsed = max(time.perf_counter() - window_started, 1e-9)
                tokens = sum(m.pop("tokens") for m in window)
                keys = sorted(window[0])
                # Losses averaged over workers (each saw other rows), samples and tokens summed over them.
                *sums, all_samples, all_tokens, all_masked = distributed.sum_over_workers(
                    [sum(m[key] for m in window) / len(window) for key in keys] + [window_samples, tokens, masked])
                metrics = {f"train/{key}": total / context.world_size for key, total in zip(keys, sums)}
                metrics["train/samples_per_s"] = all_samples / elapsed
                metrics["train/tokens_per_s"] = all_tokens / elapsed
                metrics["train/epoch"] = float(epoch)
                metrics["train/fully_masked_samples"] = float(masked_before + all_masked)
                logger.log_metrics(metrics, step)
                progress.update(step, {"loss": metrics["train/loss"], "samples/s": metrics["train/samples_per_s"]})
                window, window_samples, window_started = [], 0, time.perf_counter()
                if steady_started is None:  # the first window holds start-up (compilation, caches, prefetch)
                    steady_started = time.perf_counter()
            if step == total_steps or (job.train.checkpoint_every and step % job.train.checkpoint_every == 0):
                paused = time.perf_counter()
                extra = {}
                if step == total_steps and steady_started is not None and steady_samples:
                    # Throughput after the first log window, for bench/train_overhead.py.
                    extra["steady_samples_per_s"] = steady_samples * context.world_size / (paused - steady_started)
                report = checkpoint(step, extra)
                progress.message(f"checkpoint at step {step}" + (f": val/loss {report['val/loss']:.4g}"
                                                                 if "val/loss" in report else ""))
                # Time spent saving is not training time: keep it out of the next window's rate.
                window_started += time.perf_counter() - paused
                if steady_started is not None:
                    steady_started += time.perf_counter() - paused
    finally:
        logger.stop_system_metrics()
        # Stops the data stream this loop leaves mid-epoch; in local mode its executor runs in this process
        # and would otherwise still be touching Ray when the driver shuts Ray down.
        batches.close()


def _batches(job: JobConfig, image_processor, device: torch.device) -> Iterator[_Batch]:
    """Endless batches from this worker's shard, epoch after epoch; rows are fully-masked-free and each
    batch names its rows' tasks (task-routed adapters use them)."""
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
            yield _Batch(inputs, list(batch["task"][~batch["fully_masked"]]), dropped_since, epoch)
            dropped_since = 0
        if not produced:
            if dropped_since and job.data.max_fully_masked_fraction < 1.0:
                raise fully_masked_error(dropped_since, dropped_since, job, f"every sample of epoch {epoch} of "
                                         "this worker's shard; nothing to train on")
            raise RuntimeError(f"epoch {epoch}: this worker's data shard produced no usable sample")
        epoch += 1


class _ValidationBatches:
    """Up to ``train.val_batches`` micro-batches of the validation set, the same on every worker.

    They are read once and kept (as uint8 rows, a few MB per batch), so a checkpoint's validation does not
    start the validation pipeline again.
    """

    def __init__(self, job: JobConfig, image_processor, device: torch.device):
        self.job, self.image_processor, self.device = job, image_processor, device
        self.rows: Optional[list[dict]] = None

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], list[str]]]:
        if self.rows is None:
            self.rows = []
            shard = distributed.dataset_shard("val")
            for batch in shard.iter_batches(batch_size=self.job.train.micro_batch_size, batch_format="numpy",
                                            drop_last=False):
                self.rows.append(batch)
                if len(self.rows) >= self.job.train.val_batches:
                    break
        for batch in self.rows:
            inputs, _ = collate(batch, self.image_processor, self.device)
            if inputs is not None:
                yield inputs, list(batch["task"][~batch["fully_masked"]])
