"""The Kubernetes manifests in infra/: every kustomization renders with ``kubectl kustomize``, every object validates
strictly (Kubernetes 1.32 schemas; the KubeRay CRDs for ray.io), and the shapes the platform relies on hold."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import pytest
import yaml

from infra_checks import (INFRA, REPO, ManifestError, component_dirs, containers, crd_dir, describe,
                          kustomization_dirs, pod_specs, render, render_text, validate, validate_core,
                          validate_custom)

DIRS = kustomization_dirs()
JOB_DIRS = [d for d in DIRS if d.parent.parent == INFRA / "kuberay" / "jobs"]
ENVS = ("dev", "gpu", "gpu8")
JOBS = ("finetune", "sweep", "evaluate")


def rel(path: Path) -> str:
    return str(path.relative_to(INFRA))


def objects_of(*parts: str) -> list[dict]:
    return render(INFRA.joinpath(*parts))


def the(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[describe(o) for o in found]}"
    return found[0]


def test_every_part_has_a_kustomization():
    found = {rel(d) for d in DIRS}
    expected = {"kuberay/base", "kuberay/overlays/dev", "kuberay/overlays/gpu", "minio", "mlflow", "services"}
    expected |= {f"kuberay/overlays/{env}" for env in ENVS} | {f"kuberay/jobs/{env}/{job}" for env in ENVS for job in JOBS}
    assert expected <= found, f"missing kustomizations: {sorted(expected - found)}"


def test_every_component_is_used():
    """Components do not build on their own; each must be reached through a kustomization that is rendered here."""
    used = set()
    for directory in DIRS:
        doc = yaml.safe_load((directory / "kustomization.yaml").read_text())
        used |= {(directory / c).resolve() for c in doc.get("components") or []}
    unused = [rel(c) for c in component_dirs() if c.resolve() not in used]
    assert not unused, f"components no kustomization uses (so never rendered or validated): {unused}"


@pytest.mark.parametrize("directory", DIRS, ids=rel)
def test_renders_and_every_object_validates(directory):
    objects = render(directory)
    assert objects, f"{rel(directory)} renders nothing"
    errors = []
    for obj in objects:
        try:
            validate(obj)
        except ManifestError as exc:
            errors.append(str(exc))
    assert not errors, "\n".join(errors)


# -- the validators themselves fail on broken manifests ------------------------------------------------------------

def test_a_typo_in_a_rayjob_fails_validation():
    rayjob = the(objects_of("kuberay", "jobs", "gpu", "finetune"), "RayJob")
    validate(rayjob)
    broken = copy.deepcopy(rayjob)
    broken["spec"]["shutdownAfterJobFinish"] = broken["spec"].pop("shutdownAfterJobFinishes")
    with pytest.raises(ManifestError, match="shutdownAfterJobFinish"):
        validate(broken)
    deep = copy.deepcopy(rayjob)  # deep inside the embedded pod template
    worker = deep["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    worker["resource"] = worker.pop("resources")
    with pytest.raises(ManifestError, match="resource"):
        validate(deep)
    wrong_type = copy.deepcopy(rayjob)
    wrong_type["spec"]["backoffLimit"] = "2"
    with pytest.raises(ManifestError, match="backoffLimit"):
        validate(wrong_type)
    bad_meta = copy.deepcopy(rayjob)
    bad_meta["metadata"]["lables"] = bad_meta["metadata"].pop("labels")
    with pytest.raises(ManifestError, match="lables"):
        validate(bad_meta)


def test_a_typo_in_a_deployment_fails_validation():
    deployment = the(objects_of("mlflow"), "Deployment", "mlflow")
    validate(deployment)
    broken = copy.deepcopy(deployment)
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(ManifestError, match="readinesProbe"):
        validate(broken)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "1"
    with pytest.raises(ManifestError, match="replicas"):
        validate(wrong_type)


def test_a_kind_without_a_schema_is_a_failure():
    with pytest.raises(ManifestError, match="no Kubernetes"):
        validate({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})
    with pytest.raises(ManifestError, match="no CRD schema"):
        validate({"apiVersion": "ray.io/v1", "kind": "RayWidget", "metadata": {"name": "w"}})
    with pytest.raises(ManifestError, match="no CRD schema"):  # a version the CRDs do not serve
        validate({"apiVersion": "ray.io/v9", "kind": "RayJob", "metadata": {"name": "w"}})


def test_schema_defaults_are_filled_before_validating():
    """minReplicas / maxReplicas are required in the CRD but defaulted: the API server accepts a worker group
    without them, and so must the test (and refuses it when the defaults are not filled)."""
    cluster = the(objects_of("kuberay", "overlays", "gpu"), "RayCluster")
    group = cluster["spec"]["workerGroupSpecs"][0]
    del group["minReplicas"], group["maxReplicas"]
    validate_custom(cluster)

    import infra_checks
    import jsonschema

    schema = infra_checks.crd_schemas()[("ray.io/v1", "RayCluster")]
    with pytest.raises(jsonschema.ValidationError, match="minReplicas"):
        jsonschema.Draft7Validator(schema).validate(cluster)  # the same object, defaults not filled


def test_the_crd_folder_can_be_chosen(tmp_path, monkeypatch):
    """$RSVLM_KUBERAY_CRDS points the test at other CRDs: with only the RayCluster CRD there, a RayJob has none."""
    shutil.copy(crd_dir() / "ray.io_rayclusters.yaml", tmp_path)
    monkeypatch.setenv("RSVLM_KUBERAY_CRDS", str(tmp_path))
    validate(the(objects_of("kuberay", "overlays", "gpu"), "RayCluster"))
    with pytest.raises(ManifestError, match="no CRD schema for ray.io/v1 RayJob"):
        validate(the(objects_of("kuberay", "jobs", "gpu", "finetune"), "RayJob"))
    monkeypatch.setenv("RSVLM_KUBERAY_CRDS", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="RSVLM_KUBERAY_CRDS"):
        validate(the(objects_of("kuberay", "overlays", "gpu"), "RayCluster"))


def test_the_default_crd_folder_is_beside_the_repository(monkeypatch):
    monkeypatch.delenv("RSVLM_KUBERAY_CRDS", raising=False)
    assert crd_dir() == REPO.parent / "shared" / "schemas" / "kuberay"
    assert (crd_dir() / "ray.io_rayjobs.yaml").is_file(), f"the KubeRay CRDs are not in {crd_dir()}"


def test_a_broken_kustomization_fails_to_render(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - missing.yaml\n")
    with pytest.raises(RuntimeError, match="kubectl kustomize"):
        render_text(tmp_path)


def test_core_validation_is_strict():
    validate_core({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}})
    with pytest.raises(ManifestError, match="datta"):
        validate_core({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "datta": {"a": "b"}})


# -- the shapes the platform relies on -----------------------------------------------------------------------------

@pytest.mark.parametrize("directory", JOB_DIRS, ids=rel)
def test_rayjobs_run_on_their_own_cluster_and_clean_up(directory):
    objects = render(directory)
    assert not [o for o in objects if o["kind"] == "RayCluster"], \
        "a job's kustomization must not emit the standing RayCluster (applying a job would change it)"
    rayjob = the(objects, "RayJob")
    spec = rayjob["spec"]
    assert spec.get("rayClusterSpec", {}).get("headGroupSpec"), "the RayJob has no cluster of its own"
    assert spec.get("shutdownAfterJobFinishes") is True
    assert spec.get("ttlSecondsAfterFinished", 0) > 0
    assert isinstance(spec.get("backoffLimit"), int) and spec["backoffLimit"] >= 0, "backoffLimit must be explicit"
    assert rayjob["metadata"].get("namespace"), "the RayJob has no namespace"
    # The same cluster as the environment's standing one (copied by the component); a job may only start with more
    # of its workers (evaluate: its GPUs must be there when it starts).
    env = directory.parent.name
    standing = copy.deepcopy(the(objects_of("kuberay", "overlays", env), "RayCluster")["spec"])
    own = copy.deepcopy(spec["rayClusterSpec"])
    for group_own, group_standing in zip(own.get("workerGroupSpecs", []), standing.get("workerGroupSpecs", [])):
        assert group_own["minReplicas"] <= group_own["maxReplicas"] == group_standing["maxReplicas"]
        for field in ("replicas", "minReplicas"):
            group_own.pop(field, None), group_standing.pop(field, None)
    assert own == standing, f"{rel(directory)}: the RayJob's cluster differs from overlays/{env}'s RayCluster"
    assert the(objects, "ConfigMap", "rsvlm-config")


def _ray_pods(objects):
    for obj in objects:
        if obj["kind"] in ("RayCluster", "RayJob"):
            yield from ((f"{describe(obj)} {where}", pod) for where, pod in pod_specs(obj))


@pytest.mark.parametrize("env", ENVS)
def test_every_ray_pod_has_shared_memory(env):
    objects = objects_of("kuberay", "overlays", env) + objects_of("kuberay", "jobs", env, "finetune")
    pods = list(_ray_pods(objects))
    assert pods
    for where, pod in pods:
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounts = [m for c in pod["containers"] for m in c.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
        assert mounts, f"{where}: nothing mounted at /dev/shm"
        assert volumes[mounts[0]["name"]].get("emptyDir", {}).get("medium") == "Memory", \
            f"{where}: /dev/shm must be an emptyDir with medium Memory"


@pytest.mark.parametrize("env,gpus", [("gpu", 4), ("gpu8", 8)])
def test_the_gpu_cluster_autoscales_gpu_workers(env, gpus):
    cluster = the(objects_of("kuberay", "overlays", env), "RayCluster")["spec"]
    assert cluster.get("enableInTreeAutoscaling") is True
    assert cluster["authOptions"]["mode"] == "token"
    groups = cluster["workerGroupSpecs"]
    gpu_groups = [g for g in groups if any(c["resources"].get("limits", {}).get("nvidia.com/gpu")
                                           for c in g["template"]["spec"]["containers"])]
    assert gpu_groups, "no worker group asks for nvidia.com/gpu"
    for group in gpu_groups:
        assert 0 <= group["minReplicas"] <= group["maxReplicas"] == gpus, group["groupName"]
        pod = group["template"]["spec"]
        assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])), "no GPU toleration"
        assert pod.get("nodeSelector"), "GPU workers need a node selector"
        limits = pod["containers"][0]["resources"]["limits"]
        assert pod["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == limits["nvidia.com/gpu"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"].get("num-cpus") == "0", "the GPU cluster's head should run no tasks"
    assert all(c["image"].endswith("-gpu") for _, c, _ in containers({"kind": "RayCluster", "spec": cluster}))


def test_the_dev_cluster_is_one_cpu_head():
    cluster = the(objects_of("kuberay", "overlays", "dev"), "RayCluster")["spec"]
    assert not cluster.get("workerGroupSpecs") and not cluster.get("enableInTreeAutoscaling")
    head = cluster["headGroupSpec"]
    assert "num-cpus" not in head["rayStartParams"], "the dev head does the work: its CPUs must be offered"
    for _, container, _ in containers({"kind": "RayCluster", "spec": cluster}):
        assert container["image"].endswith("-cpu")
        assert "nvidia.com/gpu" not in container["resources"].get("limits", {})


ALL_OBJECTS = [(rel(d), obj) for d in DIRS for obj in render(d)]


def test_every_container_requests_resources_and_long_running_ones_are_probed():
    problems = []
    for where, obj in ALL_OBJECTS:
        for place, container, _ in containers(obj):
            name = f"{where}: {describe(obj)} {place}"
            requests = (container.get("resources") or {}).get("requests") or {}
            if not {"cpu", "memory"} <= set(requests):
                problems.append(f"{name}: no cpu/memory requests")
            # Run-to-completion containers (Jobs) have nothing for a probe to report.
            if obj["kind"] != "Job":
                for probe in ("readinessProbe", "livenessProbe"):
                    if not container.get(probe):
                        problems.append(f"{name}: no {probe}")
        if obj["kind"] == "RayCluster" or obj["kind"] == "RayJob":
            # A RayJob on the standing cluster (clusterSelector) has no cluster spec of its own.
            cluster = obj["spec"] if obj["kind"] == "RayCluster" else obj["spec"].get("rayClusterSpec") or {}
            if cluster.get("enableInTreeAutoscaling"):
                if not (cluster.get("autoscalerOptions", {}).get("resources") or {}).get("requests"):
                    problems.append(f"{where}: {describe(obj)}: the autoscaler container has no resource requests")
    assert not problems, "\n".join(problems)


def test_images_are_pinned():
    for where, obj in ALL_OBJECTS:
        for place, container, _ in containers(obj):
            image = container["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert tag and tag != "latest", f"{where}: {describe(obj)} {place}: image {image} has no fixed tag"


def test_services_select_pods_and_ports():
    for where, obj in ALL_OBJECTS:
        if obj["kind"] != "Service":
            continue
        selector = obj["spec"]["selector"]
        pods = [(o, o["spec"]["template"]["spec"]) for w, o in ALL_OBJECTS
                if w == where and o["kind"] in ("Deployment", "StatefulSet", "DaemonSet")
                and selector.items() <= (o["spec"]["template"]["metadata"].get("labels") or {}).items()]
        assert pods, f"{where}: Service {obj['metadata']['name']} selects no pod ({selector})"
        ports = {p.get("name") for _, pod in pods for c in pod["containers"] for p in c.get("ports", [])}
        for port in obj["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert not isinstance(target, str) or target in ports, \
                f"{where}: Service {obj['metadata']['name']} targets port {target!r}, the pods name {sorted(ports)}"


def test_mlflow_server_is_wired_as_the_jobs_expect():
    services = objects_of("services")
    mlflow = the(services, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    args = mlflow["args"]
    assert "--serve-artifacts" in args
    assert any(a.startswith("--artifacts-destination=s3://") for a in args)
    allowed = next(a.split("=", 1)[1].split(",") for a in args if a.startswith("--allowed-hosts="))
    service = the(services, "Service", "mlflow")
    port = service["spec"]["ports"][0]["port"]
    assert service["metadata"]["name"] in allowed, "--allowed-hosts must name the Service"
    import fnmatch

    for host in (f"mlflow:{port}", f"mlflow.rsvlm.svc.cluster.local:{port}", f"localhost:{port}"):
        assert any(fnmatch.fnmatch(host, pattern) for pattern in allowed), f"{host} is not an allowed host"
    assert not any(fnmatch.fnmatch("evil.example.com", p) for p in allowed)
    for probe in ("readinessProbe", "livenessProbe"):
        assert mlflow[probe]["httpGet"]["path"] == "/health"
    env = {e["name"]: e for e in mlflow["env"]}
    assert "secretKeyRef" in env["POSTGRES_PASSWORD"]["valueFrom"]
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("postgresql://mlflow:$(POSTGRES_PASSWORD)@")
    names = [e["name"] for e in mlflow["env"]]
    assert names.index("POSTGRES_PASSWORD") < names.index("MLFLOW_BACKEND_STORE_URI"), \
        "Kubernetes expands $(VAR) only from variables defined earlier in the list"
    # The jobs' ConfigMap points at these Services, without credentials in the URIs.
    config = the(objects_of("kuberay", "overlays", "gpu"), "ConfigMap", "rsvlm-config")["data"]
    assert config["MLFLOW_TRACKING_URI"] == f"http://mlflow:{port}"
    minio = the(services, "Service", "minio")
    api = next(p["port"] for p in minio["spec"]["ports"] if p["name"] == "api")
    assert config["AWS_ENDPOINT_URL"] == config["MLFLOW_S3_ENDPOINT_URL"] == f"http://minio:{api}"
    assert next(a for a in args if a.startswith("--artifacts-destination=")).endswith("//rsvlm-mlflow/artifacts")


def test_minio_has_storage_and_creates_the_buckets_the_jobs_use():
    minio = objects_of("minio")
    statefulset = the(minio, "StatefulSet", "minio")
    assert statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    script = the(minio, "Job", "minio-buckets")["spec"]["template"]["spec"]["containers"][0]["args"][0]
    buckets = set(re.findall(r"rsvlm-[a-z]+", script))
    config = the(objects_of("kuberay", "overlays", "gpu"), "ConfigMap", "rsvlm-config")["data"]
    used = {uri.split("/")[2] for uri in config.values() if uri.startswith("s3://")} | {"rsvlm-mlflow"}
    assert used <= buckets, f"buckets the jobs use but nothing creates: {sorted(used - buckets)}"


SECRET_NAMES = {"rsvlm-credentials", "rsvlm-mlflow-db", "rsvlm-ray-token"}


def referenced_secrets() -> dict[str, set[str]]:
    """``{secret name: required keys}`` every rendered object refers to (optional keys left out)."""
    found: dict[str, set[str]] = {}
    for _, obj in ALL_OBJECTS:
        for _, container, _ in containers(obj):
            for var in container.get("env") or []:
                ref = (var.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    keys = found.setdefault(ref["name"], set())
                    if not ref.get("optional"):
                        keys.add(ref["key"])
            for source in container.get("envFrom") or []:
                if "secretRef" in source:
                    found.setdefault(source["secretRef"]["name"], set())
        # A RayJob on the standing cluster (clusterSelector) has no cluster spec of its own.
        cluster = obj["spec"] if obj["kind"] == "RayCluster" else (obj.get("spec") or {}).get("rayClusterSpec") or {}
        if obj["kind"] in ("RayCluster", "RayJob") and (cluster.get("authOptions") or {}).get("secretName"):
            found.setdefault(cluster["authOptions"]["secretName"], set()).add("auth_token")
    return found


def test_secrets_are_referenced_by_name_and_documented():
    """Every Secret a manifest refers to is one DEPLOY.md tells you to create, with every key it needs."""
    referenced = referenced_secrets()
    assert set(referenced) == SECRET_NAMES, f"Secrets referenced: {sorted(referenced)}"
    deploy = (REPO / "docs" / "DEPLOY.md").read_text()
    for name, keys in referenced.items():
        command = re.search(rf"kubectl (?:-n \S+ )?create secret generic {re.escape(name)}\b(.*?)(?:\n\s*\n|```)",
                            deploy, re.S)
        assert command, f"docs/DEPLOY.md does not say how to create the Secret {name}"
        documented = set(re.findall(r"--from-literal=([A-Za-z0-9_]+)=", command[1]))
        assert keys <= documented, f"Secret {name}: keys {sorted(keys - documented)} missing in docs/DEPLOY.md"
