"""The Kubeflow pipeline (kfp v2): prepare_data → finetune → evaluate → register.

    python infra/kubeflow/pipeline.py compile --output rsvlm-pipeline.yaml [--image IMAGE]
    python infra/kubeflow/pipeline.py run-local --workdir runs/pipeline [key=value …]    # make pipeline-local

``compile`` writes the pipeline's IR YAML, to upload in the KFP UI or submit with
``kfp.Client().create_run_from_pipeline_package(…)``. ``run-local`` runs the *whole* pipeline with kfp's local
runner (``kfp.local.SubprocessRunner``, no Docker, no cluster) on the embedded default: synthetic data, the
tiny model, a local Ray, ``sqlite:///<workdir>/mlflow.db``; it ends with a registered model version at
``@candidate`` (and ``@champion`` when it wins), and writes ``<workdir>/pipeline_summary.json``.

Each step is a lightweight Python component that calls one function of ``rsvlm.pipeline_steps`` (the step
logic lives there, importable and tested without kfp). That function composes the job's config from the
pipeline's overrides, runs the job's own command ``python jobs/<verb>.py <overrides>`` and reads what it
produced back from MLflow and storage, checking it against this KFP run. Where the command runs is the
``launcher`` parameter:

- ``subprocess``: in the step's own process (``run-local``; and always for prepare_data and register, which
  need no Ray cluster: in a cluster they run in the step's pod);
- ``rayjob`` (the compiled default): finetune and evaluate each create a KubeRay ``RayJob`` whose entrypoint
  is that command, with a Ray cluster sized from the composed config (``scaling.num_workers`` GPU workers with
  ``nvidia.com/gpu`` limits and the GPU tolerations; ``benchmark.workers`` for evaluate) that exists only
  while the step runs; the step waits for it and fails with the job's own ``error:`` line when it fails.
  ``cluster={"ray_cluster": "<name>"}`` runs the RayJob on a standing RayCluster instead (clusterSelector).
  Why RayJobs rather than ``ray job submit``: see ``rsvlm.pipeline_steps``.

What each step passes on (outputs in the KFP UI): prepare_data the prepared dataset's URI (parameter
``data_uri`` and a ``Dataset`` artifact holding its manifest); finetune the registered version
(``model_uri=models:/<name>/<version>``, ``run_id``, a ``Model`` artifact whose metadata holds the MLflow run
id, model URI and checkpoint, and the training ``Metrics``); evaluate the evaluation run (``eval_run_id``, the
benchmark ``Metrics``); register the champion. Steps consume those outputs, never a guess: finetune trains
on prepare_data's ``data_uri``, evaluate and register act on finetune's ``model_uri``, register checks that
promotion read evaluate's ``eval_run_id``.

In a cluster every job gets ``+env=kuberay`` (the ``env`` parameter; conf/env/kuberay.yaml reads the endpoints
from the environment), and the step pods get that environment from Kubernetes through kfp-kubernetes: the
ConfigMap ``rsvlm-config`` key by key (``ENV_KEYS``), S3 and MLflow credentials from the Secret
``rsvlm-credentials``, every key optional and referenced by name only; the RayJobs' pods get the same through
``envFrom``. The step pods run the rsvlm image (``--image``, infra/docker/Dockerfile: ``jobs/`` and ``conf/``
under /home/ray/rsvlm, ``RSVLM_CONF_DIR`` set), which must also hold the ``pipeline`` extra (kfp, kubernetes),
and a service account allowed to manage RayJobs in the RayJobs' namespace (``infra/kubeflow/rbac.yaml``).
``compile --step-gpus N`` is for clusters without KubeRay: finetune and evaluate then request N GPUs (with the
GPU toleration) for their own pod and run their jobs there (``launcher=subprocess``).
"""


import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, List, NamedTuple, Optional

from kfp import compiler, dsl, kubernetes
from kfp.dsl import Dataset, Metrics, Model, Output

