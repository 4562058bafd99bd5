"""The Kubeflow pipeline's four steps as plain functions: prepare_data → finetune → evaluate → register.

``infra/kubeflow/pipeline.py`` wraps each function in a lightweight KFP component; this module does not import
kfp (the library does not depend on it). Every step does the same three things:

1. compose the job's config from the pipeline's Hydra overrides (:func:`rsvlm.config.compose`), so a typo
   fails the step at once, with the one-line error, before anything is started;
2. run the job's own command, ``python jobs/<verb>.py <overrides>``, through a *launcher*: a subprocess in
   the step's own process tree (:class:`SubprocessLauncher`: ``run-local``, and prepare_data / register in a
   cluster, which need no Ray), or a KubeRay ``RayJob`` whose entrypoint is that same command
   (:class:`RayJobLauncher`: finetune / evaluate in a cluster), waited for, the step failing when it fails;
3. read what the job produced from the systems of record, not from its log: the prepared dataset's
   manifest, the MLflow run and the model version the finetune job registered, the evaluation run whose id
   the job wrote on that version (``eval/<benchmark>/run_id``), the registry's aliases after promotion. Each
   run the pipeline makes is tagged ``rsvlm.pipeline.run=<KFP run id>`` and every output is checked
   against that tag and against the previous step's output, so a step can never pass along another run's
   result.

So local and cluster runs execute identical job code (the same files a user runs by hand), and the only
difference between them is where ``python jobs/<verb>.py`` runs.

Why a RayJob per step, not ``ray job submit`` to a standing RayCluster: the RayJob's cluster is sized from
the very config the step composed (``scaling.num_workers`` GPU workers for finetune, ``benchmark.workers``
for evaluate), exists only while the step runs (``shutdownAfterJobFinishes``), is retried by the operator
(``backoffLimit``) and leaves its state in the Kubernetes API (``kubectl get rayjobs``), where a retried KFP
step finds it again instead of training twice; the step pod needs only RBAC on ``rayjobs``, not the Ray
dashboard's address, token and a working-directory upload. A standing cluster is still possible:
``cluster.ray_cluster=<name>`` submits the same RayJob to it through ``clusterSelector``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Protocol, Sequence

from mlflow.tracking import MlflowClient

from rsvlm.config import ConfigError, JobConfig, compose, conf_dir, report_error
from rsvlm.data.prepare import read_manifest
from rsvlm.data.storage import Storage
from rsvlm.errors import JobError
from rsvlm.redaction import has_url_credentials, mask_url_credentials

__all__ = ["CHAMPION", "ClusterSettings", "Launcher", "PIPELINE_RUN_TAG", "RayJobLauncher", "StepFailed",
           "SubprocessLauncher", "evaluate_step", "finetune_step", "job_overrides", "make_launcher",
           "prepare_data_step", "rayjob_manifest", "register_step", "run_component", "run_pipeline_step"]

PIPELINE_RUN_TAG = "rsvlm.pipeline.run"  # on every MLflow run a pipeline run creates
CHAMPION = "champion"  # the alias jobs/register.py moves
LAUNCHERS = ("subprocess", "rayjob")
# A job's one-line error, as rsvlm.config.report_error prints it.
_ERROR_PREFIX = "error: "


class StepFailed(JobError):
    """A step's job failed; ``str()`` carries the job's own one-line error."""


# --------------------------------------------------------------------------------------------- overrides

def job_overrides(overrides: Sequence[str] = (), *, env: str = "", source: str = "", image_root: str = "",
                  prepared_uri: str = "", strategy: str = "", experiment: str = "", benchmark: str = "",
                  registered_model: str = "") -> list[str]:
    """The Hydra overrides every step's job gets: the pipeline's named parameters (empty = the config's
    default; ``env=kuberay`` is ``+env=kuberay``, conf/env/), then its free ``overrides`` (which win, being last).

    ``source`` / ``image_root`` select ``data=custom`` (as ``jobs/prepare_data.py source=…`` does) unless the
    overrides pick a ``data=`` group themselves. Credentials in a URL are refused: the pipeline's parameters
    are stored in the KFP run, in its UI and in every job's Hydra folder.
    """
    named: list[str] = [override("+env", env)] if env else []
    free = [str(item) for item in overrides]
    if (source or image_root) and not any(o.lstrip("+~").partition("=")[0] == "data" for o in free):
        named.append("data=custom")
    for key, value in (("data.source", source), ("data.image_root", image_root), ("data.uri", prepared_uri),
                       ("strategy", strategy), ("experiment", experiment), ("benchmark", benchmark),
                       ("tracking.registered_model", registered_model)):
        if value:
            named.append(override(key, value))
    result = named + free
    for item in result:
        if has_url_credentials(item):
            raise JobError(f"overrides: {mask_url_credentials(item)}",
                           "holds credentials (user:password@ in a URL), which would be stored with the pipeline "
                           "run", "put them in the Secret the steps read (MLFLOW_TRACKING_USERNAME / "
                           "MLFLOW_TRACKING_PASSWORD, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
    return result


_PLAIN_VALUE = re.compile(r"^[\w./:@%+\-]*$")


def override(key: str, value: str) -> str:
    """``key=value`` for Hydra, the value quoted when it holds characters Hydra's grammar would read."""
    text = str(value)
    if _PLAIN_VALUE.match(text):
        return f"{key}={text}"
    return f"{key}='" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _pipeline_tag(pipeline_run: str) -> str:
    # ``++`` merges into tracking.tags (keeping the user's own tags); the key holds dots, so a dict literal.
    return f'++tracking.tags={{{PIPELINE_RUN_TAG}: "{_checked_run_id(pipeline_run)}"}}'


