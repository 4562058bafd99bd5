"""What the infra tests check, as plain functions: render kustomizations, validate objects, scan for secrets.

Everything here runs offline with the real tools: ``kubectl kustomize`` renders, ``kubernetes_validate`` holds the
Kubernetes OpenAPI schemas, and the KubeRay CRDs' ``openAPIV3Schema`` (read from ``../shared/schemas/kuberay``
beside the repository, or from ``$RSVLM_KUBERAY_CRDS``) validates the ``ray.io/v1`` objects the way
``kubectl apply --validate=strict`` would: schema defaults filled first, unknown fields refused unless the schema
preserves them.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator, Mapping

import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
K8S_VERSION = "1.32.0"
CRDS_ENV = "RSVLM_KUBERAY_CRDS"
KUBECTL_ENV = "RSVLM_KUBECTL"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ManifestError(Exception):
    """A rendered object that does not validate (or has no schema to validate against)."""


# -- rendering ------------------------------------------------------------------------------------------------------

def kubectl() -> str:
    found = os.environ.get(KUBECTL_ENV) or shutil.which("kubectl")
    if not found:
        raise RuntimeError("kubectl not found: install it (kubectl kustomize renders offline) or set $RSVLM_KUBECTL")
    return found


def kustomization_dirs(root: Path = INFRA) -> list[Path]:
    """Every folder under ``root`` with a kustomization that builds on its own (components build through users)."""
    dirs = []
    for path in sorted(root.rglob("kustomization.yaml")):
        doc = yaml.load(path.read_text(), Loader=_LOADER) or {}
        if doc.get("kind", "Kustomization") == "Kustomization":
            dirs.append(path.parent)
    return dirs


def component_dirs(root: Path = INFRA) -> list[Path]:
    return [path.parent for path in sorted(root.rglob("kustomization.yaml"))
            if (yaml.load(path.read_text(), Loader=_LOADER) or {}).get("kind") == "Component"]


def render_text(directory: Path) -> str:
    done = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory} failed:\n{done.stderr.strip()}")
    return done.stdout


@functools.lru_cache(maxsize=None)
def _render_cached(directory: str) -> tuple[str, ...]:
    return tuple(yaml.safe_dump(doc) for doc in yaml.load_all(render_text(Path(directory)), Loader=_LOADER) if doc)


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize directory`` emits (fresh copies each call)."""
    return [yaml.load(text, Loader=_LOADER) for text in _render_cached(str(directory))]


def describe(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{obj.get('apiVersion')}/{obj.get('kind')} {meta.get('namespace', '')}/{meta.get('name', '?')}"


# -- validation -----------------------------------------------------------------------------------------------------

def crd_dir() -> Path:
    """The KubeRay CRDs: ``$RSVLM_KUBERAY_CRDS``, else ``../shared/schemas/kuberay`` beside the repository."""
    override = os.environ.get(CRDS_ENV)
    return Path(override) if override else REPO.parent / "shared" / "schemas" / "kuberay"


def _strict(schema: Any) -> Any:
    """An OpenAPI v3 (structural) schema as a JSON schema that refuses unknown fields, as the API server does."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if out.pop("x-kubernetes-int-or-string", False) and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields") \
            and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=None)
def _crd_schemas(folder: str) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(apiVersion, kind): strict schema}`` for every served version of every CRD in ``folder``."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    files = sorted(Path(folder).glob("*.yaml")) + sorted(Path(folder).glob("*.yml"))
    if not files:
        raise FileNotFoundError(f"no CRD files in {folder} (set ${CRDS_ENV} to the folder holding the KubeRay CRDs)")
    for path in files:
        for doc in yaml.load_all(path.read_text(), Loader=_LOADER):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
            for version in doc["spec"]["versions"]:
                if version.get("served", True):
                    schema = _strict(version["schema"]["openAPIV3Schema"])
                    schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    return _crd_schemas(str(crd_dir()))


def fill_defaults(instance: Any, schema: Mapping[str, Any]) -> Any:
    """``instance`` with the schema's ``default``s filled in where a field is absent (what the API server does
    before it validates), recursively below the fields that are present."""
    if isinstance(instance, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in instance and "default" in sub:
                instance[key] = copy.deepcopy(sub["default"])
            if key in instance:
                fill_defaults(instance[key], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in set(instance) - set(schema.get("properties") or {}):
                fill_defaults(instance[key], extra)
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for item in instance:
            fill_defaults(item, schema["items"])
    return instance


def _schema_error(obj: Mapping[str, Any], error: jsonschema.ValidationError) -> ManifestError:
    return ManifestError(f"{describe(obj)}: {error.json_path}: {error.message}")


def validate_custom(obj: Mapping[str, Any]) -> None:
    """A custom resource against its CRD's schema (defaults filled, unknown fields refused); its metadata as
    ObjectMeta. No CRD for its apiVersion and kind is an error."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    schema = crd_schemas().get(key)  # type: ignore[arg-type]
    if schema is None:
        raise ManifestError(f"{describe(obj)}: no CRD schema for {key[0]} {key[1]} in {crd_dir()}")
    instance = fill_defaults(copy.deepcopy(dict(obj)), schema)
    validator = jsonschema.Draft7Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if error is not None:
        raise _schema_error(obj, error)
    # The API server checks every object's metadata as ObjectMeta; the CRD schema leaves it open.
    try:
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj.get("metadata", {})},
                                     K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise ManifestError(f"{describe(obj)}: metadata: {exc.message}") from None


