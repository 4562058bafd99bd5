"""No secret values in infra/ (nor in the files that configure and document it): the manifests name Secrets and
reference their keys, they never hold a key, a password or a token. The scanner is checked against planted
secrets, so a scanner that finds nothing cannot pass for a clean tree."""

from __future__ import annotations

import base64

import pytest
import yaml

from infra_checks import (INFRA, REPO, containers, describe, find_secret_objects, find_secrets,
                          kustomization_dirs, render)

SCANNED = sorted(p for p in INFRA.rglob("*") if p.is_file() and "__pycache__" not in p.parts) + [
    REPO / ".dockerignore", REPO / "conf" / "env" / "kuberay.yaml", REPO / "docs" / "DEPLOY.md"]
SECRET_NAME_WORDS = ("PASSWORD", "SECRET", "TOKEN", "API_KEY", "ACCESS_KEY", "PRIVATE_KEY")


def test_every_file_is_scanned():
    assert len([p for p in SCANNED if p.is_relative_to(INFRA)]) >= 20
    assert all(p.exists() for p in SCANNED), [str(p) for p in SCANNED if not p.exists()]


@pytest.mark.parametrize("path", SCANNED, ids=lambda p: str(p.relative_to(REPO)))
def test_no_secret_values_in_files(path):
    text = path.read_text(errors="replace")
    assert not find_secrets(text, str(path.relative_to(REPO))), "\n".join(find_secrets(text, str(path)))
    if path.suffix in (".yaml", ".yml"):
        documents = [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
        assert not find_secret_objects(documents)


def test_rendered_objects_hold_no_secret_values():
    """Secrets are created by hand (docs/DEPLOY.md), and secret-named variables only come from Secret refs."""
    problems = []
    for directory in kustomization_dirs():
        objects = render(directory)
        problems += find_secret_objects(objects)
        for obj in objects:
            for place, container, _ in containers(obj):
                for var in container.get("env") or []:
                    name = var["name"].upper()
                    if any(word in name for word in SECRET_NAME_WORDS) and "value" in var \
                            and not str(var["value"]).startswith("$("):
                        problems.append(f"{describe(obj)} {place}: {var['name']} has a literal value")
    assert not problems, "\n".join(problems)


# -- the scanner flags planted secrets -----------------------------------------------------------------------------

FAKE_KEY_ID = "AKIA" + "Q" * 16  # assembled here, so the test file itself holds no key-shaped string
FAKE_SECRET = "wJalrXUtnFEMI" + "/K7MDENG/bPxRfiCY" + "EXAMPLEKEY"


@pytest.mark.parametrize("planted", [
    f"AWS_ACCESS_KEY_ID={FAKE_KEY_ID}",
    f"aws_secret_access_key = {FAKE_SECRET}",
    f"  AWS_SECRET_ACCESS_KEY: {FAKE_SECRET}",
    "  MLFLOW_TRACKING_URI: http://admin:hunter2@mlflow:5000",
    "value: postgresql://mlflow:s3cr3tpass@mlflow-postgres:5432/mlflow",
    "  password: hunter2",
    "  POSTGRES_PASSWORD: hunter2",
    "kubectl create secret generic x --from-literal=MLFLOW_TRACKING_PASSWORD=hunter2",
    '{"api_key": "sk-live-1234567890abcdef"}',
    "-----BEGIN RSA PRIVATE KEY-----",
    "-----BEGIN OPENSSH PRIVATE KEY-----",
    "HF_TOKEN=hf_" + "a" * 34,
    "token: ghp_" + "b" * 36,
])
def test_the_scanner_flags_a_planted_secret(planted):
    assert find_secrets(f"apiVersion: v1\n{planted}\n", "planted.yaml"), f"not flagged: {planted}"


@pytest.mark.parametrize("reference", [
    "value: postgresql://mlflow:$(POSTGRES_PASSWORD)@mlflow-postgres:5432/mlflow",
    "--from-literal=AWS_SECRET_ACCESS_KEY=<secret key>",
    "--from-literal=auth_token=$(openssl rand -hex 32)",
    "  MLFLOW_TRACKING_PASSWORD=${MLFLOW_TRACKING_PASSWORD}",
    "valueFrom: {secretKeyRef: {name: rsvlm-credentials, key: AWS_SECRET_ACCESS_KEY}}",
    "secretName: rsvlm-ray-token",
    "  - name: POSTGRES_PASSWORD",
    'mc alias set rsvlm http://minio:9000 "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY"',
    "authOptions: {mode: token}",
    "api_key_env: RSVLM_JUDGE_API_KEY",
    "password: <password>",
])
def test_the_scanner_passes_references_and_placeholders(reference):
    assert not find_secrets(reference + "\n"), f"flagged a reference: {reference}"


def test_a_secret_object_with_values_is_flagged(tmp_path):
    planted = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "rsvlm-credentials"},
               "data": {"AWS_SECRET_ACCESS_KEY": base64.b64encode(FAKE_SECRET.encode()).decode()}}
    assert find_secret_objects([planted])
    assert find_secret_objects([{**planted, "data": {}, "stringData": {"password": "x"}}])
    assert not find_secret_objects([{**planted, "data": {}}])
    # And through the file scan of a kustomization dir that would ship it.
    (tmp_path / "kustomization.yaml").write_text("resources: [secret.yaml]\n")
    (tmp_path / "secret.yaml").write_text(yaml.safe_dump(planted))
    from infra_checks import render_text

    assert find_secret_objects(list(yaml.safe_load_all(render_text(tmp_path))))
