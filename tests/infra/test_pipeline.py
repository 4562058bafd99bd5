"""The Kubeflow pipeline (infra/kubeflow/pipeline.py): it compiles to a strict PipelineSpec with the four steps
in order and their data dependencies; ``run-local`` runs the whole pipeline with kfp's SubprocessRunner and the
outputs passed between steps are the ones the next steps used; a failing step fails the run with its one-line
error. The RayJob side (what a step creates in a cluster) is checked against the KubeRay CRDs and against a
fake Kubernetes API: there is no cluster here.

The end-to-end run takes about 80 s on 2 cores (prepare 3 s, finetune 45 s, evaluate 17 s, register 12 s).
"""

from __future__ import annotations

import graphlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PIPELINE = REPO / "infra" / "kubeflow" / "pipeline.py"
STEPS = ["prepare-data", "finetune", "evaluate", "register"]
IMAGE = "registry.example/rsvlm:test"
# Tiny settings for CI: 40 training images, 20 steps in local mode, 12 benchmark questions answered in-process.
TINY = ["data.synthetic.num_train_images=40", "data.synthetic.num_test_images=4", "scaling=local",
        "train.max_steps=20", "benchmark.limit=12", "benchmark.workers=0", "tracking.system_metrics_interval_s=0"]


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the jobs start their own local Ray
    return subprocess.run([sys.executable, str(PIPELINE), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def tail(done: subprocess.CompletedProcess, lines: int = 60) -> str:
    return "\n".join((done.stdout + "\n" + done.stderr).splitlines()[-lines:])


# -- compile -------------------------------------------------------------------------------------------------------

def compile_docs(tmp_path: Path, *args: str) -> list[dict]:
    out = tmp_path / "rsvlm-pipeline.yaml"
    done = run_cli("compile", "--output", str(out), "--image", IMAGE, *args, timeout=120)
    assert done.returncode == 0, tail(done)
    return [doc for doc in yaml.safe_load_all(out.read_text()) if doc is not None]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> list[dict]:
    return compile_docs(tmp_path_factory.mktemp("compiled"))


def parse_spec(doc: dict):
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    return json_format.ParseDict(doc, pipeline_spec_pb2.PipelineSpec())  # strict: an unknown field raises


def test_compiles_to_a_strict_pipeline_spec_with_the_four_steps_in_order(compiled):
    assert len(compiled) == 2 and "platforms" in compiled[1]
    spec = parse_spec(compiled[0])
    assert spec.schema_version == "2.1.0" and spec.pipeline_info.name == "rsvlm"
    tasks = spec.root.dag.tasks
    assert sorted(tasks) == sorted(STEPS)
    graph = {name: set(task.dependent_tasks) for name, task in tasks.items()}
    order = list(graphlib.TopologicalSorter(graph).static_order())
    assert order == STEPS
    assert {name: sorted(deps) for name, deps in graph.items()} == {
        "prepare-data": [], "finetune": ["prepare-data"], "evaluate": ["finetune"],
        "register": ["evaluate", "finetune"]}

    def producer(task: str, parameter: str) -> tuple[str, str]:
        source = tasks[task].inputs.parameters[parameter].task_output_parameter
        return source.producer_task, source.output_parameter_key

    # The data dependencies: each step consumes the previous steps' outputs.
    assert producer("finetune", "data_uri") == ("prepare-data", "data_uri")
    assert producer("evaluate", "model_uri") == ("finetune", "model_uri")
    assert producer("register", "model_uri") == ("finetune", "model_uri")
    assert producer("register", "eval_run_id") == ("evaluate", "eval_run_id")
    for task in tasks.values():  # every step knows the KFP run, which tags its MLflow runs
        assert task.inputs.parameters["pipeline_run"].runtime_value.constant.string_value == "{{$.pipeline_job_uuid}}"
        assert task.inputs.parameters["overrides"].component_input_parameter == "overrides"
    # The pipeline's own outputs point at the steps' outputs.
    outputs = spec.root.dag.outputs.parameters
    assert outputs["model_uri"].value_from_parameter.producer_subtask == "finetune"
    assert outputs["champion_version"].value_from_parameter.producer_subtask == "register"


def test_steps_are_lightweight_components_on_the_rsvlm_image_with_ui_outputs(compiled):
    spec = parse_spec(compiled[0])
    for name in STEPS:
        executor = compiled[0]["deploymentSpec"]["executors"][f"exec-{name}"]["container"]
        assert executor["image"] == IMAGE
        command = " ".join(executor["command"])
        assert "kfp.dsl.executor_main" in command and "pip install" not in command  # kfp comes with the image
        assert "from rsvlm import pipeline_steps" in command
    components = spec.components
    artifacts = {name: {key: a.artifact_type.schema_title for key, a in
                        components[f"comp-{name}"].output_definitions.artifacts.items()} for name in STEPS}
    assert artifacts["prepare-data"] == {"dataset": "system.Dataset"}
    assert artifacts["finetune"] == {"model": "system.Model", "metrics": "system.Metrics"}
    assert artifacts["evaluate"] == {"metrics": "system.Metrics"}
    params = {name: set(components[f"comp-{name}"].output_definitions.parameters) for name in STEPS}
    assert params["finetune"] == {"model_uri", "registered_model", "version", "run_id"}
    assert params["evaluate"] == {"eval_run_id", "primary_metric"}
    defaults = spec.root.input_definitions.parameters
    assert defaults["launcher"].default_value.string_value == "rayjob"
    assert defaults["image"].default_value.string_value == IMAGE
    assert defaults["env"].default_value.string_value == "kuberay"  # every job gets +env=kuberay in a cluster
    from google.protobuf import json_format

    from rsvlm.pipeline_steps import ClusterSettings

    cluster = ClusterSettings.from_dict(json_format.MessageToDict(defaults["cluster"].default_value))
    assert (cluster.namespace, cluster.config_map, cluster.secrets) == ("rsvlm", "rsvlm-config", ["rsvlm-credentials"])


def test_step_pods_get_the_configmap_and_secret_by_name(compiled):
    from google.protobuf import json_format
    from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s_pb2

    executors = compiled[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert sorted(executors) == sorted(f"exec-{name}" for name in STEPS)
    for name, config in executors.items():
        message = json_format.ParseDict(config, k8s_pb2.KubernetesExecutorConfig())  # strict as well
        (secret,) = message.secret_as_env
        assert secret.secret_name == "rsvlm-credentials" and secret.optional
        assert {m.env_var for m in secret.key_to_env} == {
            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
        (config_map,) = message.config_map_as_env
        assert config_map.config_map_name == "rsvlm-config" and config_map.optional
        passed = {m.env_var for m in config_map.key_to_env}
        assert {"MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "RSVLM_DATA_URI", "RSVLM_RUNS_URI"} <= passed
        assert not message.tolerations  # the GPUs are the RayJobs' workers', not the step pods'


def test_step_gpus_puts_gpus_and_the_toleration_on_the_training_steps(tmp_path):
    docs = compile_docs(tmp_path, "--step-gpus", "2", "--workdir-pvc", "rsvlm-work")
    spec = parse_spec(docs[0])
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in STEPS:
        resources = docs[0]["deploymentSpec"]["executors"][f"exec-{name}"]["container"].get("resources", {})
        gpu = name in ("finetune", "evaluate")
        assert ("accelerator" in resources) == gpu, (name, resources)
        if gpu:
            assert resources["accelerator"]["resourceCount"] == "2"
            assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert executors[f"exec-{name}"]["tolerations"] == [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        assert executors[f"exec-{name}"]["pvcMount"][0]["mountPath"] == "/home/ray/work"
    defaults = spec.root.input_definitions.parameters
    assert defaults["launcher"].default_value.string_value == "subprocess"
    assert defaults["cluster"].default_value.struct_value["workdir_pvc"] == "rsvlm-work"


# -- run-local: the whole pipeline with kfp's SubprocessRunner -----------------------------------------------------

@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pipeline")
    started = time.perf_counter()
    done = run_cli("run-local", "--workdir", str(workdir), *TINY)
    wall = time.perf_counter() - started
    print(f"run-local wall time: {wall:.1f} s")
    return workdir, done, wall


@pytest.mark.slow
def test_run_local_registers_a_model_with_an_alias_through_the_same_step_outputs(local_run):
    from mlflow.tracking import MlflowClient

    workdir, done, wall = local_run
    assert done.returncode == 0, tail(done)
    summary = json.loads((workdir / "pipeline_summary.json").read_text())
    name, version = re.fullmatch(r"models:/([^/]+)/(\d+)", summary["model_uri"]).groups()
    assert name == "rsvlm-tiny-lora"
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db", registry_uri=f"sqlite:///{workdir}/mlflow.db")

    # prepare_data → finetune: the finetune run trained on the URI prepare_data output.
    assert summary["data_uri"] == str(workdir / "data" / "prepared")
    assert (Path(summary["data_uri"]) / "manifest.json").is_file()
    finetune_run = client.get_run(summary["finetune_run_id"])
    assert finetune_run.info.status == "FINISHED"
    assert finetune_run.data.params["data.uri"] == summary["data_uri"]
    pipeline_run = finetune_run.data.tags["rsvlm.pipeline.run"]
    assert finetune_run.data.tags["rsvlm.run_name"] == f"rsvlm-tiny-lora-kfp-{pipeline_run}"

    # finetune → the registry: the version finetune passed on is its run's, at @candidate.
    model_version = client.get_model_version(name, version)
    assert model_version.run_id == summary["finetune_run_id"]
    aliases = {alias: str(v) for alias, v in client.get_registered_model(name).aliases.items()}
    assert aliases["candidate"] == version

    # finetune → evaluate: the evaluation run scored exactly that version, in this pipeline run.
    eval_run = client.get_run(summary["eval_run_id"])
    assert eval_run.info.status == "FINISHED"
    assert eval_run.data.tags["rsvlm.model_uri"] == summary["model_uri"]
    assert eval_run.data.tags["rsvlm.model_version"] == version
    assert eval_run.data.tags["rsvlm.pipeline.run"] == pipeline_run
    assert "eval/synthetic/vqa_accuracy" in eval_run.data.metrics

    # evaluate → register: promotion read that evaluation run; a fresh registry makes it the champion.
    assert model_version.tags["eval/synthetic/run_id"] == summary["eval_run_id"]
    assert "rsvlm.promotion" in model_version.tags
    assert aliases["champion"] == version == summary["champion_version"]

    # What the KFP UI shows: each step's output parameters and artifact metadata name the same things.
    (run_dir,) = (workdir / "kfp").iterdir()
    outputs = {step: json.loads((run_dir / step / "executor_output.json").read_text()) for step in STEPS}
    dataset = outputs["prepare-data"]["artifacts"]["dataset"]["artifacts"][0]
    assert dataset["metadata"]["data_uri"] == summary["data_uri"] and dataset["metadata"]["records"] > 0
    assert json.loads(Path(dataset["uri"]).read_text())["records"] == dataset["metadata"]["records"]
    model = outputs["finetune"]["artifacts"]["model"]["artifacts"][0]["metadata"]
    assert model["model_uri"] == summary["model_uri"] and model["run_id"] == summary["finetune_run_id"]
    assert model["data_uri"] == summary["data_uri"]
    assert outputs["finetune"]["parameterValues"]["version"] == version
    metrics = outputs["evaluate"]["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert metrics["eval_run_id"] == summary["eval_run_id"] and metrics["model_uri"] == summary["model_uri"]
    assert metrics["vqa_accuracy"] == pytest.approx(eval_run.data.metrics["eval/synthetic/vqa_accuracy"])
    assert outputs["register"]["parameterValues"] == {"champion_version": version, "promoted": True}

    # The steps ran the jobs' own commands.
    for verb in ("prepare_data", "finetune", "evaluate", "register"):
        assert f"[{verb}] python jobs/{verb}.py workdir={workdir} " in done.stdout
    assert wall < 600


@pytest.mark.slow
def test_an_invalid_override_fails_the_first_step_with_its_one_line_error(tmp_path):
    done = run_cli("run-local", "--workdir", str(tmp_path), *TINY, "strategy=nonsense", timeout=300)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "error: strategy=nonsense: no such option (choices: align, full, lora, moe_lora)" in output
    assert "Inner task failed: 'prepare-data'" in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == "error: strategy=nonsense: no such option (choices: align, full, lora, moe_lora)"
    assert "Executing task 'finetune'" not in re.sub(r"\x1b\[[0-9;]*m", "", output)
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_a_failing_job_fails_its_step_and_the_pipeline_with_the_jobs_error_line(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    done = run_cli("run-local", "--workdir", str(tmp_path), *TINY, f"train.storage_uri={blocker}/runs", timeout=300)
    assert done.returncode != 0
    output = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)
    assert "Inner task failed: 'finetune'" in output
    last = done.stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"error: step finetune \(python jobs/finetune.py, exit 1\): {re.escape(str(blocker))}/runs/"
                        r"rsvlm-tiny-lora-kfp-\d+: Not a directory", last), last
    assert "Executing task 'evaluate'" not in output


# -- the steps' pieces, without kfp --------------------------------------------------------------------------------

def test_job_overrides_map_the_named_parameters_and_refuse_credentials():
    from rsvlm.errors import JobError
    from rsvlm.pipeline_steps import job_overrides

    assert job_overrides(["train.max_steps=5"]) == ["train.max_steps=5"]
    assert job_overrides(["train.max_steps=5"], env="kuberay") == ["+env=kuberay", "train.max_steps=5"]
    assert job_overrides(["x=1"], source="s3://b/rs.json", image_root="s3://b/img", prepared_uri="s3://b/p",
                         strategy="moe_lora", experiment="rsgpt4v", benchmark="fitrsrc", registered_model="m") == [
        "data=custom", "data.source=s3://b/rs.json", "data.image_root=s3://b/img", "data.uri=s3://b/p",
        "strategy=moe_lora", "experiment=rsgpt4v", "benchmark=fitrsrc", "tracking.registered_model=m", "x=1"]
    assert job_overrides(["data=synthetic"], source="a.json")[0] == "data.source=a.json"  # the user's group stays
    assert job_overrides([], prepared_uri="/data/my set")[0] == "data.uri='/data/my set'"
    with pytest.raises(JobError, match="credentials"):
        job_overrides(["tracking.uri=http://user:pw@mlflow:5000"])


@pytest.fixture
def cluster_settings():
    from rsvlm.pipeline_steps import ClusterSettings

    return ClusterSettings(image=IMAGE)


def test_a_finetune_rayjob_is_sized_from_the_config_and_valid_for_the_crd(cluster_settings):
    from infra_checks import validate

    from rsvlm.config import compose
    from rsvlm.pipeline_steps import rayjob_manifest

    overrides = ["+env=kuberay", "experiment=rsgpt4v", "data.uri=s3://rsvlm-data/prepared/x",
                 '++tracking.tags={rsvlm.pipeline.run: "run-1"}', "train.run_name=rsvlm-kfp-run-1"]
    job = compose(overrides)
    rayjob = rayjob_manifest("finetune", overrides, job, cluster_settings, pipeline_run="run-1", namespace="rsvlm")
    validate(rayjob)  # the KubeRay CRD's schema, unknown fields refused, and ObjectMeta
    assert len(rayjob["metadata"]["name"]) <= 47 and rayjob["metadata"]["namespace"] == "rsvlm"
    spec = rayjob["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] == 0
    assert yaml.safe_load(spec["runtimeEnvYAML"]) == {"working_dir": str(REPO)}
    # The entrypoint is the job's own command line, and it composes to the same config.
    words = shlex.split(spec["entrypoint"])
    assert words[:2] == ["python", "jobs/finetune.py"] and words[2:] == overrides
    assert compose(words[2:]) == job
    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == job.scaling.num_workers == 4
    pod = group["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "10", "memory": "80Gi", "nvidia.com/gpu": "1"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["containers"][0]["envFrom"] == [{"configMapRef": {"name": "rsvlm-config", "optional": True}},
                                               {"secretRef": {"name": "rsvlm-credentials", "optional": True}}]
    head = spec["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert spec["rayClusterSpec"]["authOptions"] == {"mode": "token", "secretName": "rsvlm-ray-token"}
    assert all("env" not in c for c in pod["containers"] + head["template"]["spec"]["containers"])  # refs only


def test_evaluate_rayjobs_and_standing_clusters(cluster_settings):
    from infra_checks import validate

    from rsvlm.config import compose
    from rsvlm.pipeline_steps import rayjob_manifest, rayjob_name

    overrides = ["+env=kuberay", "scaling=gpu4", "benchmark.workers=2", "model_uri=models:/m/3"]
    job = compose(overrides)
    rayjob = rayjob_manifest("evaluate", overrides, job, cluster_settings, pipeline_run="r", namespace="ns")
    validate(rayjob)
    assert rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 2
    assert rayjob["metadata"]["name"] == rayjob_name("evaluate", "r") != rayjob_name("finetune", "r")
    assert rayjob_name("evaluate", "r") == rayjob_name("evaluate", "r") != rayjob_name("evaluate", "s")

    cluster_settings.ray_cluster = "rsvlm"
    standing = rayjob_manifest("evaluate", overrides, job, cluster_settings, pipeline_run="r", namespace="ns")
    validate(standing)
    assert standing["spec"]["clusterSelector"] == {"ray.io/cluster": "rsvlm"}
    assert "rayClusterSpec" not in standing["spec"] and "shutdownAfterJobFinishes" not in standing["spec"]

    cluster_settings.ray_cluster = ""
    local = compose(["scaling=local", "benchmark.workers=0"])
    cpu_only = rayjob_manifest("finetune", [], local, cluster_settings, pipeline_run="r", namespace="ns")
    validate(cpu_only)
    assert "workerGroupSpecs" not in cpu_only["spec"]["rayClusterSpec"]  # the loop runs in the driver, on the head
    assert "num-cpus" not in cpu_only["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]


def test_unknown_cluster_settings_are_refused():
    from rsvlm.config import ConfigError
    from rsvlm.pipeline_steps import ClusterSettings, make_launcher

    with pytest.raises(ConfigError, match="cluster.nmespace: unknown key"):
        ClusterSettings.from_dict({"nmespace": "x"})
    with pytest.raises(ConfigError, match="launcher: unknown launcher 'k8s'"):
        make_launcher("k8s")


def test_the_rbac_role_allows_what_the_rayjob_launcher_does():
    from infra_checks import render, validate

    objects = render(REPO / "infra" / "kubeflow")
    for obj in objects:
        validate(obj)
    (role,) = [o for o in objects if o["kind"] == "Role"]
    allowed = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    for need in [("ray.io", "rayjobs", "create"), ("ray.io", "rayjobs", "get"), ("ray.io", "rayjobs", "delete"),
                 ("", "pods", "list"), ("", "pods/log", "get")]:
        assert need in allowed
    assert not any(resource == "secrets" for _, resource, _ in allowed)


class FakeKubernetes:
    """The two Kubernetes APIs RayJobLauncher uses, with a RayJob whose status moves on at every read."""

    def __init__(self, statuses, existing=None, log=""):
        self.statuses = list(statuses)
        self.objects = {} if existing is None else {existing["metadata"]["name"]: existing}
        self.created, self.deleted, self.log = [], [], log

    def _missing(self):
        from kubernetes.client.exceptions import ApiException

        return ApiException(status=404, reason="Not Found")

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == ("ray.io", "v1", "rayjobs") and namespace == body["metadata"]["namespace"]
        self.created.append(body)
        self.objects[body["metadata"]["name"]] = {**body, "status": {}}
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        if name not in self.objects:
            raise self._missing()
        obj = self.objects[name]
        if self.statuses:
            deployment, job_status, *message = self.statuses.pop(0)
            obj["status"] = {"jobDeploymentStatus": deployment, "jobStatus": job_status,
                             "message": message[0] if message else ""}
        return obj

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        if self.objects.pop(name, None) is None:
            raise self._missing()
        self.deleted.append(name)

    def list_namespaced_pod(self, namespace, label_selector):
        assert label_selector.startswith("job-name=")
        pod = SimpleNamespace(metadata=SimpleNamespace(name="submitter-1", creation_timestamp="2026-12-01T00:00:00Z"))
        return SimpleNamespace(items=[pod] if self.log else [])

    def read_namespaced_pod_log(self, name, namespace, tail_lines):
        return self.log


def launch(fake, verb="finetune"):
    from rsvlm.config import compose
    from rsvlm.pipeline_steps import ClusterSettings, RayJobLauncher

    launcher = RayJobLauncher(ClusterSettings(image=IMAGE, namespace="rsvlm", poll_s=0), custom_api=fake,
                              core_api=fake, sleep=lambda s: None)
    overrides = ["scaling=gpu4"]
    launcher.run(verb, overrides, compose(overrides), pipeline_run="run-7")
    return launcher


def test_rayjob_launcher_waits_for_success():
    fake = FakeKubernetes([("", ""), ("Initializing", ""), ("Running", "RUNNING"), ("Complete", "SUCCEEDED")])
    launch(fake)
    (created,) = fake.created
    assert created["spec"]["entrypoint"] == "python jobs/finetune.py scaling=gpu4"
    assert not fake.statuses and not fake.deleted


def test_rayjob_launcher_fails_with_the_jobs_error_line():
    from rsvlm.pipeline_steps import StepFailed

    log = ("step 10/100 loss 2.0\nerror: train.run_name=x: run is in use by pid 1 on host h (wait for it to "
           "finish, or choose another train.run_name)\n")
    fake = FakeKubernetes([("Running", "RUNNING"), ("Failed", "FAILED", "Job failed")], log=log)
    with pytest.raises(StepFailed) as failed:
        launch(fake)
    assert str(failed.value).startswith("step finetune (python jobs/finetune.py, RayJob rsvlm/rsvlm-finetune-")
    assert str(failed.value).endswith("Failed, Ray job FAILED): train.run_name=x: run is in use by pid 1 on host h "
                                      "(wait for it to finish, or choose another train.run_name)")

    invalid = FakeKubernetes([("ValidationFailed", "", "RayJob name too long")])
    with pytest.raises(StepFailed, match="RayJob rsvlm-evaluate-[0-9a-f]+: RayJob name too long"):
        launch(invalid, "evaluate")


def test_rayjob_launcher_reattaches_to_its_running_job_and_replaces_a_failed_one():
    from rsvlm.pipeline_steps import rayjob_name

    name = rayjob_name("finetune", "run-7")
    running = {"metadata": {"name": name, "namespace": "rsvlm"}, "status": {}}
    fake = FakeKubernetes([("Running", "RUNNING"), ("Running", "RUNNING"), ("Complete", "SUCCEEDED")], existing=running)
    launch(fake)
    assert not fake.created  # a restarted step pod waits for the RayJob it had created: no second training

    failed = {"metadata": {"name": name, "namespace": "rsvlm"}, "status": {}}
    fake = FakeKubernetes([("Failed", "FAILED"), ("Running", "RUNNING"), ("Complete", "SUCCEEDED")], existing=failed)
    launch(fake)
    assert fake.deleted == [name] and len(fake.created) == 1  # a retried step starts its failed RayJob again