def validate_core(obj: Mapping[str, Any]) -> None:
    """A built-in kind against Kubernetes' own schema, strictly; a kind without a schema is an error."""
    try:
        kubernetes_validate.validate(dict(obj), K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise ManifestError(f"{describe(obj)}: {exc.json_path}: {exc.message}") from None
    except kubernetes_validate.SchemaNotFoundError as exc:
        raise ManifestError(f"{describe(obj)}: no Kubernetes {K8S_VERSION} schema for this kind ({exc})") from None


def validate(obj: Mapping[str, Any]) -> None:
    """An object of a CRD's API group (ray.io) against the CRDs, anything else against Kubernetes' schemas."""
    crd_groups = {api.split("/")[0] for api, _ in crd_schemas()}
    if str(obj.get("apiVersion", "")).split("/")[0] in crd_groups:
        validate_custom(obj)
    else:
        validate_core(obj)


# -- walking rendered objects ---------------------------------------------------------------------------------------

def pod_specs(obj: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, pod spec)`` of every pod an object makes: workloads' templates, a RayCluster's head and worker
    groups, and those of a RayJob's cluster."""
    spec = obj.get("spec") or {}
    kind = obj.get("kind")
    if kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
        yield "spec.template", spec["template"]["spec"]
    elif kind == "CronJob":
        yield "spec.jobTemplate", spec["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "Pod":
        yield "spec", spec
    elif kind in {"RayCluster", "RayJob"}:
        cluster = spec if kind == "RayCluster" else spec.get("rayClusterSpec") or {}
        prefix = "spec" if kind == "RayCluster" else "spec.rayClusterSpec"
        if cluster.get("headGroupSpec"):
            yield f"{prefix}.headGroupSpec", cluster["headGroupSpec"]["template"]["spec"]
        for group in cluster.get("workerGroupSpecs") or []:
            yield f"{prefix}.workerGroupSpecs[{group['groupName']}]", group["template"]["spec"]


def containers(obj: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """``(where, container, pod spec)`` for every container (init containers included) of ``obj``."""
    for where, pod in pod_specs(obj):
        for field in ("initContainers", "containers"):
            for container in pod.get(field) or []:
                yield f"{where}.{field}[{container.get('name')}]", container, pod


# -- entrypoints ----------------------------------------------------------------------------------------------------

# Characters a shell treats specially outside quotes. KubeRay pastes a RayJob's entrypoint into the submitter pod's
# shell command line (`ray job submit … -- <entrypoint> ; fi`), so any of them unquoted would be run by that shell.
_SHELL_SPECIAL = set(";&|<>()$`\\{}*?[]~!#\n")
_JOB = re.compile(r"^jobs/(?P<verb>[a-z_]+)\.py$")


def unquoted_shell_specials(command: str) -> list[str]:
    """The characters of ``command`` a POSIX shell would interpret, outside single or double quotes."""
    found, quote = [], None
    for char in command:
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char in _SHELL_SPECIAL:
            found.append(char)
    return found


def job_commands(entrypoint: str) -> list[tuple[str, list[str]]]:
    """``[(verb, overrides)]`` of an entrypoint: one ``python jobs/<verb>.py k=v …`` command, or a
    ``bash -c '<command> && <command> …'`` of such commands. Anything else raises ``ValueError``."""
    specials = unquoted_shell_specials(entrypoint)
    if specials:
        raise ValueError(f"unquoted shell characters {''.join(sorted(set(specials)))!r} in entrypoint {entrypoint!r}: "
                         "the submitter pod's shell would interpret them (wrap several commands in bash -c '…')")
    words = shlex.split(entrypoint)
    if words[:2] == ["bash", "-c"] and len(words) == 3:
        inner = [part.strip() for part in words[2].split("&&")]
        for part in inner:
            if unquoted_shell_specials(part):
                raise ValueError(f"only `&&` may join the commands in {words[2]!r}")
        return [_job_command(shlex.split(part), entrypoint) for part in inner]
    return [_job_command(words, entrypoint)]


def _job_command(words: list[str], entrypoint: str) -> tuple[str, list[str]]:
    match = _JOB.match(words[1]) if len(words) >= 2 and words[0] == "python" else None
    if not match:
        raise ValueError(f"not a `python jobs/<verb>.py <overrides>` command: {' '.join(words)!r} "
                         f"(in entrypoint {entrypoint!r})")
    return match["verb"], words[2:]


def container_environment(container: Mapping[str, Any], configmaps: Mapping[str, Mapping[str, str]],
                          secret_placeholder: str = "placeholder") -> dict[str, str]:
    """The environment a container gets from its ``envFrom`` ConfigMaps and ``env`` (values, ConfigMap keys;
    Secret keys as ``secret_placeholder``), Kubernetes' ``$(VAR)`` references expanded."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            if name not in configmaps and not source["configMapRef"].get("optional"):
                raise KeyError(f"envFrom names ConfigMap {name}, which the kustomization does not render")
            env.update({source.get("prefix", "") + k: v for k, v in configmaps.get(name, {}).items()})
        elif "secretRef" in source:
            continue  # unknown keys; they carry credentials only
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), str(var["value"]))
        elif "configMapKeyRef" in (var.get("valueFrom") or {}):
            ref = var["valueFrom"]["configMapKeyRef"]
            if ref["key"] in configmaps.get(ref["name"], {}):
                env[var["name"]] = configmaps[ref["name"]][ref["key"]]
            elif not ref.get("optional"):
                raise KeyError(f"{var['name']}: ConfigMap {ref['name']} has no key {ref['key']}")
        elif "secretKeyRef" in (var.get("valueFrom") or {}):
            if not var["valueFrom"]["secretKeyRef"].get("optional"):
                env[var["name"]] = secret_placeholder
    return env


# -- secrets ----------------------------------------------------------------------------------------------------------

# A value that is a reference or a stand-in, not a credential: environment / shell / Kubernetes references
# ($VAR, ${VAR}, $(VAR), $(command)), template fields ({name}, %s), <placeholders>, ellipses, CHANGE_ME words, and
# the NAME of a variable or key (UPPER_CASE).
_PLACEHOLDER = re.compile(
    r"""^(\$\(?\{?[A-Za-z_].*|\{[^}]*\}|%s|<[^>]*>?|\.\.\.|…|\*+|x{3,}|changeme|change[-_]me|placeholder|example|
    redacted|null|none|true|false)$""", re.I | re.X)
_VARIABLE_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")  # case-sensitive: MLFLOW_TRACKING_PASSWORD, not hunter2
_SECRET_KEY_WORDS = (r"password|passwd|secret_access_key|secretaccesskey|secret_key|client_secret|private_key|"
                     r"api_key|apikey|access_token|auth_token|api_token|session_token|bearer_token|refresh_token")
SECRET_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("AWS access key id", re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("credentials in a URL", re.compile(r"[a-z][a-z0-9+.-]*://(?P<user>[^\s/:@'\"]+):(?P<value>[^\s/@'\"]+)@")),
    # A secret-named key (…PASSWORD, …_SECRET_ACCESS_KEY, api_key, auth_token…) given a literal value, in YAML,
    # env files, shell (--from-literal=KEY=value) or JSON. `secretName:`, `api_key_env:`, `- name: X_PASSWORD` are
    # names, not values: the key must end with the word and be followed by `:` or `=`.
    ("secret assignment", re.compile(
        rf"(?i)(?<![A-Za-z0-9])(?P<key>[A-Za-z0-9_.-]*(?:{_SECRET_KEY_WORDS}))[\"']?\s*[:=]\s*"
        r"(?P<quote>[\"']?)(?P<value>[^\s\"'#,}\]]+)")),
    ("GitHub token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b")),
    ("Hugging Face token", re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")),
    ("Slack token", re.compile(r"\bxox[abpr]-[A-Za-z0-9-]{10,}\b")),
]


def _is_placeholder(value: str) -> bool:
    value = value.strip().rstrip(".,;:)`").strip("\"'")
    return bool(_PLACEHOLDER.match(value) or _VARIABLE_NAME.match(value))


def find_secrets(text: str, where: str = "", code: bool | None = None) -> list[str]:
    """Lines of ``text`` that look like a credential value: key patterns, secret-named keys given a literal value,
    user:password@ in URLs, private keys. References (``$(VAR)``, ``${VAR}``, ``<placeholder>``) pass. In ``code``
    (Python; default: ``where`` ends in .py) a secret-named key counts only with a quoted literal, since
    ``password=args.password`` is an expression."""
    code = where.endswith(".py") if code is None else code
    findings = []
    for number, line in enumerate(text.splitlines(), 1):
        for name, pattern in SECRET_PATTERNS:
            for match in pattern.finditer(line):
                groups = match.groupdict()
                value = groups.get("value")
                if value is not None and _is_placeholder(value):
                    continue
                if name == "secret assignment" and code and not groups.get("quote"):
                    continue
                findings.append(f"{where}:{number}: {name}: {line.strip()[:120]}")
    return findings


def find_secret_objects(objects: list[Mapping[str, Any]]) -> list[str]:
    """Secrets whose ``data`` / ``stringData`` hold values: a repository may name Secrets, never fill them."""
    return [f"{describe(obj)}: {field} holds {sorted(obj[field])}" for obj in objects if obj.get("kind") == "Secret"
            for field in ("data", "stringData") if obj.get(field)]
