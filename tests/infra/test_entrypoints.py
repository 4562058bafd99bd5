"""Every RayJob's entrypoint is a plain ``python jobs/<verb>.py <overrides>`` command whose overrides compose
through ``rsvlm.config`` with the environment the manifests give the Ray head (ConfigMap + Secret references):
a typo in a manifest fails here, not hours later on a GPU cluster. The composed job must also fit the cluster
the RayJob brings (Ray Train workers, Tune trials, evaluation actors)."""

from __future__ import annotations

import ast
import math
import os
from pathlib import Path

import pytest

from infra_checks import (INFRA, REPO, container_environment, describe, job_commands, kustomization_dirs,
                          render, unquoted_shell_specials)
from rsvlm.config import ConfigError, compose, expand_shorthands, protect_credentials
from rsvlm.config.job import JobConfig

JOB_DIRS = [d for d in kustomization_dirs() if d.parent.parent == INFRA / "kuberay" / "jobs"]
# Variables a config group reads with ${oc.env:…}: cleared first so that this machine's environment (the test
# suite's fake AWS keys, a developer's MLFLOW_TRACKING_URI) cannot stand in for what the manifests set.
READ_BY_CONFIGS = ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "MLFLOW_S3_ENDPOINT_URL",
                   "RSVLM_DATA_URI", "RSVLM_RUNS_URI", "RSVLM_SWEEPS_URI", "RSVLM_BENCHMARKS", "RSVLM_WORKDIR",
                   "RSVLM_ARTIFACT_LOCATION", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                   "MLFLOW_TRACKING_TOKEN")


def rel(path: Path) -> str:
    return str(path.relative_to(INFRA))


def job_shorthands(verb: str) -> tuple[dict[str, str], tuple[str, ...]]:
    """The ``shorthands`` and ``shorthand_implies`` a job passes to ``hydra_main``, read from its source (importing
    the job would import torch and Ray: seconds each)."""
    path = REPO / "jobs" / f"{verb}.py"
    assert path.is_file(), f"no job file {path.relative_to(REPO)}"
    tree = ast.parse(path.read_text())
    constants = {node.targets[0].id: node.value for node in tree.body
                 if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)}
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and getattr(node.func, "id", getattr(node.func, "attr", None)) == "hydra_main"]
    assert len(calls) == 1, f"jobs/{verb}.py: expected one hydra_main(…) call"
    found: dict = {"shorthands": {}, "shorthand_implies": ()}
    for keyword in calls[0].keywords:
        value = keyword.value
        if isinstance(value, ast.Name):
            value = constants[value.id]
        found[keyword.arg] = ast.literal_eval(value)
    return dict(found["shorthands"]), tuple(found["shorthand_implies"])


def head_environment(rayjob: dict, objects: list[dict]) -> dict[str, str]:
    configmaps = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = container_environment(head, configmaps)
    for var in (yaml_runtime_env(rayjob).get("env_vars") or {}).items():
        env[var[0]] = str(var[1])
    return env


def yaml_runtime_env(rayjob: dict) -> dict:
    import yaml

    return yaml.safe_load(rayjob["spec"].get("runtimeEnvYAML") or "") or {}


def compose_entrypoint(verb: str, overrides: list[str]) -> JobConfig:
    """What ``python jobs/<verb>.py <overrides>`` composes: the job's shorthands, then the same path as hydra_main."""
    shorthands, implies = job_shorthands(verb)
    args = expand_shorthands(overrides, shorthands, implies) if shorthands else list(overrides)
    return compose(protect_credentials(args))


CASES = [(d, o) for d in JOB_DIRS for o in render(d) if o["kind"] == "RayJob"]


@pytest.fixture
def manifest_env(monkeypatch):
    """Set a RayJob head's environment (and nothing else the configs read) for the duration of a test."""
    for name in READ_BY_CONFIGS:
        monkeypatch.setenv(name, "")  # records the variable's state, so that teardown restores it ...
        monkeypatch.delenv(name)  # ... even when a composition (moving credentials) set it meanwhile

    def apply(env: dict[str, str]) -> None:
        for name, value in env.items():
            monkeypatch.setenv(name, value)

    return apply