PIPELINE_NAME = "rsvlm"
DEFAULT_IMAGE = "rsvlm:0.1.0-gpu"  # infra/docker/Dockerfile (make image)
CONFIG_MAP = "rsvlm-config"
SECRET = "rsvlm-credentials"
# The ConfigMap's keys are the variables' names (the RayJobs' pods read it whole with envFrom; kfp-kubernetes
# maps key by key): what the jobs and conf/env/kuberay.yaml read. Keys the ConfigMap lacks are skipped.
ENV_KEYS = ["AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL",
            "RSVLM_ARTIFACT_LOCATION", "RSVLM_BENCHMARKS", "RSVLM_DATA_URI", "RSVLM_RUNS_URI", "RSVLM_SWEEPS_URI",
            "RSVLM_WORKDIR"]
SECRET_KEYS = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"]
WORKDIR_MOUNT = "/home/ray/work"  # RSVLM_WORKDIR in the image
# Where the RayJobs go: beside the services, ConfigMap and Secrets of infra/ (and infra/kubeflow/rbac.yaml).
NAMESPACE = "rsvlm"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
STEPS = ["prepare-data", "finetune", "evaluate", "register"]  # the DAG's task names, in order


# ---------------------------------------------------------------------------------------------------------
# The components. KFP serialises each function's source into the step: everything is imported in the body.

def prepare_data(pipeline_run: str, overrides: List[str], env: str, source: str, image_root: str, prepared_uri: str,
                 strategy: str, experiment: str, benchmark: str, registered_model: str,
                 dataset: Output[Dataset]) -> NamedTuple("Outputs", [("data_uri", str), ("records", int)]):
    """Check every record and write the canonical prepared dataset (jobs/prepare_data.py)."""
    from collections import namedtuple

    from rsvlm import pipeline_steps as steps

    params = dict(overrides=overrides, env=env, source=source, image_root=image_root, prepared_uri=prepared_uri,
                  strategy=strategy, experiment=experiment, benchmark=benchmark, registered_model=registered_model)
    out = steps.run_pipeline_step("prepare_data", pipeline_run, params)
    manifest = out["manifest"]
    steps.write_json(dataset.path, manifest)
    dataset.metadata.update(steps.metadata_value({
        "data_uri": out["data_uri"], "records": manifest.get("records"), "rejected": manifest.get("rejected"),
        "images": manifest.get("images"), "by_task": manifest.get("by_task"),
        "fingerprint": manifest.get("fingerprint")}))
    return namedtuple("Outputs", ["data_uri", "records"])(out["data_uri"], int(manifest.get("records") or 0))


def finetune(pipeline_run: str, overrides: List[str], env: str, source: str, image_root: str, prepared_uri: str,
             strategy: str, experiment: str, benchmark: str, registered_model: str, data_uri: str,
             launcher: str, image: str, cluster: dict, model: Output[Model], metrics: Output[Metrics]
             ) -> NamedTuple("Outputs", [("model_uri", str), ("registered_model", str), ("version", str),
                                         ("run_id", str)]):
    """Fine-tune on the prepared dataset with Ray Train and register the result (jobs/finetune.py)."""
    import math
    from collections import namedtuple

    from rsvlm import pipeline_steps as steps

    params = dict(overrides=overrides, env=env, source=source, image_root=image_root, prepared_uri=prepared_uri,
                  strategy=strategy, experiment=experiment, benchmark=benchmark, registered_model=registered_model)
    out = steps.run_pipeline_step("finetune", pipeline_run, params, launcher=launcher, image=image,
                                  cluster=cluster, data_uri=data_uri)
    info = {key: out[key] for key in ("model_uri", "registered_model", "version", "run_id", "run_name",
                                      "checkpoint_uri", "data_uri")}
    steps.write_json(model.path, info)
    model.metadata.update(steps.metadata_value(info))
    for key, value in sorted(out["metrics"].items()):
        if isinstance(value, (int, float)) and math.isfinite(value):
            metrics.log_metric(key, float(value))
    metrics.metadata["run_id"] = out["run_id"]
    return namedtuple("Outputs", ["model_uri", "registered_model", "version", "run_id"])(
        out["model_uri"], out["registered_model"], out["version"], out["run_id"])