def _checked_run_id(pipeline_run: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}", pipeline_run or ""):
        raise JobError(f"pipeline_run={pipeline_run!r}", "not a KFP run id (letters, digits, '-', '_', '.')",
                       "the pipeline passes dsl.PIPELINE_JOB_ID_PLACEHOLDER")
    return pipeline_run


def compose_step(overrides: Sequence[str]) -> JobConfig:
    """The step's config: exactly what its job will compose from the same overrides."""
    job = compose(list(overrides))
    if not job.tracking.enabled:
        raise ConfigError("tracking.enabled", "the pipeline registers and promotes a model, which needs MLflow "
                                              "tracking", ["true"])
    return job


def _has_key(overrides: Sequence[str], key: str) -> bool:
    return any(o.lstrip("+~").partition("=")[0] == key for o in overrides)


# --------------------------------------------------------------------------------------------- launchers

class Launcher(Protocol):
    def run(self, verb: str, overrides: Sequence[str], job: JobConfig, *, pipeline_run: str) -> None:
        """Run ``python jobs/<verb>.py <overrides>`` to the end; raise :class:`StepFailed` when it fails."""


def source_root() -> Path:
    """The source tree whose ``jobs/`` and ``conf/`` the jobs use (the image's working tree in a cluster)."""
    root = conf_dir().resolve().parent
    if not (root / "jobs").is_dir():
        raise JobError(f"{root / 'jobs'}", "not found beside the config folder, so the jobs cannot be run",
                       "run from a source checkout (pip install -e .), or set RSVLM_CONF_DIR to the conf/ of a tree "
                       "that has jobs/ beside it, as the image does")
    return root


def job_command(verb: str, overrides: Sequence[str]) -> list[str]:
    """``python jobs/<verb>.py <overrides>``: the command a user runs by hand."""
    return ["python", f"jobs/{verb}.py", *overrides]


class SubprocessLauncher:
    """Runs the job as a child process of this one, from the source tree (``run-local``; in a cluster,
    the steps that need no Ray cluster run like this in their own pod)."""

    def __init__(self, python: Optional[str] = None, echo: Callable[[str], None] | None = None):
        self.python = python or sys.executable
        self.echo = echo or (lambda line: print(line, end="", flush=True))

    def run(self, verb: str, overrides: Sequence[str], job: JobConfig, *, pipeline_run: str) -> None:
        root = source_root()
        command = [self.python, *job_command(verb, overrides)[1:]]
        print(f"[{verb}] {shlex.join(job_command(verb, overrides))}", flush=True)
        last_error = None
        with subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              bufsize=1) as process:
            assert process.stdout is not None
            for line in process.stdout:
                self.echo(line)
                if line.startswith(_ERROR_PREFIX):
                    last_error = line[len(_ERROR_PREFIX):].strip()
            code = process.wait()
        if code != 0:
            raise _job_failed(verb, f"exit {code}", last_error,
                              "the job's output is above; rerun it by hand with the same overrides")