@pytest.mark.parametrize("directory,rayjob", CASES, ids=[rel(d) for d, _ in CASES])
def test_entrypoint_composes_and_fits_its_cluster(directory, rayjob, manifest_env):
    objects = render(directory)
    entrypoint = rayjob["spec"]["entrypoint"]
    commands = job_commands(entrypoint)
    env = head_environment(rayjob, objects)
    manifest_env(env)
    assert yaml_runtime_env(rayjob).get("working_dir") == "/home/ray/rsvlm", \
        "the job runs the image's checkout (infra/docker/Dockerfile WORKDIR)"
    for verb, overrides in commands:
        assert "+env=kuberay" in overrides, f"{describe(rayjob)}: {verb} does not select +env=kuberay"
        job = compose_entrypoint(verb, overrides)
        check_cluster_settings(job, env)
        check_fits(verb, job, rayjob["spec"]["rayClusterSpec"], describe(rayjob))
    # The job kustomization's verb is the (last) command's verb.
    assert commands[-1][0] == directory.name, f"{rel(directory)} runs jobs/{commands[-1][0]}.py"


def check_cluster_settings(job: JobConfig, env: dict[str, str]) -> None:
    """+env=kuberay took its endpoints from the manifests' environment."""
    assert job.tracking.enabled and job.tracking.uri == env["MLFLOW_TRACKING_URI"]
    assert "@" not in job.tracking.uri, "credentials belong in MLFLOW_TRACKING_USERNAME / _PASSWORD"
    assert job.storage.endpoint_url == env["AWS_ENDPOINT_URL"]
    assert job.train.storage_uri == env["RSVLM_RUNS_URI"] and job.train.storage_uri.startswith("s3://"), \
        "Ray Train needs checkpoint storage every node (and the next RayJob) reaches"
    assert job.sweep.storage_uri == env["RSVLM_SWEEPS_URI"]
    assert job.workdir == env["RSVLM_WORKDIR"]
    if "RSVLM_DATA_URI" in env:
        assert job.data.uri == env["RSVLM_DATA_URI"]
    if "RSVLM_BENCHMARKS" in env and job.benchmark.name != "synthetic":
        assert job.benchmark.questions.startswith(env["RSVLM_BENCHMARKS"] + "/"), job.benchmark.questions


def node_shapes(cluster: dict) -> list[tuple[float, float, int]]:
    """``(CPUs, GPUs, how many)`` of the nodes a RayJob's cluster can have: what Ray is told each pod offers."""
    shapes = []
    groups = [(cluster["headGroupSpec"], 1)] + [(g, g.get("maxReplicas", 0)) for g in
                                                 cluster.get("workerGroupSpecs") or []]
    for group, count in groups:
        container = group["template"]["spec"]["containers"][0]
        limits = container["resources"].get("limits", {})
        params = group.get("rayStartParams") or {}
        cpus = float(params["num-cpus"]) if "num-cpus" in params else _cpu(limits.get("cpu", "0"))
        gpus = float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
        shapes.append((cpus, gpus, count))
    return shapes