def evaluate(pipeline_run: str, overrides: List[str], env: str, source: str, image_root: str, prepared_uri: str,
             strategy: str, experiment: str, benchmark: str, registered_model: str, model_uri: str,
             launcher: str, image: str, cluster: dict, metrics: Output[Metrics]
             ) -> NamedTuple("Outputs", [("eval_run_id", str), ("primary_metric", str)]):
    """Answer the benchmark with the registered version and score it (jobs/evaluate.py)."""
    import math
    from collections import namedtuple

    from rsvlm import pipeline_steps as steps

    params = dict(overrides=overrides, env=env, source=source, image_root=image_root, prepared_uri=prepared_uri,
                  strategy=strategy, experiment=experiment, benchmark=benchmark, registered_model=registered_model)
    out = steps.run_pipeline_step("evaluate", pipeline_run, params, launcher=launcher, image=image,
                                  cluster=cluster, model_uri=model_uri)
    for key, value in sorted(out["metrics"].items()):
        if isinstance(value, (int, float)) and math.isfinite(value):
            metrics.log_metric(key, float(value))
    metrics.metadata.update(steps.metadata_value({key: out[key] for key in (
        "eval_run_id", "model_uri", "benchmark", "primary_metric")}))
    return namedtuple("Outputs", ["eval_run_id", "primary_metric"])(out["eval_run_id"], out["primary_metric"])


def register(pipeline_run: str, overrides: List[str], env: str, source: str, image_root: str, prepared_uri: str,
             strategy: str, experiment: str, benchmark: str, registered_model: str, model_uri: str,
             eval_run_id: str) -> NamedTuple("Outputs", [("champion_version", str), ("promoted", bool)]):
    """Move @champion to the candidate when its verified score wins (jobs/register.py)."""
    from collections import namedtuple

    from rsvlm import pipeline_steps as steps

    params = dict(overrides=overrides, env=env, source=source, image_root=image_root, prepared_uri=prepared_uri,
                  strategy=strategy, experiment=experiment, benchmark=benchmark, registered_model=registered_model)
    out = steps.run_pipeline_step("register", pipeline_run, params, model_uri=model_uri, eval_run_id=eval_run_id)
    print(out["promotion"])
    return namedtuple("Outputs", ["champion_version", "promoted"])(out["champion_version"], bool(out["promoted"]))


# ---------------------------------------------------------------------------------------------------------

