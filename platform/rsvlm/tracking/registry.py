"""Model registry: register a run's checkpoint folder as a model version, and resolve model URIs back.

MLflow 3 notes that shape this module:

* A version is made from a logged model (``create_model_version(source="models:/<model_id>")``,
  :func:`register_logged_model`): the source is the link the UI follows from version to model; the
  database store keeps no other (``ModelVersion.model_id`` comes back None), so :func:`model_id_of` reads it.
  That is what finetune and sweeps register: a pyfunc model whose ``checkpoint`` artifact is the checkpoint
  folder. Resolving such a version gives that folder.
* ``mlflow.register_model("runs:/<id>/<folder>")`` on a plain folder of files (not an MLflow Model) fails
  after having created an empty registered model, so a version of a run's folder (:func:`register_model_version`,
  older rsvlm versions) is made with ``create_registered_model`` + ``create_model_version(source=<artifact URI>)``.
* Stages are deprecated; promotion is done with aliases (``models:/<name>@<alias>``).
* The registry needs a database-backed store (sqlite or a server), never the file store.

Every client is built with ``registry_uri=tracking_uri`` so that neither ``MLFLOW_REGISTRY_URI`` nor any
process-global registry setting can send a registration somewhere else.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse
from urllib.request import url2pathname

import mlflow.artifacts
from mlflow.models import Model
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _use_tracking_uri

from rsvlm.errors import JobError
from rsvlm.tracking.logged_models import CHECKPOINT_ARTIFACT
from rsvlm.tracking.params import MAX_TAG_VALUE_LENGTH, flatten_config, mask_url_credentials

_NOT_FOUND = ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)
_ALREADY_EXISTS = ErrorCode.Name(RESOURCE_ALREADY_EXISTS)
# Some stores answer an unknown alias with INVALID_PARAMETER_VALUE rather than RESOURCE_DOES_NOT_EXIST.
_LOOKUP_FAILED = frozenset({_NOT_FOUND, ErrorCode.Name(INVALID_PARAMETER_VALUE)})

_MODELS_ALIAS_RE = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)/?$")
_MODELS_VERSION_RE = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>[^/@]+)/?$")
_LOGGED_MODEL_RE = re.compile(r"^models:/(?P<model_id>m-[0-9a-f]+)/?$")
_RUNS_RE = re.compile(r"^runs:/(?P<run_id>[^/]+)/(?P<path>.+)$")
_ACCEPTED_FORMS = (
    "models:/<name>@<alias>, models:/<name>/<version>, models:/<model_id>, runs:/<run_id>/<path>, file://<path> "
    "or a local folder"
)
# The registered-model names jobs/finetune.py and jobs/sweep.py make: rsvlm-<model>-<strategy>.
_DEFAULT_NAME_RE = re.compile(r"^rsvlm-(?P<model>.+)-(?P<strategy>full|lora|moe_lora)$")


class ModelNotFoundError(JobError, LookupError):
    """A ``models:/`` URI names a registered model, alias or version that does not exist (one line: the URI,
    what is missing, what exists and which command makes it)."""


class ModelURIError(JobError, ValueError):
    """A model URI that cannot be parsed or has an unsupported scheme."""


class ModelPathError(JobError, FileNotFoundError):
    """A model given as a local folder (or ``file://`` URI) that does not exist."""


@dataclass
class ResolvedModel:
    """A model URI resolved to a local folder, with where it came from when it came from MLflow."""

    local_path: Path
    name: str | None
    version: str | None
    run_id: str | None


def _client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
        return
    except MlflowException as exc:
        if exc.error_code != _NOT_FOUND:
            raise
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        # Created concurrently by another job: fine, that is what we wanted.
        if exc.error_code != _ALREADY_EXISTS:
            raise


def _require_run_artifact(client: MlflowClient, run_id: str, artifact_path: str) -> None:
    """Fail before registering when ``artifact_path`` was never logged (a version would point at nothing)."""
    parent = posixpath.dirname(artifact_path)
    entries = client.list_artifacts(run_id, parent or None)
    if not any(entry.path == artifact_path for entry in entries):
        present = sorted(entry.path for entry in entries)
        raise FileNotFoundError(
            f"run {run_id} has no artifact {artifact_path!r}; found under {parent or '<root>'!r}: {present}"
        )


def register_model_version(
    tracking_uri: str,
    name: str,
    run_id: str,
    artifact_path: str,
    alias: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> str:
    """Register ``<run artifacts>/<artifact_path>`` as a new version of ``name``; return the version number.

    The registered model is created when missing; ``alias`` (if given) is moved to the new version. Each call
    makes a new version, so re-running a registration step is safe (the alias just moves on).
    """
    artifact_path = artifact_path.strip("/")
    if not artifact_path:
        raise ValueError("artifact_path must name a folder or file inside the run's artifacts")
    client = _client(tracking_uri)
    run = client.get_run(run_id)
    _require_run_artifact(client, run_id, artifact_path)
    _ensure_registered_model(client, name)
    source = run.info.artifact_uri.rstrip("/") + "/" + artifact_path
    version_tags = flatten_config(tags or {}, max_length=MAX_TAG_VALUE_LENGTH)
    model_version = client.create_model_version(name, source=source, run_id=run_id, tags=version_tags)
    version = str(model_version.version)
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return version


def register_logged_model(tracking_uri: str, name: str, model_id: str, run_id: str, alias: str | None = None,
                          tags: Mapping[str, Any] | None = None) -> str:
    """Register logged model ``model_id`` (of training run ``run_id``) as a new version of ``name``; return the
    version number. The registered model is created when missing; ``alias`` (if given) moves to the version."""
    client = _client(tracking_uri)
    _ensure_registered_model(client, name)
    version_tags = flatten_config(tags or {}, max_length=MAX_TAG_VALUE_LENGTH)
    # The database store looks a models:/<model_id> source up with a default client, which reads the
    # process-wide tracking URI: point that at this store for the call (and back).
    with _use_tracking_uri(tracking_uri):
        model_version = client.create_model_version(name, source=f"models:/{model_id}", run_id=run_id,
                                                    tags=version_tags, model_id=model_id)
    version = str(model_version.version)
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return version


def model_id_of(model_version: Any) -> str | None:
    """The logged model a registered version was made from (None for a version of a plain folder)."""
    match = _LOGGED_MODEL_RE.match(model_version.source or "")
    return model_version.model_id or (match["model_id"] if match else None)


def _download_logged_model(client: MlflowClient, model_id: str, dst_dir: str | Path, tracking_uri: str) -> Path:
    """The checkpoint folder of logged model ``model_id``, downloaded into ``dst_dir``."""
    model = client.get_logged_model(model_id)
    local = mlflow.artifacts.download_artifacts(artifact_uri=model.artifact_location, dst_path=str(dst_dir),
                                                tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return checkpoint_folder(Path(local))


def checkpoint_folder(local: Path) -> Path:
    """The checkpoint inside a downloaded model: a pyfunc model keeps it as its ``checkpoint`` artifact (where,
    its MLmodel file says: MLflow names the copy after the source folder); an older version's folder is the
    checkpoint itself."""
    if not (local / "MLmodel").is_file():
        return local
    artifacts = Model.load(str(local / "MLmodel")).flavors.get("python_function", {}).get("artifacts", {})
    if CHECKPOINT_ARTIFACT not in artifacts:
        raise ModelPathError(str(local), "an MLflow model without a checkpoint artifact, not an rsvlm model",
                             "register rsvlm checkpoints with jobs/finetune.py or jobs/sweep.py")
    return local / artifacts[CHECKPOINT_ARTIFACT]["path"]


def registered_model(client: MlflowClient, name: str, uri: str, tracking_uri: str) -> Any:
    """The registered model ``name``; :class:`ModelNotFoundError` naming ``uri`` and the command that
    registers one when it does not exist."""
    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in _LOOKUP_FAILED:
            raise
        known = sorted(m.name for m in client.search_registered_models(max_results=100))
        default = _DEFAULT_NAME_RE.match(name)
        command = (f"python jobs/finetune.py model={default['model']} strategy={default['strategy']} registers "
                   f"{name}@candidate" if default else
                   "python jobs/finetune.py model=<model> strategy=<strategy> registers rsvlm-<model>-<strategy>"
                   "@candidate (tracking.registered_model=NAME registers another name)")
        raise ModelNotFoundError(
            uri, f"no registered model {name!r} in {mask_url_credentials(tracking_uri)} (registered models: "
                 f"{known or 'none'})", f"{command}, or set tracking.uri to the MLflow store that holds it"
        ) from exc


def _version_by_alias(client: MlflowClient, uri: str, tracking_uri: str, name: str, alias: str) -> Any:
    model = registered_model(client, name, uri, tracking_uri)
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code not in _LOOKUP_FAILED:
            raise
        available = {a: str(v) for a, v in sorted((model.aliases or {}).items())}
        raise ModelNotFoundError(
            uri, f"registered model {name!r} has no alias {alias!r} (available aliases: {available or 'none'})",
            f"@candidate is set by python jobs/finetune.py or jobs/sweep.py, @champion by python jobs/register.py; "
            f"or name a version: models:/{name}/<version>"
        ) from exc


def _version_by_number(client: MlflowClient, uri: str, tracking_uri: str, name: str, version: str) -> Any:
    registered_model(client, name, uri, tracking_uri)
    if not version.isdigit():
        raise ModelURIError(uri, f"{version!r} is not a version number; stages are not supported",
                            f"use an alias: models:/{name}@<alias>")
    try:
        return client.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code not in _LOOKUP_FAILED:
            raise
        # The name is a literal we validated as a registered model; quote it as the filter syntax requires.
        escaped = name.replace("'", "\\'")
        versions = sorted(
            (str(mv.version) for mv in client.search_model_versions(f"name = '{escaped}'")), key=int
        )
        raise ModelNotFoundError(
            uri, f"registered model {name!r} has no version {version!r} (available versions: {versions or 'none'})",
            f"use one of them, or an alias: models:/{name}@<alias>"
        ) from exc


def _local_folder(path: Path, uri: str) -> Path:
    path = path.expanduser()
    if not path.exists():
        raise ModelPathError(uri, "no such model folder", f"accepted: {_ACCEPTED_FORMS}")
    return path.resolve()


def _registered_version(client: MlflowClient, uri: str, tracking_uri: str) -> Any:
    """The model version a ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` URI names."""
    if match := _MODELS_ALIAS_RE.match(uri):
        return _version_by_alias(client, uri, tracking_uri, match["name"], match["alias"])
    if match := _MODELS_VERSION_RE.match(uri):
        return _version_by_number(client, uri, tracking_uri, match["name"], match["version"])
    raise ModelURIError(uri, "cannot parse this model URI", f"accepted: {_ACCEPTED_FORMS}")


@dataclass(frozen=True)
class PinnedModel:
    """A model URI with any alias replaced by the version it names now, and what MLflow knows of it."""

    uri: str
    name: str | None = None  # registered model name and version, for a models:/<name>… URI
    version: str | None = None
    model_id: str | None = None  # the logged model (a version made from one, or models:/<model_id>)
    run_id: str | None = None  # the training run that made it


def pin_model_uri(uri: str, tracking_uri: str) -> PinnedModel:
    """``uri`` pinned: ``models:/<name>@<alias>`` becomes ``models:/<name>/<version>``.

    Workers that each resolve the model get the same version even if the alias moves meanwhile. URIs that
    are not ``models:/`` come back unchanged, with nothing known of them.
    """
    if match := _LOGGED_MODEL_RE.match(uri):
        model = _client(tracking_uri).get_logged_model(match["model_id"])
        return PinnedModel(uri, model_id=model.model_id, run_id=model.source_run_id)
    if not uri.startswith("models:/"):
        return PinnedModel(uri)
    model_version = _registered_version(_client(tracking_uri), uri, tracking_uri)
    name, version = model_version.name, str(model_version.version)
    return PinnedModel(f"models:/{name}/{version}", name, version, model_id_of(model_version),
                       model_version.run_id or None)


def resolve_model_uri(uri: str, tracking_uri: str, dst_dir: str | Path) -> ResolvedModel:
    """Resolve a model URI to a local folder, downloading into ``dst_dir`` when it lives in MLflow.

    Accepts ``models:/<name>@<alias>``, ``models:/<name>/<version>``, ``runs:/<run_id>/<path>``, ``file://``
    URIs and local folders (returned as they are, not copied). Unknown model/alias/version:
    :class:`ModelNotFoundError` (a ``LookupError``); a bad URI :class:`ModelURIError`; a missing folder
    :class:`ModelPathError`.
    """
    # MLflow's per-file download bar is carriage-return noise in job logs; a user's explicit setting wins.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if match := _LOGGED_MODEL_RE.match(uri):
        client = _client(tracking_uri)
        return ResolvedModel(local_path=_download_logged_model(client, match["model_id"], dst_dir, tracking_uri),
                             name=None, version=None, run_id=client.get_logged_model(match["model_id"]).source_run_id)
    if uri.startswith("models:/"):
        client = _client(tracking_uri)
        model_version = _registered_version(client, uri, tracking_uri)
        if model_id := model_id_of(model_version):
            local = _download_logged_model(client, model_id, dst_dir, tracking_uri)
        else:  # a version of a plain folder (registered by an earlier rsvlm)
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_version.source, dst_path=str(dst_dir),
                                                             tracking_uri=tracking_uri, registry_uri=tracking_uri))
        return ResolvedModel(
            local_path=local,
            name=model_version.name,
            version=str(model_version.version),
            run_id=model_version.run_id or None,
        )
    if uri.startswith("runs:/"):
        match = _RUNS_RE.match(uri)
        if match is None:
            raise ModelURIError(uri, "cannot parse this run URI", "expected runs:/<run_id>/<path>")
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=str(dst_dir), tracking_uri=tracking_uri, registry_uri=tracking_uri
        )
        return ResolvedModel(local_path=Path(local), name=None, version=None, run_id=match["run_id"])
    if uri.startswith("file:"):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise ModelURIError(uri, "names a remote host", "only local file:// URIs are supported")
        path = Path(url2pathname(parsed.path))  # url2pathname also percent-decodes
        return ResolvedModel(local_path=_local_folder(path, uri), name=None, version=None, run_id=None)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]+:", uri):
        raise ModelURIError(uri, "unsupported model URI scheme", f"accepted: {_ACCEPTED_FORMS}")
    return ResolvedModel(local_path=_local_folder(Path(uri), uri), name=None, version=None, run_id=None)
