"""The life of a job's run, in one place: its name, its record beside the checkpoints, its MLflow run from open to
finish (or failure), and the registration of what it trained.

Finetune, sweep and evaluate all go through :func:`tracked_run`::

    with tracked_run(job.tracking, name, record.mlflow_run_id, params=..., tags=...) as run:
        ...                      # an exception ends the MLflow run FAILED and goes on up
        run.end("KILLED")        # or end it explicitly; otherwise it ends FINISHED

A record (:class:`RunRecord`, :class:`SweepRecord`) is a small JSON file in the run's storage folder: which
MLflow run the job logs into and how often it was started, so starting the same name again reopens the same
MLflow run instead of creating another.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Mapping, Optional

from rsvlm.config.tracking import TrackingConfig
from rsvlm.data.storage import Storage
from rsvlm.tracking.logger import RunLogger, is_transient_tracking_error, make_logger
from rsvlm.tracking.params import mask_url_credentials
from rsvlm.tracking.logged_models import log_checkpoint_model
from rsvlm.tracking.registry import register_logged_model
from rsvlm.tracking.runs import best_effort, finish_run, open_run

log = logging.getLogger(__name__)

RUN_RECORD = "rsvlm_run.json"
SWEEP_RECORD = "rsvlm_sweep.json"


def default_run_name(prefix: str) -> str:
    """``<prefix>-<time>-<random>``: unique even for runs started in the same second (a Hydra multirun)."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


# -- records beside the checkpoints -----------------------------------------------------------------------------


@dataclass
class RunRecord:
    """What the driver keeps beside a training run's checkpoints (``<storage_uri>/<run name>/rsvlm_run.json``)."""

    mlflow_run_id: Optional[str] = None
    starts: int = 0  # how many times the driver started this run
    finished: bool = False
    checkpoint_uri: Optional[str] = None  # the final checkpoint, once finished


@dataclass
class SweepRecord:
    """What the sweep driver keeps beside Tune's experiment state (``rsvlm_sweep.json``)."""

    parent_run_id: Optional[str] = None
    starts: int = 0
    finished: bool = False


def read_record(storage: Storage, uri: str, record_type: type = RunRecord) -> Any:
    """The ``record_type`` (a dataclass) stored as JSON at ``uri``; an empty one when there is none yet."""
    if not storage.exists(uri):
        return record_type()
    try:
        return record_type(**json.loads(storage.read_text(uri)))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{uri}: not a {record_type.__name__} ({exc}); move it away to start afresh") from exc


def write_record(storage: Storage, uri: str, record: Any) -> None:
    storage.write_text(uri, json.dumps(asdict(record)) + "\n")


# -- the MLflow run ---------------------------------------------------------------------------------------------


@dataclass
class TrackedRun:
    """The MLflow run a job logs into; ``run_id`` None: the job runs untracked (tracking off or unreachable)."""

    run_id: Optional[str]
    tracking_uri: str
    status: Optional[str] = None  # how it was ended, once it was

    def logger(self) -> RunLogger:
        """A logger into this run (a null logger when untracked)."""
        return make_logger(self.tracking_uri, self.run_id, True)

    def end(self, status: str) -> None:
        """End the run with ``status`` (FINISHED, FAILED, KILLED); a tracking failure is only a warning."""
        if self.run_id and self.status is None:
            best_effort(lambda: finish_run(self.tracking_uri, self.run_id, status))
        self.status = status


@contextmanager
def tracked_run(tracking: TrackingConfig, run_name: str, previous_run_id: Optional[str] = None, *,
                params: Mapping[str, Any], tags: Optional[Mapping[str, Any]] = None,
                parent_run_id: Optional[str] = None, untracked: Optional[str] = None) -> Iterator[TrackedRun]:
    """Open the job's MLflow run (``previous_run_id`` reopened, else a new one with ``params`` and ``tags``);
    end it FAILED when the block raises, FINISHED when it returns without ending it itself.

    ``untracked`` says what an unreachable server means for this job, which then goes on untracked; None
    makes it an error (a job whose result is only its record in MLflow).
    """
    run_id = open_run(tracking, run_name, previous_run_id, params=params, tags=tags, parent_run_id=parent_run_id,
                      untracked=untracked)
    run = TrackedRun(run_id, tracking.uri)
    try:
        yield run
    except BaseException:
        run.end("FAILED")
        raise
    run.end("FINISHED")


# -- registering what a run trained -----------------------------------------------------------------------------


def register_checkpoint(tracking: TrackingConfig, storage: Storage, model_name: str, run_id: str,
                        checkpoint_uri: str, params: Mapping[str, str]) -> Optional[str]:
    """Log a checkpoint as a logged model of its training run (with ``params``) and register it as
    ``model_name`` at ``tracking.alias``.

    Returns the new version, or None when MLflow cannot be reached (a warning says where the checkpoint is).
    """
    try:
        with storage.local_folder(checkpoint_uri) as directory:
            model_id = log_checkpoint_model(tracking.uri, run_id, model_name, directory, params)
        return register_logged_model(tracking.uri, model_name, model_id, run_id, alias=tracking.alias)
    except Exception as exc:  # noqa: BLE001 - classified: caller errors are re-raised
        if not is_transient_tracking_error(exc):
            raise
        log.warning("MLflow tracking at %s failed while registering the model (%s: %s); the checkpoint is at %s.",
                    mask_url_credentials(tracking.uri), type(exc).__name__, mask_url_credentials(str(exc)),
                    checkpoint_uri)
        return None
