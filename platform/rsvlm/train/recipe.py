"""The fine-tuning recipe one Ray Train worker runs: ``setup()``, ``train()``, ``checkpoint(step)``, ``cleanup()``.

Shaped like torchtune's recipes: what a run needs is built once in :meth:`FinetuneRecipe.setup` (model,
strategy, precision, the resumed state, optimizer and schedule, data), and the loop in
:meth:`FinetuneRecipe.train` only steps, logs and checkpoints. The counters the loop keeps live in two small
objects with names of their own: :class:`DataProgress` (how far through the data this worker is, on top of
the position the run resumed from) and :class:`ThroughputWindow` (samples and tokens per second between
log lines). Everything about ranks and Ray Train goes through :mod:`rsvlm.train.distributed`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load as load_safetensors

from rsvlm.config import from_dict, to_dict
from rsvlm.config.job import JobConfig
from rsvlm.model.build import LoadedModel, load_model
from rsvlm.model.memory import enable_gradient_checkpointing, estimate_training_memory, trainable_parameter_report
from rsvlm.data.storage import Storage
from rsvlm.model.parts import trainable_parameter_counts
from rsvlm.strategies import build_strategy
from rsvlm.strategies.align import load_parts
from rsvlm.strategies.checkpoint import save_checkpoint
from rsvlm.tracking import NullRunLogger, RunLogger, make_logger
from rsvlm.train import distributed
from rsvlm.train.batches import TrainBatch, ValidationBatches, training_batches
from rsvlm.train.fully_masked import check_fully_masked, masked_before
from rsvlm.train.optim import build_optimizer, warmup_cosine
from rsvlm.train.precision import autocast_dtype, prepare_for_autocast
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


@dataclass
class RecipeArgs:
    """What the driver (``rsvlm.train.finetune``) passes every worker, as Ray Train's loop config."""

    job: JobConfig
    total_steps: int
    run_name: str
    """Names the Ray Train run, and its folder under ``train.storage_uri``."""
    mlflow_run_id: Optional[str] = None
    """The run the driver created; rank 0 logs into it, other ranks log nothing."""
    validate: bool = False
    """The trainer was given a ``val`` dataset."""
    init_weights_uri: Optional[str] = None
    """The stage-1 weights of ``model.init_from``, staged by the driver in the run's folder."""

    def to_loop_config(self) -> dict[str, Any]:
        """Plain values only: Ray ships the loop config to the workers."""
        return {"job": to_dict(self.job), "total_steps": self.total_steps, "run_name": self.run_name,
                "mlflow_run_id": self.mlflow_run_id, "validate": self.validate,
                "init_weights_uri": self.init_weights_uri}

    @classmethod
    def from_loop_config(cls, config: dict[str, Any]) -> "RecipeArgs":
        return cls(from_dict(config["job"]), config["total_steps"], config["run_name"], config.get("mlflow_run_id"),
                   bool(config.get("validate")), config.get("init_weights_uri"))


@dataclass
class DataProgress:
    """How far through the data this worker is, on top of ``start``, where the run stood when this attempt began.

    Counts are this worker's since the attempt began; :meth:`over_workers` sums them into the run's position.
    """

    start: DataPosition = field(default_factory=DataPosition)
    masked_before: int = 0  # fully masked samples of the run's earlier attempts (all workers)
    seen: int = 0
    masked: int = 0
    into_epoch: int = 0
    epoch: int = field(init=False)
    into_epoch_before: int = field(init=False)  # samples of the current epoch that earlier attempts consumed

    def __post_init__(self) -> None:
        self.epoch, self.into_epoch_before = self.start.epoch, self.start.samples_into_epoch

    def add(self, batch: TrainBatch) -> None:
        """Count a batch; one that starts a new pass over the shard starts the epoch's count afresh."""
        epoch = self.start.epoch + batch.epoch
        if epoch != self.epoch:
            self.epoch, self.into_epoch, self.into_epoch_before = epoch, 0, 0
        samples = batch.dropped + batch.rows
        self.masked += batch.dropped
        self.seen += samples
        self.into_epoch += samples

    def over_workers(self) -> tuple[DataPosition, int]:
        """The run's data position and its fully masked samples, summed over workers (a collective)."""
        seen, into_epoch, masked = distributed.sum_over_workers([self.seen, self.into_epoch, self.masked])
        position = DataPosition(epoch=self.epoch, samples_seen=self.start.samples_seen + int(seen),
                                samples_into_epoch=self.into_epoch_before + int(into_epoch))
        return position, self.masked_before + int(masked)


