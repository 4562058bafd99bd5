"""Run loggers: what training code calls to record params, metrics, tags and artifacts.

The MLflow run is created on the driver (``rsvlm.tracking.runs.create_run``) and only its id travels to the
Ray Train workers. Each worker calls ``make_logger(uri, run_id, is_rank_zero=...)``: rank 0 gets an
``MlflowRunLogger``, every other rank a ``NullRunLogger`` with the same interface, so training code logs
unconditionally instead of scattering ``if rank == 0`` around.

``MlflowRunLogger`` talks to MLflow through ``MlflowClient`` with explicit run ids only; it never uses the
fluent API (``mlflow.start_run`` / ``mlflow.log_metric``), whose active-run state is process-global.

Outages: a tracking server that stops answering must not kill a multi-hour training job, so
``log_metrics`` and ``log_params`` catch transport/server errors, warn ONCE, and DROP what they were given
(it is not buffered or replayed later). They then retry at most every ``retry_interval_s`` seconds (each
try can block for the HTTP timeout and retries, so trying on every step would stall training); the first
call that succeeds again ends the outage and logs how many batches were lost. System metrics stop at the
first failure. Errors that are the caller's fault (invalid metric name, unknown run id) still raise. Tags
and artifacts are not covered: the driver logs them at the start or end of a job and decides there.

How long one call can block: MLflow's HTTP client retries a failed request 7 times with exponential backoff
(about 4 minutes against a closed port) and waits 120 s for each answer. Importing this module (which every
process that tracks does: the driver, and the Ray Train workers through the training loop) bounds that with
:data:`HTTP_DEFAULTS` (2 retries, backoff factor 1, 30 s timeout: a few seconds against a refused connection,
about 1.5 minutes at worst against a silent host) for each variable the user has not set. It is done at import
rather than when a logger is made because MLflow reads them at every request, and a local Ray started by the
driver afterwards passes the driver's environment on to its workers.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    INVALID_STATE,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)
from mlflow.tracking import MlflowClient

from rsvlm.tracking.params import MAX_TAG_VALUE_LENGTH, flatten_config, mask_url_credentials, redact

log = logging.getLogger(__name__)

# What MLflow's HTTP client may spend on one request, unless the user set otherwise (see the module docstring).
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def bound_http_retries(environ=os.environ) -> dict[str, str]:
    """Set each of :data:`HTTP_DEFAULTS` the user left unset (or empty) in ``environ``; returns those set."""
    applied = {name: value for name, value in HTTP_DEFAULTS.items() if not environ.get(name)}
    environ.update(applied)
    return applied


bound_http_retries()

# MLflow's per-request limits for log_batch (mlflow.utils.validation).
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAMS_TAGS_PER_BATCH = 100

# Errors that mean the request itself is wrong; retrying or dropping would only hide a bug.
_CALLER_ERROR_CODES = frozenset(
    ErrorCode.Name(code) for code in (INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, INVALID_STATE)
)


@runtime_checkable
class RunLogger(Protocol):
    """What training and evaluation code log through; one implementation per rank role."""

    run_id: str | None

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None: ...

    def log_dict(self, obj: Any, artifact_file: str) -> None: ...

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...

    def start_system_metrics(self, interval_s: float, resumed: bool) -> None: ...

    def stop_system_metrics(self) -> None: ...


class NullRunLogger:
    """A logger that records nothing: for non-zero ranks and for jobs with tracking disabled."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Do nothing."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Do nothing."""

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        """Do nothing."""

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        """Do nothing."""

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Do nothing."""

    def start_system_metrics(self, interval_s: float, resumed: bool) -> None:
        """Do nothing."""

    def stop_system_metrics(self) -> None:
        """Do nothing."""