def _cpu(quantity: str) -> float:
    quantity = str(quantity)
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def check_fits(verb: str, job: JobConfig, cluster: dict, where: str) -> None:
    shapes = node_shapes(cluster)
    cluster_gpus = sum(g * n for _, g, n in shapes)
    if verb in ("finetune", "sweep"):
        bundle = (job.scaling.cpus_per_worker, 1.0 if job.scaling.use_gpu else 0.0)
        per_node = [min(math.floor(c / bundle[0] + 1e-9), math.floor(g / bundle[1]) if bundle[1] else 1 << 30) * n
                    for c, g, n in shapes]
        workers = job.scaling.workers
        assert any(p > 0 for p in per_node), \
            f"{where}: a Ray Train worker ({bundle[0]} CPUs, {bundle[1]} GPUs) fits on no node of {shapes}"
        assert sum(per_node) >= workers, \
            f"{where}: {workers} Ray Train workers need more than the cluster's {sum(per_node)} slots ({shapes})"
        if job.scaling.use_gpu:
            assert cluster_gpus >= workers
    if verb == "sweep":
        if cluster.get("enableInTreeAutoscaling"):
            # Tune sizes the sweep from the cluster it finds at the start: a cluster that starts without workers
            # would run one trial at a time.
            assert job.sweep.max_concurrent_trials, \
                f"{where}: on an autoscaling cluster give sweep.max_concurrent_trials explicitly"
        concurrent = job.sweep.max_concurrent_trials or 1
        cluster_cpus = sum(c * n for c, _, n in shapes)
        need_cpus = concurrent * (job.sweep.trial_cpus + workers * bundle[0]) + job.sweep.reserved_cpus
        assert need_cpus <= cluster_cpus, \
            f"{where}: {concurrent} trials at once need {need_cpus} CPUs, the cluster has at most {cluster_cpus}"
        assert concurrent * workers * bundle[1] <= cluster_gpus, \
            f"{where}: {concurrent} trials at once need {concurrent * workers} GPUs, the cluster has {cluster_gpus}"
    if verb == "evaluate" and cluster_gpus and not job.benchmark.predictions:
        assert job.benchmark.workers <= cluster_gpus, \
            f"{where}: benchmark.workers={job.benchmark.workers} GPU actors, the cluster has {cluster_gpus} GPUs"
        # rsvlm.eval.answering asks for GPUs only when the cluster has them as the job starts: the GPU workers
        # must be there from the start (minReplicas), not added later by the autoscaler.
        first = sum(g * (1 if i == 0 else group.get("minReplicas", 0))
                    for i, ((_, g, _), group) in enumerate(zip(shapes, [cluster["headGroupSpec"]] +
                                                                (cluster.get("workerGroupSpecs") or []))))
        assert first >= job.benchmark.workers, \
            f"{where}: the cluster starts with {first:g} GPUs, so {job.benchmark.workers} answering actors would run " \
            "on CPUs: set the GPU worker group's minReplicas (and replicas) to benchmark.workers"


# -- the parser and the composition fail on broken entrypoints ------------------------------------------------------

def test_entrypoint_parser():
    assert job_commands("python jobs/finetune.py +env=kuberay a=1") == [("finetune", ["+env=kuberay", "a=1"])]
    assert job_commands("bash -c 'python jobs/prepare_data.py x=1 && python jobs/evaluate.py'") == \
        [("prepare_data", ["x=1"]), ("evaluate", [])]
    for bad in ("python jobs/prepare_data.py && python jobs/evaluate.py",  # the submitter's shell runs the 2nd
                "python jobs/finetune.py a=1; rm -rf /", "python jobs/sweep.py 'space={a: 1}' | tee log",
                "python jobs/sweep.py +sweep.space.optim.lr={loguniform:[1e-3,1e-2]}",  # brace expansion
                "python -m rsvlm.dev.stack up", "python train.py", "ray job submit -- python jobs/finetune.py",
                "bash -c 'python jobs/finetune.py; python jobs/evaluate.py'"):
        with pytest.raises(ValueError):
            job_commands(bad)
    assert unquoted_shell_specials("a 'b;c' \"d&e\"") == []


def test_a_typo_in_an_entrypoint_fails_to_compose(manifest_env):
    directory, rayjob = next((d, o) for d, o in CASES if d.match("gpu/finetune"))
    manifest_env(head_environment(rayjob, render(directory)))
    verb, overrides = job_commands(rayjob["spec"]["entrypoint"])[0]
    compose_entrypoint(verb, overrides)
    for typo in ("experiment=rsgpt4", "train.run_nam=x", "+env=kuberya", "strategy.name=lorra", "scaling=gpu5"):
        with pytest.raises(ConfigError):
            compose_entrypoint(verb, overrides + [typo])


