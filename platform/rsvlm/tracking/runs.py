"""Experiments and runs: created and finished on the driver, with explicit ids (no active-run state).

Experiments are always created with an explicit artifact location. Left to MLflow, a sqlite tracking URI
puts artifacts in ``./mlartifacts`` relative to whatever the current directory of the creating process
happens to be; we want them beside the database (or in the configured bucket) for every process.

A job that opens a run (:func:`open_run`) first probes an ``http(s)://`` tracking server with one request of
:data:`PROBE_TIMEOUT_S` and no retries (:func:`probe_tracking_server`), so a server that is not there is
reported in seconds, once, instead of after the client's retries of every call. Database URIs are not probed.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Callable, Mapping

from mlflow.entities import LifecycleStage
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient

from rsvlm.config.tracking import TrackingConfig
from rsvlm.tracking.logger import is_transient_tracking_error, make_logger
from rsvlm.tracking.params import MAX_TAG_VALUE_LENGTH, flatten_config, mask_url_credentials

log = logging.getLogger(__name__)

PARENT_RUN_TAG = "mlflow.parentRunId"
# A run's description in the MLflow UI.
DESCRIPTION_TAG = "mlflow.note.content"
# MLflow 3's UI opens an experiment of this kind on its training runs (untagged ones open on the GenAI overview).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# How long the start-up probe of a tracking server waits to connect, and then for its answer.
PROBE_TIMEOUT_S = 5.0
_FINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
# ``s3://``, ``file:``, ``mlflow-artifacts:`` ...; at least two letters so ``C:\\`` stays a local path.
_URI_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+:")


def normalize_artifact_location(artifact_location: str | None) -> str | None:
    """An absolute ``file://`` URI for a local path; any URI (``s3://``, ``file:``...) unchanged; empty -> None.

    None lets a tracking server choose (its ``--default-artifact-root``).
    """
    if not artifact_location:
        return None
    if _URI_SCHEME_RE.match(artifact_location):
        return artifact_location
    return Path(artifact_location).expanduser().resolve().as_uri()


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The id of experiment ``name``, created with ``artifact_location`` if missing (restored if deleted)."""
    location = normalize_artifact_location(artifact_location)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=location,
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException as exc:
            # Another job created it between our lookup and create: use theirs.
            if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == LifecycleStage.DELETED:
        # A deleted experiment still owns its name; creating another would fail, so bring it back.
        client.restore_experiment(experiment.experiment_id)
    if location is not None and experiment.artifact_location.rstrip("/") != location.rstrip("/"):
        # An experiment's artifact location is fixed at creation; say so instead of silently ignoring config.
        log.warning(
            "Experiment %r already exists with artifact location %s (configured: %s); using the existing one.",
            name, experiment.artifact_location, location,
        )
    return experiment.experiment_id


def experiment_ui_url(tracking: TrackingConfig, server_url: str, tab: str = "runs") -> str:
    """The MLflow UI page of ``tracking.experiment`` (its ``runs`` or ``models`` tab) on ``server_url``.

    MLflow 3.17's UI picks its GenAI or model-training navigation from the URL's ``workflowType`` (else what
    the browser last chose, else GenAI), not from the experiment's kind tag: the link carries it.
    """
    client = MlflowClient(tracking_uri=tracking.uri, registry_uri=tracking.uri)
    experiment = client.get_experiment_by_name(tracking.experiment)
    page = f"experiments/{experiment.experiment_id}/{tab}" if experiment else "experiments"
    return f"{server_url.rstrip('/')}/#/{page}?workflowType=machine_learning"


def create_run(
    tracking: TrackingConfig,
    run_name: str,
    tags: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Create a run in ``tracking.experiment`` and return its id.

    Its tags are ``tracking.tags`` and ``tags`` (masked), plus ``mlflow.parentRunId`` when nested (a sweep's
    trial under the sweep's run).
    """
    if not tracking.enabled:
        raise ValueError("tracking.enabled is false: check it before creating an MLflow run")
    client = MlflowClient(tracking_uri=tracking.uri, registry_uri=tracking.uri)
    experiment_id = ensure_experiment(client, tracking.experiment, tracking.artifact_location)
    run_tags = flatten_config({**tracking.tags, **(tags or {})}, max_length=MAX_TAG_VALUE_LENGTH)
    if parent_run_id:
        run_tags[PARENT_RUN_TAG] = parent_run_id
    run = client.create_run(experiment_id, tags=run_tags, run_name=run_name)
    return run.info.run_id


def reopen_run(tracking_uri: str, run_id: str) -> None:
    """Mark an earlier run RUNNING again: a resumed training run appends to it instead of starting another."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    client.update_run(run_id, status="RUNNING")


def finish_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Mark a run terminated with ``status`` (FINISHED, FAILED or KILLED) and set its end time."""
    if status not in _FINAL_STATUSES:
        raise ValueError(f"status must be one of {_FINAL_STATUSES}, got {status!r}")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    client.set_terminated(run_id, status=status)


def best_effort(action: Callable[[], Any]) -> None:
    """Run a tracking call whose failure must neither hide an error being raised nor undo finished work
    (a training run, a sweep): a failure is logged as a warning, credentials masked."""
    try:
        action()
    except Exception as exc:  # noqa: BLE001
        log.warning("could not update MLflow: %s", mask_url_credentials(str(exc)))


def probe_tracking_server(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise an MlflowException at once when the ``http(s)://`` tracking server ``uri`` does not answer.

    One ``GET <uri>/health`` with MLflow's own credentials and TLS settings, ``timeout_s`` to connect and as
    much for the answer, no retries. Any HTTP answer counts (a 401, a 404 behind a proxy): the server is
    there, and the real calls will say what else is wrong. Other URIs (sqlite, a folder) are not probed.
    """
    if not uri.lower().startswith(("http://", "https://")):
        return
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    http_request(get_default_host_creds(uri), "/health", "GET", max_retries=0, backoff_factor=0,
                 timeout=(timeout_s, timeout_s), raise_on_status=False)


def open_run(tracking: TrackingConfig, run_name: str, previous_run_id: str | None, *, params: Mapping[str, Any],
             tags: Mapping[str, Any] | None = None, parent_run_id: str | None = None,
             untracked: str | None = "the job goes on untracked") -> str | None:
    """The run a (possibly restarted) job logs into: ``previous_run_id`` reopened, else a new run with ``params``.

    None when tracking is off, or when the server cannot be reached (:func:`probe_tracking_server`, or a
    failure of the calls after it): that is said once, with ``untracked`` telling what it means for this job,
    and the job goes on; with ``untracked`` None it is raised. Mistakes of the caller are raised.
    """
    if not tracking.enabled:
        return None
    try:
        probe_tracking_server(tracking.uri)
        if previous_run_id:
            reopen_run(tracking.uri, previous_run_id)
            return previous_run_id
        run_id = create_run(tracking, run_name, tags=tags, parent_run_id=parent_run_id)
        make_logger(tracking.uri, run_id, True).log_params(params)
        return run_id
    except Exception as exc:  # noqa: BLE001 - classified: caller errors are re-raised
        if untracked is None or not is_transient_tracking_error(exc):
            raise
        log.warning("MLflow tracking at %s is unreachable (%s: %s). %s.", mask_url_credentials(tracking.uri),
                    type(exc).__name__, mask_url_credentials(str(exc)), untracked)
        return None