def is_transient_tracking_error(exc: Exception) -> bool:
    """True for errors worth surviving (server down, timeout, 5xx, DB busy); False for caller bugs."""
    if isinstance(exc, MlflowException):
        return exc.error_code not in _CALLER_ERROR_CODES
    # requests' ConnectionError/Timeout derive from OSError; MLflow usually wraps them, but not always.
    return isinstance(exc, OSError)


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class MlflowRunLogger:
    """Logs to one existing MLflow run through ``MlflowClient`` (no fluent API, no global state)."""

    def __init__(self, tracking_uri: str, run_id: str, retry_interval_s: float = 30.0) -> None:
        self.tracking_uri = tracking_uri
        self.run_id: str | None = run_id
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._retry_interval_s = retry_interval_s
        # Outage state: when the current outage began (None = healthy), when to try again, what was lost.
        self._outage_since: float | None = None
        self._next_try: float = 0.0
        self._dropped_batches = 0
        self._system_metrics = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log (possibly nested) params, flattened to dotted keys with secrets masked."""
        flat = flatten_config(params)
        entries = [Param(key, value) for key, value in flat.items()]
        self._send("params", lambda: [self._client.log_batch(self.run_id, params=chunk, synchronous=True)
                                      for chunk in _chunks(entries, _MAX_PARAMS_TAGS_PER_BATCH)])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log metrics at ``step`` in one request; NaN/inf are logged too (a diverging loss must show).

        Never raises for an unreachable/failing server: the metrics are dropped, see the module docstring.
        """
        if not metrics:
            return
        timestamp = int(time.time() * 1000)
        entries = [Metric(key, float(value), timestamp, int(step)) for key, value in metrics.items()]
        # One log_batch per call; more than MLflow's per-request limit is split (rare: >1000 metrics).
        self._send("metrics", lambda: [self._client.log_batch(self.run_id, metrics=chunk, synchronous=True)
                                       for chunk in _chunks(entries, _MAX_METRICS_PER_BATCH)])

    def _send(self, what: str, request) -> None:
        """Run ``request`` unless an outage says to wait; a transient failure starts an outage (one warning)."""
        now = time.monotonic()
        if self._outage_since is not None and now < self._next_try:
            self._dropped_batches += 1
            return
        try:
            request()
        except Exception as exc:  # noqa: BLE001 - classified just below; caller bugs are re-raised
            if not is_transient_tracking_error(exc):
                raise
            self._dropped_batches += 1
            self._next_try = time.monotonic() + self._retry_interval_s
            if self._outage_since is None:
                self._outage_since = now
                self.stop_system_metrics()
                log.warning(
                    "MLflow tracking at %s failed while logging %s for run %s (%s: %s). Training "
                    "continues; metrics and params are DROPPED (not replayed) until the server answers again "
                    "(retrying at most every %.0f s).",
                    # The URI and error text may carry user:password@host; logs must not.
                    mask_url_credentials(self.tracking_uri), what, self.run_id, type(exc).__name__,
                    mask_url_credentials(str(exc)), self._retry_interval_s,
                )
            return
        if self._outage_since is not None:
            log.warning(
                "MLflow tracking at %s answers again after %.0f s; %d batch(es) of run %s were dropped.",
                mask_url_credentials(self.tracking_uri), time.monotonic() - self._outage_since,
                self._dropped_batches, self.run_id,
            )
            self._outage_since = None
            self._dropped_batches = 0

    def start_system_metrics(self, interval_s: float, resumed: bool) -> None:
        """Sample CPU, memory, disk, network (and GPU with pynvml) into ``system/*`` metrics every ``interval_s``.

        ``resumed`` continues the step count of an earlier attempt of the same run instead of restarting it.
        """
        if self._system_metrics is not None or interval_s <= 0 or self._outage_since is not None:
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._system_metrics = SystemMetricsMonitor(self.run_id, sampling_interval=interval_s,
                                                    resume_logging=resumed, tracking_uri=self.tracking_uri)
        self._system_metrics.start()

    def stop_system_metrics(self) -> None:
        """Stop sampling (the monitor logs what it holds first)."""
        if self._system_metrics is not None:
            monitor, self._system_metrics = self._system_metrics, None
            monitor.finish()

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        """Upload every file under ``local_dir`` to the run (under ``artifact_path`` when given)."""
        self._client.log_artifacts(self.run_id, str(local_dir), artifact_path=artifact_path)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        """Store ``obj`` as a JSON/YAML artifact (by extension), with secret keys and URL credentials masked."""
        self._client.log_dict(self.run_id, redact(obj), artifact_file)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags; values are stringified, masked like params, and cut to MLflow's tag limit."""
        flat = flatten_config(tags, max_length=MAX_TAG_VALUE_LENGTH)
        entries = [RunTag(key, value) for key, value in flat.items()]
        for chunk in _chunks(entries, _MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(self.run_id, tags=chunk, synchronous=True)


def make_logger(tracking_uri: str | None, run_id: str | None, is_rank_zero: bool) -> RunLogger:
    """The logger for this process: MLflow on rank 0 of a tracked run, a ``NullRunLogger`` otherwise."""
    if is_rank_zero and tracking_uri and run_id:
        return MlflowRunLogger(tracking_uri, run_id)
    return NullRunLogger()
