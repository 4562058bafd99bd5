"""MLflow tracking for rsvlm: runs created on the driver, rank-0 loggers, masked params, model registry.

Everything goes through ``MlflowClient`` with explicit tracking URIs and run ids; nothing here uses MLflow's
fluent (process-global) API.
"""

from __future__ import annotations

from rsvlm.tracking.logger import MlflowRunLogger, NullRunLogger, RunLogger, is_transient_tracking_error, make_logger
from rsvlm.tracking.params import (
    MASK,
    MAX_PARAM_VALUE_LENGTH,
    TRUNCATION_MARKER,
    flatten_config,
    is_secret_key,
    mask_url_credentials,
    redact,
)
from rsvlm.tracking.registry import (
    PinnedModel,
    ResolvedModel,
    pin_model_uri,
    register_model_version,
    resolve_model_uri,
)
from rsvlm.tracking.runs import (
    best_effort,
    create_run,
    ensure_experiment,
    finish_run,
    normalize_artifact_location,
    open_run,
    reopen_run,
)

__all__ = [
    "MASK",
    "MAX_PARAM_VALUE_LENGTH",
    "TRUNCATION_MARKER",
    "MlflowRunLogger",
    "NullRunLogger",
    "PinnedModel",
    "ResolvedModel",
    "RunLogger",
    "best_effort",
    "create_run",
    "ensure_experiment",
    "finish_run",
    "flatten_config",
    "is_secret_key",
    "is_transient_tracking_error",
    "make_logger",
    "mask_url_credentials",
    "normalize_artifact_location",
    "open_run",
    "pin_model_uri",
    "redact",
    "register_model_version",
    "reopen_run",
    "resolve_model_uri",
]