def build_pipeline(image: str = DEFAULT_IMAGE, *, config_map: str = CONFIG_MAP, secret: str = SECRET,
                   env_keys: Optional[List[str]] = None, step_gpus: int = 0, workdir_pvc: str = "",
                   namespace: str = NAMESPACE, launcher: str = "rayjob", env: str = "kuberay") -> Callable:
    """The pipeline function, its components running ``image`` (compile-time settings)."""
    component = dsl.component(base_image=image, install_kfp_package=False)
    prepare_op, finetune_op, evaluate_op, register_op = map(component, (prepare_data, finetune, evaluate, register))
    env_keys = list(env_keys or ENV_KEYS)
    default_cluster = {"namespace": namespace, "config_map": config_map, "secrets": [secret],
                       "workdir_pvc": workdir_pvc, "workdir_mount": WORKDIR_MOUNT}

    def kubernetes_env(task: dsl.PipelineTask) -> dsl.PipelineTask:
        # Referenced by name only, and optional: e.g. a tracking server without a login needs no MLflow keys.
        kubernetes.use_config_map_as_env(task, config_map, {key: key for key in env_keys}, optional=True)
        kubernetes.use_secret_as_env(task, secret, {key: key for key in SECRET_KEYS}, optional=True)
        if workdir_pvc:
            kubernetes.mount_pvc(task, pvc_name=workdir_pvc, mount_path=WORKDIR_MOUNT)
        task.set_caching_options(False)  # every step writes to MLflow or storage: never skip one
        return task

    def gpus(task: dsl.PipelineTask) -> dsl.PipelineTask:
        if step_gpus:
            task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(step_gpus)
            kubernetes.add_toleration(task, **GPU_TOLERATION)
        return task

    @dsl.pipeline(name=PIPELINE_NAME, description="rsvlm: prepare_data → finetune → evaluate → register")
    def rsvlm_pipeline(env: str = env, source: str = "", image_root: str = "", prepared_uri: str = "",
                       strategy: str = "", experiment: str = "", benchmark: str = "", registered_model: str = "",
                       overrides: List[str] = [], launcher: str = launcher, image: str = image,  # noqa: B006
                       cluster: dict = default_cluster
                       ) -> NamedTuple("Outputs", [("data_uri", str), ("model_uri", str), ("finetune_run_id", str),
                                                   ("eval_run_id", str), ("champion_version", str)]):
        """Parameters: ``env`` (a conf/env group, given as ``+env=…`` to every job; kuberay: the endpoints the
        ConfigMap sets; empty: none), ``source`` / ``image_root`` (the raw instruction file and images, e.g.
        s3://…; empty: the config's, synthetic data by default), ``prepared_uri`` (where the prepared dataset
        goes: data.uri), ``strategy`` (lora, full, moe_lora), ``experiment`` (a conf/experiment recipe, e.g.
        rsgpt4v), ``benchmark`` (a conf/benchmark name), ``registered_model`` (default
        rsvlm-<model>-<strategy>), ``overrides`` (any other Hydra overrides, given to every step's job, e.g.
        ["train.max_steps=100"]), ``launcher`` (rayjob or subprocess), ``image`` (the Ray pods' image),
        ``cluster`` (RayJob settings, keys of rsvlm.pipeline_steps.ClusterSettings)."""
        common = dict(pipeline_run=dsl.PIPELINE_JOB_ID_PLACEHOLDER, overrides=overrides, env=env, source=source,
                      image_root=image_root, prepared_uri=prepared_uri, strategy=strategy, experiment=experiment,
                      benchmark=benchmark, registered_model=registered_model)
        prepared = kubernetes_env(prepare_op(**common).set_display_name("prepare_data"))
        prepared.set_cpu_request("2").set_memory_request("4G").set_memory_limit("16G")
        trained = gpus(kubernetes_env(finetune_op(**common, data_uri=prepared.outputs["data_uri"],
                                                  launcher=launcher, image=image, cluster=cluster)))
        evaluated = gpus(kubernetes_env(evaluate_op(**common, model_uri=trained.outputs["model_uri"],
                                                    launcher=launcher, image=image, cluster=cluster)))
        registered = kubernetes_env(register_op(**common, model_uri=trained.outputs["model_uri"],
                                                eval_run_id=evaluated.outputs["eval_run_id"]))
        outputs = NamedTuple("Outputs", [("data_uri", str), ("model_uri", str), ("finetune_run_id", str),
                                         ("eval_run_id", str), ("champion_version", str)])
        return outputs(prepared.outputs["data_uri"], trained.outputs["model_uri"], trained.outputs["run_id"],
                       evaluated.outputs["eval_run_id"], registered.outputs["champion_version"])

    return rsvlm_pipeline


def compile_pipeline(output: str, **settings: Any) -> Path:
    """Write the compiled pipeline (IR YAML) to ``output``."""
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(**settings), str(path))
    return path