def _job_failed(verb: str, how: str, error_line: Optional[str], fix: str) -> StepFailed:
    if error_line:
        return StepFailed(f"step {verb} (python jobs/{verb}.py, {how})", error_line)
    return StepFailed(f"step {verb} (python jobs/{verb}.py, {how})", "failed without an error line", fix)


@dataclass
class ClusterSettings:
    """Where and how a step's RayJob runs (the pipeline's ``cluster`` parameter; every key optional).

    The defaults follow ``infra/kuberay/base/raycluster.yaml``: the rsvlm image, the ConfigMap ``rsvlm-config``
    and the Secret ``rsvlm-credentials`` (``envFrom``, by name only: no value is in the manifest), Ray's token
    authentication with the Secret ``rsvlm-ray-token``, uid 1000, GPU workers of one GPU each with the GPU
    toleration and node selector, 2 CPUs per worker for Ray Data beyond the Ray Train worker's own.
    """

    namespace: str = ""  # empty: the step pod's own namespace
    image: str = ""  # the Ray pods' image; empty: the pipeline's ``image`` parameter
    ray_cluster: str = ""  # a standing RayCluster to run on (clusterSelector); empty: a cluster per step
    config_map: str = "rsvlm-config"
    secrets: list[str] = field(default_factory=lambda: ["rsvlm-credentials"])
    auth_secret: str = "rsvlm-ray-token"  # Ray token authentication (authOptions); empty: off
    service_account: str = ""  # the Ray pods' service account (e.g. one with a cloud role for S3)
    source_dir: str = ""  # the source tree in the image (jobs/, conf/); empty: the step pod's own
    gpu_resource: str = "nvidia.com/gpu"
    gpu_tolerations: list[dict[str, Any]] = field(default_factory=lambda: [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    gpu_node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    head_cpu: str = "4"
    head_memory: str = "16Gi"
    worker_extra_cpu: int = 2  # CPUs per worker pod beyond scaling.cpus_per_worker: Ray Data's preprocessing
    gpu_worker_memory: str = "80Gi"
    cpu_worker_memory: str = "8Gi"
    shm_size: str = "16Gi"  # /dev/shm of every Ray pod (object store, DataLoader)
    ray_version: str = ""  # empty: this environment's Ray
    backoff_limit: int = 0  # the operator's retries of the whole job (a finetune resumes its checkpoints)
    ttl_seconds_after_finished: int = 600
    active_deadline_seconds: int = 0  # 0: no deadline
    poll_s: float = 10.0
    labels: dict[str, str] = field(default_factory=dict)
    # A PersistentVolumeClaim mounted at workdir_mount in every Ray pod (the step pods mount it too when the
    # pipeline is compiled with --workdir-pvc): lets synthetic data and local benchmark files cross pods.
    workdir_pvc: str = ""
    workdir_mount: str = "/home/ray/work"

    @classmethod
    def from_dict(cls, data: Optional[Mapping[str, Any]]) -> "ClusterSettings":
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"cluster.{unknown[0]}", "unknown key", sorted(known))
        return cls(**data)


def make_launcher(kind: str, cluster: Optional[Mapping[str, Any]] = None, image: str = "") -> Launcher:
    """The launcher named by the pipeline's ``launcher`` parameter."""
    if kind == "subprocess":
        return SubprocessLauncher()
    if kind == "rayjob":
        settings = ClusterSettings.from_dict(cluster)
        settings.image = settings.image or image
        return RayJobLauncher(settings)
    raise ConfigError("launcher", f"unknown launcher {kind!r}", LAUNCHERS)


RAYJOB_API = ("ray.io", "v1", "rayjobs")
_TERMINAL = {"Complete", "Failed", "ValidationFailed"}
_RAYJOB_NAME_MAX = 47  # KubeRay refuses longer names (it derives the cluster's names from it)


def rayjob_name(verb: str, pipeline_run: str) -> str:
    """``rsvlm-<verb>-<hash of the KFP run and step>``: the same for a retried step, so it finds its RayJob."""
    digest = hashlib.sha256(f"{pipeline_run}/{verb}".encode()).hexdigest()[:10]
    name = f"rsvlm-{verb.replace('_', '-')}-{digest}"
    assert len(name) <= _RAYJOB_NAME_MAX, name
    return name


def _ray_version() -> str:
    try:
        return version("ray")
    except PackageNotFoundError:
        return ""


def _workers(verb: str, job: JobConfig) -> tuple[int, bool, float]:
    """(worker pods, GPU each, CPUs each) the job needs: Ray Train's workers, or evaluate's answering actors."""
    if verb == "evaluate":
        return job.benchmark.workers, job.scaling.use_gpu, 1.0
    return job.scaling.num_workers, job.scaling.use_gpu, job.scaling.cpus_per_worker


def rayjob_manifest(verb: str, overrides: Sequence[str], job: JobConfig, settings: ClusterSettings, *,
                    pipeline_run: str, namespace: str) -> dict[str, Any]:
    """The RayJob that runs ``python jobs/<verb>.py <overrides>``; its worker group is sized from ``job``."""
    if not settings.image:
        raise ConfigError("cluster.image", "the Ray pods need an image", None)
    source_dir = settings.source_dir or str(source_root())
    entrypoint = shlex.join(job_command(verb, overrides))
    labels = {"app.kubernetes.io/name": "rsvlm", "app.kubernetes.io/component": verb.replace("_", "-"),
              "app.kubernetes.io/part-of": "rsvlm", "rsvlm.io/pipeline-run": pipeline_run, **settings.labels}
    spec: dict[str, Any] = {
        "entrypoint": entrypoint,
        # The image's source tree: the submitter uploads it, so the driver runs exactly the image's jobs/ and conf/.
        "runtimeEnvYAML": f"working_dir: {json.dumps(source_dir)}\n",
        "submissionMode": "K8sJobMode",
        "backoffLimit": settings.backoff_limit,
    }
    if settings.active_deadline_seconds:
        spec["activeDeadlineSeconds"] = settings.active_deadline_seconds
    if settings.ray_cluster:
        spec["clusterSelector"] = {"ray.io/cluster": settings.ray_cluster}
    else:
        spec["shutdownAfterJobFinishes"] = True
        spec["ttlSecondsAfterFinished"] = settings.ttl_seconds_after_finished
        spec["rayClusterSpec"] = _ray_cluster_spec(verb, job, settings, labels)
    return {"apiVersion": "ray.io/v1", "kind": "RayJob",
            "metadata": {"name": rayjob_name(verb, pipeline_run), "namespace": namespace, "labels": labels},
            "spec": spec}


def _ray_cluster_spec(verb: str, job: JobConfig, settings: ClusterSettings, labels: dict[str, str]) -> dict:
    env_from: list[dict[str, Any]] = []
    if settings.config_map:
        env_from.append({"configMapRef": {"name": settings.config_map, "optional": True}})
    env_from += [{"secretRef": {"name": name, "optional": True}} for name in settings.secrets]
    volumes = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}}]
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]
    if settings.workdir_pvc:
        volumes.append({"name": "workdir", "persistentVolumeClaim": {"claimName": settings.workdir_pvc}})
        mounts.append({"name": "workdir", "mountPath": settings.workdir_mount})

    def pod(container_name: str, resources: dict, extra: Optional[dict] = None) -> dict:
        pod_spec: dict[str, Any] = {
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
            "containers": [{"name": container_name, "image": settings.image, "envFrom": env_from,
                            "resources": resources, "volumeMounts": mounts}],
            "volumes": volumes,
            **(extra or {})}
        if settings.service_account:
            pod_spec["serviceAccountName"] = settings.service_account
        return {"metadata": {"labels": labels}, "spec": pod_spec}

    head_resources = {"requests": {"cpu": settings.head_cpu, "memory": settings.head_memory},
                      "limits": {"cpu": settings.head_cpu, "memory": settings.head_memory}}
    count, gpu, cpus = _workers(verb, job)
    # No tasks on the head of a GPU cluster (its CPUs are the GCS's, the dashboard's and the driver's); a cluster
    # without workers (scaling.num_workers=0, benchmark.workers=0) runs everything on the head.
    head_params = {"dashboard-host": "0.0.0.0", **({"num-cpus": "0"} if count > 0 and gpu else {})}
    cluster: dict[str, Any] = {
        "rayVersion": settings.ray_version or _ray_version(),
        "headGroupSpec": {"rayStartParams": head_params, "template": pod("ray-head", head_resources)},
    }
    if settings.auth_secret:
        cluster["authOptions"] = {"mode": "token", "secretName": settings.auth_secret}
    if count > 0:
        cpu = str(int(-(-cpus // 1)) + settings.worker_extra_cpu)
        memory = settings.gpu_worker_memory if gpu else settings.cpu_worker_memory
        limits: dict[str, Any] = {"cpu": cpu, "memory": memory}
        extra: dict[str, Any] = {}
        if gpu:
            limits[settings.gpu_resource] = "1"
            extra["tolerations"] = [dict(t) for t in settings.gpu_tolerations]
            if settings.gpu_node_selector:
                extra["nodeSelector"] = dict(settings.gpu_node_selector)
        cluster["workerGroupSpecs"] = [{
            "groupName": "gpu" if gpu else "cpu",
            "replicas": count, "minReplicas": count, "maxReplicas": count,
            "rayStartParams": {},
            "template": pod("ray-worker", {"requests": dict(limits), "limits": limits}, extra),
        }]
    return cluster


class RayJobLauncher:
    """Creates the step's RayJob (KubeRay operator), waits for it and fails when it fails, with the job's
    own ``error:`` line read from the submitter pod's log.

    A RayJob of the same KFP run and step that already exists is reused: a running one is waited for (a
    retried or restarted step pod does not train twice), a succeeded one is taken as done, a failed one is
    deleted and created again. When the step is stopped (SIGTERM from a cancelled KFP run) the RayJob is
    deleted, which stops its Ray cluster.
    """

    def __init__(self, settings: ClusterSettings, custom_api: Any = None, core_api: Any = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.settings = settings
        self._custom, self._core = custom_api, core_api
        self.sleep = sleep

    def _apis(self) -> tuple[Any, Any]:
        if self._custom is None or self._core is None:
            try:
                from kubernetes import client, config
            except ImportError as exc:
                raise JobError("launcher=rayjob", "needs the kubernetes Python client",
                               "pip install 'rsvlm[pipeline]' (the image has it)") from exc
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            self._custom = self._custom or client.CustomObjectsApi()
            self._core = self._core or client.CoreV1Api()
        return self._custom, self._core

    def namespace(self) -> str:
        if self.settings.namespace:
            return self.settings.namespace
        path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        return path.read_text().strip() if path.is_file() else "default"

    def run(self, verb: str, overrides: Sequence[str], job: JobConfig, *, pipeline_run: str) -> None:
        namespace = self.namespace()
        manifest = rayjob_manifest(verb, overrides, job, self.settings, pipeline_run=pipeline_run,
                                   namespace=namespace)
        name = manifest["metadata"]["name"]
        print(f"[{verb}] RayJob {namespace}/{name}: {manifest['spec']['entrypoint']}", flush=True)
        custom, _ = self._apis()
        group, version, plural = RAYJOB_API
        existing = self._get(namespace, name)
        if existing is not None and _state(existing)[0] in _TERMINAL and _state(existing)[1] != "SUCCEEDED":
            print(f"[{verb}] an earlier RayJob {name} of this step did not succeed; deleting it and starting again",
                  flush=True)
            self._delete(namespace, name, wait=True)
            existing = None
        if existing is None:
            custom.create_namespaced_custom_object(group, version, namespace, plural, manifest)
        with self._deleted_when_stopped(namespace, name):
            status = self._wait(verb, namespace, name)
        deployment, job_status, message = status
        if job_status != "SUCCEEDED":
            line = self._error_line(namespace, name)
            how = f"RayJob {namespace}/{name} {deployment or 'ended'}, Ray job {job_status or 'not started'}"
            if not line and message:
                line = f"RayJob {name}: {message}"
            raise _job_failed(verb, how, line, f"kubectl -n {namespace} describe rayjob {name}; "
                                               f"kubectl -n {namespace} logs job/{name}")
        print(f"[{verb}] RayJob {name} succeeded", flush=True)

    def _get(self, namespace: str, name: str) -> Optional[dict]:
        custom, _ = self._apis()
        group, version, plural = RAYJOB_API
        try:
            return custom.get_namespaced_custom_object(group, version, namespace, plural, name)
        except Exception as exc:  # noqa: BLE001 - only "not found" means absent
            if getattr(exc, "status", None) == 404:
                return None
            raise

    def _delete(self, namespace: str, name: str, wait: bool = False) -> None:
        custom, _ = self._apis()
        group, version, plural = RAYJOB_API
        try:
            custom.delete_namespaced_custom_object(group, version, namespace, plural, name)
        except Exception as exc:  # noqa: BLE001
            if getattr(exc, "status", None) != 404:
                raise
        deadline = time.monotonic() + 300
        while wait and self._get(namespace, name) is not None:
            if time.monotonic() > deadline:
                raise StepFailed(f"RayJob {namespace}/{name}", "still there 5 minutes after it was deleted",
                                 f"kubectl -n {namespace} get rayjob {name} -o yaml (a finalizer?)")
            self.sleep(self.settings.poll_s)

    def _wait(self, verb: str, namespace: str, name: str) -> tuple[str, str, str]:
        last = None
        while True:
            current = self._get(namespace, name)
            if current is None:
                raise StepFailed(f"step {verb}: RayJob {namespace}/{name}", "was deleted before it finished",
                                 "start the pipeline run again")
            state = _state(current)
            if state[:2] != last:
                print(f"[{verb}] RayJob {name}: {state[0] or 'New'} / {state[1] or '-'}", flush=True)
                last = state[:2]
            if state[0] in _TERMINAL:
                return state
            self.sleep(self.settings.poll_s)

    def _error_line(self, namespace: str, name: str) -> Optional[str]:
        """The last ``error:`` line in the log of the RayJob's submitter pod (the job's own stderr)."""
        _, core = self._apis()
        try:
            pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
            pods = sorted(pods, key=lambda p: str(getattr(p.metadata, "creation_timestamp", "") or ""))
            for pod in reversed(pods):
                log = core.read_namespaced_pod_log(pod.metadata.name, namespace, tail_lines=500)
                lines = [ln[len(_ERROR_PREFIX):].strip() for ln in str(log).splitlines()
                         if ln.startswith(_ERROR_PREFIX)]
                if lines:
                    return lines[-1]
        except Exception as exc:  # noqa: BLE001 - the status message is the fallback
            print(f"warning: could not read the log of RayJob {name}'s submitter: {type(exc).__name__}: {exc}",
                  flush=True)
        return None

    @contextlib.contextmanager
    def _deleted_when_stopped(self, namespace: str, name: str) -> Iterator[None]:
        class Stopped(BaseException):
            pass

        def stop(signum, frame):  # noqa: ARG001
            raise Stopped()

        previous = signal.signal(signal.SIGTERM, stop) if _main_thread() else None
        try:
            yield
        except (Stopped, KeyboardInterrupt):
            print(f"stopped: deleting RayJob {namespace}/{name}", flush=True)
            self._delete(namespace, name)
            raise SystemExit(143)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _state(rayjob: Mapping[str, Any]) -> tuple[str, str, str]:
    status = rayjob.get("status") or {}
    return (str(status.get("jobDeploymentStatus") or ""), str(status.get("jobStatus") or ""),
            str(status.get("message") or status.get("reason") or ""))


# --------------------------------------------------------------------------------------------- the steps

def _client(job: JobConfig):
    return MlflowClient(tracking_uri=job.tracking.uri, registry_uri=job.tracking.uri)


def prepare_data_step(overrides: Sequence[str], pipeline_run: str,
                      launcher: Optional[Launcher] = None) -> dict[str, Any]:
    """Run ``jobs/prepare_data.py``; return the prepared dataset's URI and its manifest."""
    overrides = [*overrides, _pipeline_tag(pipeline_run)]
    job = compose_step(overrides)
    (launcher or SubprocessLauncher()).run("prepare_data", overrides, job, pipeline_run=pipeline_run)
    manifest = read_manifest(job.data.uri, Storage(job.storage))
    return {"data_uri": job.data.uri, "manifest": manifest}


def finetune_step(overrides: Sequence[str], pipeline_run: str, data_uri: str,
                  launcher: Optional[Launcher] = None) -> dict[str, Any]:
    """Run ``jobs/finetune.py`` on ``data_uri``; return the model version it registered and its run.

    The run is named after the KFP run (``train.run_name``, unless the overrides name it), so a retried step
    resumes the same run from its checkpoints instead of starting another.
    """
    overrides = [*overrides, override("data.uri", data_uri), _pipeline_tag(pipeline_run)]
    job = compose_step(overrides)
    if not _has_key(overrides, "train.run_name"):
        overrides.append(override("train.run_name", f"{job.registered_model_name}-kfp-{pipeline_run}"))
        job = compose_step(overrides)
    run_name = job.train.run_name
    (launcher or SubprocessLauncher()).run("finetune", overrides, job, pipeline_run=pipeline_run)

    client = _client(job)
    experiment = client.get_experiment_by_name(job.tracking.experiment)
    runs = [] if experiment is None else client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`rsvlm.job` = 'finetune' and tags.`rsvlm.run_name` = '{run_name}' "
                      f"and tags.`{PIPELINE_RUN_TAG}` = '{pipeline_run}'",
        order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise StepFailed(f"step finetune: train.run_name={run_name}",
                         f"the job succeeded but left no MLflow run tagged {PIPELINE_RUN_TAG}={pipeline_run} in "
                         f"experiment {job.tracking.experiment!r} (was MLflow unreachable, so it trained untracked?)",
                         f"the checkpoints are under {job.train.storage_uri}/{run_name}")
    run = runs[0]
    name = job.registered_model_name
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run.info.run_id}'")
    if not versions:
        raise StepFailed(f"step finetune: MLflow run {run.info.run_id}", f"registered no version of {name!r}",
                         "see the job's log above for the registration warning")
    version = max(versions, key=lambda v: int(v.version))
    return {"model_uri": f"models:/{name}/{version.version}", "registered_model": name,
            "version": str(version.version), "run_id": run.info.run_id, "run_name": run_name,
            "checkpoint_uri": version.source, "data_uri": run.data.params.get("data.uri", ""),
            "metrics": dict(run.data.metrics)}


def _parse_version_uri(model_uri: str) -> tuple[str, str]:
    match = re.fullmatch(r"models:/([^/@]+)/(\d+)", model_uri or "")
    if not match:
        raise JobError(f"model_uri={model_uri}", "not a registered model version", "models:/<name>/<version>")
    return match.group(1), match.group(2)


def evaluate_step(overrides: Sequence[str], pipeline_run: str, model_uri: str,
                  launcher: Optional[Launcher] = None) -> dict[str, Any]:
    """Run ``jobs/evaluate.py model_uri=<the version finetune registered>``; return its run and metrics.

    The run is the one the job wrote on the version (``eval/<benchmark>/run_id``, what promotion reads),
    checked to be this pipeline run's evaluation of this version.
    """
    name, version = _parse_version_uri(model_uri)
    overrides = [*overrides, override("model_uri", model_uri), _pipeline_tag(pipeline_run)]
    job = compose_step(overrides)
    (launcher or SubprocessLauncher()).run("evaluate", overrides, job, pipeline_run=pipeline_run)

    client = _client(job)
    benchmark = job.benchmark.name
    run_id = (client.get_model_version(name, version).tags or {}).get(f"eval/{benchmark}/run_id")
    run = client.get_run(run_id) if run_id else None
    tags = run.data.tags if run else {}
    expected = {PIPELINE_RUN_TAG: pipeline_run, "rsvlm.model_uri": model_uri, "rsvlm.benchmark": benchmark}
    if run is None or any(tags.get(k) != v for k, v in expected.items()):
        raise StepFailed(f"step evaluate: {model_uri}",
                         f"the version's {benchmark} evaluation (eval/{benchmark}/run_id={run_id}) is not this "
                         f"pipeline run's (expected tags {expected})",
                         "another evaluation of the version ran at the same time; run the pipeline again")
    prefix = f"eval/{benchmark}/"
    metrics = {key[len(prefix):]: value for key, value in run.data.metrics.items() if key.startswith(prefix)}
    primary = job.benchmark.primary_metric
    return {"eval_run_id": run.info.run_id, "model_uri": tags["rsvlm.model_uri"], "benchmark": benchmark,
            "primary_metric": primary, "score": metrics.get(primary), "metrics": metrics}


def register_step(overrides: Sequence[str], pipeline_run: str, model_uri: str, eval_run_id: str,
                  launcher: Optional[Launcher] = None) -> dict[str, Any]:
    """Run ``jobs/register.py`` for the version this pipeline trained and evaluated.

    The job promotes whatever ``tracking.alias`` (candidate) names, so the step first checks that it names
    this pipeline's version, and afterwards that the promotion read this pipeline's evaluation run.
    """
    name, version = _parse_version_uri(model_uri)
    overrides = [*overrides, _pipeline_tag(pipeline_run)]
    job = compose_step(overrides)
    if job.registered_model_name != name:
        raise ConfigError("tracking.registered_model", f"the steps disagree: finetune registered {name!r}, "
                                                       f"register would promote {job.registered_model_name!r}")
    client = _client(job)
    candidate = job.tracking.alias
    aliases = client.get_registered_model(name).aliases or {}
    if str(aliases.get(candidate)) != version:
        raise StepFailed(f"step register: models:/{name}@{candidate}",
                         f"names v{aliases.get(candidate)}, not v{version} that this pipeline run trained (another "
                         "finetune registered a candidate since)",
                         f"promote v{version} by hand: python jobs/register.py after moving @{candidate} to it")
    (launcher or SubprocessLauncher()).run("register", overrides, job, pipeline_run=pipeline_run)

    model_version = client.get_model_version(name, version)
    tags = model_version.tags or {}
    used = tags.get(f"eval/{job.benchmark.name}/run_id")
    if "rsvlm.promotion" not in tags or used != eval_run_id:
        raise StepFailed(f"step register: models:/{name}/{version}",
                         f"the promotion did not use this pipeline's evaluation run {eval_run_id} "
                         f"(version tags: rsvlm.promotion={tags.get('rsvlm.promotion')}, "
                         f"eval/{job.benchmark.name}/run_id={used})", "run the pipeline again")
    aliases = client.get_registered_model(name).aliases or {}
    champion = str(aliases[CHAMPION]) if CHAMPION in aliases else ""
    return {"registered_model": name, "version": version, "champion_version": champion,
            "promoted": champion == version, "promotion": tags["rsvlm.promotion"],
            "aliases": {alias: str(v) for alias, v in aliases.items()}}


_STEPS: dict[str, Callable[..., dict[str, Any]]] = {}
_NAMED = ("env", "source", "image_root", "prepared_uri", "strategy", "experiment", "benchmark", "registered_model")


def run_pipeline_step(verb: str, pipeline_run: str, params: Mapping[str, Any], *, launcher: str = "subprocess",
                      image: str = "", cluster: Optional[Mapping[str, Any]] = None, **inputs: Any) -> dict[str, Any]:
    """What a pipeline component runs: the step ``verb`` with the pipeline's parameters (``overrides`` and the
    named ones of :func:`job_overrides`) and the previous steps' outputs (``inputs``). finetune and evaluate
    run their job through ``launcher``; prepare_data and register always in this process tree. A failure
    prints one ``error:`` line and exits non-zero (:func:`run_component`)."""
    def go() -> dict[str, Any]:
        overrides = job_overrides(params.get("overrides") or (),
                                  **{key: str(params.get(key) or "") for key in _NAMED})
        extra = {}
        if verb in ("finetune", "evaluate"):
            extra["launcher"] = make_launcher(launcher, cluster, image)
        elif launcher not in LAUNCHERS:
            raise ConfigError("launcher", f"unknown launcher {launcher!r}", LAUNCHERS)
        return _STEPS[verb](overrides, pipeline_run, **inputs, **extra)

    return run_component(go)


def run_component(step: Callable[..., dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
    """Call ``step`` as a pipeline component does: a failure prints the one ``error:`` line (the job's own,
    when its job failed) and exits non-zero, which fails the KFP task."""
    try:
        return step(**kwargs)
    except Exception as exc:  # noqa: BLE001 - reported as one line
        sys.stdout.flush()
        raise SystemExit(report_error(exc)) from None


_STEPS.update(prepare_data=prepare_data_step, finetune=finetune_step, evaluate=evaluate_step,
              register=register_step)


def write_json(path: str, value: Any) -> None:
    """Write ``value`` as JSON to an artifact's local path (what KFP uploads)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def metadata_value(value: Any) -> Any:
    """A value KFP accepts in artifact metadata (JSON: str, number, bool, list, dict)."""
    return json.loads(json.dumps(value, default=str))