def test_a_job_too_big_for_its_cluster_fails():
    directory, rayjob = next((d, o) for d, o in CASES if d.match("gpu/finetune"))
    cluster = rayjob["spec"]["rayClusterSpec"]
    job = compose(["+env=kuberay", "experiment=rsgpt4v", "scaling=gpu8"])
    with pytest.raises(AssertionError, match="8 Ray Train workers"):
        check_fits("finetune", job, cluster, describe(rayjob))
    job = compose(["+env=kuberay", "experiment=rsgpt4v", "scaling.cpus_per_worker=16"])
    with pytest.raises(AssertionError, match="fits on no node"):
        check_fits("finetune", job, cluster, describe(rayjob))
    job = compose(["+env=kuberay", "sweep=paper"])
    with pytest.raises(AssertionError, match="sweep.max_concurrent_trials"):
        check_fits("sweep", job, cluster, describe(rayjob))
    job = compose(["+env=kuberay", "sweep=paper", "sweep.max_concurrent_trials=8"])
    with pytest.raises(AssertionError, match="8 trials at once"):
        check_fits("sweep", job, cluster, describe(rayjob))
    job = compose(["+env=kuberay", "experiment=rsgpt4v", "benchmark=dior_rsvg", "benchmark.workers=5"])
    with pytest.raises(AssertionError, match="benchmark.workers=5"):
        check_fits("evaluate", job, cluster, describe(rayjob))
    job = compose(["+env=kuberay", "experiment=rsgpt4v", "benchmark=dior_rsvg", "benchmark.workers=4"])
    with pytest.raises(AssertionError, match="starts with 0 GPUs"):
        check_fits("evaluate", job, cluster, describe(rayjob))  # the finetune job's cluster grows from none


def test_shorthands_are_read_from_the_jobs():
    assert job_shorthands("evaluate") == ({"predictions": "benchmark.predictions"}, ())
    shorthands, implies = job_shorthands("prepare_data")
    assert shorthands["output"] == "data.uri" and implies == ("data=custom",)
    assert job_shorthands("finetune") == ({}, ())


def test_env_kuberay_reads_the_environment(manifest_env):
    manifest_env({"MLFLOW_TRACKING_URI": "http://tracking.example:5000", "AWS_ENDPOINT_URL": "http://s3.example:9000",
                  "RSVLM_RUNS_URI": "s3://bucket/runs", "RSVLM_DATA_URI": "s3://bucket/prepared/x",
                  "RSVLM_WORKDIR": "/scratch"})
    job = compose(["+env=kuberay"])
    assert (job.tracking.uri, job.storage.endpoint_url, job.train.storage_uri, job.data.uri, job.workdir) == \
        ("http://tracking.example:5000", "http://s3.example:9000", "s3://bucket/runs", "s3://bucket/prepared/x",
         "/scratch")
    # The command line still wins over the group, and the group over experiment= / sweep=.
    assert compose(["+env=kuberay", "tracking=off"]).tracking.enabled is False
    assert compose(["+env=kuberay", "sweep=smoke"]).data.uri == "s3://bucket/prepared/x"


def test_env_kuberay_defaults_are_the_in_cluster_services(manifest_env):
    manifest_env({})
    job = compose(["+env=kuberay"])
    assert job.tracking.uri == "http://mlflow:5000" and job.storage.endpoint_url == "http://minio:9000"
    assert job.data.uri == "/home/ray/work/data/prepared" and job.train.storage_uri == "s3://rsvlm-data/runs"


def test_credentials_in_the_tracking_uri_never_reach_the_config(manifest_env):
    manifest_env({"MLFLOW_TRACKING_URI": "http://user:pass@mlflow:5000"})
    job = compose(["+env=kuberay"])
    assert job.tracking.uri == "http://mlflow:5000"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "user" and os.environ["MLFLOW_TRACKING_PASSWORD"] == "pass"
