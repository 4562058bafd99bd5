"""The sweep driver: a Ray Tune experiment whose trials are Ray Train fine-tuning runs, tracked in MLflow.

Each trial is a Tune function that runs :func:`rsvlm.train.finetune.run_finetune` with the trial's values:
it builds and fits a ``TorchTrainer`` whose ``TuneReportCallback`` passes every checkpoint's metrics on to
Tune (Ray Train V2's pattern; ``Tuner(trainer)`` is deprecated). So a trial is exactly a finetune run: the
same params, metrics, checkpoints and resume, logged as a child of the sweep's MLflow run.

In storage, ``sweep.storage_uri/<name>/`` is Tune's experiment folder plus ``rsvlm_sweep.json`` (the parent
run and how often the sweep was started) and the results table; each trial's Ray Train run is
``train.storage_uri/<name>-<trial id>/``. Running the same ``sweep.name`` again restores Tune's experiment,
and each unfinished trial resumes its Ray Train run from its latest checkpoint, in the same MLflow run.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator

from rsvlm.config import to_dict
from rsvlm.config.errors import ConfigError
from rsvlm.config.job import JobConfig
from rsvlm.config.sweep import SearchAlgorithm, TrialScheduler
from rsvlm.data.prepare import prepared_manifest
from rsvlm.data.storage import Storage, is_remote
from rsvlm.errors import DEBUG_ENV, JobError
from rsvlm.ray_session import ensure_ray
from rsvlm.tracking import best_effort, flatten_config, make_logger, mask_url_credentials
from rsvlm.tracking.logged_models import model_params
from rsvlm.tracking.lifecycle import (
    SWEEP_RECORD,
    SweepRecord,
    TrackedRun,
    default_run_name,
    read_record,
    register_checkpoint,
    tracked_run,
    write_record,
)
from rsvlm.train import distributed, run_lock
from rsvlm.train.finetune import run_finetune, run_record_uri, total_training_steps
from rsvlm.tune.results import (
    COMPLETED,
    FAILED,
    STOPPED_EARLY,
    TrialOutcome,
    best_trial,
    summary_lines,
    table_rows,
    write_plot,
    write_table,
)
from rsvlm.tune.space import (
    flat_values,
    max_concurrent_trials,
    nested_values,
    search_space,
    trial_count,
    trial_job,
    trial_resources,
    validate_space,
)

log = logging.getLogger(__name__)

PLOT_NAME = "sweep_plot.png"
# Where the parent run keeps the results table and plot.
RESULTS_ARTIFACT = "sweep"


@dataclass
class SweepResult:
    name: str
    parent_run_id: Optional[str]
    trials: list[TrialOutcome] = field(default_factory=list)
    best: Optional[TrialOutcome] = None
    registered_model: Optional[str] = None
    version: Optional[str] = None
    results_uri: Optional[str] = None  # the results table (CSV) in storage


class SweepFinishedError(JobError):
    """The named sweep already finished; running it again would only repeat its registration."""


class SweepInterruptedError(RuntimeError):
    """The sweep stopped before every trial ended (Ctrl-C, SIGUSR1); the same sweep.name resumes it."""


def check_sweep(job: JobConfig) -> None:
    """Refuse, on the driver and before anything starts, a sweep that could not do what it says."""
    validate_space(job)
    sweep = job.sweep
    if job.scaling.num_workers == 0:
        raise ConfigError("scaling.num_workers", "a sweep's trials are Ray Train runs with workers (local mode "
                          "cannot report to Tune or resume); pick scaling=cpu1 or more", ["cpu1", "cpu2", "gpu1"])
    if sweep.metric == distributed.VALIDATION_METRIC and (job.data.val_fraction == 0 or job.train.val_batches == 0):
        raise ConfigError("sweep.metric", "val/loss needs validation: data.val_fraction and train.val_batches > 0")
    if sweep.scheduler is TrialScheduler.asha and job.train.checkpoint_every == 0:
        raise ConfigError("train.checkpoint_every", "ASHA compares trials at their reports, which come with "
                          "checkpoints: set it > 0 (and below train.max_steps)")


def run_sweep(job: JobConfig) -> SweepResult:
    """Run (or resume) the sweep ``job.sweep``; register its best trial at ``tracking.alias``.

    Another job running the same ``sweep.name`` at the same time is refused before anything starts
    (``rsvlm.train.run_lock``; each trial's run takes its own lock too).
    """
    check_sweep(job)
    storage = Storage(job.storage)
    name = job.sweep.name or default_run_name("sweep")
    with run_lock.hold(storage, storage.join(job.sweep.storage_uri, name), "sweep.name", name):
        return _run_sweep_locked(job, storage, name)


def _run_sweep_locked(job: JobConfig, storage: Storage, name: str) -> SweepResult:
    """``run_sweep`` once the sweep's lock is held."""
    experiment_uri = storage.join(job.sweep.storage_uri, name)
    record_uri = storage.join(experiment_uri, SWEEP_RECORD)
    record = read_record(storage, record_uri, SweepRecord)
    if record.finished:
        raise SweepFinishedError(f"sweep.name={name}", f"the sweep already finished ({record_uri})",
                                 "choose a new sweep.name")
    started_ray = ensure_ray(job.ray_address)
    distributed.check_resources(job.scaling, 0 if started_ray else job.scaling.resource_wait_s)
    manifest = prepared_manifest(job.data, storage)

    trials = trial_count(job.sweep)
    concurrent = max_concurrent_trials(ray.cluster_resources(), job, trials)
    print(f"sweep {name}: {trials} trial(s), {concurrent} at a time, each {trial_resources(job)}; "
          f"{job.sweep.search.value} search, {job.sweep.scheduler.value} scheduler on {job.sweep.metric} "
          f"({job.sweep.mode.value})" + (f"; resuming (start {record.starts + 1})" if record.starts else ""))
    with tracked_run(job.tracking, name, record.parent_run_id, params=flatten_config(to_dict(job)),
                     tags={"rsvlm.job": "sweep", "rsvlm.sweep": name},
                     untracked="The sweep goes on untracked and registers nothing") as parent:
        record = SweepRecord(parent.run_id or record.parent_run_id, record.starts + 1)
        write_record(storage, record_uri, record)
        tuner = _tuner(job, name, experiment_uri, parent.run_id, concurrent, total_training_steps(job, manifest))
        grid = tuner.fit()
        unfinished = _unfinished_trials(job, experiment_uri, trials)
        if unfinished:
            parent.end("KILLED")
            raise SweepInterruptedError(f"sweep {name!r} stopped with {unfinished} of {trials} trial(s) unfinished; "
                                        f"run it again with sweep.name={name} to resume them")
        result = _sweep_result(job, name, storage, manifest, grid, parent.run_id)
        result.results_uri = _write_results(job, storage, experiment_uri, result)
    write_record(storage, record_uri, SweepRecord(record.parent_run_id, record.starts, True))
    for line in summary_lines(result.trials, job.sweep.metric, result.best):
        print(line)
    return result


def _sweep_result(job: JobConfig, name: str, storage: Storage, manifest: dict[str, Any], grid,
                  parent_run_id: Optional[str]) -> SweepResult:
    """How every trial ended, with the best one registered at ``tracking.alias``."""
    base = to_dict(job)
    outcomes = [_outcome(job, base, name, storage, manifest, trial) for trial in grid]
    _close_trial_runs(job, outcomes)
    best = best_trial(outcomes, job.sweep.mode)
    result = SweepResult(name, parent_run_id, outcomes, best)
    if best is not None and best.run_id and best.checkpoint_uri:
        best_job = trial_job(base, nested_values(best.values), best.run_name)
        result.version = register_checkpoint(best_job.tracking, storage, best_job.registered_model_name,
                                             best.run_id, best.checkpoint_uri,
                                             model_params(best_job, manifest.get("fingerprint")))
        result.registered_model = best_job.registered_model_name if result.version else None
    return result


def _tuner(job: JobConfig, name: str, experiment_uri: str, parent_run_id: Optional[str], concurrent: int,
           total_steps: int) -> tune.Tuner:
    """A new Tuner, or the one of an interrupted sweep of the same name restored from storage."""
    filesystem, experiment_path = Storage(job.storage).filesystem(experiment_uri)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=to_dict(job), sweep_name=name, parent_run_id=parent_run_id),
        {"CPU": job.sweep.trial_cpus})
    if tune.Tuner.can_restore(experiment_path, storage_filesystem=filesystem):
        # Errored trials are resumed too: a sweep is usually started again after fixing what failed them.
        return tune.Tuner.restore(experiment_path, trainable, resume_unfinished=True, resume_errored=True,
                                  storage_filesystem=filesystem)
    sweep = job.sweep
    if sweep.search is SearchAlgorithm.optuna:
        from ray.tune.search.optuna import OptunaSearch

        search_alg, searcher_limit = OptunaSearch(seed=sweep.seed), concurrent
    else:
        # Tune's max_concurrent_trials applies to searchers only; the variant generator takes its own.
        search_alg, searcher_limit = BasicVariantGenerator(random_state=sweep.seed, max_concurrent=concurrent), None
    if sweep.scheduler is TrialScheduler.asha:
        # Trials report at checkpoints; "step" (optimizer steps) is the time ASHA's rungs are counted in.
        scheduler = ASHAScheduler(time_attr="step", max_t=total_steps,
                                  grace_period=sweep.grace_period or job.train.checkpoint_every,
                                  reduction_factor=sweep.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    _, storage_path = Storage(job.storage).filesystem(job.sweep.storage_uri)
    return tune.Tuner(
        trainable,
        param_space=search_space(sweep),
        tune_config=tune.TuneConfig(metric=sweep.metric, mode=sweep.mode.value, search_alg=search_alg,
                                    scheduler=scheduler, num_samples=sweep.num_samples,
                                    max_concurrent_trials=searcher_limit, trial_dirname_creator=trial_dirname,
                                    trial_name_creator=trial_dirname),
        # Tune's own output (a table of every trial every 30 s, and each trial's config and results) is off:
        # the sweep prints its plan and results table, the trials their progress lines; a failed trial is
        # still reported. RSVLM_DEBUG=1 brings Tune's output back.
        run_config=tune.RunConfig(name=name, storage_path=storage_path, storage_filesystem=filesystem,
                                  failure_config=tune.FailureConfig(max_failures=sweep.max_trial_failures),
                                  verbose=None if os.environ.get(DEBUG_ENV) else 0),
    )


def _unfinished_trials(job: JobConfig, experiment_uri: str, expected: int) -> int:
    """Trials of the sweep that did not end, as Tune saved them.

    The state Tune saves is what tells: on Ctrl-C it saves the running trials as such (restore resumes them),
    then stops them, after which the in-memory results show them as ended. Trials not yet created when it
    stopped are not in the state at all.
    """
    filesystem, path = Storage(job.storage).filesystem(experiment_uri)
    saved = tune.ExperimentAnalysis(path, storage_filesystem=filesystem)
    ended = sum(trial.status in ("TERMINATED", "ERROR") for trial in saved.trials)
    return max(expected - ended, 0)


def trial_dirname(trial) -> str:
    """A trial's folder (and name) is its id, so the driver finds its Ray Train run from the Tune result."""
    return trial.trial_id


def trial_run_name(sweep_name: str, trial_id: str) -> str:
    return f"{sweep_name}-{trial_id}"


def run_trial(config: dict[str, Any], base: dict[str, Any], sweep_name: str, parent_run_id: Optional[str]) -> None:
    """One trial (a Tune function): fine-tune with the trial's values; metrics reach Tune at every checkpoint."""
    trial_id = tune.get_context().get_trial_id()
    job = trial_job(base, config, trial_run_name(sweep_name, trial_id))
    run_finetune(job, register=False, parent_run_id=parent_run_id, callbacks=[TuneReportCallback()],
                 tags={"rsvlm.sweep": sweep_name, "rsvlm.trial_id": trial_id})


def _outcome(job: JobConfig, base: dict[str, Any], sweep_name: str, storage: Storage, manifest: dict[str, Any],
             result) -> TrialOutcome:
    """How one trial ended, from its Tune result and its run record."""
    trial_id = Path(result.path).name
    run_name = trial_run_name(sweep_name, trial_id)
    trial = trial_job(base, result.config, run_name)
    record_uri = run_record_uri(trial, storage, run_name)
    record = read_record(storage, record_uri)
    metrics = result.metrics or {}
    if result.error is not None:
        status = FAILED
    elif record.finished or metrics.get("step", 0) >= total_training_steps(trial, manifest):
        # ASHA stops a trial at max_t, and may stop one at a rung that is also its last step: Tune then ends
        # the trial's process at its final report, before the trial could record that it finished.
        status = COMPLETED
    else:  # stopped by the scheduler before its last step
        status = STOPPED_EARLY
    checkpoint_uri = record.checkpoint_uri
    if checkpoint_uri is None and metrics.get("checkpoint_path"):
        path = metrics["checkpoint_path"]
        checkpoint_uri = "s3://" + path if is_remote(trial.train.storage_uri) else path
    value = metrics.get(job.sweep.metric)
    error = None
    if result.error is not None:
        error = mask_url_credentials(str(result.error).strip().splitlines()[-1])[:500]
    if status == COMPLETED and not record.finished:
        # The trial's process was ended before it could say so itself: a re-run must not resume it.
        write_record(storage, record_uri, replace(record, finished=True, checkpoint_uri=checkpoint_uri))
    return TrialOutcome(trial_id, run_name, status, flat_values(result.config),
                        float(value) if value is not None else None,
                        int(metrics["step"]) if metrics.get("step") is not None else None,
                        record.mlflow_run_id, checkpoint_uri, error)


def _close_trial_runs(job: JobConfig, outcomes: list[TrialOutcome]) -> None:
    """Mark each trial's MLflow run with how it ended (a trial the scheduler stopped had its process ended,
    which left the run RUNNING)."""
    for outcome in outcomes:
        if outcome.run_id:
            run = TrackedRun(outcome.run_id, job.tracking.uri)
            run.end({COMPLETED: "FINISHED", STOPPED_EARLY: "KILLED", FAILED: "FAILED"}[outcome.status])
            best_effort(lambda: run.logger().set_tags({"rsvlm.sweep.status": outcome.status}))


def _write_results(job: JobConfig, storage: Storage, experiment_uri: str, result: SweepResult) -> str:
    """The results table and plot: into the sweep's storage folder and onto the parent run."""
    metric = job.sweep.metric
    with tempfile.TemporaryDirectory(prefix="rsvlm-sweep-") as scratch:
        folder = Path(scratch)
        files = write_table(table_rows(result.trials, metric), folder)
        plot = write_plot(result.trials, metric, folder / PLOT_NAME)
        files += [plot] if plot else []
        for path in files:
            storage.write_bytes(storage.join(experiment_uri, path.name), path.read_bytes())
        if result.parent_run_id:
            best = result.best
            tags = {"rsvlm.sweep.trials": str(len(result.trials)),
                    "rsvlm.sweep.completed": str(sum(o.status == COMPLETED for o in result.trials))}
            if best is not None:
                tags |= {"rsvlm.sweep.best_trial": best.trial_id, "rsvlm.sweep.best_run_id": best.run_id or "",
                         **{f"rsvlm.sweep.best.{key}": str(value) for key, value in best.values.items()}}
            if result.version:
                tags |= {"rsvlm.registered_model": result.registered_model or "",
                         "rsvlm.registered_version": result.version}

            def log_results() -> None:
                logger = make_logger(job.tracking.uri, result.parent_run_id, True)
                logger.log_artifacts(scratch, RESULTS_ARTIFACT)
                logger.set_tags(tags)
                if best is not None and best.metric is not None:
                    logger.log_metrics({f"best/{metric}": best.metric}, 0)

            best_effort(log_results)
    return storage.join(experiment_uri, "sweep_results.csv")