class ThroughputWindow:
    """Step metrics and samples per second between log lines, and the steady rate after the first window.

    The first window holds start-up (compilation, caches, prefetch), so the steady rate starts after it.
    """

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self.samples = 0
        self.started = time.perf_counter()
        self.steady_samples = 0
        self.steady_started: Optional[float] = None

    def add(self, step_metrics: dict[str, float], samples: int) -> None:
        self.steps.append(step_metrics)
        self.samples += samples
        if self.steady_started is not None:
            self.steady_samples += samples

    def summary(self) -> tuple[dict[str, float], int, int, float]:
        """This worker's mean step metrics, samples, tokens and seconds over the window."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        tokens = int(sum(m.pop("tokens") for m in self.steps))
        means = {key: sum(m[key] for m in self.steps) / len(self.steps) for key in sorted(self.steps[0])}
        return means, self.samples, tokens, elapsed

    def restart(self) -> None:
        self.steps, self.samples, self.started = [], 0, time.perf_counter()
        if self.steady_started is None:
            self.steady_started = time.perf_counter()

    def exclude(self, since: float) -> None:
        """Time spent since ``since`` (saving a checkpoint) is not training time: keep it out of the rates."""
        paused = time.perf_counter() - since
        self.started += paused
        if self.steady_started is not None:
            self.steady_started += paused

    def steady_samples_per_s(self, world_size: int, now: float) -> Optional[float]:
        if self.steady_started is None or not self.steady_samples:
            return None
        return self.steady_samples * world_size / (now - self.steady_started)


class FinetuneRecipe:
    """Train ``args.job`` for ``args.total_steps`` optimizer steps on this worker, checkpointing on the way.

    A restarted or re-run run resumes from Ray Train's latest checkpoint: weights, optimizer, schedule, RNG
    and data position.
    """

    def __init__(self, args: RecipeArgs):
        self.args, self.job = args, args.job
        self.context = distributed.worker_context(self.job.train.torch_threads)
        tracked = self.job.tracking.enabled and args.mlflow_run_id
        self.logger: RunLogger = (make_logger(self.job.tracking.uri, args.mlflow_run_id, self.context.is_rank_zero)
                                  if tracked else NullRunLogger())
        self.batches = None

    # -- setup -------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Model, strategy and precision; the state to resume from; optimizer, schedule and data."""
        self._setup_model()
        state = self._resume()
        self.resumed = state is not None
        self.start_step = state.step if state else 0
        self.progress = (ProgressLine(self.args.total_steps, self.start_step) if self.context.is_rank_zero
                         else NullProgress())
        self._announce(state)
        self.model = distributed.prepare_model(self.model, self.job.scaling.sharding)
        self._setup_optimizer(state)
        self._setup_data()

    def _setup_model(self) -> None:
        job = self.job
        # The same seed on every rank: adapters start identical (and reproducible); each rank gets its own
        # stream for dropout in _setup_optimizer.
        torch.manual_seed(job.train.seed)
        self.loaded: LoadedModel = load_model(job.model)
        # Stage-1 weights go in before the strategy wraps the model, and are saved with every checkpoint.
        self.init_weights = {}
        if self.args.init_weights_uri:
            self.init_weights = load_safetensors(Storage(job.storage).read_bytes(self.args.init_weights_uri))
            load_parts(self.loaded.model, self.init_weights, self.args.init_weights_uri)
        self.strategy = build_strategy(job.strategy)
        self.model = self.strategy.apply(self.loaded.model)
        self.precision = autocast_dtype(job.train.mixed_precision, self.context.device)
        if self.precision is not None:
            prepare_for_autocast(self.model)
        if job.train.gradient_checkpointing:
            enable_gradient_checkpointing(self.model)

    def _resume(self) -> Optional[TrainingState]:
        """The training state of the checkpoint this run resumes from (weights restored into the model)."""
        self.data = DataProgress()
        with distributed.resume_checkpoint_dir() as resume_from:
            if resume_from is None:
                return None
            self.strategy.restore(self.model, resume_from)
            state = load_training_state(resume_from)
            if state is None:
                raise RuntimeError(f"checkpoint {resume_from} has no training state to resume from")
            self.data = DataProgress(state.data, masked_before(resume_from))
            return state

    def _announce(self, state: Optional[TrainingState]) -> None:
        """What trains and the memory it needs (a new run), or where a resumed run picks up."""
        if state is not None:
            self.progress.message(f"resuming from step {state.step}/{self.args.total_steps} (epoch "
                                  f"{state.data.epoch}, {state.data.samples_seen} samples seen)")
            return
        counts = trainable_parameter_counts(self.model)
        memory = estimate_training_memory(self.model, micro_batch_size=self.job.train.micro_batch_size,
                                          seq_len=self.job.data.max_length,
                                          gradient_checkpointing=self.job.train.gradient_checkpointing)
        for line in trainable_parameter_report(self.model) + memory.lines():
            self.progress.message(line)
        self.logger.log_params({f"model.params.{part}.{kind}": n for part, c in counts.items()
                                for kind, n in c.items()} | {"memory.estimate_gib": round(memory.total_gib, 2)})

    def _setup_optimizer(self, state: Optional[TrainingState]) -> None:
        job, total_steps = self.job, self.args.total_steps
        self.optimizer = build_optimizer(self.model, job.optim)
        self.scheduler = warmup_cosine(self.optimizer, int(job.optim.warmup_ratio * total_steps), total_steps)
        if state is None:
            seed_worker(job.train.seed, self.context.rank)
            return
        distributed.load_optimizer_state(self.model, self.optimizer, state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        if len(state.rng) == self.context.world_size:
            restore_rng(state.rng[self.context.rank])
        else:  # a different worker count: the saved streams do not map onto ranks
            seed_worker(job.train.seed + state.step, self.context.rank)

    def _setup_data(self) -> None:
        device = distributed.worker_device()
        image_processor = self.loaded.processor.image_processor
        self.batches = training_batches(self.job, image_processor, device)
        self.validation_batches = (ValidationBatches(self.job, image_processor, device)
                                   if self.args.validate and self.job.train.val_batches > 0 else None)
        self.window = ThroughputWindow()
        self.metrics: dict[str, float] = {}  # the latest log window's, reported with each checkpoint

    # -- train -------------------------------------------------------------------------------------------------

    def train(self) -> None:
        """Step from where the run stands to ``total_steps``: log every ``train.log_every``, checkpoint on the way."""
        job, total_steps = self.job, self.args.total_steps
        self.logger.start_system_metrics(job.tracking.system_metrics_interval_s, resumed=self.resumed)
        for step in range(self.start_step + 1, total_steps + 1):
            self._step()
            if step % job.train.log_every == 0 or step == total_steps:
                self._log(step)
            if step == total_steps or (job.train.checkpoint_every and step % job.train.checkpoint_every == 0):
                paused = time.perf_counter()
                extra = {}
                steady = self.window.steady_samples_per_s(self.context.world_size, paused)
                if step == total_steps and steady is not None:
                    extra["steady_samples_per_s"] = steady  # for bench/train_overhead.py
                report = self.checkpoint(step, extra)
                self.progress.message(f"checkpoint at step {step}" + (f": val/loss {report['val/loss']:.4g}"
                                                                      if "val/loss" in report else ""))
                self.window.exclude(paused)

    def _step(self) -> None:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches."""
        micro_batches = []
        for _ in range(self.job.gradient_accumulation_steps):
            batch = next(self.batches)
            self.data.add(batch)
            micro_batches.append((batch.inputs, batch.tasks))
        check_fully_masked(self.data.masked, self.data.seen, self.job)  # this worker's: no collective per step
        metrics = train_step(self.model, micro_batches, self.optimizer, self.scheduler, self.job.optim.max_grad_norm,
                             self.strategy.aux_loss, self.strategy.set_batch_tasks, self.precision,
                             lambda enabled: distributed.gradient_sync(self.model, enabled))
        self.window.add(metrics, sum(inputs["input_ids"].shape[0] for inputs, _ in micro_batches))

    def _log(self, step: int) -> None:
        """The window's metrics: losses averaged over workers (each saw other rows), samples and tokens summed."""
        means, samples, tokens, elapsed = self.window.summary()
        keys = list(means)
        *sums, all_samples, all_tokens, all_masked = distributed.sum_over_workers(
            [means[key] for key in keys] + [samples, tokens, self.data.masked])
        world_size = self.context.world_size
        metrics = {f"train/{key}": total / world_size for key, total in zip(keys, sums)}
        metrics["train/samples_per_s"] = all_samples / elapsed
        metrics["train/tokens_per_s"] = all_tokens / elapsed
        metrics["train/epoch"] = float(self.data.epoch)
        metrics["train/fully_masked_samples"] = float(self.data.masked_before + all_masked)
        self.metrics = metrics
        self.logger.log_metrics(metrics, step)
        self.progress.update(step, {"loss": metrics["train/loss"], "samples/s": metrics["train/samples_per_s"]})
        self.window.restart()

    # -- checkpoint --------------------------------------------------------------------------------------------

    def checkpoint(self, step: int, extra: Optional[dict[str, float]] = None) -> dict[str, float]:
        """Save a resumable checkpoint at ``step`` and report it; every rank takes part (collectives)."""
        state_dict = distributed.full_state_dict(self.model)
        optimizer_state = distributed.optimizer_state(self.model, self.optimizer)
        rng = distributed.gather_objects(rng_state())
        position, run_masked = self.data.over_workers()
        # Every rank has the same sums, so every rank raises alike, before anything is saved or reported.
        check_fully_masked(run_masked, position.samples_seen, self.job, final=step == self.args.total_steps)
        report = {"step": step, "epoch": self.data.epoch, "samples_seen": position.samples_seen,
                  "world_size": self.context.world_size, "sharded": state_dict is not None,
                  "resumed_from_step": self.start_step, "fully_masked_samples": run_masked, **self.metrics,
                  **(extra or {})}
        report |= self._validate(step)
        name = f"checkpoint_step{step:07d}"
        with distributed.checkpoint_staging_dir(self.job, self.args.run_name, name) as directory:
            written = None
            if self.context.is_rank_zero:
                self._save(directory, report, state_dict,
                           TrainingState(step, optimizer_state, self.scheduler.state_dict(), rng, position))
                written = directory
            distributed.report(report, written, name)
        return report

    def _validate(self, step: int) -> dict[str, float]:
        if self.validation_batches is None:
            return {}
        loss_sum, tokens = validation_loss(distributed.unwrap(self.model), self.validation_batches, self.precision,
                                           self.strategy.set_batch_tasks)
        if not tokens:
            return {}
        self.logger.log_metrics({"val/loss": loss_sum / tokens}, step)
        return {"val/loss": loss_sum / tokens}

    def _save(self, directory: Path, report: dict[str, Any], state_dict: Optional[dict],
              state: TrainingState) -> None:
        save_checkpoint(directory, distributed.unwrap(self.model), self.loaded.processor, self.job, report, state_dict,
                        self.init_weights)
        save_training_state(directory, state)

    # -- cleanup -----------------------------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Stop the system-metrics sampler and the data stream, which this loop may leave mid-epoch.

        In local mode the stream's executor runs in this process and would otherwise still be touching Ray
        when the driver shuts Ray down.
        """
        self.logger.stop_system_metrics()
        if self.batches is not None:
            self.batches.close()