class _ErrorLines:
    """stdout, remembering the last ``error:`` line a step printed (kfp relays the steps' output through it)."""

    def __init__(self, stream):
        self.stream, self.last, self._pending = stream, None, ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:  # kfp indents a step's log
            if line.strip().startswith("error: "):
                self.last = line.strip()
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def run_local(workdir: str, overrides: List[str], **params: str) -> dict:
    """Run the whole pipeline with kfp's SubprocessRunner on this machine; return (and write) its summary."""
    import warnings

    from kfp import local

    # The local runner's notes that the rsvlm image is not used here and that resources have no effect.
    warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*",
                            category=UserWarning)
    root = Path(workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root / "kfp"), raise_on_error=True)
    pipeline = build_pipeline(launcher="subprocess", env="")
    started = time.perf_counter()
    relay = _ErrorLines(sys.stdout)
    sys.stdout = relay
    try:
        task = pipeline(overrides=[f"workdir={root}", *overrides], launcher="subprocess",
                        **{key: value for key, value in params.items() if value})
    except RuntimeError as exc:
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
        print(f"pipeline {PIPELINE_NAME} failed: {message} (outputs under {root / 'kfp'})", file=sys.stderr)
        if relay.last:
            print(relay.last, file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        sys.stdout = relay.stream
    summary = {**task.outputs, "workdir": str(root), "wall_s": round(time.perf_counter() - started, 1)}
    path = root / "pipeline_summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\npipeline {PIPELINE_NAME} finished in {summary['wall_s']} s: data {summary['data_uri']}, model "
          f"{summary['model_uri']} (@candidate), champion v{summary['champion_version'] or '-'}; summary: {path}")
    print(f"open the MLflow UI:  .venv/bin/mlflow ui --backend-store-uri sqlite:///{root}/mlflow.db  "
          "(unless tracking.uri was overridden)")
    return summary


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="infra/kubeflow/pipeline.py", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    comp = commands.add_parser("compile", help="write the compiled pipeline YAML")
    comp.add_argument("--output", required=True, help="the YAML file to write")
    comp.add_argument("--image", default=DEFAULT_IMAGE,
                      help=f"the rsvlm image of every step and Ray pod (default {DEFAULT_IMAGE})")
    comp.add_argument("--config-map", default=CONFIG_MAP, help="ConfigMap whose keys become the steps' env")
    comp.add_argument("--secret", default=SECRET,
                      help="Secret with " + ", ".join(SECRET_KEYS) + " (each optional)")
    comp.add_argument("--workdir-pvc", default="",
                      help=f"a PVC to mount at {WORKDIR_MOUNT} in every step and Ray pod (synthetic data on a cluster)")
    comp.add_argument("--namespace", default=NAMESPACE, help=f"the RayJobs' namespace (default {NAMESPACE})")
    comp.add_argument("--env-key", action="append", default=[], help="another ConfigMap key to pass (repeatable)")
    comp.add_argument("--step-gpus", type=int, default=0,
                      help="GPUs for the finetune / evaluate pods themselves (no KubeRay; implies launcher=subprocess)")
    local_run = commands.add_parser("run-local", help="run the whole pipeline here with kfp's local runner")
    local_run.add_argument("--workdir", required=True, help="everything goes under it (data, checkpoints, mlflow.db)")
    for name in ("env", "source", "image-root", "prepared-uri", "strategy", "experiment", "benchmark",
                 "registered-model"):
        local_run.add_argument(f"--{name}", default="", help=f"the pipeline's {name.replace('-', '_')} parameter")
    local_run.add_argument("overrides", nargs="*", help="Hydra overrides for every step, e.g. train.max_steps=20")
    args = parser.parse_args(argv)
    if args.command == "compile":
        path = compile_pipeline(args.output, image=args.image, config_map=args.config_map, secret=args.secret,
                                env_keys=ENV_KEYS + args.env_key, step_gpus=args.step_gpus,
                                workdir_pvc=args.workdir_pvc, namespace=args.namespace,
                                launcher="subprocess" if args.step_gpus else "rayjob")
        print(f"wrote {path}")
    else:
        run_local(args.workdir, args.overrides, env=args.env, source=args.source, image_root=args.image_root,
                  prepared_uri=args.prepared_uri, strategy=args.strategy, experiment=args.experiment,
                  benchmark=args.benchmark, registered_model=args.registered_model)


if __name__ == "__main__":
    main()
